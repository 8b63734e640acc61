"""The report's figures: accuracy vs TPF and speed-up as tau falls, throughput, and TPF against training steps.
No torch."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from sdlm.decoders import CONFIDENCE_ALGS

from .frame import add_speedup
from .labels import curve_label, decoding_label, missing, model_label, series, series_label
from .tables import _bench_columns


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (the report runs on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 110) -> None:
    fig.savefig(path, dpi=dpi)  # fixed size: titles and legends are laid out to fit a one-panel figure
    _pyplot().close(fig)


def _placeholder_figure(path: Path, text: str) -> None:
    """A small figure that says why there is nothing to plot (the report's file list stays fixed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()
    _save(fig, path, dpi=100)


_MARKERS = {"prob_conf": "o", "entropy_conf": "s", "self_speculative": "*", "ar": "D", "one_token": "P"}


def _accuracy_limits(values: Iterable[float]) -> tuple[float, float]:
    """The accuracy axis: the data range plus a margin, inside [0, 100] (an accuracy is never negative),
    at least 10 points tall so that all-zero results do not draw a +-0.04 % axis."""
    vals = [float(v) for v in values if not missing(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 100.0)
    margin = max(2.0, 0.1 * (hi - lo))
    lo, hi = max(0.0, lo - margin), min(100.0, hi + margin)
    if hi - lo < 10:
        lo, hi = (max(0.0, hi - 10), hi) if hi >= 10 else (0.0, 10.0)
    return lo, hi


class _LabelPlacer:
    """Places short text labels next to points without overlapping each other: candidate offsets are tried
    around the point, nearest first, against the boxes already placed (in display pixels)."""

    OFFSETS = [(4, 4), (4, -10), (-4 - 1, 4), (-4 - 1, -10), (4, 14), (4, -20), (-5, 14), (-5, -20), (12, -3), (4, 24)]

    def __init__(self, ax, fontsize: float = 7):
        self.ax, self.fontsize, self.boxes = ax, fontsize, []

    def add(self, text: str, x: float, y: float, color) -> None:
        px, py = self.ax.transData.transform((x, y))
        w, h = 0.62 * self.fontsize * len(text) * 1.4, self.fontsize * 1.5  # points -> pixels at ~100 dpi
        for dx, dy in self.OFFSETS:
            sx = dx * 1.4 - (w if dx < 0 else 0)
            box = (px + sx, py + dy * 1.4, px + sx + w, py + dy * 1.4 + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in self.boxes):
                break
        self.boxes.append(box)
        self.ax.annotate(text, (x, y), fontsize=self.fontsize, color=color, textcoords="offset points",
                         xytext=(dx, dy), ha="right" if dx < 0 else "left")


def _figure_tau(frame: pd.DataFrame, paper: pd.DataFrame, models: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    plt = _pyplot()
    f = frame[frame["accuracy"].notna() & frame["tpf"].notna()] if not frame.empty else frame
    benches = _bench_columns(f) if not f.empty else []
    if not benches:
        _placeholder_figure(path, "no cells")
        return
    f = add_speedup(f, models) if "speedup" not in f.columns else f
    f = f.assign(series_kind=[series(a, t) for a, t in zip(f["alg"], f["tau"])])
    n = len(benches)
    fig, axes = plt.subplots(2, n, figsize=(4.6 * n, 7.4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    lines = list(dict.fromkeys((r.model, r.series_kind) for r in f.itertuples()))
    colour = {s: cmap(i % 10) for i, s in enumerate(lines)}
    for j, b in enumerate(benches):
        fb = f[f["benchmark"] == b]
        for row, xcol, xlabel in ((0, "tpf", "TPF (tokens per forward)"), (1, "speedup", "speed-up vs AR (tokens/s ratio)")):
            ax = axes[row][j]
            placed = []
            for (model, kind), g in fb.groupby(["model", "series_kind"], sort=False):
                g = g[g[xcol].notna()].sort_values("tau", ascending=False, na_position="last")
                if g.empty:
                    continue
                label = f"{model_label(model, models)} {series_label(kind)}"
                ax.plot(g[xcol].astype(float), g["accuracy"].astype(float), marker=_MARKERS.get(kind, "o"),
                        linestyle="-" if kind in CONFIDENCE_ALGS else "none", color=colour[(model, kind)], label=label,
                        markersize=10 if kind == "self_speculative" else 6)
                if kind in CONFIDENCE_ALGS:
                    placed += [(f"{r.tau:g}", float(getattr(r, xcol)), float(r.accuracy), colour[(model, kind)])
                               for r in g.itertuples()]
            if row == 0 and paper is not None and not paper.empty:
                wanted = {(m.get("paper_model"), m.get("block_size")) for m in models.values() if m.get("paper_model")}
                pp = paper[(paper["benchmark"] == b) & paper["tpf"].notna()]
                for (pm, D), g in pp.groupby(["paper_model", "block_size"]):
                    if (pm, int(D)) not in {(w, int(d)) for w, d in wanted if d is not None}:
                        continue
                    g = g[g["alg"].isin(CONFIDENCE_ALGS) | (g["alg"] == "self_speculative")]
                    ax.scatter(g["tpf"], g["accuracy"], marker="x", color="grey", label=f"paper {pm} D={D}")
            ax.set_ylim(*_accuracy_limits(list(fb["accuracy"]) + ([] if paper is None or paper.empty or row else
                                                                  list(paper[paper["benchmark"] == b]["accuracy"]))))
            ax.set_title(b)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
            fig.canvas.draw()  # final limits before placing the tau labels in display space
            placer = _LabelPlacer(ax)
            for text, x, y, c in placed:
                placer.add(text, x, y, c)
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    ncol = max(1, min(4, len(handles), n))  # a column per panel: wider legends ran off a one-panel figure
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol, fontsize=8)
    fig.suptitle("Accuracy vs TPF and wall-clock speed-up as tau falls\n(point labels: tau)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * math.ceil(len(handles) / ncol), 1, 0.95))
    _save(fig, path, dpi=110)


def _figure_throughput(frame: pd.DataFrame, batches: pd.DataFrame, models: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Left: tokens/s against batch size, one panel per benchmark (a task's prompt and answer lengths must not
    pass for a batch-size effect); right: tokens/s against TPF per cell."""
    plt = _pyplot()
    b = batches[batches["tokens_per_s"].notna()] if batches is not None and not batches.empty else None
    tasks = list(dict.fromkeys(b["task"])) if b is not None else []
    n = max(len(tasks), 1)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.4 * (n + 1), 4.2), squeeze=False)
    axes = axes[0]
    if b is None:
        axes[0].text(0.5, 0.5, "no decode stats", ha="center", va="center", transform=axes[0].transAxes)
    for ax, task in zip(axes, tasks):
        bt = b[b["task"] == task].assign(series_kind=lambda d: [series(a, t) for a, t in zip(d["alg"], d["tau"])])
        for (model, kind), g in bt.groupby(["model", "series_kind"], sort=False):
            m = g.groupby("batch_size")["tokens_per_s"].mean()
            ax.plot(m.index, m.values, marker=_MARKERS.get(kind, "o"),
                    label=f"{model_label(model, models)} {series_label(kind)}")
        ax.set_title(f"{task}: tokens/s vs batch size")
        ax.set_xlabel("requests in the batch")
        ax.legend(fontsize=7)
    for ax in axes[:n]:
        ax.set_ylabel("tokens/s (prefill included)")
        ax.grid(alpha=0.3)
    ax2 = axes[n]
    if not frame.empty and frame["tokens_per_s"].notna().any():
        fr = frame[frame["tokens_per_s"].notna()]
        fr = fr.assign(series_kind=[series(a, t) for a, t in zip(fr["alg"], fr["tau"])])
        for kind, g in fr.groupby("series_kind", sort=False):
            ax2.scatter(g["tpf"].astype(float), g["tokens_per_s"].astype(float),
                        label=series_label(kind), marker=_MARKERS.get(kind, "o"))
        ax2.legend(fontsize=7)
    ax2.set_xlabel("TPF (tokens per forward)")
    ax2.set_ylabel("tokens/s per cell (prefill included)")
    ax2.set_title("Wall-clock throughput vs TPF")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, dpi=110)


def _figure_claim(frame: pd.DataFrame, models: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """The paper's claim, Fig. 1(d)-style: accuracy against TPF for every decoder of each SDLM model, with its AR
    baseline as a point at TPF 1 and its Wilson 95% interval as a band; SDLM points carry their Wilson intervals
    and, beside them, the paired McNemar p-value against the baseline on the same problems."""
    plt = _pyplot()
    f = frame[frame["accuracy"].notna() & frame["tpf"].notna()] if not frame.empty else frame
    pairs = [] if f.empty else [(m, (models.get(m) or {}).get("baseline")) for m in dict.fromkeys(f["model"])
                                if (models.get(m) or {}).get("kind") == "sdlm" and (models.get(m) or {}).get("baseline")]
    panels = [(m, base, b) for m, base in pairs for b in _bench_columns(f[f["model"] == m])
              if not f[(f["model"] == base) & (f["alg"] == "ar") & (f["benchmark"] == b)].empty]
    if not panels:
        _placeholder_figure(path, "no SDLM model with an AR baseline cell\n(models.<key>.baseline)")
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.6), squeeze=False)
    for ax, (model, base, bench) in zip(axes[0], panels):
        ar = f[(f["model"] == base) & (f["alg"] == "ar") & (f["benchmark"] == bench)].iloc[0]
        sub = f[(f["model"] == model) & (f["benchmark"] == bench)].sort_values("tpf")
        xs = [1.0] + [float(x) for x in sub["tpf"]]
        lo_x, hi_x = min(xs) - 0.1, max(xs) + 0.25
        if not missing(ar.get("acc_lo")):
            ax.axhspan(float(ar["acc_lo"]), float(ar["acc_hi"]), color="grey", alpha=0.18,
                       label=f"{model_label(base, models)} AR, 95% interval")
        ax.plot([1.0], [float(ar["accuracy"])], marker="D", color="black", linestyle="none",
                label=f"{model_label(base, models)} AR")
        placer_points = []
        for r in sub.itertuples():
            kind = series(r.alg, r.tau)
            err = None
            if not missing(getattr(r, "acc_lo", None)):
                err = [[float(r.accuracy) - float(r.acc_lo)], [float(r.acc_hi) - float(r.accuracy)]]
            ax.errorbar([float(r.tpf)], [float(r.accuracy)], yerr=err, marker=_MARKERS.get(kind, "o"), capsize=3,
                        linestyle="none", label=decoding_label(r.alg, r.tau))
            p = getattr(r, "mcnemar_p", None)
            if not missing(p):
                placer_points.append((f"p={float(p):.2g}", float(r.tpf), float(r.accuracy)))
        vals = [float(ar["accuracy"])] + [float(v) for v in sub["accuracy"]]
        vals += [float(v) for v in (ar.get("acc_lo"), ar.get("acc_hi")) if not missing(v)]
        ax.set_ylim(*_accuracy_limits(vals))
        ax.set_xlim(lo_x, hi_x)
        ax.set_title(f"{model_label(model, models)}: {bench}", fontsize=9)
        ax.set_xlabel("TPF (tokens per forward)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        fig.canvas.draw()
        placer = _LabelPlacer(ax)
        for text, x, y in placer_points:
            placer.add(text, x, y, "dimgrey")
        # below the axes: inside, it hid points (a collapsed retrofit sits in the lower left corner)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.suptitle("Accuracy against tokens per forward\nAR baseline band; labels: paired McNemar p vs the baseline",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi=110)


def _figure_tpf_steps(curves: pd.DataFrame, models: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    plt = _pyplot()
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
            ax.plot(gk["step"], gk["tpf"], marker="o", markersize=4, color=colour[key], label=curve_label(key),
                    linestyle="--" if key == "self_speculative" else "-")
        n_p, mnt = g["n_prompts"].dropna(), g["max_new_tokens"].dropna()
        sub = f"{int(n_p.iloc[0])} prompts x {int(mnt.iloc[0])} new tokens" if len(n_p) and len(mnt) else ""
        last = g.loc[g["step"].idxmax()]
        secs = f", {last['train_seconds']:.0f} s at step {int(last['step'])}" if not missing(last["train_seconds"]) else ""
        ax.set_title(f"{model_label(model, models)}\n{sub}{secs}", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("TPF (tokens per forward)")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        loss = g.drop_duplicates("step").sort_values("step")
        loss = loss[loss["heldout_loss_pos0"].notna()] if "heldout_loss_pos0" in loss else loss.iloc[:0]
        if not loss.empty:  # the health signal beside the speed: TPF can rise while answers are lost
            ax2 = ax.twinx()
            line, = ax2.plot(loss["step"], loss["heldout_loss_pos0"], marker="s", markersize=3, color="grey",
                             linestyle=":", label="held-out next-token loss")
            ax2.set_ylabel("held-out loss, block index 0", fontsize=8)
            handles, labels = handles + [line], labels + [line.get_label()]
        ax.legend(handles, labels, fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    fig.suptitle("TPF on held-out prompts during retrofit training\n(grey: their next-token loss)", fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi=110)
