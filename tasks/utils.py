"""Prompts, data loading and scoring for the SDLM paper's benchmark tasks (lm-eval ``!function`` targets).

The prompts copy the OpenCompass configs the SDLM authors ran (spec section 6; opencompass 0.4.2):
``gsm8k_0shot_v2_gen_6e39a4``, ``math_500_gen``, ``humaneval_openai_sample_evals_gen_dcae0e``,
``sanitized_mbpp_mdblock_gen_a447ff``, ``gpqa_gen_4baadb`` and ``IFEval_gen_353ae7``. Run the tasks with
``apply_chat_template=True``, ``system_instruction="You are a helpful assistant."`` and (the lm-eval default with a
chat template) ``fewshot_as_multiturn=True``, so that the MBPP exemplars are separate user/assistant turns.

Data come from `sdlm.data.task_records` (each task's data source in `sdlm.tasks.TASKS`; ``SDLM_DATA_DIR``, or the
task metadata key ``sdlm_data_dir``, or the hub when neither is set); scoring from `sdlm.scoring` (no HF
``code_eval``), IFEval's from lm-eval's own ``lm_eval.tasks.ifeval`` checkers. No torch.
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
from pathlib import Path
from typing import Any

try:
    import sdlm  # noqa: F401
except ImportError:  # lm-eval loads this file by path; make the repo importable when it is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdlm.data import task_records
from sdlm.scoring.answers import gsm8k_gold, gsm8k_score, gsm8k_score_flexible, math_score
from sdlm.scoring.choice import first_option
from sdlm.scoring.code import extract_code, humaneval_check, judge, mbpp_check, mbpp_entry_point

from sdlm.sft_data import BOXED_INSTRUCTION, HUMANEVAL_INSTRUCTION, MBPP_TEMPLATE  # noqa: E402  (one spelling for SFT data and tasks)

# gpqa_gen_4baadb, one user turn. OpenCompass fills it by str.replace of "{question}", "{A}" ... "{D}" and then
# "{answer}" (the output column, replaced by ""), in that order, over the whole text: see gpqa_doc_to_text.
GPQA_TEMPLATE = (
    "What is the correct answer to this question: {question}\nChoices:\n(A){A}\n(B){B}\n(C){C}\n(D){D}\n"
    'Format your response as follows: "The correct answer is (insert answer here)"'
)
# OpenCompass GPQADataset: data row number cnt (from 1) puts option (ord(ROT[i]) - 65) of [correct, incorrect 1,
# incorrect 2, incorrect 3] under letter "ABCD"[i], ROT = GPQA_ROTATIONS[cnt % 4]: gold D, C, B, A, D, ...
GPQA_ROTATIONS = ("ABCD", "BCDA", "CDAB", "DABC")
# IFEval instructions whose checkers count sentences / words with NLTK's Punkt model (the punkt_tab data)
IFEVAL_PUNKT_INSTRUCTIONS = ("length_constraints:number_sentences", "change_case:capital_word_frequency")
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
def _dataset_dict(task: str, kwargs: dict[str, Any]):
    """``custom_dataset`` hook: lm-eval calls it with the task metadata (+ dataset_kwargs) as kwargs; the documents
    are the task's data source in sdlm.tasks.TASKS, as lm-eval's test split."""
    import datasets

    records = task_records(task, data_dir=kwargs.get("sdlm_data_dir"))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(records)})


def load_gsm8k(**kwargs):
    return _dataset_dict("gsm8k_sdlm", kwargs)


def load_math500(**kwargs):
    return _dataset_dict("math500_sdlm", kwargs)


def load_humaneval(**kwargs):
    return _dataset_dict("humaneval_sdlm", kwargs)


def load_humaneval_plus(**kwargs):
    return _dataset_dict("humaneval_plus_sdlm", kwargs)


def load_mbpp_sanitized(**kwargs):
    return _dataset_dict("mbpp_sdlm", kwargs)


def load_mbpp_full(**kwargs):
    return _dataset_dict("mbpp_full_sdlm", kwargs)


def load_mbpp_plus(**kwargs):
    return _dataset_dict("mbpp_plus_sdlm", kwargs)


def load_gpqa(**kwargs):
    """GPQA diamond (the hub's / the CSV's only split) as lm-eval's test split, options laid out by `gpqa_docs`."""
    import datasets

    records = task_records("gpqa_sdlm", data_dir=kwargs.get("sdlm_data_dir"))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(gpqa_docs(records))})


def load_ifeval(**kwargs):
    """IFEval (its only split, "train") as lm-eval's test split. Fails now, before any model is loaded, when a
    record names an instruction lm-eval does not know, or needs NLTK data that is not installed."""
    dd = _dataset_dict("ifeval_sdlm", kwargs)
    ifeval_check_instructions(dd["test"]["instruction_id_list"])
    return dd


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


def _humaneval_results(doc: dict, reply: str, *, plus: bool) -> dict[str, float]:
    timeout, memory = (PLUS_TIMEOUT_S, PLUS_MEMORY_MB) if plus else (CODE_TIMEOUT_S, CODE_MEMORY_MB)
    return judge(doc, reply, lambda: humaneval_check(doc, extract_code(reply, doc["entry_point"]), timeout=timeout,
                                                     memory_mb=memory))


def humaneval_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return _humaneval_results(doc, results[0], plus=False)


def humaneval_plus_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return _humaneval_results(doc, results[0], plus=True)


# ------------------------------------------------------------------------------------------------ GPQA
def _text(value: Any) -> str:
    return "" if value is None else str(value)


