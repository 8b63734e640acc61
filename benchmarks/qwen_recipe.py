"""A CPU retrofit recipe for Qwen2.5-Coder-0.5B-Instruct, found by measurement (README "The claim on CPU").

Prompts: MBPP validation + train (task_ids 511-974, never a test problem); targets: the base model's own greedy
answers (``sdlm.distill``), made once and cached. Each variant is one ``sdlm retrofit`` process (D = 4) that
differs from the baseline in one option; for each we record the CPU minutes and peak RSS of training, the TPF
probe on held-out prompts (self-speculative, prob_conf at tau .98 / .9), and HumanEval pass@1 with its Wilson
interval on a fixed subset (the first ``--problems`` problems) for self-speculative and prob_conf at .9, beside
the base model's AR pass@1 on the same subset. Everything runs one process after another (time nothing in
parallel on 2 cores).

    python benchmarks/qwen_recipe.py --variants baseline,lr3e-4,rows128,freeze,causal --steps 32 --problems 40

Results: ``results/bench/qwen_recipe.json`` (appended per variant, so a stopped run keeps what it measured) and a
Markdown table. Needs ``pip install -e ".[qwen]"`` and SDLM_DATA_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdlm.cells import TRAINING_FILE, read_cell_rows  # noqa: E402
from sdlm.decoders import Decoder  # noqa: E402
from sdlm.provenance import atomic_write_json, provenance  # noqa: E402
from sdlm.retrofit_config import option_args  # noqa: E402
from sdlm.report.frame import wilson_interval  # noqa: E402

BASE = "pypi:qwen2.5-coder-0.5b-instruct"
#: name -> (what it changes, `sdlm retrofit` options over the baseline's)
VARIANTS: dict[str, tuple[str, dict]] = {
    "baseline": ("self-distilled MBPP targets, lr 1e-4 constant, 2 rows x <= 256 tokens, repeat 2, fp32/bf16 auto", {}),
    "lr3e-4": ("peak lr 3e-4", {"lr": 3e-4}),
    "lr3e-5": ("peak lr 3e-5", {"lr": 3e-5}),
    "rows128": ("rows <= 128 tokens", {"max_len": 128}),
    "rows4": ("4 rows per step", {"batch_size": 4}),
    "causal": ("causal attention inside blocks", {"causal_attn": True}),
    "freeze": ("embeddings (but the mask row) and the lower 12 of 24 layers frozen",
               {"freeze_embeddings": True, "freeze_layers": 12}),
    "steps2x": ("twice the steps", {"steps_factor": 2}),
}
BASELINE = {"lr": 1e-4, "batch_size": 2, "max_len": 256, "repeat": 2, "warmup": 4, "bf16": "auto", "seed": 1234}


def run(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """Run ``cmd`` with its output in ``log``; (wall s, CPU s, peak RSS MiB) of that process (os.wait4)."""
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({code}); see {log}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024  # ru_maxrss: kB on Linux


#: the decoders scored on HumanEval for every variant (the base model is scored with AR)
SCORED = (Decoder("self_speculative", 4), Decoder("prob_conf", 4, 0.9))
PROBED = (Decoder("self_speculative", 4), Decoder("prob_conf", 4, 0.98), Decoder("prob_conf", 4, 0.9))


def humaneval(pretrained: str, decoder: Decoder, problems: int, out: Path, threads: int) -> dict:
    """pass@1 [Wilson 95%] and TPF of one decoder on the first ``problems`` HumanEval problems."""
    settings = {"pretrained": pretrained, **decoder.model_args(), "batch_size": 8, "max_new_tokens": 512,
                "dtype": "fp32", "device": "cpu"}
    ma = ",".join(f"{k}={v}" for k, v in settings.items())
    wall, cpu, rss = run([sys.executable, "-m", "sdlm.cli", "eval", "--model-args", ma, "--tasks", "humaneval_sdlm",
                          "--limit", str(problems), "--output", str(out), "--threads", str(threads)], out.with_suffix(".log"))
    row = read_cell_rows(out)[0]
    acc = row["metrics"]["pass_at_1,none"]
    lo, hi = wilson_interval(acc, row["n"])
    return {"pass_at_1": 100 * acc, "lo": 100 * lo, "hi": 100 * hi, "n": row["n"], "tpf": row["decode"]["tpf"],
            "eval_wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="baseline")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--problems", type=int, default=40)
    ap.add_argument("--distill-max-new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(REPO / "results" / "bench" / "qwen_recipe"))
    ap.add_argument("--out", default=str(REPO / "results" / "bench" / "qwen_recipe.json"))
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {"runs": {}}
    py = [sys.executable, "-m", "sdlm.cli"]

    prompts = work / "mbpp_train.jsonl"
    distilled = work / f"mbpp_train.distilled{args.distill_max_new_tokens}.jsonl"
    if not distilled.is_file():
        from sdlm.provenance import atomic_write_jsonl
        from sdlm.sft_data import mbpp_train_records

        atomic_write_jsonl(prompts, mbpp_train_records())
        wall, cpu, rss = run(py + ["distill", "--base", BASE, "--data", str(prompts), "--out", str(distilled),
                                   "--max-new-tokens", str(args.distill_max_new_tokens), "--batch-size", "16",
                                   "--threads", str(args.threads)], work / "distill.log")
        results["distill"] = {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss,
                              **json.loads(distilled.with_suffix(".meta.json").read_text())}
    if "base" not in results:
        results["base"] = {"humaneval_ar": humaneval(BASE, Decoder("ar"), args.problems, work / "base_ar", args.threads)}
        atomic_write_json(Path(args.out), results)

    for name in [v for v in args.variants.split(",") if v]:
        if name in results["runs"]:
            continue
        what, over = VARIANTS[name]
        opts = {**BASELINE, **{k: v for k, v in over.items() if k != "steps_factor"}}
        steps = args.steps * over.get("steps_factor", 1)
        ckpt = work / name
        cmd = py + ["retrofit", "--base", BASE, "--data", str(distilled), "--out", str(ckpt), "--overwrite",
                    "--block-size", "4", "--max-steps", str(steps), "--logging-steps", "4", "--probe-every",
                    str(steps), "--probe-prompts", "16", "--probe-max-new-tokens", "128", "--probe-taus",
                    ",".join(f"{d.tau:g}" for d in PROBED if d.is_confidence),
                    "--threads", str(args.threads)]
        for k, v in opts.items():
            cmd += option_args(k, v)
        wall, cpu, rss = run(cmd, work / f"{name}.log")
        summary = json.loads((ckpt / TRAINING_FILE).read_text())
        entry = {"what": what, "options": opts, "steps": steps, "train_seconds": summary["train_seconds"],
                 "seconds_per_step": summary["seconds_per_step"], "process_wall_s": wall, "process_cpu_s": cpu,
                 "peak_rss_mib": rss, "tpf_curve": summary.get("tpf_curve"), "bf16_autocast": summary.get("bf16_autocast")}
        for dec in SCORED:
            entry[f"humaneval_{dec.name}"] = humaneval(str(ckpt), dec, args.problems, work / f"{name}_{dec.name}",
                                                       args.threads)
        results["runs"][name] = entry
        results["provenance"] = provenance(vars(args))
        atomic_write_json(Path(args.out), results)
        print(table(results), flush=True)
    print(table(results))
    return 0


def table(results: dict) -> str:
    base = results.get("base", {}).get("humaneval_ar")
    lines = [f"base model AR: HumanEval pass@1 {base['pass_at_1']:.1f} [{base['lo']:.1f}, {base['hi']:.1f}] (n={base['n']})"
             if base else "", "",
             "| variant | steps | train CPU min | s/step | peak RSS MiB | probe TPF "
             + " / ".join(d.label for d in PROBED) + " | "
             + " | ".join(f"HumanEval {d.label} (TPF)" for d in SCORED) + " |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        tpf = ((r.get("tpf_curve") or [{}])[-1]).get("tpf", {})
        cells = []
        for dec in SCORED:
            h = r[f"humaneval_{dec.name}"]
            cells.append(f"{h['pass_at_1']:.1f} [{h['lo']:.1f}, {h['hi']:.1f}] ({h['tpf']:.2f})")
        lines.append(f"| {name} | {r['steps']} | {r['process_cpu_s'] / 60:.1f} | {r['seconds_per_step']:.1f} | "
                     f"{r['peak_rss_mib']} | "
                     + " / ".join(f"{tpf.get(d.probe_key, float('nan')):.2f}" for d in PROBED) + " | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
