"""Multiple-choice answer extraction (GPQA), as the SDLM authors scored it. No torch.

OpenCompass 0.4.2 (``gpqa_gen_4baadb``) reads the chosen letter with ``first_option_postprocess(text,
options='ABCD')``. That is our `first_option`: an ordered list of regular expressions (`option_patterns`) is
tried on the stripped reply, each with ``re.DOTALL`` and the first match only (``re.search``). For a pattern
that matches, the text it captured (its first group; the whole match when that group is empty) is searched
for the option letters *in option order* (A, then B, ...) and the first letter found is the answer. When the
captured text holds no option letter the next pattern is tried, so a pattern can match and still be passed
over, e.g.

* ``(?i)ANSWER\\s*:\\s*([ABCD])`` is case-insensitive as a whole, so it captures the ``d`` of "ANSWER: d";
  a lower-case ``d`` is no option letter, so it is passed over (and that reply ends up as ``A``, the ``A``
  of "ANSWER" found by the last fallback);
* ``(\\s|^)[ABCD][\\s。，,：:\\.$]`` captures the blank before the letter: it only answers when the letter
  starts the reply;
* ``1.\\s?(.*?)$`` captures everything after the first "1" and any one character, and answers the first of
  A, B, C, D *in option order* that occurs anywhere in it.

The patterns and their order are OpenCompass's (Chinese phrasings first, then English, then fallbacks),
written out again here, including one quirk: a missing comma in the upstream list joins the pattern for
"故选 X" and the one for "只有选项 X 是对" into a single pattern that needs both. Without any pattern
matching, the answer is ``""`` (scored wrong).
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["option_patterns", "first_option", "choice_score"]

# ``{L}`` stands for the character class of the option letters, e.g. ``[ABCD]``.
_PATTERNS = (
    # --- Chinese phrasings ("the answer is X", "choose X", "only option X is correct", ...)
    r"答案是?\s*({L})",
    r"答案是?\s*：\s*({L})",
    r"答案是?\s*:\s*({L})",
    r"答案选项应?该?是\s*({L})",
    r"答案选项应?该?为\s*({L})",
    r"答案应该?是\s*({L})",
    r"答案应该?选\s*({L})",
    r"答案选项为?\s*：\s*({L})",
    r"答案选项为?\s+\(?\*?\*?({L})\*?\*?\)?",
    r"答案选项是?\s*:\s*({L})",
    r"答案为\s*({L})",
    r"答案选\s*({L})",
    r"选择?\s*({L})",
    r"故选?\s*({L})" r"只有选?项?\s?({L})\s?是?对",  # one pattern upstream (no comma between the two)
    r"只有选?项?\s?({L})\s?是?错",
    r"只有选?项?\s?({L})\s?不?正确",
    r"只有选?项?\s?({L})\s?错误",
    r"说法不?对选?项?的?是\s?({L})",
    r"说法不?正确选?项?的?是\s?({L})",
    r"说法错误选?项?的?是\s?({L})",
    r"({L})\s?是正确的",
    r"({L})\s?是正确答案",
    r"选项\s?({L})\s?正确",
    r"所以答\s?({L})",
    r"所以\s?({L}[.。$]?$)",
    r"所有\s?({L}[.。$]?$)",
    r"[\s，：:,]({L})[。，,\.]?$",
    r"[\s，,：:][故即]({L})[。\.]?$",
    r"[\s，,：:]因此({L})[。\.]?$",
    r"[是为。]\s?({L})[。\.]?$",
    r"因此\s?({L})[。\.]?$",
    r"显然\s?({L})[。\.]?$",
    r"答案是\s?(\S+)(?:。|$)",
    r"答案应该是\s?(\S+)(?:。|$)",
    r"答案为\s?(\S+)(?:。|$)",
    # --- English phrasings
    r"(?i)ANSWER\s*:\s*({L})",
    r"[Tt]he answer is:?\s+\(?({L})\)?",
    r"[Tt]he answer is:?\s+\(?\*?\*?({L})\*?\*?\)?",
    r"[Tt]he answer is option:?\s+\(?({L})\)?",
    r"[Tt]he correct answer is:?\s+\(?({L})\)?",
    r"[Tt]he correct answer is option:?\s+\(?({L})\)?",
    r"[Tt]he correct answer is:?.*?boxed\{({L})\}",
    r"[Tt]he correct option is:?.*?boxed\{({L})\}",
    r"[Tt]he correct answer option is:?.*?boxed\{({L})\}",
    r"[Tt]he answer to the question is:?\s+\(?({L})\)?",
    # --- a letter at the start, or a lone letter
    r"^选项\s?({L})",
    r"^({L})\s?选?项",
    r"(\s|^){L}[\s。，,：:\.$]",
    r"1.\s?(.*?)$",
    r"1.\s?({L})[.。$]?$",
)
# tried last ("cushion"): the first letter followed by a colon, then the first letter anywhere
_FALLBACKS = (
    r"({L}):",
    r"({L})",
)


@lru_cache(maxsize=16)
def _compiled(options: str, fallbacks: bool) -> tuple[re.Pattern, ...]:
    letters = "[" + options + "]"
    templates = _PATTERNS + (_FALLBACKS if fallbacks else ())
    return tuple(re.compile(t.replace("{L}", letters), re.DOTALL) for t in templates)


def option_patterns(options: str = "ABCD", *, fallbacks: bool = True) -> list[str]:
    """The regular expressions `first_option` tries, in order, for the option letters ``options``."""
    return [p.pattern for p in _compiled(options, fallbacks)]


def first_option(text: str | None, options: str = "ABCD", *, fallbacks: bool = True) -> str:
    """The option letter a reply chooses, by OpenCompass's ``first_option_postprocess`` rule (module
    docstring); ``""`` when no pattern yields one. ``fallbacks=False`` leaves out the two last patterns
    (OpenCompass's ``cushion=False``)."""
    if not isinstance(text, str):
        return ""
    text = text.strip()
    for pattern in _compiled(options, fallbacks):
        m = pattern.search(text)
        if m is None:
            continue
        captured = m.group(1) if pattern.groups and m.group(1) else m.group(0)
        for letter in options:
            if letter in captured:
                return letter
    return ""


def choice_score(text: str | None, gold: str, options: str = "ABCD") -> float:
    """1.0 when the reply's letter (`first_option`) is the gold letter, else 0.0."""
    return float(first_option(text, options) == gold)
