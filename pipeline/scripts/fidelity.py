"""Snakemake script of rule fidelity: a cell and its one-token-per-step reference cell -> fidelity.json."""

import sys

sm = snakemake  # noqa: F821  (injected by Snakemake)
sys.stdout = sys.stderr = open(sm.log[0], "w", buffering=1)  # noqa: SIM115  (the job log)
import os  # noqa: E402

from sdlm.fidelity import write_fidelity  # noqa: E402

res = write_fidelity(os.path.dirname(sm.input.cell), os.path.dirname(sm.input.reference), sm.output[0])
for task, r in res["tasks"].items():
    print(f"[sdlm] {task}: n={r['n']} identical_text={r['identical_text']:.3f} same_answer={r['same_answer']:.3f} "
          f"-> {sm.output[0]}")
