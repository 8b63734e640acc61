"""An ESTIMATE (nothing here was measured on a GPU): how config/paper.yaml's SDLM-32B-D4 cells (and its
Qwen2.5-32B-Instruct AR baseline) would be scheduled on one node of 8 x H200, and for how long.

    python benchmarks/schedule_estimate.py                  # Markdown tables (README "More than one GPU")
    python benchmarks/schedule_estimate.py --gpus 8 --ar-step-ms 35 --new-tokens-scale 1.5   # pessimistic

The model, stated so that each input can be replaced by a measurement (``benchmarks/gpu_check.py`` measures the
step ratios and ``sdlm eval``'s cells the rest, once a GPU is lent):

* steps of one cell = sum over its docs of new tokens / TPF / batch size x ``--batch-tail`` (a batch of 8 runs as
  many steps as its longest answer; rows retire, the steps remain);
* TPF: the paper's SDLM-32B D = 4 figures per benchmark (config/paper_numbers.csv) at tau .98 and .82, linear in
  tau for .9 and extrapolated to .7; entropy_conf taken equal to prob_conf (not published); self-speculative
  D = 4: 3.4 (the figure benchmarks/gpu_check.py prices); the one-token-per-step reference and AR: 1;
* one AR step of a 32B model at batch 8 on one H200: ``--ar-step-ms`` (default 25: ~66 GB of bf16 weights read
  per step at ~70% of 4.8 TB/s is ~20 ms, plus launch overhead); a block step costs ``--d4-ratio`` x that
  (1.15: gpu_check's target for D4 / AR at batch 8 in the memory-bound regime; measured on CPU, where a step is
  compute-bound: 1.3-1.7, README "decode_speed"), a self-speculative verify step ``--spec-ratio`` x (1.6 assumed;
  2.5 on CPU);
* new tokens per doc (``NEW_TOKENS``): assumed answer lengths of a 32B instruct model under the paper's prompts
  (measured on this harness only for Qwen2.5-Coder-0.5B: ~200 on HumanEval, ~45 on MBPP);
* loading the weights: ``--load-min`` minutes per job (66 GB from local disk or page cache);
* 1 GPU per cell (config/paper-8xh200.yaml), 8 jobs at a time, longest job first.
"""

from __future__ import annotations

import argparse
import csv
import heapq
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: benchmark -> (task, docs, assumed mean new tokens per doc)
NEW_TOKENS = {
    "GSM8K": ("gsm8k_sdlm", 1319, 300), "MATH": ("math500_sdlm", 500, 600), "GPQA": ("gpqa_sdlm", 198, 700),
    "HumanEval": ("humaneval_sdlm", 164, 200), "HumanEval+": ("humaneval_plus_sdlm", 164, 200),
    "MBPP": ("mbpp_sdlm", 257, 60), "MBPP+": ("mbpp_plus_sdlm", 378, 60), "IFEval": ("ifeval_sdlm", 541, 400),
}
TAUS = (0.98, 0.9, 0.82, 0.7)
SPEC_TPF = 3.4


def paper_tpf(path: Path = REPO / "config" / "paper_numbers.csv") -> dict[tuple[str, float], float]:
    """(benchmark, tau) -> TPF of SDLM-32B D = 4 for the four taus of the grid (see the module doc)."""
    pub: dict[tuple[str, float], float] = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            if r["paper_model"] == "SDLM-32B" and r["block_size"] == "4" and r["tpf"] and r["benchmark"] in NEW_TOKENS:
                pub[(r["benchmark"], float(r["tau"]))] = float(r["tpf"])
    out = {}
    for b in NEW_TOKENS:
        hi, lo = pub[(b, 0.98)], pub[(b, 0.82)]
        for tau in TAUS:
            out[(b, tau)] = hi + (lo - hi) * (0.98 - tau) / (0.98 - 0.82)
    return out


def jobs(args: argparse.Namespace) -> list[dict]:
    """Every evaluation job of the two 32B models: model, benchmark, decoder, GPUs, estimated hours."""
    tpf = paper_tpf()
    decoders = [(f"{alg}_D4_tau{tau}", lambda b, t=tau: tpf[(b, t)], args.d4_ratio)
                for alg in ("prob_conf", "entropy_conf") for tau in TAUS]
    decoders += [("self_speculative_D4", lambda b: SPEC_TPF, args.spec_ratio), ("step1_D4", lambda b: 1.0, args.d4_ratio)]
    out = []
    for bench, (task, docs, new) in NEW_TOKENS.items():
        tokens = docs * new * args.new_tokens_scale
        for name, tpf_of, ratio in decoders:
            steps = tokens / tpf_of(bench) / args.batch * args.batch_tail
            out.append({"model": "sdlm-32b-d4", "task": task, "decoder": name, "gpus": 1,
                        "hours": (steps * args.ar_step_ms * ratio / 1000 + args.load_min * 60) / 3600})
        steps = tokens / args.batch * args.batch_tail
        out.append({"model": "qwen2.5-32b-instruct", "task": task, "decoder": "ar", "gpus": 1,
                    "hours": (steps * args.ar_step_ms / 1000 + args.load_min * 60) / 3600})
    return out


def schedule(js: list[dict], gpus: int) -> float:
    """Wall hours of the jobs on ``gpus`` GPUs, one GPU per job, longest first (what Snakemake's scheduler with
    ``--resources gpu=N`` and the GPU pool come close to)."""
    free = [0.0] * gpus
    for j in sorted(js, key=lambda j: -j["hours"]):
        heapq.heappush(free, heapq.heappop(free) + j["hours"])
    return max(free)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--batch", type=int, default=8, help="config/paper.yaml eval.batch_size")
    p.add_argument("--batch-tail", type=float, default=1.5, help="steps of a batch / mean steps of its rows")
    p.add_argument("--ar-step-ms", type=float, default=25.0)
    p.add_argument("--d4-ratio", type=float, default=1.15)
    p.add_argument("--spec-ratio", type=float, default=1.6)
    p.add_argument("--new-tokens-scale", type=float, default=1.0, help="scale every assumed answer length")
    p.add_argument("--load-min", type=float, default=1.5)
    args = p.parse_args(argv)
    js = jobs(args)
    lines = ["| model | decoder | jobs (one per benchmark) | GPUs each | GPU-hours (8 benchmarks) | longest job (h) |",
             "|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for j in js:
        groups.setdefault((j["model"], j["decoder"]), []).append(j)
    for (model, dec), g in groups.items():
        lines.append(f"| {model} | {dec} | {len(g)} | 1 | {sum(j['hours'] for j in g):.2f} | "
                     f"{max(j['hours'] for j in g):.2f} |")
    for model in ("sdlm-32b-d4", "qwen2.5-32b-instruct"):
        mine = [j for j in js if j["model"] == model]
        lines.append(f"| **{model}** | all | {len(mine)} | 1 | **{sum(j['hours'] for j in mine):.1f}** | "
                     f"wall on {args.gpus} GPUs: **{schedule(mine, args.gpus):.1f} h** |")
    lines.append(f"| **both** | | {len(js)} | 1 | **{sum(j['hours'] for j in js):.1f}** | wall on {args.gpus} GPUs: "
                 f"**{schedule(js, args.gpus):.1f} h** |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
