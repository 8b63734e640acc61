"""An SDLM cell against its AR baseline on the same problems: problems won and lost, and the exact McNemar test.

Two Wilson intervals overlap far more often than a paired test finds a difference, so "no measurable loss" is
said by the pair, not by the intervals: per problem (doc_id) the primary metric of the SDLM cell and of the
baseline's AR cell on the same task; ``wins`` = solved by the SDLM and not by the baseline, ``losses`` = the
reverse; the exact two-sided McNemar p-value is the binomial probability of a split at least as uneven as
``wins : losses`` among the discordant problems, with p = 1/2. No torch, no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from sdlm.cells import read_cell_rows, read_jsonl, row_file

__all__ = ["LOAD_COLUMNS", "PROBLEM_COLUMNS", "add_load", "add_paired", "cell_loads", "mcnemar_exact", "per_problem",
           "problem_scores"]


def mcnemar_exact(wins: int, losses: int) -> float:
    """Exact two-sided McNemar p-value: ``min(1, 2 * P(X <= min(wins, losses)))`` with X ~ Bin(wins + losses, 1/2);
    1.0 when there is no discordant problem."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def per_problem(cell_path: str | Path, task: str, metric: str) -> dict[Any, float]:
    """doc_id -> the cell's score on that problem (the primary metric, lm-eval key without its filter)."""
    cell_dir = Path(cell_path).parent
    row = next((r for r in read_cell_rows(cell_path) if r["task"] == task), None)
    if row is None:
        return {}
    name = metric.split(",", 1)[0]
    out: dict[Any, float] = {}
    for s in read_jsonl(row_file(cell_dir, row, "samples")):
        if name in s and s["doc_id"] not in out:
            out[s["doc_id"]] = float(s[name])
    return out


#: ``problems.csv``: one row per (cell, task, metric, problem) -- the problem's score under that metric
PROBLEM_COLUMNS = ["cell_path", "task", "metric", "doc_id", "score"]
#: ``load.csv``: one row per (cell, task) -- the 1-minute load average and usable cores when the cell started and ended
LOAD_COLUMNS = ["cell_path", "task", "start_loadavg", "start_usable_cores", "end_loadavg", "end_usable_cores"]


def problem_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """Every problem's score, gathered from the cells' samples when the frame is built (``problems.csv``): for each
    (cell, task) of the frame, under each primary metric a row of that task reports (one, for our tasks), so that
    :func:`add_paired` can pair any cell with its baseline's cell without opening a file. A cell whose files cannot
    be read adds no rows (it is then not paired)."""
    rows: list[dict[str, Any]] = []
    if frame.empty or "metric" not in frame.columns:
        return pd.DataFrame(rows, columns=PROBLEM_COLUMNS)
    metrics = {task: sorted({m for m in g["metric"] if isinstance(m, str)}) for task, g in frame.groupby("task")}
    for path, task in dict.fromkeys(zip(frame["cell_path"], frame["task"])):
        for metric in metrics.get(task, []):
            try:
                scores = per_problem(path, task, metric)
            except (OSError, ValueError):
                continue
            rows += [{"cell_path": path, "task": task, "metric": metric, "doc_id": d, "score": v}
                     for d, v in scores.items()]
    return pd.DataFrame(rows, columns=PROBLEM_COLUMNS)


def cell_loads(frame: pd.DataFrame) -> pd.DataFrame:
    """The machine's load while each (cell, task) of the frame ran, gathered from its ``cell.json`` row
    (``load.start`` / ``load.end``: ``loadavg``, ``usable_cores``) when the frame is built (``load.csv``); blank
    for cells written before the load was recorded."""
    rows: list[dict[str, Any]] = []
    for path, task in dict.fromkeys(zip(frame["cell_path"], frame["task"])) if not frame.empty else []:
        try:
            row = next((x for x in read_cell_rows(path) if x["task"] == task), {})
        except (OSError, ValueError):
            row = {}
        load = row.get("load") or {}
        out: dict[str, Any] = {"cell_path": path, "task": task}
        for when in ("start", "end"):
            point = load.get(when) or {}
            avg = point.get("loadavg")
            out[f"{when}_loadavg"] = float(avg[0]) if avg else None
            out[f"{when}_usable_cores"] = point.get("usable_cores")
        rows.append(out)
    return pd.DataFrame(rows, columns=LOAD_COLUMNS)


