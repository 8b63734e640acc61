"""Answer extraction and scoring for the math benchmarks (GSM8K, MATH-500). No torch.

GSM8K (spec section 6, OpenCompass `gsm8k_0shot_v2`): the model is asked to put its final answer in
``\\boxed{}``; the *primary* score (`gsm8k_score`) reads only the last top-level box. A second, *flexible*
score (`gsm8k_score_flexible`) is reported beside it and falls back, in this order, to

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (the same as the primary score when a box exists);
2. the last "answer is X" / "answer: X" phrase (e.g. ``The answer is $1,000.``, ``Final answer: 42``);
3. the last number anywhere in the text (as lm-eval's ``flexible-extract``).

Numbers are compared exactly as fractions after normalisation (`parse_number`): thousands separators
(``1,000``, ``1\\,000``, ``1{,}000``), ``$``/``\\$``, ``%``/``\\%``, a trailing ``.``, ``\\text{...}`` unit
words (``18 \\text{ dollars}``), ``\\frac{a}{b}``, degree signs, so that ``42.0 == 42`` and ``$1,000`` == 1000.

MATH-500 (`math_500_gen`): `math_score` uses math-verify with the configuration of OpenCompass's
``MATHVerifyEvaluator`` (gold: ``$<answer>$``, LaTeX + expression extraction; prediction: LaTeX extraction with
the box first and no anchor-free extraction), with one deliberate difference: we keep math-verify's
``malformed_operators`` normalisation on for predictions. ``\\frac43``, ``\\frac 59`` and ``11\\sqrt2`` are legal
LaTeX; with OpenCompass's ``malformed_operators=False`` 8 of the 500 MATH-500 reference solutions score 0
against their own answers, with it on all 500 score 1 (tests/test_scoring.py). Parsing and comparison run under math-verify's own
``signal.alarm`` timeouts in the main thread; in other threads (where ``signal`` does not work) they run
without a timeout. Any error or timeout scores 0.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction

logger = logging.getLogger(__name__)

__all__ = [
    "all_boxed",
    "last_boxed",
    "strip_boxed",
    "parse_number",
    "gsm8k_gold",
    "gsm8k_extract",
    "gsm8k_score",
    "gsm8k_score_flexible",
    "math_gold_from_solution",
    "math_score",
]

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


# --------------------------------------------------------------------------------------------- boxes
def _match_braces(text: str, open_idx: int) -> int | None:
    """Index just past the ``}`` matching the ``{`` at ``open_idx``; escaped ``\\{``/``\\}`` do not count."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character (\{, \}, \\ ...)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """Top-level boxes as (start, end, content), in text order. Nested boxes are part of their parent."""
    out: list[tuple[int, int, str]] = []
    pos = 0
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            return out
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            end = _match_braces(text, j)
            if end is None:  # unbalanced: take the rest of the text (a truncated generation)
                out.append((m.start(), len(text), text[j + 1 :].strip()))
                return out
            out.append((m.start(), end, text[j + 1 : end - 1].strip()))
            pos = end
        else:
            # "\boxed 5" form (as Hendrycks' `last_boxed_only_string` accepts): one token up to space or $
            tok = re.match(r"[^\s$]+", text[j:])
            if tok and j > m.end():
                out.append((m.start(), j + tok.end(), tok.group(0)))
                pos = j + tok.end()
            else:
                pos = m.end()


def all_boxed(text: str) -> list[str]:
    """Contents of all top-level ``\\boxed{}``/``\\fbox{}`` in order (nested braces handled)."""
    return [c for _, _, c in _boxes(text or "")]


def strip_boxed(content: str) -> str:
    """Unwrap a content that is itself one box (``\\boxed{\\boxed{1}}`` -> ``1``) and outer ``{...}`` pairs."""
    s = content.strip()
    while True:
        inner = _boxes(s)
        if len(inner) == 1 and inner[0][0] == 0 and inner[0][1] == len(s):
            s = inner[0][2]
            continue
        if s.startswith("{") and _match_braces(s, 0) == len(s):
            s = s[1:-1].strip()
            continue
        return s


def last_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, or ``None``.

    ``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``; ``\\boxed{{a}}`` -> ``a``; with several boxes the last one
    wins; an unterminated box (truncated generation) yields the rest of the text.
    """
    boxes = _boxes(text or "")
    if not boxes:
        return None
    return strip_boxed(boxes[-1][2])


# ------------------------------------------------------------------------------------------- numbers
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*(-?[\d.,]+)\s*\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac(\d)(\d)")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER_RE = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)(?:\s*/\s*-?(?:\d+(?:\.\d+)?|\.\d+))?")
_REMOVE = (
    "\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "~", "\\$", "$", "\\%", "%", "^\\circ",
    "^{\\circ}", "\\circ", "°", "\\displaystyle",
)


