"""Every long job resumes (issue 21): ``sdlm distill``, ``sdlm retrofit`` and ``sdlm eval``, each started as a
subprocess, killed with SIGKILL at a random point after some work is kept, and rerun with the same command,
give what an uninterrupted run of the same command gives (the expected values always come from that run):
distill a byte-identical file, retrofit bitwise-equal fp32 weights and the same ``sdlm_training.json`` but for
timings and the resume record, an evaluation cell the same samples, texts, scores and token statistics. Kept
work written for other settings is discarded, never merged. Tiny models, one thread. The kill point is drawn at
random; its seed is printed (``SDLM_RESUME_SEED`` replays one)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("SDLM_DIE_WITH", None)
DATA_DIR = Path(os.environ.get("SDLM_DATA_DIR") or REPO.parent / "shared" / "data")
ENV["SDLM_DATA_DIR"] = str(DATA_DIR)


@pytest.fixture(scope="module")
def rng() -> random.Random:
    seed = int(os.environ.get("SDLM_RESUME_SEED") or time.time_ns() % 100_000)
    print(f"\nkill points drawn with SDLM_RESUME_SEED={seed}")
    return random.Random(seed)


def sdlm(*args: str) -> list[str]:
    return [sys.executable, "-m", "sdlm.cli", *args, "--threads", "1"]


def run_ok(cmd: list[str]) -> str:
    p = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def kill_when(cmd: list[str], ready: Callable[[], bool], *, timeout: float = 300.0) -> None:
    """Start ``cmd``, wait until ``ready()``, then SIGKILL it (no cleanup handler runs). It must not finish
    first: the test would then not test a resume."""
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"{cmd[3]} ended ({proc.returncode}) before the kill point:\n"
                            f"{proc.stdout.read().decode()[-3000:]}")
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"{cmd[3]}: kill point not reached in {timeout:.0f}s")
            time.sleep(0.005)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


def lines_in(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny Qwen2 model folder and a chat JSONL of 48 short records."""
    import torch

    from sdlm.models import save_model
    from sdlm.testing import chat_record, tiny_model

    d = tmp_path_factory.mktemp("resume_base")
    torch.set_num_threads(1)
    model, tok = tiny_model("qwen2", seed=0)
    save_model(model, tok, d / "model")
    r = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    recs = []
    for k in range(48):
        i, n = r.randrange(26), r.randrange(6, 12)
        recs.append(chat_record(f"{letters[i]} {k}", " ".join(letters[(i + j) % 26] for j in range(n))))
    (d / "chat.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
    return d


# ---------------------------------------------------------------------------------------------------- distill


def distill_cmd(base: Path, out: Path, max_new: int = 32) -> list[str]:
    return sdlm("distill", "--base", str(base / "model"), "--data", str(base / "chat.jsonl"), "--out", str(out),
                "--max-new-tokens", str(max_new), "--batch-size", "2")


@pytest.fixture(scope="module")
def distilled(base, tmp_path_factory) -> Path:
    """The uninterrupted run: the expected file."""
    ref = tmp_path_factory.mktemp("distill_ref") / "d.jsonl"
    run_ok(distill_cmd(base, ref))
    assert not Path(f"{ref}.partial").exists()  # removed once the output is written
    return ref


def test_distill_killed_and_rerun_gives_the_same_file(base, distilled, tmp_path, rng):
    out = tmp_path / "run" / "d.jsonl"
    partial = Path(f"{out}.partial")
    at = rng.randint(2, 16)  # header + at least one finished batch; 24 batches in all
    kill_when(distill_cmd(base, out), lambda: lines_in(partial) >= at)
    assert partial.exists() and not out.exists()
    with open(partial, "ab") as f:  # a kill in the middle of a write leaves a cut line: it must be ignored
        f.write(b'{"batch": 99, "answers": [{"te')
    log = run_ok(distill_cmd(base, out))
    assert "resuming from" in log and "batches kept from an earlier run" in log
    assert out.read_bytes() == distilled.read_bytes()
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["resumed_batches"] >= at - 1 and meta["batches"] == 24
    assert not partial.exists()


def test_distill_refuses_kept_batches_of_other_settings(base, distilled, tmp_path, rng):
    out = tmp_path / "d.jsonl"
    partial = Path(f"{out}.partial")
    kill_when(distill_cmd(base, out, max_new=16), lambda: lines_in(partial) >= rng.randint(2, 8))
    log = run_ok(distill_cmd(base, out, max_new=32))  # another token budget: nothing kept may be reused
    assert "discarding" in log and "max_new_tokens" in log
    assert out.read_bytes() == distilled.read_bytes()
    assert json.loads(out.with_suffix(".meta.json").read_text())["resumed_batches"] == 0


# ---------------------------------------------------------------------------------------------------- retrofit

TIMINGS = {"train_seconds", "seconds_per_step", "probe_seconds", "train_runtime", "train_samples_per_second",
           "train_steps_per_second"}


def retrofit_cmd(base: Path, out: Path, lr: str = "3e-3") -> list[str]:
    """40 steps, a resume checkpoint every 5 (log lines every 3: the loss sums cross checkpoints), a kept
    checkpoint every 10, a TPF probe every 8 steps."""
    return sdlm("retrofit", "--base", str(base / "model"), "--data", str(base / "chat.jsonl"), "--out", str(out),
                "--block-size", "2", "--max-steps", "40", "--lr", lr, "--batch-size", "4", "--max-len", "96",
                "--warmup", "0", "--logging-steps", "3", "--resume-every", "5", "--save-steps", "10",
                "--probe-every", "8", "--probe-prompts", "4", "--probe-max-new-tokens", "8", "--seed", "0")


def without_timings(obj):
    """A training summary as it must repeat: no wall-clock figures, no resume record, no provenance."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items()
                if k not in TIMINGS | {"resumed", "provenance", "out"}}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def newest_checkpoint(folder: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return max(steps, default=0)


@pytest.fixture(scope="module")
def retrofitted(base, tmp_path_factory) -> Path:
    """The uninterrupted run: the expected checkpoint."""
    out = tmp_path_factory.mktemp("retrofit_ref") / "ckpt"
    run_ok(retrofit_cmd(base, out))
    assert not (out / "resume").exists()  # deleted after the final save
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-20", "checkpoint-30",
                                                                 "checkpoint-40"]  # --save-steps: kept
    return out


def assert_same_training(out: Path, ref: Path) -> dict:
    from safetensors.torch import load_file

    got, want = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].equal(want[k]), f"{k} differs"  # bitwise
    summary = json.loads((out / "sdlm_training.json").read_text())
    expected = json.loads((ref / "sdlm_training.json").read_text())
    assert without_timings(summary) == without_timings(expected)
    assert len(summary["tpf_curve"]) == 6 and summary["train_loss"] is not None  # steps 0, 8, ..., 40
    assert not (out / "resume").exists()
    return summary


def test_retrofit_killed_and_rerun_ends_where_an_uninterrupted_run_ends(base, retrofitted, tmp_path, rng):
    out = tmp_path / "ckpt"
    resume = out / "resume"
    at = rng.choice([5, 10, 15, 20, 25, 30])
    kill_when(retrofit_cmd(base, out), lambda: newest_checkpoint(resume) >= at)
    time.sleep(0)  # the process is gone; what it left is what a power cut leaves (every write was fsynced)
    kept = newest_checkpoint(resume)
    assert kept >= at and not (out / "sdlm_training.json").exists()
    # a save cut short is never resumed from
    (resume / "incomplete" / "checkpoint-1000").mkdir(parents=True, exist_ok=True)
    (resume / "incomplete" / "checkpoint-1000" / "trainer_state.json").write_text('{"global_st')
    log = run_ok(retrofit_cmd(base, out))
    assert f"resuming from {resume / f'checkpoint-{kept}'}" in log
    logged = [int(x.split()[2].split("/")[0]) for x in log.splitlines() if x.startswith("[sdlm] step ")]
    assert logged and min(logged) > kept  # the kept steps were not trained again
    summary = assert_same_training(out, retrofitted)
    assert summary["resumed"]["count"] == 1 and summary["resumed"]["from_steps"] == [kept]
    assert json.loads((retrofitted / "sdlm_training.json").read_text())["resumed"]["count"] == 0


def test_retrofit_refuses_the_resume_state_of_another_run(base, retrofitted, tmp_path, rng):
    out = tmp_path / "ckpt"
    kill_when(retrofit_cmd(base, out, lr="1e-3"), lambda: newest_checkpoint(out / "resume") >= rng.choice([5, 10]))
    log = run_ok(retrofit_cmd(base, out))  # another learning rate: the kept state must not be continued
    assert "discarding the resume state" in log and "differs in: lr" in log
    summary = assert_same_training(out, retrofitted)
    assert summary["resumed"]["count"] == 0


# ---------------------------------------------------------------------------------------------------- eval

EVAL_TASKS = ("gsm8k_sdlm", "math500_sdlm")
TIMING_FIELDS = {"prefill_s", "decode_s", "wall_s", "tokens_per_s", "eval_wall_s", "load", "provenance", "time_utc",
                 "from_earlier_process", "resumed_requests"}


@pytest.fixture(scope="module")
def sdlm_ckpt(tmp_path_factory) -> str:
    from sdlm.testing import tiny_sdlm_checkpoint

    return tiny_sdlm_checkpoint(tmp_path_factory.mktemp("resume_sdlm") / "ckpt")


def eval_cmd(ckpt: str, out: Path, tau: float = 0.5) -> list[str]:
    """12 docs of two tasks, 2 requests per batch: 12 batches."""
    return sdlm("eval", "--model-args", f"pretrained={ckpt},alg=prob_conf,block_size=4,threshold={tau},"
                                        "max_new_tokens=16,batch_size=2,device=cpu",
                "--tasks", ",".join(EVAL_TASKS), "--limit", "12", "--output", str(out))


def cell_view(cell: Path) -> dict:
    """Everything of a cell that must repeat: samples, stats and cell rows without wall-clock figures, scores."""
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in TIMING_FIELDS}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    def jsonl(p: Path) -> list:
        return [json.loads(x) for x in p.read_text().splitlines()]

    results = json.loads((cell / "results.json").read_text())
    return {
        "cell": strip(json.loads((cell / "cell.json").read_text())),
        "results": results["results"], "n-samples": results["n-samples"],
        **{f"samples_{t}": jsonl(cell / f"samples_{t}.jsonl") for t in EVAL_TASKS},
        **{f"stats_{t}": strip(jsonl(cell / f"stats_{t}.jsonl")) for t in EVAL_TASKS},
    }


@pytest.fixture(scope="module")
def evaluated(sdlm_ckpt, tmp_path_factory) -> Path:
    """The uninterrupted cell: the expected files."""
    cell = tmp_path_factory.mktemp("eval_ref") / "cell"
    run_ok(eval_cmd(sdlm_ckpt, cell))
    assert not list(cell.glob("partial_generations*"))  # deleted once cell.json is written
    return cell


needs_data = pytest.mark.skipif(not (DATA_DIR / "gsm8k" / "test.jsonl").is_file(), reason=f"no benchmark data in {DATA_DIR}")


@needs_data
def test_eval_cell_killed_and_rerun_equals_an_uninterrupted_cell(sdlm_ckpt, evaluated, tmp_path, rng):
    cell = tmp_path / "cell"
    partial = cell / "partial_generations.rank0.jsonl"
    at = rng.randint(2, 10)  # header + at least one batch; 12 batches in all
    kill_when(eval_cmd(sdlm_ckpt, cell), lambda: lines_in(partial) >= at)
    assert not (cell / "cell.json").exists()
    kept = lines_in(partial) - 1
    log = run_ok(eval_cmd(sdlm_ckpt, cell))
    assert "resuming from" in log
    assert cell_view(cell) == cell_view(evaluated)
    stats = [json.loads(x) for t in EVAL_TASKS for x in (cell / f"stats_{t}.jsonl").read_text().splitlines()]
    assert sum(r["from_earlier_process"] for r in stats) == 2 * kept  # kept batches were not decoded again
    assert json.loads((cell / "results.json").read_text())["sdlm"]["resumed_requests"] == 2 * kept
    ref_stats = [json.loads(x) for t in EVAL_TASKS for x in (evaluated / f"stats_{t}.jsonl").read_text().splitlines()]
    assert not any(r["from_earlier_process"] for r in ref_stats)
    assert not partial.exists()


@needs_data
def test_eval_refuses_generations_of_another_decoder(sdlm_ckpt, evaluated, tmp_path, rng):
    cell = tmp_path / "cell"
    partial = cell / "partial_generations.rank0.jsonl"
    kill_when(eval_cmd(sdlm_ckpt, cell, tau=0.9), lambda: lines_in(partial) >= rng.randint(2, 6))
    log = run_ok(eval_cmd(sdlm_ckpt, cell, tau=0.5))  # another threshold: no kept text may be reused
    assert "discarding" in log and "threshold" in log
    assert cell_view(cell) == cell_view(evaluated)
    assert json.loads((cell / "results.json").read_text())["sdlm"]["resumed_requests"] == 0
