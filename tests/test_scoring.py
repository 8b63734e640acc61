"""Answer extraction, GSM8K/MATH scoring and code extraction (sdlm.scoring), incl. gold checks on real data."""

from __future__ import annotations

import sys
from fractions import Fraction

import pytest

from sdlm.scoring.answers import (
    all_boxed,
    gsm8k_extract,
    gsm8k_gold,
    gsm8k_score,
    gsm8k_score_flexible,
    last_boxed,
    math_gold_from_solution,
    math_score,
    parse_number,
)
from sdlm.scoring.code import extract_code, humaneval_program, mbpp_entry_point, mbpp_program

from datadir import DATA, needs_data


# ------------------------------------------------------------------------------------------ boxes
@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{{a}}", "a"),
        (r"\boxed{\boxed{7}}", "7"),
        (r"first \boxed{1} then \boxed{2}", "2"),
        (r"\fbox{5}", "5"),
        (r"\boxed{\text{(A)}}", r"\text{(A)}"),
        (r"$\boxed{x^{2}+\sqrt{y_{1}}}$", r"x^{2}+\sqrt{y_{1}}"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces do not close the box
        (r"\boxed 5$", "5"),
        (r"\boxed{3", "3"),  # truncated generation
        ("no box here", None),
        ("", None),
        (r"\boxedx{3}", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_all_boxed_keeps_order_and_nesting():
    assert all_boxed(r"\boxed{1} and \boxed{\frac{2}{\boxed{3}}} and \fbox{4}") == ["1", r"\frac{2}{\boxed{3}}", "4"]


# ---------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    "text, value",
    [
        ("42", 42), ("42.0", 42), ("42.", 42), ("-3", -3), ("$1,000", 1000), (r"\$1,000.00", 1000),
        ("1,450,000", 1450000), (r"1{,}000", 1000), (r"1\,000", 1000), ("50%", 50), (r"50\%", 50),
        (r"18 \text{ dollars}", 18), (r"\text{18}", 18), ("18 dollars", 18), (r"\frac{3}{4}", Fraction(3, 4)),
        (r"\dfrac{10}{4}", Fraction(5, 2)), ("3/4", Fraction(3, 4)), (r"90^\circ", 90), ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)), (r"x = 5", 5), (r"3 \times 6 = 18", 18), ("−7", -7), ("abc", None), ("", None),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == (None if value is None else Fraction(value))


def test_gsm8k_gold_with_commas():
    assert gsm8k_gold("blah\n#### 1,450,000") == 1450000
    assert gsm8k_gold("#### -3") == -3
    with pytest.raises(ValueError):
        gsm8k_gold("no marker")


# -------------------------------------------------------------------------------- model outputs seen
GOLD = "Janet sells 16 - 3 - 4 = 9 eggs.\n#### 18"


@pytest.mark.parametrize(
    "generation, strict, flexible",
    [
        (r"She makes 9 * 2 = 18 dollars. The answer is $\boxed{18}$.", 1, 1),
        (r"\boxed{18.00}", 1, 1),
        (r"\boxed{\$18}", 1, 1),
        (r"\boxed{18 \text{ dollars}}", 1, 1),
        (r"\boxed{\text{18}}", 1, 1),
        (r"First guess \boxed{9}, but actually \boxed{18}", 1, 1),
        (r"\boxed{18} ... wait, \boxed{9}", 0, 0),  # the last box counts
        ("The answer is 18.", 0, 1),
        ("The answer is $18.", 0, 1),
        ("Final answer: 18", 0, 1),
        ("9 * 2 = 18", 0, 1),  # last number
        ("The answer is 18 eggs, not 9.", 0, 1),
        ("The answer is 19.", 0, 0),
        ("", 0, 0),
        (r"\boxed{}", 0, 0),
    ],
)
def test_gsm8k_formats(generation, strict, flexible):
    assert gsm8k_score(generation, GOLD) == strict
    assert gsm8k_score_flexible(generation, GOLD) == flexible


def test_gsm8k_thousands():
    gold = "x\n#### 1,000"
    assert gsm8k_score(r"\boxed{1,000}", gold) == 1
    assert gsm8k_score(r"\boxed{1000}", gold) == 1
    assert gsm8k_score(r"\boxed{\$1{,}000}", gold) == 1
    assert gsm8k_score_flexible("The answer is $1,000.", gold) == 1
    assert gsm8k_score(r"\boxed{1,001}", gold) == 0


def test_gsm8k_extract_reports_source():
    assert gsm8k_extract(r"\boxed{3}", flexible=True) == (3, "boxed")
    assert gsm8k_extract("The answer is 4.", flexible=True) == (4, "answer_is")
    assert gsm8k_extract("we get 5 and 6", flexible=True) == (6, "last_number")
    assert gsm8k_extract("nothing", flexible=True) == (None, "none")
    assert gsm8k_extract("The answer is 4.", flexible=False) == (None, "none")


# ------------------------------------------------------------------------------------------- MATH
@pytest.mark.parametrize(
    "generation, gold, score",
    [
        (r"so the answer is $\boxed{\frac{1}{2}}$", r"\frac{1}{2}", 1),
        (r"$\boxed{0.5}$", r"\frac12", 1),
        (r"$\boxed{\frac43}$", r"\frac{4}{3}", 1),
        (r"$\boxed{\left( 3, \frac{\pi}{2} \right)}$", r"\left( 3, \frac{\pi}{2} \right)", 1),
        (r"$\boxed{2\sqrt{2}}$", r"\sqrt{8}", 1),
        (r"$\boxed{\text{(C)}}$", r"\text{(C)}", 1),
        (r"first $\boxed{3}$ then $\boxed{4}$", "4", 1),
        (r"$\boxed{5}$", "4", 0),
        ("no answer", "4", 0),
        ("", "4", 0),
    ],
)
def test_math_score(generation, gold, score):
    assert math_score(generation, gold) == score


def test_math_score_gold_from_solution():
    sol = r"We compute ... so $x = \boxed{7}$."
    assert math_gold_from_solution(sol) == "7"
    assert math_score(r"$\boxed{7}$", sol, gold_is_solution=True) == 1
    assert math_score(r"$\boxed{8}$", sol, gold_is_solution=True) == 0


def test_math_score_works_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(math_score, r"$\boxed{\frac{1}{2}}$", "0.5").result() == 1


# ----------------------------------------------------------------------------------- gold checks
@needs_data
def test_gsm8k_every_gold_solution_scores():
    """Every GSM8K test reference rewritten to end in \\boxed{N} scores 1 (strict and flexible), the plain
    "The answer is N." form scores 1 flexible / 0 strict, and a corrupted number scores 0."""
    from sdlm.data import load_records

    records = load_records("gsm8k", "test", data_dir=DATA)
    assert len(records) == 1319
    failures = []
    for r in records:
        body, number = r["answer"].rsplit("####", 1)
        number = number.strip()
        wrong = str(int(number.replace(",", "")) + 1)
        boxed = f"{body}The answer is \\boxed{{{number}}}."
        plain = f"{body}The answer is {number}."
        got = (
            gsm8k_score(boxed, r["answer"]), gsm8k_score_flexible(boxed, r["answer"]),
            gsm8k_score(plain, r["answer"]), gsm8k_score_flexible(plain, r["answer"]),
            gsm8k_score(f"{body}The answer is \\boxed{{{wrong}}}.", r["answer"]),
            gsm8k_score_flexible(f"{body}The answer is {wrong}.", r["answer"]),
        )
        if got != (1, 1, 0, 1, 0, 0):
            failures.append((r["answer"][-40:], got))
    assert failures == []


# MATH-500 gold answers that our checker does not accept from their own solution, with the reason.
# Empty: with math-verify's malformed-operator normalisation on (``\frac43``, ``11\sqrt2``) all 500 pass.
# (With OpenCompass's exact setting, malformed_operators=False, 8 fail: test/prealgebra/1302.json,
# test/intermediate_algebra/515.json, .../1410.json, test/prealgebra/1003.json, .../153.json,
# test/algebra/2257.json, test/counting_and_probability/14.json, test/algebra/518.json.)
MATH500_KNOWN_EXCEPTIONS: dict[str, str] = {}


@needs_data
@pytest.mark.skipif(sys.platform == "win32", reason="signal-based math-verify timeouts")
def test_math500_every_gold_solution_scores():
    from sdlm.data import load_records

    records = load_records("math500", "test", data_dir=DATA)
    assert len(records) == 500
    failures = {r["unique_id"]: (r["answer"], last_boxed(r["solution"])) for r in records
                if math_score(r["solution"], r["answer"]) != 1.0}
    assert set(failures) == set(MATH500_KNOWN_EXCEPTIONS), failures
    assert len(failures) == 0
    # and the checker is not vacuous: each solution against the next problem's answer mostly fails
    crossed = sum(math_score(a["solution"], b["answer"]) for a, b in zip(records, records[1:]))
    assert crossed < 0.05 * len(records)


# ---------------------------------------------------------------------------------- code extraction
FENCED = "Here is the solution:\n```python\ndef add(a, b):\n    return a + b\n```\nThis adds the numbers."


@pytest.mark.parametrize(
    "text, entry_point, expected",
    [
        (FENCED, "add", "def add(a, b):\n    return a + b"),
        ("```\ndef add(a, b):\n    return a + b\n```", None, "def add(a, b):\n    return a + b"),
        ("```py\nx = 1\n```", None, "x = 1"),
        # OpenCompass exemplar style: closing fence glued to the last line
        ("```python\ndef f(x):\n    return (x)```", "f", "def f(x):\n    return (x)"),
        # unterminated fence (max_gen_toks reached)
        ("```python\ndef f(x):\n    return x\n", "f", "def f(x):\n    return x"),
        # unterminated fence with a half-written last line: keep the longest prefix that compiles
        ("```python\ndef f(x):\n    return x\n\ndef g(y):\n    return (y", "f", "def f(x):\n    return x"),
        # several blocks: the one defining entry_point wins over an example-usage block
        ("Usage:\n```python\nprint(f(2))\n```\nCode:\n```python\ndef f(x):\n    return 2 * x\n```", "f",
         "def f(x):\n    return 2 * x"),
        # several blocks defining functions: first one defining the entry point
        ("```python\ndef helper():\n    pass\n```\n```python\ndef f():\n    return 1\n```\n```python\n"
         "def f():\n    return 2\n```", "f", "def f():\n    return 1"),
        # non-python block skipped
        ("```bash\npip install x\n```\n```python\ndef f():\n    return 1\n```", None, "def f():\n    return 1"),
        # no fence, trailing prose
        ("def f(x):\n    return x + 1\n\nThis function returns x plus one.", "f", "def f(x):\n    return x + 1"),
        # no fence, leading prose
        ("Sure! Here it is:\nimport math\ndef f(x):\n    return math.sqrt(x)", "f",
         "import math\ndef f(x):\n    return math.sqrt(x)"),
        # a function body (completion style) is kept verbatim
        ("    return a + b\n", None, "    return a + b"),
        ("", None, ""),
    ],
)
def test_extract_code(text, entry_point, expected):
    assert extract_code(text, entry_point) == expected


def test_extract_code_crlf():
    assert extract_code("```python\r\ndef f():\r\n    return 1\r\n```") == "def f():\n    return 1"


def test_mbpp_entry_point():
    assert mbpp_entry_point({"test_list": ["assert remove_Occ(\"hello\",\"l\") == \"heo\""]}) == "remove_Occ"
    assert mbpp_entry_point({"test_list": ["assert set(similar_elements((3, 4),(5, 4))) == set((4,))"]}) == \
        "similar_elements"
    assert mbpp_entry_point({"test_list": ["assert math.isclose(area(2), 12.56, rel_tol=0.001)"]}) == "area"
    assert mbpp_entry_point({"test_list": ["assert (max_height(root)) == 3"]}) == "max_height"


def test_program_assembly():
    problem = {"prompt": "def f(x):\n    \"\"\"doc\"\"\"\n", "entry_point": "f",
               "test": "def check(c):\n    assert c(1) == 2\n"}
    body = humaneval_program(problem, "    return x + 1\n")
    assert body.startswith(problem["prompt"] + "    return x + 1") and body.rstrip().endswith("check(f)")
    full = humaneval_program(problem, "def f(x):\n    return x + 1")
    assert "def f(x):\n    return x + 1" in full
    compile(full, "<t>", "exec")
    record = {"test_imports": ["import math"], "test_setup_code": "root = Node(1)", "test_list": ["assert g(root)"]}
    prog = mbpp_program(record, "class Node: ...\ndef g(r): return r")
    assert prog.index("import math") < prog.index("class Node") < prog.index("root = Node(1)") < prog.index("assert g")
