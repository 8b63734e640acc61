"""Visibility rules of SDLM (spec sections 2-4) as boolean tensors.

Every token of a forward pass -- clean training tokens, KV-cache entries, fed causal tokens, mask
blocks, self-speculative segments -- is described by three per-token tensors:

* ``pos``:   its position id;
* ``seg``:   ``MAIN`` (0) for the ordinary causal stream (clean tokens, the KV cache, accepted
             tokens), ``k >= 1`` for the k-th side segment (an NSP block, a decoding block, a
             self-speculative verify segment), ``PAD`` (-1) for padding and cache holes;
* ``block``: True for tokens of the bidirectional block part of a side segment.

One rule then covers training, cached and uncached confidence decoding and the verify pass:

* a main query sees main keys at positions ``<= its own`` (causal);
* a side-segment query sees main keys at positions ``< start`` of its segment -- so a block never sees
  the clean copy of its own first token, nor anything after it (spec section 2);
* inside one side segment: causal by position, and bidirectional between block tokens unless
  ``causal_attn``;
* nothing else (other segments, padding) is ever visible.

Only :func:`to_additive` knows what the model wants (an additive float mask); the rest is boolean.
"""

from __future__ import annotations

import torch

MAIN = 0
PAD = -1


def main_limit(pos: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Per query: the exclusive upper bound on positions of main-stream keys it may see.

    Main tokens see up to and including themselves (``pos + 1``); a side segment sees main tokens
    strictly before its first position; padding sees nothing. ``pos``/``seg``: (B, T).
    """
    big = torch.iinfo(pos.dtype).max
    side = seg > MAIN
    # first (smallest) position of every side segment, broadcast back to its tokens
    n_seg = int(seg.max().item()) + 1 if seg.numel() else 1
    starts = torch.full((pos.shape[0], max(n_seg, 1)), big, dtype=pos.dtype, device=pos.device)
    starts.scatter_reduce_(1, seg.clamp(min=0), torch.where(side, pos, big), reduce="amin")
    seg_start = starts.gather(1, seg.clamp(min=0))
    limit = torch.where(side, seg_start, pos + 1)
    return torch.where(seg == PAD, torch.zeros_like(pos), limit)


def visibility(
    q_pos: torch.Tensor,
    q_seg: torch.Tensor,
    q_block: torch.Tensor,
    k_pos: torch.Tensor,
    k_seg: torch.Tensor,
    k_block: torch.Tensor,
    *,
    causal_attn: bool,
    q_limit: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean (B, Tq, Tk) mask: True where query q may attend to key k.

    Queries and keys are described separately because with a KV cache the keys are the cache entries
    followed by the fed tokens. ``q_limit`` defaults to :func:`main_limit` of the queries, which is
    right whenever every side segment is fully among the queries (always the case here).
    """
    if q_limit is None:
        q_limit = main_limit(q_pos, q_seg)
    qp, qs, qb, ql = (t[:, :, None] for t in (q_pos, q_seg, q_block, q_limit))
    kp, ks, kb = (t[:, None, :] for t in (k_pos, k_seg, k_block))
    sees_main = (ks == MAIN) & (kp < ql)
    same_side = (qs == ks) & (qs > MAIN)
    in_segment = same_side & ((kp <= qp) | (qb & kb & (not causal_attn)))
    return sees_main | in_segment


def self_visibility(pos: torch.Tensor, seg: torch.Tensor, block: torch.Tensor, *, causal_attn: bool) -> torch.Tensor:
    """Visibility among the tokens of one sequence (no cache): (B, T, T)."""
    return visibility(pos, seg, block, pos, seg, block, causal_attn=causal_attn)


def nsp_segments(position_ids: torch.Tensor, block_size: int, valid: torch.Tensor | None = None):
    """Segment ids and block flags of NSP training rows, derived from position ids (spec section 2).

    The clean part ends where position ids first drop; after it come consecutive blocks of
    ``block_size`` tokens. ``valid`` (B, T) marks real tokens (padding is False). Returns
    ``(seg, block)``, both (B, T).
    """
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    b, t = position_ids.shape
    if valid is None:
        valid = torch.ones_like(position_ids, dtype=torch.bool)
    valid = valid.bool()
    idx = torch.arange(t, device=position_ids.device).expand(b, t)
    drop = torch.zeros_like(valid)
    drop[:, 1:] = (position_ids[:, 1:] <= position_ids[:, :-1]) & valid[:, 1:]
    # clean length n per row: first drop, or the number of valid tokens when there is no block
    n_valid = valid.sum(1, keepdim=True)
    first_drop = torch.where(drop, idx, torch.full_like(idx, t)).min(1, keepdim=True).values
    n_clean = torch.minimum(first_drop, n_valid)
    in_block = (idx >= n_clean) & valid
    seg = torch.where(in_block, (idx - n_clean) // block_size + 1, torch.zeros_like(idx))
    seg = torch.where(valid, seg, torch.full_like(idx, PAD))
    return seg, in_block


def training_visibility(
    position_ids: torch.Tensor, block_size: int, *, causal_attn: bool = False, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean (B, T, T) block-diffusion mask of NSP rows, from position ids (spec section 2)."""
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    seg, block = nsp_segments(position_ids, block_size, valid)
    return self_visibility(position_ids, seg, block, causal_attn=causal_attn)


def to_additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, Tq, Tk) boolean -> (B, 1, Tq, Tk) additive float mask for a stock transformers model.

    Hidden entries get the dtype's most negative finite value, not -inf, so a fully hidden row
    (padding) gives a uniform softmax instead of NaNs in fp16/bf16/fp32 alike (spec section 8).
    """
    zero = torch.zeros((), dtype=dtype, device=visible.device)
    neg = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=visible.device)
    return torch.where(visible, zero, neg)[:, None]
