"""Our benchmark tasks: every fact about one in a single table (:data:`TASKS`), where their lm-eval YAMLs live,
and task-name checks with readable errors. No torch; stdlib at import time (lm-eval only when it is needed).

:data:`TASKS` is what the rest of the package reads: the pipeline's config checks and ``sdlm lm-eval`` (which
names are ours, which run model-written code), ``sdlm.data`` (where a task's documents come from),
``sdlm.fidelity`` (what a task's final answer is), the report (its metric, its Table-1 column and label). A
test checks the table against ``tasks/*.yaml``, so a task is added in two places that cannot drift apart: its
YAML and its row here.

Names: ours are the keys of :data:`TASKS` and the tag :data:`PAPER_TAG`. A name that looks like ours (the
``_sdlm`` suffix, or a near miss of one of ours) but is not in the table is an error everywhere
(:class:`UnknownTaskError`), never a silent default. Any other name is one of lm-eval's stock tasks (checked
against lm-eval's index by :func:`check_task_names` before anything runs); :func:`task_info` describes such a task
as what it is -- ``kind="stock"``: its own name as column, the first metric lm-eval reports, and lm-eval's
filtered response as its answer.

lm-eval's own message for a typo is a ``KeyError("Spec 'x' is not a registered task/group/tag name or
valid YAML path")`` raised deep inside ``TaskManager.load``; :func:`resolve_tasks` checks names up front.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PAPER_TAG", "SDLM_TASKS", "TASKS", "Answer", "Task", "UnknownTaskError", "check_task_names",
           "code_tasks", "is_ours", "resolve_tasks", "stock_task_names", "task_info", "task_manager", "tasks_path",
           "table1_columns"]


class UnknownTaskError(ValueError):
    """A task name that is neither ours nor lm-eval's (one line, naming it and what is available)."""


# ------------------------------------------------------------------------------------------ answers
# What "the final answer" of a reply is, per task: the extraction the task's metric applies (sdlm.scoring), used
# by sdlm.fidelity to compare a decoder's answers with one-token-per-step decoding's.
def _gsm8k(text: str, doc: Mapping) -> Any:
    from sdlm.scoring.answers import gsm8k_extract

    value, _ = gsm8k_extract(text)
    return None if value is None else str(value)


def _math(text: str, doc: Mapping) -> Any:
    from sdlm.scoring.answers import last_boxed

    box = last_boxed(text)
    return None if box is None else "".join(box.split())


def _humaneval(text: str, doc: Mapping) -> Any:
    from sdlm.scoring.code import extract_code

    return extract_code(text, doc.get("entry_point"))


def _mbpp(text: str, doc: Mapping) -> Any:
    from sdlm.scoring.code import extract_code, mbpp_entry_point

    return extract_code(text, mbpp_entry_point(doc))


def _gpqa(text: str, doc: Mapping) -> Any:
    from sdlm.scoring.choice import first_option

    return first_option(text, "ABCD")


def _response(text: str, doc: Mapping) -> Any:
    return text


@dataclass(frozen=True)
class Answer:
    """A task's final answer: what it is (written into ``fidelity.json``) and how to read it from a reply."""

    what: str
    extract: Callable[[str, Mapping], Any]


_BOXED_VALUE = Answer("value of the last \\boxed{} (sdlm.scoring.answers.gsm8k_extract, strict)", _gsm8k)
_BOXED = Answer("content of the last \\boxed{}, whitespace removed (sdlm.scoring.answers.last_boxed)", _math)
_PROGRAM = Answer("extracted program (sdlm.scoring.code.extract_code)", _humaneval)
_MBPP_PROGRAM = Answer("extracted program (sdlm.scoring.code.extract_code)", _mbpp)
_LETTER = Answer("option letter, '' if none (sdlm.scoring.choice.first_option, OpenCompass's pattern order)", _gpqa)
_REPLY = Answer("the raw response text (IFEval's checkers read the whole reply)", _response)


