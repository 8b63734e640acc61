"""Decoding speed: TPF, wall-clock tokens/s and speed-ups of every algorithm over our AR and over
``transformers.generate``, measured in one run (machines are noisy: only ratios within a run mean much).

Methods are interleaved per prompt chunk (chunk 1: hf, ar, prob_conf, ...; chunk 2: ...), so slow phases
of a shared machine hit every method alike. Tokens are counted from ids up to and including EOS, for
transformers exactly as for ours; prefill is included in tokens/s for every method (one rule for all).

    python benchmarks/decode_speed.py --model pypi:smollm2-135m-instruct --n-prompts 20 --batch-sizes 1,8
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from sdlm.data import load_records
from sdlm.decoders import CONFIDENCE_ALGS
from sdlm.decoding import generate
from sdlm.decoding.stats import DeviceClock
from sdlm.models import ensure_mask_token, load_model, sdlm_settings
from sdlm.provenance import atomic_write_json, provenance
from sdlm.sft_data import gsm8k_messages

def gsm8k_prompts(tokenizer, n: int) -> list[str]:
    return [tokenizer.apply_chat_template(gsm8k_messages(r["question"]), tokenize=False, add_generation_prompt=True)
            for r in load_records("gsm8k", split="test")[:n]]


def hf_generate(model, tokenizer, prompts: list[str], max_new_tokens: int, eos: list[int], clock: DeviceClock):
    """transformers' greedy generate on a left-padded batch; tokens counted up to and including EOS."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    t0 = clock.now()
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                         pad_token_id=tokenizer.pad_token_id)
    wall = clock.now() - t0
    new = out[:, enc["input_ids"].shape[1]:].tolist()
    seqs = [row[: row.index(e) + 1] if (e := next((t for t in row if t in eos), None)) is not None else row for row in new]
    return seqs, wall


def run(args) -> dict:
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    settings = sdlm_settings(model.config)
    trained = settings.mask_token_id is not None
    if not trained:  # an AR checkpoint: add the mask token so the SDLM paths run (TPF will be ~1: untrained)
        ensure_mask_token(model, tokenizer, block_size=args.block_size)
    eos = sorted({tokenizer.eos_token_id} | set(_as_list(model.generation_config.eos_token_id)))
    prompts = gsm8k_prompts(tokenizer, args.n_prompts)
    clock = DeviceClock(model.device)
    methods = ["hf_generate", "ar", *args.algs]
    common = dict(block_size=args.block_size, threshold=args.threshold, max_new_tokens=args.max_new_tokens)

    def call(method, chunk, bs):
        if method == "hf_generate":
            seqs, wall = hf_generate(model, tokenizer, chunk, args.max_new_tokens, eos, clock)
            return {"tokens": sum(map(len, seqs)), "nfe": None, "wall": wall, "ids": seqs}
        t0 = clock.now()
        gens = generate(model, tokenizer, chunk, alg=method, batch_size=bs, **common)
        wall = clock.now() - t0
        return {"tokens": sum(g.stats.new_tokens for g in gens), "nfe": sum(g.stats.nfe for g in gens), "wall": wall,
                "ids": [g.token_ids for g in gens],
                "hist": [sum(h) for h in zip(*(g.stats.accepted_hist for g in gens))]}

    for method in methods:  # warm-up, untimed
        call(method, prompts[:1], 1)
    table = []
    for bs in args.batch_sizes:
        acc = {m: {"tokens": 0, "nfe": 0, "wall": 0.0, "ids": [], "hist": None} for m in methods}
        for start in range(0, len(prompts), bs):
            chunk = prompts[start:start + bs]
            for m in methods:
                r = call(m, chunk, bs)
                a = acc[m]
                a["tokens"] += r["tokens"]
                a["nfe"] = None if r["nfe"] is None else a["nfe"] + r["nfe"]
                a["wall"] += r["wall"]
                a["ids"] += r["ids"]
                if r.get("hist"):
                    a["hist"] = r["hist"] if a["hist"] is None else [x + y for x, y in zip(a["hist"], r["hist"])]
            print(f"  batch {bs}: {min(start + bs, len(prompts))}/{len(prompts)} prompts", file=sys.stderr, flush=True)
        tps = {m: acc[m]["tokens"] / acc[m]["wall"] for m in methods}
        for m in methods:
            a = acc[m]
            tpf = a["tokens"] / a["nfe"] if a["nfe"] else 1.0
            row = {"batch_size": bs, "method": m, "tokens": a["tokens"], "nfe": a["nfe"], "tpf": round(tpf, 3),
                   "wall_s": round(a["wall"], 2), "tokens_per_s": round(tps[m], 2),
                   "speedup_vs_ar": round(tps[m] / tps["ar"], 3), "speedup_vs_hf": round(tps[m] / tps["hf_generate"], 3),
                   "speedup_over_tpf": round(tps[m] / tps["ar"] / tpf, 3), "accepted_hist": a["hist"]}
            if m == "ar":  # our AR must be the same decoder as transformers': count identical outputs
                hf_ids = [s[:-1] if s and s[-1] in eos else s for s in acc["hf_generate"]["ids"]]
                row["identical_to_hf"] = sum(x == y for x, y in zip(a["ids"], hf_ids))
            table.append(row)
    return {"model": args.model, "sdlm_checkpoint": trained, "n_prompts": len(prompts), "table": table,
            "provenance": provenance(vars(args) | {"batch_sizes": args.batch_sizes, "algs": args.algs}, seed=0)}


def _as_list(x):
    return [] if x is None else [x] if isinstance(x, int) else list(x)


def print_table(result: dict) -> None:
    cols = ["batch_size", "method", "tokens", "nfe", "tpf", "wall_s", "tokens_per_s", "speedup_vs_ar", "speedup_vs_hf",
            "speedup_over_tpf"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in result["table"]:
        print("| " + " | ".join(str(r.get(c)) for c in cols) + " |")
    for r in result["table"]:
        if "identical_to_hf" in r:
            print(f"batch {r['batch_size']}: our ar identical to transformers.generate on "
                  f"{r['identical_to_hf']}/{result['n_prompts']} prompts")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pypi:smollm2-135m-instruct")
    p.add_argument("--n-prompts", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    p.add_argument("--algs", type=lambda s: s.split(","), default=[*CONFIDENCE_ALGS, "self_speculative"])
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--threshold", type=float, default=0.98)
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="results/bench/decode_speed.json")
    args = p.parse_args(argv)
    t0 = time.time()
    result = run(args)
    result["total_s"] = round(time.time() - t0, 1)
    atomic_write_json(args.out, result)
    print_table(result)
    print(f"wrote {args.out} ({result['total_s']} s)")


if __name__ == "__main__":
    main()
