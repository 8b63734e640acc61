"""One prepared GPU check: every CUDA path of the engine and the speed claim, offline, in one command.

    PYTHONPATH=. python benchmarks/gpu_check.py                  # on a GPU host: ~5-8 min on one H200
    PYTHONPATH=. python benchmarks/gpu_check.py --device cpu --quick   # the CPU smoke run (in the test suite)

Needs torch and transformers only (no lm-eval, datasets or network; no weights travel: the speed models are
Qwen2.5 shapes with random weights built from configs written here). Two parts:

1. **Correctness on the device**, fp32 and bf16, on tiny models (``tests/decoding_models.py``): our ``ar``
   equals ``transformers.generate``; batched == one-at-a-time == no-cache for every algorithm;
   self-speculative == one-token-per-step; the engine equals the spec-literal oracle
   (``tests/reference_decoder.py``); no NaN with left padding in bf16 / fp16; a few bf16 NSP training steps
   lower the loss. fp32 checks must hold exactly; bf16 agreement is reported (kernels differ by rounding).
2. **The speed claim, measured**, per shape and batch size (1, 8, 32): device-synchronised median time of one
   forward over a KV cache for an AR step (1 fed token), a D=4 / D=8 confidence step (1 + D) and the
   self-speculative verify step (1 + D*D + D*(D-1)/2), as ratios to the AR step; our ``ar`` against
   ``transformers.generate`` (tokens/s, identical outputs); the engine's own share of a decoding step (masks,
   cache crop, acceptance, host syncs: wall time outside the model's forward); and the wall-clock speed-up
   that TPF 2.15 (paper, D=4, tau .98) and 3.4 (self-speculative, D=4) would give:
   ``TPF x (AR step) / (SDLM step)``, steps including the engine overhead.

Writes ``results/bench/gpu_check.json`` and prints Markdown tables. Exit status 1 when a correctness check fails.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from sdlm.decoders import CONFIDENCE_ALGS, REFERENCE_TAU  # noqa: E402
from sdlm.decoding import generate  # noqa: E402
from sdlm.decoding.blocks import verify_segments  # noqa: E402
from sdlm.decoding.state import cache_kwargs  # noqa: E402
from sdlm.masks import MAIN, to_additive, visibility  # noqa: E402
from sdlm.provenance import atomic_write_json, provenance  # noqa: E402

SHAPES = {  # the published Qwen2.5 configs' shapes (Qwen/Qwen2.5-{0.5B,1.5B,3B}/config.json)
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}
QUICK_SHAPES = {"tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True)}
PAPER_TPF_CONF, PAPER_TPF_SPEC = 2.15, 3.4


class IdTokenizer:
    """Token ids in, token ids out: the engine only needs ids, a pad id and decode()."""

    pad_token_id, eos_token_id = 0, None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


# ============================================================================================ correctness
def _ids(gens):
    return [g.token_ids for g in gens]


def correctness(device: str, quick: bool) -> list[dict]:
    import decoding_models as dm
    import reference_decoder as oracle

    tok = dm.WordTokenizer()
    out: list[dict] = []

    def record(name, ok, strict, detail=""):
        out.append({"check": name, "ok": bool(ok), "strict": strict, "detail": detail})

    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, 60, (n,), generator=gen).tolist() for n in (5, 1, 9, 3, 14)]
    for dtype in (torch.float32, torch.bfloat16):
        strict = dtype == torch.float32
        name = str(dtype).replace("torch.", "")
        model = dm.random_model("qwen2", seed=3, peaky=True).to(device=device, dtype=dtype)
        # ar == transformers.generate
        ours = generate(model, tok, prompts, alg="ar", max_new_tokens=24, batch_size=5)
        same = 0
        for p, g in zip(prompts, ours):
            x = torch.tensor([p], device=device)
            hf = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False,
                                eos_token_id=dm.EOS, pad_token_id=dm.PAD)[0, len(p):].tolist()
            hf = hf[:hf.index(dm.EOS)] if dm.EOS in hf else hf
            same += g.token_ids == hf
        record(f"{name}: ar == transformers.generate", same == len(prompts) or not strict, strict,
               f"{same}/{len(prompts)} identical")
        # batched == one-at-a-time == no-cache; self-speculative == one token per step
        for alg in (*CONFIDENCE_ALGS, "self_speculative"):
            kw = dict(alg=alg, block_size=4, threshold=0.6, max_new_tokens=20)
            batched = _ids(generate(model, tok, prompts, batch_size=5, **kw))
            single = [generate(model, tok, [p], batch_size=1, **kw)[0].token_ids for p in prompts]
            uncached = _ids(generate(model, tok, prompts, batch_size=5, use_cache=False, **kw))
            n = sum(a == b == c for a, b, c in zip(batched, single, uncached))
            record(f"{name}: {alg} batched == one-at-a-time == no-cache", n == len(prompts) or not strict, strict,
                   f"{n}/{len(prompts)} identical")
        spec = _ids(generate(model, tok, prompts, alg="self_speculative", block_size=4, max_new_tokens=20))
        one = _ids(generate(model, tok, prompts, alg="prob_conf", block_size=4, threshold=REFERENCE_TAU, max_new_tokens=20))
        n = sum(a == b for a, b in zip(spec, one))
        record(f"{name}: self_speculative == one token per step", n == len(prompts) or not strict, strict,
               f"{n}/{len(prompts)} identical")
        # the spec-literal oracle (fp32 only: it recomputes in the model's dtype, the engine caches)
        if strict:
            bm = dm.branchy_model(False, steps=60 if quick else 300).to(device)
            ps = [dm.branchy_sample(torch.Generator().manual_seed(i), n).tolist() for i, n in enumerate((5, 1, 9))]
            ok = True
            for alg, tau in (("prob_conf", 0.6), ("entropy_conf", 0.3)):
                refs = [oracle.confidence_decode(bm, p, alg=alg, tau=tau, block_size=4, mask_id=dm.MASK,
                                                 causal_attn=False, max_new_tokens=24, eos=set()) for p in ps]
                gens = generate(bm, tok, ps, alg=alg, block_size=4, threshold=tau, max_new_tokens=24, eos_token_ids=[])
                ok &= [r.tokens for r in refs] == _ids(gens) and [r.forwards for r in refs] == [g.stats.nfe for g in gens]
            refs = [oracle.speculative_decode(bm, p, block_size=4, mask_id=dm.MASK, causal_attn=False,
                                              max_new_tokens=24, eos=set()) for p in ps]
            gens = generate(bm, tok, ps, alg="self_speculative", block_size=4, max_new_tokens=24, eos_token_ids=[])
            ok &= [r.tokens for r in refs] == _ids(gens) and [r.forwards for r in refs] == [g.stats.nfe for g in gens]
            record("fp32: engine == spec-literal oracle (prob_conf, entropy_conf, self_speculative)", ok, True)
            bm.to("cpu")
    # half precision with left padding: finite logits, same tokens as one at a time
    for dtype in (torch.bfloat16, torch.float16):
        model = dm.cyclic_model("qwen2").to(device=device, dtype=dtype)
        try:
            ps = [dm.cycle_prompt(0, 9), dm.cycle_prompt(3, 1), dm.cycle_prompt(5, 4)]
            for alg in ("ar", "prob_conf", "self_speculative"):
                g = generate(model, tok, ps, alg=alg, block_size=4, threshold=0.9, max_new_tokens=12)
                s = [generate(model, tok, [p], alg=alg, block_size=4, threshold=0.9, max_new_tokens=12)[0] for p in ps]
                finite = all(len(x.token_ids) > 0 or x.finish_reason == "eos" for x in g)
                record(f"{str(dtype)[6:]}: {alg} with left padding has no NaN (first tokens as one at a time)",
                       finite and [x.token_ids[:3] for x in g] == [x.token_ids[:3] for x in s], True)
            x = torch.tensor([[dm.PAD] * 8 + dm.cycle_prompt(0, 4)], device=device)
            mask = torch.zeros_like(x)
            mask[0, 8:] = 1
            with torch.no_grad():
                logits = model(x, attention_mask=mask).logits
            record(f"{str(dtype)[6:]}: padded forward logits are finite", bool(torch.isfinite(logits[0, 8:]).all()), True)
        finally:
            model.to(device="cpu", dtype=torch.float32)
    # bf16 NSP training steps lower the loss
    out.append(_bf16_training(device, steps=10 if quick else 30))
    return out


def _bf16_training(device: str, steps: int) -> dict:
    import decoding_models as dm
    from sdlm.masks import training_visibility

    model = dm._build("qwen2", False, 4, seed=0).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        ids, pos, labels = (t.to(device) for t in dm._nsp_batch(gen, 4))
        mask = to_additive(training_visibility(pos, 4), torch.bfloat16)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            logits = model(input_ids=ids, position_ids=pos, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, dm.VOCAB), labels.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.to("cpu")
    ok = all(v == v for v in losses) and losses[-1] < 0.85 * losses[0]  # finite, and clearly lower
    return {"check": f"bf16 autocast: {steps} NSP steps lower the loss", "ok": ok, "strict": True,
            "detail": f"{losses[0]:.3f} -> {losses[-1]:.3f}"}


# ============================================================================================ speed
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, reps: int, warmup: int) -> float:
    """Median wall seconds of ``fn()``, synchronised before and after each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _build(shape: dict, device: str, dtype) -> torch.nn.Module:
    cfg = Qwen2Config(**shape, max_position_embeddings=4096, rope_theta=1e6, attn_implementation="sdpa")
    cfg.text_mask_token_id, cfg.block_size, cfg.causal_attn = shape["vocab_size"] - 1, 4, False
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def _step_forward(model, batch: int, prompt: int, side: str, d: int, device: str):
    """A forward over a cache of ``prompt`` tokens feeding 1 causal token plus the side tokens of one step
    kind; returns a closure that runs it once and crops the cache back."""
    from transformers import DynamicCache

    dev = torch.device(device)
    hi = min(1000, model.config.vocab_size - 1)  # ordinary token ids (the last id is the mask token)
    ids = torch.randint(1, hi, (batch, prompt), device=dev)
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=ids, use_cache=True, **cache_kwargs(model, cache))
    length = torch.full((batch,), prompt + 1, device=dev)
    main_ids = torch.randint(1, hi, (batch, 1), device=dev)
    main_pos = torch.full((batch, 1), prompt, device=dev)
    main_seg = torch.full((batch, 1), MAIN, device=dev)
    if side == "ar":
        s_ids = s_pos = s_seg = s_blk = None
    elif side == "confidence":
        s_ids = torch.full((batch, d), model.config.text_mask_token_id, device=dev)
        s_pos = (length[:, None] - 1 + torch.arange(d, device=dev))
        s_seg = torch.ones((batch, d), dtype=torch.long, device=dev)
        s_blk = torch.ones((batch, d), dtype=torch.bool, device=dev)
    else:  # verify
        sd, _ = verify_segments(torch.randint(1, hi, (batch, d), device=dev), length, model.config.text_mask_token_id)
        s_ids, s_pos, s_seg, s_blk = sd.ids, sd.pos, sd.seg, sd.block
    if s_ids is None:
        q_ids, q_pos, q_seg, q_blk = main_ids, main_pos, main_seg, torch.zeros_like(main_seg, dtype=torch.bool)
    else:
        q_ids = torch.cat([main_ids, s_ids], 1)
        q_pos = torch.cat([main_pos, s_pos], 1)
        q_seg = torch.cat([main_seg, s_seg], 1)
        q_blk = torch.cat([torch.zeros_like(main_seg, dtype=torch.bool), s_blk], 1)
    k_pos = torch.cat([torch.arange(prompt, device=dev).expand(batch, -1), q_pos], 1)
    k_seg = torch.cat([torch.full((batch, prompt), MAIN, device=dev), q_seg], 1)
    k_blk = torch.cat([torch.zeros((batch, prompt), dtype=torch.bool, device=dev), q_blk], 1)
    mask = to_additive(visibility(q_pos, q_seg, q_blk, k_pos, k_seg, k_blk, causal_attn=False), model.dtype)
    keep = q_ids.shape[1] - 1 if s_ids is not None else 1
    fed = q_ids.shape[1]

    def run():
        with torch.no_grad():
            model(input_ids=q_ids, position_ids=q_pos, attention_mask=mask, use_cache=True, logits_to_keep=keep,
                  **cache_kwargs(model, cache))
        cache.crop(-fed)  # back to the prompt: every repetition sees the same cache

    return run, q_ids.shape[1]


