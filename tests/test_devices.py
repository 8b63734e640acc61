"""A GPU job's own devices on a shared node (sdlm.devices), tested on CPU with fake GPU ids: concurrent jobs get
disjoint ids and give them back when they succeed, fail or are SIGKILLed; a job that finds too few free GPUs
waits instead of sharing; the pool comes from SLURM, the config or the environment; and data-parallel
evaluation relaunches itself under accelerate with the job's threads shared out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdlm.devices import (DeviceError, acquire, data_parallel_command, lock_dir, parse_ids, pool, process_gpu_group,
                          try_acquire)

SDLM = [sys.executable, "-c", "import sys; from sdlm.cli import main; sys.exit(main())"]

#: a job: writes the GPUs it was given to <out>/<name>.gpus, then waits for <out>/<name>.go and exits with its code
JOB = ("import os, sys, time, pathlib; out = pathlib.Path(sys.argv[1]); name = sys.argv[2]; "
       "(out / (name + '.gpus')).write_text(os.environ['CUDA_VISIBLE_DEVICES']); "
       "go = out / (name + '.go')\nwhile not go.exists(): time.sleep(0.05)\nsys.exit(int(go.read_text() or 0))")


def start(out: Path, name: str, need: int, ids: str = "0,1,2,3") -> subprocess.Popen:
    env = {**os.environ, "SDLM_GPU_LOCK_DIR": str(out / "locks"), "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    return subprocess.Popen([*SDLM, "gpus", "--need", str(need), "--ids", ids, "--", sys.executable, "-c", JOB,
                             str(out), name], env=env, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, timeout: float = 60) -> str:
    t0 = time.monotonic()
    while not path.exists() and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    assert path.exists(), f"{path.name} never appeared"
    time.sleep(0.05)
    return path.read_text()


def test_concurrent_jobs_get_disjoint_gpus_and_release_them_on_success_failure_and_kill(tmp_path):
    jobs = {name: start(tmp_path, name, need) for name, need in (("a", 1), ("b", 1), ("c", 1), ("d", 1))}
    got = {name: parse_ids(wait_for(tmp_path / f"{name}.gpus")) for name in jobs}
    assert sorted(g for ids in got.values() for g in ids) == ["0", "1", "2", "3"]  # disjoint, the whole pool

    waiting = start(tmp_path, "e", 2)  # the pool is taken: it waits instead of sharing a GPU
    line, deadline = "", time.monotonic() + 60
    while "waiting for 2 free GPU(s)" not in line and time.monotonic() < deadline:
        line = waiting.stderr.readline()
    assert "waiting for 2 free GPU(s) of 0, 1, 2, 3" in line and not (tmp_path / "e.gpus").exists()

    (tmp_path / "a.go").write_text("0")  # success
    (tmp_path / "b.go").write_text("1")  # failure
    jobs["c"].send_signal(signal.SIGKILL)  # killed: the kernel drops its lock
    assert jobs["a"].wait(60) == 0 and jobs["b"].wait(60) == 1 and jobs["c"].wait(60) == -signal.SIGKILL
    e = parse_ids(wait_for(tmp_path / "e.gpus"))
    assert len(e) == 2 and set(e) <= set(got["a"] + got["b"] + got["c"])  # two of the three given back
    freed = sorted(set(got["a"] + got["b"] + got["c"]) - set(e))
    lease = try_acquire(1, ["0", "1", "2", "3"], folder=tmp_path / "locks" / "node")  # now: the third one
    assert lease is not None and lease.ids == freed
    assert try_acquire(1, got["d"], folder=tmp_path / "locks" / "node") is None  # still held by d
    lease.release()
    for name in ("d", "e"):
        (tmp_path / f"{name}.go").write_text("0")
    assert jobs["d"].wait(60) == 0 and waiting.wait(60) == 0
    everything = try_acquire(4, ["0", "1", "2", "3"], folder=tmp_path / "locks" / "node")
    assert everything is not None and everything.ids == ["0", "1", "2", "3"]  # all given back


def test_a_job_holds_its_gpus_until_it_ends_and_no_longer(tmp_path):
    """In-process: a lease holds its ids against every other taker; a second lease of the rest works; released,
    the ids can be taken again. Two jobs per GPU: jobs spread over the GPUs before they share one."""
    folder = tmp_path / "locks"
    first = acquire(2, ["0", "1", "2"], folder=folder, timeout_s=0)
    assert first.ids == ["0", "1"]
    assert try_acquire(2, ["0", "1", "2"], folder=folder) is None
    with pytest.raises(DeviceError, match="no 2 free GPU"):
        acquire(2, ["0", "1", "2"], folder=folder, timeout_s=0, log=lambda _: None)
    rest = try_acquire(1, ["0", "1", "2"], folder=folder)
    assert rest is not None and rest.ids == ["2"]
    first.release()
    rest.release()
    shared = folder / "shared"
    order = [try_acquire(1, ["0", "1"], jobs_per_gpu=2, folder=shared) for _ in range(5)]
    assert [lease.ids if lease else None for lease in order] == [["0"], ["1"], ["0"], ["1"], None]


def test_impossible_requests_are_one_line_errors(tmp_path):
    for need, ids, message in ((3, ["0", "1"], "this job needs 3 GPU(s) but the pool has 2: 0, 1"),
                               (1, [], "the pool has 0: none (CUDA_VISIBLE_DEVICES unset or empty")):
        with pytest.raises(DeviceError) as err:
            acquire(need, ids, folder=tmp_path)
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DeviceError, match="given twice"):
        parse_ids("0,1,0")
    env = {**os.environ, "SDLM_GPU_LOCK_DIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([*SDLM, "gpus", "--need", "1", "--", "true"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("sdlm gpus: error: this job needs 1 GPU(s)")


def test_which_gpus_and_where_the_locks_are():
    """SLURM's grant wins (the config's ids number another machine's GPUs); then gpus.ids; then what is visible.
    Jobs of one SLURM allocation share a lock folder, other allocations have their own."""
    assert pool({"SDLM_GPU_IDS": "0,1,2,3,4,5,6,7", "CUDA_VISIBLE_DEVICES": "2,3"}) == [str(i) for i in range(8)]
    assert pool({"SDLM_GPU_IDS": "0,1,2,3", "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_ID": "42"}) == ["0", "1"]
    assert pool({"CUDA_VISIBLE_DEVICES": "GPU-5b1f,MIG-7c2a"}) == ["GPU-5b1f", "MIG-7c2a"]
    assert pool({"CUDA_VISIBLE_DEVICES": ""}) == []
    base = {"SDLM_GPU_LOCK_DIR": "/x"}
    assert lock_dir(base) == Path("/x/node")
    assert lock_dir({**base, "SLURM_JOB_ID": "42"}) == Path("/x/slurm-42")


def test_process_gpu_groups_interleave_and_must_divide():
    """device: auto under data parallel: process r of P on the node gets GPUs r, r+P, ... (its own current device,
    cuda:r, among them)."""
    assert [process_gpu_group(r, 4, 8) for r in range(4)] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert process_gpu_group(0, 1, 2) == [0, 1]
    for args in ((0, 3, 8), (0, 4, 2)):
        with pytest.raises(DeviceError, match="do not split evenly"):
            process_gpu_group(*args)


def test_data_parallel_relaunch_command():
    argv = ["eval", "--model-args", "pretrained=m,device=cpu", "--tasks", "gsm8k_sdlm", "--gpus", "2",
            "--processes=2", "--threads", "9", "--output", "out"]
    cmd, env = data_parallel_command(argv, 2, threads=8, cpu=True)
    assert cmd[:cmd.index("-m")] == ["accelerate", "launch", "--num_processes", "2", "--num_machines", "1",
                                     "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu"]
    assert cmd[cmd.index("-m"):] == ["-m", "sdlm.cli", "eval", "--model-args", "pretrained=m,device=cpu", "--tasks",
                                     "gsm8k_sdlm", "--output", "out", "--threads", "4"]
    assert env == {"OMP_NUM_THREADS": "4", "ACCELERATE_USE_CPU": "1"}
    assert data_parallel_command(argv, 4, threads=2, cpu=False)[1] == {"OMP_NUM_THREADS": "1"}
