"""Retrofit options of issue 8: freezing, the TPF probe (curve in sdlm_training.json) and self-distillation."""

from __future__ import annotations

import io
import json
import random

import pytest
import torch

from sdlm.decoding import generate
from sdlm.distill import chat_prompt, self_distill
from sdlm.testing import chat_record, stock_clean_scores, tiny_model
from sdlm.train import RetrofitConfig, freeze, retrofit

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def corpus(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        i, L = rng.randrange(26), rng.randrange(6, 12)
        out.append(chat_record(LETTERS[i], " ".join(LETTERS[(i + k) % 26] for k in range(L))))
    return out


def _cfg(tmp_path, **kw) -> RetrofitConfig:
    base = dict(base="tiny", data="letters", out=str(tmp_path / "ckpt"), block_size=4, max_steps=6, lr=3e-3,
                batch_size=4, max_len=96, logging_steps=3, weight_decay=0.0, warmup=0)
    return RetrofitConfig(**(base | kw))


def test_freeze_keeps_embeddings_but_trains_the_mask_row_and_upper_layers(tmp_path):
    model, tok = tiny_model("qwen2", seed=0)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    retrofit(_cfg(tmp_path, freeze_embeddings=True, freeze_layers=1), model=model, tokenizer=tok,
             records=corpus(40, 0), stream=io.StringIO())
    mid = model.config.text_mask_token_id
    emb = model.get_input_embeddings().weight.detach()
    old = before["model.embed_tokens.weight"]
    grown = emb[: old.shape[0]]
    others = [i for i in range(old.shape[0]) if i != mid]
    assert torch.equal(grown[others], old[others])  # every real token's row untouched
    # the mask row is new (appended by ensure_mask_token) and must have moved from its mean init
    init = old.mean(0) if mid >= old.shape[0] else old[mid]
    assert not torch.allclose(emb[mid], init)
    layer0 = [k for k in before if k.startswith("model.layers.0.")]
    layer1 = [k for k in before if k.startswith("model.layers.1.")]
    sd = model.state_dict()
    assert layer0 and all(torch.equal(sd[k], before[k]) for k in layer0)
    assert any(not torch.equal(sd[k], before[k]) for k in layer1)
    summary = json.loads((tmp_path / "ckpt" / "sdlm_training.json").read_text())
    assert 0 < summary["trainable_parameters"]["trainable"] < summary["trainable_parameters"]["total"]


def test_freeze_rejects_more_layers_than_the_model_has():
    model, _ = tiny_model("llama", seed=0)
    with pytest.raises(ValueError, match="cannot freeze 5 layers: the model has 2"):
        freeze(model, embeddings=False, layers=5)


def test_tpf_probe_curve_holds_out_prompts_and_excludes_probe_time(tmp_path):
    model, tok = tiny_model("qwen2", seed=0)
    log = io.StringIO()
    retrofit(_cfg(tmp_path, probe_every=3, probe_prompts=3, probe_max_new_tokens=8, probe_taus=(0.9, 2.0)),
             model=model, tokenizer=tok, records=corpus(40, 1), stream=log)
    summary = json.loads((tmp_path / "ckpt" / "sdlm_training.json").read_text())
    curve = summary["tpf_curve"]
    assert [p["step"] for p in curve] == [0, 3, 6]
    for p in curve:
        assert set(p["tpf"]) == {"prob_conf_tau0.9", "prob_conf_tau2", "self_speculative"}
        assert p["tpf"]["prob_conf_tau2"] == 1.0  # tau > 1: one token per forward, exactly
        # self-speculative: the prefill only drafts, so at least n tokens per n + 1 forwards
        assert p["tpf"]["self_speculative"] >= 8 / 9 - 1e-3 and p["n_prompts"] == 3
    times = [p["train_seconds"] for p in curve]
    assert times == sorted(times) and summary["probe_seconds"] > 0
    assert times[0] < curve[0]["probe_seconds"]  # step 0: no training yet, and probe time is not counted
    assert times[-1] <= summary["train_seconds"] + 1.0
    assert summary["data"]["n_records"] == 37  # 3 records held out for the probe
    assert "tpf probe step 6" in log.getvalue()
    # the last probe decodes with the final model: re-measure it and compare
    from sdlm.probe import measure_tpf

    again = measure_tpf(model, tok, [chat_prompt(tok, r) for r in corpus(40, 1)[-3:]], block_size=4,
                        taus=(0.9, 2.0), max_new_tokens=8)
    assert again == curve[-1]["tpf"]
    # held-out losses at every point: the probe's records, their NSP rows, the model of that step
    assert all(set(p["heldout_loss"]) == {"loss_pos0", "loss_pos1", "loss_pos2", "loss_pos3", "loss_clean"} for p in curve)
    from sdlm.nsp import NSPCollator, build_nsp_rows
    from sdlm.train import block_losses

    rows, _ = build_nsp_rows(corpus(40, 1)[-3:], tok, block_size=4, mask_token_id=model.config.text_mask_token_id,
                             max_len=96, clean_loss=True, seed=0)
    final = block_losses(model, rows, NSPCollator(4, 0))  # padding is never visible nor labelled
    assert curve[-1]["heldout_loss"] == pytest.approx(final, abs=1e-4)
    # loss_clean independently: the stock model's own causal forward over each held-out clean sequence
    nll, _, count = stock_clean_scores(model, rows)
    assert curve[-1]["heldout_loss"]["loss_clean"] == pytest.approx(nll / count, abs=1e-4)
    # the held-out records follow the training records' pattern (alphabet runs): their losses fall
    assert curve[-1]["heldout_loss"]["loss_pos1"] < curve[0]["heldout_loss"]["loss_pos1"]
    assert "held-out loss_pos0" in log.getvalue()


def test_probe_needs_prompts_left_for_training(tmp_path):
    model, tok = tiny_model("qwen2", seed=0)
    with pytest.raises(ValueError, match="probe_prompts=10"):
        retrofit(_cfg(tmp_path, probe_every=2, probe_prompts=10), model=model, tokenizer=tok,
                 records=corpus(10, 0), stream=io.StringIO())


def test_self_distill_replaces_only_the_answer_with_greedy_output():
    model, tok = tiny_model("llama", seed=3)
    recs = corpus(5, 2)
    out, rep = self_distill(model, tok, recs, max_new_tokens=12, batch_size=2)
    greedy = generate(model, tok, [chat_prompt(tok, r) for r in recs], alg="ar", max_new_tokens=12, batch_size=1)
    assert len(out) == 5 and rep["n_prompts"] == 5
    for r, o, g in zip(recs, out, greedy):
        assert o["messages"][:-1] == r["messages"][:-1]
        assert o["messages"][-1] == {"role": "assistant", "content": g.text.strip()}
    assert rep["unfinished"] == sum(g.finish_reason != "eos" for g in greedy)
    kept, rep2 = self_distill(model, tok, recs, max_new_tokens=12, batch_size=2, drop_unfinished=True)
    assert len(kept) == 5 - rep2["unfinished"]


def test_chat_prompt_needs_an_assistant_turn():
    model, tok = tiny_model("llama", seed=0)
    with pytest.raises(ValueError, match="assistant turn"):
        chat_prompt(tok, {"messages": [{"role": "user", "content": "hi"}]})


def test_ceiling_tpf_accepts_the_confident_prefix_and_at_least_one_token():
    from sdlm.probe import ceiling_tpf

    # steps: [.99 .99 .99 .99] -> 4 | [.5] -> 1 | [.99 .5]... -> 1 | [.5] -> 1 ... by hand below
    conf = [0.99, 0.99, 0.99, 0.99, 0.5, 0.99, 0.5, 0.99, 0.99]
    # D=4 tau .98: take 4, then .5 -> 1, then .99 (next .5 stops) -> 1, .5 -> 1, .99 .99 -> 2 : 9 tokens / 5 steps
    assert ceiling_tpf(conf, block_size=4, threshold=0.98) == 9 / 5
    assert ceiling_tpf(conf, block_size=1, threshold=0.98) == 1.0  # D = 1 is AR
    assert ceiling_tpf(conf, block_size=4, threshold=1.5) == 1.0   # tau > 1: one token per step
    assert ceiling_tpf(conf, block_size=8, threshold=0.1) == 9 / 2
    assert ceiling_tpf([], block_size=4, threshold=0.9) == 0.0
