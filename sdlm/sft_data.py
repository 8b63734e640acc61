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
from collections.abc import Sequence
from typing import Any

SYSTEM_PROMPT = "You are a helpful assistant."  # the SDLM authors' system turn (spec section 6), everywhere
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
#: OpenCompass sanitized_mbpp_mdblock's user turn (the MBPP task and the SFT prompts built from MBPP train)
MBPP_TEMPLATE = (
    "You are an expert Python programmer, and here is your task:\n{text}\n"
    "Your code should pass these tests:\n\n{tests}\n"
)
#: OpenCompass humaneval_openai_sample_evals_gen_dcae0e's user turn before the problem's prompt (the HumanEval
#: task and the HumanEval-format SFT prompts built from MBPP train)
HUMANEVAL_INSTRUCTION = (
    "Read the following function signature and docstring, and fully implement the function described. "
    "Your response should only contain the code for this function.\n"
)
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


def gsm8k_messages(question: str) -> list[dict[str, str]]:
    """The paper's 0-shot boxed GSM8K prompt as chat turns (system + user), ready for a chat template."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question + "\n" + BOXED_INSTRUCTION}]


def gsm8k_record(question: str, answer: str) -> dict[str, Any]:
    """One GSM8K item as a chat record in the paper's 0-shot boxed format."""
    return {"messages": [*gsm8k_messages(question), {"role": "assistant", "content": gsm8k_solution(answer)}]}


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


def _benchmark_lines(name: str, limit: int | None) -> list[tuple[int, Any]]:
    """(line number, record) of a benchmark's train split via :func:`sdlm.data.load_records`: the data
    directory (``SDLM_DATA_DIR``) when set, else the hub; a clear DataError when neither has it."""
    from sdlm.data import DataNotFoundError, load_records

    try:
        recs = load_records(name, split="train")
    except DataNotFoundError as e:
        raise DataError(str(e)) from None
    return list(enumerate(recs[:limit] if limit is not None else recs, 1))


def gsm8k_train_records(path: str | os.PathLike | None = None, *, limit: int | None = None) -> list[dict[str, Any]]:
    """GSM8K train as chat records, from ``path`` or the data directory / hub (sdlm.data)."""
    lines = _read_jsonl(Path(path), limit) if path is not None else _benchmark_lines("gsm8k", limit)
    recs = []
    for lineno, obj in lines:
        if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not isinstance(obj.get("answer"), str):
            raise DataError(f"{path}:{lineno}: a GSM8K line needs string 'question' and 'answer'")
        recs.append(gsm8k_record(obj["question"], obj["answer"]))
    return recs


def math_train_records(*, limit: int | None = None) -> list[dict[str, Any]]:
    """MATH train (7,500 problems, all subjects) as chat records in the same boxed format: the reference
    solutions already end in ``\\boxed{...}``."""
    recs = []
    for lineno, obj in _benchmark_lines("math_train", limit):
        if not isinstance(obj, dict) or not isinstance(obj.get("problem"), str) or not isinstance(obj.get("solution"), str):
            raise DataError(f"MATH train record {lineno}: needs string 'problem' and 'solution'")
        recs.append({"messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": obj["problem"] + "\n" + BOXED_INSTRUCTION},
            {"role": "assistant", "content": obj["solution"].strip()},
        ]})
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


def mbpp_train_records(*, limit: int | None = None) -> list[dict[str, Any]]:
    """MBPP validation + train (task_ids 511-974; never the test problems 11-510) as chat: the MBPP task's own
    0-shot user turn (:data:`MBPP_TEMPLATE`) and the reference code in a ```python block -- prompts for code
    retrofits, usually self-distilled (the base model's own answers replace the references)."""
    from sdlm.data import DataNotFoundError, load_records

    try:
        recs = load_records("mbpp", "validation") + load_records("mbpp", "train")
    except DataNotFoundError as e:
        raise DataError(str(e)) from None
    out = []
    for r in recs[:limit] if limit is not None else recs:
        tests = "\n".join(r["test_list"])
        out.append({"messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": MBPP_TEMPLATE.format(text=r["text"], tests=tests)},
            {"role": "assistant", "content": "```python\n" + r["code"].replace("\r\n", "\n").strip() + "\n```"},
        ]})
    return out


