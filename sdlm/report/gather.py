"""Aggregation: the cells of a run -> everything the report reads, written once as the files of
:data:`sdlm.report.outputs.AGGREGATE_OUTPUTS` (and read back from them). No torch.

The aggregate rule (and ``sdlm report``) opens the cell folders; the report rule then reads only these files, which
it declares as inputs: the frame (``cells.csv``, :func:`sdlm.report.frame.aggregate`), the decoded batches
(``batches.csv``), every problem's score (``problems.csv``, the paired comparison's input) and the machine's load
while each cell ran (``load.csv``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .frame import aggregate, batch_frame, read_frame
from .outputs import AGGREGATE_OUTPUTS
from .paired import LOAD_COLUMNS, PROBLEM_COLUMNS, cell_loads, problem_scores

__all__ = ["Gathered", "gather", "read_gathered", "write_gathered"]

CELLS, BATCHES, PROBLEMS, LOAD = (o.name for o in AGGREGATE_OUTPUTS)


@dataclass
class Gathered:
    """What aggregation gathers from the cells: one frame per file of :data:`AGGREGATE_OUTPUTS`."""

    cells: pd.DataFrame
    batches: pd.DataFrame
    problems: pd.DataFrame
    loads: pd.DataFrame


def gather(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Gathered:
    """Read every cell once (``cell.json`` files, or folders searched for them)."""
    frame = aggregate(paths)
    return Gathered(frame, batch_frame(frame), problem_scores(frame), cell_loads(frame))


def write_gathered(g: Gathered, out: str | os.PathLike | None, files: dict[str, str | os.PathLike] | None = None
                   ) -> list[Path]:
    """The four files, atomically, ``cells.csv`` last: at the paths in ``files`` (by name: the pipeline's declared
    outputs), the others into folder ``out`` under their names."""
    from sdlm.provenance import atomic_write_text

    files = files or {}
    where = {name: Path(files[name]) if name in files else Path(out) / name for name in (CELLS, BATCHES, PROBLEMS, LOAD)}
    written = []
    for name, df in ((BATCHES, g.batches), (PROBLEMS, g.problems), (LOAD, g.loads), (CELLS, g.cells)):
        written.append(atomic_write_text(where[name], df.to_csv(index=False)))
    return written


def read_gathered(cells: str | os.PathLike, batches: str | os.PathLike, problems: str | os.PathLike,
                  loads: str | os.PathLike) -> Gathered:
    """The four files back as frames (``cells.csv`` with the dtypes of :data:`sdlm.report.frame.COLUMNS`)."""
    prob = pd.read_csv(problems, dtype={"cell_path": str, "task": str, "metric": str})
    load = pd.read_csv(loads, dtype={"cell_path": str, "task": str})
    return Gathered(read_frame(cells), pd.read_csv(batches), prob[PROBLEM_COLUMNS], load[LOAD_COLUMNS])
