"""A cell split into K shards of doc ids, each its own job, merged into the files one unsharded job writes.
Stdlib only: the bookkeeping; :func:`sdlm.evaluate.merge_shards` recomputes the metrics with lm-eval's task.

Why: a 32B cell decodes for a day or two; as one job a node failure loses all of it, and it cannot use more
than its own GPUs. With ``eval.shards: K`` shard ``i`` evaluates the doc ids ``i, i+K, i+2K, ...`` of every task
(strided, so every shard gets as many long and short problems as the others) into ``shards/<i>of<K>/`` of the
cell folder, a finished shard (``shard.json``) is never recomputed, and the merge writes ``samples``, ``stats``,
``results.json`` and ``cell.json`` as an unsharded run would: samples byte-identical (they hold no clock), the
metrics recomputed from the merged samples in doc order, as lm-eval computes them for one process.

What a merge cannot make equal, because it is measured: every timing (``prefill_s``, ``decode_s``, ``wall_s``,
``tokens_per_s``, ``eval_wall_s``: summed over the shards), the machine's ``load``, the batch layout of the stats
rows (``batch``, ``batch_size``, ``rank``; rows carry their ``shard``), lm-eval's ``date`` and run times, and each
shard's ``provenance`` (host, time; its config and hash equal the unsharded cell's).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Shard", "canonical_samples", "merge_loads", "trim_padding"]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int) and isinstance(self.index, int) and self.count >= 1
                and 0 <= self.index < self.count):
            raise ValueError(f"a shard is i/K with K >= 1 and 0 <= i < K, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"1/4"`` or ``"1of4"`` (the folder name) -> Shard(1, 4); anything else a one-line ValueError."""
        m = re.fullmatch(r"\s*(\d+)\s*(?:/|of)\s*(\d+)\s*", str(text))
        if not m:
            raise ValueError(f"--shard must be i/K (e.g. 0/4), got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def name(self) -> str:
        return f"{self.index}of{self.count}"

    def doc_ids(self, n_docs: int) -> list[int]:
        """This shard's doc ids among the first ``n_docs`` (the task's docs after ``limit``), ascending."""
        return list(range(self.index, n_docs, self.count))


def canonical_samples(samples: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Logged samples in one order whatever the processes or shards: by filter (in the order they first
    appear), then doc id -- the order one lm-eval process logs them in."""
    rows = list(samples)
    filters: dict[Any, int] = {}
    for r in rows:
        filters.setdefault(r.get("filter"), len(filters))
    return sorted(rows, key=lambda r: (filters[r.get("filter")], r.get("doc_id") or 0))


def trim_padding(samples: Iterable[dict[str, Any]], repeats: int) -> None:
    """Drop the answers lm-eval's data parallelism appends for its padding copies: it pads the shorter ranks
    with their last request, whose response list then holds ``repeats`` answers twice (the same request, decoded
    once by the adapter). In place."""
    for s in samples:
        s["resps"] = [r[:repeats] if isinstance(r, list) else r for r in s.get("resps") or []]


def _excess(point: dict[str, Any] | None) -> float:
    if not point or not point.get("loadavg"):
        return float("-inf")
    return float(point["loadavg"][0]) - float(point.get("usable_cores") or 0)


def merge_loads(loads: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """The ``load`` of a merged cell: per moment (start, end) the busiest shard's (load minus usable cores), so a
    speed figure is marked busy when any shard ran on a busy machine; every shard's load under ``shards``."""
    out: dict[str, Any] = {}
    for when in ("start", "end"):
        points = [(ld or {}).get(when) for ld in loads]
        out[when] = max(points, key=_excess, default=None)
    out["shards"] = list(loads)
    return out
