"""One evaluation cell end to end (sdlm/evaluate.py): lm-eval + our tasks + the ``sdlm`` model -> fixed-name files.

Tiny random checkpoints, offline, data from ``SDLM_DATA_DIR`` (default: the repo's sibling ``shared/data``).
Scores are 0 on random weights; what is checked is the plumbing: file names and contents, consistency of the
decode statistics, the AR baseline equal to lm-eval's own ``hf`` model through the whole pipeline, the same
result under 2-process data parallelism, clear errors, and that an interrupted run leaves no ``cell.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from sdlm import evaluate as ev  # noqa: E402
from sdlm.evaluate import evaluate_cell  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SDLM_DATA_DIR") or REPO.parent / "shared" / "data")
TASKS = ["gsm8k_sdlm", "math500_sdlm", "humaneval_sdlm", "mbpp_sdlm", "mbpp_full_sdlm"]
# the checkpoint's LM head is scaled up ("peaky") so confidences spread over (0, 1): threshold 0.5 then accepts
# 1..4 tokens per step (TPF is not trivially 1) and few decisions sit at the threshold
SDLM_ARGS = "alg=prob_conf,block_size=4,threshold=0.5,max_new_tokens=16,device=cpu"

pytestmark = pytest.mark.skipif(not (DATA_DIR / "gsm8k" / "test.jsonl").is_file(), reason=f"no benchmark data in {DATA_DIR}")


@pytest.fixture(scope="module", autouse=True)
def data_env():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDLM_DATA_DIR", str(DATA_DIR))
        yield


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from sdlm.testing import tiny_sdlm_checkpoint

    return tiny_sdlm_checkpoint(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="module")
def cell(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("cell")
    ret = evaluate_cell(f"pretrained={ckpt},{SDLM_ARGS}", TASKS, limit=2, output_dir=out)
    return out, ret


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_end_to_end_files_and_stats(cell, ckpt):
    out, ret = cell
    expected = {"results.json", "cell.json"} | {f"{k}_{t}.jsonl" for t in TASKS for k in ("samples", "stats")}
    assert {p.name for p in out.iterdir()} == expected  # fixed names, no leftover temp files

    rows = json.loads((out / "cell.json").read_text())
    assert rows == json.loads(json.dumps(ret["rows"])) and [r["task"] for r in rows] == TASKS
    results = json.loads((out / "results.json").read_text())
    saw_multi_token_steps = False
    for row in rows:
        task = row["task"]
        assert (row["model"], row["alg"], row["block_size"], row["threshold"], row["n"]) == (ckpt, "prob_conf", 4, 0.5, 2)
        assert row["metrics"] and all(v is None or 0.0 <= v <= 1.0 for v in row["metrics"].values())
        assert row["metrics"] == {k: v for k, v in results["results"][task].items() if "," in k}
        assert row["provenance"]["config_hash"] and row["provenance"]["seed"] == 1234

        samples = _jsonl(out / f"samples_{task}.jsonl")
        assert [s["doc_id"] for s in samples] == [0, 1]
        for s in samples:  # code answers say why they passed or failed (the checker's verdict), beside the score
            if "pass_at_1" in s:
                assert s["verdict"]["status"] in ("passed", "failed", "timeout")
                assert (s["verdict"]["status"] == "passed") == (s["pass_at_1"] == 1.0)
                assert s["verdict"]["status"] == "passed" or s["verdict"]["reason"]
            else:
                assert "verdict" not in s
        prompt = samples[0]["arguments"][0][0]  # chat-templated by lm-eval, with the paper's system prompt
        assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
        assert prompt.endswith("<|im_start|>assistant\n")

        stats = _jsonl(out / f"stats_{task}.jsonl")
        assert [(s["task"], s["doc_id"]) for s in stats] == [(task, 0), (task, 1)]
        tokens, nfe = sum(s["new_tokens"] for s in stats), sum(s["nfe"] for s in stats)
        d = row["decode"]
        assert (d["new_tokens"], d["nfe"]) == (tokens, nfe) and 0 < tokens <= 2 * 16
        assert d["tpf"] == pytest.approx(tokens / nfe) and d["tokens_per_s"] == pytest.approx(tokens / d["wall_s"])
        assert d["wall_s"] == pytest.approx(d["prefill_s"] + d["decode_s"])
        hist = d["accepted_hist"]
        assert len(hist) == 4 and sum(hist) == sum(sum(s["accepted_hist"]) for s in stats)
        assert sum((k + 1) * n for k, n in enumerate(hist)) == tokens  # kept tokens per forward
        saw_multi_token_steps |= d["tpf"] > 1.0

    assert saw_multi_token_steps
    cfg = results["config"]
    assert (cfg["alg"], cfg["threshold"], cfg["block_size"], cfg["model_dtype"]) == ("prob_conf", 0.5, 4, "float32")
    assert len(cfg["config_sha256"]) == 64 and cfg["decode_totals"]["requests"] == 2 * len(TASKS)
    assert results["sdlm"]["chat_template"] and results["sdlm"]["system_instruction"] == "You are a helpful assistant."
    assert results["provenance"]["config"]["tasks"] == TASKS and "samples" not in results


def test_ar_cell_equals_lm_eval_hf_model(ckpt, tmp_path):
    """The whole pipeline (task prompts, chat template, stop handling) with alg=ar gives lm-eval's ``hf`` answers."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from sdlm.tasks import task_manager

    gen = {"max_gen_toks": 12}
    ours = evaluate_cell(f"pretrained={ckpt},alg=ar,device=cpu", ["gsm8k_sdlm"], limit=2, output_dir=tmp_path,
                         gen_kwargs=gen)
    ours_samples = _jsonl(tmp_path / "samples_gsm8k_sdlm.jsonl")
    theirs = lm_eval.simple_evaluate(
        model=HFLM(pretrained=ckpt, device="cpu", batch_size=2, dtype="float32"), tasks=["gsm8k_sdlm"], limit=2,
        task_manager=task_manager(include_defaults=False), apply_chat_template=True, system_instruction=ev.DEFAULT_SYSTEM_PROMPT,
        gen_kwargs=gen, log_samples=True, random_seed=1234, numpy_random_seed=1234, torch_random_seed=1234,
        fewshot_random_seed=1234)
    theirs_samples = theirs["samples"]["gsm8k_sdlm"]
    assert [s["arguments"] for s in ours_samples] == json.loads(json.dumps([s["arguments"] for s in theirs_samples]))
    assert [s["resps"] for s in ours_samples] == [s["resps"] for s in theirs_samples]
    assert any(r[0][0] for r in (s["resps"] for s in ours_samples))  # non-empty answers were compared
    assert ours["rows"][0]["decode"]["tpf"] == 1.0


