"""The SLURM recipe without a cluster: Snakemake with our profile and the real executor plugins submits a 1-GPU
evaluation cell and the 8-GPU training job of config/paper.yaml to a fake `sbatch` that records its arguments;
then the job scripts they carry run the plugin's job-step side against a fake `srun`. Each job is one SLURM task
with its GPU count (plugin releases before 2.7.1 added `--ntasks-per-gpu=1`: the training then ran as 8 copies
and a 2-GPU cell twice, writing one folder), and inside it the job takes those GPUs (`--gpus`, `sdlm gpus`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("snakemake_executor_plugin_slurm")

CELL = "results/cells/qwen2.5-3b-instruct/gsm8k_sdlm/ar/cell.json"
TRAIN = "results/checkpoints/qwen2.5-3b-D4/sdlm_training.json"
# One file per call, renamed into place when complete: Snakemake submits the two jobs at once, and two fake
# sbatch appending to one log interleave their lines (a CI run read them as one record).
RECORD = ("d=\"$FAKE_{name}_LOG\"; mkdir -p \"$d\"; f=$(mktemp \"$d/$(date +%s%N).XXXXXX\"); "
          "for a in \"$@\"; do printf '%s\\n' \"$a\"; done > \"$f\"; mv \"$f\" \"$f.rec\"\n")


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in metadata.version(name).split(".")[:3] if x.isdigit())


def test_the_installed_plugin_is_one_without_the_ntasks_per_gpu_defect():
    assert _version("snakemake-executor-plugin-slurm") >= (2, 7, 1)
    text = (REPO / "pyproject.toml").read_text()
    assert text.count('"snakemake-executor-plugin-slurm>=2.7.1"') == 2  # the test and slurm extras


def _fake_slurm(bin_dir: Path) -> None:
    bin_dir.mkdir()
    tools = {"sbatch": RECORD.format(name="SBATCH") + "echo 4242\n", "srun": RECORD.format(name="SRUN"),
             "sacctmgr": "echo acct\n"}
    for name in ("sinfo", "scontrol", "squeue", "sacct", "scancel", "sshare"):
        tools.setdefault(name, "exit 0\n")
    for name, body in tools.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)


def _records(path: Path) -> list[list[str]]:
    """The calls' arguments, in call order (file names start with the call's time in ns)."""
    return [f.read_text().rstrip("\n").split("\n") for f in sorted(path.glob("*.rec"))]


def _wait(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> list[list[str]]:
    t0 = time.monotonic()
    while len(_records(path)) < n and time.monotonic() - t0 < timeout and proc.poll() is None:
        time.sleep(0.2)
    return _records(path)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: Snakemake and whatever it started
    proc.wait()


@pytest.fixture(scope="module")
def submitted(tmp_path_factory):
    """(sbatch records by rule, srun records by rule, remote job logs by rule)."""
    tmp = tmp_path_factory.mktemp("slurm")
    _fake_slurm(tmp / "bin")
    wd = tmp / "wd"
    for f in ("results/models/qwen2.5-3b/source.json", "results/models/qwen2.5-3b-instruct/source.json",
              "results/data/sft/paper_mix.jsonl"):  # the jobs' inputs exist: only the two jobs are submitted
        (wd / f).parent.mkdir(parents=True, exist_ok=True)
        (wd / f).write_text("{}\n")
    env = {**os.environ, "PATH": f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}", "FAKE_SBATCH_LOG": str(tmp / "sbatch"),
           "FAKE_SRUN_LOG": str(tmp / "srun"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for k in [k for k in env if k.startswith("SLURM_")]:
        del env[k]
    main = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(wd),
         "--workflow-profile", str(REPO / "pipeline/profiles/slurm"), "--configfile", str(REPO / "config/paper.yaml"),
         "--default-resources", "slurm_account=acct", "slurm_partition=cpu", "mem_mb=8000", "runtime=60",
         "--", CELL, TRAIN], env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sbatch = _wait(tmp / "sbatch", 2, main)
        assert len(sbatch) == 2, main.stdout.read() if main.poll() is not None else "no sbatch call"
        by_rule = {next(a for a in rec if a.startswith("rule_")).split("_wildcards")[0][5:]: rec for rec in sbatch}
        srun, remote = {}, {}
        for rule, rec in by_rule.items():  # the job script sbatch would run, on the "compute node"
            script = next(a for a in rec if a.startswith("--wrap="))[len("--wrap="):]
            log = tmp / f"remote_{rule}.log"
            before = len(_records(tmp / "srun"))
            job = subprocess.Popen(["sh", "-c", script], cwd=wd, start_new_session=True, stdout=log.open("w"),
                                   stderr=subprocess.STDOUT,
                                   env={**env, "SLURM_JOB_ID": "4242",
                                        "SLURM_GPUS": next(a for a in rec if a.startswith("--gpus="))[7:]})
            try:
                srun[rule] = _wait(tmp / "srun", before + 1, job)[before]
            finally:
                _stop(job)
            remote[rule] = log.read_text()
        return by_rule, srun, remote
    finally:
        _stop(main)


@pytest.mark.parametrize("rule, gpus, cpus, minutes, mem", [("eval_cell", 1, 8, 720, 64000),
                                                            ("train", 8, 64, 4320, 900000)])
def test_one_task_per_job_with_its_gpus(submitted, rule, gpus, cpus, minutes, mem):
    sbatch, srun, remote = submitted
    args = sbatch[rule]
    assert [a for a in args if a.startswith("--gpus")] == [f"--gpus={gpus}"]
    assert not [a for a in args if a.startswith("--ntasks-per-gpu") or a.startswith("--gres")]
    assert [a for a in args if a.startswith("--ntasks")] in ([], ["--ntasks=1"])  # sbatch's default: one task
    assert f"--cpus-per-task={cpus}" in args
    assert args[args.index("-t") + 1] == str(minutes) and args[args.index("--mem") + 1] == str(mem)
    assert args[args.index("-p") + 1] == "<gpu-partition>"  # the profile's GPU partition (placeholder)
    step = srun[rule]
    assert step[0] == "-n1" and f"--gpus={gpus}" in step and not [a for a in step if "ntasks" in a]
    # inside the allocation the job takes exactly its GPUs (CUDA_VISIBLE_DEVICES as SLURM granted them)
    want = "--gpus 1 --output" if rule == "eval_cell" else "sdlm gpus --need 8 -- accelerate launch --num_processes 8"
    assert want in remote[rule]
