"""Snakemake script of rule aggregate: every cell.json of the grid -> cells.csv (+ batches.csv)."""

import sys

sm = snakemake  # noqa: F821  (injected by Snakemake)
sys.stdout = sys.stderr = open(sm.log[0], "w", buffering=1)  # noqa: SIM115  (the job log)
from sdlm.provenance import atomic_write_text  # noqa: E402
from sdlm.report import aggregate, batch_frame  # noqa: E402

frame = aggregate(list(sm.input.cells))
atomic_write_text(sm.output.batches, batch_frame(frame).to_csv(index=False))
atomic_write_text(sm.output.cells, frame.to_csv(index=False))
print(f"[sdlm] {len(sm.input.cells)} cells -> {len(frame)} rows -> {sm.output.cells}")
