"""The acceptance rule of confidence decoding (spec section 3) on hand-written rows.

Accept the longest prefix of the block whose confidences all exceed tau (strictly); when that prefix is
empty, accept exactly one token. Expected lengths are written by hand from that sentence, and the
confidences of ``prob_conf`` / ``entropy_conf`` are computed by hand from distributions chosen so that they
are exact: one-hot-like (both ~1), two tokens at 1/2 each (max prob 1/2; entropy ln 2, so 1 - ln2/ln4 = 1/2
with V = 4) and uniform (1/4 and 0).
"""

from __future__ import annotations

import math

import pytest
import torch

from sdlm.decoding.blocks import accept_lengths, pick

# (confidences, tau, accepted tokens), written by hand
ROWS = [
    ([0.5, 0.99, 0.99, 0.99], 0.9, 1),  # spec's example: first position below tau -> exactly one
    ([0.99, 0.95, 0.5, 0.99], 0.9, 2),  # a gap in the middle stops the prefix
    ([0.99, 0.5, 0.99, 0.99], 0.9, 1),
    ([0.91, 0.92, 0.93, 0.94], 0.9, 4),  # all above
    ([0.1, 0.2, 0.3, 0.4], 0.9, 1),  # all below
    ([0.5, 0.5, 0.5, 0.5], 0.5, 1),  # exactly at tau is not above it
    ([0.75, 0.5, 0.75, 0.75], 0.5, 1),
    ([0.75, 0.75, 0.5, 0.75], 0.5, 2),
    ([0.75, 0.75, 0.75, 0.5], 0.5, 3),
    ([0.99, 0.99], 1.5, 1),  # tau > 1: one token per step
    ([0.3], 0.9, 1),  # D = 1
    ([0.99, 0.2, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99], 0.6, 1),
    ([0.99, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99, 0.2], 0.6, 7),
]


@pytest.mark.parametrize("conf, tau, expected", ROWS)
def test_accept_lengths_on_hand_written_rows(conf, tau, expected):
    assert accept_lengths(torch.tensor([conf]), tau).tolist() == [expected]


def test_accept_lengths_rows_are_independent_in_a_batch():
    same_d = [r for r in ROWS if len(r[0]) == 4 and r[1] == 0.9]
    conf = torch.tensor([c for c, _, _ in same_d])
    assert accept_lengths(conf, 0.9).tolist() == [n for _, _, n in same_d]


NEG = -1e4  # "impossible" token: exp() underflows to 0 without -inf (0 * -inf would be NaN in the entropy)
SURE = [20.0, NEG, NEG, NEG]  # p ~ (1, 0, 0, 0): prob_conf ~1, entropy_conf ~1
HALF = [0.0, 0.0, NEG, NEG]  # p = (1/2, 1/2, 0, 0): prob_conf 1/2, entropy_conf 1 - ln2/ln4 = 1/2
FLAT = [0.0, 0.0, 0.0, 0.0]  # p = 1/4 each: prob_conf 1/4, entropy_conf 0
HAND_CONF = {"prob_conf": {"SURE": 1.0, "HALF": 0.5, "FLAT": 0.25},
             "entropy_conf": {"SURE": 1.0, "HALF": 1 - math.log(2) / math.log(4), "FLAT": 0.0}}
NAMED = {"SURE": SURE, "HALF": HALF, "FLAT": FLAT}


@pytest.mark.parametrize("alg", ["prob_conf", "entropy_conf"])
def test_confidences_match_hand_computed_values(alg):
    logits = torch.tensor([[NAMED[n] for n in ("SURE", "HALF", "FLAT")]])
    tokens, conf = pick(logits, alg)
    assert tokens.tolist() == [[0, 0, 0]]  # greedy: the first of equal maxima
    assert conf[0].tolist() == pytest.approx([HAND_CONF[alg][n] for n in ("SURE", "HALF", "FLAT")], abs=1e-6)


@pytest.mark.parametrize("block, tau, expected", [
    # block of named distributions, tau, accepted tokens for (prob_conf, entropy_conf)
    (["HALF", "SURE", "SURE", "SURE"], 0.6, (1, 1)),  # unconfident first position, confident after it
    (["SURE", "SURE", "HALF", "SURE"], 0.6, (2, 2)),  # gap in the middle
    (["SURE", "SURE", "SURE", "SURE"], 0.6, (4, 4)),
    (["FLAT", "FLAT", "FLAT", "FLAT"], 0.6, (1, 1)),
    (["SURE", "HALF", "SURE", "SURE"], 0.4, (4, 4)),  # 1/2 > 0.4 for both confidences
    (["SURE", "FLAT", "SURE", "SURE"], 0.4, (1, 1)),
    (["SURE", "SURE", "SURE", "FLAT"], 0.1, (4, 3)),  # FLAT: prob_conf 1/4 > 0.1, entropy_conf 0 is not
    (["SURE", "FLAT", "SURE", "SURE"], 0.2, (4, 1)),
])
def test_block_logits_to_accepted_length(block, tau, expected):
    """Logits of a whole block through the engine's confidence and acceptance, against hand-worked counts."""
    logits = torch.tensor([[NAMED[n] for n in block]])
    for alg, n in zip(("prob_conf", "entropy_conf"), expected):
        _, conf = pick(logits, alg)
        assert accept_lengths(conf, tau).tolist() == [n], alg
