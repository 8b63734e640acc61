"""sdlm.fidelity (outputs against one-token-per-step decoding) and the report's Wilson intervals.

Fidelity is fed with real decodes of tiny in-process models (tests/decoding_models.py): one-token-per-step
decoding (tau > 1) against itself and against self-speculative decoding must give exactly 1.0; confidence
decoding at a low tau on a bidirectional random model changes the outputs and must give less.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from sdlm import fidelity as F
from sdlm.decoding import generate
from sdlm.report import wilson_interval

from decoding_models import WordTokenizer, cycle_prompt, cyclic_model, random_model

TOK = WordTokenizer()
TASK = "toy_task"  # no answer rule: the answer is lm-eval's filtered_resps


def prompts(n: int = 6, seed: int = 3) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 60, (int(k),), generator=g).tolist() for k in torch.randint(2, 12, (n,), generator=g)]


def samples_of(gens, prompt_list, *, answers=None) -> list[dict]:
    """lm-eval-style logged samples of one generate_until task (one request per doc, filter 'none')."""
    out = []
    for i, (g, p) in enumerate(zip(gens, prompt_list)):
        filtered = g.text if answers is None else answers(g.text)
        out.append({"doc_id": i, "doc": {"i": i}, "resps": [[g.text]], "filtered_resps": [filtered], "filter": "none",
                    "doc_hash": f"d{i}", "prompt_hash": hashlib.sha256(str(p).encode()).hexdigest()})
    return out


def decode(model, ps, **kw):
    return generate(model, TOK, ps, block_size=4, max_new_tokens=24, batch_size=3, **kw)


# ============================================================================================ (a) exactly 1.0
@pytest.mark.parametrize("which", ["random", "cyclic"])
def test_one_token_per_step_against_itself_and_self_speculative_is_exactly_one(which):
    if which == "random":
        model, ps = random_model("qwen2", causal_attn=False, seed=7, peaky=True), prompts()
    else:  # a trained model whose drafts are right: self-speculative takes several tokens per forward
        model, ps = cyclic_model("qwen2"), [cycle_prompt(o, 5) for o in range(0, 12, 2)]
    ref = decode(model, ps, alg="prob_conf", threshold=2.0)
    again = decode(model, ps, alg="prob_conf", threshold=2.0)
    spec = decode(model, ps, alg="self_speculative")
    assert any(g.text for g in ref)  # non-empty outputs are compared
    if which == "cyclic":
        assert sum(g.stats.new_tokens for g in spec) > 1.5 * sum(g.stats.nfe for g in spec)
    for other in (again, spec):
        res = F.compare_samples(samples_of(other, ps), samples_of(ref, ps), task=TASK)
        assert (res["n"], res["identical_text"], res["same_answer"]) == (len(ps), 1.0, 1.0)
        assert res["differing_text"] == [] and res["answer"] == "lm-eval filtered_resps"


# ============================================================================================ (b) below 1.0
def test_low_tau_on_a_bidirectional_model_differs():
    model = random_model("qwen2", causal_attn=False, seed=7, peaky=True)
    ps = prompts()
    ref = decode(model, ps, alg="prob_conf", threshold=2.0)
    low = decode(model, ps, alg="prob_conf", threshold=0.3)
    differ = [i for i, (a, b) in enumerate(zip(low, ref)) if a.text != b.text]
    assert differ, "the case was built to differ, but the outputs are equal"
    res = F.compare_samples(samples_of(low, ps), samples_of(ref, ps), task=TASK)
    assert res["identical_text"] < 1.0 and res["identical_text"] == pytest.approx(1 - len(differ) / len(ps))
    assert res["differing_text"] == differ and res["n_identical_text"] == len(ps) - len(differ)
    # an answer extracted from differing texts can still agree: here the answer is the first word only
    first = lambda t: t.split()[:1]  # noqa: E731
    res = F.compare_samples(samples_of(low, ps, answers=first), samples_of(ref, ps, answers=first), task=TASK)
    same = sum(first(a.text) == first(b.text) for a, b in zip(low, ref))
    assert res["same_answer"] == pytest.approx(same / len(ps)) and res["identical_text"] < 1.0


# ============================================================================================ answers per task
def _rec(doc_id, text, doc=None, **kw):
    return {"doc_id": doc_id, "doc": doc or {}, "resps": [[text]], "filtered_resps": [text], "filter": "none", **kw}


def test_task_answer_rules():
    # GSM8K: the value of the last box (72 == 72.0 == 72.00), prose may differ
    a = [_rec(0, "So 48 + 24 = \\boxed{72}."), _rec(1, "\\boxed{5}"), _rec(2, "no box")]
    b = [_rec(0, "Thus the answer is \\boxed{72.0}"), _rec(1, "\\boxed{6}"), _rec(2, "still none")]
    res = F.compare_samples(a, b, task="gsm8k_sdlm")
    assert (res["identical_text"], res["same_answer"], res["differing_answer"]) == (0.0, 2 / 3, [1])
    assert "boxed" in res["answer"]
    # MATH: last box content without whitespace
    res = F.compare_samples([_rec(0, "x \\boxed{\\frac{1}{2}}")], [_rec(0, "\\boxed{ \\frac{1}{2} }")], task="math500_sdlm")
    assert res["same_answer"] == 1.0 and res["identical_text"] == 0.0
    # code: the extracted program (prose around it ignored; the entry point comes from the doc)
    he = {"entry_point": "add"}
    code = "```python\ndef add(a, b):\n    return a + b\n```"
    res = F.compare_samples([_rec(0, "Here you go:\n" + code, he)], [_rec(0, code + "\nThis adds.", he)],
                            task="humaneval_sdlm")
    assert (res["identical_text"], res["same_answer"]) == (0.0, 1.0)
    mb = {"test_list": ["assert add(1, 2) == 3"]}
    res = F.compare_samples([_rec(0, code, mb)], [_rec(0, code.replace("a + b", "b + a"), mb)], task="mbpp_sdlm")
    assert res["same_answer"] == 0.0


def test_several_filters_and_padding_copies():
    """Stock lm-eval tasks log one record per (doc, filter): the answer is the tuple over filters; a repeated
    (doc, filter) (data-parallel padding) counts once."""
    def recs(strict, flex):
        return [{**_rec(0, "text"), "filter": "strict", "filtered_resps": [strict]},
                {**_rec(0, "text"), "filter": "flex", "filtered_resps": [flex]},
                {**_rec(0, "text"), "filter": "flex", "filtered_resps": ["padding copy"]}]
    assert F.compare_samples(recs("1", "2"), recs("1", "2"))["same_answer"] == 1.0
    res = F.compare_samples(recs("1", "2"), recs("1", "3"))
    assert res["n"] == 1 and res["same_answer"] == 0.0 and res["identical_text"] == 1.0


# ============================================================================================ errors
def test_mismatched_docs_are_one_clear_line():
    a = [_rec(i, "x") for i in range(3)]
    with pytest.raises(ValueError) as err:
        F.compare_samples(a, [_rec(i, "x") for i in (0, 1, 5)])
    msg = str(err.value)
    assert "doc ids" in msg and "only in the first [2]" in msg and "only in the reference [5]" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="prompt of doc"):
        F.compare_samples([_rec(0, "x", prompt_hash="p1")], [_rec(0, "x", prompt_hash="p2")])
    with pytest.raises(ValueError, match="no samples"):
        F.compare_samples([], [])


# ============================================================================================ cells and files
def _cell(root: Path, name: str, texts: list[str], *, alg="prob_conf", tau=2.0, max_new_tokens=16,
          sha="abc", time_utc="2026-01-01T00:00:00Z") -> Path:
    d = root / name
    d.mkdir(parents=True)
    task = "gsm8k_sdlm"
    (d / f"samples_{task}.jsonl").write_text("".join(json.dumps(_rec(i, t)) + "\n" for i, t in enumerate(texts)))
    row = {"task": task, "model": "/ckpt", "alg": alg, "block_size": 4, "threshold": tau, "n": len(texts), "limit": 4,
           "config_sha256": sha, "files": {"samples": f"samples_{task}.jsonl"},
           "provenance": {"config": {"model_args": {"max_new_tokens": max_new_tokens}}, "config_hash": f"h-{name}",
                          "time_utc": time_utc}}
    (d / "cell.json").write_text(json.dumps([row]))
    return d


def test_write_fidelity_files(tmp_path):
    ref = _cell(tmp_path, "step1_D4", ["\\boxed{1}", "\\boxed{2}", "a", "b"])
    low = _cell(tmp_path, "prob_conf_D4_tau0.5", ["\\boxed{1}", "so \\boxed{2}", "c", "b"], tau=0.5)
    res = F.write_fidelity(low, ref)
    data = json.loads((low / F.FIDELITY_FILE).read_text())
    t = data["tasks"]["gsm8k_sdlm"]
    assert (t["n"], t["identical_text"], t["same_answer"]) == (4, 0.5, 1.0)  # "a" vs "c": no box either way
    assert t["cell"]["time_utc"] and t["reference"]["config_hash"] == "h-step1_D4"
    assert data["provenance"]["config_hash"] and data["provenance"]["git"] and res["tasks"] == data["tasks"]
    assert not [p for p in low.iterdir() if p.name.endswith(".tmp")]
    F.write_fidelity(ref, ref)  # the reference against itself: computed, and 1.0
    t = json.loads((ref / F.FIDELITY_FILE).read_text())["tasks"]["gsm8k_sdlm"]
    assert (t["identical_text"], t["same_answer"]) == (1.0, 1.0)
    other = _cell(tmp_path, "other", ["x"] * 4, max_new_tokens=32)
    with pytest.raises(ValueError, match="max_new_tokens differs"):
        F.cell_fidelity(other, ref)
    with pytest.raises(FileNotFoundError, match="not complete"):
        F.cell_fidelity(tmp_path / "nowhere", ref)


# ============================================================================================ (c) Wilson
@pytest.mark.parametrize("k, n, textbook", [
    (0, 10, (0.0, 0.2775)),     # Newcombe (1998) / Agresti & Coull (1998): 0/10 -> [0, 0.278]
    (5, 10, (0.2366, 0.7634)),
    (10, 10, (0.7225, 1.0)),
    (1, 8, (0.0224, 0.4709)),   # 12.5 [2.2, 47.1]
    (81, 263, (0.2553, 0.3662)),
])
def test_wilson_interval(k, n, textbook):
    lo, hi = wilson_interval(k / n, n)
    assert (lo, hi) == pytest.approx(textbook, abs=1e-4)
    stats = pytest.importorskip("scipy.stats")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-6)


def test_wilson_interval_edge_cases():
    assert wilson_interval(None, 10) == (None, None) and wilson_interval(0.5, None) == (None, None)
    assert wilson_interval(0.5, 0) == (None, None) and wilson_interval(1.5, 10) == (None, None)
    lo, hi = wilson_interval(0.3, 10_000)
    assert lo < 0.3 < hi and hi - lo < 0.02
