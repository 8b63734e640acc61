"""Prompts, data loading and scoring for the SDLM paper's benchmark tasks (lm-eval ``!function`` targets).

The prompts copy the OpenCompass configs the SDLM authors ran (spec section 6; opencompass 0.4.2):
``gsm8k_0shot_v2_gen_6e39a4``, ``math_500_gen``, ``humaneval_openai_sample_evals_gen_dcae0e`` and
``sanitized_mbpp_mdblock_gen_a447ff``. Run the tasks with ``apply_chat_template=True``,
``system_instruction="You are a helpful assistant."`` and (the lm-eval default with a chat template)
``fewshot_as_multiturn=True``, so that the MBPP exemplars are separate user/assistant turns.

Data come from `sdlm.data.load_records` (``SDLM_DATA_DIR``, or the task metadata key ``sdlm_data_dir``, or the
hub when neither is set); scoring from `sdlm.scoring` (no HF ``code_eval``). No torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:
    import sdlm  # noqa: F401
except ImportError:  # lm-eval loads this file by path; make the repo importable when it is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdlm.data import load_records
from sdlm.scoring.answers import gsm8k_gold, gsm8k_score, gsm8k_score_flexible, math_score
from sdlm.scoring.code import extract_code, humaneval_check, mbpp_check, mbpp_entry_point

SYSTEM_INSTRUCTION = "You are a helpful assistant."
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
HUMANEVAL_INSTRUCTION = (
    "Read the following function signature and docstring, and fully implement the function described. "
    "Your response should only contain the code for this function.\n"
)
MBPP_TEMPLATE = (
    "You are an expert Python programmer, and here is your task:\n{text}\n"
    "Your code should pass these tests:\n\n{tests}\n"
)
# Execution limits for generated code (per program; see sdlm.scoring.sandbox).
CODE_TIMEOUT_S = 10.0
CODE_MEMORY_MB = 1024
# EvalPlus tests run hundreds of inputs, some of them large: MBPP+ 255 needs > 1 GiB, and MBPP+ 599's
# reference solution took 30 s on a busy 2-core machine
PLUS_TIMEOUT_S = 60.0
PLUS_MEMORY_MB = 4096

# The three exemplars of OpenCompass `sanitized_mbpp_mdblock_gen_a447ff` (MBPP task_ids 2, 3, 4, with the
# *full* MBPP wording), verbatim -- including the literal "%%" in the second answer: OpenCompass fills its
# templates with str.replace, not %-formatting, so the authors' prompts contained "n %% i".
MBPP_FEWSHOT = (
    {
        "task_id": 2,
        "text": "Write a function to find the similar elements from the given two tuple lists.",
        "test_list": [
            "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
            "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
            "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)",
        ],
        "answer": "```python\ndef similar_elements(test_tup1, test_tup2):\n"
        "    res = tuple(set(test_tup1) & set(test_tup2))\n    return (res)```",
    },
    {
        "task_id": 3,
        "text": "Write a python function to identify non-prime numbers.",
        "test_list": [
            "assert is_not_prime(2) == False",
            "assert is_not_prime(10) == True",
            "assert is_not_prime(35) == True",
        ],
        "answer": "```python\nimport math\ndef is_not_prime(n):\n    result = False\n"
        "    for i in range(2,int(math.sqrt(n)) + 1):\n        if n %% i == 0:\n            result = True\n"
        "    return result```",
    },
    {
        "task_id": 4,
        "text": "Write a function to find the largest integers from a given list of numbers using heap queue "
        "algorithm.",
        "test_list": [
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65]",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75]",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]",
        ],
        "answer": "```python\nimport heapq as hq\ndef heap_queue_largest(nums,n):\n"
        "    largest_nums = hq.nlargest(n, nums)\n    return largest_nums```",
    },
)


# ------------------------------------------------------------------------------------------------ data
def _dataset_dict(name: str, splits: dict[str, str], kwargs: dict[str, Any]):
    """``custom_dataset`` hook: lm-eval calls it with the task metadata (+ dataset_kwargs) as kwargs."""
    import datasets

    directory = kwargs.get("sdlm_data_dir")
    return datasets.DatasetDict(
        {lm_split: datasets.Dataset.from_list(load_records(name, split, data_dir=directory))
         for lm_split, split in splits.items()}
    )


def load_gsm8k(**kwargs):
    return _dataset_dict("gsm8k", {"test": "test"}, kwargs)


def load_math500(**kwargs):
    return _dataset_dict("math500", {"test": "test"}, kwargs)


def load_humaneval(**kwargs):
    return _dataset_dict("humaneval", {"test": "test"}, kwargs)


def load_humaneval_plus(**kwargs):
    return _dataset_dict("humaneval_plus", {"test": "test"}, kwargs)


def load_mbpp_sanitized(**kwargs):
    return _dataset_dict("mbpp_sanitized", {"test": "test"}, kwargs)


def load_mbpp_full(**kwargs):
    return _dataset_dict("mbpp", {"test": "test"}, kwargs)


def load_mbpp_plus(**kwargs):
    return _dataset_dict("mbpp_plus", {"test": "test"}, kwargs)


# ---------------------------------------------------------------------------------------------- GSM8K
def gsm8k_doc_to_text(doc: dict) -> str:
    return f"{doc['question']}\n{BOXED_INSTRUCTION}"


def gsm8k_doc_to_target(doc: dict) -> str:
    value = gsm8k_gold(doc["answer"])
    return str(value.numerator) if value.denominator == 1 else str(float(value))


def gsm8k_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    generation = results[0]
    return {
        "exact_match": gsm8k_score(generation, doc["answer"]),
        "exact_match_flex": gsm8k_score_flexible(generation, doc["answer"]),
    }


# ------------------------------------------------------------------------------------------- MATH-500
def math500_doc_to_text(doc: dict) -> str:
    return f"{doc['problem']}\n{BOXED_INSTRUCTION}"


def math500_doc_to_target(doc: dict) -> str:
    return doc["answer"]


def math500_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"math_verify": math_score(results[0], doc["answer"])}


# ------------------------------------------------------------------------------------------- HumanEval
def humaneval_doc_to_text(doc: dict) -> str:
    return HUMANEVAL_INSTRUCTION + doc["prompt"]


def humaneval_doc_to_target(doc: dict) -> str:
    return doc["entry_point"]


def humaneval_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    code = extract_code(results[0], doc["entry_point"])
    res = humaneval_check(doc, code, timeout=CODE_TIMEOUT_S, memory_mb=CODE_MEMORY_MB)
    return {"pass_at_1": float(res.passed)}


def humaneval_plus_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    code = extract_code(results[0], doc["entry_point"])
    res = humaneval_check(doc, code, timeout=PLUS_TIMEOUT_S, memory_mb=PLUS_MEMORY_MB)
    return {"pass_at_1": float(res.passed)}


# ------------------------------------------------------------------------------------------------ MBPP
def _mbpp_text(doc: dict) -> str:
    # full MBPP calls the description "text"; sanitized MBPP and MBPP+ call it "prompt"
    return doc.get("text") or doc["prompt"]


def mbpp_doc_to_text(doc: dict) -> str:
    tests = doc["test_list"]
    return MBPP_TEMPLATE.format(text=_mbpp_text(doc), tests=tests if isinstance(tests, str) else "\n".join(tests))


def mbpp_doc_to_target(doc: dict) -> str:
    """The exemplar's answer block; for evaluated docs (only logged) the reference code in the same form."""
    if doc.get("answer"):
        return doc["answer"]
    return "```python\n" + (doc.get("code") or "").replace("\r\n", "\n").strip() + "```"


def mbpp_fewshot_samples() -> list[dict]:
    return [dict(d) for d in MBPP_FEWSHOT]


def _mbpp_results(doc: dict, generation: str, *, plus: bool) -> dict[str, float]:
    code = extract_code(generation, mbpp_entry_point(doc))
    timeout, memory = (PLUS_TIMEOUT_S, PLUS_MEMORY_MB) if plus else (CODE_TIMEOUT_S, CODE_MEMORY_MB)
    res = mbpp_check(doc, code, plus=plus, timeout=timeout, memory_mb=memory)
    return {"pass_at_1": float(res.passed)}


def mbpp_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return _mbpp_results(doc, results[0], plus=False)


def mbpp_plus_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return _mbpp_results(doc, results[0], plus=True)
