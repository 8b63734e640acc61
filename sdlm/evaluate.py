"""One evaluation cell: ``lm_eval.simple_evaluate`` with our model and tasks -> fixed-name files.

:func:`evaluate_cell` runs the ``sdlm`` model (:class:`sdlm.adapter.SDLMLM`) on lm-eval tasks (ours in
``<repo>/tasks``, or stock lm-eval tasks) and writes, into ``output_dir``, always under these names:

* ``samples_<task>.jsonl``  lm-eval's logged samples (doc, prompt arguments, raw and filtered responses, metrics)
* ``stats_<task>.jsonl``    one decode-statistics row per generation request (``SDLMLM.request_stats``)
* ``results.json``          lm-eval's results dict (samples removed) + ``sdlm`` (model info, chat template)
                            + ``provenance`` (config and its hash, versions, git, hardware, seed)
* ``cell.json``             written LAST: a JSON list, one summary row per task (see :func:`cell_row`)

Every file is written atomically (temp file + rename) and a stale ``cell.json`` is deleted before the run,
so "``cell.json`` exists" means "this cell finished and its other files are complete".

Resuming: while the cell runs, every finished generation batch is kept in ``partial_generations.rank<r>.jsonl``
in the cell folder (:mod:`sdlm.adapter`, module doc); a rerun of a stopped cell decodes only the rest, and the
file is deleted after ``cell.json`` is written. Stats rows of kept requests say ``from_earlier_process: true``
(their timings were measured by that process); ``eval_wall_s`` is the last process's.

Errors a user can cause (unknown task, malformed model_args, bad alg/threshold, missing data directory) are
raised before the model is loaded, as exceptions with a one-line message; the CLI prints that line.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from sdlm.cells import CELL_FILE, RESULTS_FILE, partial_generations_file, samples_file, stats_file
from sdlm.decoders import Decoder
from sdlm.provenance import atomic_write_json, atomic_write_jsonl, config_hash, cpu_load, provenance
from sdlm.scoring.code import take_verdicts

log = logging.getLogger(__name__)

from sdlm.sft_data import SYSTEM_PROMPT as DEFAULT_SYSTEM_PROMPT  # noqa: E402  (the authors' setting, spec section 6)


# ------------------------------------------------------------------------------------------- tasks
def _task_manager(names: list[str]):
    """The TaskManager for task names already validated by :func:`sdlm.tasks.resolve_tasks`: lm-eval's ~15k
    stock tasks are indexed (seconds) only when a name is not one of ours (:func:`sdlm.tasks.is_ours`)."""
    from sdlm.tasks import is_ours, tasks_path

    where = str(tasks_path())
    ours = all(is_ours(n) or Path(n).is_file() for n in names)
    return _cached_task_manager(not ours, where)


@functools.lru_cache(maxsize=2)
def _cached_task_manager(include_defaults: bool, where: str):
    from sdlm import tasks as sdlm_tasks

    return sdlm_tasks.task_manager(include_defaults=include_defaults)


def _load_task_objects(tm, names: list[str]) -> tuple[list, bool]:
    """Build every task now (datasets included), so a missing data directory fails before the model loads.

    Returns the top-level Task/Group objects that ``simple_evaluate`` accepts instead of names, and whether
    any task executes model-written code (``unsafe_code``)."""
    items: list = []
    runs_code = False
    for name in names:
        loaded = tm.load([name])
        runs_code |= any(bool(getattr(getattr(t, "config", None), "unsafe_code", False))
                         for t in _leaf_tasks(loaded["tasks"]))
        if name in loaded.get("groups", {}):
            items.append(loaded["groups"][name])
        else:
            items.extend(loaded["tasks"].values())
    return items, runs_code


def _leaf_tasks(tasks) -> list:
    out = []
    for t in (tasks.values() if isinstance(tasks, dict) else [tasks]):
        out.extend(_leaf_tasks(t) if isinstance(t, dict) else [t])
    return out


# ------------------------------------------------------------------------------------------- summaries
def _metrics(task_result: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's ``"metric,filter"`` keys kept verbatim (stderr: ``"metric_stderr,filter"``); "N/A" -> None."""
    out: dict[str, Any] = {}
    for k, v in task_result.items():
        if k in ("alias", "name", "sample_len", "samples") or "," not in k:
            continue
        if isinstance(v, str):
            v = None
        elif isinstance(v, float) and math.isnan(v):
            v = None
        out[k] = v
    return out


