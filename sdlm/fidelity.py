"""Fidelity of a decoder: how often its outputs equal those of one-token-per-step decoding. No torch.

The reference of an SDLM evaluation cell is the same model, the same D and the same requests decoded with
exactly one token per step (confidence decoding with a threshold tau > 1; decoder folder ``step1_D<D>`` in
the pipeline). Self-speculative decoding must equal it exactly (spec section 4); confidence decoding at
tau <= 1 may change outputs, and this module measures by how much. Per task, from the two cells'
``samples_<task>.jsonl`` (lm-eval's logged samples, written by :mod:`sdlm.evaluate`), docs matched by
``doc_id``:

* ``n``               docs compared (the two files must hold the same doc ids, prompts and docs);
* ``identical_text``  share of docs whose generated text (``resps``) is identical;
* ``same_answer``     share of docs whose extracted final answer agrees (no answer on both sides, e.g. no
                      ``\boxed{}`` in either text, agrees: both score 0).

The answer is read from lm-eval's filtered response (``filtered_resps``). Our tasks declare no lm-eval
filters (their ``process_results`` extracts and scores), so for them ``filtered_resps`` is the raw text and
the extraction their metric applies is done here with the same :mod:`sdlm.scoring` functions
(each task's ``answer`` in :data:`sdlm.tasks.TASKS`): GSM8K the value in the last ``\\boxed{}`` (strict, as ``exact_match``), MATH the
content of the last ``\\boxed{}``, HumanEval/MBPP the extracted program, GPQA the chosen letter, IFEval the
whole response (its checkers read the reply itself). An lm-eval stock task's answer is its ``filtered_resps``
as lm-eval's filters left them; a name that looks like ours but is not in the table is an error.

:func:`write_fidelity` writes ``fidelity.json`` beside a cell's ``cell.json`` (atomically, with provenance);
the report (:mod:`sdlm.report`) reads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sdlm.cells import CELL_FILE, FIDELITY_FILE, read_cell_rows, read_jsonl, row_file
from sdlm.tasks import Answer, task_info

__all__ = ["FIDELITY_FILE", "read_samples", "answer_of", "compare_samples", "cell_fidelity",
           "write_fidelity", "read_fidelity"]


# ================================================================================================ answers
_FILTERED = "lm-eval filtered_resps"


def _first_text(resps: Any) -> Any:
    """The generated text of a doc's first request: ``resps`` is ``[[text, ...], ...]`` per request (lm-eval
    appends a data-parallel padding copy's answer to the padded doc's list), ``filtered_resps`` ``[text, ...]``."""
    if isinstance(resps, list) and resps:
        first = resps[0]
        return first[0] if isinstance(first, list) and first else first
    return resps


def _answer_rule(task: str | None) -> Answer | None:
    """The task's answer (:attr:`sdlm.tasks.Task.answer`); None for lm-eval's stock tasks (and no task given):
    their filtered response is the answer."""
    return task_info(task).answer if task else None


def answer_of(task: str | None, sample: Mapping) -> Any:
    """The final answer of one logged sample: the task's answer (:mod:`sdlm.tasks`) read from its filtered
    response, or the filtered response itself for lm-eval's stock tasks."""
    filtered = sample.get("filtered_resps")
    rule = _answer_rule(task)
    if rule is None:
        return json.dumps(filtered, sort_keys=True, default=str)
    text = _first_text(filtered)
    return rule.extract(text if isinstance(text, str) else json.dumps(text, default=str), sample.get("doc") or {})


# ================================================================================================ samples
def read_samples(samples: str | os.PathLike | Iterable[Mapping]) -> list[dict]:
    """Logged samples from a ``samples_<task>.jsonl`` file (or already-loaded records)."""
    if isinstance(samples, (str, os.PathLike)):
        return read_jsonl(samples)
    return [dict(s) for s in samples]


