"""Aggregation and paper-style report: cell JSONs -> one pandas frame -> tables and figures. No torch.

Input: evaluation cells written by :mod:`sdlm.evaluate` (``sdlm eval``), laid out by the pipeline as
``results/cells/<model>/<task>/<decoder>/cell.json`` where ``<decoder>`` is ``ar``,
``<alg>_D<D>_tau<tau>`` or ``self_speculative_D<D>``. A ``cell.json`` is a JSON list of one summary row per
task (its existence means the cell is complete; directories without it are ignored).

* :func:`aggregate` -> the long frame, one row per (cell, task): model, task, benchmark, alg, D, tau,
  accuracy (primary metric x 100), TPF, tokens/s, all lm-eval metrics (``metric:<name>``), and provenance
  columns (cell path, git commit, config hash, versions, hardware, seed, time).
* :func:`batch_frame` -> one row per decoded batch (from ``stats_<task>.jsonl``): tokens/s vs batch size.
* :func:`table1` (accuracy per benchmark, TPF in parentheses, per model/D/tau -- the paper's Table 1),
  :func:`table3` (AR vs confidence vs self-speculative -- Table 3) and :func:`speed_table` (the three speed
  numbers of the honest-throughput rules: TPF, end-to-end tokens/s, decode tokens/s, plus the speed-up
  over the AR baseline measured on the same hardware). Published numbers
  (``results/paper/paper_numbers.csv``) are placed in a ``paper`` row right under the measured row of the
  same configuration: same paper model (``paper_model`` in the models file), alg, D and tau.
* :func:`write_report` renders every table as Markdown, LaTeX (``Styler.to_latex``, booktabs) and HTML,
  plus ``fig_tau_ablation.png`` (accuracy vs TPF and vs speed-up, one panel per benchmark, one line per
  model/alg as tau falls), ``fig_throughput.png`` (tokens/s vs batch size; tokens/s vs TPF) and
  ``fig_tpf_vs_steps.png`` (TPF probed during each retrofit against its training steps, from the
  checkpoints' ``sdlm_training.json`` ``tpf_curve``; :func:`load_tpf_curves`).

Accuracies carry Wilson 95% intervals (:func:`wilson_interval`; columns ``acc_lo``/``acc_hi`` in %, over ``n``
examples), shown as ``12.5 [2.2, 47.1]``. A cell with a ``fidelity.json`` beside its ``cell.json``
(:mod:`sdlm.fidelity`: its outputs against one-token-per-step decoding of the same model and D) gets
``identical_text_pct`` / ``same_answer_pct`` / ``fidelity_n``; AR baselines have none (blank). One-token-
per-step cells (confidence decoding with tau > 1; folder ``step1_D<D>``) are labelled ``1 tok/step``.

Speed-ups are wall-clock ratios to the AR cell of the model's baseline (``baseline`` in the models file, by
default the same model's ``ar`` cell) on the same task and only when both ran on the same hardware.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from sdlm.speed import batch_walls

__all__ = [
    "BENCHMARKS", "PRIMARY_METRIC", "REPORT_FILES", "find_cells", "aggregate", "batch_frame", "load_paper_numbers",
    "load_models", "add_speedup", "table1", "table3", "speed_table", "write_report", "report", "read_frame",
    "wilson_interval", "load_tpf_curves", "training_files",
]

CELL_FILE = "cell.json"
#: our task -> the paper's benchmark column (spec section 7)
BENCHMARKS: dict[str, str] = {
    "gsm8k_sdlm": "GSM8K",
    "math500_sdlm": "MATH",
    "humaneval_sdlm": "HumanEval",
    "humaneval_plus_sdlm": "HumanEval+",
    "mbpp_sdlm": "MBPP",
    "mbpp_plus_sdlm": "MBPP+",
    "mbpp_full_sdlm": "MBPP-full",  # not in the paper (the paper's MBPP is the sanitized set)
}
BENCH_ORDER = ["GSM8K", "MATH", "GPQA", "HumanEval", "HumanEval+", "MBPP", "MBPP+", "IFEval", "MBPP-full"]
#: the metric a task's accuracy column reports (lm-eval "metric,filter" keys)
PRIMARY_METRIC: dict[str, str] = {
    "gsm8k_sdlm": "exact_match,none",
    "math500_sdlm": "math_verify,none",
    "humaneval_sdlm": "pass_at_1,none",
    "humaneval_plus_sdlm": "pass_at_1,none",
    "mbpp_sdlm": "pass_at_1,none",
    "mbpp_plus_sdlm": "pass_at_1,none",
    "mbpp_full_sdlm": "pass_at_1,none",
}
ALG_ORDER = {"ar": 0, "prob_conf": 1, "entropy_conf": 2, "self_speculative": 3}
CONF_ALGS = ("prob_conf", "entropy_conf")
TABLES = ("table1", "table3", "speed")
FORMATS = ("md", "tex", "html")
FIGURES = ("fig_tau_ablation.png", "fig_throughput.png", "fig_tpf_vs_steps.png")
FIDELITY_FILE = "fidelity.json"  # sdlm.fidelity.FIDELITY_FILE (not imported: that module's scoring imports are not needed here)
TRAINING_FILE = "sdlm_training.json"
#: z of a two-sided 95% normal interval (scipy.stats.norm.ppf(0.975))
Z95 = 1.959964
#: every file :func:`write_report` writes (always all of them, so a workflow can declare them as outputs)
REPORT_FILES = tuple(f"{t}.{f}" for t in TABLES for f in FORMATS) + FIGURES + ("provenance.md",)


# ============================================================================================ loading
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
    stale: written for another run of the cell or of its reference)."""
    blank = {"fidelity_n": None, "identical_text_pct": None, "same_answer_pct": None, "fidelity_reference": None}
    path = cell_dir / FIDELITY_FILE
    if not path.is_file():
        return blank
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        res = (data.get("tasks") or {}).get(task)
    except (json.JSONDecodeError, AttributeError):
        warnings.warn(f"{path}: unreadable fidelity file, ignored", stacklevel=2)
        return blank
    if not res:
        return blank
    prov = rec.get("provenance") or {}
    stale = (res.get("cell") or {}).get("time_utc") not in (None, prov.get("time_utc")) or \
        (res.get("cell") or {}).get("config_hash") not in (None, prov.get("config_hash"))
    ref_dir = Path(str(data.get("reference") or ""))
    if not stale and data.get("reference") and (ref_dir / CELL_FILE).is_file():
        try:
            ref_rows = json.loads((ref_dir / CELL_FILE).read_text(encoding="utf-8"))
            ref_rows = ref_rows if isinstance(ref_rows, list) else [ref_rows]
            ref_prov = next(((r.get("provenance") or {}) for r in ref_rows if r.get("task") == task), {})
            stale = (res.get("reference") or {}).get("time_utc") not in (None, ref_prov.get("time_utc"))
        except json.JSONDecodeError:
            stale = True
    if stale:
        warnings.warn(f"{path}: written for another run of the cell or its reference; ignored (rebuild it)",
                      stacklevel=2)
        return blank
    share = lambda k: 100.0 * float(res[k]) if _num(res.get(k)) is not None else None  # noqa: E731
    return {"fidelity_n": res.get("n"), "identical_text_pct": share("identical_text"),
            "same_answer_pct": share("same_answer"), "fidelity_reference": ref_dir.name or None}


