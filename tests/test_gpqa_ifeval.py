"""GPQA and IFEval (tasks/gpqa_sdlm.yaml, tasks/ifeval_sdlm.yaml): answer extraction, option layout, prompts,
IFEval scoring, data errors, and one tiny-model cell per task.

Every expected value is written by hand: the letters from OpenCompass's pattern list (sdlm/scoring/choice.py,
in order), the layouts from GPQADataset's rotation rule, the IFEval verdicts from the checkers' rules.
Everything runs on hand-made data in a temporary SDLM_DATA_DIR (no benchmark files, no network).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from sdlm.data import DataFormatError, DataNotFoundError, load_records  # noqa: E402
from sdlm.scoring.choice import first_option, option_patterns  # noqa: E402
from sdlm.tasks import tasks_path  # noqa: E402

SUFFIX = 'Format your response as follows: "The correct answer is (insert answer here)"'

# Hand-made GPQA rows: (question, correct, incorrect 1, incorrect 2, incorrect 3)
GPQA_ROWS = [
    ("Which gas makes up most of Earth's atmosphere?", "Nitrogen", "Oxygen", "Argon", "Carbon dioxide"),
    ("What is 2 + 3?\nGive the number.", "5", "6", "4", "23"),  # a field over two lines
    ("Which planet is closest to the Sun?", "Mercury", "Venus", "Mars", "Earth"),
    ("Which particle has a negative charge?", "electron", "proton", "neutron", "photon"),
    ("What is the chemical symbol of gold?", "Au", "Ag", "Gd", "Go"),
]
# The columns of gpqa_diamond.csv that the task reads, in another order than the upstream file (where Question is
# column 7), plus columns it ignores: the file is read by header name.
GPQA_HEADER = ["Record ID", "Incorrect Answer 3", "Question", "Explanation", "Correct Answer", "Incorrect Answer 1",
               "Incorrect Answer 2", "Subdomain"]


def write_gpqa_csv(path: Path, rows=GPQA_ROWS, header=GPQA_HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i, (q, c, i1, i2, i3) in enumerate(rows):
            rec = {"Record ID": f"rec{i}", "Question": q, "Correct Answer": c, "Incorrect Answer 1": i1,
                   "Incorrect Answer 2": i2, "Incorrect Answer 3": i3, "Explanation": "because", "Subdomain": "x"}
            w.writerow([rec[h] for h in header])
    return path


# Hand-made IFEval records (Google's input_data.jsonl fields)
IFEVAL_RECORDS = [
    {"key": 1, "prompt": "Describe the sky. Do not use commas, and write everything in lowercase English.",
     "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"], "kwargs": [{}, {}]},
    {"key": 2, "prompt": "List three fruits as exactly 3 markdown bullet points.",
     "instruction_id_list": ["detectable_format:number_bullet_lists"], "kwargs": [{"num_bullets": 3}]},
    {"key": 3, "prompt": "Answer in fewer than 5 words: what colour is grass?",
     "instruction_id_list": ["length_constraints:number_words"],
     "kwargs": [{"relation": "less than", "num_words": 5}]},
    {"key": 4, "prompt": "Say something short without commas, in at least 4 words.",
     "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
     "kwargs": [{}, {"relation": "at least", "num_words": 4}]},
]


def write_ifeval_jsonl(path: Path, records=IFEVAL_RECORDS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def data_dir(tmp_path):
    write_gpqa_csv(tmp_path / "gpqa" / "gpqa_diamond.csv")
    write_ifeval_jsonl(tmp_path / "ifeval" / "input_data.jsonl")
    return tmp_path


@pytest.fixture(scope="module")
def utils():
    """tasks/utils.py as a module (lm-eval loads it by path too)."""
    spec = importlib.util.spec_from_file_location("sdlm_task_utils_under_test", tasks_path() / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _manager(metadata=None):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_path()), include_defaults=False, metadata=metadata)


# ================================================================================ GPQA: answer extraction
@pytest.mark.parametrize("reply, letter", [
    # "The correct answer is:?\s+\(?([ABCD])\)?"
    ("The correct answer is (B)", "B"),
    # " B." at the very end: "[\s，：:,]([ABCD])[。，,\.]?$" (from the Chinese block, tried before the English ones)
    ("The correct answer is B.", "B"),
    # "(?i)ANSWER\s*:\s*([ABCD])" captures "C"
    ("**Answer: C**", "C"),
    # (?i) makes the letter class case-insensitive too: it captures "d", which is no option letter, so the
    # pattern is passed over; nothing else matches until the last fallback "([ABCD])": the "A" of "ANSWER"
    ("ANSWER: d", "A"),
    # ... and with no capital A-D anywhere, no pattern yields a letter
    ("answer: d", ""),
    # only the last fallback matches: the first capital A-D
    ("\\boxed{A}", "A"),
    # "The correct answer is:?.*?boxed\{([ABCD])\}" (the earlier "is (X)" pattern fails on the "$")
    ("The correct answer is $\\boxed{C}$", "C"),
    # order: the boxed pattern wins over the letters B and D that come first in the text
    ("Options B and D are wrong, so the correct answer is \\boxed{A}.", "A"),
    # order: "[Tt]he answer is:?\s+\(?([ABCD])\)?" wins over the earlier letter A
    ("Option A looks tempting, but the answer is (C) because of symmetry", "C"),
    # order: the trailing-letter pattern (Chinese block) comes before "ANSWER:" -> B, not C
    ("ANSWER: C\nThe answer is B", "B"),
    # "(\s|^)[ABCD]..." first matches " D " and captures the blank (no letter: passed over); then "1.\s?(.*?)$"
    # captures "compare D with B first" and the first option *in A-B-C-D order* found in it is B
    ("Step 1: compare D with B first", "B"),
    # a letter opening the reply: "(\s|^)[ABCD][\s。，,：:\.$]" at ^ (empty group -> the whole match "D.")
    ("D. Because the others are wrong", "D"),
    # Chinese: "答案是?\s*([ABCD])"
    ("答案是 C", "C"),
    # no letter at all
    ("I am not sure about this one.", ""),
    ("", ""),
])
def test_first_option_letters(reply, letter):
    assert first_option(reply) == letter


def test_first_option_pattern_order():
    pats = option_patterns("ABCD")
    english = [
        r"(?i)ANSWER\s*:\s*([ABCD])",
        r"[Tt]he answer is:?\s+\(?([ABCD])\)?",
        r"[Tt]he answer is:?\s+\(?\*?\*?([ABCD])\*?\*?\)?",
        r"[Tt]he answer is option:?\s+\(?([ABCD])\)?",
        r"[Tt]he correct answer is:?\s+\(?([ABCD])\)?",
        r"[Tt]he correct answer is option:?\s+\(?([ABCD])\)?",
        r"[Tt]he correct answer is:?.*?boxed\{([ABCD])\}",
        r"[Tt]he correct option is:?.*?boxed\{([ABCD])\}",
        r"[Tt]he correct answer option is:?.*?boxed\{([ABCD])\}",
        r"[Tt]he answer to the question is:?\s+\(?([ABCD])\)?",
    ]
    start = pats.index(english[0])
    assert pats[start:start + len(english)] == english
    assert pats[-5:] == [r"(\s|^)[ABCD][\s。，,：:\.$]", r"1.\s?(.*?)$", r"1.\s?([ABCD])[.。$]?$", r"([ABCD]):",
                         r"([ABCD])"]
    assert pats[0] == r"答案是?\s*([ABCD])" and len(pats) == 52
    assert option_patterns("ABCD", fallbacks=False) == pats[:-2]


# ================================================================================ GPQA: layout and prompt
def test_gpqa_layout_and_prompt(data_dir):
    tm = _manager({"sdlm_data_dir": str(data_dir)})
    task = tm.load(["gpqa_sdlm"])["tasks"]["gpqa_sdlm"]
    docs = list(task.test_docs())
    assert [d["answer"] for d in docs] == ["D", "C", "B", "A", "D"]
    # row 1 (cnt 1, rotation BCDA): A = incorrect 1, B = incorrect 2, C = incorrect 3, D = correct
    assert task.doc_to_text(docs[0]) == (
        "What is the correct answer to this question: Which gas makes up most of Earth's atmosphere?\n"
        "Choices:\n(A)Oxygen\n(B)Argon\n(C)Carbon dioxide\n(D)Nitrogen\n"
        'Format your response as follows: "The correct answer is (insert answer here)"')
    # row 2 (CDAB): A = incorrect 2, B = incorrect 3, C = correct, D = incorrect 1; the question keeps its newline
    assert [docs[1][k] for k in "ABCD"] == ["4", "23", "5", "6"]
    assert task.doc_to_text(docs[1]).startswith("What is the correct answer to this question: What is 2 + 3?\n"
                                                "Give the number.\nChoices:\n(A)4\n")
    # row 3 (DABC): A = incorrect 3, B = correct; row 4 (ABCD): the file's order; row 5 (BCDA) as row 1
    assert [docs[2][k] for k in "ABCD"] == ["Earth", "Mercury", "Venus", "Mars"]
    assert [docs[3][k] for k in "ABCD"] == ["electron", "proton", "neutron", "photon"]
    assert [docs[4][k] for k in "ABCD"] == ["Ag", "Gd", "Go", "Au"]
    assert [d["index"] for d in docs] == [1, 2, 3, 4, 5] and docs[0]["record_id"] == "rec0"
    assert task.doc_to_target(docs[0]) == "D"
    cfg = task.config
    assert cfg.generation_kwargs["until"] == [] and cfg.generation_kwargs["max_gen_toks"] == 2048
    assert cfg.generation_kwargs["do_sample"] is False and cfg.num_fewshot == 0
    assert task.process_results(docs[0], ["The correct answer is (D)"]) == {"exact_match": 1.0}
    assert task.process_results(docs[0], ["The correct answer is (A)"]) == {"exact_match": 0.0}
    assert task.process_results(docs[1], ["I don't know"]) == {"exact_match": 0.0}


def test_gpqa_template_is_filled_by_sequential_replace(utils):
    # OpenCompass fills "{question}", then "{A}" ... "{D}" over the whole text: a "{C}" in the question (LaTeX)
    # becomes option C's text, and "{answer}" becomes ""
    doc = {"question": "Is $\\mathrm{C}$ an {answer}element?", "A": "no", "B": "maybe", "C": "carbon", "D": "yes"}
    assert utils.gpqa_doc_to_text(doc) == (
        "What is the correct answer to this question: Is $\\mathrmcarbon$ an element?\nChoices:\n"
        "(A)no\n(B)maybe\n(C)carbon\n(D)yes\n" + SUFFIX)


def test_gpqa_duplicate_option_text_gold_is_the_first_equal_letter(utils):
    # the gold letter is the first letter whose text equals the correct answer's (GPQADataset's loop)
    rec = {"Question": "q", "Correct Answer": "same", "Incorrect Answer 1": "same", "Incorrect Answer 2": "x",
           "Incorrect Answer 3": "y"}
    docs = utils.gpqa_docs([rec])  # cnt 1, BCDA: A = incorrect 1 ("same"), ..., D = correct ("same")
    assert docs[0]["answer"] == "A"


# ================================================================================ IFEval scoring
def _ifeval_scores(utils, record, response):
    return utils.ifeval_process_results(dict(record), [response])


@pytest.mark.parametrize("idx, response, expected", [
    # no commas and all lowercase English: both followed, strict and loose
    (0, "i think the sky is blue because sunlight is scattered by the air in the atmosphere.",
     (True, [True, True], True, [True, True])),
    # a comma, and capitals: both broken; single line, so loose is no better
    (0, "I think the sky is blue, mostly.", (False, [False, False], False, [False, False])),
    # the first line breaks both (comma, capitals); loose drops the first line -> both followed
    (0, "**Sure, Here Is My Answer:**\nthe sky looks blue to us because air scatters blue light more than red light",
     (False, [False, False], True, [True, True])),
    # exactly 3 bullets ("* " lines)
    (1, "* apples\n* pears\n* plums", (True, [True], True, [True])),
    # "- " lines count too; "**Note**" is no bullet ("*" followed by "*"): 2 + 1 = 3
    (1, "- apples\n- pears\n* plums\n**Note** all are sweet", (True, [True], True, [True])),
    # 2 bullets: broken; dropping lines only lowers the count
    (1, "* apples\n* pears", (False, [False], False, [False])),
    # 4 words < 5
    (2, "Grass is green, usually", (True, [True], True, [True])),
    # 5 words is not < 5
    (2, "Grass is mostly green usually", (False, [False], False, [False])),
    # two instructions: a comma (broken) and 4 words >= 4 (followed)
    (3, "Short answer here, really.", (False, [False, True], False, [False, True])),
    # an empty reply follows nothing
    (3, "   ", (False, [False, False], False, [False, False])),
])
def test_ifeval_scores(utils, idx, response, expected):
    got = _ifeval_scores(utils, IFEVAL_RECORDS[idx], response)
    assert set(got) == {"prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                        "inst_level_loose_acc"}
    assert (got["prompt_level_strict_acc"], got["inst_level_strict_acc"], got["prompt_level_loose_acc"],
            got["inst_level_loose_acc"]) == expected


def test_ifeval_sentence_count_with_punkt(utils):
    if not utils.punkt_available():
        pytest.skip("NLTK punkt_tab data not installed (python -m nltk.downloader punkt_tab)")
    rec = {"key": 5, "prompt": "p", "instruction_id_list": ["length_constraints:number_sentences"],
           "kwargs": [{"relation": "at least", "num_sentences": 2}]}
    assert _ifeval_scores(utils, rec, "The sky is blue. Grass is green.")["prompt_level_strict_acc"] is True
    assert _ifeval_scores(utils, rec, "The sky is blue.")["prompt_level_loose_acc"] is False


def test_ifeval_aggregation_is_over_instructions(utils):
    # 3 followed of 4 instructions over 3 prompts
    assert utils.ifeval_agg_inst_level_acc([[True, False], [True], [True]]) == 0.75


def test_ifeval_task_through_lm_eval(data_dir):
    task = _manager({"sdlm_data_dir": str(data_dir)}).load(["ifeval_sdlm"])["tasks"]["ifeval_sdlm"]
    docs = list(task.test_docs())
    assert [d["key"] for d in docs] == [1, 2, 3, 4]
    assert task.doc_to_text(docs[1]) == "List three fruits as exactly 3 markdown bullet points."
    cfg = task.config
    assert cfg.generation_kwargs["until"] == [] and cfg.generation_kwargs["max_gen_toks"] == 2048
    # the hub-like schema (every kwargs key, None where unused) is scored as the record itself
    assert task.process_results(docs[2], ["Grass is green, usually"])["prompt_level_strict_acc"] is True
    assert task.process_results(docs[3], ["Short answer here, really."])["inst_level_loose_acc"] == [False, True]
    names = [m["metric"] for m in cfg.metric_list]
    assert names == ["prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                     "inst_level_loose_acc"]


def test_ifeval_missing_punkt_is_one_clear_error(utils, tmp_path, monkeypatch):
    rec = {"key": 9, "prompt": "Answer in at least 3 sentences.", "instruction_id_list":
           ["length_constraints:number_sentences"], "kwargs": [{"relation": "at least", "num_sentences": 3}]}
    write_ifeval_jsonl(tmp_path / "ifeval" / "input_data.jsonl", [rec])
    monkeypatch.setattr(utils, "punkt_available", lambda: False)
    with pytest.raises(FileNotFoundError) as err:
        utils.load_ifeval(sdlm_data_dir=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "length_constraints:number_sentences" in msg
    assert "punkt_tab" in msg and "python -m nltk.downloader punkt_tab" in msg
    # the records of the other instruction types need no NLTK data
    write_ifeval_jsonl(tmp_path / "ifeval" / "input_data.jsonl")
    assert len(utils.load_ifeval(sdlm_data_dir=str(tmp_path))["test"]) == 4


def test_ifeval_unknown_instruction_is_an_error(utils, tmp_path):
    rec = {"key": 9, "prompt": "p", "instruction_id_list": ["punctuation:no_semicolon"], "kwargs": [{}]}
    write_ifeval_jsonl(tmp_path / "ifeval" / "input_data.jsonl", [rec])
    with pytest.raises(ValueError, match="unknown IFEval instruction id.*punctuation:no_semicolon"):
        utils.load_ifeval(sdlm_data_dir=str(tmp_path))


# ================================================================================ data errors
def test_gpqa_csv_without_correct_answer_names_file_line_and_field(tmp_path):
    header = [h for h in GPQA_HEADER if h != "Correct Answer"]
    path = tmp_path / "gpqa" / "gpqa_diamond.csv"
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerow(["r1", "i3", "q?", "e", "i1", "i2", "s"])
    with pytest.raises(DataFormatError) as err:
        load_records("gpqa_diamond", data_dir=tmp_path)
    assert str(err.value).startswith(f"{path}, line 2: no field 'Correct Answer' (a gpqa_diamond record needs")


def test_gpqa_csv_row_with_missing_fields_names_its_line(tmp_path):
    path = write_gpqa_csv(tmp_path / "gpqa" / "gpqa_diamond.csv", GPQA_ROWS[:2])  # row 2 spans lines 3-4
    with open(path, "a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerow(["r9", "i3", "q?"])  # line 5: 3 fields of 8
    with pytest.raises(DataFormatError, match=re.escape(f"{path}, line 5: 3 fields, but the header has 8")):
        load_records("gpqa_diamond", data_dir=tmp_path)


def test_gpqa_csv_records_by_header_name(data_dir):
    recs = load_records("gpqa_diamond", data_dir=data_dir)
    assert len(recs) == 5 and recs[1]["Question"] == "What is 2 + 3?\nGive the number."
    assert recs[0]["Correct Answer"] == "Nitrogen" and recs[0]["Incorrect Answer 3"] == "Carbon dioxide"


def test_gpqa_gated_hub_message(monkeypatch):
    import datasets

    def gated(*args, **kwargs):
        raise ConnectionError("Dataset 'Idavidrein/gpqa' is a gated dataset on the Hub.\nYou must be "
                              "authenticated to access it.")

    monkeypatch.delenv("SDLM_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", gated)
    t0 = time.perf_counter()
    with pytest.raises(DataNotFoundError) as err:
        load_records("gpqa_diamond")
    assert time.perf_counter() - t0 < 20.0  # generous (a busy machine): no retries, the gated answer is final
    msg = str(err.value)
    assert "\n" not in msg
    assert "Idavidrein/gpqa (gpqa_diamond)" in msg and "gated dataset" in msg and "HF token" in msg
    assert "SDLM_DATA_DIR" in msg and "gpqa/gpqa_diamond.csv" in msg
    # and through lm-eval, as `sdlm eval` meets it (before any model is loaded)
    with pytest.raises(DataNotFoundError, match="gated dataset"):
        _manager().load(["gpqa_sdlm"])


def test_ifeval_hub_fallback_uses_google_ifeval(monkeypatch):
    import datasets

    calls = []

    def fake(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return [dict(IFEVAL_RECORDS[0])]

    monkeypatch.delenv("SDLM_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setattr("sdlm.data._hub_reachable", lambda *a, **k: True)  # the fake hub is up
    assert load_records("ifeval")[0]["key"] == 1
    assert calls == [("google/IFEval", None, "train")]


# ================================================================================ one tiny-model cell per task
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from sdlm.testing import tiny_sdlm_checkpoint

    return tiny_sdlm_checkpoint(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.mark.parametrize("task, primary", [("gpqa_sdlm", "exact_match,none"),
                                           ("ifeval_sdlm", "prompt_level_strict_acc,none")])
def test_tiny_model_cell(task, primary, ckpt, data_dir, tmp_path, monkeypatch):
    from sdlm.evaluate import evaluate_cell
    from sdlm.tasks import task_info

    monkeypatch.setenv("SDLM_DATA_DIR", str(data_dir))
    out = tmp_path / "cell"
    evaluate_cell(f"pretrained={ckpt},alg=prob_conf,block_size=4,threshold=0.5,max_new_tokens=16,device=cpu",
                  [task], limit=2, output_dir=out)
    rows = json.loads((out / "cell.json").read_text())
    assert [r["task"] for r in rows] == [task] and rows[0]["n"] == 2
    assert task_info(task).metric == primary and task_info(task).label in ("GPQA", "IFEval")
    assert 0.0 <= rows[0]["metrics"][primary] <= 1.0
    samples = [json.loads(line) for line in (out / f"samples_{task}.jsonl").read_text().splitlines()]
    assert len(samples) == 2