def _by_doc(records: list[dict], task: str | None, name: str) -> dict[Any, dict]:
    """doc_id -> {"text", "answer", "doc_hash", "prompt_hash"}; one entry per doc (several lm-eval filters give
    one record each; the answer is then the tuple over filters; a repeated (doc, filter) keeps the first)."""
    docs: dict[Any, dict] = {}
    seen: set = set()
    for rec in records:
        if "doc_id" not in rec:
            raise ValueError(f"{name}: a sample without 'doc_id' (not an lm-eval samples file)")
        key = (rec["doc_id"], rec.get("filter"))
        if key in seen:
            continue
        seen.add(key)
        entry = docs.setdefault(rec["doc_id"], {
            "text": json.dumps([_first_text([r]) for r in rec.get("resps") or []], default=str),
            "answers": {}, "doc_hash": rec.get("doc_hash"), "prompt_hash": rec.get("prompt_hash"),
        })
        entry["answers"][str(rec.get("filter"))] = answer_of(task, rec)
    for entry in docs.values():
        answers = entry.pop("answers")
        entry["answer"] = json.dumps([answers[k] for k in sorted(answers)], default=str)
    return docs


def _ids(ids: Iterable[Any], limit: int = 8) -> str:
    ids = sorted(ids, key=str)
    return ", ".join(map(str, ids[:limit])) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def compare_samples(samples: str | os.PathLike | Iterable[Mapping], reference: str | os.PathLike | Iterable[Mapping],
                    *, task: str | None = None) -> dict[str, Any]:
    """Fidelity of one task's samples to the reference's samples (same docs, matched by ``doc_id``).

    Returns ``{"n", "identical_text", "same_answer", "n_identical_text", "n_same_answer", "answer",
    "differing_text", "differing_answer"}`` (shares in [0, 1]; the last two list doc ids). ``ValueError`` (one
    line) when the doc sets differ, a doc or its prompt differs, or there are no docs."""
    name_a = str(samples) if isinstance(samples, (str, os.PathLike)) else "samples"
    name_b = str(reference) if isinstance(reference, (str, os.PathLike)) else "reference"
    a, b = _by_doc(read_samples(samples), task, name_a), _by_doc(read_samples(reference), task, name_b)
    if set(a) != set(b):
        raise ValueError(f"fidelity: the doc ids of {name_a} ({len(a)} docs) and {name_b} ({len(b)} docs) differ: "
                         f"only in the first [{_ids(set(a) - set(b))}], only in the reference [{_ids(set(b) - set(a))}]")
    if not a:
        raise ValueError(f"fidelity: no samples in {name_a}")
    for key, what in (("doc_hash", "doc"), ("prompt_hash", "prompt")):
        bad = [d for d in a if a[d][key] and b[d][key] and a[d][key] != b[d][key]]
        if bad:
            raise ValueError(f"fidelity: {name_a} and {name_b} differ in the {what} of doc(s) {_ids(bad)}: the "
                             "reference must decode the same requests")
    diff_text = sorted((d for d in a if a[d]["text"] != b[d]["text"]), key=str)
    diff_answer = sorted((d for d in a if a[d]["answer"] != b[d]["answer"]), key=str)
    n = len(a)
    return {
        "n": n,
        "identical_text": (n - len(diff_text)) / n,
        "same_answer": (n - len(diff_answer)) / n,
        "n_identical_text": n - len(diff_text),
        "n_same_answer": n - len(diff_answer),
        "answer": rule.what if (rule := _answer_rule(task)) is not None else _FILTERED,
        "differing_text": diff_text,
        "differing_answer": diff_answer,
    }


# ================================================================================================ cells
def _summary(row: Mapping) -> dict[str, Any]:
    prov = row.get("provenance") or {}
    ma = (prov.get("config") or {}).get("model_args") or {}
    return {"model": row.get("model"), "alg": row.get("alg"), "block_size": row.get("block_size"),
            "threshold": row.get("threshold"), "max_new_tokens": ma.get("max_new_tokens"), "limit": row.get("limit"),
            "config_sha256": row.get("config_sha256"), "config_hash": prov.get("config_hash"),
            "time_utc": prov.get("time_utc")}


