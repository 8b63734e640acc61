"""``generate()``: greedy AR, confidence (``prob_conf``/``entropy_conf``) and self-speculative decoding.

The three loops below are the algorithms of spec sections 3-4 and nothing else; batching, cache holes,
positions, EOS/stop/budget clipping and statistics live in :class:`DecodeState`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sdlm.models import check_block_size, sdlm_settings

from .blocks import ALGS, CONFIDENCE_ALGS, accept_lengths, confidence_block, pick, speculative_accept, verify_segments
from .state import DecodeState
from .stats import DecodeStats


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "eos" | "stop" | "length"
    stats: DecodeStats


# ------------------------------------------------------------------------------------------- algorithms
def decode_ar(state: DecodeState) -> None:
    """Greedy autoregressive decoding with the KV cache: the baseline, on the same state and cache code."""
    while not state.all_done:
        logits = state.forward(None)  # (B, 1, V): the last causal token
        tokens, _ = pick(logits, "prob_conf")
        state.append(tokens, torch.ones_like(tokens[:, 0]))
        state.retire()


def decode_confidence(state: DecodeState, *, alg: str, threshold: float, block_size: int, mask_id: int) -> None:
    """Spec section 3: feed ``[x_{L-1}, M x (D-1)]``, keep the longest confident prefix (>= 1 token)."""
    while not state.all_done:
        block = confidence_block(state.last_token(), state.length, block_size, mask_id)
        logits = state.forward(block)  # (B, D, V): block logit i predicts token L+i
        tokens, conf = pick(logits, alg)
        state.append(tokens, accept_lengths(conf, threshold))
        state.retire()


def decode_self_speculative(state: DecodeState, *, block_size: int, mask_id: int) -> None:
    """Spec section 4: the block predictions are a draft; one verify pass checks all of it.

    Lossless w.r.t. one-token-per-step confidence decoding of the same model and D (tau > 1)."""
    block = confidence_block(state.last_token(), state.length, block_size, mask_id)
    draft, _ = pick(state.forward(block), "prob_conf")  # (B, D): prefill yields the first draft
    while not state.all_done:
        segments, block_cols = verify_segments(draft, state.length, mask_id)
        logits = state.forward(segments)[:, block_cols]  # (B, D segments, D, V)
        preds, _ = pick(logits, "prob_conf")  # (B, D, D)
        k = state.append(draft, speculative_accept(draft, preds))
        draft = preds[torch.arange(len(k), device=k.device), (k - 1).clamp(min=0)]  # segment k-1's predictions
        (draft,) = state.retire(draft)


# ------------------------------------------------------------------------------------------- the API
def generate(
    model,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    *,
    alg: str = "prob_conf",
    block_size: int | None = None,
    threshold: float = 0.98,
    max_new_tokens: int = 256,
    stop: Sequence[str] = (),
    batch_size: int = 8,
    use_cache: bool = True,
    causal_attn: bool | None = None,
    mask_token_id: int | None = None,
    eos_token_ids: Sequence[int] | None = None,
    add_special_tokens: bool = False,
) -> list[Generation]:
    """Decode ``prompts`` (already-templated strings, or token-id lists) greedily; one ``Generation`` each.

    ``block_size``/``mask_token_id``/``causal_attn`` default to the model config's SDLM keys. Prompts are
    decoded in batches of ``batch_size`` grouped by length (results come back in input order; batched
    output equals unbatched output). ``threshold`` must be > 0; a value > 1 accepts exactly one token per step.
    """
    settings = sdlm_settings(model.config)
    _check_args(alg, threshold, max_new_tokens, batch_size)
    d = block_size if block_size is not None else settings.block_size
    if alg != "ar":
        if d is None or int(d) < 1:
            raise ValueError(f"block_size must be a positive integer for alg={alg!r}, got {d!r} (config has none)")
        mask_token_id = mask_token_id if mask_token_id is not None else settings.mask_token_id
        if mask_token_id is None:
            raise ValueError(f"alg={alg!r} needs a mask token: the model config has no text_mask_token_id")
    d = int(d) if alg != "ar" else 1
    check_block_size(model.config, d)
    causal_attn = settings.causal_attn if causal_attn is None else causal_attn
    eos = list(eos_token_ids) if eos_token_ids is not None else _eos_ids(model, tokenizer)

    ids = [_encode(tokenizer, p, add_special_tokens, i) for i, p in enumerate(prompts)]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    results: list[Generation | None] = [None] * len(ids)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            state = DecodeState(model, tokenizer, [ids[i] for i in chunk], max_new_tokens=max_new_tokens,
                                block_size=d, causal_attn=causal_attn, eos_ids=eos, stop=list(stop),
                                use_cache=use_cache)
            if alg == "ar":
                decode_ar(state)
            elif alg in CONFIDENCE_ALGS:
                decode_confidence(state, alg=alg, threshold=threshold, block_size=d, mask_id=mask_token_id)
            else:
                decode_self_speculative(state, block_size=d, mask_id=mask_token_id)
            for row, fin in state.results.items():
                results[chunk[row]] = Generation(fin.text, fin.token_ids, fin.finish_reason, fin.stats)
    return results  # type: ignore[return-value]


def _check_args(alg: str, threshold: float, max_new_tokens: int, batch_size: int) -> None:
    if alg not in ALGS:
        raise ValueError(f"unknown alg {alg!r}; choose one of {', '.join(ALGS)}")
    if not isinstance(threshold, (int, float)) or math.isnan(threshold) or threshold <= 0:
        raise ValueError(f"threshold must be a number in (0, inf), got {threshold!r}")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")


def _encode(tokenizer, prompt, add_special_tokens: bool, i: int) -> list[int]:
    ids = tokenizer.encode(prompt, add_special_tokens=add_special_tokens) if isinstance(prompt, str) else list(prompt)
    if not ids:
        raise ValueError(f"prompt {i} is empty: nothing to condition on")
    return [int(t) for t in ids]


def _eos_ids(model, tokenizer) -> list[int]:
    """EOS ids from the tokenizer and the generation config (Qwen2.5 has two: <|im_end|> and <|endoftext|>)."""
    out: set[int] = set()
    for src in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            out.add(src)
        elif src:
            out.update(int(x) for x in src)
    return sorted(out)
