"""Scoring helpers for the benchmark tasks (no torch): answer extraction and math-verify (`answers`),
multiple-choice letters (`choice`), code extraction and pass@1 (`code`), sandboxed execution (`sandbox`)."""

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
from sdlm.scoring.choice import choice_score, first_option, option_patterns
from sdlm.scoring.code import (
    extract_code,
    humaneval_check,
    humaneval_pass,
    humaneval_program,
    mbpp_check,
    mbpp_entry_point,
    mbpp_pass,
    mbpp_program,
    run_check,
    run_checks,
)
from sdlm.scoring.sandbox import ExecResult, SandboxError, check_program, isolation, run_program, run_programs

__all__ = [
    "all_boxed", "gsm8k_extract", "gsm8k_gold", "gsm8k_score", "gsm8k_score_flexible", "last_boxed",
    "math_gold_from_solution", "math_score", "parse_number", "choice_score", "first_option", "option_patterns",
    "extract_code", "humaneval_check",
    "humaneval_pass", "humaneval_program", "mbpp_check", "mbpp_entry_point", "mbpp_pass", "mbpp_program",
    "run_check", "run_checks", "ExecResult", "SandboxError", "check_program", "isolation", "run_program",
    "run_programs",
]
