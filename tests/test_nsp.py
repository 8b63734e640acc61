"""NSP rows (spec section 1): spans, candidate starts, block count, per-position targets (no dropped
target), EOS/end handling, clean_loss, seeding, bad input, collation; AR rows; GSM8K chat records."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import random
import warnings

import pytest
import torch

from datadir import DATA, needs_data
from sdlm.masks import to_additive, training_visibility
from sdlm.models import ensure_mask_token
from sdlm.nsp import (
    IGNORE,
    NSPCollator,
    RecordError,
    ar_row,
    build_ar_rows,
    build_nsp_rows,
    nsp_row,
    tokenize_chat,
)
from sdlm.testing import chat_record, tiny_model


@pytest.fixture(scope="module")
def tm():
    model, tok = tiny_model("qwen2")
    mid = ensure_mask_token(model, tok, block_size=4)
    return model, tok, mid


def make(tok, mid, rec, *, D=4, max_len=512, seed=0, **kw):
    return nsp_row(rec, tok, block_size=D, mask_token_id=mid, max_len=max_len, rng=random.Random(seed), **kw)


def test_spans_and_candidates(tm):
    _, tok, _ = tm
    rec = chat_record("count", ["a b c d e", "f g"], system="sys")
    ct = tokenize_chat(rec, tok)
    assert [tok.decode(ct.input_ids[s:e]) for s, e in ct.spans] == ["a b c d e", "f g"]
    for s, e in ct.spans:
        assert tok.convert_ids_to_tokens(ct.input_ids[s - 1]) == "Ċ"  # last header token ("assistant\n")
        assert ct.input_ids[e] == tok.eos_token_id  # the turn's EOS right after the content


def test_row_layout_and_targets(tm):
    _, tok, mid = tm
    D = 4
    rec = chat_record("count", ["a b c d e", "f g"], system="sys")
    ct = tokenize_chat(rec, tok)
    x, n = ct.input_ids, len(ct.input_ids)
    cands = [p for s, e in ct.spans for p in range(s - 1, e)]
    r = make(tok, mid, rec, D=D)
    starts = r["meta"]["starts"]
    # B = min(max_len - n, R * repeat) // D, capped by R (sampling without replacement)
    assert len(starts) == min(min(512 - n, len(cands) * 3) // D, len(cands))
    assert starts == sorted(set(starts)) and set(starts) <= set(cands)
    assert r["input_ids"][:n] == x and r["position_ids"][:n] == list(range(n))
    assert len(r["input_ids"]) == n + D * len(starts)
    for b, p in enumerate(starts):
        sl = slice(n + b * D, n + (b + 1) * D)
        assert r["input_ids"][sl] == [x[p]] + [mid] * (D - 1)
        assert r["position_ids"][sl] == list(range(p, p + D))
        assert r["block_index"][sl] == list(range(D))
        want, stop = [], False
        for i in range(D):  # logit i -> x_{p+1+i}; nothing after an EOS (EOS itself is a target)
            t = p + 1 + i
            want.append(IGNORE if stop or t >= n else x[t])
            stop = stop or (t < n and x[t] == tok.eos_token_id)
        assert r["labels"][sl] == want
    # the clean part is unlabelled by default, but carries the clean targets for logging
    assert all(v == IGNORE for v in r["labels"][:n])
    s0, e0 = ct.spans[0]
    assert r["clean_targets"][s0 - 1: e0] == x[s0: e0 + 1]  # response tokens + EOS
    assert r["block_index"][:n] == [-1] * n


def test_last_block_keeps_its_last_target(tm):
    """The reference drops the D-th target of a row's final block; we must not."""
    _, tok, mid = tm

    class Fixed(random.Random):  # choose the block starts: the first candidate and one mid-response
        def sample(self, population, k):
            return [population[0], population[3]]

    rec = chat_record("q", "a b c d e f g h i j")
    ct = tokenize_chat(rec, tok)
    x, n = ct.input_ids, len(ct.input_ids)
    s, _ = ct.spans[0]
    r = nsp_row(rec, tok, block_size=4, mask_token_id=mid, max_len=512, rng=Fixed())
    assert r["meta"]["starts"] == [s - 1, s + 2]
    assert r["labels"][n:] == x[s: s + 4] + x[s + 3: s + 7]  # every target of the final block present
    assert r["labels"][-1] == x[s + 2 + 4]


def test_block_at_turn_end_predicts_eos_then_nothing(tm):
    _, tok, mid = tm
    rec = chat_record("q", "a b c")
    ct = tokenize_chat(rec, tok)
    s, e = ct.spans[0]
    # force a block at the last content token: repeat large enough to take every candidate
    r = make(tok, mid, rec, D=4, repeat=8)
    starts = r["meta"]["starts"]
    assert starts == list(range(s - 1, e))
    n = len(ct.input_ids)
    b = starts.index(e - 1)
    assert r["labels"][n + 4 * b: n + 4 * b + 4] == [tok.eos_token_id, IGNORE, IGNORE, IGNORE]
    assert e not in starts  # the EOS is a target, never a block start