def _one_token(alg: Any, tau: Any) -> bool:
    """Confidence decoding with tau > 1 accepts exactly one token per step: the fidelity reference."""
    return alg in CONF_ALGS and tau is not None and not pd.isna(tau) and float(tau) > 1.0


def _primary(task: str, metrics: Mapping[str, Any]) -> str | None:
    m = PRIMARY_METRIC.get(task)
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
    if alg == "ar":
        return "ar"
    if _one_token(alg, tau):
        return f"step1_D{block_size}"
    if alg == "self_speculative":
        return f"self_speculative_D{block_size}"
    return f"{alg}_D{block_size}_tau{tau}"


def _rows_of(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}); a cell.json is written atomically, so this file was "
                         "not written by sdlm eval") from None
    rows = data if isinstance(data, list) else [data]
    if not all(isinstance(r, dict) and "task" in r for r in rows):
        raise ValueError(f"{path}: expected a list of cell rows with a 'task' key")
    out = []
    for rec in rows:
        task = rec["task"]
        alg = rec.get("alg")
        metrics = rec.get("metrics") or {}
        decode = rec.get("decode") or {}
        prov = rec.get("provenance") or {}
        git = prov.get("git") or {}
        versions = prov.get("versions") or {}
        hw = prov.get("hardware") or {}
        model_args = ((prov.get("config") or {}).get("model_args") or {})
        # layout results/cells/<model>/<task>/<decoder>/cell.json -> the model key; else the checkpoint name
        parts = path.resolve().parts
        in_layout = len(parts) >= 4 and parts[-3] == task
        model = parts[-4] if in_layout else Path(str(rec.get("model", "?"))).name
        D = rec.get("block_size") if alg != "ar" else None
        tau = _num(rec.get("threshold")) if alg in CONF_ALGS else None
        pm = _primary(task, metrics)
        acc = _num(metrics.get(pm)) if pm else None
        se = _num(metrics.get(pm.replace(",", "_stderr,", 1))) if pm else None
        lo, hi = wilson_interval(acc, rec.get("n"))
        new_tokens, nfe = decode.get("new_tokens"), decode.get("nfe")
        decode_s, prefill_s = _num(decode.get("decode_s")), _num(decode.get("prefill_s"))
        row = {
            "model": model,
            "task": task,
            "benchmark": BENCHMARKS.get(task, task),
            "decoder": parts[-2] if in_layout else _decoder_name(alg, D, tau),
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
            "stats_file": str(path.parent / (rec.get("files") or {}).get("stats", f"stats_{task}.jsonl")),
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
        return pd.DataFrame(columns=["model", "task", "benchmark", "decoder", "alg", "block_size", "tau",
                                     "accuracy", "tpf", "tokens_per_s", "cell_path"])
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
        rows = [json.loads(line) for line in stats.read_text(encoding="utf-8").splitlines() if line.strip()]
        batches = batch_walls(rows)
        for (_, bid), b in sorted(batches.items(), key=lambda kv: str(kv[0])):
            wall = b["wall_s"]
            out.append({"model": cell["model"], "task": cell["task"], "decoder": cell["decoder"], "alg": cell["alg"],
                        "block_size": cell["block_size"], "tau": cell["tau"], "batch": bid, "batch_size": b["n"],
                        "new_tokens": b["tokens"], "wall_s": wall, "tokens_per_s": b["tokens"] / wall if wall > 0 else None,
                        "cell_path": cell["cell_path"]})
    return pd.DataFrame(out, columns=cols)


def load_paper_numbers(path: str | os.PathLike | None) -> pd.DataFrame:
    """The curated published numbers (``results/paper/paper_numbers.csv``); empty frame for ``None``."""
    cols = ["source", "paper_model", "block_size", "alg", "tau", "benchmark", "accuracy", "tpf", "approx", "note"]
    if path is None:
        return pd.DataFrame(columns=cols)
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


# ============================================================================================ derived
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


def _label(model: str, models: Mapping[str, Mapping[str, Any]]) -> str:
    return str((models.get(model) or {}).get("label") or model)


def _decoding_label(alg: str, tau: Any) -> str:
    if alg == "ar":
        return "AR"
    if _one_token(alg, tau):
        return "1 tok/step"
    if alg == "self_speculative":
        return "self-spec"
    short = {"prob_conf": "conf", "entropy_conf": "entropy"}.get(alg, alg)
    return f"{short} {tau:g}" if tau is not None and not pd.isna(tau) else short


def _missing(v: Any) -> bool:
    return v is None or pd.isna(v)


def _acc_ci(acc: Any, lo: Any = None, hi: Any = None) -> str:
    """``12.5 [2.2, 47.1]``: accuracy (%) with its Wilson 95% interval (just the accuracy without one)."""
    if _missing(acc):
        return "–"
    if _missing(lo) or _missing(hi):
        return f"{acc:.1f}"
    return f"{acc:.1f} [{lo:.1f}, {hi:.1f}]"


def _fmt(acc: Any, tpf: Any, alg: str, lo: Any = None, hi: Any = None) -> str:
    if _missing(acc):
        return "–"
    text = _acc_ci(acc, lo, hi)
    if alg == "ar" or _missing(tpf):
        return text
    return f"{text} ({tpf:.2f})"


def _fmt_cell(v: tuple, alg: str) -> str:
    """A table cell from ``(acc, tpf)`` (published numbers) or ``(acc, tpf, lo, hi)`` (measured)."""
    return _fmt(*v[:2], alg, *v[2:4])


def _same(a: Any, b: Any) -> bool:
    na, nb = a is None or pd.isna(a), b is None or pd.isna(b)
    if na or nb:
        return na and nb
    return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-9)


