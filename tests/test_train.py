"""Retrofit training: the 4-D mask path equals the stock model, block index 0 equals the causal LM loss,
the loss normalisation, a short CPU run that teaches the block positions, the checkpoint folder, the AR
baseline, and the CLI's behaviour on bad input."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import io
import json
import random
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from sdlm.models import ensure_mask_token, load_model, save_model, sdlm_settings
from sdlm.nsp import IGNORE, NSPCollator, ar_row, build_nsp_rows, nsp_row
from sdlm.testing import chat_record, stock_clean_scores, tiny_model
from sdlm.train import RetrofitConfig, block_losses, loss_terms, nsp_forward, retrofit

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def letters_record(rng: random.Random) -> dict:
    """A predictable chat: the user names a letter, the assistant continues the alphabet 6-11 letters."""
    i, L = rng.randrange(26), rng.randrange(6, 12)
    return chat_record(LETTERS[i], " ".join(LETTERS[(i + k) % 26] for k in range(L)))


def letters_corpus(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [letters_record(rng) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("D,causal_attn", [(4, True), (1, False)])
def test_block_pos0_equals_causal_lm_loss(arch, D, causal_attn):
    """Block index 0 sees x_{<p} plus its own block; with causal attention inside the block (or D = 1) it
    is exactly the causal LM at position p. (With bidirectional blocks it also sees the mask tokens, so it
    is only close -- spec section 3.)"""
    model, tok = tiny_model(arch, seed=1)
    mid = ensure_mask_token(model, tok, block_size=D, causal_attn=causal_attn)
    rec = chat_record("hello", "a b c d e f g h")
    r = nsp_row(rec, tok, block_size=D, mask_token_id=mid, max_len=512, rng=random.Random(0))
    batch = NSPCollator(D, tok.pad_token_id, causal_attn=causal_attn)([r])
    n, starts = r["meta"]["n_clean"], r["meta"]["starts"]
    x = torch.tensor(r["input_ids"][:n])
    with torch.no_grad():
        ours = nsp_forward(model, batch)[0]
        plain = model(input_ids=x[None]).logits[0]
    rows0 = [n + b * D for b in range(len(starts))]
    tgt = torch.tensor([r["labels"][j] for j in rows0])
    assert (tgt != IGNORE).all()
    ce_ours = F.cross_entropy(ours[rows0], tgt)
    ce_plain = F.cross_entropy(plain[starts], torch.tensor([int(x[p + 1]) for p in starts]))
    assert abs(float(ce_ours) - float(ce_plain)) <= 1e-5
    assert (ours[rows0] - plain[starts]).abs().max() <= 1e-5
    # and loss_terms reports the same number as the position-0 loss
    _, stats, _ = loss_terms(ours[None], batch, D)
    assert abs(float(stats[0, 0] / stats[0, 1]) - float(ce_plain)) <= 1e-5


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_causal_4d_path_equals_stock_forward(arch, attn):
    """No blocks: our 4-D additive mask + explicit positions give the stock model's logits, padded or not."""
    model, tok = tiny_model(arch, seed=2, attn_implementation=attn)
    rows = [ar_row(chat_record("q", "a b c d e f"), tok, max_len=512), ar_row(chat_record("hi", "z"), tok, max_len=512)]
    batch = NSPCollator(4, tok.pad_token_id)(rows)
    with torch.no_grad():
        ours = nsp_forward(model, batch)
        for i, r in enumerate(rows):
            L = len(r["input_ids"])
            stock = model(input_ids=torch.tensor([r["input_ids"]])).logits[0]
            assert (ours[i, :L] - stock).abs().max() <= 1e-5
        # stock padded batch (2-D mask, right padding) agrees on the real tokens too
        am = (batch["block_index"] == -1) & (torch.arange(batch["input_ids"].shape[1]) < torch.tensor(
            [[len(r["input_ids"])] for r in rows]))
        stock_b = model(input_ids=batch["input_ids"], attention_mask=am.long()).logits
    for i, r in enumerate(rows):
        L = len(r["input_ids"])
        assert (ours[i, :L] - stock_b[i, :L]).abs().max() <= 1e-5