def _doctest_line(test: str) -> str:
    """``assert f(2) == 4`` -> ``>>> f(2)\\n    4`` (HumanEval's docstring examples); other asserts as ``... -> True``."""
    import ast

    try:
        node = ast.parse(test.strip()).body[0]
    except (SyntaxError, IndexError):
        return ""
    if not isinstance(node, ast.Assert):
        return ""
    t = node.test
    if isinstance(t, ast.Compare) and len(t.ops) == 1 and isinstance(t.ops[0], ast.Eq):
        return f"    >>> {ast.unparse(t.left)}\n    {ast.unparse(t.comparators[0])}\n"
    return f"    >>> {ast.unparse(t)}\n    True\n"


def mbpp_humaneval_prompt(record: dict[str, Any]) -> str | None:
    """An MBPP problem written as a HumanEval prompt: the reference solution's signature of the tested function,
    a docstring with the task text and the tests as examples. None when the code has no top-level ``def`` of
    the tested function (a class method, a lambda)."""
    from sdlm.scoring.code import mbpp_entry_point

    entry = mbpp_entry_point(record)
    code = record["code"].replace("\r\n", "\n")
    m = re.search(rf"^def {re.escape(entry)}\(.*?\)\s*(?:->[^:\n]*)?:", code, re.M | re.S) if entry else None
    if m is None:
        return None
    examples = "".join(_doctest_line(t) for t in record["test_list"])
    return f'{m.group(0).rstrip()}\n    """ {record["text"].strip()}\n{examples}    """\n'


def mbpp_humaneval_records(*, limit: int | None = None) -> list[dict[str, Any]]:
    """MBPP validation + train (never the test problems) in the HumanEval task's format
    (:data:`HUMANEVAL_INSTRUCTION` + :func:`mbpp_humaneval_prompt`), for retrofits evaluated on HumanEval; the
    reference code is the answer until self-distillation replaces it. Problems without a top-level ``def`` of
    the tested function are left out, and counted on stderr."""
    import sys

    from sdlm.data import DataNotFoundError, load_records

    try:
        recs = load_records("mbpp", "validation") + load_records("mbpp", "train")
    except DataNotFoundError as e:
        raise DataError(str(e)) from None
    out, left_out = [], 0
    for r in recs:
        prompt = mbpp_humaneval_prompt(r)
        if prompt is None:
            left_out += 1
            continue
        out.append({"messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": HUMANEVAL_INSTRUCTION + prompt},
            {"role": "assistant", "content": "```python\n" + r["code"].replace("\r\n", "\n").strip() + "\n```"},
        ]})
    if left_out:
        print(f"[sdlm] mbpp_humaneval: {left_out} of {len(recs)} MBPP train/validation problems have no top-level "
              "def of the tested function and are left out", file=sys.stderr)
    return out[:limit] if limit is not None else out


#: SFT sources by name (a retrofit's --data, a pipeline sft_data component); anything else is a chat JSONL path
BUILTIN_SOURCES = {"gsm8k": gsm8k_train_records, "math": math_train_records, "mbpp": mbpp_train_records,
                   "mbpp_humaneval": mbpp_humaneval_records}


def load_sft_records(spec: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    """A built-in source (:data:`BUILTIN_SOURCES`: GSM8K / MATH / MBPP train as chat) or a chat JSONL path."""
    if spec in BUILTIN_SOURCES:
        return BUILTIN_SOURCES[spec](limit=limit)
    return read_chat_jsonl(spec, limit=limit)


def last_assistant_turn(msgs: Sequence[dict[str, Any]]) -> int:
    """Index of a chat's last assistant turn (what self-distillation replaces and a prompt stops before)."""
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
    if last is None:
        raise ValueError("a chat record needs an assistant turn to replace")
    return last


def chat_prompt(tokenizer: Any, record: dict[str, Any]) -> str:
    """The record's conversation up to (not including) its last assistant turn, templated for generation."""
    msgs = record["messages"]
    return tokenizer.apply_chat_template(msgs[: last_assistant_turn(msgs)], tokenize=False, add_generation_prompt=True)
