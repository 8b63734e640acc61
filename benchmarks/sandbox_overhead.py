"""Sandbox overhead per program: the median wall time of N trivial programs, for the current sandbox
(bubblewrap and the in-process guard) and for earlier implementations taken from git, in one run.

    python benchmarks/sandbox_overhead.py --n 100 --baseline-rev 682091d --baseline-rev b4852fe

A baseline is the sandbox of that revision (``sdlm/scoring/sandbox.py`` with the helper files it had:
``_sandbox_child.py`` at 682091d, ``_checker.py``/``_runner.py``/``_wire.py`` later), imported from a temp
folder and run under bubblewrap if it supports it. The first baseline is the ratios' denominator. Methods are
interleaved program by program, so a busy machine slows them alike; prints a Markdown table and writes
``results/bench/sandbox_overhead.json``.
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


HELPERS = ("sandbox.py", "_sandbox_child.py", "_checker.py", "_runner.py", "_wire.py")


def _baseline(rev: str, folder: Path):
    folder.mkdir(parents=True)
    for name in HELPERS:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:sdlm/scoring/{name}"], capture_output=True, text=True)
        if src.returncode == 0:
            (folder / name).write_text(src.stdout)
    name = f"baseline_sandbox_{rev}"
    spec = importlib.util.spec_from_file_location(name, folder / "sandbox.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _old_runner(mod, rev: str):
    """A checker-based baseline checks PROGRAM against TESTS; the single-process one ran them as one program."""
    if hasattr(mod, "check_program"):
        def run():
            os.environ[mod.SANDBOX_ENV] = mod.BWRAP
            r = mod.check_program(PROGRAM, TESTS)
            assert r.passed, r
        return f"{rev}: checker + bubblewrap", run

    def run_single():
        r = mod.run_program(PROGRAM + TESTS)
        assert r.passed, r
    return f"{rev}: one process, in-process guard, verdict from the program", run_single


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--baseline-rev", action="append", default=None,
                    help="earlier revision(s) to compare with (default: 682091d)")
    ap.add_argument("--out", default=str(REPO / "results" / "bench" / "sandbox_overhead.json"))
    args = ap.parse_args()
    revs = args.baseline_rev or ["682091d"]
    with tempfile.TemporaryDirectory() as tmp:
        methods = dict(_old_runner(_baseline(rev, Path(tmp) / rev), rev) for rev in revs)

        def current(iso):
            def run():
                os.environ[sandbox.SANDBOX_ENV] = iso
                r = sandbox.check_program(PROGRAM, TESTS)
                assert r.passed, r
            return run

        methods["now: checker + bubblewrap"] = current(sandbox.BWRAP)
        methods["now: checker + in-process guard"] = current(sandbox.GUARD)
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
