"""Self-distillation SFT data: the base model's own greedy answers as retrofit targets.

Why: NSP teaches a model to predict D tokens of a target at once; tokens the model itself would emit
with high confidence are the easiest to predict in parallel, so targets written by the model (rather
than by people) let a short retrofit accept longer blocks (measured in README, "Retrofit options").
The prompts stay those of the SFT records; only the last assistant turn is replaced.

Resuming: with ``partial=<file>`` every finished batch (raw answers) is appended to that file
(:class:`sdlm.resume.PartialLog`, tied to the prompts, weights and settings); a rerun keeps those batches and
decodes the rest in the same batches, so the records equal an uninterrupted run's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from sdlm.progress import Progress
from sdlm.provenance import config_hash
from sdlm.resume import PartialLog, weights_digest
from sdlm.sft_data import chat_prompt, last_assistant_turn

__all__ = ["chat_prompt", "self_distill"]  # chat_prompt: re-exported for its older import path


def self_distill(model: Any, tokenizer: Any, records: Sequence[dict[str, Any]], *, max_new_tokens: int = 320,
                 batch_size: int = 16, drop_unfinished: bool = False, log: Any = None,
                 partial: str | os.PathLike | None = None) -> tuple[list[dict], dict]:
    """Replace each record's last assistant turn with the model's greedy answer to the same prompt.

    Returns ``(records, report)``; the report counts answers that hit ``max_new_tokens`` without EOS
    (kept, truncated, unless ``drop_unfinished``), the decoding time, and the batches kept from an earlier
    run (``resumed_batches``; with ``partial``, see the module doc; the caller deletes the file once its
    output is written).
    """
    from sdlm.decoding import DecodeSettings, generate

    # validated up front, resolved against the model once, then passed to every batch
    settings = DecodeSettings(alg="ar", max_new_tokens=max_new_tokens, batch_size=batch_size).resolve(model.config)
    prompts = [chat_prompt(tokenizer, r) for r in records]
    chunk = max(batch_size, 1)  # one batch per call: a progress line at least once a minute
    kept: dict[int, list[dict]] = {}
    plog = None
    if partial is not None:
        param = next(model.parameters())
        plog = PartialLog(partial, {"job": "distill", "weights_sha256": weights_digest(model),
                                    "prompts_sha256": config_hash(prompts), "n_prompts": len(prompts),
                                    "max_new_tokens": max_new_tokens, "batch_size": chunk,
                                    "dtype": str(param.dtype), "device": param.device.type}, stream=log)
        kept = {int(r["batch"]): r["answers"] for r in plog.kept}
    out: list[dict] = []
    unfinished = tokens = resumed = 0
    t0 = time.perf_counter()
    progress = Progress(len(prompts), "self-distill prompts", stream=log) if log is not None else None
    for b, start in enumerate(range(0, len(prompts), chunk)):
        answers = kept.get(b)
        if answers is not None and len(answers) == len(prompts[start:start + chunk]):
            resumed += 1
            if progress is not None:
                progress.skip(len(answers))
        else:
            gens = generate(model, tokenizer, prompts[start:start + chunk], settings=settings)
            answers = [{"text": g.text, "finish_reason": g.finish_reason, "new_tokens": g.stats.new_tokens}
                       for g in gens]
            if plog is not None:
                plog.append({"batch": b, "answers": answers})
        for rec, a in zip(records[start:start + chunk], answers):
            tokens += a["new_tokens"]
            if a["finish_reason"] != "eos":
                unfinished += 1
                if drop_unfinished:
                    continue
            msgs = [dict(m) for m in rec["messages"]]
            last = last_assistant_turn(msgs)
            msgs[last] = {"role": "assistant", "content": a["text"].strip()}
            out.append({"messages": msgs[: last + 1]})
        if progress is not None:
            progress.update(min(start + chunk, len(prompts)), f"{tokens} tokens, {unfinished} unfinished")
    if plog is not None:
        plog.close()
    report = {"n_prompts": len(prompts), "n_records": len(out), "unfinished": unfinished,
              "unfinished_dropped": drop_unfinished, "new_tokens": tokens, "max_new_tokens": max_new_tokens,
              "seconds": round(time.perf_counter() - t0, 1), "batches": -(-len(prompts) // chunk),
              "resumed_batches": resumed}
    return out, report