def test_clean_loss_option(tm):
    _, tok, mid = tm
    rec = chat_record("q", "a b c d")
    off = make(tok, mid, rec)
    on = make(tok, mid, rec, clean_loss=True)
    n = off["meta"]["n_clean"]
    assert on["labels"][:n] == on["clean_targets"][:n] and any(v != IGNORE for v in on["labels"][:n])
    assert on["labels"][n:] == off["labels"][n:]


def test_seeded_and_repeat(tm):
    _, tok, mid = tm
    rec = chat_record("q", "a b c d e f g h i j k l m n o p")
    assert make(tok, mid, rec, seed=1) == make(tok, mid, rec, seed=1)
    assert make(tok, mid, rec, seed=1)["meta"]["starts"] != make(tok, mid, rec, seed=2)["meta"]["starts"]
    few = make(tok, mid, rec, repeat=1, D=4)["meta"]["n_blocks"]
    many = make(tok, mid, rec, repeat=3, D=4)["meta"]["n_blocks"]
    assert few < many
    rows1, _ = build_nsp_rows([rec, rec], tok, block_size=4, mask_token_id=mid, max_len=512, seed=5)
    rows2, _ = build_nsp_rows([rec], tok, block_size=4, mask_token_id=mid, max_len=512, seed=5)
    assert rows1[0] == rows2[0]  # a row does not depend on the other records


def test_multi_turn_only_assistant_tokens_are_candidates(tm):
    _, tok, mid = tm
    rec = chat_record("hello", ["a b", "c d"], system="sys")
    ct = tokenize_chat(rec, tok)
    cands = {p for s, e in ct.spans for p in range(s - 1, e)}
    r = make(tok, mid, rec, repeat=8)
    assert set(r["meta"]["starts"]) == cands


# ---------------------------------------------------------------------------------------------------- bad input


def test_no_assistant_turn_and_empty_response(tm):
    _, tok, mid = tm
    with pytest.raises(RecordError, match="record 7: record has no assistant turn"):
        make(tok, mid, {"messages": [{"role": "user", "content": "hi"}]}, where="record 7")
    with pytest.raises(RecordError, match="every assistant response is empty"):
        make(tok, mid, chat_record("hi", "   "))
    with pytest.raises(RecordError, match="messages"):
        make(tok, mid, {"text": "not a chat"})
    with pytest.raises(RecordError, match="string 'role' and 'content'"):
        make(tok, mid, {"messages": [{"role": "user"}]})
    # an empty turn among good ones is simply not a source of blocks
    r = make(tok, mid, chat_record("hi", ["", "a b"]), repeat=8)
    ct = tokenize_chat(chat_record("hi", ["", "a b"]), tok)
    assert len(ct.spans) == 1 and set(r["meta"]["starts"]) == set(range(ct.spans[0][0] - 1, ct.spans[0][1]))


