"""Our lm-eval tasks (tasks/*.yaml + tasks/utils.py): discovery, offline loading, prompts, scoring, errors."""

from __future__ import annotations

import os

import pytest
from lm_eval.api.model import LM

from sdlm.data import DataNotFoundError
from sdlm.tasks import SDLM_TASKS, resolve_tasks, tasks_path

from datadir import DATA, needs_data

SYSTEM = "You are a helpful assistant."

EXPECTED_DOCS = {
    "gsm8k_sdlm": 1319,
    "math500_sdlm": 500,
    "humaneval_sdlm": 164,
    "humaneval_plus_sdlm": 164,
    "mbpp_sdlm": 257,
    "mbpp_full_sdlm": 500,
    "mbpp_plus_sdlm": 378,
    "gpqa_sdlm": 198,
    "ifeval_sdlm": 541,
}
#: tasks whose data the shared offline folder holds (GPQA is gated and IFEval not mirrored there; their own
#: tests, tests/test_gpqa_ifeval.py, use hand-made data files)
OFFLINE = [t for t in SDLM_TASKS if t not in ("gpqa_sdlm", "ifeval_sdlm")]

# A ChatML template (Qwen2.5's layout) to render prompts the way a tokenizer's apply_chat_template would.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chatml(messages, add_generation_prompt=True):
    import jinja2

    return jinja2.Template(CHATML, keep_trailing_newline=True).render(
        messages=messages, add_generation_prompt=add_generation_prompt)


def _manager(metadata=None):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_path()), include_defaults=False, metadata=metadata)


@pytest.fixture(scope="module")
def loaded_tasks():
    if DATA is None:
        pytest.skip("benchmark data not found: set SDLM_DATA_DIR")
    old = os.environ.get("SDLM_DATA_DIR")
    os.environ["SDLM_DATA_DIR"] = DATA
    try:
        yield _manager().load(OFFLINE)["tasks"]
    finally:
        if old is None:
            os.environ.pop("SDLM_DATA_DIR", None)
        else:
            os.environ["SDLM_DATA_DIR"] = old


def _context(task, doc, shots=None):
    return task.fewshot_context(
        doc, num_fewshot=task.config.num_fewshot if shots is None else shots, system_instruction=SYSTEM,
        apply_chat_template=True, fewshot_as_multiturn=True, chat_template=chatml)


# ------------------------------------------------------------------------------------------ discovery
def test_task_manager_finds_all_tasks():
    tm = _manager()
    assert set(SDLM_TASKS) <= set(tm.all_subtasks)
    assert "sdlm_paper" in tm.all_tags
    assert set(EXPECTED_DOCS) == set(SDLM_TASKS)
    assert sorted(p.stem for p in tasks_path().glob("*.yaml")) == sorted(SDLM_TASKS)


def test_the_task_table_is_the_yamls():
    """sdlm.tasks.TASKS against tasks/*.yaml, read as text: the same names, each tagged sdlm_paper, unsafe_code
    exactly for the code tasks, the table's metric among the YAML's metrics, the YAML's loader reading the table's
    data source (a benchmark and split sdlm.data knows); Table-1 columns distinct, labels written out by hand."""
    import re

    import yaml

    from sdlm import data as sdata
    from sdlm.tasks import PAPER_TAG, TASKS, table1_columns

    yamls = {}
    for path in tasks_path().glob("*.yaml"):
        cfg = yaml.safe_load(path.read_text().replace("!function ", ""))
        yamls[cfg["task"]] = cfg
    assert set(yamls) == set(TASKS)
    loaders = (tasks_path() / "utils.py").read_text()
    for name, t in TASKS.items():
        cfg = yamls[name]
        assert cfg["tag"] == PAPER_TAG, name
        assert bool(cfg.get("unsafe_code")) == t.runs_code, name
        assert t.metric.split(",")[0] in [m["metric"] for m in cfg["metric_list"]], name
        loader = cfg["custom_dataset"].removeprefix("utils.")
        body = re.search(rf"\ndef {loader}\(\*\*kwargs\):\n(.*?)\n(?=\S)", loaders, re.S).group(1)
        assert f'"{name}"' in body, (name, loader)  # the loader asks the table for its own task's data
        bench, split = t.data
        assert split in sdata.BENCHMARKS[bench].files, name
    assert sorted(t.column for t in TASKS.values()) == list(range(len(TASKS)))
    assert table1_columns() == ["GSM8K", "MATH", "GPQA", "HumanEval", "HumanEval+", "MBPP", "MBPP+", "IFEval",
                                "MBPP-full"]


