"""Self-distillation SFT data: the base model's own greedy answers as retrofit targets.

Why: NSP teaches a model to predict D tokens of a target at once; tokens the model itself would emit
with high confidence are the easiest to predict in parallel, so targets written by the model (rather
than by people) let a short retrofit accept longer blocks (measured in README, "Retrofit options").
The prompts stay those of the SFT records; only the last assistant turn is replaced.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sdlm.progress import Progress
from sdlm.sft_data import chat_prompt, last_assistant_turn

__all__ = ["chat_prompt", "self_distill"]  # chat_prompt: re-exported for its older import path


def self_distill(model: Any, tokenizer: Any, records: Sequence[dict[str, Any]], *, max_new_tokens: int = 320,
                 batch_size: int = 16, drop_unfinished: bool = False, log: Any = None) -> tuple[list[dict], dict]:
    """Replace each record's last assistant turn with the model's greedy answer to the same prompt.

    Returns ``(records, report)``; the report counts answers that hit ``max_new_tokens`` without EOS
    (kept, truncated, unless ``drop_unfinished``) and the decoding time.
    """
    from sdlm.decoding import DecodeSettings, generate

    settings = DecodeSettings(alg="ar", max_new_tokens=max_new_tokens, batch_size=batch_size)  # validated up front
    prompts = [chat_prompt(tokenizer, r) for r in records]
    out: list[dict] = []
    unfinished = tokens = 0
    t0 = time.perf_counter()
    chunk = max(batch_size, 1)  # one batch per call: a progress line at least once a minute
    progress = Progress(len(prompts), "self-distill prompts", stream=log) if log is not None else None
    for start in range(0, len(prompts), chunk):
        gens = generate(model, tokenizer, prompts[start:start + chunk], settings=settings)
        for rec, g in zip(records[start:start + chunk], gens):
            tokens += g.stats.new_tokens
            if g.finish_reason != "eos":
                unfinished += 1
                if drop_unfinished:
                    continue
            msgs = [dict(m) for m in rec["messages"]]
            last = last_assistant_turn(msgs)
            msgs[last] = {"role": "assistant", "content": g.text.strip()}
            out.append({"messages": msgs[: last + 1]})
        if progress is not None:
            progress.update(min(start + chunk, len(prompts)), f"{tokens} tokens, {unfinished} unfinished")
    report = {"n_prompts": len(prompts), "n_records": len(out), "unfinished": unfinished,
              "unfinished_dropped": drop_unfinished, "new_tokens": tokens, "max_new_tokens": max_new_tokens,
              "seconds": round(time.perf_counter() - t0, 1)}
    return out, report