def _paper_lookup(paper: pd.DataFrame, paper_model: str | None, alg: str, D: Any, tau: Any,
                  sources: tuple[str, ...]) -> dict[str, tuple[float, float | None]]:
    """benchmark -> (accuracy, tpf) of the published rows of one configuration (first source wins)."""
    if paper is None or paper.empty or not paper_model:
        return {}
    out: dict[str, tuple[float, float | None]] = {}
    for src in sources:
        sel = paper[(paper["source"] == src) & (paper["paper_model"] == paper_model) & (paper["alg"] == alg)]
        for r in sel.itertuples():
            if r.benchmark == "Avg" or r.benchmark in out:
                continue
            if alg != "ar" and not _same(r.block_size, D):
                continue
            if alg in CONF_ALGS and not _same(r.tau, tau):
                continue
            out[r.benchmark] = (float(r.accuracy), None if pd.isna(r.tpf) else float(r.tpf))
    return out


def _bench_columns(frame: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(frame["benchmark"]))
    return sorted(present, key=lambda b: (BENCH_ORDER.index(b) if b in BENCH_ORDER else len(BENCH_ORDER), b))


def _avg(values: list[tuple], n_cols: int, alg: str) -> str:
    """Mean over the benchmark columns (no interval: the columns have different n)."""
    accs = [v[0] for v in values if v[0] is not None]
    if n_cols < 2 or len(accs) != n_cols:
        return "–"
    tpfs = [v[1] for v in values if v[1] is not None]
    tpf = sum(tpfs) / len(tpfs) if len(tpfs) == n_cols else None
    return _fmt(sum(accs) / len(accs), tpf, alg)


