"""Wall-clock accounting over per-request decode stats (stdlib only, so the report can use it without torch)."""

from __future__ import annotations

from typing import Any, Iterable


def batch_walls(rows: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, float]]:
    """Group per-request stats rows by decoded batch ``(rank, batch)``.

    Requests decoded together share one clock, so a batch's time is its prefill plus its *longest* decode,
    counted once; summing per-request times would count a batch ``batch_size`` times. Returns, per batch,
    ``n`` (requests), ``tokens``, ``prefill_s``, ``decode_s``, ``wall_s``. A row without a batch id is a batch
    of its own.
    """
    out: dict[tuple, dict[str, float]] = {}
    for r in rows:
        b = out.setdefault((r.get("rank", 0), r.get("batch", id(r))),
                           {"n": 0, "tokens": 0, "prefill_s": 0.0, "decode_s": 0.0})
        b["n"] += 1
        b["tokens"] += int(r.get("new_tokens") or 0)
        b["prefill_s"] = max(b["prefill_s"], float(r.get("prefill_s") or 0.0))
        b["decode_s"] = max(b["decode_s"], float(r.get("decode_s") or 0.0))
    for b in out.values():
        b["wall_s"] = b["prefill_s"] + b["decode_s"]
    return out
