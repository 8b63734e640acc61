"""The pieces of spec sections 3-4 that are pure tensor functions: what a step feeds beside the causal
tokens (a decoding block, or the self-speculative verify segments), how logits become tokens and
confidences, and how many tokens a step accepts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from sdlm.decoders import ALGS, CONFIDENCE_ALGS  # noqa: F401  (re-exported; the names live in sdlm.decoders)


@dataclass
class Side:
    """Tokens fed after the causal ones in a step, (B, S) each; ``seg`` >= 1 (see sdlm.masks)."""

    ids: torch.Tensor
    pos: torch.Tensor
    seg: torch.Tensor
    block: torch.Tensor


def confidence_block(last_token: torch.Tensor, length: torch.Tensor, block_size: int, mask_id: int) -> Side:
    """``[x_{L-1}, M x (D-1)]`` at positions ``L-1 .. L+D-2`` (spec section 3).

    The block's first token duplicates the last accepted token; as a side segment starting at ``L-1`` it
    cannot see the real ``x_{L-1}``, exactly as an NSP block never sees the clean copy of its first token.
    """
    b, d = last_token.shape[0], block_size
    ar = torch.arange(d, device=length.device)
    ids = torch.full((b, d), mask_id, dtype=torch.long, device=length.device)
    ids[:, 0] = last_token
    pos = length[:, None] - 1 + ar
    seg = torch.ones((b, d), dtype=torch.long, device=length.device)
    block = torch.ones((b, d), dtype=torch.bool, device=length.device)
    return Side(ids, pos, seg, block)


@lru_cache(maxsize=32)
def _verify_template(block_size: int):
    """Column layout of the verify pass: for segment j, ``y_0..y_{j-1}`` (causal) then ``[y_j, M x (D-1)]``.

    Returns (rel_pos, seg, block, src, block_cols) as lists; ``src`` indexes the draft (-1 = mask token);
    ``block_cols[j]`` are the D columns of segment j's block.
    """
    rel, seg, block, src, block_cols = [], [], [], [], []
    for j in range(block_size):
        for i in range(j):
            rel.append(i), seg.append(j + 1), block.append(False), src.append(i)
        cols = []
        for i in range(block_size):
            cols.append(len(rel))
            rel.append(j + i), seg.append(j + 1), block.append(True), src.append(j if i == 0 else -1)
        block_cols.append(cols)
    return rel, seg, block, src, block_cols


def verify_segments(draft: torch.Tensor, length: torch.Tensor, mask_id: int) -> tuple[Side, torch.Tensor]:
    """The D verify segments of spec section 4 for a (B, D) draft, positions continuing from ``L``.

    Returns the side tokens (``D*D + D*(D-1)/2`` columns) and the (D, D) column index of every segment's block.
    """
    b, d = draft.shape
    dev = draft.device
    rel, seg, block, src, block_cols = (torch.tensor(t, device=dev) for t in _verify_template(d))
    ids = torch.where(src >= 0, draft[:, src.clamp(min=0)], torch.full_like(draft[:, :1], mask_id))
    pos = length[:, None] + rel
    return Side(ids, pos, seg.expand(b, -1), block.expand(b, -1)), block_cols


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The argmax tokens: every decoder here is greedy (AR steps, self-speculative drafts and checks)."""
    return logits.argmax(dim=-1)


def pick(logits: torch.Tensor, alg: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens and their confidence: max probability (``prob_conf``) or 1 - H/log V (``entropy_conf``)."""
    tokens = greedy(logits)
    logp = torch.log_softmax(logits.float(), dim=-1)
    if alg == "entropy_conf":
        entropy = -(logp.exp() * logp).sum(-1)
        return tokens, 1.0 - entropy / math.log(logits.shape[-1])
    return tokens, logp.gather(-1, tokens[..., None])[..., 0].exp()


def accept_lengths(conf: torch.Tensor, threshold: float) -> torch.Tensor:
    """Length of the longest prefix whose confidences all exceed ``threshold`` (strict), at least 1. (B, D) -> (B,).

    The floor of one applies to the prefix, not to position 0's test: ``[0.5, 0.99, 0.99, 0.99]`` at 0.9 has an
    empty confident prefix and accepts exactly one token (spec section 3), never the confident positions after it.
    """
    return (conf > threshold).long().cumprod(dim=1).sum(dim=1).clamp(min=1)


def speculative_accept(draft: torch.Tensor, preds: torch.Tensor) -> torch.Tensor:
    """Accepted count of a verify pass: ``y_0`` always, ``y_j`` while it equals segment j-1's block-index-0
    prediction. ``draft`` (B, D), ``preds`` (B, D segments, D) -> (B,)."""
    match = draft[:, 1:] == preds[:, :-1, 0]
    return 1 + match.long().cumprod(dim=1).sum(dim=1)
