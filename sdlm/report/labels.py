"""Every text the report shows for a thing, in one place: model labels, decoder and series labels, the tau column,
TPF-probe curve labels, the busy-machine mark and the table captions. No torch.

Decoders are named by :mod:`sdlm.decoders` (``label_of``), benchmarks by the task table (:mod:`sdlm.tasks`,
``Task.label``); this module applies those names to the report's rows, series and curves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from sdlm.decoders import is_one_token, label_of, probe_key_label

__all__ = ["BUSY_MARK", "CAPTIONS", "busy_mark", "curve_label", "decoding_label", "missing", "model_label",
           "series", "series_label", "tau_text"]

#: beside tok/s measured while the machine was busier than its cores (sdlm.report.paired.add_load)
BUSY_MARK = "*"


def missing(v: Any) -> bool:
    """None, NaN or pandas' NA: a blank cell of the frame."""
    return v is None or pd.isna(v)


def model_label(model: str, models: Mapping[str, Mapping[str, Any]]) -> str:
    """A model key's label (``label`` in the models file), else the key."""
    return str((models.get(model) or {}).get("label") or model)


def decoding_label(alg: str, tau: Any) -> str:
    """``AR``, ``1 tok/step``, ``self-spec``, ``conf 0.98`` (:func:`sdlm.decoders.label_of`; a blank tau: none)."""
    return label_of(alg, None if missing(tau) else float(tau))


def tau_text(alg: str, tau: Any) -> str:
    """The tau column: the threshold of a tau sweep; blank for the one-token-per-step reference (its tau is any
    value > 1: its Decoding column says "1 tok/step") and for decoders without one."""
    if missing(tau) or is_one_token(alg, float(tau)):
        return ""
    return f"{float(tau):g}"


def busy_mark(busy: Any) -> str:
    """:data:`BUSY_MARK` for a cell measured on a busy machine, else nothing."""
    return BUSY_MARK if busy is not None and not missing(busy) and bool(busy) else ""


def series(alg: str, tau: Any) -> str:
    """The series a cell belongs to in a figure: its algorithm, except that one-token-per-step reference cells
    (confidence decoding with tau > 1) are their own series, never a point of the tau sweep."""
    return "one_token" if is_one_token(alg, None if missing(tau) else float(tau)) else alg


def series_label(kind: str) -> str:
    """A figure series' legend text (:func:`series`)."""
    return "1 tok/step" if kind == "one_token" else decoding_label(kind, None)


def curve_label(key: str) -> str:
    """A TPF-probe key's legend text: ``prob_conf_tau0.98`` -> ``conf 0.98``; ``self_speculative`` -> ``self-spec``;
    other keys as they are."""
    return probe_key_label(key)


CAPTIONS = {
    "table1": "Accuracy (%) per benchmark with its Wilson 95% interval [lo, hi], TPF (tokens per forward) in "
              "parentheses; paper rows: published numbers of the same configuration; Avg: mean over the columns shown",
    "table3": "AR vs confidence vs one-token-per-step vs self-speculative decoding: accuracy (%) [Wilson 95% "
              "interval], TPF in parentheses; Avg: mean over the columns shown",
    "speed": "Speed and fidelity per cell: accuracy (%) [Wilson 95% interval]; won/lost vs AR: problems the cell "
             "solves and its AR baseline does not / the reverse, on the same problems, with the exact McNemar p-value "
             "(–: no baseline cell); identical text % and same answer %: share of examples whose output (text; "
             "extracted final answer) equals one-token-per-step decoding of the same model and D (–: AR baselines, "
             "which have no such reference, and cells not compared); TPF, end-to-end tokens/s (prefill included), "
             "decode-only tokens/s, speed-up over the AR baseline (same hardware); * marks speed figures measured "
             "while the machine's load exceeded its cores (another job shared them)",
}