def _clean_numeric_text(s: str) -> str:
    s = s.replace("−", "-").replace("–", "-").replace("{,}", ",")
    for _ in range(3):  # nested \text{\textbf{..}}
        s = _TEXT_CMD_RE.sub(r" \1 ", s)
    s = _FRAC_RE.sub(r" \1/\2 ", s)
    s = _FRAC_SHORT_RE.sub(r" \1/\2 ", s)
    for tok in _REMOVE:
        s = s.replace(tok, "" if tok not in ("\\ ", "~") else " ")
    # thousands separators: 1,000 / 1,000,000 (a comma followed by exactly three digits)
    s = _THOUSANDS_RE.sub("", s)
    return s


def parse_number(s: str | None, *, which: str = "last") -> Fraction | None:
    """The number in ``s`` as an exact ``Fraction`` (``"$1,000."`` -> 1000, ``"42.0"`` -> 42,
    ``"\\frac{3}{4}"`` -> 3/4, ``"18 \\text{ dollars}"`` -> 18, ``"50\\%"`` -> 50), or ``None``.

    When the text holds several numbers, ``which="last"`` (default) takes the last one (``x = 5`` -> 5,
    ``3 \\times 6 = 18`` -> 18), ``which="first"`` the first one.
    """
    if s is None:
        return None
    s = _clean_numeric_text(strip_boxed(str(s)))
    matches = _NUMBER_RE.findall(s)
    if not matches:
        return None
    tok = (matches[-1] if which == "last" else matches[0]).replace(" ", "")
    try:
        if "/" in tok:
            num, den = tok.split("/", 1)
            d = Fraction(den)
            return None if d == 0 else Fraction(num) / d
        return Fraction(tok)
    except (ValueError, ZeroDivisionError):
        return None


# --------------------------------------------------------------------------------------------- GSM8K
def gsm8k_gold(answer_text: str) -> Fraction:
    """The gold number of a GSM8K reference (``... #### 1,450,000``)."""
    if "####" not in answer_text:
        raise ValueError(f"GSM8K reference without '####': {answer_text[-80:]!r}")
    value = parse_number(answer_text.rsplit("####", 1)[1], which="first")
    if value is None:
        raise ValueError(f"GSM8K reference with a non-numeric answer: {answer_text[-80:]!r}")
    return value


