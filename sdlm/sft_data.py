"""SFT (chat) records for retrofits: a JSONL of chat records, or GSM8K train rewritten as chat.

A chat record is ``{"messages": [{"role": ..., "content": ...}, ...]}`` with at least one assistant turn.
GSM8K train becomes the paper's evaluation format (spec section 6): system "You are a helpful
assistant.", the question plus the boxed-answer instruction, and the reference solution with its
``<<...>>`` calculator annotations removed and the final ``#### N`` rewritten as ``\\boxed{N}`` -- so a
retrofit on it learns to answer the way the benchmark prompts ask.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

SYSTEM_PROMPT = "You are a helpful assistant."
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_CALC = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"^####\s*(.+?)\s*$", re.MULTILINE)


class DataError(ValueError):
    """Unusable SFT data input (missing file/setting, malformed line); one line for a user."""


def gsm8k_solution(answer: str) -> str:
    """GSM8K reference solution -> assistant text: annotations dropped, ``#### N`` -> ``\\boxed{N}``."""
    text = _CALC.sub("", answer)
    m = list(_FINAL.finditer(text))
    if not m:
        return text.strip()
    last = m[-1]
    return (text[: last.start()] + "\\boxed{" + last.group(1) + "}" + text[last.end():]).strip()


def gsm8k_record(question: str, answer: str) -> dict[str, Any]:
    """One GSM8K item as a chat record in the paper's 0-shot boxed format."""
    return {"messages": [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question + "\n" + BOXED_INSTRUCTION},
        {"role": "assistant", "content": gsm8k_solution(answer)},
    ]}


def _read_jsonl(path: Path, limit: int | None) -> list[tuple[int, Any]]:
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if limit is not None and len(out) >= limit:
                break
    return out


def gsm8k_train_records(path: str | os.PathLike | None = None, *, limit: int | None = None) -> list[dict[str, Any]]:
    """GSM8K train as chat records, from ``path`` or ``$SDLM_DATA_DIR/gsm8k/train.jsonl``."""
    if path is None:
        root = os.environ.get("SDLM_DATA_DIR")
        if not root:
            raise DataError("SDLM_DATA_DIR is not set: point it at a folder holding gsm8k/train.jsonl")
        path = Path(root) / "gsm8k" / "train.jsonl"
    recs = []
    for lineno, obj in _read_jsonl(Path(path), limit):
        if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not isinstance(obj.get("answer"), str):
            raise DataError(f"{path}:{lineno}: a GSM8K line needs string 'question' and 'answer'")
        recs.append(gsm8k_record(obj["question"], obj["answer"]))
    return recs


def read_chat_jsonl(path: str | os.PathLike, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Chat records from a JSONL file (one ``{"messages": [...]}`` per line); shape is checked here,
    content (e.g. empty responses) later by :mod:`sdlm.nsp`, which skips and counts bad records."""
    recs = []
    for lineno, obj in _read_jsonl(Path(path), limit):
        if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
            raise DataError(f"{path}:{lineno}: expected an object with a 'messages' list")
        recs.append(obj)
    if not recs:
        raise DataError(f"data file {str(path)!r} has no records")
    return recs


def load_sft_records(spec: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    """``"gsm8k"`` -> GSM8K train as chat; anything else is a path to a chat JSONL."""
    if spec == "gsm8k":
        return gsm8k_train_records(limit=limit)
    return read_chat_jsonl(spec, limit=limit)
