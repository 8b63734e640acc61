"""Where our lm-eval task YAMLs live, and task-name validation with a readable error. No torch.

lm-eval's own message for a typo is a ``KeyError("Spec 'x' is not a registered task/group/tag name or
valid YAML path")`` raised deep inside ``TaskManager.load``; `resolve_tasks` checks names up front and raises
``ValueError("unknown task 'x'; did you mean ...? available: ...")`` instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["SDLM_TASKS", "tasks_path", "task_manager", "resolve_tasks"]

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


def resolve_tasks(names: str | Iterable[str]) -> list[str]:
    """Validate task names (a comma-separated string or a list) and return them as a list.

    The check is :func:`sdlm.config_checks.check_task_names`: our own tasks are read from the task folder in
    milliseconds; only a name we do not know consults lm-eval's stock-task index. Raises ``ValueError``
    naming the unknown task, close matches and our tasks."""
    from sdlm.config_checks import check_task_names  # stdlib + yaml: no lm-eval import for our own names

    if isinstance(names, str):
        names = names.split(",")
    names = list(names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ValueError(f"task names must be strings, got {bad!r}")
    wanted = [n.strip() for n in names if n.strip()]
    if not wanted:
        raise ValueError(f"no task given; available: {', '.join(SDLM_TASKS)}")
    check_task_names(wanted, tasks_path())
    return wanted
