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
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from sdlm.cells import (CELL_FILE, RESULTS_FILE, SHARD_FILE, partial_generations_file, read_cell_rows, read_jsonl,
                        samples_file, stats_file)
from sdlm.decoders import Decoder
from sdlm.provenance import atomic_write_json, atomic_write_jsonl, config_hash, cpu_load, provenance
from sdlm.scoring.code import take_verdicts
from sdlm.shards import Shard, canonical_samples, merge_loads, trim_padding

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


def _load_task_objects(tm, names: list[str]) -> tuple[list, bool, dict[str, Any]]:
    """Build every task now (datasets included), so a missing data directory fails before the model loads.

    Returns the top-level Task/Group objects that ``simple_evaluate`` accepts instead of names, whether any task
    executes model-written code (``unsafe_code``), and every leaf task by name."""
    items: list = []
    runs_code = False
    leaves: dict[str, Any] = {}
    for name in names:
        loaded = tm.load([name])
        for t in _leaf_tasks(loaded["tasks"]):
            runs_code |= bool(getattr(getattr(t, "config", None), "unsafe_code", False))
            leaves[t.config.task] = t
        if name in loaded.get("groups", {}):
            items.append(loaded["groups"][name])
        else:
            items.extend(loaded["tasks"].values())
    return items, runs_code, leaves


def _leaf_tasks(tasks) -> list:
    out = []
    for t in (tasks.values() if isinstance(tasks, dict) else [tasks]):
        out.extend(_leaf_tasks(t) if isinstance(t, dict) else [t])
    return out


def _shard_doc_ids(items: list, limit: int | float | None, shard: Shard) -> dict[str, list[int]]:
    """Per task, the doc ids of ``shard`` among the docs ``limit`` leaves. A group, or a task that draws its
    few-shot examples at random (its sampler's state advances doc by doc, so a shard would get other examples
    than the unsharded cell), is refused in one line."""
    from lm_eval.api.samplers import FirstNSampler
    from lm_eval.evaluator_utils import get_sample_size

    out: dict[str, list[int]] = {}
    for t in items:
        if isinstance(t, dict) or not hasattr(t, "eval_docs"):
            raise ValueError(f"shards split the docs of tasks, not of groups: {getattr(t, 'group_name', t)!r}; "
                             "name its tasks instead")
        name = t.config.task
        shots = t.config.num_fewshot or 0
        if shots and not isinstance(getattr(t, "sampler", None), FirstNSampler):
            raise ValueError(f"task {name} samples its {shots} few-shot examples at random (sampler "
                             f"{type(getattr(t, 'sampler', None)).__name__}), so a shard would get other examples than "
                             "the unsharded cell; evaluate it with shards: 1")
        n = len(t.eval_docs)
        size = get_sample_size(t, limit)
        out[name] = shard.doc_ids(n if size is None else min(n, size))
    return out


def metric_values(samples: list[dict[str, Any]]) -> dict[tuple[str, str], list]:
    """Per (metric, filter) the per-doc values of logged samples (lm-eval writes each into its sample), in the
    samples' order: what lm-eval aggregates."""
    out: dict[tuple[str, str], list] = {}
    for s in samples:
        for metric in s.get("metrics") or []:
            out.setdefault((metric, s.get("filter")), []).append(s[metric])
    return out


def task_metrics(task, samples: list[dict[str, Any]], bootstrap_iters: int | None) -> dict[str, Any]:
    """A task's ``"metric,filter"`` / ``"metric_stderr,filter"`` values from its logged samples, computed as lm-eval
    computes them for one process (its task's aggregation, mean when it names none; its stderr function): used
    where the per-doc values arrive in another order (data parallel) or in pieces (shards)."""
    from lm_eval.api.metrics import mean, stderr_for_metric

    aggregations = task.aggregation() or {}
    out: dict[str, Any] = {}
    for (metric, filt), items in metric_values(samples).items():
        agg = aggregations.get(metric, mean)
        out[f"{metric},{filt}"] = agg(items)
        stderr = None
        if isinstance(bootstrap_iters, int) and bootstrap_iters > 0:
            fn = stderr_for_metric(metric=agg, bootstrap_iters=min(bootstrap_iters, 100)
                                   if metric in ("bleu", "chrf", "chrf++", "ter") else bootstrap_iters)
            stderr = fn(items) if (fn and len(items) > 1) else None
        out[f"{metric}_stderr,{filt}"] = "N/A" if stderr is None else stderr
    return out