def test_fidelity_of_real_cells(cell, ckpt, tmp_path):
    """sdlm.fidelity on cells written by evaluate_cell: the one-token-per-step reference (threshold 2.0) against
    itself and against self-speculative decoding is exactly 1.0 on every task; the tau = 0.5 cell is compared
    doc by doc on all five tasks (answers extracted per task)."""
    from sdlm.fidelity import FIDELITY_FILE, cell_fidelity, write_fidelity

    base = SDLM_ARGS.replace(",threshold=0.5", "").replace("alg=prob_conf,", "")
    ref, spec = tmp_path / "step1_D4", tmp_path / "self_speculative_D4"
    evaluate_cell(f"pretrained={ckpt},alg=prob_conf,threshold=2.0,{base}", TASKS, limit=2, output_dir=ref)
    evaluate_cell(f"pretrained={ckpt},alg=self_speculative,{base}", ["gsm8k_sdlm", "mbpp_sdlm"], limit=2, output_dir=spec)
    assert json.loads((spec / "cell.json").read_text())[0]["decode"]["tpf"] > 1.0  # it did take several per step
    for other, tasks in ((ref, TASKS), (spec, ["gsm8k_sdlm", "mbpp_sdlm"])):
        res = write_fidelity(other, ref)["tasks"]
        assert list(res) == tasks and (other / FIDELITY_FILE).is_file()
        assert all((r["n"], r["identical_text"], r["same_answer"]) == (2, 1.0, 1.0) for r in res.values())
    res = cell_fidelity(cell[0], ref)["tasks"]
    assert list(res) == TASKS and all(r["n"] == 2 and r["same_answer"] >= r["identical_text"] for r in res.values())
    assert any(r["identical_text"] < 1.0 for r in res.values())  # bidirectional blocks at tau 0.5 change outputs
    assert res["mbpp_sdlm"]["answer"].startswith("extracted program")


def test_data_parallel_two_processes(cell, ckpt, tmp_path):
    """``torchrun`` x2 (gloo on CPU): lm-eval shards the docs (3 -> 2 + 1, padded), our hooks gather them back."""
    out, script = tmp_path / "dp", tmp_path / "dp.py"
    script.write_text("import sys\nfrom sdlm.evaluate import evaluate_cell\n"
                      "evaluate_cell(sys.argv[1], ['gsm8k_sdlm'], limit=3, output_dir=sys.argv[2])\n")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                           f"pretrained={ckpt},{SDLM_ARGS},batch_size=1", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "cell.json").read_text())
    stats = _jsonl(out / "stats_gsm8k_sdlm.jsonl")
    assert rows[0]["n"] == 3 and [s["doc_id"] for s in stats] == [0, 1, 2]  # the padding request decoded once
    assert {s["rank"] for s in stats} == {0, 1}
    dp = sorted(_jsonl(out / "samples_gsm8k_sdlm.jsonl"), key=lambda s: s["doc_id"])
    single = _jsonl(cell[0] / "samples_gsm8k_sdlm.jsonl")
    # same answers as one process (lm-eval appends the padding copy's answer to the padded doc's resps too)
    assert [s["resps"][0][0] for s in dp[:2]] == [s["resps"][0][0] for s in single]
    assert [s["filtered_resps"] for s in dp[:2]] == [s["filtered_resps"] for s in single]


