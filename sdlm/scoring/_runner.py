# The program side of `sdlm.scoring.sandbox`: run as ``python -I -c <_wire.py source + this source>`` inside
# the sandbox (bubblewrap, or the weaker in-process guard), never imported. No __future__ import here: this
# text follows _wire.py's in one source.
#
# 1. keeps private copies of stdin/stdout as the channel to the checker and points fds 0/1/2 at /dev/null;
# 2. reads one frame {program, memory_bytes, cpu_s, workdir, guard};
# 3. under root (privileged bubblewrap), switches to the program's own uid, which drops every capability;
#    sets resource limits (address space, CPU seconds, file size, no core files, threads) and, with ``guard``,
#    the in-process refusals (writes outside the working directory, process creation, signals, ctypes);
# 4. executes the program and says whether it loaded;
# 5. answers the checker's requests -- resolve names, call, getattr -- with plain data or refs, until told
#    to exit. It never reports a verdict: the checker runs the tests on its own side.

import builtins
import io
import json
import math
import os
import resource
import sys

_real_exit = os._exit


def _describe(exc):
    return describe(exc, "<program>", "program")  # describe: from _wire.py, whose text precedes this one


def _pdeathsig():
    """Die with the checker (SIGKILL) even where bubblewrap's --die-with-parent is not there (guard mode)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except Exception:  # noqa: BLE001 - not Linux
        pass


def _owned(pid, uid):
    """Threads of process ``pid`` when its real uid is ``uid``, else 0 (a process may end meanwhile)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        return int(fields["Threads"]) if int(fields["Uid"].split()[0]) == uid else 0
    except (OSError, KeyError, ValueError):
        return 0


