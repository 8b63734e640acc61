"""The NSP training mask (spec section 2): the worked example exactly, properties over random rows, and
padding through real models (never visible, no NaNs, rows independent)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdlm.masks import to_additive, training_visibility


SPEC_GRID = """
1 0 0 0 0 0 0 0 0 0 0 0
1 1 0 0 0 0 0 0 0 0 0 0
1 1 1 0 0 0 0 0 0 0 0 0
1 1 1 1 0 0 0 0 0 0 0 0
1 1 1 1 1 0 0 0 0 0 0 0
1 1 1 1 1 1 0 0 0 0 0 0
1 1 0 0 0 0 1 1 1 0 0 0
1 1 0 0 0 0 1 1 1 0 0 0
1 1 0 0 0 0 1 1 1 0 0 0
1 1 1 1 0 0 0 0 0 1 1 1
1 1 1 1 0 0 0 0 0 1 1 1
1 1 1 1 0 0 0 0 0 1 1 1
"""


def row_positions(n: int, starts: list[int], D: int) -> torch.Tensor:
    return torch.tensor(list(range(n)) + [p + i for p in starts for i in range(D)])


def test_spec_worked_example_exact():
    pos = row_positions(6, [2, 4], 3)
    assert pos.tolist() == [0, 1, 2, 3, 4, 5, 2, 3, 4, 4, 5, 6]
    want = torch.tensor([[int(v) for v in line.split()] for line in SPEC_GRID.strip().splitlines()], dtype=torch.bool)
    got = training_visibility(pos, 3)[0]
    assert torch.equal(got, want), f"\n{got.int()}"


def test_spec_worked_example_causal_attn():
    got = training_visibility(row_positions(6, [2, 4], 3), 3, causal_attn=True)[0]
    want = torch.tensor([[int(v) for v in line.split()] for line in SPEC_GRID.strip().splitlines()], dtype=torch.bool)
    for b in (6, 9):  # inside each block only k <= q remains
        want[b:b + 3, b:b + 3] = torch.tril(torch.ones(3, 3, dtype=torch.bool))
    assert torch.equal(got, want)


@st.composite
def nsp_rows(draw):
    n = draw(st.integers(2, 14))
    D = draw(st.integers(1, 5))
    cands = list(range(0, n - 1))
    starts = sorted(draw(st.lists(st.sampled_from(cands), unique=True, max_size=len(cands))))
    return n, D, starts


def _expected(n: int, D: int, starts: list[int], causal_attn: bool) -> torch.Tensor:
    """The spec's rule written out by hand, entry by entry."""
    T = n + D * len(starts)
    pos = row_positions(n, starts, D).tolist()
    blk = [-1] * n + [b for b in range(len(starts)) for _ in range(D)]
    m = torch.zeros(T, T, dtype=torch.bool)
    for q in range(T):
        for k in range(T):
            if blk[q] < 0 and blk[k] < 0:
                m[q, k] = k <= q
            elif blk[q] >= 0 and blk[k] < 0:
                m[q, k] = k < starts[blk[q]]
            elif blk[q] >= 0 and blk[q] == blk[k]:
                m[q, k] = (pos[k] <= pos[q]) if causal_attn else True
    return m


@settings(max_examples=150, deadline=None)
@given(nsp_rows(), st.booleans())
def test_properties_random_rows(row, causal_attn):
    n, D, starts = row
    vis = training_visibility(row_positions(n, starts, D), D, causal_attn=causal_attn)[0]
    assert torch.equal(vis, _expected(n, D, starts, causal_attn))
    # the properties, stated directly
    for b, p in enumerate(starts):
        q = slice(n + b * D, n + (b + 1) * D)
        assert not vis[q, p:n].any(), "a block sees a clean token at or after its own start"
        others = torch.ones(vis.shape[1], dtype=torch.bool)
        others[:n] = False
        others[q] = False
        assert not vis[q][:, others].any(), "a block sees another block"
    assert not vis[:n, n:].any(), "a clean token sees a block"


@settings(max_examples=60, deadline=None)
@given(st.lists(nsp_rows(), min_size=1, max_size=3), st.booleans())
def test_padding_never_visible_and_rows_independent(rows, causal_attn):
    D = rows[0][1]
    seqs = [row_positions(n, starts, D) for n, _, starts in rows]
    T = max(len(s) for s in seqs) + 2
    pos = torch.zeros(len(seqs), T, dtype=torch.long)
    valid = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        pos[i, : len(s)] = s
        valid[i, : len(s)] = True
    vis = training_visibility(pos, D, causal_attn=causal_attn, valid=valid)
    for i, s in enumerate(seqs):
        L = len(s)
        assert not vis[i, L:, :].any() and not vis[i, :, L:].any(), "padding visible"
        alone = training_visibility(s, D, causal_attn=causal_attn)[0]
        assert torch.equal(vis[i, :L, :L], alone), "padding changed a real row's mask"


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_rows_no_nan_through_model(arch, attn, dtype):
    from sdlm.testing import tiny_model

    model, _ = tiny_model(arch, attn_implementation=attn)
    model.to(dtype)
    D = 3
    long_pos, short_pos = row_positions(8, [1, 3, 5], D), row_positions(5, [2], D)
    T = len(long_pos)
    pos = torch.zeros(2, T, dtype=torch.long)
    valid = torch.zeros(2, T, dtype=torch.bool)
    pos[0], valid[0] = long_pos, True
    pos[1, : len(short_pos)], valid[1, : len(short_pos)] = short_pos, True
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 300, (2, T), generator=g)
    mask = to_additive(training_visibility(pos, D, valid=valid), dtype)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        alone = model(input_ids=ids[1:, : len(short_pos)], position_ids=short_pos[None],
                      attention_mask=to_additive(training_visibility(short_pos, D), dtype)).logits
    assert torch.isfinite(logits).all(), "NaN/inf on (fully masked) padding rows"
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert (logits[1, : len(short_pos)].float() - alone[0].float()).abs().max() <= tol, "padding leaked into a row"
