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


def _last_assistant(msgs: Sequence[dict[str, Any]]) -> int:
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
    if last is None:
        raise ValueError("a chat record needs an assistant turn to replace")
    return last


def chat_prompt(tokenizer: Any, record: dict[str, Any]) -> str:
    """The record's conversation up to (not including) its last assistant turn, templated for generation."""
    msgs = record["messages"]
    return tokenizer.apply_chat_template(msgs[: _last_assistant(msgs)], tokenize=False, add_generation_prompt=True)


def self_distill(model: Any, tokenizer: Any, records: Sequence[dict[str, Any]], *, max_new_tokens: int = 320,
                 batch_size: int = 16, drop_unfinished: bool = False, log: Any = None) -> tuple[list[dict], dict]:
    """Replace each record's last assistant turn with the model's greedy answer to the same prompt.

    Returns ``(records, report)``; the report counts answers that hit ``max_new_tokens`` without EOS
    (kept, truncated, unless ``drop_unfinished``) and the decoding time.
    """
    from sdlm.decoding import generate

    prompts = [chat_prompt(tokenizer, r) for r in records]
    out: list[dict] = []
    unfinished = tokens = 0
    t0 = time.perf_counter()
    chunk = max(batch_size * 4, 1)  # progress lines and partial timing every few batches
    for start in range(0, len(prompts), chunk):
        gens = generate(model, tokenizer, prompts[start:start + chunk], alg="ar", max_new_tokens=max_new_tokens,
                        batch_size=batch_size)
        for rec, g in zip(records[start:start + chunk], gens):
            tokens += g.stats.new_tokens
            if g.finish_reason != "eos":
                unfinished += 1
                if drop_unfinished:
                    continue
            msgs = [dict(m) for m in rec["messages"]]
            last = _last_assistant(msgs)
            msgs[last] = {"role": "assistant", "content": g.text.strip()}
            out.append({"messages": msgs[: last + 1]})
        if log is not None:
            print(f"[sdlm] self-distill {min(start + chunk, len(prompts))}/{len(prompts)} prompts, "
                  f"{tokens} tokens, {unfinished} unfinished", file=log, flush=True)
    report = {"n_prompts": len(prompts), "n_records": len(out), "unfinished": unfinished,
              "unfinished_dropped": drop_unfinished, "new_tokens": tokens, "max_new_tokens": max_new_tokens,
              "seconds": round(time.perf_counter() - t0, 1)}
    return out, report
