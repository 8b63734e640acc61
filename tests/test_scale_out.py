"""More than one GPU, through the pipeline, on CPU (README "More than one GPU"):

* a 2-process data-parallel cell (launcher: accelerate, gloo) and a cell split into 2 shard jobs merged into one
  cell.json give the files of the single-process cell: samples byte-identical, cell rows and results.json equal
  but for what is measured (timings, load, time and host in the provenance, lm-eval's date), stats rows equal but
  for their timings and batch layout;
* a finished shard is never recomputed: a deleted cell.json is merged again from its shards, a deleted shard
  reruns alone;
* config/paper.yaml on a simulated 8-GPU node (`--resources gpu=8`, dry run) names every GPU job's GPUs and every
  data-parallel job's processes; the README's commands dry-run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_pipeline import REPO, SNAKEFILE, _job_blocks, job_counts

DATA_DIR = Path(os.environ.get("SDLM_DATA_DIR") or REPO.parent / "shared" / "data")
CELLS = ["tiny/gsm8k_sdlm/prob_conf_D4_tau0.5", "tiny/mbpp_sdlm/prob_conf_D4_tau0.5"]
#: what a cell measures rather than computes: may differ between runs of the same cell
TIMING = {"prefill_s", "decode_s", "wall_s", "tokens_per_s", "eval_wall_s"}
BATCH_LAYOUT = {"batch", "batch_size", "rank", "shard"}


def smk(workdir: Path, *args: str, config: list[Path], check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *args,
           "--configfile", *map(str, config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "SDLM_GPU_LOCK_DIR": str(workdir / "gpu-locks")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


# ================================================================================ dry runs: every job's devices
def gpu_jobs(output: str) -> dict[tuple[str, int, int], int]:
    """(rule, GPUs, processes) -> jobs, from a dry run with -p; every GPU job must name its GPUs in its command."""
    out: dict[tuple[str, int, int], int] = {}
    for block in _job_blocks(output):
        rule = re.search(r"(?:local)?rule (\w+):", block)
        res = re.search(r"resources: .*\bgpu=(\d+)", block)
        if not rule or not res or int(res.group(1)) == 0:
            continue
        gpus, cmd = int(res.group(1)), re.search(r"Shell command: (.*)", block).group(1)
        assert f"--gpus {gpus} " in cmd or f"sdlm gpus --need {gpus} -- " in cmd, (rule.group(1), cmd[:300])
        procs = re.search(r"--(?:processes|num_processes) (\d+)", cmd)
        key = (rule.group(1), gpus, int(procs.group(1)) if procs else 1)
        out[key] = out.get(key, 0) + 1
    return out


@pytest.mark.parametrize("configs, expected", [
    # the paper config as shipped: 1 GPU per 3B cell, the 32B cells in 4 shard jobs of 2 GPUs, training on 8
    (["paper.yaml"], {("eval_cell", 1, 1): 336, ("eval_shard", 2, 1): 352, ("train", 8, 8): 3}),
    # one 8 x H200 node: every cell on one GPU, 8 at a time
    (["paper.yaml", "paper-8xh200.yaml"], {("eval_cell", 1, 1): 424, ("train", 8, 8): 3}),
])
def test_paper_on_a_simulated_8_gpu_node_names_every_jobs_devices(tmp_path, configs, expected):
    proc = smk(tmp_path, "-n", "-p", "--cores", "64", "--resources", "gpu=8",
               config=[REPO / "config" / c for c in configs])
    assert gpu_jobs(proc.stdout + proc.stderr) == expected


def test_a_data_parallel_32b_cell_names_its_processes(tmp_path):
    """SDLM-32B-D4 with data parallel over a whole node: 4 processes, each splitting the model over 2 GPUs."""
    over = tmp_path / "dp.yaml"
    over.write_text(yaml.safe_dump({"models": {"sdlm-32b-d4": {"eval": {
        "device": "auto", "launcher": "accelerate", "num_processes": 4, "shards": 1, "resources": {"gpu": 8}}}}}))
    proc = smk(tmp_path, "-n", "-p", "results/cells/sdlm-32b-d4/gsm8k_sdlm/prob_conf_D4_tau0.98/cell.json",
               config=[REPO / "config/paper.yaml", over])
    assert gpu_jobs(proc.stdout) == {("eval_cell", 8, 4): 1}


def readme_commands() -> list[str]:
    """The snakemake commands of README's "More than one GPU" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## More than one GPU", 1)[1].split("\n## ", 1)[0]
    return [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
            for line in block.splitlines() if line.startswith("snakemake ")]


def test_readme_commands_dry_run(tmp_path):
    commands = readme_commands()
    assert len(commands) >= 3
    for i, command in enumerate(commands):
        args = command.split()[1:]
        if "--workflow-profile" in args:
            pytest.importorskip("snakemake_executor_plugin_slurm")
        workdir = tmp_path / str(i)
        args = [a.replace("pipeline/", f"{REPO}/pipeline/") if a.startswith("pipeline/") else a for a in args]
        cfg_at = args.index("--configfile")
        configs = [REPO / a for a in args[cfg_at + 1:] if not a.startswith("-")]
        rest = args[:cfg_at]
        proc = smk(workdir, "-n", *rest, config=configs)
        assert job_counts(proc.stdout + proc.stderr)["total"] > 800, command


