"""Snakemake script of rule report: cells.csv (+ batches.csv, models.json, paper numbers, the checkpoints'
sdlm_training.json files) -> tables, figures."""

import json
import sys

sm = snakemake  # noqa: F821  (injected by Snakemake)
sys.stdout = sys.stderr = open(sm.log[0], "w", buffering=1)  # noqa: SIM115  (the job log)
import pandas as pd  # noqa: E402

from sdlm.report import load_models, load_paper_numbers, read_frame, write_report  # noqa: E402

frame = read_frame(sm.input.cells)
batches = pd.read_csv(sm.input.batches)
paper = load_paper_numbers(sm.input.paper[0] if len(sm.input.paper) else None)
written = write_report(frame, sm.params.out, paper=paper, models=load_models(sm.input.models), batches=batches,
                       table3_tau=float(sm.params.table3_tau), training=json.loads(sm.params.training))
print("[sdlm] wrote " + ", ".join(str(p) for p in written))