def _row_cells(sub: pd.DataFrame, benches: list[str]) -> list[tuple[float | None, ...]]:
    """Per benchmark ``(accuracy, tpf, acc_lo, acc_hi)`` of the first matching row (Nones when absent)."""
    def get(r: pd.Series, col: str) -> float | None:
        v = r.get(col)
        return None if _missing(v) else float(v)

    vals = []
    for b in benches:
        hit = sub[sub["benchmark"] == b]
        if hit.empty:
            vals.append((None, None, None, None))
        else:
            r = hit.iloc[0]
            vals.append((get(r, "accuracy"), get(r, "tpf"), get(r, "acc_lo"), get(r, "acc_hi")))
    return vals


def table1(frame: pd.DataFrame, paper: pd.DataFrame | None = None,
           models: Mapping[str, Mapping[str, Any]] | None = None, *, algs: tuple[str, ...] = ("ar", *CONF_ALGS)) -> pd.DataFrame:
    """Table-1 style: one row per (model, decoding, D, tau), accuracy per benchmark with TPF in parentheses
    (AR rows: accuracy only), ``Avg`` when every benchmark is present; a ``paper`` row follows each measured
    row whose configuration has published numbers."""
    models = models or {}
    paper = paper if paper is not None else load_paper_numbers(None)
    f = frame[frame["alg"].isin(algs)] if not frame.empty else frame
    cols = ["Model", "D", "Decoding", "tau", "Source"]
    if f.empty:
        return pd.DataFrame(columns=cols)
    benches = _bench_columns(f)
    rows = []
    keys = f[["model", "alg", "block_size", "tau"]].drop_duplicates(ignore_index=True)
    keys = keys.assign(_ar=keys["alg"].ne("ar")).sort_values("_ar", kind="stable").drop(columns="_ar")
    for k in keys.itertuples(index=False):
        sub = f[(f["model"] == k.model) & (f["alg"] == k.alg) & f["block_size"].fillna(-1).eq(
            -1 if pd.isna(k.block_size) else k.block_size) & f["tau"].fillna(-1.0).eq(-1.0 if pd.isna(k.tau) else k.tau)]
        vals = _row_cells(sub, benches)
        base = {"Model": _label(k.model, models), "D": "" if pd.isna(k.block_size) else int(k.block_size),
                "Decoding": _decoding_label(k.alg, k.tau), "tau": "" if pd.isna(k.tau) else f"{k.tau:g}"}
        rows.append({**base, "Source": "measured", **{b: _fmt_cell(v, k.alg) for b, v in zip(benches, vals)},
                     "Avg": _avg(vals, len(benches), k.alg)})
        pub = _paper_lookup(paper, (models.get(k.model) or {}).get("paper_model"), k.alg, k.block_size, k.tau,
                            ("table1", "table3"))
        if pub:
            pvals = [pub.get(b, (None, None)) for b in benches]
            rows.append({**base, "Source": "paper", **{b: _fmt_cell(v, k.alg) for b, v in zip(benches, pvals)},
                         "Avg": _avg(pvals, len(benches), k.alg)})
    out = pd.DataFrame(rows, columns=cols + benches + ["Avg"])
    if len(benches) < 2:
        out = out.drop(columns=["Avg"])
    return out


def _ref_tau(taus: Iterable[float], want: float) -> float | None:
    taus = sorted({float(t) for t in taus if t is not None and not pd.isna(t)})
    if not taus:
        return None
    for t in taus:
        if math.isclose(t, want, abs_tol=1e-9):
            return t
    return taus[-1]