def test_loss_terms_is_one_mean_over_labelled_positions():
    model, tok = tiny_model("qwen2", seed=4)
    mid = ensure_mask_token(model, tok, block_size=3)
    recs = [chat_record("q", "a b c d e"), chat_record("q", "x y")]
    rows, _ = build_nsp_rows(recs, tok, block_size=3, mask_token_id=mid, max_len=256, clean_loss=True)
    batch = NSPCollator(3, tok.pad_token_id)(rows)
    with torch.no_grad():
        logits = nsp_forward(model, batch)
    obj, stats, n_obj = loss_terms(logits, batch, 3)
    lab = batch["labels"]
    manual = F.cross_entropy(logits[lab != IGNORE], lab[lab != IGNORE])
    assert int(n_obj) == int((lab != IGNORE).sum()) and abs(float(obj.mean()) - float(manual)) < 1e-6
    for i in range(3):
        m = (batch["block_index"] == i) & (lab != IGNORE)
        assert int(stats[i, 1]) == int(m.sum())
        assert abs(float(stats[i, 0] / stats[i, 1]) - float(F.cross_entropy(logits[m], lab[m]))) < 1e-5
    m = (batch["block_index"] == -1) & (batch["clean_targets"] != IGNORE)
    assert abs(float(stats[3, 0] / stats[3, 1]) - float(F.cross_entropy(logits[m], batch["clean_targets"][m]))) < 1e-5


# ---------------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Qwen2 retrofitted for 300 CPU steps (D = 4) on the alphabet corpus, with held-out losses."""
    D = 4
    model, tok = tiny_model("qwen2", seed=0)
    mid = ensure_mask_token(model, tok, block_size=D)
    held, _ = build_nsp_rows(letters_corpus(32, seed=99), tok, block_size=D, mask_token_id=mid, max_len=128, seed=1)
    col = NSPCollator(D, tok.pad_token_id)
    before = block_losses(model, held, col)
    out = tmp_path_factory.mktemp("retrofit") / "ckpt"
    cfg = RetrofitConfig(base="tiny-qwen2 (in memory)", data="letters (in memory)", out=str(out), block_size=D,
                         max_steps=300, lr=3e-3, batch_size=8, max_len=128, logging_steps=50, warmup=0.05,
                         lr_scheduler="cosine", weight_decay=0.0, seed=0)
    log = io.StringIO()
    retrofit(cfg, model=model, tokenizer=tok, records=letters_corpus(400, seed=0), stream=log)
    after = block_losses(model, held, col)
    return dict(out=out, before=before, after=after, log=log.getvalue(), model=model, tok=tok, mid=mid, D=D)


def test_training_teaches_block_positions(trained):
    before, after, D = trained["before"], trained["after"], trained["D"]
    print("\nheld-out CE before:", {k: round(v, 3) for k, v in before.items()})
    print("held-out CE after: ", {k: round(v, 3) for k, v in after.items()})
    summary = json.loads((trained["out"] / "sdlm_training.json").read_text())
    print(f"{summary['steps']} steps in {summary['train_seconds']} s ({summary['seconds_per_step']} s/step)")
    for i in range(1, D):
        drop = 1 - after[f"loss_pos{i}"] / before[f"loss_pos{i}"]
        print(f"loss_pos{i}: {before[f'loss_pos{i}']:.3f} -> {after[f'loss_pos{i}']:.3f} ({drop:.0%} lower)")
        assert drop > 0.8, f"block index {i} did not learn: {before} -> {after}"
    assert after["loss_pos0"] < 0.2 * before["loss_pos0"]


def test_top1_agreement_of_block_losses(trained):
    """top1_clean against the stock model's own causal forward (no SDLM mask involved); the block positions'
    top-1 rates rise with training on the alphabet, where every next letter is determined."""
    model, tok, mid, D = trained["model"], trained["tok"], trained["mid"], trained["D"]
    rows, _ = build_nsp_rows(letters_corpus(12, seed=7), tok, block_size=D, mask_token_id=mid, max_len=128,
                             clean_loss=True, seed=2)
    col = NSPCollator(D, tok.pad_token_id)
    got = block_losses(model, rows, col, top1=True)
    assert set(got) == {f"{m}_{n}" for m in ("loss", "top1") for n in ("pos0", "pos1", "pos2", "pos3", "clean")}
    assert got == {**block_losses(model, rows, col), **{k: v for k, v in got.items() if k.startswith("top1")}}
    _, hits, count = stock_clean_scores(model, rows)
    assert count > 100 and got["top1_clean"] == pytest.approx(hits / count, abs=1e-9)
    fresh, ftok = tiny_model("qwen2", seed=0)
    ensure_mask_token(fresh, ftok, block_size=D)
    before = block_losses(fresh, rows, col, top1=True)
    for i in range(D):
        assert 0.0 <= before[f"top1_pos{i}"] < got[f"top1_pos{i}"] <= 1.0
    assert got["top1_pos1"] > 0.9  # the second letter of a block, predicted from the first only: learned


