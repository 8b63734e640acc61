"""Snakemake script of rule report: what aggregation gathered (cells.csv, batches.csv, problems.csv, load.csv) +
models.json, paper numbers, the checkpoints' sdlm_training.json files -> tables, figures. Reads only its inputs."""

import json
import sys

sm = snakemake  # noqa: F821  (injected by Snakemake)
sys.stdout = sys.stderr = open(sm.log[0], "w", buffering=1)  # noqa: SIM115  (the job log)
from sdlm.report import load_models, load_paper_numbers, read_gathered, write_report  # noqa: E402

g = read_gathered(sm.input.cells_csv, sm.input.batches_csv, sm.input.problems_csv, sm.input.load_csv)
paper = load_paper_numbers(sm.input.paper[0] if len(sm.input.paper) else None)
written = write_report(g.cells, sm.params.out, paper=paper, models=load_models(sm.input.models), batches=g.batches,
                       table3_tau=float(sm.params.table3_tau), training=json.loads(sm.params.training),
                       problems=g.problems, loads=g.loads)
print("[sdlm] wrote " + ", ".join(str(p) for p in written))
