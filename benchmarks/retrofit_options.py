"""Which retrofit options buy the most TPF per CPU-minute? (issue 8, README "Retrofit options")

Runs short NSP retrofits of one base model that differ in ONE option each from a baseline (bf16
autocast, human-written GSM8K targets, all weights trainable, rows <= 512 tokens, constant LR after
warm-up) and records each run's TPF curve (sdlm.probe: prob_conf at tau .98 / .82 and self-speculative
TPF on held-out prompts every ``--probe-every`` steps) and its training seconds (probe time excluded).
Variants run one after another in this process, on the same records and seed, so the only difference
is the option (the machine's load is not controlled: compare s/step only within one run of this script).

    python benchmarks/retrofit_options.py --steps 48 --variants baseline,fp32,distill,freeze,short_rows,cosine

Self-distillation targets are made first (``sdlm.distill``: the base model's greedy answers to the same
prompts) and cached under ``--work``. Results: ``results/bench/retrofit_options.json`` and a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from sdlm.distill import self_distill
from sdlm.models import load_model
from sdlm.decoders import Decoder
from sdlm.provenance import atomic_write_json, atomic_write_jsonl, provenance
from sdlm.sft_data import gsm8k_train_records, read_chat_jsonl
from sdlm.train import RetrofitConfig, retrofit

#: name -> (what it changes, RetrofitConfig overrides, uses self-distilled targets)
VARIANTS: dict[str, tuple[str, dict, bool]] = {
    "baseline": ("bf16 autocast, GSM8K reference targets, all weights, rows <= 512, constant LR 3e-4", {}, False),
    "fp32": ("fp32 instead of bf16 autocast", {"bf16": False}, False),
    "distill": ("self-distilled targets (the base model's greedy answers)", {}, True),
    "freeze": ("embeddings (except the mask row) and the lower half of the layers frozen",
               {"freeze_embeddings": True, "freeze_layers": 15}, False),
    "short_rows": ("rows <= 256 tokens", {"max_len": 256}, False),
    "cosine": ("cosine LR decay to 0 after warm-up", {"lr_scheduler": "cosine"}, False),
    "lr1e-3": ("peak LR 1e-3, cosine", {"lr": 1e-3, "lr_scheduler": "cosine"}, False),
    "distill_short_rows": ("self-distilled targets + rows <= 256 tokens", {"max_len": 256}, True),
    "distill_cosine": ("self-distilled targets + cosine LR", {"lr_scheduler": "cosine"}, True),
    "distill_lr1e-3": ("self-distilled targets + peak LR 1e-3, cosine", {"lr": 1e-3, "lr_scheduler": "cosine"}, True),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="pypi:smollm2-135m-instruct")
    ap.add_argument("--variants", default="baseline,fp32,distill,freeze,short_rows,cosine")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--fp32-steps", type=int, default=16, help="fp32 is only timed: fewer steps")
    ap.add_argument("--block-size", type=int, default=4)
    ap.add_argument("--records", type=int, default=264, help="GSM8K train records (the last --probe-prompts held out)")
    ap.add_argument("--probe-every", type=int, default=16)
    ap.add_argument("--probe-prompts", type=int, default=8)
    ap.add_argument("--probe-max-new-tokens", type=int, default=96)
    ap.add_argument("--distill-max-new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="results/bench/retrofit_options")
    ap.add_argument("--out", default="results/bench/retrofit_options.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    records = gsm8k_train_records(limit=args.records)
    distilled_path = work / f"distilled_{args.records}_{args.distill_max_new_tokens}.jsonl"
    distill_report = None
    if any(VARIANTS[v][2] for v in names):
        if not distilled_path.is_file():
            model, tok = load_model(args.base)
            out, distill_report = self_distill(model, tok, records, max_new_tokens=args.distill_max_new_tokens,
                                               batch_size=16, log=sys.stdout)
            atomic_write_jsonl(distilled_path, out)
            atomic_write_json(distilled_path.with_suffix(".meta.json"), distill_report)
            del model
        distill_report = json.loads(distilled_path.with_suffix(".meta.json").read_text())
        print(f"[bench] self-distilled targets: {distill_report}", flush=True)

    results = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {"runs": {}}
    for name in names:
        what, over, distilled = VARIANTS[name]
        steps = args.fp32_steps if name == "fp32" else args.steps
        recs = read_chat_jsonl(distilled_path) if distilled else records
        cfg = RetrofitConfig(
            base=args.base, data=str(distilled_path) if distilled else "gsm8k", out=str(work / name),
            block_size=args.block_size, max_steps=steps, lr=3e-4, batch_size=4, max_len=512, repeat=2, bf16=True,
            warmup=10, logging_steps=8, seed=1234, probe_every=args.probe_every, probe_prompts=args.probe_prompts,
            probe_max_new_tokens=args.probe_max_new_tokens, probe_at_start=(name == "baseline"),
        )
        cfg = dataclasses.replace(cfg, **over)
        model, tok = load_model(args.base)
        print(f"[bench] {name}: {what} ({steps} steps)", flush=True)
        t0 = time.perf_counter()
        retrofit(cfg, model=model, tokenizer=tok, records=recs, stream=sys.stdout)
        summary = json.loads((work / name / "sdlm_training.json").read_text())
        results["runs"][name] = {
            "what": what, "overrides": over, "self_distilled": distilled, "steps": summary["steps"],
            "train_seconds": summary["train_seconds"], "seconds_per_step": summary["seconds_per_step"],
            "probe_seconds": summary.get("probe_seconds"), "wall_seconds": round(time.perf_counter() - t0, 1),
            "tpf_curve": summary.get("tpf_curve"), "last_log": summary.get("last_log"),
        }
        results["distill"] = distill_report
        results["settings"] = vars(args)
        results["provenance"] = provenance(vars(args), seed=1234)
        atomic_write_json(args.out, results)
        del model
    print(table(results))
    return 0


def table(results: dict) -> str:
    """Markdown: TPF at the last probe and per training minute, one row per variant."""
    probed = [Decoder("prob_conf", 4, 0.98), Decoder("prob_conf", 4, 0.82), Decoder("self_speculative", 4)]
    lines = ["| variant | steps | s/step | train min | " + " | ".join(f"TPF {d.label}" for d in probed) + " |",
             "|---|---|---|---|" + "---|" * len(probed)]
    for name, r in results["runs"].items():
        last = (r.get("tpf_curve") or [{}])[-1].get("tpf", {})
        lines.append(f"| {name} | {r['steps']} | {r['seconds_per_step']:.2f} | {r['train_seconds'] / 60:.1f} | "
                     + " | ".join(f"{last.get(d.probe_key, float('nan')):.3f}" for d in probed) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