def test_a_name_like_ours_is_an_error_everywhere():
    """No silent default for a task that looks like ours but is not in the table: the report, fidelity and the
    data loader all refuse it; an lm-eval stock task is described as one."""
    from sdlm.data import task_records
    from sdlm.fidelity import answer_of
    from sdlm.tasks import UnknownTaskError, task_info

    for use in (task_info, lambda n: answer_of(n, {"filtered_resps": ["x"]}), task_records):
        with pytest.raises(UnknownTaskError, match="unknown task 'gsm8k_sdlmx'; did you mean gsm8k_sdlm"):
            use("gsm8k_sdlmx")
    stock = task_info("hellaswag")
    assert (stock.kind, stock.metric, stock.answer, stock.label) == ("stock", None, None, "hellaswag")
    with pytest.raises(ValueError, match="not one of ours"):
        task_records("hellaswag")


def test_no_absolute_paths_in_yamls():
    for path in tasks_path().glob("*.yaml"):
        text = path.read_text()
        assert "/work/" not in text and "shared/data" not in text and "data_files" not in text, path


# ------------------------------------------------------------------------------------ offline loading
@needs_data
@pytest.mark.parametrize("name", OFFLINE)
def test_task_builds_offline_with_expected_doc_count(loaded_tasks, name):
    task = loaded_tasks[name]
    assert len(task.test_docs()) == EXPECTED_DOCS[name]
    assert task.OUTPUT_TYPE == "generate_until"
    gen = task.config.generation_kwargs
    assert gen["until"] == [] and gen["do_sample"] is False
    assert gen["max_gen_toks"] == {"gsm8k_sdlm": 2048, "math500_sdlm": 2048}.get(
        name, 512 if name.startswith("mbpp") else 1024)


@needs_data
def test_metadata_key_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("SDLM_DATA_DIR", "/nonexistent/sdlm-data")
    task = _manager({"sdlm_data_dir": DATA}).load(["gsm8k_sdlm"])["tasks"]["gsm8k_sdlm"]
    assert len(task.test_docs()) == 1319


def test_missing_data_directory_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SDLM_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match="SDLM_DATA_DIR=.*nope is not a directory"):
        _manager().load(["gsm8k_sdlm"])
    monkeypatch.setenv("SDLM_DATA_DIR", str(tmp_path))  # exists, but without the files
    with pytest.raises(DataNotFoundError, match="SDLM_DATA_DIR=.* must hold mbpp/sanitized-mbpp.json"):
        _manager().load(["mbpp_sdlm"])