def test_interrupted_run_leaves_no_cell_json(ckpt, tmp_path, monkeypatch):
    (tmp_path / "cell.json").write_text("[]")  # a stale marker from an earlier run must not survive
    real = ev.atomic_write_json

    def failing(path, obj):
        if Path(path).name == "results.json":
            raise KeyboardInterrupt("simulated interruption while writing results.json")
        return real(path, obj)

    monkeypatch.setattr(ev, "atomic_write_json", failing)
    with pytest.raises(KeyboardInterrupt):
        evaluate_cell(f"pretrained={ckpt},alg=ar,max_new_tokens=2,device=cpu", ["gsm8k_sdlm"], limit=1, output_dir=tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert "cell.json" not in names and "results.json" not in names
    assert not [n for n in names if n.endswith(".tmp")]


@pytest.mark.parametrize("model_args, tasks, message", [
    ("pretrained=/nowhere,alg=ar", ["gsm8k_sdlmm"], "unknown task 'gsm8k_sdlmm'; did you mean gsm8k_sdlm"),
    ("pretrained=/nowhere,alg=ar", ["no_such_task"], "available: gsm8k_sdlm, math500_sdlm, humaneval_sdlm"),
    ("pretrained=/nowhere,alg=fast", ["gsm8k_sdlm"], "unknown alg 'fast'; choose one of ar, prob_conf"),
    ("pretrained=/nowhere,threshold=0", ["gsm8k_sdlm"], "threshold must be a number in (0, inf), got 0"),
    ("pretrained=/nowhere,threshold=nan", ["gsm8k_sdlm"], "threshold must be a number in (0, inf), got nan"),
    ("pretrained=/nowhere,block_size", ["gsm8k_sdlm"], "malformed model_args item 'block_size'"),
    ({"pretrained": "/nowhere", "threshold": -1.0}, ["gsm8k_sdlm"], "threshold must be a number in (0, inf), got -1.0"),
    ("pretrained=/nowhere", [], "no task given; available: gsm8k_sdlm"),
])
def test_bad_input_is_one_clear_line(model_args, tasks, message, tmp_path):
    with pytest.raises(ValueError) as err:
        evaluate_cell(model_args, tasks, limit=2, output_dir=tmp_path)  # /nowhere is never loaded
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


def test_missing_data_dir_error_reaches_the_user(monkeypatch, tmp_path):
    from sdlm.data import DataNotFoundError, load_records

    monkeypatch.delenv("SDLM_DATA_DIR")
    with pytest.raises(DataNotFoundError) as direct:
        load_records("gsm8k", "test")
    with pytest.raises(DataNotFoundError) as err:
        evaluate_cell("pretrained=/nowhere,alg=ar", ["gsm8k_sdlm"], limit=2, output_dir=tmp_path)
    assert str(err.value) == str(direct.value) and "SDLM_DATA_DIR" in str(err.value)

    monkeypatch.setenv("SDLM_DATA_DIR", str(tmp_path))  # set, but without the file
    with pytest.raises(DataNotFoundError, match="missing file .*gsm8k/test.jsonl"):
        evaluate_cell("pretrained=/nowhere,alg=ar", ["gsm8k_sdlm"], limit=2, output_dir=tmp_path / "out")


@pytest.mark.parametrize("argv, message", [
    (["--model-args", "pretrained=/nowhere,alg=magic", "--tasks", "gsm8k_sdlm"], "unknown alg 'magic'"),
    (["--model-args", "pretrained=/nowhere,threshold=-1", "--tasks", "gsm8k_sdlm"], "threshold must be a number in (0, inf)"),
    (["--model-args", "pretrained=/nowhere", "--tasks", "gsm8k_sdlmm"], "unknown task 'gsm8k_sdlmm'"),
    (["--model-args", "pretrained=/nowhere", "--tasks", "gsm8k_sdlm", "--limit", "0"], "limit must be a positive integer"),
    (["--model-args", "pretrained", "--tasks", "gsm8k_sdlm"], "malformed model_args item 'pretrained'"),
    (["--tasks", "gsm8k_sdlm"], "the following arguments are required: --model-args"),
])
def test_cli_eval_bad_input(argv, message, tmp_path, capsys):
    from sdlm.cli import main

    try:
        rc = main(["eval", *argv, "--output", str(tmp_path / "out")])
    except SystemExit as e:  # argparse errors exit from inside main
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("sdlm") and message in err and "\n" not in err and "Traceback" not in err


def test_cli_eval_runs_a_cell(ckpt, tmp_path, capsys):
    from sdlm.cli import main

    rc = main(["eval", "--model-args", f"pretrained={ckpt},{SDLM_ARGS}", "--tasks", "gsm8k_sdlm", "--limit", "1",
               "--output", str(tmp_path), "--seed", "7"])
    assert rc == 0 and "gsm8k_sdlm: n=1 exact_match,none=0.0000" in capsys.readouterr().out
    row = json.loads((tmp_path / "cell.json").read_text())[0]
    assert row["seed"] == 7 and row["n"] == 1 and row["system_prompt"] == "You are a helpful assistant."
