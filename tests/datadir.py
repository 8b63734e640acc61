"""Where the tests find the benchmark data: ``SDLM_DATA_DIR``, else ``../shared/data`` beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> str | None:
    d = os.environ.get("SDLM_DATA_DIR") or str(REPO.parent / "shared" / "data")
    return d if Path(d, "gsm8k", "test.jsonl").is_file() else None


DATA = _data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="benchmark data not found: set SDLM_DATA_DIR")
