"""Snakemake script of rule aggregate: every cell.json of the grid -> cells.csv, batches.csv, problems.csv, load.csv
(sdlm.report.gather: the only step that opens the cell folders)."""

import sys

sm = snakemake  # noqa: F821  (injected by Snakemake)
sys.stdout = sys.stderr = open(sm.log[0], "w", buffering=1)  # noqa: SIM115  (the job log)
from sdlm.report.gather import gather, write_gathered  # noqa: E402
from sdlm.report.outputs import AGGREGATE_OUTPUTS  # noqa: E402

g = gather(list(sm.input.cells))
write_gathered(g, None, files={o.name: getattr(sm.output, o.key) for o in AGGREGATE_OUTPUTS})
print(f"[sdlm] {len(sm.input.cells)} cells -> {len(g.cells)} rows -> {sm.output.cells_csv}")