def test_build_skips_bad_records_with_one_warning(tm):
    _, tok, mid = tm
    recs = [chat_record("q", "a b c"), {"messages": [{"role": "user", "content": "x"}]}, chat_record("q", "")]
    with pytest.warns(UserWarning, match=r"skipped 2 of 3 records \(no assistant turn: 1, empty response: 1\)"):
        rows, rep = build_nsp_rows(recs, tok, block_size=4, mask_token_id=mid, max_len=512)
    assert len(rows) == 1 and rep.as_dict()["skipped"] == {"no assistant turn": 1, "empty response": 1}
    with pytest.raises(RecordError, match="no usable record among 2"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_nsp_rows(recs[1:], tok, block_size=4, mask_token_id=mid, max_len=512)


def test_response_shorter_than_block(tm):
    """Kept: targets after the EOS are ignored, so the blocks just have fewer labelled positions."""
    _, tok, mid = tm
    rec = chat_record("q", "a")
    ct = tokenize_chat(rec, tok)
    s, e = ct.spans[0]
    assert e - s == 1
    for D in (4, 8):
        r = make(tok, mid, rec, D=D)
        n = r["meta"]["n_clean"]
        assert r["meta"]["n_blocks"] >= 1
        for b, p in enumerate(r["meta"]["starts"]):
            lab = r["labels"][n + D * b: n + D * (b + 1)]
            want = ([ct.input_ids[s], tok.eos_token_id] if p == s - 1 else [tok.eos_token_id])
            assert lab == want + [IGNORE] * (D - len(want))


def test_too_long_is_truncated_with_warning(tm):
    _, tok, mid = tm
    rec = chat_record("q", " ".join("abcdefghijklmnopqrstuvwxyz" * 3))
    n_full = len(tokenize_chat(rec, tok).input_ids)
    max_len = 96
    with pytest.warns(UserWarning, match="clean part truncated"):
        r = make(tok, mid, rec, max_len=max_len)
    n = r["meta"]["n_clean"]
    assert r["meta"]["truncated"] and n < n_full
    assert len(r["input_ids"]) <= max_len
    assert n == max_len - max_len // 4  # room = min(R * repeat, max_len // (repeat + 1)) blocks
    assert all(p + 1 < n for p in r["meta"]["starts"])
    # and via the builder: one summary warning
    with pytest.warns(UserWarning, match="1 of 1 records were too long and truncated"):
        _, rep = build_nsp_rows([rec], tok, block_size=4, mask_token_id=mid, max_len=max_len)
    assert rep.n_truncated == 1


def test_prompt_too_long_is_skipped(tm):
    _, tok, mid = tm
    rec = chat_record(" ".join(["word"] * 200), "a b")
    with pytest.raises(RecordError, match="prompt too long"):
        make(tok, mid, rec, max_len=64)


def test_bad_settings(tm):
    _, tok, mid = tm
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        make(tok, mid, chat_record("q", "a"), D=0)


# ---------------------------------------------------------------------------------------------------- collator


def test_collator_pads_and_keeps_rows_independent(tm):
    _, tok, mid = tm
    recs = [chat_record("q", "a b c d e f g"), chat_record("q", "x")]
    rows, _ = build_nsp_rows(recs, tok, block_size=4, mask_token_id=mid, max_len=512)
    batch = NSPCollator(4, tok.pad_token_id)(rows)
    T = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (2, T) and batch["attention_mask"].shape == (2, 1, T, T)
    assert batch["attention_mask"].dtype == torch.float32
    for i, r in enumerate(rows):
        L = len(r["input_ids"])
        assert batch["input_ids"][i, :L].tolist() == r["input_ids"]
        assert (batch["input_ids"][i, L:] == tok.pad_token_id).all()
        assert (batch["labels"][i, L:] == IGNORE).all() and (batch["block_index"][i, L:] == -1).all()
        assert batch["block_index"][i, :L].tolist() == r["block_index"]
        alone = to_additive(training_visibility(torch.tensor(r["position_ids"]), 4), torch.float32)[0, 0]
        assert torch.equal(batch["attention_mask"][i, 0, :L, :L], alone)
        assert (batch["attention_mask"][i, 0, L:, :] < 0).all() and (batch["attention_mask"][i, 0, :, L:] < 0).all()


def test_ar_rows_causal(tm):
    _, tok, _ = tm
    rec = chat_record("q", "a b c")
    r = ar_row(rec, tok, max_len=512)
    ct = tokenize_chat(rec, tok)
    assert r["input_ids"] == ct.input_ids and r["meta"]["n_blocks"] == 0
    s, e = ct.spans[0]
    assert r["labels"][s - 1: e] == ct.input_ids[s: e + 1] and r["labels"] == r["clean_targets"]
    batch = NSPCollator(1, tok.pad_token_id)([r])
    T = len(r["input_ids"])
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    assert torch.equal(batch["attention_mask"][0, 0] == 0, causal)
    with pytest.warns(UserWarning, match="truncated"):
        short = ar_row(chat_record("q", " ".join("abcdefghij" * 5)), tok, max_len=30)
    assert len(short["input_ids"]) == 30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows, rep = build_ar_rows([rec, {"messages": []}], tok, max_len=512)
    assert len(rows) == 1 and rep.skipped["no messages"] == 1


# ---------------------------------------------------------------------------------------------------- SFT data


@needs_data
def test_math_train_records_are_boxed_chat(monkeypatch):
    from sdlm.sft_data import BOXED_INSTRUCTION, load_sft_records

    monkeypatch.setenv("SDLM_DATA_DIR", DATA)
    recs = load_sft_records("math", limit=20)
    assert len(recs) == 20
    for r in recs:
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][1]["content"].endswith("\n" + BOXED_INSTRUCTION)
        assert "\\boxed{" in r["messages"][2]["content"]


def test_gsm8k_records(tmp_path, monkeypatch):
    from sdlm.sft_data import BOXED_INSTRUCTION, DataError, gsm8k_solution, gsm8k_train_records, load_sft_records

    ans = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert gsm8k_solution(ans) == "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\n\\boxed{72}"
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text(json.dumps({"question": "Q?", "answer": ans}) + "\n")
    monkeypatch.setenv("SDLM_DATA_DIR", str(tmp_path))
    (rec,) = load_sft_records("gsm8k")
    assert rec["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert rec["messages"][1]["content"] == "Q?\n" + BOXED_INSTRUCTION
    assert rec["messages"][2]["content"].endswith("\\boxed{72}") and "<<" not in rec["messages"][2]["content"]
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (offline)")

    monkeypatch.delenv("SDLM_DATA_DIR")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="SDLM_DATA_DIR is not set.*gsm8k/train.jsonl"):
        gsm8k_train_records()
    with pytest.raises(DataError, match="SDLM_DATA_DIR is not set.*math/train.jsonl.gz"):
        load_sft_records("math")
    with pytest.raises(DataError, match="does not exist"):
        load_sft_records(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_sft_records(str(bad))