def attach_verdicts(samples: dict[str, list[dict]], verdicts: dict[str, dict]) -> None:
    """Each code sample gets ``verdict: {status, reason}`` -- why its check passed or failed -- beside lm-eval's
    ``pass_at_1`` (sdlm.scoring.code.judge kept them by problem + reply)."""
    from sdlm.scoring.code import verdict_key

    for rows in samples.values():
        for row in rows:
            if "pass_at_1" in row and row.get("filtered_resps"):
                v = verdicts.get(verdict_key(row.get("doc") or {}, row["filtered_resps"][0]))
                if v is not None:
                    row["verdict"] = v


def cell_decoder(lm) -> Decoder:
    """The decoder a model instance evaluates with (its cell folder name is ``.name``)."""
    return lm.settings.decoder()


def cell_row(task: str, *, lm, results: dict, stats: list[dict], prov: dict, extra: dict) -> dict[str, Any]:
    """The summary row of one task: what the report reads (sdlm.cells)."""
    from sdlm.speed import decode_totals

    n = (results.get("n-samples", {}).get(task) or {}).get("effective")
    return {
        "task": task,
        "model": lm.pretrained,
        "alg": lm.settings.alg,
        "block_size": lm.settings.block_size,
        "threshold": lm.settings.threshold,
        "n": n,
        "metrics": _metrics(results.get("results", {}).get(task, {})),
        "decode": decode_totals(stats) if stats else None,
        **extra,
        "provenance": prov,
    }


