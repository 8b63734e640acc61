"""torch's CPU threads for a job: as many as the cores this process may use, or what the job was given.

More threads than free cores make torch's threads wait on each other (measured 0.4-0.9 tokens/s instead of 33-40
on 2 shared cores), so every ``sdlm`` command sets them explicitly. torch is imported only when they are set.
"""

from __future__ import annotations

import os

__all__ = ["set_threads", "usable_cores"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(n: int | None) -> int:
    """torch's intra-op threads: ``n``, else the usable cores; returns the number set."""
    import torch

    n = n or usable_cores()
    torch.set_num_threads(n)
    return n
