"""First contact: `sdlm lm-eval` is lm-eval's own CLI with our model and tasks, giving the same samples as
`sdlm eval`; bad task names and unreachable data fail within seconds, as one line."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datadir import DATA, REPO

SDLM = [sys.executable, "-c", "import sys; from sdlm.cli import main; sys.exit(main())"]
MODEL_ARGS = "alg=prob_conf,block_size=4,threshold=0.5,max_new_tokens=12"


def run(args: list[str], **env) -> subprocess.CompletedProcess:
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(SDLM + args, capture_output=True, text=True, timeout=600, env=e, cwd=REPO)


#: `sdlm` as SDLM runs it, then on stdout: was torch imported (a model loaded, or about to be) when it returned
SDLM_WHAT_RAN = [sys.executable, "-c", "import sys; from sdlm.cli import main; rc = main(); "
                 "print('torch imported:', 'torch' in sys.modules); sys.exit(rc)"]

#: a bound on wall time that only a hang or a retry loop would exceed (the fast path is shown by what did not run)
GENEROUS_S = 90


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from sdlm.testing import tiny_sdlm_checkpoint

    return tiny_sdlm_checkpoint(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.mark.skipif(DATA is None, reason="benchmark data not found")
def test_lm_eval_cli_gives_the_samples_of_sdlm_eval(ckpt, tmp_path):
    ours = run(["eval", "--model-args", f"pretrained={ckpt},{MODEL_ARGS},device=cpu", "--tasks", "gsm8k_sdlm",
                "--limit", "2", "--output", str(tmp_path / "cell"), "--threads", "1"], SDLM_DATA_DIR=DATA)
    assert ours.returncode == 0, ours.stderr[-2000:]
    theirs = run(["lm-eval", "run", "--model", "sdlm", "--model_args", f"pretrained={ckpt},{MODEL_ARGS}",
                  "--tasks", "gsm8k_sdlm", "--limit", "2", "--device", "cpu", "--apply_chat_template",
                  "--system_instruction", "You are a helpful assistant.", "--fewshot_as_multiturn",
                  "--output_path", str(tmp_path / "lm"), "--log_samples", "--threads", "1"], SDLM_DATA_DIR=DATA)
    assert theirs.returncode == 0, theirs.stderr[-3000:]
    mine = [json.loads(x) for x in (tmp_path / "cell" / "samples_gsm8k_sdlm.jsonl").read_text().splitlines()]
    found = sorted(Path(tmp_path / "lm").rglob("samples_gsm8k_sdlm*.jsonl"))
    assert found, list(Path(tmp_path / "lm").rglob("*"))
    other = [json.loads(x) for x in found[0].read_text().splitlines()]
    key = lambda s: s["doc_id"]  # noqa: E731
    assert len(mine) == len(other) == 2
    # lm-eval's tracker logs arguments as {"gen_args_0": {"arg_0": prompt, "arg_1": kwargs}}; sdlm eval as lists
    assert [_args(s) for s in sorted(mine, key=key)] == [_args(s) for s in sorted(other, key=key)]
    assert [s["resps"] for s in sorted(mine, key=key)] == [s["resps"] for s in sorted(other, key=key)]


def _args(sample: dict) -> list:
    args = sample["arguments"]
    if isinstance(args, dict):
        return [[a[f"arg_{i}"] for i in range(len(a))] for a in args.values()]
    return [list(a) for a in args]


def test_lm_eval_cli_lists_our_tasks():
    proc = run(["lm-eval", "ls", "tasks"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gsm8k_sdlm" in proc.stdout and "mbpp_plus_sdlm" in proc.stdout


@pytest.mark.parametrize("command", [
    ["eval", "--model-args", "pretrained=/nowhere,alg=ar", "--tasks", "gsm8k_sdlmm", "--output", "/tmp/x"],
    ["lm-eval", "run", "--model", "sdlm", "--model_args", "pretrained=/nowhere", "--tasks", "mbpp_sldm"],
])
def test_a_mistyped_task_fails_in_seconds(command, tmp_path):
    """Refused before torch is imported and without building lm-eval's task index (~26 s; it would be cached in
    SDLM_CACHE_DIR): what makes it seconds, whatever else the machine is doing."""
    t0 = time.monotonic()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "SDLM_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run(SDLM_WHAT_RAN + command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    took = time.monotonic() - t0
    assert proc.returncode == 2 and "unknown task" in proc.stderr and "did you mean" in proc.stderr, proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1
    assert "torch imported: False" in proc.stdout and not any(tmp_path.iterdir())  # no model, no index
    assert took < GENEROUS_S, took


def test_task_name_checks_themselves_take_milliseconds(tmp_path, monkeypatch):
    from sdlm.tasks import check_task_names, stock_task_names

    import lm_eval.tasks

    monkeypatch.setenv("SDLM_CACHE_DIR", str(tmp_path))
    (tmp_path / "lm_eval_tasks-{}.json".format(__import__("importlib.metadata").metadata.version("lm_eval"))).write_text(
        json.dumps(["gsm8k", "hellaswag"]))  # a warm cache (the first lookup builds it from lm-eval's index)
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda *a, **k: pytest.fail("lm-eval's task index was built"))
    t0 = time.monotonic()
    check_task_names(["gsm8k_sdlm", "hellaswag"])
    for bad in ("gsm8k_sldm", "no_such_task"):
        with pytest.raises(ValueError, match=f"unknown task '{bad}'"):
            check_task_names([bad])
    assert time.monotonic() - t0 < GENEROUS_S / 3  # no index, no import: milliseconds on an idle machine
    assert stock_task_names() == {"gsm8k", "hellaswag"}


def test_unset_data_folder_with_the_hub_off_fails_at_once(ckpt):
    env = {k: v for k, v in os.environ.items() if k != "SDLM_DATA_DIR"}
    t0 = time.monotonic()
    proc = subprocess.run(SDLM_WHAT_RAN + ["lm-eval", "run", "--model", "sdlm", "--model_args", f"pretrained={ckpt}",
                                          "--tasks", "gsm8k_sdlm", "--device", "cpu"], capture_output=True, text=True,
                          timeout=120, env={**env, "HF_HUB_OFFLINE": "1"}, cwd=REPO)
    assert proc.returncode == 2 and "SDLM_DATA_DIR" in proc.stderr and "hub is off" in proc.stderr, proc.stderr
    assert "torch imported: False" in proc.stdout  # before the model (or lm-eval's run) starts
    assert time.monotonic() - t0 < GENEROUS_S


@pytest.mark.skipif(DATA is None, reason="benchmark data not found")
def test_use_cache_is_keyed_by_the_decoder(ckpt, tmp_path):
    """`--use_cache PATH`: lm-eval keys a cached answer by the request alone, so another tau would get the first
    decoder's answers. Per decoder one cache file: the second tau decodes everything itself, the first one run
    again takes both answers from its file, and decode_totals says how many came from the cache."""
    def cell(tau: float, name: str) -> dict:
        proc = run(["lm-eval", "run", "--model", "sdlm", "--model_args",
                    f"pretrained={ckpt},alg=prob_conf,block_size=4,threshold={tau},max_new_tokens=12", "--tasks",
                    "gsm8k_sdlm", "--limit", "2", "--device", "cpu", "--use_cache", str(tmp_path / "cache"),
                    "--output_path", str(tmp_path / name), "--log_samples", "--threads", "1"], SDLM_DATA_DIR=DATA)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads(sorted((tmp_path / name).rglob("results_*.json"))[-1].read_text())
        samples = [json.loads(x) for x in sorted((tmp_path / name).rglob("samples_gsm8k_sdlm*.jsonl"))[-1].read_text().splitlines()]
        return {"totals": results["config"]["decode_totals"], "resps": [s["resps"] for s in samples]}

    first, other, again = cell(0.5, "a"), cell(2.0, "b"), cell(0.5, "c")
    assert (first["totals"]["requests"], first["totals"]["requests_from_cache"]) == (2, 0)
    assert (other["totals"]["requests"], other["totals"]["requests_from_cache"]) == (2, 0)  # its own file
    assert (again["totals"]["requests"], again["totals"]["requests_from_cache"]) == (0, 2)
    assert again["resps"] == first["resps"]
    files = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db")
    assert len(files) == 2 and all(re.fullmatch(r"cache_sdlm-[0-9a-f]{16}_rank0\.db", f) for f in files)