def add_paired(frame: pd.DataFrame, models: Mapping[str, Mapping[str, Any]] | None = None,
               problems: pd.DataFrame | None = None) -> pd.DataFrame:
    """Columns ``paired_n``, ``wins``, ``losses``, ``mcnemar_p`` for every SDLM cell whose baseline (the
    ``baseline`` of its model in ``models``) has an AR cell on the same task; blank elsewhere. ``problems``: the
    gathered scores (:func:`problem_scores`, ``problems.csv``); gathered from the cells now when not given."""
    models = models or {}
    frame = frame.copy()
    if problems is None:
        problems = problem_scores(frame)
    cols = {"paired_n": [], "wins": [], "losses": [], "mcnemar_p": []}
    ar = {(r.model, r.task): r.cell_path for r in frame.itertuples() if r.alg == "ar"}
    table: dict[tuple, dict] = {}
    for p in problems.itertuples(index=False):
        table.setdefault((p.cell_path, p.task, p.metric), {})[p.doc_id] = float(p.score)

    def scores(path: str, task: str, metric: str) -> dict:
        return table.get((path, task, metric), {})

    for r in frame.itertuples():
        base = (models.get(r.model) or {}).get("baseline")
        base_cell = ar.get((base, r.task)) if base and r.alg != "ar" else None
        metric = getattr(r, "metric", None)
        if base_cell is None or not isinstance(metric, str):
            for c in cols.values():
                c.append(None)
            continue
        mine, theirs = scores(r.cell_path, r.task, metric), scores(base_cell, r.task, metric)
        docs = sorted(set(mine) & set(theirs), key=str)
        wins = sum(1 for d in docs if mine[d] > 0.5 >= theirs[d])
        losses = sum(1 for d in docs if theirs[d] > 0.5 >= mine[d])
        cols["paired_n"].append(len(docs) or None)
        cols["wins"].append(wins if docs else None)
        cols["losses"].append(losses if docs else None)
        cols["mcnemar_p"].append(mcnemar_exact(wins, losses) if docs else None)
    for name, values in cols.items():
        frame[name] = pd.array(values, dtype="Float64" if name == "mcnemar_p" else "Int64")
    return frame


def add_load(frame: pd.DataFrame, loads: pd.DataFrame | None = None) -> pd.DataFrame:
    """Column ``busy``: the cell was measured while the machine's 1-minute load exceeded its usable cores (by
    more than half a core) at the start or the end of the cell -- another job shared the cores, so its
    tokens/s understate the decoder. Blank for cells written before ``load`` was recorded. ``loads``: the gathered
    figures (:func:`cell_loads`, ``load.csv``); gathered from the cells now when not given."""
    frame = frame.copy()
    if loads is None:
        loads = cell_loads(frame)
    by_cell = {(x.cell_path, x.task): x for x in loads.itertuples(index=False)}
    busy: list = []
    for r in frame.itertuples():
        point = by_cell.get((r.cell_path, r.task))
        flags = []
        for when in ("start", "end"):
            avg = getattr(point, f"{when}_loadavg", None)
            cores = getattr(point, f"{when}_usable_cores", None)
            if not _blank(avg) and not _blank(cores) and cores:
                flags.append(float(avg) > float(cores) + 0.5)
        busy.append(any(flags) if flags else None)
    frame["busy"] = pd.array(busy, dtype="boolean")
    return frame


def _blank(v: Any) -> bool:
    return v is None or pd.isna(v)
