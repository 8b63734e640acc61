"""The report's files, listed once: what aggregation writes (:data:`AGGREGATE_OUTPUTS`) and what rendering writes
(:data:`REPORT_OUTPUTS`), each with its caption for ``snakemake --report``. Stdlib only: the pipeline's rules
read these tables while Snakemake builds its DAG, and :mod:`sdlm.report.render` writes exactly these files.

Aggregation gathers everything the report needs from the cell folders -- the frame (``cells.csv``), the
decoded batches (``batches.csv``), every problem's score (``problems.csv``: the paired comparison with the AR
baseline) and the machine's load while each cell ran (``load.csv``) -- so that rendering reads only files its
rule declares.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AGGREGATE_OUTPUTS", "FIGURES", "FORMATS", "Output", "REPORT_FILES", "REPORT_OUTPUTS", "TABLES"]


@dataclass(frozen=True)
class Output:
    """A file of the report folder: its name, the caption file in ``pipeline/report/`` (None: not shown in
    ``snakemake --report``), and where that report files it."""

    name: str
    caption: str | None = None
    category: str | None = None
    subcategory: str | None = None

    @property
    def key(self) -> str:
        """The file's name as a Python identifier (a Snakemake output name)."""
        return self.name.replace(".", "_")


TABLES = ("table1", "table3", "speed")
FORMATS = ("md", "tex", "html")
_TABLE_TITLES = {"table1": "Table 1 (accuracy, TPF)", "table3": "Table 3 (self-speculative)", "speed": "Speed"}
FIGURES = ("fig_tau_ablation.png", "fig_throughput.png", "fig_tpf_vs_steps.png", "fig_claim.png")
_FIGURE_TITLES = {"fig_tau_ablation.png": "tau ablation", "fig_throughput.png": "throughput",
                  "fig_tpf_vs_steps.png": "TPF vs training steps", "fig_claim.png": "accuracy vs TPF (the claim)"}

#: what the aggregate rule (and ``sdlm report``) writes from the cell folders
AGGREGATE_OUTPUTS: tuple[Output, ...] = (
    Output("cells.csv", "cells.rst", "Data", "cells"),  # one row per (cell, task)
    Output("batches.csv"),  # one row per decoded batch
    Output("problems.csv"),  # one row per (cell, task, metric, problem): its score
    Output("load.csv"),  # one row per (cell, task): the 1-minute load and usable cores at its start and end
)

#: what the report rule (:func:`sdlm.report.render.write_report`) writes, always all of them
REPORT_OUTPUTS: tuple[Output, ...] = (
    *(Output(f"{t}.{f}", f"{t}.rst", "Tables", _TABLE_TITLES[t]) for t in TABLES for f in FORMATS),
    *(Output(f, f.replace(".png", ".rst"), "Figures", _FIGURE_TITLES[f]) for f in FIGURES),
    Output("provenance.md", "provenance.rst", "Provenance", "runs"),
)
REPORT_FILES = tuple(o.name for o in REPORT_OUTPUTS)