def test_progress_and_per_position_logs(trained):
    log = trained["log"]
    assert "[sdlm] step 50/300" in log and "[sdlm] step 300/300" in log
    last = [line for line in log.splitlines() if line.startswith("[sdlm] step 300/300") and "loss_pos3" in line]
    assert last and all(f"loss_pos{i}" in last[0] for i in range(4)) and "loss_clean" in last[0]
    hist = json.loads((trained["out"] / "sdlm_training.json").read_text())["log_history"]
    logged = [h for h in hist if "loss" in h]
    assert len(logged) >= 6 and all({"loss_pos0", "loss_pos3", "loss_clean"} <= set(h) for h in logged)
    assert logged[-1]["loss"] < 0.2 * logged[0]["loss"]


def test_checkpoint_folder(trained):
    out, mid = trained["out"], trained["mid"]
    assert (out / "model.safetensors").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["block_size"] == 4 and cfg["text_mask_token_id"] == mid and cfg["causal_attn"] is False
    summary = json.loads((out / "sdlm_training.json").read_text())
    assert summary["mode"] == "nsp" and summary["clean_loss"] is False and summary["repeat"] == 3 and summary["seed"] == 0
    assert summary["config"]["lr"] == 3e-3 and summary["provenance"]["config_hash"]
    assert summary["data"]["n_rows"] == 400
    model, tok = load_model(out)
    assert sdlm_settings(model.config).mask_token_id == mid and tok.convert_tokens_to_ids("<text_mask>") == mid
    assert tok.chat_template == trained["tok"].chat_template
    x = torch.tensor([[1, 20, 30, mid]])
    with torch.no_grad():
        trained["model"].eval()
        assert (model(x).logits - trained["model"](x).logits).abs().max() < 1e-5


def test_ar_baseline_same_data_no_blocks(tmp_path):
    model, tok = tiny_model("qwen2", seed=0)
    n = len(tok)
    cfg = RetrofitConfig(base="tiny", data="letters", out=str(tmp_path / "ar"), ar_baseline=True, max_steps=20,
                         lr=3e-3, batch_size=8, max_len=128, logging_steps=10)
    retrofit(cfg, model=model, tokenizer=tok, records=letters_corpus(64, seed=0), stream=io.StringIO())
    summary = json.loads((tmp_path / "ar" / "sdlm_training.json").read_text())
    assert summary["mode"] == "ar" and summary["steps"] == 20 and summary["data"]["n_blocks"] == 0
    assert len(tok) == n and "text_mask_token_id" not in json.loads((tmp_path / "ar" / "config.json").read_text())
    logged = [h for h in summary["log_history"] if "loss" in h]
    assert logged and all("loss_clean" in h and "loss_pos0" not in h for h in logged)
    assert abs(logged[-1]["loss"] - logged[-1]["loss_clean"]) < 0.5  # the AR objective is the clean loss


def test_gradient_accumulation_keeps_one_global_mean(tmp_path):
    """batch 4 x 1 and batch 2 x 2 micro-batches log the same first-step loss: the mean over all labelled
    positions of the global batch, not a mean of micro-batch means."""
    recs = [chat_record("q", "a b c d e f g h i j"), chat_record("q", "x"), chat_record("q", "k l m"), chat_record("q", "z y")]
    losses = []
    for bs, ga in ((4, 1), (2, 2)):
        model, tok = tiny_model("qwen2", seed=0)
        cfg = RetrofitConfig(base="tiny", data="mem", out=str(tmp_path / f"ga{ga}"), block_size=2, max_steps=1,
                             lr=1e-3, batch_size=bs, grad_accum=ga, max_len=128, logging_steps=1)
        retrofit(cfg, model=model, tokenizer=tok, records=recs, stream=io.StringIO())
        hist = json.loads((tmp_path / f"ga{ga}" / "sdlm_training.json").read_text())["log_history"]
        losses.append(next(h["loss"] for h in hist if "loss" in h))
    assert abs(losses[0] - losses[1]) < 1e-4, losses


def test_bf16_autocast_on_cpu(tmp_path):
    model, tok = tiny_model("llama", seed=0)
    cfg = RetrofitConfig(base="tiny", data="mem", out=str(tmp_path / "bf16"), max_steps=3, lr=1e-3, batch_size=4,
                         max_len=128, logging_steps=1, bf16=True)
    retrofit(cfg, model=model, tokenizer=tok, records=letters_corpus(16, seed=0), stream=io.StringIO())
    hist = json.loads((tmp_path / "bf16" / "sdlm_training.json").read_text())["log_history"]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist if "loss" in h)


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    model, tok = tiny_model("qwen2", seed=0)
    save_model(model, tok, d / "model")
    data = d / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in letters_corpus(16, seed=0)))
    return d / "model", data


