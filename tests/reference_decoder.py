"""A spec-literal reference decoder: the oracle of the conformance tests (tests/test_conformance.py).

Written from ``../shared/sdlm-method.md`` sections 3-4 alone, as plainly as possible and deliberately
independent of the engine: batch 1, no KV cache (every step recomputes the whole sequence), an explicit
4-D mask built entry by entry with Python loops, plain lists for the state. It imports nothing from
``sdlm`` -- only torch and the model itself -- so a mistake in the engine's masks, blocks or acceptance
rule cannot be copied into it.

Conventions read off the spec:

* TPF = generated tokens / forward passes; the prefill forward counts (section 0).
* Generated tokens include the EOS that ends a row, which is left out of the returned tokens (section 3).
* ``max_new_tokens`` is never exceeded: an accepted prefix is clipped to the budget (section 3 and 9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class Reference:
    tokens: list[int]  # returned tokens (EOS left out)
    new_tokens: int  # generated tokens, EOS included
    forwards: int
    accepted: list[int] = field(default_factory=list)  # tokens accepted per forward that accepted any


def _forward(model, ids: list[int], pos: list[int], visible: list[list[bool]]) -> torch.Tensor:
    """One full forward with an explicit additive (1, 1, T, T) mask; returns logits (T, V)."""
    dtype = next(model.parameters()).dtype
    hidden = torch.finfo(dtype).min  # most negative finite value: a fully hidden row gives no NaN
    mask = torch.tensor([[[[0.0 if v else hidden for v in row] for row in visible]]], dtype=dtype)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]), attention_mask=mask)
    return out.logits[0].double()


def _greedy_and_confidence(logits: torch.Tensor, alg: str) -> tuple[int, float]:
    """Greedy token and its confidence from one row of logits (section 3)."""
    p = torch.softmax(logits, dim=-1)
    token = int(torch.argmax(p))
    if alg == "prob_conf":
        return token, float(p[token])
    if alg == "entropy_conf":
        h = -sum(float(x) * math.log(float(x)) for x in p.tolist() if x > 0)
        return token, 1.0 - h / math.log(len(p))
    raise ValueError(alg)


def _finish(seq_new: list[int], proposal: list[int], budget: int, eos: set[int]) -> tuple[list[int], bool]:
    """Append an accepted proposal: clip to the budget, cut after the first EOS. Returns (taken, stopped)."""
    taken = []
    for tok in proposal:
        if len(seq_new) + len(taken) >= budget:
            break
        taken.append(tok)
        if tok in eos:
            return taken, True
    return taken, len(seq_new) + len(taken) >= budget


def confidence_decode(model, prompt: list[int], *, alg: str, tau: float, block_size: int, mask_id: int,
                      causal_attn: bool, max_new_tokens: int, eos: set[int]) -> Reference:
    """Section 3, recomputed from scratch each step.

    Fed: ``x_0 .. x_{L-1}`` (causal) then the block ``[x_{L-1}, M x (D-1)]`` at positions ``L-1 .. L+D-2``.
    Block rows see the clean tokens except the real ``x_{L-1}``, and the whole block (or the block causally
    when ``causal_attn``). Accept the longest prefix whose confidences all exceed tau, at least one token.
    """
    d = block_size
    seq = list(prompt)
    new: list[int] = []
    forwards = 0
    accepted_per_step: list[int] = []
    while True:
        n = len(seq)
        ids = seq + [seq[-1]] + [mask_id] * (d - 1)
        pos = list(range(n)) + [n - 1 + i for i in range(d)]
        t = n + d
        visible = [[False] * t for _ in range(t)]
        for q in range(n):  # clean rows: causal
            for k in range(q + 1):
                visible[q][k] = True
        for i in range(d):  # block rows
            q = n + i
            for k in range(n - 1):  # every clean token but the real x_{L-1}
                visible[q][k] = True
            for j in range(d):
                visible[q][n + j] = (j <= i) if causal_attn else True
        logits = _forward(model, ids, pos, visible)
        forwards += 1
        picks = [_greedy_and_confidence(logits[n + i], alg) for i in range(d)]
        k = 0
        while k < d and picks[k][1] > tau:
            k += 1
        k = max(1, k)
        taken, stopped = _finish(new, [tok for tok, _ in picks[:k]], max_new_tokens, eos)
        accepted_per_step.append(len(taken))
        new += taken
        seq += taken
        if stopped:
            break
    tokens = new[:-1] if new and new[-1] in eos else new
    return Reference(tokens, len(new), forwards, accepted_per_step)


def speculative_decode(model, prompt: list[int], *, block_size: int, mask_id: int, causal_attn: bool,
                       max_new_tokens: int, eos: set[int]) -> Reference:
    """Section 4: a section-3 prefill yields the draft ``y``; each verify step feeds, after the accepted
    sequence, D segments ``y_0..y_{j-1} | [y_j, M x (D-1)]`` with positions continuing from L, each seeing the
    sequence and its own tokens only. Accept ``y_0``, then ``y_j`` while it equals segment j-1's block-index-0
    prediction; the next draft is segment k-1's block predictions."""
    d = block_size
    seq = list(prompt)
    new: list[int] = []
    accepted_per_step: list[int] = []
    # prefill: exactly the first step of section 3, predictions only
    n = len(seq)
    ids = seq + [seq[-1]] + [mask_id] * (d - 1)
    pos = list(range(n)) + [n - 1 + i for i in range(d)]
    visible = [[False] * (n + d) for _ in range(n + d)]
    for q in range(n):
        for k in range(q + 1):
            visible[q][k] = True
    for i in range(d):
        for k in range(n - 1):
            visible[n + i][k] = True
        for j in range(d):
            visible[n + i][n + j] = (j <= i) if causal_attn else True
    logits = _forward(model, ids, pos, visible)
    forwards = 1
    draft = [int(torch.argmax(logits[n + i])) for i in range(d)]
    while True:
        n = len(seq)
        ids, pos, seg_of, is_block, block_rows = list(seq), list(range(n)), [0] * n, [False] * n, []
        for j in range(d):
            for i in range(j):  # causal continuation y_0 .. y_{j-1}
                ids.append(draft[i]), pos.append(n + i), seg_of.append(j + 1), is_block.append(False)
            rows = []
            for i in range(d):  # block [y_j, M x (D-1)]
                rows.append(len(ids))
                ids.append(draft[j] if i == 0 else mask_id), pos.append(n + j + i), seg_of.append(j + 1)
                is_block.append(True)
            block_rows.append(rows)
        t = len(ids)
        visible = [[False] * t for _ in range(t)]
        for q in range(t):
            for k in range(t):
                if seg_of[q] == 0:
                    visible[q][k] = seg_of[k] == 0 and k <= q
                elif seg_of[k] == 0:
                    visible[q][k] = True  # segments see the whole accepted sequence
                elif seg_of[k] == seg_of[q]:
                    both_block = is_block[q] and is_block[k]
                    visible[q][k] = pos[k] <= pos[q] if (causal_attn or not both_block) else True
        logits = _forward(model, ids, pos, visible)
        forwards += 1
        preds = [[int(torch.argmax(logits[r])) for r in rows] for rows in block_rows]  # preds[j][i]
        k = 1
        while k < d and draft[k] == preds[k - 1][0]:
            k += 1
        taken, stopped = _finish(new, draft[:k], max_new_tokens, eos)
        accepted_per_step.append(len(taken))
        new += taken
        seq += taken
        if stopped:
            break
        draft = preds[k - 1]
    tokens = new[:-1] if new and new[-1] in eos else new
    return Reference(tokens, len(new), forwards, accepted_per_step)
