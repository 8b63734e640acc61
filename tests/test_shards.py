"""The bookkeeping of sharded and data-parallel cells (sdlm.shards, sdlm.evaluate): which docs a shard takes, one
order for samples, lm-eval's padding answers dropped, loads merged, refusals, and metrics recomputed from samples
exactly as lm-eval computes them for one process. The end-to-end equality with an unsharded cell is
tests/test_scale_out.py's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sdlm.shards import Shard, canonical_samples, merge_loads, trim_padding

from datadir import DATA


def test_shards_partition_the_docs():
    assert Shard.parse("1/4") == Shard.parse("1of4") == Shard(1, 4) and Shard(1, 4).name == "1of4"
    parts = [Shard(i, 3).doc_ids(10) for i in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(d for p in parts for d in p) == list(range(10))
    assert Shard(4, 5).doc_ids(3) == []  # more shards than docs: an empty shard (written at once, no model)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="i/K"):
            Shard.parse(bad)


def test_one_order_and_no_padding_answers():
    rows = [{"doc_id": d, "filter": f} for f in ("strict", "flex") for d in (0, 2, 4)]
    rows += [{"doc_id": d, "filter": f} for f in ("strict", "flex") for d in (1, 3)]  # rank 1 after rank 0
    assert [(r["filter"], r["doc_id"]) for r in canonical_samples(rows)] == (
        [("strict", d) for d in range(5)] + [("flex", d) for d in range(5)])
    padded = [{"resps": [["a", "a"]]}, {"resps": [["b"]]}]
    trim_padding(padded, 1)
    assert padded == [{"resps": [["a"]]}, {"resps": [["b"]]}]


def test_merged_load_keeps_the_busiest_moment():
    calm, busy = {"loadavg": [1.0, 1, 1], "usable_cores": 2}, {"loadavg": [3.5, 3, 3], "usable_cores": 2}
    merged = merge_loads([{"start": calm, "end": calm}, {"start": busy, "end": calm}])
    assert merged["start"] == busy and merged["end"] == calm and len(merged["shards"]) == 2


def _task(name: str, shots: int, sampler) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(task=name, num_fewshot=shots), sampler=sampler, eval_docs=[{}] * 7)


def test_shard_doc_ids_follow_the_limit_and_refuse_random_few_shot():
    from lm_eval.api.samplers import ContextSampler, FirstNSampler

    from sdlm.evaluate import _shard_doc_ids

    first_n = FirstNSampler.__new__(FirstNSampler)
    assert _shard_doc_ids([_task("t", 3, first_n)], 5, Shard(1, 2)) == {"t": [1, 3]}
    assert _shard_doc_ids([_task("t", 0, None)], None, Shard(0, 3)) == {"t": [0, 3, 6]}
    with pytest.raises(ValueError) as err:
        _shard_doc_ids([_task("t", 2, ContextSampler.__new__(ContextSampler))], None, Shard(0, 2))
    assert "task t samples its 2 few-shot examples at random" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="not of groups"):
        _shard_doc_ids([{"a group": None}], None, Shard(0, 2))


@pytest.mark.skipif(DATA is None, reason="benchmark data not found")
def test_metrics_from_samples_equal_lm_evals(monkeypatch):
    """task_metrics (merges, data parallel) on a task's logged samples gives what lm-eval's own aggregation gives
    for the same per-doc values in doc order: means and stderrs, every filter, bit for bit."""
    from lm_eval.evaluator_utils import _compute_task_aggregations

    from sdlm.evaluate import task_metrics
    from sdlm.tasks import task_manager

    monkeypatch.setenv("SDLM_DATA_DIR", str(DATA))
    task = task_manager(include_defaults=False).load(["gsm8k_sdlm"])["tasks"]["gsm8k_sdlm"]
    values = {"strict": [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], "flex": [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]}
    samples = [{"doc_id": d, "filter": f, "metrics": ["exact_match"], "exact_match": v}
               for f, vs in values.items() for d, v in enumerate(vs)]
    ours = task_metrics(task, samples, 100000)
    theirs, n = _compute_task_aggregations(task, {("exact_match", f): vs for f, vs in values.items()}, 100000)
    assert ours == theirs and n == 7
    assert ours["exact_match,strict"] == pytest.approx(4 / 7) and ours["exact_match_stderr,flex"] > 0
