"""Sandbox overhead per program: the median wall time of N trivial programs, for the current sandbox
(bubblewrap and the in-process guard) and for an earlier implementation taken from git, in one run.

    python benchmarks/sandbox_overhead.py --n 100 --baseline-rev 682091d

The baseline is the single-process sandbox of that revision (``sdlm/scoring/sandbox.py`` and its
``_sandbox_child.py``), imported from a temp folder. Methods are interleaved program by program, so a busy
machine slows them alike; prints a Markdown table and writes ``results/bench/sandbox_overhead.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdlm.provenance import atomic_write_json, provenance  # noqa: E402
from sdlm.scoring import sandbox  # noqa: E402

PROGRAM = "def f(x):\n    return x\n"
TESTS = "assert f(1) == 1\n"


def _baseline(rev: str, folder: Path):
    for name in ("sandbox.py", "_sandbox_child.py"):
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:sdlm/scoring/{name}"], check=True,
                             capture_output=True, text=True).stdout
        (folder / name).write_text(src)
    spec = importlib.util.spec_from_file_location("baseline_sandbox", folder / "sandbox.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["baseline_sandbox"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--baseline-rev", default="682091d")
    ap.add_argument("--out", default=str(REPO / "results" / "bench" / "sandbox_overhead.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = _baseline(args.baseline_rev, Path(tmp))

        def current(iso):
            def run():
                os.environ[sandbox.SANDBOX_ENV] = iso
                r = sandbox.check_program(PROGRAM, TESTS)
                assert r.passed, r
            return run

        def baseline():
            r = old.run_program(PROGRAM + TESTS)
            assert r.passed, r

        methods = {f"baseline {args.baseline_rev} (one process, in-process guard, verdict from the program)": baseline,
                   "checker + bubblewrap": current(sandbox.BWRAP),
                   "checker + in-process guard": current(sandbox.GUARD)}
        times = {m: [] for m in methods}
        for _ in range(args.n):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(next(iter(times.values())))
    rows = {m: {"median_s": statistics.median(t), "p90_s": sorted(t)[int(0.9 * len(t))],
                "ratio_to_baseline": statistics.median(t) / base} for m, t in times.items()}
    print(f"| sandbox ({args.n} trivial programs, one assert) | median ms | p90 ms | x baseline |")
    print("|---|---|---|---|")
    for m, r in rows.items():
        print(f"| {m} | {1000 * r['median_s']:.1f} | {1000 * r['p90_s']:.1f} | {r['ratio_to_baseline']:.2f} |")
    atomic_write_json(Path(args.out), {"rows": rows, "n": args.n, "program": PROGRAM, "tests": TESTS,
                                        "provenance": provenance(vars(args))})


if __name__ == "__main__":
    main()
