"""A pipeline job ends when the Snakemake process that started it is gone (SIGKILLed, a lost node). Stdlib only.

An orphaned job would finish outputs that Snakemake has marked incomplete, and the README's recovery (unlock,
then the same command) would then refuse them. ``pipeline/rules/common.smk`` names its own process in
:data:`WORKFLOW_PID_ENV` (pid and start time: one process for good); every ``sdlm`` command calls
:func:`die_with_workflow`, whose thread SIGTERMs the job (so cleanup handlers still run) once that process is gone.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

__all__ = ["WORKFLOW_PID_ENV", "die_with_workflow", "process_start_time"]

WORKFLOW_PID_ENV = "SDLM_DIE_WITH"  # "pid:starttime" of the Snakemake process that started this job


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): with the pid, it names one process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def die_with_workflow() -> None:
    """Watch the workflow process named in :data:`WORKFLOW_PID_ENV` (if any) from a daemon thread; SIGTERM this
    process once it is gone."""
    spec = os.environ.get(WORKFLOW_PID_ENV)
    if not spec or ":" not in spec:
        return
    pid, start = spec.split(":", 1)
    if not pid.isdigit():
        return

    def watch() -> None:
        while process_start_time(int(pid)) == start:
            time.sleep(1.0)
        print(f"sdlm: the workflow process {pid} is gone; stopping this job", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="sdlm-die-with-workflow", daemon=True).start()
