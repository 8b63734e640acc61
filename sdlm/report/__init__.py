"""Aggregation and paper-style report: cell JSONs -> one pandas frame -> tables and figures. No torch.

Input: evaluation cells written by :mod:`sdlm.evaluate` (``sdlm eval``), laid out by the pipeline as
``results/cells/<model>/<task>/<decoder>/cell.json`` where ``<decoder>`` is ``ar``,
``<alg>_D<D>_tau<tau>`` or ``self_speculative_D<D>``. A ``cell.json`` is a JSON list of one summary row per
task (its existence means the cell is complete; directories without it are ignored).

* :func:`aggregate` -> the long frame, one row per (cell, task): model, task, benchmark, alg, D, tau,
  accuracy (primary metric x 100), TPF, tokens/s, all lm-eval metrics (``metric:<name>``), and provenance
  columns (cell path, git commit, config hash, versions, hardware, seed, time).
* :func:`batch_frame` -> one row per decoded batch (from ``stats_<task>.jsonl``): tokens/s vs batch size.
* :mod:`sdlm.report.gather`: aggregation writes the frame, the batches, every problem's score and the load while
  each cell ran (``cells.csv``, ``batches.csv``, ``problems.csv``, ``load.csv``), so that rendering reads only
  those files; :mod:`sdlm.report.outputs` lists every file of the report folder once (the pipeline's rules
  declare them from it); :mod:`sdlm.report.labels` holds every label and caption.
* :func:`table1` (accuracy per benchmark, TPF in parentheses, per model/D/tau -- the paper's Table 1),
  :func:`table3` (AR vs confidence vs self-speculative -- Table 3) and :func:`speed_table` (the three speed
  numbers of the honest-throughput rules: TPF, end-to-end tokens/s, decode tokens/s, plus the speed-up
  over the AR baseline measured on the same hardware). Published numbers
  (``config/paper_numbers.csv``) are placed in a ``paper`` row right under the measured row of the
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

import importlib
from typing import Any

#: name -> the submodule that defines it. Imported when first used (PEP 562), so that the pipeline can read
#: :mod:`sdlm.report.outputs` (stdlib) while it builds its DAG without importing pandas.
_WHERE = {
    **dict.fromkeys(["BENCH_ORDER", "COLUMNS", "PAPER_NUMBERS", "add_speedup", "aggregate", "batch_frame", "find_cells",
                     "load_models", "load_paper_numbers", "load_tpf_curves", "read_frame", "training_files",
                     "wilson_interval"], "frame"),
    **dict.fromkeys(["AGGREGATE_OUTPUTS", "FIGURES", "FORMATS", "REPORT_FILES", "REPORT_OUTPUTS", "TABLES"], "outputs"),
    **dict.fromkeys(["Gathered", "gather", "read_gathered", "write_gathered"], "gather"),
    **dict.fromkeys(["curve_label"], "labels"),
    **dict.fromkeys(["report", "write_report"], "render"),
    **dict.fromkeys(["speed_table", "table1", "table3"], "tables"),
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'sdlm.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
