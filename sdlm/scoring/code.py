"""Code extraction from chat replies, test-program assembly and pass@1 for HumanEval / MBPP. No torch.

`extract_code(text, entry_point=None)` rules, in order:

1. Fenced blocks (```` ```python ````, ```` ```py ````, bare ```` ``` ````, also a closing fence glued to the last
   code line as in the OpenCompass MBPP exemplars ``return x```` ``, and an unterminated fence, which runs
   to the end of the text). Python-tagged or untagged blocks are preferred over blocks tagged with another
   language (``bash``, ``text``, ``output``...). Among those, the *first* block that defines
   ``entry_point`` (``def entry_point(``) wins; without ``entry_point`` (or when no block defines it) the first
   block that defines any function or class; else the first block. (OpenCompass takes the first block; we
   only skip blocks that are evidently not the solution, e.g. a usage example before the code.)
2. No fence: the text from its first code-looking line (``def``, ``class``, ``import``, ``from``, ``@``) on.
3. In both cases trailing prose is cut: when the candidate does not compile, the longest prefix of whole
   lines that does compile is used (e.g. "...return x\\n\\nThis function works by..."). A candidate whose
   first line is indented (a function *body*, completion style) is returned as is.

Top-level statements in the extracted code (example calls, ``print``) are kept, as in OpenCompass.

`humaneval_check` / `mbpp_check` split a check into the program (sandboxed) and its tests (run by the trusted
checker against the program; `sdlm.scoring.sandbox`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sdlm.scoring.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, ExecResult, SandboxError, check_program

__all__ = [
    "extract_code",
    "mbpp_entry_point",
    "humaneval_program",
    "mbpp_program",
    "humaneval_pass",
    "mbpp_pass",
    "humaneval_check",
    "mbpp_check",
    "humaneval_parts",
    "mbpp_parts",
    "CodeCheck",
    "run_check",
    "run_checks",
    "judge",
    "verdict_key",
    "take_verdicts",
]

_PY_LANGS = {"", "python", "py", "python3", "py3", "ipython"}
_OPEN_FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.\-]*)[^\n]*\n", re.MULTILINE)
_CODE_START_RE = re.compile(r"^(?:def |async def |class |import |from \S+ import |@)", re.MULTILINE)


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) for every fenced block; an unterminated last fence runs to the end."""
    blocks: list[tuple[str, str]] = []
    pos = 0
    while True:
        m = _OPEN_FENCE_RE.search(text, pos)
        if m is None:
            return blocks
        fence, lang = m.group(1), m.group(2).lower()
        start = m.end()
        close = text.find(fence[:3], start)
        if close == -1:
            blocks.append((lang, text[start:]))
            return blocks
        blocks.append((lang, text[start:close]))
        # skip the rest of the closing-fence line
        nl = text.find("\n", close)
        pos = len(text) if nl == -1 else nl + 1


def _compiles(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # 7,000 "-": the parser's stack overflows
        return False


def _trim_trailing_prose(code: str) -> str:
    code = code.strip("\n").rstrip()
    if not code.strip():
        return ""
    first = next((ln for ln in code.splitlines() if ln.strip()), "")
    if first[:1] in (" ", "\t"):  # a function body (completion style): leave it to the caller
        return code
    if _compiles(code):
        return code
    lines = code.splitlines()
    for end in range(len(lines) - 1, 0, -1):
        candidate = "\n".join(lines[:end]).rstrip()
        if candidate and _compiles(candidate):
            return candidate
    return code


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.MULTILINE) is not None


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The program in a model reply (see the module docstring for the rules)."""
    text = (text or "").replace("\r\n", "\n")
    blocks = _fenced_blocks(text)
    if blocks:
        py = [c for lang, c in blocks if lang in _PY_LANGS] or [c for _, c in blocks]
        py = [c for c in py if c.strip()] or py
        chosen = None
        if entry_point:
            chosen = next((c for c in py if _defines(c, entry_point)), None)
        if chosen is None:
            chosen = next((c for c in py if re.search(r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]", c, re.M)), None)
        if chosen is None:
            chosen = py[0]
        return _trim_trailing_prose(chosen)
    m = _CODE_START_RE.search(text)
    if m is None:
        return _trim_trailing_prose(text)
    return _trim_trailing_prose(text[m.start() :])


# ------------------------------------------------------------------------------------ test programs
# A check has two halves: the *program* (untrusted: the model's code with what it may rely on, run in the
# sandbox) and the *tests* (trusted: run in the checker, calling into the program; see sdlm.scoring.sandbox).
@dataclass(frozen=True)
class CodeCheck:
    program: str
    tests: str
    prelude: str = ""
    remote_names: tuple[str, ...] = ()


# EvalPlus's test files compare floats with ``np.allclose(out, exp, rtol=1e-07, atol=atol)``, which broadcasts:
# ``[]`` (shape (0,)) "is close" to any expected float, so ``return []`` passed 27/378 MBPP+ and 3/164
# HumanEval+ items. We compare shapes and numeric kinds first (README "Sandbox"; departs from the EvalPlus text
# there and only there; benchmarks/evalplus_allclose.py counts the items whose verdict it changes).
EVALPLUS_ALLCLOSE = "np.allclose(out, exp, "
STRICT_ALLCLOSE = """
def _sdlm_allclose(out, exp, **kw):
    import numpy as _np
    try:
        a, b = _np.asarray(out), _np.asarray(exp)
    except Exception:
        return False
    if a.shape != b.shape or a.dtype.kind not in "biufc" or b.dtype.kind not in "biufc":
        return False
    return bool(_np.allclose(a, b, **kw))