def _with_metrics(task_result: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's result entry of a task with its metric values replaced (other keys, e.g. alias, kept first)."""
    return {**{k: v for k, v in task_result.items() if "," not in k}, **metrics}


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
    shard: Shard | str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model_args`` (the ``sdlm`` model's arguments) on ``tasks``; write the cell files.

    ``system_prompt`` goes to lm-eval as ``system_instruction`` (used with the chat template); ``seed`` seeds
    python, numpy, torch and few-shot sampling. Returns ``{"output_dir", "rows", "results"}`` on rank 0
    (``rows`` as in ``cell.json``); other data-parallel ranks return ``{"rank": r, "rows": None}``.
    ``sandbox`` chooses the isolation of model-written code (``sdlm.scoring.sandbox``; default bubblewrap);
    a code task without a usable sandbox is an error before the model loads. ``model_key`` names the model in
    ``cell.json`` (the pipeline's model key; default: the checkpoint folder's name). ``shard`` (``"i/K"``):
    evaluate only doc ids ``i, i+K, ...`` of each task (:mod:`sdlm.shards`) and write ``shard.json`` in place of
    ``cell.json``; :func:`merge_shards` makes the cell of the K shard folders.

    Under data parallelism the samples are written in one order (filter, doc id), without the answers of
    lm-eval's padding copies, and each task's metrics are recomputed from them in that order
    (:func:`task_metrics`), so the files equal a single process's.
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
    items, runs_code, leaves = _load_task_objects(tm, names)  # data errors (SDLM_DATA_DIR) surface here, unchanged
    marker, doc_ids = CELL_FILE, None
    if shard is not None:
        shard = Shard.parse(shard) if isinstance(shard, str) else shard
        marker, doc_ids = SHARD_FILE, _shard_doc_ids(items, limit, shard)
        items = [t for t in items if doc_ids[t.config.task]]  # an empty list would mean "every doc" to lm-eval
        if not items:
            return _write_empty_shard(out, shard, doc_ids, limit)
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
        (out / marker).unlink(missing_ok=True)  # a failed rerun must not leave an old "complete" marker
    lm.partial_path = out / partial_generations_file(lm.rank)  # finished batches a rerun keeps

    load_start = cpu_load()
    t0 = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=lm, model_args=args, tasks=items, task_manager=tm, log_samples=True,
        limit=limit if doc_ids is None else None, samples={k: v for k, v in (doc_ids or {}).items() if v} or None,
        confirm_run_unsafe_code=True, system_instruction=system_prompt, apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=bool(apply_chat_template), gen_kwargs=gen_kwargs, bootstrap_iters=bootstrap_iters,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )
    eval_wall_s = time.perf_counter() - t0
    load = {"start": load_start, "end": cpu_load()}  # speed figures from a machine busier than its cores are marked
    gathered = lm.gather_object(lm.request_stats, dst=0)  # every rank must take part
    verdicts = lm.gather_object(take_verdicts(), dst=0) if runs_code else None
    counted = lm.gather_object({k: v - verdicts_before.get(k, 0) for k, v in sb.verdict_counts().items()}
                               if runs_code else {}, dst=0)
    if lm.rank != 0 or results is None:
        return {"rank": lm.rank, "rows": None}
    stats = [row for part in gathered for row in part]
    if doc_ids is not None:  # lm-eval numbers a shard's docs 0..n-1 in its requests; the samples log the true ids
        for row in stats:
            row["doc_id"] = doc_ids[row["task"]][row["doc_id"]]

    # ---- what the run was (hashable config) and what it measured
    from sdlm.speed import decode_totals

    info = lm.get_model_info()
    info["decode_totals"] = {**info["decode_totals"], **decode_totals(stats)}  # every process's requests
    if "decode_totals" in results.get("config", {}):  # lm-eval recorded this process's only
        results["config"]["decode_totals"] = info["decode_totals"]
    sandbox_counts: dict[str, int] = {}
    for part in counted:
        for k, v in part.items():
            sandbox_counts[k] = sandbox_counts.get(k, 0) + v
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
            "verdicts": {k: v for k, v in sandbox_counts.items() if v},  # every process's checks
        },
    }
    results["provenance"] = prov

    if shard is not None:
        results["sdlm"]["shard"] = {"index": shard.index, "count": shard.count, "limit": limit, "doc_ids": doc_ids}

    leaf_tasks = list(dict.fromkeys([*samples, *results.get("n-samples", {})]))
    files: dict[str, dict[str, str]] = {}
    for task in leaf_tasks:
        rows = sorted((r for r in stats if r.get("task") == task), key=lambda r: (r.get("doc_id") or 0, r.get("idx") or 0))
        f = {"samples": samples_file(task), "stats": stats_file(task)}
        task_samples = samples.get(task, [])
        if lm.world_size > 1:  # ranks log their docs in turn, the padded ones with an extra answer
            trim_padding(task_samples, int((leaves[task].config.repeats if task in leaves else 1) or 1))
            task_samples = canonical_samples(task_samples)
        atomic_write_jsonl(out / f["samples"], task_samples)
        atomic_write_jsonl(out / f["stats"], rows)
        if lm.world_size > 1 and task in leaves and task in results.get("results", {}):
            # lm-eval aggregated the per-doc values rank by rank; computed in doc order they equal one process's
            results["results"][task] = _with_metrics(results["results"][task], task_metrics(
                leaves[task], read_jsonl(out / f["samples"]), bootstrap_iters))
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
    atomic_write_json(out / marker, cells)  # last: its existence marks the cell (or shard) complete
    for rank in range(lm.world_size):  # complete: nothing left to resume
        (out / partial_generations_file(rank)).unlink(missing_ok=True)
    return {"output_dir": str(out), "rows": cells, "results": results}