def test_cli_retrofit_and_prepare_model(tiny_folder, tmp_path, capsys):
    from sdlm.cli import main

    base, data = tiny_folder
    out = tmp_path / "sdlm"
    args = ["retrofit", "--base", str(base), "--data", str(data), "--out", str(out), "--block-size", "2",
            "--max-steps", "2", "--max-len", "128", "--lr", "1e-3", "--logging-steps", "1", "--seed", "3"]
    assert main(args) == 0
    s = json.loads((out / "sdlm_training.json").read_text())
    assert s["steps"] == 2 and s["block_size"] == 2 and s["seed"] == 3
    assert "[sdlm] step 2/2" in capsys.readouterr().out
    assert main(args) == 2  # a finished checkpoint is not overwritten silently
    assert "--overwrite" in capsys.readouterr().err
    prep = tmp_path / "prepared"
    assert main(["prepare-model", str(base), "--out", str(prep), "--block-size", "8"]) == 0
    cfg = json.loads((prep / "config.json").read_text())
    assert cfg["block_size"] == 8 and cfg["text_mask_token_id"] == 384


@pytest.mark.parametrize("argv,needle", [
    (["retrofit", "--base", "/no/such/model", "--data", "DATA", "--out", "OUT"], "'/no/such/model' is neither a local folder"),
    (["retrofit", "--base", "BASE", "--data", "/no/such.jsonl", "--out", "OUT"], "data file '/no/such.jsonl' does not exist"),
    (["retrofit", "--base", "BASE", "--data", "DATA", "--out", "OUT", "--block-size", "0"], "--block-size: must be >= 1"),
    (["retrofit", "--base", "BASE", "--data", "EMPTY", "--out", "OUT"], "no usable record"),
    (["prepare-model", "/no/such/model"], "neither a local folder nor reachable"),
])
def test_cli_bad_input_one_line_exit_2(argv, needle, tiny_folder, tmp_path, capsys):
    from sdlm.cli import main

    base, data = tiny_folder
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    sub = {"BASE": str(base), "DATA": str(data), "OUT": str(tmp_path / "o"), "EMPTY": str(empty)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main([sub.get(a, a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in err


def test_cli_entry_point_exit_code():
    exe = shutil.which("sdlm")
    cmd = [exe] if exe else [sys.executable, "-m", "sdlm.cli"]
    p = subprocess.run(cmd + ["retrofit", "--base", "/no/such/model", "--data", "gsm8k", "--out", "/tmp/x"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "SDLM_DATA_DIR": "/nonexistent"})
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_bf16_auto_follows_the_hardware(monkeypatch, tmp_path):
    """``bf16: auto`` trains under bf16 autocast only where the device computes bf16 natively (emulated bf16
    was measured 42x slower than fp32 on a CPU without AVX512); the resolved choice is recorded."""
    import torch

    import sdlm.retrofit_config as tr

    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real_path = tr.Path
    monkeypatch.setattr(tr, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo" else real_path(p))
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2 fma\n")
    assert tr.native_bf16() is False and RetrofitConfig(base="b", data="d", out="o", bf16="auto").use_bf16() is False
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert tr.native_bf16() is True and RetrofitConfig(base="b", data="d", out="o", bf16="auto").use_bf16() is True
    assert RetrofitConfig(base="b", data="d", out="o", bf16=False).use_bf16() is False
    with pytest.raises(ValueError, match="bf16 must be true, false or 'auto'"):
        RetrofitConfig(base="b", data="d", out="o", bf16="yes")


@pytest.mark.parametrize("lr, extra, needle", [
    ("1e30", [], "training diverged: the loss is"),          # weights +-1e30 after step 1: the step-2 loss overflows
    ("1e39", ["--resume-every", "1"], "non-finite values (NaN/inf) in"),  # weights inf after step 1: no state kept
])
def test_a_diverging_retrofit_stops_before_any_save(tiny_folder, tmp_path, capsys, lr, extra, needle):
    """A diverged retrofit used to save an all-NaN checkpoint with its loss logged 0: now one line, exit 2, and
    neither the checkpoint nor a resumable state holding the NaNs."""
    from sdlm.cli import main

    base, data = tiny_folder
    out = tmp_path / "sdlm"
    rc = main(["retrofit", "--base", str(base), "--data", str(data), "--out", str(out), "--block-size", "2",
               "--max-steps", "3", "--max-len", "128", "--lr", lr, "--warmup", "0", "--logging-steps", "1", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and "nothing saved" in err and len(err.splitlines()) == 1, err
    assert not (out / "sdlm_training.json").exists() and not (out / "model.safetensors").exists()
    for state in out.rglob("model.safetensors"):  # a state kept before the divergence holds finite weights
        from safetensors.torch import load_file

        assert all(bool(torch.isfinite(t).all()) for t in load_file(str(state)).values()), state