def cell_fidelity(cell_dir: str | os.PathLike, reference_dir: str | os.PathLike) -> dict[str, Any]:
    """Fidelity of every task of the cell in ``cell_dir`` to the reference cell in ``reference_dir``.

    Both must be complete cells (``cell.json``) of the same checkpoint with the same ``max_new_tokens`` and
    limit, the reference holding every task of the cell. Returns ``{"cell", "reference", "tasks": {task:
    compare_samples(...) + {"cell": summary, "reference": summary}}}``."""
    cell_dir, reference_dir = Path(cell_dir), Path(reference_dir)
    rows, ref_rows = read_cell_rows(cell_dir), read_cell_rows(reference_dir)
    refs = {r["task"]: r for r in ref_rows}
    tasks: dict[str, Any] = {}
    for row in rows:
        task = row["task"]
        if task not in refs:
            raise ValueError(f"fidelity: the reference cell {str(reference_dir)!r} has no task {task!r} "
                             f"(it has {', '.join(refs) or 'none'})")
        mine, ref = _summary(row), _summary(refs[task])
        for key in ("config_sha256", "max_new_tokens", "limit"):
            if mine[key] != ref[key]:
                raise ValueError(f"fidelity: {task}: {key} differs between {str(cell_dir)!r} ({mine[key]}) and the "
                                 f"reference {str(reference_dir)!r} ({ref[key]}); compare cells of one checkpoint "
                                 "and one request set")
        res = compare_samples(row_file(cell_dir, row, "samples"), row_file(reference_dir, refs[task], "samples"),
                              task=task)
        tasks[task] = {**res, "cell": mine, "reference": ref}
    return {"cell": str(cell_dir), "reference": str(reference_dir), "tasks": tasks}


def write_fidelity(cell_dir: str | os.PathLike, reference_dir: str | os.PathLike,
                   out: str | os.PathLike | None = None) -> dict[str, Any]:
    """:func:`cell_fidelity` -> ``out`` (default ``<cell_dir>/fidelity.json``), atomically, with provenance."""
    from sdlm.provenance import atomic_write_json, provenance

    result = cell_fidelity(cell_dir, reference_dir)
    config = {"cell": result["cell"], "reference": result["reference"],
              "cells": {t: {"cell": v["cell"]["config_hash"], "reference": v["reference"]["config_hash"]}
                        for t, v in result["tasks"].items()}}
    result["provenance"] = provenance(config)
    atomic_write_json(Path(out) if out is not None else Path(cell_dir) / FIDELITY_FILE, result)
    return result


def read_fidelity(cell_dir: str | os.PathLike, task: str, row: Mapping[str, Any]) -> tuple[dict[str, Any], str | None] | None:
    """The fidelity result of one task of a cell, from ``fidelity.json`` beside it, and its reference's folder
    name; None when there is none, or when it is stale: written for another run of the cell (its time and config
    hash differ from ``row``'s provenance) or of its reference cell (warned)."""
    import warnings

    path = Path(cell_dir) / FIDELITY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        res = (data.get("tasks") or {}).get(task)
    except (json.JSONDecodeError, AttributeError):
        warnings.warn(f"{path}: unreadable fidelity file, ignored", stacklevel=2)
        return None
    if not res:
        return None
    prov = row.get("provenance") or {}
    stale = (res.get("cell") or {}).get("time_utc") not in (None, prov.get("time_utc")) or \
        (res.get("cell") or {}).get("config_hash") not in (None, prov.get("config_hash"))
    ref_dir = Path(str(data.get("reference") or ""))
    if not stale and data.get("reference") and (ref_dir / CELL_FILE).is_file():
        try:
            ref_rows = read_cell_rows(ref_dir)
            ref_prov = next(((r.get("provenance") or {}) for r in ref_rows if r.get("task") == task), {})
            stale = (res.get("reference") or {}).get("time_utc") not in (None, ref_prov.get("time_utc"))
        except ValueError:
            stale = True
    if stale:
        warnings.warn(f"{path}: written for another run of the cell or its reference; ignored (rebuild it)",
                      stacklevel=3)
        return None
    return res, ref_dir.name or None
