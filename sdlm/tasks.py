"""Where our lm-eval task YAMLs live, and task-name validation with a readable error. No torch.

lm-eval's own message for a typo is a ``KeyError("Spec 'x' is not a registered task/group/tag name or
valid YAML path")`` raised deep inside ``TaskManager.load``; `resolve_tasks` checks names up front and raises
``ValueError("unknown task 'x'; did you mean ...? available: ...")`` instead.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["SDLM_TASKS", "tasks_path", "task_manager", "available_tasks", "resolve_tasks"]

#: The paper's benchmarks as our tasks (tasks/*.yaml); the tag ``sdlm_paper`` selects all of them.
SDLM_TASKS = (
    "gsm8k_sdlm",
    "math500_sdlm",
    "humaneval_sdlm",
    "humaneval_plus_sdlm",
    "mbpp_sdlm",
    "mbpp_full_sdlm",
    "mbpp_plus_sdlm",
    "gpqa_sdlm",
    "ifeval_sdlm",
)


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


def available_tasks(*, include_defaults: bool = False) -> list[str]:
    """Task, group and tag names that `resolve_tasks` accepts."""
    return list(task_manager(include_defaults=include_defaults).all_tasks)


def _is_yaml_file(name: str) -> bool:
    return Path(name).suffix in (".yaml", ".yml") and Path(name).is_file()


def resolve_tasks(names: str | Iterable[str], *, tm=None) -> list[str]:
    """Validate task names (a comma-separated string or a list) and return them as a list.

    Our own tasks are checked without indexing lm-eval's stock tasks; only a name we do not know triggers
    the full index (stock tasks are allowed, as a secondary column). Raises ``ValueError`` naming the
    unknown task, close matches and our tasks."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    wanted = [n for n in names if n]
    if not wanted:
        raise ValueError(f"no task given; available: {', '.join(SDLM_TASKS)}")
    ours = set(tm.all_tasks) if tm is not None else set(available_tasks(include_defaults=False))
    unknown = [n for n in wanted if n not in ours and not _is_yaml_file(n)]
    if unknown and tm is None:
        ours = set(available_tasks(include_defaults=True))
        unknown = [n for n in unknown if n not in ours]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, sorted(ours), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ";"
        raise ValueError(
            f"unknown task {name!r}{hint} available: {', '.join(SDLM_TASKS)}, the tag 'sdlm_paper', and "
            f"lm-eval's stock tasks (`lm-eval ls tasks`)"
        )
    return wanted
