"""``generate()``: greedy AR, confidence (``prob_conf``/``entropy_conf``) and self-speculative decoding.

The three loops below are the algorithms of spec sections 3-4 and nothing else; batching, cache holes,
positions, EOS/stop/budget clipping and statistics live in :class:`DecodeState`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .blocks import CONFIDENCE_ALGS, accept_lengths, confidence_block, greedy, pick, speculative_accept, verify_segments
from .settings import DecodeSettings
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
        tokens = greedy(state.forward(None))  # (B, 1): from the last causal token's logits
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
    draft = greedy(state.forward(block))  # (B, D): the prefill yields the first draft
    while not state.all_done:
        segments, block_cols = verify_segments(draft, state.length, mask_id)
        logits = state.forward(segments)[:, block_cols]  # (B, D segments, D, V)
        preds = greedy(logits)  # (B, D, D)
        k = state.append(draft, speculative_accept(draft, preds))
        draft = preds[torch.arange(len(k), device=k.device), (k - 1).clamp(min=0)]  # segment k-1's predictions
        (draft,) = state.retire(draft)


# ------------------------------------------------------------------------------------------- the API
def generate(
    model,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    *,
    alg: str | None = None,
    block_size: int | None = None,
    threshold: float | None = None,
    max_new_tokens: int | None = None,
    stop: Sequence[str] = (),
    batch_size: int | None = None,
    use_cache: bool | None = None,
    causal_attn: bool | None = None,
    mask_token_id: int | None = None,
    eos_token_ids: Sequence[int] | None = None,
    add_special_tokens: bool = False,
    settings: DecodeSettings | None = None,
) -> list[Generation]:
    """Decode ``prompts`` (already-templated strings, or token-id lists) greedily; one ``Generation`` each.

    How to decode is a :class:`DecodeSettings` (``settings``; defaults: prob_conf, tau 0.98, 256 new tokens,
    batch 8, cached); the keywords of the same names override single fields. ``block_size``/``mask_token_id``/
    ``causal_attn`` default to the model config's SDLM keys (:meth:`DecodeSettings.resolve`; settings already
    resolved are used as they are). Prompts are decoded in batches of ``batch_size`` grouped by length (results
    come back in input order; batched output equals unbatched output). A threshold > 1 accepts exactly one token
    per step.
    """
    given = dict(alg=alg, block_size=block_size, threshold=threshold, max_new_tokens=max_new_tokens,
                 batch_size=batch_size, use_cache=use_cache, causal_attn=causal_attn, mask_token_id=mask_token_id)
    changes = {k: v for k, v in given.items() if v is not None}
    s = (settings or DecodeSettings()).with_(**changes) if changes or settings is None else settings
    s = s.resolve(model.config)
    eos = list(eos_token_ids) if eos_token_ids is not None else eos_ids(model, tokenizer)
    ids = [_encode(tokenizer, p, add_special_tokens, i) for i, p in enumerate(prompts)]
    results: list[Generation | None] = [None] * len(ids)
    for chunk in length_sorted_batches([len(x) for x in ids], s.batch_size):
        for i, g in zip(chunk, decode_batch(model, tokenizer, [ids[i] for i in chunk], s, stop=stop, eos=eos)):
            results[i] = g
    return results  # type: ignore[return-value]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of the prompts in batches of ``batch_size``, longest first (rows of similar length share a batch,
    and memory errors show up at once): the one ordering of requests, for ``generate()`` and the adapter."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def decode_batch(model, tokenizer, ids: Sequence[Sequence[int]], settings: DecodeSettings, *,
                 stop: Sequence[str] = (), eos: Sequence[int]) -> list[Generation]:
    """Decode one batch of token-id prompts together, in the given order, with resolved ``settings``
    (:meth:`DecodeSettings.resolve`); ``eos``: the ids that end a row (:func:`eos_ids`)."""
    s = settings
    if not s.resolved:
        raise ValueError("decode_batch needs resolved settings (DecodeSettings.resolve against the model's config)")
    model.eval()
    with torch.inference_mode():
        state = DecodeState(model, tokenizer, [list(p) for p in ids], max_new_tokens=s.max_new_tokens,
                            block_size=s.block_size, causal_attn=s.causal_attn, eos_ids=list(eos), stop=list(stop),
                            use_cache=s.use_cache)
        if s.alg == "ar":
            decode_ar(state)
        elif s.alg in CONFIDENCE_ALGS:
            decode_confidence(state, alg=s.alg, threshold=s.threshold, block_size=s.block_size, mask_id=s.mask_token_id)
        else:
            decode_self_speculative(state, block_size=s.block_size, mask_id=s.mask_token_id)
    out: list[Generation | None] = [None] * len(ids)
    for row, fin in state.results.items():
        out[row] = Generation(fin.text, fin.token_ids, fin.finish_reason, fin.stats)
    return out  # type: ignore[return-value]


def _encode(tokenizer, prompt, add_special_tokens: bool, i: int) -> list[int]:
    ids = tokenizer.encode(prompt, add_special_tokens=add_special_tokens) if isinstance(prompt, str) else list(prompt)
    if not ids:
        raise ValueError(f"prompt {i} is empty: nothing to condition on")
    return [int(t) for t in ids]


def eos_ids(model, tokenizer) -> list[int]:
    """EOS ids from the tokenizer and the generation config (Qwen2.5 has two: <|im_end|> and <|endoftext|>)."""
    out: set[int] = set()
    for src in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            out.add(src)
        elif src:
            out.update(int(x) for x in src)
    return sorted(out)