# ================================================================================ the same cell three ways, on CPU
def tiny_config(path: Path, ckpt: Path, **eval_settings) -> Path:
    cfg = {"name": "scale-out", "data_dir": str(DATA_DIR), "offline": True, "seed": 1234,
           "models": {"tiny": {"source": str(ckpt), "released": True, "block_size": 4}},
           "tasks": {"gsm8k_sdlm": {"limit": 5, "max_new_tokens": 16}, "mbpp_sdlm": {"limit": 3, "max_new_tokens": 16}},
           "decoding": {"algs": ["prob_conf"], "taus": [0.5], "reference_tau": None},
           "eval": {"device": "cpu", "dtype": "fp32", "batch_size": 2,
                    "resources": {"threads": 2, "mem_mb": 2000, "runtime": 10}, **eval_settings}}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two cells of one tiny config, single-process / 2-process data parallel / 2 shards (one workdir each)."""
    if not (DATA_DIR / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"benchmark data not found in {DATA_DIR}")
    from sdlm.testing import tiny_sdlm_checkpoint

    tmp = tmp_path_factory.mktemp("scale_out")
    ckpt = tiny_sdlm_checkpoint(tmp / "ckpt")  # one folder: every run evaluates the same files
    out = {}
    for name, settings in (("single", {}), ("dp", {"launcher": "accelerate", "num_processes": 2}),
                           ("shards", {"shards": 2})):
        wd = tmp / name
        wd.mkdir()
        cfg = tiny_config(tmp / f"{name}.yaml", ckpt, **settings)
        smk(wd, "--cores", "2", *[f"results/cells/{c}/cell.json" for c in CELLS], config=[cfg])
        out[name] = (wd, cfg)
    return out


def _strip(obj, drop: set[str]):
    if isinstance(obj, dict):
        return {k: _strip(v, drop) for k, v in obj.items() if k not in drop}
    if isinstance(obj, list):
        return [_strip(v, drop) for v in obj]
    return obj


def comparable_row(row: dict) -> dict:
    """A cell.json row without what is measured: timings, the machine's load, time / host / threads in the
    provenance (its config and hash stay)."""
    row = _strip(row, TIMING | {"load"})
    row["provenance"] = {k: v for k, v in row["provenance"].items() if k not in ("time_utc", "load", "hardware")}
    return row


def comparable_results(res: dict) -> dict:
    """results.json without what is measured or process-specific: timings, lm-eval's date, the provenance's
    time/host, the shards' own records, and function reprs in lm-eval's task configs (memory addresses)."""
    res = _strip(res, TIMING | {"date", "shards"})
    res["provenance"] = {k: v for k, v in res["provenance"].items() if k not in ("time_utc", "load", "hardware")}
    res["configs"] = json.loads(re.sub(r" at 0x[0-9a-f]+", "", json.dumps(res["configs"])))
    return res


@pytest.mark.parametrize("way", ["dp", "shards"])
def test_the_cell_equals_the_single_process_cell(runs, way):
    single, other = runs["single"][0], runs[way][0]
    for cell in CELLS:
        a, b = single / "results/cells" / cell, other / "results/cells" / cell
        task = cell.split("/")[1]
        assert (a / f"samples_{task}.jsonl").read_bytes() == (b / f"samples_{task}.jsonl").read_bytes()
        rows_a, rows_b = (json.loads((d / "cell.json").read_text()) for d in (a, b))
        assert [comparable_row(r) for r in rows_a] == [comparable_row(r) for r in rows_b]
        assert rows_b[0]["n"] == {"gsm8k_sdlm": 5, "mbpp_sdlm": 3}[task]
        stats_a, stats_b = ([_strip(json.loads(x), TIMING | BATCH_LAYOUT) for x in (d / f"stats_{task}.jsonl").read_text().splitlines()]
                            for d in (a, b))
        assert stats_a == stats_b and len(stats_a) == rows_b[0]["n"]
        res_a, res_b = (json.loads((d / "results.json").read_text()) for d in (a, b))
        assert comparable_results(res_a) == comparable_results(res_b)
    if way == "dp":
        stats = [json.loads(x) for x in (other / "results/cells" / CELLS[0] / "stats_gsm8k_sdlm.jsonl").read_text().splitlines()]
        assert {s["rank"] for s in stats} == {0, 1}  # two processes did decode
        log = (other / "results/logs/eval" / f"{CELLS[0]}.log").read_text()
        assert "2 data-parallel processes: accelerate launch --num_processes 2" in log
    else:
        res = json.loads((other / "results/cells" / CELLS[0] / "results.json").read_text())
        assert [s["doc_ids"]["gsm8k_sdlm"] for s in res["sdlm"]["shards"]] == [[0, 2, 4], [1, 3]]


def test_a_finished_shard_is_never_recomputed(runs):
    wd, cfg = runs["shards"]
    cell = wd / "results/cells" / CELLS[0]
    shards = sorted(cell.glob("shards/*/shard.json"))
    assert [p.parent.name for p in shards] == ["0of2", "1of2"]
    before = {p: p.stat().st_mtime_ns for p in shards}
    samples = (cell / "samples_gsm8k_sdlm.jsonl").read_bytes()
    target = f"results/cells/{CELLS[0]}/cell.json"
    (cell / "cell.json").unlink()
    dry = smk(wd, "-n", target, config=[cfg])
    assert job_counts(dry.stdout) == {"merge_shards": 1, "total": 1}  # only the merge: both shards are done
    shards[1].unlink()
    dry = smk(wd, "-n", target, config=[cfg])
    assert job_counts(dry.stdout) == {"eval_shard": 1, "merge_shards": 1, "total": 2}  # that shard alone
    smk(wd, "--cores", "2", target, config=[cfg])
    assert shards[0].stat().st_mtime_ns == before[shards[0]] and shards[1].is_file()
    assert (cell / "samples_gsm8k_sdlm.jsonl").read_bytes() == samples
    again = smk(wd, "-n", target, config=[cfg])
    assert "Nothing to be done" in again.stdout + again.stderr