def table3(frame: pd.DataFrame, paper: pd.DataFrame | None = None,
           models: Mapping[str, Mapping[str, Any]] | None = None, *, tau: float = 0.98) -> pd.DataFrame:
    """Table-3 style, for every SDLM model with self-speculative cells: its AR baseline, confidence decoding
    at ``tau`` (the paper's .98; the highest measured tau <= 1 if .98 was not run), one-token-per-step
    decoding (tau > 1, when evaluated) and self-speculative decoding; accuracy (TPF) per benchmark, with
    ``paper`` rows beside matching configurations."""
    models = models or {}
    paper = paper if paper is not None else load_paper_numbers(None)
    cols = ["Model", "D", "Decoding", "tau", "Source"]
    if frame.empty or not (frame["alg"] == "self_speculative").any():
        return pd.DataFrame(columns=cols)
    spec = frame[frame["alg"] == "self_speculative"]
    benches = _bench_columns(spec)
    rows = []

    def add(model: str, alg: str, D: Any, t: Any, sub: pd.DataFrame, label_model: str | None = None) -> None:
        vals = _row_cells(sub, benches)
        base = {"Model": label_model or _label(model, models), "D": "" if D is None or pd.isna(D) else int(D),
                "Decoding": _decoding_label(alg, t), "tau": "" if t is None or pd.isna(t) else f"{t:g}"}
        rows.append({**base, "Source": "measured", **{b: _fmt_cell(v, alg) for b, v in zip(benches, vals)},
                     "Avg": _avg(vals, len(benches), alg)})
        pub = _paper_lookup(paper, (models.get(model) or {}).get("paper_model"), alg, D, t, ("table3", "table1"))
        if pub:
            pvals = [pub.get(b, (None, None)) for b in benches]
            rows.append({**base, "Source": "paper", **{b: _fmt_cell(v, alg) for b, v in zip(benches, pvals)},
                         "Avg": _avg(pvals, len(benches), alg)})

    done_baselines: set[str] = set()
    for (model, D), _ in spec.groupby(["model", "block_size"], sort=False):
        baseline = (models.get(model) or {}).get("baseline") or model
        ar = frame[(frame["model"] == baseline) & (frame["alg"] == "ar")]
        if not ar.empty and baseline not in done_baselines:
            done_baselines.add(baseline)
            add(baseline, "ar", None, None, ar)
        conf = frame[(frame["model"] == model) & (frame["alg"] == "prob_conf") & (frame["block_size"] == D)]
        step1 = conf[conf["tau"] > 1.0]
        conf = conf[conf["tau"] <= 1.0]
        t = _ref_tau(conf["tau"], tau)
        if t is not None:
            add(model, "prob_conf", D, t, conf[conf["tau"].sub(t).abs() < 1e-9])
        if not step1.empty:  # the reference self-speculative decoding must equal
            t1 = float(step1["tau"].iloc[0])
            add(model, "prob_conf", D, t1, step1[step1["tau"].sub(t1).abs() < 1e-9])
        add(model, "self_speculative", D, None, spec[(spec["model"] == model) & (spec["block_size"] == D)])
    out = pd.DataFrame(rows, columns=cols + benches + ["Avg"])
    if len(benches) < 2:
        out = out.drop(columns=["Avg"])
    return out


SPEED_COLUMNS = ["Model", "Benchmark", "Decoding", "D", "tau", "n", "accuracy [95% CI]", "identical text %",
                 "same answer %", "TPF", "tok/s", "decode tok/s", "prefill s", "speed-up", "baseline", "hardware"]
_OPTIONAL = ("acc_lo", "acc_hi", "fidelity_n", "identical_text_pct", "same_answer_pct", "fidelity_reference")


def _with_optional(frame: pd.DataFrame) -> pd.DataFrame:
    """Frames from older ``cells.csv`` files lack the interval and fidelity columns: add them blank."""
    missing = [c for c in _OPTIONAL if c not in frame.columns]
    return frame.assign(**{c: None for c in missing}) if missing else frame