def test_unset_directory_offline_is_one_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.delenv("SDLM_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataNotFoundError, match="SDLM_DATA_DIR is not set .* math500/test.jsonl"):
        _manager().load(["math500_sdlm"])


# ------------------------------------------------------------------------------------- task names
def test_resolve_tasks():
    assert resolve_tasks("gsm8k_sdlm, mbpp_sdlm") == ["gsm8k_sdlm", "mbpp_sdlm"]
    assert resolve_tasks(["sdlm_paper"]) == ["sdlm_paper"]
    with pytest.raises(ValueError) as err:
        resolve_tasks(["gsm8k_sdlm", "gsm8k_sdml"])
    msg = str(err.value)
    assert msg.startswith("unknown task 'gsm8k_sdml'") and "did you mean gsm8k_sdlm" in msg
    assert "available: gsm8k_sdlm, math500_sdlm" in msg
    with pytest.raises(ValueError, match="no task given"):
        resolve_tasks("")


def test_lm_eval_itself_raises_keyerror_for_unknown_names():
    # what resolve_tasks saves the user from
    with pytest.raises(KeyError, match="not a registered task"):
        _manager().load(["no_such_task"])


# ------------------------------------------------------------------------------------------ prompts
@needs_data
def test_gsm8k_and_math_prompts(loaded_tasks):
    task = loaded_tasks["gsm8k_sdlm"]
    doc = task.test_docs()[0]
    instruction = "Please reason step by step, and put your final answer within \\boxed{}."
    assert task.doc_to_text(doc) == doc["question"] + "\n" + instruction
    assert _context(task, doc) == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{doc['question']}\n{instruction}"
        "<|im_end|>\n<|im_start|>assistant\n")
    task = loaded_tasks["math500_sdlm"]
    doc = task.test_docs()[0]
    assert task.doc_to_text(doc) == doc["problem"] + "\n" + instruction
    assert task.doc_to_target(doc) == doc["answer"]


@needs_data
def test_humaneval_prompt(loaded_tasks):
    task = loaded_tasks["humaneval_sdlm"]
    doc = task.test_docs()[0]
    assert task.doc_to_text(doc) == (
        "Read the following function signature and docstring, and fully implement the function described. "
        "Your response should only contain the code for this function.\n" + doc["prompt"])
    ctx = _context(task, doc)
    assert ctx.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nRead the following")
    assert ctx.endswith(doc["prompt"] + "<|im_end|>\n<|im_start|>assistant\n")


@needs_data
@pytest.mark.parametrize("name", ["mbpp_sdlm", "mbpp_full_sdlm", "mbpp_plus_sdlm"])
def test_mbpp_three_shot_multiturn(loaded_tasks, name):
    task = loaded_tasks[name]
    doc = task.test_docs()[0]
    messages = []
    task.fewshot_context(doc, num_fewshot=3, system_instruction=SYSTEM, apply_chat_template=True,
                         fewshot_as_multiturn=True, chat_template=lambda m, **kw: messages.extend(m) or "")
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert messages[0]["content"] == SYSTEM
    assert messages[1]["content"] == (
        "You are an expert Python programmer, and here is your task:\n"
        "Write a function to find the similar elements from the given two tuple lists.\n"
        "Your code should pass these tests:\n\n"
        "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
        "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
        "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n")
    assert messages[2]["content"] == (
        "```python\ndef similar_elements(test_tup1, test_tup2):\n    res = tuple(set(test_tup1) & set(test_tup2))\n"
        "    return (res)```")
    assert "n %% i == 0" in messages[4]["content"]  # verbatim OpenCompass exemplar
    assert messages[6]["content"].startswith("```python\nimport heapq as hq\n")
    text = doc.get("text") or doc["prompt"]
    assert messages[-1]["content"] == (
        f"You are an expert Python programmer, and here is your task:\n{text}\n"
        "Your code should pass these tests:\n\n" + "\n".join(doc["test_list"]) + "\n")
    rendered = _context(task, doc)
    assert rendered.count("<|im_start|>user\n") == 4 and rendered.count("<|im_start|>assistant\n") == 4
    assert rendered.endswith("<|im_start|>assistant\n")


@needs_data
def test_mbpp_sanitized_test_split_is_task_ids_11_to_510(loaded_tasks):
    ids = [d["task_id"] for d in loaded_tasks["mbpp_sdlm"].test_docs()]
    assert ids[0] == 11 and ids[-1] <= 510 and ids == sorted(ids)
    full = [d["task_id"] for d in loaded_tasks["mbpp_full_sdlm"].test_docs()]
    assert full == list(range(11, 511))


# ------------------------------------------------------------------------------------------ scoring
def _gold_reply(name: str, doc: dict) -> str:
    if name == "gsm8k_sdlm":
        body, n = doc["answer"].rsplit("####", 1)
        return f"{body}So the answer is $\\boxed{{{n.strip()}}}$."
    if name == "math500_sdlm":
        return doc["solution"]
    if name.startswith("humaneval"):
        return f"Here you go:\n```python\n{doc['prompt']}{doc['canonical_solution']}\n```\nDone."
    return f"```python\n{doc['code']}```"


