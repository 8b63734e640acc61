"""The cell contract: what an evaluation cell folder holds and how to read it. Stdlib only.

A cell is one (model, decoder, task list) evaluation written by ``sdlm eval`` (:mod:`sdlm.evaluate`). The
pipeline lays cells out as ``results/cells/<model>/<task>/<decoder>/``; the folder holds, always under these
names:

* ``results.json``            lm-eval's results + ``sdlm`` + ``provenance``
* ``samples_<task>.jsonl``    lm-eval's logged samples
* ``stats_<task>.jsonl``      one decode-statistics row per generation request
* ``cell.json``               written last: a JSON list, one summary row per task; its existence marks the
                              cell complete. Each row names its ``model_key`` and ``decoder`` (cells written
                              before these keys existed are read by their folder layout instead).
* ``fidelity.json``           (pipeline) the cell against its one-token-per-step reference cell
* ``partial_generations.rank<r>.jsonl``  only while the cell runs: finished generation batches a rerun keeps
* ``shards/<i>of<K>/``       (a sharded cell, ``eval.shards: K``) one job's share of the doc ids, the same files
                              with ``shard.json`` in place of ``cell.json`` (so no search for cells finds a shard);
                              ``sdlm merge-shards`` turns them into the cell's own files

Everything that writes or reads these files -- evaluate, fidelity, report -- takes the names from here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["CELL_FILE", "SHARD_FILE", "SHARDS_DIR", "RESULTS_FILE", "FIDELITY_FILE", "TRAINING_FILE", "RESUME_DIR", "partial_generations_file", "safe_name", "samples_file", "stats_file",
           "find_cells", "read_cell_rows", "read_jsonl", "row_file", "cell_identity"]

CELL_FILE = "cell.json"
RESULTS_FILE = "results.json"
SHARD_FILE = "shard.json"  # a shard folder's completion marker (rows as in cell.json, for its share of the docs)
SHARDS_DIR = "shards"  # inside a sharded cell's folder: one folder <i>of<K> per shard
FIDELITY_FILE = "fidelity.json"
TRAINING_FILE = "sdlm_training.json"  # a checkpoint's training summary (sdlm.train), beside its weights
RESUME_DIR = "resume"  # inside a checkpoint folder while training runs: the state a rerun continues from


def partial_generations_file(rank: int) -> str:
    """A running cell's finished generation batches of one process (sdlm.adapter), kept for a rerun; deleted
    once ``cell.json`` is written. Not a declared output, so Snakemake leaves it when it reruns the cell."""
    return f"partial_generations.rank{int(rank)}.jsonl"


def safe_name(task: str) -> str:
    """A task name as it appears in file names (lm-eval task names may hold characters a path should not)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", task)


def samples_file(task: str) -> str:
    return f"samples_{safe_name(task)}.jsonl"


def stats_file(task: str) -> str:
    return f"stats_{safe_name(task)}.jsonl"


def find_cells(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """``cell.json`` files: given directly, or found (recursively) under given directories. Sorted, unique."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found.update(f for f in p.rglob(CELL_FILE) if f.is_file())
        elif p.is_file():
            found.add(p)
        else:
            raise FileNotFoundError(f"no cell file or directory {str(p)!r}")
    return sorted(found)


def read_cell_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``cell.json`` (a file, or the cell folder). One-line errors for a missing or broken file."""
    path = Path(path)
    if path.is_dir():
        path = path / CELL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CELL_FILE} in {str(path.parent)!r} (the cell is not complete)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}); a cell.json is written atomically, so this file was "
                         "not written by sdlm eval") from None
    rows = data if isinstance(data, list) else [data]
    if not all(isinstance(r, dict) and "task" in r for r in rows):
        raise ValueError(f"{path}: expected a list of cell rows with a 'task' key")
    return rows


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a JSONL file (samples, stats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file {str(path)!r}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def row_file(cell_dir: str | os.PathLike, row: dict[str, Any], kind: str) -> Path:
    """The ``samples`` or ``stats`` file of one cell row (the row names it; older rows use the default name)."""
    default = {"samples": samples_file, "stats": stats_file}[kind](row["task"])
    return Path(cell_dir) / ((row.get("files") or {}).get(kind) or default)


def cell_identity(path: str | os.PathLike, row: dict[str, Any]) -> tuple[str, str | None]:
    """``(model key, decoder name)`` of a cell row: as recorded in the row; for cells written before rows
    carried them, from the layout ``<model>/<task>/<decoder>/cell.json`` (else the checkpoint's folder name and
    no decoder: the caller derives it from alg, D and tau)."""
    if row.get("model_key") and row.get("decoder"):
        return str(row["model_key"]), str(row["decoder"])
    parts = Path(path).resolve().parts
    if len(parts) >= 4 and parts[-3] == row["task"]:
        return parts[-4], parts[-2]
    return Path(str(row.get("model", "?"))).name, None