def gpqa_docs(records: list[dict]) -> list[dict]:
    """GPQA records (the CSV's columns, read by name) -> docs with the options under A-D and the gold letter,
    laid out exactly as OpenCompass's GPQADataset does (no randomness; see GPQA_ROTATIONS). ``index`` is the
    data row number (from 1) that chose the layout."""
    docs = []
    for cnt, rec in enumerate(records, 1):
        options = [_text(rec[k]) for k in ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                                           "Incorrect Answer 3")]
        rotation = GPQA_ROTATIONS[cnt % 4]
        doc = {"index": cnt, "question": _text(rec["Question"])}
        doc.update({letter: options[ord(src) - ord("A")] for letter, src in zip("ABCD", rotation)})
        doc["answer"] = next(letter for letter in "ABCD" if doc[letter] == options[0])  # first equal text
        doc["record_id"] = _text(rec.get("Record ID"))
        docs.append(doc)
    return docs


def gpqa_doc_to_text(doc: dict) -> str:
    # sequential str.replace as OpenCompass's safe_format does (entry keys question, A-D, then the output column
    # "answer" as ""): a "{C}" inside the question text (LaTeX such as \mathrm{C}) becomes option C's text
    text = GPQA_TEMPLATE
    for key in ("question", "A", "B", "C", "D"):
        text = text.replace("{" + key + "}", doc[key])
    return text.replace("{answer}", "")


def gpqa_doc_to_target(doc: dict) -> str:
    return doc["answer"]


def gpqa_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"exact_match": float(first_option(results[0], "ABCD") == doc["answer"])}


# ---------------------------------------------------------------------------------------------- IFEval
def ifeval_doc_to_text(doc: dict) -> str:
    # IFEval_gen_353ae7: the prompt itself; OpenCompass then replaces the output column "{reference}" by ""
    return doc["prompt"].replace("{reference}", "")


def punkt_available() -> bool:
    """Whether NLTK's English Punkt model (the ``punkt_tab`` data) is installed, loaded as IFEval's checkers
    load it (``nltk.data.load("tokenizers/punkt/english.pickle")`` and ``word_tokenize`` both build it)."""
    try:
        from nltk.tokenize.punkt import PunktTokenizer

        PunktTokenizer("english")
    except LookupError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _ifeval():
    """lm-eval's ``lm_eval.tasks.ifeval.utils`` (its checkers), imported without its import-time attempt to
    download punkt_tab (an evaluation never goes to the network; `ifeval_check_instructions` says what is
    missing), with langdetect seeded so that the language checks give the same verdict on every run."""
    try:
        import immutabledict  # noqa: F401
        import langdetect
        import nltk
    except ImportError as exc:
        raise ImportError(f"ifeval_sdlm needs langdetect, immutabledict and nltk>=3.9.1 (dependencies of "
                          f"sdlm-bench: pip install langdetect immutabledict 'nltk>=3.9.1'): {exc}") from None
    if punkt_available():
        from lm_eval.tasks.ifeval import utils
    else:  # its import would call nltk.download("punkt_tab") and then print "Downloaded punkt_tab" regardless
        download = nltk.download
        nltk.download = lambda *args, **kwargs: False
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                from lm_eval.tasks.ifeval import utils
        finally:
            nltk.download = download
    langdetect.DetectorFactory.seed = 0
    return utils


def ifeval_check_instructions(instruction_id_lists) -> None:
    """Every instruction id must be one of lm-eval's IFEval checkers (``ValueError``), and the NLTK data that
    `IFEVAL_PUNKT_INSTRUCTIONS` need must be installed (``FileNotFoundError`` naming what to install)."""
    known = _ifeval().instructions_registry.INSTRUCTION_DICT
    used = {i for ids in instruction_id_lists for i in ids}
    unknown = sorted(used - set(known))
    if unknown:
        raise ValueError(f"ifeval_sdlm: unknown IFEval instruction id(s) {', '.join(unknown)} (lm-eval knows "
                         f"{len(known)}, e.g. punctuation:no_comma)")
    needs = sorted(used & set(IFEVAL_PUNKT_INSTRUCTIONS))
    if needs and not punkt_available():
        raise FileNotFoundError(
            f"ifeval_sdlm: the IFEval instructions {', '.join(needs)} need NLTK's punkt_tab tokenizer data, which "
            "is not installed; install it once on a machine with network: python -m nltk.downloader punkt_tab "
            "(or copy an nltk_data folder holding tokenizers/punkt_tab/english and set NLTK_DATA to it)")


def ifeval_process_results(doc: dict, results: list[str]) -> dict[str, Any]:
    """lm-eval's IFEval scoring (strict and loose, per prompt and per instruction)."""
    return _ifeval().process_results(doc, results)


def ifeval_agg_inst_level_acc(items: list[list[bool]]) -> float:
    """Instruction-level accuracy: followed instructions / all instructions (lm-eval's aggregation)."""
    return _ifeval().agg_inst_level_acc(items)


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
    timeout, memory = (PLUS_TIMEOUT_S, PLUS_MEMORY_MB) if plus else (CODE_TIMEOUT_S, CODE_MEMORY_MB)
    return judge(doc, generation, lambda: mbpp_check(doc, extract_code(generation, mbpp_entry_point(doc)), plus=plus,
                                                     timeout=timeout, memory_mb=memory))


def mbpp_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return _mbpp_results(doc, results[0], plus=False)


def mbpp_plus_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return _mbpp_results(doc, results[0], plus=True)