def _forward_share(model, fn) -> tuple[float, float]:
    """(total wall s, wall s inside model.forward) of ``fn()``, the forward bracketed by synchronisation."""
    device = str(next(model.parameters()).device)
    inner = [0.0]
    orig = model.forward

    def timed_forward(*a, **k):
        _sync(device)
        t0 = time.perf_counter()
        r = orig(*a, **k)
        _sync(device)
        inner[0] += time.perf_counter() - t0
        return r

    model.forward = timed_forward
    try:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        total = time.perf_counter() - t0
    finally:
        model.forward = orig
    return total, inner[0]


def speed(device: str, quick: bool) -> list[dict]:
    shapes = QUICK_SHAPES if quick else SHAPES
    batches = (1, 2) if quick else (1, 8, 32)
    prompt, new = (32, 8) if quick else (256, 64)
    reps, warm = (3, 1) if quick else (20, 3)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    tok = IdTokenizer()
    rows = []
    for shape_name, shape in shapes.items():
        model = _build(shape, device, dtype)
        for b in batches:
            row = {"shape": shape_name, "batch": b, "dtype": str(dtype).replace("torch.", ""), "prompt": prompt}
            kinds = {"ar": ("ar", 1), "conf_D4": ("confidence", 4), "conf_D8": ("confidence", 8),
                     "verify_D4": ("verify", 4), "verify_D8": ("verify", 8)}
            for key, (side, d) in kinds.items():
                fn, fed = _step_forward(model, b, prompt, side, d, device)
                row[f"{key}_ms"] = 1000 * _timed(fn, device, reps, warm)
                row[f"{key}_fed"] = fed
            for key in kinds:
                row[f"{key}_ratio"] = row[f"{key}_ms"] / row["ar_ms"]
            # our ar against transformers.generate, same prompts, exactly `new` tokens (no EOS)
            g = torch.Generator().manual_seed(b)
            ps = torch.randint(1, min(1000, shape["vocab_size"] - 1), (b, prompt), generator=g)
            ours_out = []

            def ours():
                ours_out[:] = generate(model, tok, ps.tolist(), alg="ar", max_new_tokens=new, batch_size=b,
                                       eos_token_ids=[])
            hf_out = []

            def hf():
                x = ps.to(device)
                hf_out[:] = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                                           do_sample=False)[:, prompt:].tolist()
            t_ours = _timed(ours, device, 1 if quick else 3, 1)
            t_hf = _timed(hf, device, 1 if quick else 3, 1)
            row["ours_ar_tok_s"], row["hf_generate_tok_s"] = b * new / t_ours, b * new / t_hf
            row["ours_vs_hf"] = t_hf / t_ours
            row["ar_identical_to_hf"] = sum(o.token_ids == h for o, h in zip(ours_out, hf_out))
            # the engine's own share of a step (everything outside model.forward)
            for alg, key in (("ar", "ar"), ("prob_conf", "conf_D4"), ("self_speculative", "verify_D4")):
                total, inner = _forward_share(model, lambda: generate(model, tok, ps.tolist(), alg=alg, block_size=4,
                                                                      threshold=0.9, max_new_tokens=new, batch_size=b,
                                                                      eos_token_ids=[]))
                row[f"overhead_{key}"] = 1 - inner / total
            ar_step = row["ar_ms"] / (1 - row["overhead_ar"])
            conf_step = row["conf_D4_ms"] / (1 - row["overhead_conf_D4"])
            verify_step = row["verify_D4_ms"] / (1 - row["overhead_verify_D4"])
            row["speedup_at_tpf_2.15_conf_D4"] = PAPER_TPF_CONF * ar_step / conf_step
            row["speedup_at_tpf_3.4_spec_D4"] = PAPER_TPF_SPEC * ar_step / verify_step
            rows.append(row)
            print(f"  {shape_name} batch {b}: AR {row['ar_ms']:.2f} ms, D4 x{row['conf_D4_ratio']:.2f}, "
                  f"verify D4 x{row['verify_D4_ratio']:.2f}", file=sys.stderr, flush=True)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def markdown(result: dict) -> str:
    lines = ["| check | ok | detail |", "|---|---|---|"]
    for c in result["correctness"]:
        lines.append(f"| {c['check']} | {'yes' if c['ok'] else 'NO'} | {c['detail']} |")
    lines += ["", "| shape | batch | AR ms | D4 / AR | D8 / AR | verify D4 / AR | verify D8 / AR | engine share AR / D4 / "
              "verify | our ar vs generate | identical | speed-up at TPF 2.15 (D4) | at 3.4 (self-spec D4) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["speed"]:
        lines.append(
            f"| {r['shape']} | {r['batch']} | {r['ar_ms']:.2f} | {r['conf_D4_ratio']:.2f} | {r['conf_D8_ratio']:.2f} | "
            f"{r['verify_D4_ratio']:.2f} | {r['verify_D8_ratio']:.2f} | {100 * r['overhead_ar']:.0f}% / "
            f"{100 * r['overhead_conf_D4']:.0f}% / {100 * r['overhead_verify_D4']:.0f}% | {r['ours_vs_hf']:.2f}x | "
            f"{r['ar_identical_to_hf']}/{r['batch']} | {r['speedup_at_tpf_2.15_conf_D4']:.2f} | "
            f"{r['speedup_at_tpf_3.4_spec_D4']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, batch 1-2, few repetitions (CPU smoke run)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", default=str(REPO / "results" / "bench" / "gpu_check.json"))
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: error: device {args.device!r} but CUDA is not available", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    t0 = time.time()
    result = {"device": args.device, "quick": args.quick,
              "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
              "torch": torch.__version__}
    result["correctness"] = correctness(args.device, args.quick)
    result["speed"] = [] if args.skip_speed else speed(args.device, args.quick)
    result["total_s"] = time.time() - t0
    result["provenance"] = provenance(vars(args), seed=0)
    atomic_write_json(Path(args.out), result)
    print(markdown(result))
    print(f"wrote {args.out} ({result['total_s']:.0f} s)")
    failed = [c["check"] for c in result["correctness"] if c["strict"] and not c["ok"]]
    if failed:
        print("gpu_check: FAILED: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
