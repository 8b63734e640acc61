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


def decode_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over per-request stats rows: TPF = tokens / NFE; tokens/s over the *batches'* wall time.

    Batch wall time as in :func:`batch_walls`.
    """
    new_tokens = sum(int(r["new_tokens"]) for r in rows)
    nfe = sum(int(r["nfe"]) for r in rows)
    batches = batch_walls(rows).values()
    prefill = sum(b["prefill_s"] for b in batches)
    decode = sum(b["decode_s"] for b in batches)
    width = max((len(r.get("accepted_hist") or []) for r in rows), default=0)
    hist = [sum((r.get("accepted_hist") or [])[k] if k < len(r.get("accepted_hist") or []) else 0 for r in rows)
            for k in range(width)]
    wall = prefill + decode
    return {
        "requests": len(rows),
        "new_tokens": new_tokens,
        "nfe": nfe,
        "tpf": new_tokens / nfe if nfe else 0.0,
        "tokens_per_s": new_tokens / wall if wall > 0 else 0.0,
        "prefill_s": prefill,
        "decode_s": decode,
        "wall_s": wall,
        "accepted_hist": hist,
        "discarded_tokens": sum(int(r.get("discarded_tokens", 0)) for r in rows),
    }
