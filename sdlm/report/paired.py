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

__all__ = ["mcnemar_exact", "per_problem", "add_paired", "add_load"]


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


def add_paired(frame: pd.DataFrame, models: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Columns ``paired_n``, ``wins``, ``losses``, ``mcnemar_p`` for every SDLM cell whose baseline (the
    ``baseline`` of its model in ``models``) has an AR cell on the same task; blank elsewhere."""
    models = models or {}
    frame = frame.copy()
    cols = {"paired_n": [], "wins": [], "losses": [], "mcnemar_p": []}
    ar = {(r.model, r.task): r.cell_path for r in frame.itertuples() if r.alg == "ar"}
    cache: dict[tuple, dict] = {}

    def scores(path: str, task: str, metric: str) -> dict:
        key = (path, task, metric)
        if key not in cache:
            try:
                cache[key] = per_problem(path, task, metric)
            except (OSError, ValueError):
                cache[key] = {}
        return cache[key]

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


def add_load(frame: pd.DataFrame) -> pd.DataFrame:
    """Column ``busy``: the cell was measured while the machine's 1-minute load exceeded its usable cores (by
    more than half a core) at the start or the end of the cell -- another job shared the cores, so its
    tokens/s understate the decoder. Blank for cells written before ``load`` was recorded."""
    frame = frame.copy()
    busy: list = []
    for r in frame.itertuples():
        try:
            row = next((x for x in read_cell_rows(r.cell_path) if x["task"] == r.task), {})
        except (OSError, ValueError):
            row = {}
        load = row.get("load") or {}
        flags = []
        for when in ("start", "end"):
            point = load.get(when) or {}
            avg, cores = point.get("loadavg"), point.get("usable_cores")
            if avg and cores:
                flags.append(float(avg[0]) > float(cores) + 0.5)
        busy.append(any(flags) if flags else None)
    frame["busy"] = pd.array(busy, dtype="boolean")
    return frame
