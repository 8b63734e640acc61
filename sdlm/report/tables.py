"""The paper-style tables: Table 1 (accuracy and TPF per benchmark), Table 3 (AR vs confidence vs
self-speculative) and the speed-and-fidelity table, with published numbers beside matching rows. No torch."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from sdlm.decoders import CONFIDENCE_ALGS, is_one_token

from .frame import BENCH_ORDER, add_speedup, load_paper_numbers, with_optional
from .labels import busy_mark, decoding_label, missing, model_label, tau_text


def _busy(r: Any) -> str:
    return busy_mark(getattr(r, "busy", None))


def _acc_ci(acc: Any, lo: Any = None, hi: Any = None) -> str:
    """``12.5 [2.2, 47.1]``: accuracy (%) with its Wilson 95% interval (just the accuracy without one)."""
    if missing(acc):
        return "–"
    if missing(lo) or missing(hi):
        return f"{acc:.1f}"
    return f"{acc:.1f} [{lo:.1f}, {hi:.1f}]"


def _fmt(acc: Any, tpf: Any, alg: str, lo: Any = None, hi: Any = None) -> str:
    if missing(acc):
        return "–"
    text = _acc_ci(acc, lo, hi)
    if alg == "ar" or missing(tpf):
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
            if alg in CONFIDENCE_ALGS and not _same(r.tau, tau):
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
        return None if missing(v) else float(v)

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
           models: Mapping[str, Mapping[str, Any]] | None = None, *, algs: tuple[str, ...] = ("ar", *CONFIDENCE_ALGS)) -> pd.DataFrame:
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
        base = {"Model": model_label(k.model, models), "D": "" if pd.isna(k.block_size) else int(k.block_size),
                "Decoding": decoding_label(k.alg, k.tau), "tau": tau_text(k.alg, k.tau)}
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
        base = {"Model": label_model or model_label(model, models), "D": "" if D is None or pd.isna(D) else int(D),
                "Decoding": decoding_label(alg, t), "tau": tau_text(alg, t)}
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
        one_token = conf["tau"].map(lambda x: is_one_token("prob_conf", x)).astype(bool)
        step1, conf = conf[one_token], conf[~one_token & conf["tau"].notna()]
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


SPEED_COLUMNS = ["Model", "Benchmark", "Decoding", "D", "tau", "n", "accuracy [95% CI]", "won/lost vs AR", "McNemar p",
                 "identical text %", "same answer %", "TPF", "tok/s", "decode tok/s", "prefill s", "speed-up", "baseline",
                 "hardware"]


def speed_table(frame: pd.DataFrame, models: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Per cell: accuracy with its Wilson 95% interval, fidelity to one-token-per-step decoding of the same
    model and D (identical text %, same final answer %; blank for AR baselines and cells without a
    ``fidelity.json``), the three speed numbers (TPF; end-to-end tokens/s with prefill; decode-only tokens/s),
    the wall-clock speed-up over the AR baseline on the same hardware, and the hardware it ran on."""
    models = models or {}
    if frame.empty:
        return pd.DataFrame(columns=SPEED_COLUMNS)
    f = with_optional(frame if "speedup" in frame.columns else add_speedup(frame, models))

    def num(v: Any, fmt: str) -> str:
        return "–" if missing(v) else format(float(v), fmt)

    rows = [{
        "Model": model_label(r.model, models), "Benchmark": r.benchmark, "Decoding": decoding_label(r.alg, r.tau),
        "D": "" if pd.isna(r.block_size) else int(r.block_size), "tau": tau_text(r.alg, r.tau),
        "n": "" if r.n is None or pd.isna(r.n) else int(r.n), "accuracy [95% CI]": _acc_ci(r.accuracy, r.acc_lo, r.acc_hi),
        "identical text %": num(r.identical_text_pct, ".1f"), "same answer %": num(r.same_answer_pct, ".1f"),
        "won/lost vs AR": "–" if missing(getattr(r, "wins", None)) else f"{int(r.wins)} / {int(r.losses)}",
        "McNemar p": num(getattr(r, "mcnemar_p", None), ".3g"),
        "TPF": num(r.tpf, ".2f"), "tok/s": num(r.tokens_per_s, ".1f") + _busy(r),
        "decode tok/s": num(r.decode_tokens_per_s, ".1f") + _busy(r), "prefill s": num(r.prefill_s, ".2f"),
        "speed-up": num(r.speedup, ".2f") + _busy(r), "baseline": r.baseline or "", "hardware": r.hardware or "",
    } for r in f.itertuples()]
    return pd.DataFrame(rows, columns=SPEED_COLUMNS)