_ANSWER_IS_RE = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(.{0,80})", re.IGNORECASE
)
_LOOSE_NUMBER_RE = re.compile(r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def gsm8k_extract(generation: str, *, flexible: bool = False) -> tuple[Fraction | None, str]:
    """(value, source) of the answer in a generation. ``source`` is "boxed", "answer_is", "last_number" or
    "none". Strict mode (``flexible=False``) reads the last box only."""
    text = generation or ""
    boxed = last_boxed(text)
    if boxed is not None:
        value = parse_number(boxed)
        if value is not None or not flexible:
            return value, "boxed"
    if not flexible:
        return None, "none"
    for m in reversed(list(_ANSWER_IS_RE.finditer(text))):
        snippet = m.group(1).split("\n", 1)[0]
        value = parse_number(snippet, which="first")
        if value is not None:
            return value, "answer_is"
    nums = _LOOSE_NUMBER_RE.findall(text)
    for tok in reversed(nums):
        value = parse_number(tok)
        if value is not None:
            return value, "last_number"
    return None, "none"


def _gold_value(gold: str | int | float | Fraction) -> Fraction:
    if isinstance(gold, Fraction):
        return gold
    if isinstance(gold, (int, float)):
        return Fraction(str(gold))
    if "####" in gold:
        return gsm8k_gold(gold)
    value = parse_number(gold)
    if value is None:
        raise ValueError(f"non-numeric gold answer {gold!r}")
    return value


def gsm8k_score(generation: str, gold_answer_text: str | int | float | Fraction) -> float:
    """1.0 when the last ``\\boxed{}`` of ``generation`` equals the gold number, else 0.0 (primary metric).

    ``gold_answer_text`` is the GSM8K ``answer`` field (``... #### N``) or the bare number."""
    value, _ = gsm8k_extract(generation, flexible=False)
    return float(value is not None and value == _gold_value(gold_answer_text))


def gsm8k_score_flexible(generation: str, gold_answer_text: str | int | float | Fraction) -> float:
    """Like `gsm8k_score` but with the documented fallbacks (box -> "answer is X" -> last number)."""
    value, _ = gsm8k_extract(generation, flexible=True)
    return float(value is not None and value == _gold_value(gold_answer_text))


# ---------------------------------------------------------------------------------------------- MATH
def math_gold_from_solution(solution: str) -> str:
    """The gold answer of a MATH ``solution`` (its last box)."""
    box = last_boxed(solution)
    if box is None:
        raise ValueError("MATH solution without \\boxed{}")
    return box


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _mv_timeout(seconds: int) -> int | None:
    # math-verify's timeouts use signal.alarm, which only works in the main thread
    return seconds if _in_main_thread() else None


def _parse_gold(gold: str, timeout_s: int):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    cfg = [LatexExtractionConfig(), ExprExtractionConfig()]
    parsed = parse(f"${gold}$", extraction_config=cfg, extraction_mode="first_match",
                   parsing_timeout=_mv_timeout(timeout_s))
    if not parsed:  # e.g. a gold that needs the box to be read as one expression
        parsed = parse(f"$\\boxed{{{gold}}}$", extraction_config=cfg, extraction_mode="first_match",
                       parsing_timeout=_mv_timeout(timeout_s))
    return parsed


def _parse_prediction(generation: str, timeout_s: int):
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse

    cfg = [
        LatexExtractionConfig(
            normalization_config=NormalizationConfig(
                nits=False, malformed_operators=True, basic_latex=True, boxed="all", units=True,
            ),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        )
    ]
    return parse(generation, extraction_config=cfg, extraction_mode="first_match",
                 parsing_timeout=_mv_timeout(timeout_s))


def math_score(generation: str, gold: str, *, gold_is_solution: bool = False, timeout_s: int = 5) -> float:
    """1.0 when math-verify finds the generation's (boxed) answer equivalent to ``gold``, else 0.0.

    ``gold`` is the MATH-500 ``answer`` field (bare LaTeX such as ``\\frac{14}{3}``) or, with
    ``gold_is_solution=True``, a full reference solution whose last box is the answer. Errors and timeouts
    score 0.0 (logged at debug level)."""
    from math_verify import verify

    try:
        gold_answer = math_gold_from_solution(gold) if gold_is_solution else gold
        gold_parsed = _parse_gold(gold_answer, timeout_s)
        if not gold_parsed:
            logger.warning("math-verify could not parse the gold answer %r", gold_answer)
            return 0.0
        pred_parsed = _parse_prediction(generation or "", timeout_s)
        if not pred_parsed:
            return 0.0
        return float(verify(gold_parsed, pred_parsed, timeout_seconds=_mv_timeout(timeout_s)))
    except Exception as exc:  # math-verify TimeoutException, sympy errors, ...
        logger.debug("math_score failed: %s", exc, exc_info=True)
        return 0.0