# ------------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Task:
    """One task. ``kind``: math | code | choice | instructions (ours), stock (lm-eval's); ``metric``: the lm-eval
    ``metric,filter`` key the report's accuracy is (None: the first metric lm-eval reports); ``answer``: see
    :class:`Answer` (None: lm-eval's filtered response); ``data``: ``(sdlm.data benchmark, split)`` its
    documents come from; ``column``: its place among the report's benchmark columns (Table 1's order; None:
    after them, by label); ``label``: the column's heading."""

    name: str
    kind: str
    metric: str | None
    answer: Answer | None
    data: tuple[str, str] | None
    column: int | None
    label: str

    @property
    def runs_code(self) -> bool:
        """The task executes model-written programs (``unsafe_code: true`` in its YAML; our sandbox runs them)."""
        return self.kind == "code"

    @property
    def is_ours(self) -> bool:
        return self.kind != "stock"


#: our tasks, in the documented order (README's table); the tag :data:`PAPER_TAG` selects all of them
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("gsm8k_sdlm", "math", "exact_match,none", _BOXED_VALUE, ("gsm8k", "test"), 0, "GSM8K"),
    Task("math500_sdlm", "math", "math_verify,none", _BOXED, ("math500", "test"), 1, "MATH"),
    Task("humaneval_sdlm", "code", "pass_at_1,none", _PROGRAM, ("humaneval", "test"), 3, "HumanEval"),
    Task("humaneval_plus_sdlm", "code", "pass_at_1,none", _PROGRAM, ("humaneval_plus", "test"), 4, "HumanEval+"),
    Task("mbpp_sdlm", "code", "pass_at_1,none", _MBPP_PROGRAM, ("mbpp_sanitized", "test"), 5, "MBPP"),
    # not in the paper (the paper's MBPP is the sanitized set): after its eight columns
    Task("mbpp_full_sdlm", "code", "pass_at_1,none", _MBPP_PROGRAM, ("mbpp", "test"), 8, "MBPP-full"),
    Task("mbpp_plus_sdlm", "code", "pass_at_1,none", _MBPP_PROGRAM, ("mbpp_plus", "test"), 6, "MBPP+"),
    Task("gpqa_sdlm", "choice", "exact_match,none", _LETTER, ("gpqa_diamond", "train"), 2, "GPQA"),
    # OpenCompass's summarizers report prompt-level strict accuracy for IFEval (an inference, README)
    Task("ifeval_sdlm", "instructions", "prompt_level_strict_acc,none", _REPLY, ("ifeval", "train"), 7, "IFEval"),
)}
PAPER_TAG = "sdlm_paper"
SDLM_TASKS = tuple(TASKS)  # the names alone (older import path)


def is_ours(name: str) -> bool:
    """One of our tasks, or the tag that selects them all."""
    return name in TASKS or name == PAPER_TAG


def _looks_like_ours(name: str) -> list[str] | None:
    """Close matches among our names when ``name`` looks like one of ours but is not (None: it does not)."""
    close = difflib.get_close_matches(name, sorted([*TASKS, PAPER_TAG]), n=3, cutoff=0.8)
    return close if (name.endswith("_sdlm") or close) else None


def _listing() -> str:
    """Our names for an error message: the tasks in the documented order, then the tag."""
    return ", ".join([*TASKS, PAPER_TAG])


def task_info(name: str) -> Task:
    """The row of task ``name``. A name that looks like ours but is not in :data:`TASKS` is an
    :class:`UnknownTaskError`; any other name is an lm-eval stock task (``kind="stock"``, see the module doc)."""
    if name in TASKS:
        return TASKS[name]
    close = _looks_like_ours(name)
    if close is not None:
        hint = f"; did you mean {', '.join(close)}?" if close else ";"
        raise UnknownTaskError(f"unknown task {name!r}{hint} available: {_listing()}")
    return Task(name, "stock", None, None, None, None, name)