# ------------------------------------------------------------------------------------------- the cell
def evaluate_cell(
    model_args: dict | str,
    tasks: list[str] | str,
    *,
    limit: int | float | None = None,
    output_dir: str | os.PathLike,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    apply_chat_template: bool = True,
    seed: int = 1234,
    gen_kwargs: dict | str | None = None,
    bootstrap_iters: int = 100000,
    sandbox: str | None = None,
    model_key: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model_args`` (the ``sdlm`` model's arguments) on ``tasks``; write the cell files.

    ``system_prompt`` goes to lm-eval as ``system_instruction`` (used with the chat template); ``seed`` seeds
    python, numpy, torch and few-shot sampling. Returns ``{"output_dir", "rows", "results"}`` on rank 0
    (``rows`` as in ``cell.json``); other data-parallel ranks return ``{"rank": r, "rows": None}``.
    ``sandbox`` chooses the isolation of model-written code (``sdlm.scoring.sandbox``; default bubblewrap);
    a code task without a usable sandbox is an error before the model loads. ``model_key`` names the model in
    ``cell.json`` (the pipeline's model key; default: the checkpoint folder's name).
    """
    from sdlm.tasks import resolve_tasks

    names = list(dict.fromkeys(resolve_tasks(tasks)))  # typos fail in milliseconds, before any heavy import
    import lm_eval

    from sdlm.adapter import SDLMLM, ModelArgs, parse_model_args

    # ---- validate everything cheap first (model_args, limit, seed, task names), then the data, then load
    args = parse_model_args(model_args)  # parsed once; recorded as given (the provenance hash reads them)
    margs = ModelArgs.from_dict(args)  # validated once, the decode settings made once
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0 or \
                (isinstance(limit, float) and limit >= 1 and not limit.is_integer()):
            raise ValueError(f"limit must be a positive integer (or a fraction in (0, 1)), got {limit!r}")
        limit = int(limit) if limit >= 1 else float(limit)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if isinstance(gen_kwargs, str):
        gen_kwargs = parse_model_args(gen_kwargs) or None
    out = Path(output_dir)
    tm = _task_manager(names)
    items, runs_code = _load_task_objects(tm, names)  # data errors (SDLM_DATA_DIR) surface here, unchanged
    isolation = None
    if runs_code:
        from sdlm.scoring import sandbox as sb

        if sandbox is not None:
            os.environ[sb.SANDBOX_ENV] = sandbox
        isolation = sb.isolation()  # no usable sandbox: a one-line error now, not after decoding
        verdicts_before = sb.verdict_counts()

    lm = SDLMLM(margs)  # resolves the settings against the checkpoint, then loads it
    if lm.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / CELL_FILE).unlink(missing_ok=True)  # a failed rerun must not leave an old "complete" marker
    lm.partial_path = out / partial_generations_file(lm.rank)  # finished batches a rerun keeps

    load_start = cpu_load()
    t0 = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=lm, model_args=args, tasks=items, task_manager=tm, limit=limit, log_samples=True,
        confirm_run_unsafe_code=True, system_instruction=system_prompt, apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=bool(apply_chat_template), gen_kwargs=gen_kwargs, bootstrap_iters=bootstrap_iters,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )
    eval_wall_s = time.perf_counter() - t0
    load = {"start": load_start, "end": cpu_load()}  # speed figures from a machine busier than its cores are marked
    gathered = lm.gather_object(lm.request_stats, dst=0)  # every rank must take part
    verdicts = lm.gather_object(take_verdicts(), dst=0) if runs_code else None
    if lm.rank != 0 or results is None:
        return {"rank": lm.rank, "rows": None}
    stats = [row for part in gathered for row in part]

    # ---- what the run was (hashable config) and what it measured
    info = lm.get_model_info()
    chat_template = lm.chat_template(apply_chat_template) if apply_chat_template else None
    config = {
        "model_args": {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in args.items()},
        "model": {k: v for k, v in info.items() if k != "decode_totals"},
        "tasks": names, "limit": limit, "system_prompt": system_prompt,
        "apply_chat_template": apply_chat_template, "gen_kwargs": gen_kwargs, "bootstrap_iters": bootstrap_iters,
    }
    prov = provenance(config, seed=seed)
    samples = results.pop("samples", None) or {}
    if verdicts:
        attach_verdicts(samples, {k: v for part in verdicts for k, v in part.items()})
    results["sdlm"] = {
        **info,
        "chat_template": chat_template,
        "chat_template_sha256": config_hash(chat_template) if chat_template else None,
        "system_instruction": system_prompt,
        "eval_wall_s": eval_wall_s,
        "resumed_requests": sum(bool(r.get("from_earlier_process")) for r in stats),  # decoded by an earlier process
        "sandbox": None if isolation is None else {
            "isolation": isolation,
            "verdicts": {k: v - verdicts_before.get(k, 0) for k, v in sb.verdict_counts().items()
                         if v - verdicts_before.get(k, 0)},
        },
    }
    results["provenance"] = prov

    leaf_tasks = list(dict.fromkeys([*samples, *results.get("n-samples", {})]))
    files: dict[str, dict[str, str]] = {}
    for task in leaf_tasks:
        rows = sorted((r for r in stats if r.get("task") == task), key=lambda r: (r.get("doc_id") or 0, r.get("idx") or 0))
        f = {"samples": samples_file(task), "stats": stats_file(task)}
        atomic_write_jsonl(out / f["samples"], samples.get(task, []))
        atomic_write_jsonl(out / f["stats"], rows)
        files[task] = f
    atomic_write_json(out / RESULTS_FILE, results)

    extra_common = {"limit": limit, "seed": seed, "system_prompt": system_prompt,
                    "apply_chat_template": apply_chat_template, "model_dtype": info["model_dtype"],
                    "config_sha256": info["config_sha256"], "eval_wall_s": eval_wall_s,
                    "model_key": model_key or Path(str(lm.pretrained)).name, "decoder": cell_decoder(lm).name,
                    "load": load}
    cells = [
        cell_row(task, lm=lm, results=results, stats=[r for r in stats if r.get("task") == task], prov=prov,
                 extra={**extra_common, "files": {**files[task], "results": RESULTS_FILE}})
        for task in leaf_tasks
    ]
    atomic_write_json(out / CELL_FILE, cells)  # last: its existence marks the cell complete
    for rank in range(lm.world_size):  # complete: nothing left to resume
        (out / partial_generations_file(rank)).unlink(missing_ok=True)
    return {"output_dir": str(out), "rows": cells, "results": results}