def _wrong_reply(name: str, doc: dict) -> str:
    if name == "gsm8k_sdlm":
        return "The answer is \\boxed{-123456}."
    if name == "math500_sdlm":
        return "$\\boxed{\\text{no idea}}$"
    return "```python\ndef nothing():\n    return None\n```"


@needs_data
@pytest.mark.parametrize("name", OFFLINE)
def test_process_results_gold_and_wrong(loaded_tasks, name):
    task = loaded_tasks[name]
    docs = task.test_docs()
    primary = {"gsm8k_sdlm": "exact_match", "math500_sdlm": "math_verify"}.get(name, "pass_at_1")
    for i in (0, 1):
        doc = docs[i]
        assert task.process_results(doc, [_gold_reply(name, doc)])[primary] == 1.0, (name, i)
        assert task.process_results(doc, [_wrong_reply(name, doc)])[primary] == 0.0, (name, i)
    if name == "gsm8k_sdlm":
        doc = docs[0]
        n = doc["answer"].rsplit("####", 1)[1].strip()
        assert task.process_results(doc, [f"The answer is {n}."]) == {"exact_match": 0.0, "exact_match_flex": 1.0}


# -------------------------------------------------------------------------------- end to end (lm-eval)
class OracleLM(LM):
    """An lm-eval LM that answers every request with the gold reply of its doc (for plumbing tests)."""

    def __init__(self):
        super().__init__()
        self.prompts: list[str] = []

    @property
    def tokenizer_name(self) -> str:
        return "chatml-oracle"

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        return chatml(chat_history, add_generation_prompt)

    def generate_until(self, requests, disable_tqdm: bool = False):
        out = []
        for req in requests:
            self.prompts.append(req.args[0])
            out.append(_gold_reply(req.task_name, req.doc))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


@needs_data
def test_simple_evaluate_end_to_end(monkeypatch):
    from lm_eval import simple_evaluate

    monkeypatch.setenv("SDLM_DATA_DIR", DATA)
    lm = OracleLM()
    names = ["gsm8k_sdlm", "math500_sdlm", "humaneval_sdlm", "mbpp_sdlm"]
    out = simple_evaluate(
        model=lm, tasks=names, task_manager=_manager(), limit=3, apply_chat_template=True,
        system_instruction=SYSTEM, fewshot_as_multiturn=True, confirm_run_unsafe_code=True,
        bootstrap_iters=0, log_samples=False,
    )
    res = out["results"]
    assert res["gsm8k_sdlm"]["exact_match,none"] == 1.0
    assert res["gsm8k_sdlm"]["exact_match_flex,none"] == 1.0
    assert res["math500_sdlm"]["math_verify,none"] == 1.0
    assert res["humaneval_sdlm"]["pass_at_1,none"] == 1.0
    assert res["mbpp_sdlm"]["pass_at_1,none"] == 1.0
    assert out["n-shot"]["mbpp_sdlm"] == 3 and out["n-shot"]["gsm8k_sdlm"] == 0
    assert len(lm.prompts) == 12
    assert all(p.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n") for p in lm.prompts)
    assert all(p.endswith("<|im_start|>assistant\n") for p in lm.prompts)
    mbpp_prompts = [p for p in lm.prompts if "expert Python programmer" in p]
    assert len(mbpp_prompts) == 3 and all(p.count("<|im_start|>assistant\n") == 4 for p in mbpp_prompts)


def test_code_tasks_demand_unsafe_code_confirmation():
    import yaml

    for name in SDLM_TASKS:
        text = (tasks_path() / f"{name}.yaml").read_text().replace("!function", "")
        cfg = yaml.safe_load(text)
        assert bool(cfg.get("unsafe_code")) == ("humaneval" in name or "mbpp" in name), name
