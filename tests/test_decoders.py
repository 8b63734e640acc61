"""One vocabulary for decoders (sdlm.decoders) and one settings object for decoding (DecodeSettings).

The expected spellings are written out literally: they are the cell folder names and probe keys that earlier
versions wrote into results/ and sdlm_training.json, which must stay readable."""

from __future__ import annotations

import math
import re

import pytest

from sdlm.decoders import (ALGS, CONFIDENCE_ALGS, DECODER_PATTERN, Decoder, check_threshold, label_of,
                           probe_key_label)
from sdlm.decoding import DecodeSettings

# (decoder, cell folder, label, probe key) as written by the code before this module existed
SPELLINGS = [
    (Decoder("ar"), "ar", "AR", "ar"),
    (Decoder("prob_conf", 4, 0.98), "prob_conf_D4_tau0.98", "conf 0.98", "prob_conf_tau0.98"),
    (Decoder("prob_conf", 4, 0.82), "prob_conf_D4_tau0.82", "conf 0.82", "prob_conf_tau0.82"),
    (Decoder("entropy_conf", 8, 0.7), "entropy_conf_D8_tau0.7", "entropy 0.7", "entropy_conf_tau0.7"),
    (Decoder("prob_conf", 4, 1), "prob_conf_D4_tau1.0", "conf 1", "prob_conf_tau1"),
    (Decoder("prob_conf", 4, 2.0), "step1_D4", "1 tok/step", "prob_conf_tau2"),
    (Decoder("self_speculative", 8), "self_speculative_D8", "self-spec", "self_speculative"),
]


@pytest.mark.parametrize("dec, name, label, probe", SPELLINGS)
def test_spellings_are_unchanged_and_parse_back(dec, name, label, probe):
    assert (dec.name, dec.label) == (name, label)
    if dec.alg != "ar":
        assert dec.probe_key == probe
        assert Decoder.parse(probe, block_size=dec.block_size) == dec  # old probe keys still parse
    assert Decoder.parse(name) == dec
    assert re.fullmatch(DECODER_PATTERN, name)


def test_pattern_rejects_what_is_not_a_decoder():
    for bad in ("prob_conf_D0_tau0.9", "prob_conf_D4", "fast_conf_D4_tau0.9", "step1", "self_speculative", "AR"):
        assert not re.fullmatch(DECODER_PATTERN, bad), bad
        with pytest.raises(ValueError):
            Decoder.parse(bad)


def test_one_token_reference_and_labels():
    assert Decoder.reference(8).name == "step1_D8" and Decoder.reference(8).is_one_token
    assert not Decoder("prob_conf", 4, 1.0).is_one_token  # tau = 1 still compares confidences (strict >)
    with pytest.raises(ValueError, match="needs tau > 1"):
        Decoder.reference(4, 0.9)
    assert label_of("entropy_conf") == "entropy" and label_of("prob_conf", 1.5) == "1 tok/step"
    assert probe_key_label("prob_conf_tau0.98") == "conf 0.98" and probe_key_label("mystery") == "mystery"
    assert set(CONFIDENCE_ALGS) < set(ALGS) and ALGS[0] == "ar"


@pytest.mark.parametrize("kwargs, message", [
    (dict(alg="maskgit"), "unknown alg 'maskgit'"),
    (dict(alg="prob_conf", block_size=0, tau=0.9), "needs a block size >= 1"),
    (dict(alg="prob_conf", block_size=4, tau=math.nan), "threshold must be a number in (0, inf)"),
    (dict(alg="self_speculative", block_size=4, tau=0.9), "takes no threshold"),
])
def test_invalid_decoders(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Decoder(kwargs.pop("alg"), **kwargs)


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, "x", True, None])
def test_one_threshold_rule_everywhere(value):
    """The adapter, generate() (through DecodeSettings) and the Decoder refuse the same thresholds."""
    from sdlm.adapter import check_model_args

    for check in (check_threshold, lambda v: DecodeSettings(threshold=v),
                  lambda v: check_model_args({"pretrained": "x", "threshold": v}),
                  lambda v: Decoder("prob_conf", 4, v)):
        with pytest.raises(ValueError, match=re.escape("threshold must be a number in (0, inf)")):
            check(value)
    assert check_threshold(1e9) == 1e9 and DecodeSettings(threshold=2).threshold == 2.0


def test_decode_settings_validate_once_and_name_their_decoder():
    s = DecodeSettings(alg="entropy_conf", block_size=8, threshold=0.7)
    assert s.decoder().name == "entropy_conf_D8_tau0.7"
    assert s.with_(alg="self_speculative").decoder().name == "self_speculative_D8"
    assert DecodeSettings.for_decoder(Decoder.parse("step1_D4"), max_new_tokens=5) == \
        DecodeSettings(alg="prob_conf", block_size=4, threshold=2.0, max_new_tokens=5)
    for bad, msg in ((dict(max_new_tokens=0), "max_new_tokens must be >= 1"), (dict(batch_size=0), "batch_size must be >= 1"),
                     (dict(block_size=0), "block_size must be a positive integer")):
        with pytest.raises(ValueError, match=msg):
            DecodeSettings(**bad)