"""


def strict_float_tests(tests: str, prelude: str) -> tuple[str, str]:
    """(tests, prelude) with EvalPlus's broadcasting float comparison replaced by :data:`STRICT_ALLCLOSE`
    (defined in the trusted prelude, so the name is never taken from the program); other tests unchanged."""
    if EVALPLUS_ALLCLOSE not in tests:
        return tests, prelude
    return tests.replace(EVALPLUS_ALLCLOSE, "_sdlm_allclose(out, exp, "), prelude + "\n" + STRICT_ALLCLOSE


def humaneval_parts(problem: Mapping, completion_code: str) -> CodeCheck:
    """HumanEval: the program is the prompt plus the completion -- a full function (chat style: appended after
    the prompt, so its imports and helpers stay available and the new ``def`` replaces the docstring-only
    stub) or a function body (completion style). The checker runs the prompt (trusted helpers such as
    ``encode_cyclic``), then the problem's ``check`` on the program's entry point."""
    entry = problem["entry_point"]
    code = completion_code or ""
    if _defines(code, entry) and not code[:1].isspace():
        body = problem["prompt"].rstrip() + "\n\n" + code  # every prompt compiles on its own
    else:
        body = problem["prompt"] + code
    tests, prelude = strict_float_tests(f"{problem['test']}\n\ncheck({entry})\n", problem["prompt"])
    return CodeCheck(program=body + "\n", tests=tests, prelude=prelude, remote_names=(entry,))


def humaneval_program(problem: Mapping, completion_code: str) -> str:
    """The whole HumanEval check as one program (prompt + completion + tests), for reading and for tools
    that run it themselves; scoring runs the two halves of :func:`humaneval_parts` apart."""
    parts = humaneval_parts(problem, completion_code)
    helper = STRICT_ALLCLOSE if "_sdlm_allclose(" in parts.tests else ""
    return f"{parts.program.rstrip()}\n{helper}\n{parts.tests}"


def mbpp_entry_point(record: Mapping) -> str | None:
    """The function the MBPP tests call (from the first ``assert name(...)``)."""
    tests = record.get("test_list") or []
    if isinstance(tests, str):
        tests = tests.splitlines()
    for t in tests:
        m = re.search(r"assert\s*(?:not\s+)?\(*\s*(?:set|sorted|math\.isclose|abs|round|str|list|tuple)?\(*\s*([A-Za-z_]\w*)\s*\(", t)
        if m:
            return m.group(1)
    return None


def mbpp_parts(record: Mapping, code: str, *, plus: bool = False) -> CodeCheck:
    """MBPP: the program is ``test_imports`` + the code + ``test_setup_code`` (full MBPP; it builds objects
    with classes the solution defines, so it runs on the program's side); the checker runs the imports, then
    the asserts of ``test_list`` -- or, with ``plus=True``, the EvalPlus ``test`` field (MBPP+ OriginFmt)."""
    imports = record.get("test_imports") or []
    if isinstance(imports, str):
        imports = [imports]
    imports_src = "\n".join(imports)
    parts = [imports_src] if imports else []
    parts.append((code or "").replace("\r\n", "\n"))
    setup = (record.get("test_setup_code") or "").replace("\r\n", "\n")
    if setup.strip():
        parts.append(setup)
    if plus:
        tests = record["test"]
    else:
        tests = record["test_list"] if isinstance(record["test_list"], str) else "\n".join(record["test_list"])
    entry = mbpp_entry_point(record)  # taken from the program even when it shadows a builtin (task 126: sum)
    tests, prelude = strict_float_tests(tests + "\n", imports_src)
    return CodeCheck(program="\n".join(parts) + "\n", tests=tests, prelude=prelude,
                     remote_names=(entry,) if entry else ())


def mbpp_program(record: Mapping, code: str, *, plus: bool = False) -> str:
    """The whole MBPP check as one program (imports + code + setup + asserts); see :func:`mbpp_parts`."""
    parts = mbpp_parts(record, code, plus=plus)
    helper = STRICT_ALLCLOSE if "_sdlm_allclose(" in parts.tests else ""
    return parts.program + helper + parts.tests


def run_check(parts: CodeCheck, *, timeout: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB) -> ExecResult:
    return check_program(parts.program, parts.tests, prelude=parts.prelude, remote_names=parts.remote_names,
                         timeout=timeout, memory_mb=memory_mb)


def run_checks(checks: Sequence[CodeCheck], *, workers: int = 2, **kw) -> list[ExecResult]:
    """:func:`run_check` over many checks, ``workers`` at a time (threads wait on processes)."""
    if workers <= 1:
        return [run_check(c, **kw) for c in checks]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: run_check(c, **kw), checks))


def humaneval_check(problem: Mapping, completion_code: str, *, timeout: float = DEFAULT_TIMEOUT_S,
                    memory_mb: int = DEFAULT_MEMORY_MB) -> ExecResult:
    return run_check(humaneval_parts(problem, completion_code), timeout=timeout, memory_mb=memory_mb)


def mbpp_check(record: Mapping, code: str, *, plus: bool = False, timeout: float = DEFAULT_TIMEOUT_S,
               memory_mb: int = DEFAULT_MEMORY_MB) -> ExecResult:
    return run_check(mbpp_parts(record, code, plus=plus), timeout=timeout, memory_mb=memory_mb)


def humaneval_pass(problem: Mapping, completion_code: str, **kw) -> float:
    """1.0 when the HumanEval tests pass against the sandboxed program, else 0.0."""
    return float(humaneval_check(problem, completion_code, **kw).passed)


def mbpp_pass(record: Mapping, code: str, **kw) -> float:
    """1.0 when the MBPP asserts pass against the sandboxed program, else 0.0."""
    return float(mbpp_check(record, code, **kw).passed)


# ---------------------------------------------------------------------------------------- verdicts
# What each answer's check concluded and why, kept until the evaluation writes its samples
# (sdlm.evaluate attaches them to lm-eval's logged samples by :func:`verdict_key`).
_verdicts: dict[str, dict[str, str]] = {}
_verdicts_lock = threading.Lock()


def verdict_key(doc: Mapping, reply: str) -> str:
    """One answer to one problem: the problem's id and tests (HumanEval and HumanEval+ share ids) + the reply."""
    tests = doc.get("test") if doc.get("test") is not None else doc.get("test_list")
    blob = json.dumps([str(doc.get("task_id")), tests, reply], default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def judge(doc: Mapping, reply: str, check: Callable[[], ExecResult]) -> dict[str, float]:
    """``{"pass_at_1": 0.0 | 1.0}`` for one answer; the verdict and its reason are kept for the samples.

    Any exception while extracting or checking this answer (a reply that overflows the parser, a malformed
    record) fails this answer with the exception as its reason, never the whole evaluation."""
    try:
        res = check()
        verdict = {"status": res.status, "reason": res.reason}
    except SandboxError:  # no usable sandbox is the run's problem, not this answer's: never a silent 0
        raise
    except Exception as exc:  # noqa: BLE001 - one answer's problem, recorded as its verdict
        verdict = {"status": "failed", "reason": f"scoring error: {type(exc).__name__}: {str(exc)[:300]}"}
    with _verdicts_lock:
        _verdicts[verdict_key(doc, reply)] = verdict
    return {"pass_at_1": float(verdict["status"] == "passed")}


def take_verdicts() -> dict[str, dict[str, str]]:
    """The verdicts kept so far (by :func:`verdict_key`), and forget them."""
    with _verdicts_lock:
        out = dict(_verdicts)
        _verdicts.clear()
    return out
