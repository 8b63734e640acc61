"""Conformance of the decoding engine to the spec, against an independent oracle.

The oracle (``reference_decoder.py``) is written from spec sections 3-4 alone: batch 1, no cache, an explicit
4-D mask built with Python loops, nothing imported from ``sdlm``. The engine -- cached and uncached, one
prompt at a time and in batches of mixed prompt lengths -- must give the oracle's tokens, generated-token
count, forward count and per-step acceptance, for ``prob_conf`` and ``entropy_conf`` at tau in
{0.3, 0.6, 0.9, 1.5}, D in {2, 4, 8}, both ``causal_attn`` settings, EOS inside an accepted block, and for
``self_speculative``.

The model (``branchy_model``) is NSP-trained on a stream with branch points, so acceptance lengths really
spread: every test asserts, on the oracle's own steps, that at tau 0.3 and 0.6 every length 1..D occurs.
A rule that accepted "all or one" could not pass.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from sdlm.decoding import generate

import reference_decoder as oracle
from decoding_models import MASK, WordTokenizer, branchy_model, branchy_sample

TOK = WordTokenizer()
LENGTHS = (5, 1, 9, 3, 14, 7, 2, 11, 6, 4, 12, 8)  # mixed prompt lengths, a 1-token prompt among them
MAX_NEW = 64
CONFIDENCE = ["prob_conf", "entropy_conf"]


def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return [branchy_sample(gen, n).tolist() for n in LENGTHS]


def hist(accepted: list[int], d: int) -> list[int]:
    """The engine's ``accepted_hist`` layout: entry k-1 counts steps that accepted k tokens."""
    c = Counter(accepted)
    return [c.get(k, 0) for k in range(1, d + 1)]


def engine_runs(model, ps, **kw):
    """The engine four ways: batched (cached, uncached), batches of 5, and one prompt at a time for the first
    four prompts (a 1-token prompt among them; batch 1 costs a forward per prompt and step, hence four)."""
    return {
        "batched": generate(model, TOK, ps, batch_size=len(ps), **kw),
        "batched-uncached": generate(model, TOK, ps, batch_size=len(ps), use_cache=False, **kw),
        "batches-of-5": generate(model, TOK, ps, batch_size=5, **kw),
        "one-at-a-time": [generate(model, TOK, [p], batch_size=1, **kw)[0] for p in ps[:4]],
    }


def assert_same(runs, refs, d):
    for name, gens in runs.items():
        assert len(gens) == len(refs) or name == "one-at-a-time"
        for i, (g, r) in enumerate(zip(gens, refs)):
            where = f"{name}, prompt {i}"
            assert g.token_ids == r.tokens, where
            assert g.stats.new_tokens == r.new_tokens, where
            assert g.stats.nfe == r.forwards, where
            assert g.stats.accepted_hist == hist(r.accepted, d), where


@pytest.mark.parametrize("causal_attn", [False, True])
@pytest.mark.parametrize("block_size", [2, 4, 8])
@pytest.mark.parametrize("alg", CONFIDENCE)
def test_confidence_decoding_equals_the_spec_oracle(alg, block_size, causal_attn):
    model = branchy_model(causal_attn)
    for tau in (0.3, 0.6, 0.9, 1.5):
        ps = prompts() if tau in (0.3, 0.6) else prompts()[:6]  # all twelve where coverage is asserted
        refs = [oracle.confidence_decode(model, p, alg=alg, tau=tau, block_size=block_size, mask_id=MASK,
                                         causal_attn=causal_attn, max_new_tokens=MAX_NEW, eos=set()) for p in ps]
        steps = [k for r in refs for k in r.accepted]
        if tau < 1:
            assert max(steps) > 1 or block_size == 1
        if tau in (0.3, 0.6):  # not vacuous: the oracle itself accepted every length 1..D
            assert all(hist(steps, block_size)), (tau, hist(steps, block_size))
        if tau > 1:
            assert set(steps) == {1}
        runs = engine_runs(model, ps, alg=alg, block_size=block_size, threshold=tau, max_new_tokens=MAX_NEW,
                           eos_token_ids=[])
        assert_same(runs, refs, block_size)


@pytest.mark.parametrize("causal_attn", [False, True])
@pytest.mark.parametrize("block_size", [2, 4, 8])
def test_self_speculative_equals_the_spec_oracle(block_size, causal_attn):
    model, ps = branchy_model(causal_attn), prompts()
    refs = [oracle.speculative_decode(model, p, block_size=block_size, mask_id=MASK, causal_attn=causal_attn,
                                      max_new_tokens=MAX_NEW, eos=set()) for p in ps]
    steps = [k for r in refs for k in r.accepted]
    assert 1 in steps and block_size in steps  # drafts are rejected early and accepted whole
    runs = engine_runs(model, ps, alg="self_speculative", block_size=block_size, max_new_tokens=MAX_NEW,
                       eos_token_ids=[])
    assert_same(runs, refs, block_size)
    # section 4 on the oracle itself: lossless w.r.t. one-token-per-step decoding (tau > 1), fewer forwards
    one = [oracle.confidence_decode(model, p, alg="prob_conf", tau=1.5, block_size=block_size, mask_id=MASK,
                                    causal_attn=causal_attn, max_new_tokens=MAX_NEW, eos=set()) for p in ps]
    assert [r.tokens for r in refs] == [r.tokens for r in one]
    assert sum(r.forwards for r in refs) < sum(r.forwards for r in one)


def eos_inside_a_block(ref: oracle.Reference) -> tuple[int, int] | None:
    """A token the oracle accepted at index >= 1 of a multi-token step, not generated before: made the EOS,
    it must end the row inside that block. Returns (token, tokens generated up to and including it)."""
    done: list[int] = []
    for k in ref.accepted:
        block = ref.tokens[len(done):len(done) + k]
        for i in range(1, len(block)):
            if block[i] not in done and block[i] not in block[:i]:
                return block[i], len(done) + i + 1
        done += block
    return None


@pytest.mark.parametrize("alg", [*CONFIDENCE, "self_speculative"])
@pytest.mark.parametrize("block_size", [4, 8])
def test_eos_inside_an_accepted_block(alg, block_size):
    model, checked = branchy_model(False), 0
    kw = dict(block_size=block_size, mask_id=MASK, causal_attn=False, max_new_tokens=MAX_NEW)

    def run_oracle(p, eos):
        if alg == "self_speculative":
            return oracle.speculative_decode(model, p, eos=eos, **kw)
        return oracle.confidence_decode(model, p, alg=alg, tau=0.3, eos=eos, **kw)

    for p in prompts()[:6]:
        found = eos_inside_a_block(run_oracle(p, set()))
        if found is None:
            continue
        eos, n = found
        ref = run_oracle(p, {eos})
        assert ref.new_tokens == n and len(ref.tokens) == n - 1  # the oracle stopped inside the block
        for use_cache in (True, False):
            g = generate(model, TOK, [p], alg=alg, block_size=block_size, threshold=0.3, max_new_tokens=MAX_NEW,
                         eos_token_ids=[eos], use_cache=use_cache)[0]
            assert g.finish_reason == "eos" and eos not in g.token_ids
            assert (g.token_ids, g.stats.new_tokens, g.stats.nfe) == (ref.tokens, ref.new_tokens, ref.forwards)
            assert g.stats.accepted_hist == hist(ref.accepted, block_size)
        checked += 1
    assert checked >= 3
