"""Benchmark records (sdlm.data): SDLM_DATA_DIR, explicit directories, hub fallback, splits, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sdlm import data as sdata
from sdlm.data import BENCHMARKS, DataNotFoundError, data_dir, data_file, load_records

from datadir import DATA, needs_data


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def tiny_dir(tmp_path):
    """A hand-written miniature of shared/data."""
    _write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"question": "1+1?", "answer": "1+1=2\n#### 2"}])
    rows = [{"text": f"task {i}", "code": "", "task_id": i, "test_setup_code": "", "test_list": [],
             "challenge_test_list": []} for i in (1, 10, 11, 510, 511, 600, 601, 974)]
    _write_jsonl(tmp_path / "mbpp" / "mbpp.jsonl", rows)
    return tmp_path


# --------------------------------------------------------------------------------------- locating
def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("SDLM_DATA_DIR", raising=False)
    assert data_dir() is None
    monkeypatch.setenv("SDLM_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    assert data_dir(other) == other  # an explicit directory wins over the environment
    monkeypatch.setenv("SDLM_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataNotFoundError, match="SDLM_DATA_DIR=.*missing is not a directory"):
        data_dir()


def test_local_files_and_explicit_override(monkeypatch, tiny_dir):
    monkeypatch.setenv("SDLM_DATA_DIR", str(tiny_dir))
    assert load_records("gsm8k") == [{"question": "1+1?", "answer": "1+1=2\n#### 2"}]
    monkeypatch.setenv("SDLM_DATA_DIR", "/nonexistent/sdlm-data")
    assert len(load_records("gsm8k", "test", data_dir=tiny_dir)) == 1
    assert data_file("gsm8k", "test", tiny_dir) == tiny_dir / "gsm8k" / "test.jsonl"


def test_mbpp_splits_by_task_id(tiny_dir):
    ids = {s: [r["task_id"] for r in load_records("mbpp", s, data_dir=tiny_dir)]
           for s in ("test", "prompt", "validation", "train", "all")}
    assert ids == {"test": [11, 510], "prompt": [1, 10], "validation": [511, 600], "train": [601, 974],
                   "all": [1, 10, 11, 510, 511, 600, 601, 974]}


def test_missing_file_names_the_setting_and_the_file(monkeypatch, tiny_dir):
    monkeypatch.setenv("SDLM_DATA_DIR", str(tiny_dir))
    with pytest.raises(DataNotFoundError) as err:
        load_records("math500")
    msg = str(err.value)
    assert "SDLM_DATA_DIR" in msg and "math500/test.jsonl" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_unset_dir_and_unreachable_hub_is_one_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (offline)")

    monkeypatch.delenv("SDLM_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataNotFoundError) as err:
        load_records("gsm8k", "test")
    msg = str(err.value)
    assert "SDLM_DATA_DIR is not set" in msg and "gsm8k/test.jsonl" in msg and "openai/gsm8k" in msg
    with pytest.raises(DataNotFoundError, match="SDLM_DATA_DIR"):
        load_records("gsm8k", "test", allow_hub=False)


@pytest.mark.skipif(os.environ.get("HF_DATASETS_OFFLINE") != "1", reason="needs HF_DATASETS_OFFLINE=1")
def test_real_offline_hub_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("SDLM_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError, match="SDLM_DATA_DIR is not set"):
        load_records("mbpp_plus")


def test_hub_fallback_when_unset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        fields = dict.fromkeys(("question", "answer", "problem", "solution", "prompt", "code", "test_list"), "x")
        return [{**fields, "task_id": {"prompt": 3, "test": 20, "validation": 520, "train": 700}.get(split, 0),
                 "src": f"{path}:{name}:{split}"}]

    monkeypatch.delenv("SDLM_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr("sdlm.data._hub_reachable", lambda *a, **k: True)  # the fake hub is up
    assert load_records("gsm8k", "train")[0]["src"] == "openai/gsm8k:main:train"
    assert len(load_records("math_train")) == 7  # one (fake) row per hendrycks_math subject config
    assert [r["task_id"] for r in load_records("mbpp_sanitized", "all")] == [3, 20, 520, 700]
    assert ("google-research-datasets/mbpp", "sanitized", "prompt") in calls


def test_humaneval_comes_from_the_wheel(monkeypatch):
    monkeypatch.delenv("SDLM_DATA_DIR", raising=False)
    problems = load_records("humaneval")
    assert len(problems) == 164
    assert set(problems[0]) == {"task_id", "prompt", "entry_point", "canonical_solution", "test"}


def test_unknown_names_and_splits():
    with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'; available: .*gsm8k"):
        load_records("gsm9k")
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_records("gsm8k", "validation")


def test_records_are_copies(tiny_dir):
    a = load_records("gsm8k", data_dir=tiny_dir)
    a[0]["question"] = "changed"
    assert load_records("gsm8k", data_dir=tiny_dir)[0]["question"] == "1+1?"


# ------------------------------------------------------------------------------------ real data
@needs_data
@pytest.mark.parametrize(
    "name, split, count",
    [(n, s, c) for n, b in BENCHMARKS.items() for s, c in b.expected.items()],
)
def test_record_counts(name, split, count):
    records = load_records(name, split, data_dir=DATA)
    assert len(records) == count
    if sdata.BENCHMARKS[name].id_ranges is not None and split != "all":
        assert all(int(r["task_id"]) in sdata.MBPP_SPLIT_RANGES[split] for r in records)


@needs_data
def test_field_names():
    assert set(load_records("gsm8k", data_dir=DATA)[0]) == {"question", "answer"}
    assert {"problem", "solution", "answer", "unique_id"} <= set(load_records("math500", data_dir=DATA)[0])
    assert set(load_records("math_train", data_dir=DATA)[0]) == {"problem", "level", "type", "solution"}
    assert {"text", "code", "task_id", "test_setup_code", "test_list"} <= set(load_records("mbpp", data_dir=DATA)[0])
    assert {"prompt", "code", "task_id", "test_imports", "test_list"} <= set(
        load_records("mbpp_sanitized", data_dir=DATA)[0])
    assert {"task_id", "prompt", "entry_point", "test"} <= set(load_records("humaneval_plus", data_dir=DATA)[0])
    assert {"task_id", "prompt", "code", "test_list", "test"} <= set(load_records("mbpp_plus", data_dir=DATA)[0])


def test_hub_records_without_a_needed_field_are_an_error(monkeypatch):
    import datasets

    from sdlm.data import DataFormatError

    monkeypatch.delenv("SDLM_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [{"question": "1+1?"}])
    monkeypatch.setattr("sdlm.data._hub_reachable", lambda *a, **k: True)  # the fake hub is up
    with pytest.raises(DataFormatError, match=r"the hub copy openai/gsm8k \(main\), row 0: no field 'answer'"):
        load_records("gsm8k", "test")


def test_no_data_folder_and_no_network_fails_at_once(monkeypatch):
    """Without a data folder and without a reachable hub, no `datasets` retries (~25 s): one line, now."""
    import time

    import datasets

    monkeypatch.delenv("SDLM_DATA_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://sdlm-unreachable.invalid")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub must not be tried"))
    t0 = time.monotonic()
    with pytest.raises(DataNotFoundError, match="hub copy openai/gsm8k .main. is unreachable"):
        load_records("gsm8k", "test")
    assert time.monotonic() - t0 < 20.0  # generous (a busy machine), still below datasets' ~25 s of retries


def test_mbpp_problem_as_a_humaneval_prompt():
    """The HumanEval-format SFT prompt of an MBPP problem, written out by hand: the reference's signature, the
    task text and the tests as doctest examples; a problem without a top-level def of the tested function has
    none."""
    from sdlm.sft_data import HUMANEVAL_INSTRUCTION, mbpp_humaneval_prompt

    record = {"text": "Write a function to add two numbers.", "task_id": 600,
              "code": "import math\r\ndef add_nums(a, b) -> int:\r\n    return a + b\r\n",
              "test_list": ["assert add_nums(1, 2) == 3", "assert add_nums(0, 0) == 0", "assert not add_nums(0, 0)"]}
    assert mbpp_humaneval_prompt(record) == (
        'def add_nums(a, b) -> int:\n'
        '    """ Write a function to add two numbers.\n'
        '    >>> add_nums(1, 2)\n    3\n'
        '    >>> add_nums(0, 0)\n    0\n'
        '    >>> not add_nums(0, 0)\n    True\n'
        '    """\n')
    method = dict(record, code="class S:\n    def add_nums(self, a, b):\n        return a + b\n")
    assert mbpp_humaneval_prompt(method) is None
    assert HUMANEVAL_INSTRUCTION.startswith("Read the following function signature and docstring")