def code_tasks() -> set[str]:
    """Our task names that execute model-written code (the tag included, since it selects them)."""
    names = {t.name for t in TASKS.values() if t.runs_code}
    return names | {PAPER_TAG} if names else names


def table1_columns() -> list[str]:
    """The report's benchmark columns in Table 1's order (the labels of our tasks by ``column``)."""
    return [t.label for t in sorted((t for t in TASKS.values() if t.column is not None), key=lambda t: t.column)]


# ------------------------------------------------------------------------------------------ the YAMLs
def tasks_path() -> Path:
    """The ``tasks/`` directory of this checkout (``SDLM_TASKS_DIR`` overrides it)."""
    override = os.environ.get("SDLM_TASKS_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[1] / "tasks"
    if not path.is_dir():
        raise FileNotFoundError(f"task directory {path} not found (set SDLM_TASKS_DIR to the repo's tasks/)")
    return path


def task_manager(*, include_defaults: bool = True, metadata: dict[str, Any] | None = None):
    """An lm-eval ``TaskManager`` that knows our tasks (and, with ``include_defaults``, lm-eval's ~15k
    stock tasks, which takes seconds to index). ``metadata`` reaches our data loaders, e.g.
    ``{"sdlm_data_dir": "/data"}``."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_path()), include_defaults=include_defaults, metadata=metadata)


# ------------------------------------------------------------------------------------------ name checks
def stock_task_names() -> set[str]:
    """lm-eval's own task, group and tag names. Indexing them takes lm-eval ~26 s, so the names are kept in
    ``~/.cache/sdlm/lm_eval_tasks-<version>.json`` (rebuilt when the lm-eval version changes)."""
    from importlib import metadata

    version = metadata.version("lm_eval")
    cache = Path(os.environ.get("SDLM_CACHE_DIR") or "~/.cache/sdlm").expanduser() / f"lm_eval_tasks-{version}.json"
    try:
        return set(json.loads(cache.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    from lm_eval.tasks import TaskManager

    names = sorted(TaskManager(include_defaults=True).all_tasks)
    try:
        from sdlm.provenance import atomic_write_text

        atomic_write_text(cache, json.dumps(names))
    except OSError:
        pass  # a read-only home: the next run indexes again
    return set(names)


def check_task_names(names: Iterable[str]) -> None:
    """Task names: ours (:data:`TASKS`, in microseconds), else lm-eval's stock tasks. A name that is not ours but
    looks like one of ours (a ``_sdlm`` suffix, or a near miss) is a typo: refused at once, without building
    lm-eval's index (~26 s); only other names pay for that index (cached on disk). A task YAML file path passes
    as it is. :class:`UnknownTaskError` naming the task."""
    unknown = [n for n in names if not is_ours(n) and not (Path(n).suffix in (".yaml", ".yml") and Path(n).is_file())]
    for name in unknown:
        task_info(name)  # looks like ours: an error now
    if unknown:  # maybe a stock lm-eval task: only then look at lm-eval's index
        stock = stock_task_names()
        for name in unknown:
            if name not in stock:
                close = difflib.get_close_matches(name, sorted({*TASKS, PAPER_TAG} | stock), n=5, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ";"
                raise UnknownTaskError(f"unknown task {name!r}{hint} available: {_listing()}, and lm-eval's "
                                       "stock tasks (`sdlm lm-eval ls tasks`)")


def resolve_tasks(names: str | Iterable[str]) -> list[str]:
    """Validate task names (a comma-separated string or a list, :func:`check_task_names`) and return them as a
    list. ``ValueError`` naming the unknown task, close matches and our tasks."""
    if isinstance(names, str):
        names = names.split(",")
    names = list(names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ValueError(f"task names must be strings, got {bad!r}")
    wanted = [n.strip() for n in names if n.strip()]
    if not wanted:
        raise ValueError(f"no task given; available: {', '.join(TASKS)}")
    check_task_names(wanted)
    return wanted
