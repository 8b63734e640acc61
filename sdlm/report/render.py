"""Rendering: every table as Markdown, LaTeX and HTML, the figures and provenance.md, into one folder whose file
names never change (:data:`sdlm.report.outputs.REPORT_FILES`). No torch."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .figures import _figure_claim, _figure_throughput, _figure_tau, _figure_tpf_steps
from .frame import add_speedup, batch_frame, load_models, load_paper_numbers, load_tpf_curves, training_files, with_optional
from .gather import gather, write_gathered
from .labels import CAPTIONS
from .outputs import FIGURES, FORMATS, REPORT_FILES, TABLES
from .paired import add_load, add_paired
from .tables import speed_table, table1, table3


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
        # a fixed id: pandas' default is a random uuid, so the same report differed byte-wise on every run
        table = df.style.hide(axis="index").set_caption(caption).set_uuid("sdlm").to_html()
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
                 training: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike] | None = None,
                 problems: pd.DataFrame | None = None, loads: pd.DataFrame | None = None) -> list[Path]:
    """Render every table (md, tex, html), the figures and ``provenance.md`` into ``out``; returns the paths
    (always all of :data:`REPORT_FILES`). ``training``: the checkpoints' ``sdlm_training.json`` files for the
    TPF-vs-steps figure (:func:`load_tpf_curves`; ``None``: those found beside the frame's checkpoints).
    ``batches``, ``problems``, ``loads``: what aggregation gathered (:mod:`sdlm.report.gather`); each one not
    given is gathered from the frame's cells now."""
    from sdlm.provenance import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = models or {}
    paper = paper if paper is not None else load_paper_numbers(None)
    frame = add_load(add_paired(with_optional(add_speedup(frame, models)), models, problems), loads)
    tables = {"table1": lambda: table1(frame, paper, models), "table3": lambda: table3(frame, paper, models, tau=table3_tau),
              "speed": lambda: speed_table(frame, models)}
    notes = _notes(frame)
    render = {"md": lambda df, cap: _markdown(df, cap, notes), "tex": _latex, "html": lambda df, cap: _html(df, cap, notes)}
    written = []
    for name in TABLES:
        df = tables[name]()
        written += [atomic_write_text(out / f"{name}.{fmt}", render[fmt](df, CAPTIONS[name])) for fmt in FORMATS]
    figures = {
        "fig_tau_ablation.png": lambda path: _figure_tau(frame, paper, models, path),
        "fig_throughput.png": lambda path: _figure_throughput(
            frame, batches if batches is not None else batch_frame(frame), models, path),
        "fig_tpf_vs_steps.png": lambda path: _figure_tpf_steps(
            load_tpf_curves(training if training is not None else training_files(frame)), models, path),
        "fig_claim.png": lambda path: _figure_claim(frame, models, path),
    }
    for name in FIGURES:
        figures[name](out / name)
        written.append(out / name)
    written.append(atomic_write_text(out / "provenance.md", _provenance_md(frame)))
    assert [p.name for p in written] == list(REPORT_FILES), "sdlm.report.outputs lists what is written"
    return written


def report(cells: str | os.PathLike | Iterable[str | os.PathLike], out: str | os.PathLike, *,
           paper: str | os.PathLike | None = None, models: str | os.PathLike | Mapping | None = None,
           table3_tau: float = 0.98,
           training: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike] | None = None) -> pd.DataFrame:
    """The whole report: gather ``cells`` into ``out`` (``cells.csv``, ``batches.csv``, ``problems.csv``,
    ``load.csv``: :mod:`sdlm.report.gather`) and render it (``training``: see :func:`write_report`)."""
    g = gather(cells)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_gathered(g, out)
    write_report(g.cells, out, paper=load_paper_numbers(paper), models=load_models(models), batches=g.batches,
                 table3_tau=table3_tau, training=training, problems=g.problems, loads=g.loads)
    return g.cells
