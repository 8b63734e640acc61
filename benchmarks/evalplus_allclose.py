"""How many HumanEval+ / MBPP+ verdicts the strict float comparison changes (README "Sandbox", issue 24).

EvalPlus's test files compare floats with ``np.allclose(out, exp, ...)``, which broadcasts: ``[]`` "is close" to
any expected float. ``sdlm.scoring.code.strict_float_tests`` compares shapes and numeric kinds first. This
script runs, through the real sandbox, every item of both sets with

* the reference (canonical) solution -- with the strict comparison; where it fails, also with EvalPlus's own
  text, to tell a changed verdict from an upstream failure;
* degenerate answers (``return []``, ``()``, ``None``, ``0``, ``0.0``, ``""``, ``{}``) -- with both,

and prints, per set, the items whose verdict differs between the two comparisons.

    python benchmarks/evalplus_allclose.py [--workers 2] [--limit N]

Writes ``results/bench/evalplus_allclose.json`` (per item and answer: verdict with each comparison).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sdlm.scoring.code as code  # noqa: E402
from sdlm.data import load_records  # noqa: E402
from sdlm.provenance import atomic_write_json, provenance  # noqa: E402

DEGENERATE = ("[]", "()", "None", "0", "0.0", '""', "{}")
PLUS_TIMEOUT_S, PLUS_MEMORY_MB = 60.0, 4096  # tasks/utils.py's limits for the plus sets


def _parts(name: str, record: dict, answer: str, *, strict: bool) -> code.CodeCheck:
    keep = code.strict_float_tests
    if not strict:
        code.strict_float_tests = lambda tests, prelude: (tests, prelude)  # EvalPlus's text as shipped
    try:
        if name == "humaneval_plus":
            return code.humaneval_parts(record, answer)
        return code.mbpp_parts(record, answer, plus=True)
    finally:
        code.strict_float_tests = keep


def _answers(name: str, record: dict) -> dict[str, str]:
    if name == "humaneval_plus":
        entry, reference = record["entry_point"], record["canonical_solution"]
    else:
        entry, reference = code.mbpp_entry_point(record), record["code"]
    out = {"reference": reference}
    for value in DEGENERATE:
        out[f"return {value}"] = f"def {entry}(*args, **kwargs):\n    return {value}\n"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="first N items per set (a quick look)")
    ap.add_argument("--out", default=str(REPO / "results" / "bench" / "evalplus_allclose.json"))
    args = ap.parse_args()
    report: dict = {}
    for name in ("humaneval_plus", "mbpp_plus"):
        records = load_records(name, "test")[: args.limit]
        jobs = []  # (task_id, answer label, strict?)
        checks = []
        for r in records:
            for label, answer in _answers(name, r).items():
                for strict in ((True,) if label == "reference" else (True, False)):
                    jobs.append((str(r["task_id"]), label, strict))
                    checks.append(_parts(name, r, answer, strict=strict))
        results = code.run_checks(checks, workers=args.workers, timeout=PLUS_TIMEOUT_S, memory_mb=PLUS_MEMORY_MB)
        verdict = {(t, a, s): res.status for (t, a, s), res in zip(jobs, results)}
        # a reference that fails with the strict comparison: run EvalPlus's text too
        again = [(r, _answers(name, r)["reference"]) for r in records
                 if verdict[(str(r["task_id"]), "reference", True)] != "passed"]
        extra = code.run_checks([_parts(name, r, a, strict=False) for r, a in again], workers=args.workers,
                                timeout=PLUS_TIMEOUT_S, memory_mb=PLUS_MEMORY_MB)
        for (r, _), res in zip(again, extra):
            verdict[(str(r["task_id"]), "reference", False)] = res.status
        items = {}
        for (t, a, s), status in verdict.items():
            items.setdefault(t, {}).setdefault(a, {})["strict" if s else "evalplus"] = status
        changed = {t: {a: v for a, v in per.items() if "evalplus" in v and v["evalplus"] != v["strict"]}
                   for t, per in items.items()}
        changed = {t: v for t, v in changed.items() if v}
        passes = {a: {k: sum(per.get(a, {}).get(k) == "passed" for per in items.values()) for k in ("evalplus", "strict")}
                  for a in _answers(name, records[0])}
        report[name] = {"n": len(records), "changed_items": changed, "passes": passes, "items": items}
        print(f"\n{name}: {len(records)} items; {len(changed)} items with a changed verdict")
        print("| answer | passes with EvalPlus's np.allclose | passes with the strict comparison |")
        print("|---|---|---|")
        for a, p in passes.items():
            ev = "-" if a == "reference" and p["evalplus"] == 0 else p["evalplus"]
            print(f"| {a} | {ev} | {p['strict']} |")
        for t, per in sorted(changed.items()):
            print(f"  {t}: " + ", ".join(f"{a}: {v['evalplus']} -> {v['strict']}" for a, v in per.items()))
    atomic_write_json(Path(args.out), {**report, "provenance": provenance(vars(args))})


if __name__ == "__main__":
    main()