def _no_privileges_ever():
    """No capability can come back: the bounding set is emptied (while CAP_SETPCAP is still held, under root)
    and no_new_privs is set, so exec of a setuid or file-capability binary gains nothing."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise SystemExit("sandbox: no_new_privs could not be set")
    with open("/proc/self/status") as fh:
        bounding = int(dict(line.split(":", 1) for line in fh if ":" in line)["CapBnd"], 16)
    for cap in range(64):
        if bounding >> cap & 1 and libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise SystemExit(f"sandbox: capability {cap} could not be dropped from the bounding set")


def _refuser(name):
    def refused(*args, **kwargs):
        raise PermissionError(f"sandbox: {name} is disabled")

    return refused


_OS_REFUSED = (
    "kill", "killpg", "system", "popen", "ftruncate", "chmod", "fchmod", "lchmod", "chown", "fchown",
    "lchown", "chroot", "chdir", "fchdir", "setuid", "setgid", "seteuid", "setegid", "setreuid",
    "setregid", "setsid", "setpgid", "fork", "forkpty", "vfork", "register_at_fork", "execl", "execle",
    "execlp", "execlpe", "execv", "execve", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe",
    "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "abort", "lchflags",
    "chflags", "pidfd_open", "mkfifo", "mknod",
)


def _install_guard(workdir):
    """The weaker, in-process guard (used only when bubblewrap is not available and the user opted in):
    writes, deletions and renames only inside ``workdir``; process creation, signals, ctypes refused.
    Python-level, so a determined program can get around it; the verdict does not depend on it."""
    import posix
    import shutil
    import signal
    import subprocess

    realpath, join, isabs, fsdecode = os.path.realpath, os.path.join, os.path.isabs, os.fsdecode
    real_open, real_os_open = builtins.open, os.open
    prefix = workdir + os.sep

    def inside(path):
        if isinstance(path, int):
            return True
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

    builtins.open = io.open = guarded_open
    os.open = posix.open = guarded_os_open
    for name in ("remove", "unlink", "rmdir", "rename", "renames", "replace", "removedirs", "truncate", "mkdir",
                 "symlink", "link"):
        real = getattr(os, name)
        setattr(os, name, guarded_path_op(real, f"os.{name}"))
        if hasattr(posix, name):
            setattr(posix, name, guarded_path_op(getattr(posix, name), f"posix.{name}"))
    for mod, modname in ((os, "os"), (posix, "posix")):
        for name in _OS_REFUSED:
            if hasattr(mod, name):
                setattr(mod, name, _refuser(f"{modname}.{name}"))
    for name in ("rmtree", "move", "chown", "copy", "copy2", "copyfile", "copytree"):
        setattr(shutil, name, _refuser(f"shutil.{name}"))
    for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, _refuser(f"subprocess.{name}"))
    for name in ("pthread_kill", "pidfd_send_signal"):
        if hasattr(signal, name):
            setattr(signal, name, _refuser(f"signal.{name}"))
    for name in ("ctypes", "_ctypes", "_posixsubprocess", "pty", "socket", "_socket", "sqlite3", "_sqlite3"):
        sys.modules[name] = None  # import raises ImportError


def _serve(chan_in, chan_out, ns):
    refs = {}

    def to_ref(obj):
        i = len(refs) + 1
        refs[i] = obj
        return {"$": "ref", "id": i, "callable": callable(obj)}

    def from_ref(i):
        return refs[i]

    def send_value(value, extra=None):
        try:
            frame = {"ok": encode(value, to_ref)}
        except Exception as exc:  # noqa: BLE001 - WireError, or program code failing while being read
            frame = {"raise": ["TypeError", f"the value cannot be sent back: {_describe(exc)}"]}
        if extra:
            frame.update(extra)
        write_frame(chan_out, frame)

    while True:
        req = read_frame(chan_in, limit=1 << 31)
        op = req.get("op")
        try:
            if op == "resolve":
                found = {}
                for name in req["names"]:
                    if name in ns:
                        try:
                            found[name] = encode(ns[name], to_ref)
                        except Exception:  # noqa: BLE001
                            found[name] = to_ref(ns[name])
                write_frame(chan_out, {"ok": {"$": "dict", "v": [[k, v] for k, v in found.items()]}})
            elif op == "call":
                target = from_ref(req["ref"])
                args = decode(req["args"], from_ref)
                kwargs = decode(req["kwargs"], from_ref)
                try:
                    result = target(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - everything the program raises is its answer
                    write_frame(chan_out, {"raise": [type(exc).__name__, _describe(exc)]})
                    continue
                mutated = {}
                for i, (arg, sent) in enumerate(zip(args, req["args"])):
                    if isinstance(arg, (list, dict, set)):
                        try:
                            now = encode(arg, to_ref)
                        except Exception:  # noqa: BLE001
                            continue
                        if now != sent:
                            mutated[str(i)] = now
                send_value(result, {"mutated": mutated} if mutated else None)
            elif op == "getattr":
                try:
                    value = getattr(from_ref(req["ref"]), req["name"])
                except BaseException as exc:  # noqa: BLE001
                    write_frame(chan_out, {"raise": [type(exc).__name__, _describe(exc)]})
                    continue
                send_value(value)
            elif op == "exit":
                _real_exit(0)
            else:
                write_frame(chan_out, {"raise": ["RuntimeError", f"unknown request {op!r}"]})
        except WireError:
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed request
            write_frame(chan_out, {"raise": ["RuntimeError", f"bad request: {_describe(exc)}"]})


def _main():
    chan_in, chan_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    job = read_frame(chan_in, limit=1 << 31)
    workdir = os.path.realpath(job["workdir"])
    if job.get("guard"):
        _pdeathsig()
    if not job.get("guard"):
        _no_privileges_ever()
    uid = job.get("uid")
    if uid is not None:  # real uid, effective and saved all leave 0: the kernel clears every capability
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise SystemExit("sandbox: the uid switch did not happen")
    os.chdir(workdir)
    if job.get("max_tasks"):  # threads of this uid (in its namespace): the ones running now plus max_tasks
        mine = sum(_owned(p, os.getuid()) for p in os.listdir("/proc") if p.isdigit())
        resource.setrlimit(resource.RLIMIT_NPROC, (mine + int(job["max_tasks"]),) * 2)
    cpu = int(math.ceil(job["cpu_s"])) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    mem = int(job["memory_bytes"])
    for lim in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        resource.setrlimit(lim, (mem, mem))
    if job.get("guard"):
        _install_guard(workdir)
    ns = {"__name__": "__sandbox__", "__builtins__": builtins}
    try:
        exec(compile(job["program"], "<program>", "exec"), ns)
    except BaseException as exc:  # noqa: BLE001 - SyntaxError, SystemExit, MemoryError, ...
        write_frame(chan_out, {"loaded": False, "error": _describe(exc)})
        _real_exit(0)
    write_frame(chan_out, {"loaded": True})
    try:
        _serve(chan_in, chan_out, ns)
    finally:
        _real_exit(0)


_main()
