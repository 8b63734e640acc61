"""The report's data: cells -> one pandas frame (one row per cell and task), decoded batches, published numbers,
model metadata, speed-ups and the TPF curves of retrofits. No torch."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from sdlm.cells import TRAINING_FILE, cell_identity, find_cells, read_cell_rows, read_jsonl, row_file
from sdlm.decoders import ALGS, CONFIDENCE_ALGS, Decoder
from sdlm.speed import batch_walls
from sdlm.tasks import table1_columns, task_info

#: the report's benchmark columns in Table 1's order (spec section 7; the task table's labels by column)
BENCH_ORDER = table1_columns()

ALG_ORDER = {alg: i for i, alg in enumerate(ALGS)}  # table and figure order: ar, confidence, self-speculative

#: z of a two-sided 95% normal interval (scipy.stats.norm.ppf(0.975))
Z95 = 1.959964

#: the frame's columns that code reads by name, and how :func:`read_frame` restores their dtypes from CSV
#: ("str": object with None for missing). The rest (provenance, ``version_*``, ``metric:*``) varies by run.
COLUMNS: dict[str, str] = {
    "model": "str", "task": "str", "benchmark": "str", "decoder": "str", "alg": "str", "block_size": "Int64",
    "tau": "float", "accuracy": "float", "acc_lo": "float", "acc_hi": "float", "identical_text_pct": "float",
    "same_answer_pct": "float", "tpf": "float", "tokens_per_s": "float", "decode_tokens_per_s": "float",
    "prefill_s": "float", "decode_s": "float", "hardware": "str", "cell_path": "str", "stats_file": "str",
    "checkpoint": "str", "fidelity_reference": "str", "fidelity_n": "any",
}
#: the columns of a frame with no cells (what every table and figure needs to find)
EMPTY_COLUMNS = ["model", "task", "benchmark", "decoder", "alg", "block_size", "tau", "accuracy", "tpf",
                 "tokens_per_s", "cell_path"]
#: columns that older cells.csv files lack (added blank by :func:`with_optional`)
OPTIONAL_COLUMNS = ("acc_lo", "acc_hi", "fidelity_n", "identical_text_pct", "same_answer_pct", "fidelity_reference")
PAPER_NUMBERS = "config/paper_numbers.csv"  # curated published numbers (spec section 7), tracked
OLD_PAPER_NUMBERS = "results/paper/paper_numbers.csv"  # where they were before they left the output tree


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def wilson_interval(p: float | None, n: int | None, z: float = Z95) -> tuple[float, float] | tuple[None, None]:
    """Wilson score interval of a proportion ``p`` (= k/n) over ``n`` trials, as fractions in [0, 1].

    Used for every accuracy (a mean of 0/1 scores: exact match, math-verify, pass@1 with one sample per
    problem). ``(None, None)`` when ``p`` or ``n`` is missing, ``n < 1`` or ``p`` is outside [0, 1]."""
    p, n = _num(p), _num(n)
    if p is None or n is None or n < 1 or not -1e-12 <= p <= 1 + 1e-12:
        return None, None
    p = min(max(p, 0.0), 1.0)
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _fidelity(cell_dir: Path, task: str, rec: Mapping[str, Any]) -> dict[str, Any]:
    """The fidelity columns of one (cell, task) from ``fidelity.json`` beside the cell (blank when absent, or
    stale: :func:`sdlm.fidelity.read_fidelity` decides)."""
    from sdlm.fidelity import read_fidelity

    found = read_fidelity(cell_dir, task, rec)
    if found is None:
        return {"fidelity_n": None, "identical_text_pct": None, "same_answer_pct": None, "fidelity_reference": None}
    res, reference = found
    share = lambda k: 100.0 * float(res[k]) if _num(res.get(k)) is not None else None  # noqa: E731
    return {"fidelity_n": res.get("n"), "identical_text_pct": share("identical_text"),
            "same_answer_pct": share("same_answer"), "fidelity_reference": reference}


def _primary(task: str, metrics: Mapping[str, Any]) -> str | None:
    """The metric a row's accuracy reports: the task's (sdlm.tasks), else (stock tasks, or a cell without it)
    the first numeric metric lm-eval reported."""
    m = task_info(task).metric
    if m in metrics:
        return m
    names = [k for k in metrics if "_stderr" not in k and _num(metrics[k]) is not None]
    return names[0] if names else None


def _hardware_label(hw: Mapping[str, Any] | None) -> str | None:
    if not hw:
        return None
    gpus = hw.get("gpus")
    if gpus:
        names = sorted(set(gpus))
        return f"{len(gpus)}x {names[0]}" if len(names) == 1 else ", ".join(gpus)
    return f"CPU {hw.get('machine') or ''} x{hw.get('cpu_count')} (torch threads {hw.get('torch_threads')})".strip()


def _decoder_name(alg: str, block_size: Any, tau: Any) -> str:
    """The decoder of a cell that recorded none (written outside the pipeline's layout, before rows named it)."""
    try:
        return Decoder.of(alg, None if alg == "ar" else int(block_size), tau).name
    except (TypeError, ValueError):
        return str(alg)


def _rows_of(path: Path) -> list[dict[str, Any]]:
    out = []
    for rec in read_cell_rows(path):
        task = rec["task"]
        alg = rec.get("alg")
        metrics = rec.get("metrics") or {}
        decode = rec.get("decode") or {}
        prov = rec.get("provenance") or {}
        git = prov.get("git") or {}
        versions = prov.get("versions") or {}
        hw = prov.get("hardware") or {}
        model_args = ((prov.get("config") or {}).get("model_args") or {})
        model, decoder = cell_identity(path, rec)  # recorded in the row; older cells: their folder layout
        D = rec.get("block_size") if alg != "ar" else None
        tau = _num(rec.get("threshold")) if alg in CONFIDENCE_ALGS else None
        pm = _primary(task, metrics)
        acc = _num(metrics.get(pm)) if pm else None
        se = _num(metrics.get(pm.replace(",", "_stderr,", 1))) if pm else None
        lo, hi = wilson_interval(acc, rec.get("n"))
        new_tokens, nfe = decode.get("new_tokens"), decode.get("nfe")
        decode_s, prefill_s = _num(decode.get("decode_s")), _num(decode.get("prefill_s"))
        row = {
            "model": model,
            "task": task,
            "benchmark": task_info(task).label,
            "decoder": decoder or _decoder_name(alg, D, tau),
            "alg": alg,
            "block_size": int(D) if D is not None else None,
            "tau": tau,
            "n": rec.get("n"),
            "limit": rec.get("limit"),
            "metric": pm,
            "accuracy": 100.0 * acc if acc is not None else None,
            "accuracy_stderr": 100.0 * se if se is not None else None,
            "acc_lo": 100.0 * lo if lo is not None else None,
            "acc_hi": 100.0 * hi if hi is not None else None,
            **_fidelity(path.parent, task, rec),
            "tpf": _num(decode.get("tpf")),
            "new_tokens": new_tokens,
            "nfe": nfe,
            "tokens_per_s": _num(decode.get("tokens_per_s")),
            "decode_tokens_per_s": (new_tokens / decode_s) if new_tokens and decode_s else None,
            "prefill_s": prefill_s,
            "decode_s": decode_s,
            "wall_s": _num(decode.get("wall_s")),
            "discarded_tokens": decode.get("discarded_tokens"),
            "accepted_hist": json.dumps(decode.get("accepted_hist")) if decode.get("accepted_hist") is not None else None,
            "requests": decode.get("requests"),
            "batch_size": model_args.get("batch_size"),
            "max_new_tokens": model_args.get("max_new_tokens"),
            "eval_wall_s": _num(rec.get("eval_wall_s")),
            "model_dtype": rec.get("model_dtype"),
            "checkpoint": rec.get("model"),
            "checkpoint_config_sha256": rec.get("config_sha256"),
            # provenance
            "cell_path": str(path),
            "stats_file": str(row_file(path.parent, rec, "stats")),
            "git_commit": git.get("commit"),
            "git_dirty": git.get("dirty"),
            "config_hash": prov.get("config_hash"),
            "seed": rec.get("seed", prov.get("seed")),
            "time_utc": prov.get("time_utc"),
            "hardware": _hardware_label(hw),
            **{f"version_{k}": v for k, v in sorted(versions.items())},
            **{f"metric:{k}": _num(v) for k, v in sorted(metrics.items())},
        }
        out.append(row)
    return out


def _sort(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    key = frame.assign(
        _b=frame["benchmark"].map(lambda b: BENCH_ORDER.index(b) if b in BENCH_ORDER else len(BENCH_ORDER)),
        _a=frame["alg"].map(lambda a: ALG_ORDER.get(a, 9)),
        _d=frame["block_size"].fillna(0),
        _t=-frame["tau"].fillna(-1.0),
    )
    key = key.sort_values(["model", "_b", "task", "_a", "_d", "_t", "cell_path"], kind="stable")
    return key.drop(columns=["_b", "_a", "_d", "_t"]).reset_index(drop=True)


def aggregate(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """All cells (files, or directories searched for ``cell.json``) -> one frame, one row per (cell, task)."""
    rows = [r for f in find_cells(paths) for r in _rows_of(f)]
    if not rows:
        return pd.DataFrame(columns=EMPTY_COLUMNS)
    frame = pd.DataFrame(rows)
    frame["block_size"] = frame["block_size"].astype("Int64")
    return _sort(frame)


def batch_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per decoded batch, from each cell's ``stats_<task>.jsonl``: a batch's rows share one clock, so
    its wall time is its prefill plus its longest decode (:func:`sdlm.speed.batch_walls`)."""
    cols = ["model", "task", "decoder", "alg", "block_size", "tau", "batch", "batch_size", "new_tokens",
            "wall_s", "tokens_per_s", "cell_path"]
    out = []
    for _, cell in frame.iterrows():
        stats = Path(str(cell.get("stats_file", "")))
        if not stats.is_file():
            continue
        rows = read_jsonl(stats)
        batches = batch_walls(rows)
        for (_, bid), b in sorted(batches.items(), key=lambda kv: str(kv[0])):
            wall = b["wall_s"]
            out.append({"model": cell["model"], "task": cell["task"], "decoder": cell["decoder"], "alg": cell["alg"],
                        "block_size": cell["block_size"], "tau": cell["tau"], "batch": bid, "batch_size": b["n"],
                        "new_tokens": b["tokens"], "wall_s": wall, "tokens_per_s": b["tokens"] / wall if wall > 0 else None,
                        "cell_path": cell["cell_path"]})
    return pd.DataFrame(out, columns=cols)


def load_paper_numbers(path: str | os.PathLike | None) -> pd.DataFrame:
    """The curated published numbers (``config/paper_numbers.csv``); empty frame for ``None``."""
    cols = ["source", "paper_model", "block_size", "alg", "tau", "benchmark", "accuracy", "tpf", "approx", "note"]
    if path is None:
        return pd.DataFrame(columns=cols)
    if not Path(path).is_file() and Path(path).as_posix().endswith(OLD_PAPER_NUMBERS):
        raise FileNotFoundError(f"{path}: the published numbers moved out of the results tree to {PAPER_NUMBERS} "
                                "(set report.paper_numbers / --paper to it)")
    df = pd.read_csv(path, dtype={"source": str, "paper_model": str, "alg": str, "benchmark": str, "note": str})
    missing = [c for c in cols[:8] if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    df["block_size"] = df["block_size"].astype("Int64")
    df["approx"] = df.get("approx", False).astype(str).str.lower().eq("true")
    return df


def load_models(path: str | os.PathLike | Mapping | None) -> dict[str, dict[str, Any]]:
    """Model metadata written by the pipeline (``results/report/models.json``): per model key
    ``{"label", "kind" ("sdlm"|"ar"), "block_size", "paper_model", "baseline", ...}``. Optional."""
    if path is None:
        return {}
    if isinstance(path, Mapping):
        return {str(k): dict(v) for k, v in path.items()}
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of model key -> metadata")
    return data


def add_speedup(frame: pd.DataFrame, models: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """``speedup`` = tokens/s / tokens/s of the AR baseline cell (same task, same hardware); ``baseline``
    names that model. The baseline is ``models[m]["baseline"]``, else the model's own ``ar`` cell."""
    models = models or {}
    frame = frame.copy()
    if frame.empty:
        frame["baseline"], frame["speedup"] = [], []
        return frame
    ar = frame[frame["alg"] == "ar"]
    ref = {(r.model, r.task): (r.tokens_per_s, r.hardware) for r in ar.itertuples()}
    base_col, speed_col = [], []
    for r in frame.itertuples():
        base = (models.get(r.model) or {}).get("baseline") or r.model
        tps, hw = ref.get((base, r.task), (None, None))
        ok = tps and r.tokens_per_s is not None and not pd.isna(r.tokens_per_s) and hw == r.hardware
        base_col.append(base if tps else None)
        speed_col.append(float(r.tokens_per_s) / float(tps) if ok else None)
    frame["baseline"] = base_col
    frame["speedup"] = pd.array(speed_col, dtype="Float64")
    return frame


def with_optional(frame: pd.DataFrame) -> pd.DataFrame:
    """Frames from older ``cells.csv`` files lack the interval and fidelity columns: add them blank."""
    missing = [c for c in OPTIONAL_COLUMNS if c not in frame.columns]
    return frame.assign(**{c: None for c in missing}) if missing else frame


def training_files(frame: pd.DataFrame) -> dict[str, Path]:
    """model -> ``<checkpoint>/sdlm_training.json`` for the frame's checkpoints that have one (the
    ``checkpoint`` column is the ``pretrained`` path the cell was evaluated with)."""
    out: dict[str, Path] = {}
    if frame.empty or "checkpoint" not in frame.columns:
        return out
    for model, ckpt in frame[["model", "checkpoint"]].drop_duplicates().itertuples(index=False):
        if isinstance(ckpt, str) and ckpt and (Path(ckpt) / TRAINING_FILE).is_file():
            out.setdefault(model, Path(ckpt) / TRAINING_FILE)
    return out


def load_tpf_curves(training: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike] | None) -> pd.DataFrame:
    """The TPF probe curves of retrofits: ``sdlm_training.json`` files (a list: the model key is the
    checkpoint folder's name; or a mapping model key -> file) -> one row per (model, step, decoder key) with
    ``train_seconds``, ``n_prompts``, ``max_new_tokens``, ``tpf`` and ``heldout_loss_pos0`` (the probe's
    held-out next-token loss at that step; NaN for curves recorded before the probe measured it). Files
    without ``tpf_curve`` (older checkpoints, AR-SFT baselines) add no rows; the ``tpf`` keys
    (``prob_conf_tau0.98``, ``self_speculative``, ...) are taken as they come."""
    cols = ["model", "step", "train_seconds", "n_prompts", "max_new_tokens", "decoder", "tpf", "heldout_loss_pos0",
            "training_file"]
    if training is None:
        return pd.DataFrame(columns=cols)
    items = training.items() if isinstance(training, Mapping) else ((Path(p).parent.name, p) for p in training)
    rows = []
    for model, path in items:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
        curve = data.get("tpf_curve") if isinstance(data, dict) else None
        for point in curve or []:
            step = _num(point.get("step")) if isinstance(point, dict) else None
            tpf = point.get("tpf") if isinstance(point, dict) else None
            if step is None or not isinstance(tpf, dict):
                warnings.warn(f"{path}: tpf_curve point {point!r} has no step or tpf dict; skipped", stacklevel=2)
                continue
            held = point.get("heldout_loss")
            loss0 = _num(held.get("loss_pos0")) if isinstance(held, dict) else None
            for key, value in tpf.items():
                if _num(value) is None:
                    continue
                rows.append({"model": str(model), "step": int(step), "train_seconds": _num(point.get("train_seconds")),
                             "n_prompts": point.get("n_prompts"), "max_new_tokens": point.get("max_new_tokens"),
                             "decoder": str(key), "tpf": float(value),
                             "heldout_loss_pos0": float("nan") if loss0 is None else float(loss0),
                             "training_file": str(path)})
    return pd.DataFrame(rows, columns=cols)


def read_frame(path: str | os.PathLike) -> pd.DataFrame:
    """A frame written by :func:`report` / the aggregate rule (``cells.csv``), with the dtypes of :data:`COLUMNS`."""
    frame = pd.read_csv(path)
    for c, kind in COLUMNS.items():
        if c not in frame:
            continue
        if kind == "Int64":
            frame[c] = frame[c].astype("Int64")
        elif kind == "float":
            frame[c] = frame[c].astype(float)
        elif kind == "str":
            frame[c] = frame[c].astype(object).where(frame[c].notna(), None)
    return frame