def speed_table(frame: pd.DataFrame, models: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Per cell: accuracy with its Wilson 95% interval, fidelity to one-token-per-step decoding of the same
    model and D (identical text %, same final answer %; blank for AR baselines and cells without a
    ``fidelity.json``), the three speed numbers (TPF; end-to-end tokens/s with prefill; decode-only tokens/s),
    the wall-clock speed-up over the AR baseline on the same hardware, and the hardware it ran on."""
    models = models or {}
    if frame.empty:
        return pd.DataFrame(columns=SPEED_COLUMNS)
    f = _with_optional(frame if "speedup" in frame.columns else add_speedup(frame, models))

    def num(v: Any, fmt: str) -> str:
        return "–" if _missing(v) else format(float(v), fmt)

    rows = [{
        "Model": _label(r.model, models), "Benchmark": r.benchmark, "Decoding": _decoding_label(r.alg, r.tau),
        "D": "" if pd.isna(r.block_size) else int(r.block_size), "tau": "" if pd.isna(r.tau) else f"{r.tau:g}",
        "n": "" if r.n is None or pd.isna(r.n) else int(r.n), "accuracy [95% CI]": _acc_ci(r.accuracy, r.acc_lo, r.acc_hi),
        "identical text %": num(r.identical_text_pct, ".1f"), "same answer %": num(r.same_answer_pct, ".1f"),
        "TPF": num(r.tpf, ".2f"), "tok/s": num(r.tokens_per_s, ".1f"),
        "decode tok/s": num(r.decode_tokens_per_s, ".1f"), "prefill s": num(r.prefill_s, ".2f"),
        "speed-up": num(r.speedup, ".2f"), "baseline": r.baseline or "", "hardware": r.hardware or "",
    } for r in f.itertuples()]
    return pd.DataFrame(rows, columns=SPEED_COLUMNS)


# ============================================================================================ rendering
def _latex(df: pd.DataFrame, caption: str) -> str:
    if df.empty:
        return f"% {caption}: no rows\n"
    styler = df.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    return styler.to_latex(hrules=True, column_format="l" * df.shape[1], caption=_latex_escape(caption), position="t")


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("%", r"\%"), ("&", r"\&"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$")):
        text = text.replace(a, b)
    return text


def _markdown(df: pd.DataFrame, caption: str, notes: list[str]) -> str:
    body = df.to_markdown(index=False, disable_numparse=True) if not df.empty else "_no rows_"
    return f"**{caption}**\n\n{body}\n" + "".join(f"\n{n}" for n in notes) + ("\n" if notes else "")


def _html(df: pd.DataFrame, caption: str, notes: list[str]) -> str:
    if df.empty:
        table = "<p><em>no rows</em></p>"
    else:
        table = df.style.hide(axis="index").set_caption(caption).to_html()
    notes_html = "".join(f"<p>{n}</p>" for n in notes)
    return f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{caption}</title></head><body>\n{table}\n{notes_html}\n</body></html>\n"


def _notes(frame: pd.DataFrame) -> list[str]:
    notes = []
    if frame.empty:
        return notes
    lim = frame["limit"].dropna() if "limit" in frame else pd.Series([], dtype=object)
    if not lim.empty:
        ns = frame.groupby("benchmark")["n"].max().to_dict()
        notes.append("Limited run (not comparable with the paper's full benchmarks): examples per benchmark "
                     + ", ".join(f"{b} {int(n)}" for b, n in ns.items() if n is not None and not pd.isna(n)) + ".")
    hw = sorted(set(frame["hardware"].dropna())) if "hardware" in frame else []
    if hw:
        notes.append("Hardware: " + "; ".join(hw) + ".")
    return notes


_CAPTIONS = {
    "table1": "Accuracy (%) per benchmark with its Wilson 95% interval [lo, hi], TPF (tokens per forward) in "
              "parentheses; paper rows: published numbers of the same configuration; Avg: mean over the columns shown",
    "table3": "AR vs confidence vs one-token-per-step vs self-speculative decoding: accuracy (%) [Wilson 95% "
              "interval], TPF in parentheses; Avg: mean over the columns shown",
    "speed": "Speed and fidelity per cell: accuracy (%) [Wilson 95% interval]; identical text % and same answer %: "
             "share of examples whose output (text; extracted final answer) equals one-token-per-step decoding of "
             "the same model and D (–: AR baselines, which have no such reference, and cells not compared); TPF, end-to-end tokens/s (prefill included), "
             "decode-only tokens/s, speed-up over the AR baseline (same hardware)",
}


def _placeholder_figure(path: Path, text: str) -> None:
    """A small figure that says why there is nothing to plot (the report's file list stays fixed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _figure_tau(frame: pd.DataFrame, paper: pd.DataFrame, models: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = frame[frame["accuracy"].notna() & frame["tpf"].notna()] if not frame.empty else frame
    benches = _bench_columns(f) if not f.empty else []
    if not benches:
        _placeholder_figure(path, "no cells")
        return
    f = add_speedup(f, models) if "speedup" not in f.columns else f
    n = len(benches)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 7), squeeze=False)
    markers = {"prob_conf": "o", "entropy_conf": "s", "self_speculative": "*", "ar": "D"}
    cmap = plt.get_cmap("tab10")
    series = list(dict.fromkeys((r.model, r.alg) for r in f.itertuples()))
    colour = {s: cmap(i % 10) for i, s in enumerate(series)}
    for j, b in enumerate(benches):
        fb = f[f["benchmark"] == b]
        for row, xcol, xlabel in ((0, "tpf", "TPF (tokens per forward)"), (1, "speedup", "speed-up vs AR (tokens/s ratio)")):
            ax = axes[row][j]
            for (model, alg), g in fb.groupby(["model", "alg"], sort=False):
                g = g[g[xcol].notna()].sort_values("tau", ascending=False, na_position="last")
                if g.empty:
                    continue
                label = f"{_label(model, models)} {_decoding_label(alg, None)}"
                ax.plot(g[xcol].astype(float), g["accuracy"].astype(float), marker=markers.get(alg, "o"),
                        linestyle="-" if alg in CONF_ALGS else "none", color=colour[(model, alg)], label=label,
                        markersize=10 if alg == "self_speculative" else 6)
                # tau labels, lifted per series so that series stacked at one accuracy (e.g. all 0) stay readable;
                # reference cells (tau > 1, one token per step) are not part of the tau sweep
                lift = 3 + 7 * (series.index((model, alg)) % 4)
                for r in g.itertuples():
                    if r.tau is not None and not pd.isna(r.tau) and float(r.tau) <= 1:
                        ax.annotate(f"{r.tau:g}", (float(getattr(r, xcol)), float(r.accuracy)), fontsize=7,
                                    color=colour[(model, alg)], textcoords="offset points", xytext=(3, lift))
            if row == 0 and paper is not None and not paper.empty:
                wanted = {(m.get("paper_model"), m.get("block_size")) for m in models.values() if m.get("paper_model")}
                pp = paper[(paper["benchmark"] == b) & paper["tpf"].notna()]
                for (pm, D), g in pp.groupby(["paper_model", "block_size"]):
                    if (pm, int(D)) not in {(w, int(d)) for w, d in wanted if d is not None}:
                        continue
                    g = g[g["alg"].isin(CONF_ALGS) | (g["alg"] == "self_speculative")]
                    ax.scatter(g["tpf"], g["accuracy"], marker="x", color="grey", label=f"paper {pm} D={D}")
            ax.set_title(b)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    fig.suptitle("Accuracy vs TPF and wall-clock speed-up as tau falls (labels: tau)")
    fig.tight_layout(rect=(0, 0.08 + 0.02 * (len(handles) // 4), 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _figure_throughput(frame: pd.DataFrame, batches: pd.DataFrame, models: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    if batches is not None and not batches.empty:
        b = batches[batches["tokens_per_s"].notna()]
        for (model, alg), g in b.groupby(["model", "alg"], sort=False):
            m = g.groupby("batch_size")["tokens_per_s"].mean()
            ax1.plot(m.index, m.values, marker="o", label=f"{_label(model, models)} {_decoding_label(alg, None)}")
        ax1.set_xlabel("requests in the batch")
        ax1.legend(fontsize=7)
    else:
        ax1.text(0.5, 0.5, "no decode stats", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_ylabel("tokens/s (prefill included)")
    ax1.set_title("Throughput vs batch size (per decoded batch)")
    ax1.grid(alpha=0.3)
    if not frame.empty and frame["tokens_per_s"].notna().any():
        for alg, g in frame[frame["tokens_per_s"].notna()].groupby("alg", sort=False):
            ax2.scatter(g["tpf"].astype(float), g["tokens_per_s"].astype(float), label=_decoding_label(alg, None),
                        marker={"self_speculative": "*", "ar": "D"}.get(alg, "o"))
        ax2.legend(fontsize=7)
    ax2.set_xlabel("TPF (tokens per forward)")
    ax2.set_ylabel("tokens/s per cell (prefill included)")
    ax2.set_title("Wall-clock throughput vs TPF")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ============================================================================================ TPF curves
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
    ``train_seconds``, ``n_prompts``, ``max_new_tokens`` and ``tpf``. Files without ``tpf_curve`` (older
    checkpoints, AR-SFT baselines) add no rows; the ``tpf`` keys (``prob_conf_tau0.98``, ``self_speculative``,
    ...) are taken as they come."""
    cols = ["model", "step", "train_seconds", "n_prompts", "max_new_tokens", "decoder", "tpf", "training_file"]
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
            for key, value in tpf.items():
                if _num(value) is None:
                    continue
                rows.append({"model": str(model), "step": int(step), "train_seconds": _num(point.get("train_seconds")),
                             "n_prompts": point.get("n_prompts"), "max_new_tokens": point.get("max_new_tokens"),
                             "decoder": str(key), "tpf": float(value), "training_file": str(path)})
    return pd.DataFrame(rows, columns=cols)


def _curve_label(key: str) -> str:
    """``prob_conf_tau0.98`` -> ``conf 0.98``; ``self_speculative`` -> ``self-spec``; other keys as they are."""
    alg, sep, tau = key.rpartition("_tau")
    if sep and alg and _num(tau) is not None:
        return _decoding_label(alg, float(tau))
    return _decoding_label(key, None) if key in ALG_ORDER else key


def _figure_tpf_steps(curves: pd.DataFrame, models: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if curves is None or curves.empty:
        _placeholder_figure(path, "no TPF curves\n(no sdlm_training.json with a tpf_curve)")
        return
    panels = list(dict.fromkeys(curves["model"]))
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.6 * nrow), squeeze=False)
    keys = list(dict.fromkeys(curves["decoder"]))
    cmap = plt.get_cmap("tab10")
    colour = {k: cmap(i % 10) for i, k in enumerate(keys)}
    for ax, model in zip(axes.flat, panels):
        g = curves[curves["model"] == model]
        for key, gk in g.groupby("decoder", sort=False):
            gk = gk.sort_values("step")
            ax.plot(gk["step"], gk["tpf"], marker="o", markersize=4, color=colour[key], label=_curve_label(key),
                    linestyle="--" if key == "self_speculative" else "-")
        n_p, mnt = g["n_prompts"].dropna(), g["max_new_tokens"].dropna()
        sub = f"{int(n_p.iloc[0])} prompts x {int(mnt.iloc[0])} new tokens" if len(n_p) and len(mnt) else ""
        last = g.loc[g["step"].idxmax()]
        secs = f", {last['train_seconds']:.0f} s at step {int(last['step'])}" if not _missing(last["train_seconds"]) else ""
        ax.set_title(f"{_label(model, models)}\n{sub}{secs}", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("TPF (tokens per forward)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    fig.suptitle("TPF on held-out prompts during retrofit training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _provenance_md(frame: pd.DataFrame) -> str:
    lines = ["# Provenance of the report", ""]
    if frame.empty:
        return "\n".join(lines + ["No cells.", ""])
    vcols = [c for c in frame.columns if c.startswith("version_")]
    cols = ["git_commit", "git_dirty", "hardware", "seed", *vcols]
    g = frame[cols].astype(str).drop_duplicates()
    lines += [f"{len(frame)} rows from {frame['cell_path'].nunique()} cells; distinct run environments:", "",
              g.rename(columns=lambda c: c.removeprefix("version_")).to_markdown(index=False), "",
              f"config hashes: {frame['config_hash'].nunique()} distinct (one per cell configuration).", ""]
    return "\n".join(lines)


def write_report(frame: pd.DataFrame, out: str | os.PathLike, *, paper: pd.DataFrame | None = None,
                 models: Mapping[str, Mapping[str, Any]] | None = None, batches: pd.DataFrame | None = None,
                 table3_tau: float = 0.98,
                 training: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """Render every table (md, tex, html), the figures and ``provenance.md`` into ``out``; returns the paths
    (always all of :data:`REPORT_FILES`). ``training``: the checkpoints' ``sdlm_training.json`` files for the
    TPF-vs-steps figure (:func:`load_tpf_curves`; ``None``: those found beside the frame's checkpoints)."""
    from sdlm.provenance import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = models or {}
    paper = paper if paper is not None else load_paper_numbers(None)
    frame = _with_optional(add_speedup(frame, models))
    tables = {"table1": table1(frame, paper, models), "table3": table3(frame, paper, models, tau=table3_tau),
              "speed": speed_table(frame, models)}
    notes = _notes(frame)
    written = []
    for name, df in tables.items():
        cap = _CAPTIONS[name]
        written.append(atomic_write_text(out / f"{name}.md", _markdown(df, cap, notes)))
        written.append(atomic_write_text(out / f"{name}.tex", _latex(df, cap)))
        written.append(atomic_write_text(out / f"{name}.html", _html(df, cap, notes)))
    _figure_tau(frame, paper, models, out / "fig_tau_ablation.png")
    _figure_throughput(frame, batches if batches is not None else batch_frame(frame), models, out / "fig_throughput.png")
    _figure_tpf_steps(load_tpf_curves(training if training is not None else training_files(frame)), models,
                      out / "fig_tpf_vs_steps.png")
    written += [out / f for f in FIGURES]
    written.append(atomic_write_text(out / "provenance.md", _provenance_md(frame)))
    return written


def report(cells: str | os.PathLike | Iterable[str | os.PathLike], out: str | os.PathLike, *,
           paper: str | os.PathLike | None = None, models: str | os.PathLike | Mapping | None = None,
           table3_tau: float = 0.98,
           training: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike] | None = None) -> pd.DataFrame:
    """The whole report: aggregate ``cells`` into ``out/cells.csv`` (+ ``batches.csv``) and render it
    (``training``: see :func:`write_report`)."""
    from sdlm.provenance import atomic_write_text

    frame = aggregate(cells)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batches = batch_frame(frame)
    atomic_write_text(out / "cells.csv", frame.to_csv(index=False))
    atomic_write_text(out / "batches.csv", batches.to_csv(index=False))
    write_report(frame, out, paper=load_paper_numbers(paper), models=load_models(models), batches=batches,
                 table3_tau=table3_tau, training=training)
    return frame


def read_frame(path: str | os.PathLike) -> pd.DataFrame:
    """A frame written by :func:`report` / the aggregate rule (``cells.csv``), with its dtypes restored."""
    frame = pd.read_csv(path)
    if "block_size" in frame:
        frame["block_size"] = frame["block_size"].astype("Int64")
    for c in ("tau", "accuracy", "acc_lo", "acc_hi", "identical_text_pct", "same_answer_pct", "tpf", "tokens_per_s",
              "decode_tokens_per_s", "prefill_s", "decode_s"):
        if c in frame:
            frame[c] = frame[c].astype(float)
    for c in ("model", "task", "benchmark", "decoder", "alg", "hardware", "cell_path", "stats_file", "checkpoint",
              "fidelity_reference"):
        if c in frame:
            frame[c] = frame[c].astype(object).where(frame[c].notna(), None)
    return frame