# ------------------------------------------------------------------------------------------- shards
def _write_empty_shard(out: Path, shard: Shard, doc_ids: dict[str, list[int]], limit: int | float | None) -> dict[str, Any]:
    """A shard with no docs (K above a task's doc count): complete at once, no model loaded."""
    out.mkdir(parents=True, exist_ok=True)
    results = {"sdlm": {"shard": {"index": shard.index, "count": shard.count, "limit": limit, "doc_ids": doc_ids}}}
    atomic_write_json(out / RESULTS_FILE, results)
    atomic_write_json(out / SHARD_FILE, [])
    return {"output_dir": str(out), "rows": [], "results": results}


def _read_shard(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not (folder / SHARD_FILE).is_file():
        raise FileNotFoundError(f"shard {str(folder)!r} is not complete (no {SHARD_FILE})")
    results = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
    if not isinstance((results.get("sdlm") or {}).get("shard"), dict):
        raise ValueError(f"{folder / RESULTS_FILE} was not written by a sharded `sdlm eval` (no sdlm.shard)")
    return results, read_cell_rows(folder / SHARD_FILE)


def merge_shards(shard_dirs: list[str | os.PathLike], output_dir: str | os.PathLike) -> dict[str, Any]:
    """The K shard folders (or their ``shard.json``) of one cell -> the cell's files (``samples``, ``stats``, ``results.json``, ``cell.json``
    last), as an unsharded ``sdlm eval`` writes them: samples in one order (byte-identical), metrics recomputed
    from them with the task's own aggregation (:func:`task_metrics`), ``n`` and the decode counts summed. What
    differs is measured (:mod:`sdlm.shards`). The shard folders are left as they are."""
    from sdlm.speed import decode_totals

    parts = []
    for folder in map(Path, shard_dirs):
        folder = folder.parent if folder.name == SHARD_FILE else folder  # a shard's folder or its shard.json
        results, rows = _read_shard(folder)
        parts.append((folder, results, rows, results["sdlm"]["shard"]))
    counts = {p[3]["count"] for p in parts}
    if len(counts) != 1 or sorted(p[3]["index"] for p in parts) != list(range(next(iter(counts)))):
        got = ", ".join(f"{p[3]['index']}/{p[3]['count']}" for p in parts)
        raise ValueError(f"the shards to merge must be 0/K .. K-1/K of one K, each once; got {got}")
    parts.sort(key=lambda p: p[3]["index"])
    full = [p for p in parts if p[2]]
    _, template, _, info = full[0]
    tasks = list(dict.fromkeys(r["task"] for p in full for r in p[2]))
    tm = _task_manager(tasks)
    _, _, leaves = _load_task_objects(tm, tasks)
    bootstrap_iters = ((template.get("provenance") or {}).get("config") or {}).get("bootstrap_iters", 100000)

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CELL_FILE).unlink(missing_ok=True)
    merged = json.loads(json.dumps(template))  # lm-eval's configs, versions, chat template: equal in every shard
    shard_stats = {p[3]["index"]: {r["task"]: read_jsonl(p[0] / stats_file(r["task"])) for r in p[2]} for p in full}
    offset, base = {}, 0  # every shard numbers its batches from 0: renumbered apart (a batch is one clock)
    for index, by_task in shard_stats.items():
        offset[index] = base
        base += 1 + max((int(r.get("batch") or 0) for rows in by_task.values() for r in rows), default=-1)
    all_stats: list[dict[str, Any]] = []
    cells = []
    for task in tasks:
        have = [p for p in full if task in shard_stats[p[3]["index"]]]
        samples = canonical_samples(s for p in have for s in read_jsonl(p[0] / samples_file(task)))
        stats = [{**r, "shard": p[3]["index"], "batch": offset[p[3]["index"]] + int(r.get("batch") or 0)}
                 for p in have for r in shard_stats[p[3]["index"]][task]]
        stats.sort(key=lambda r: (r.get("doc_id") or 0, r.get("idx") or 0))
        all_stats += stats
        f = {"samples": samples_file(task), "stats": stats_file(task)}
        atomic_write_jsonl(out / f["samples"], samples)
        atomic_write_jsonl(out / f["stats"], stats)
        merged["results"][task] = _with_metrics(template["results"][task], task_metrics(
            leaves[task], read_jsonl(out / f["samples"]), bootstrap_iters))
        counts_ = [p[1]["n-samples"][task] for p in have]
        merged["n-samples"][task] = {**counts_[0], "effective": sum(c["effective"] for c in counts_)}
        if "sample_len" in merged["results"][task]:  # lm-eval's count of the docs its metrics were computed on
            merged["results"][task]["sample_len"] = sum(p[1]["results"][task]["sample_len"] for p in have)
        rows = [next(r for r in p[2] if r["task"] == task) for p in have]
        cells.append({**rows[0], "n": merged["n-samples"][task]["effective"],
                      "metrics": _metrics(merged["results"][task]), "decode": decode_totals(stats) if stats else None,
                      "eval_wall_s": sum(r.get("eval_wall_s") or 0.0 for r in rows),
                      "load": merge_loads([r.get("load") for r in rows])})

    sd = [p[1]["sdlm"] for p in full]
    merged["config"]["limit"] = info.get("limit")
    totals = decode_totals(all_stats)
    for key in ("config", "sdlm"):
        if "decode_totals" in merged[key]:
            cached = sum((p[1][key].get("decode_totals") or {}).get("requests_from_cache") or 0 for p in full)
            merged[key]["decode_totals"] = {**merged[key]["decode_totals"], **totals, "requests_from_cache": cached}
    merged["sdlm"]["eval_wall_s"] = sum(x.get("eval_wall_s") or 0.0 for x in sd)
    merged["sdlm"]["resumed_requests"] = sum(x.get("resumed_requests") or 0 for x in sd)
    if merged["sdlm"].get("sandbox"):
        verdicts: dict[str, int] = {}
        for x in sd:
            for k, v in ((x.get("sandbox") or {}).get("verdicts") or {}).items():
                verdicts[k] = verdicts.get(k, 0) + v
        merged["sdlm"]["sandbox"]["verdicts"] = verdicts
    del merged["sdlm"]["shard"]
    merged["sdlm"]["shards"] = [
        {**{k: v for k, v in p[3].items() if k != "limit"}, "eval_wall_s": p[1]["sdlm"].get("eval_wall_s"),
         "provenance": {k: v for k, v in (p[1].get("provenance") or {}).items() if k != "config"}} for p in full]
    atomic_write_json(out / RESULTS_FILE, merged)
    atomic_write_json(out / CELL_FILE, cells)  # last: its existence marks the cell complete
    return {"output_dir": str(out), "rows": cells, "results": merged}
