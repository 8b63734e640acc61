"""The next deprecation fails CI, not a user's run: sdlm's decoding, training, adapter and evaluation paths run
here with DeprecationWarning and FutureWarning turned into errors (transformers' rename of ``past_key_values``
to ``cache`` warned 98 times in the suite before the engine followed it)."""

from __future__ import annotations

import warnings

import pytest

from sdlm.decoding import generate
from sdlm.testing import tiny_model

from decoding_models import WordTokenizer, random_model

DEPRECATIONS = (DeprecationWarning, FutureWarning, PendingDeprecationWarning)


@pytest.fixture
def strict():
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        for category in DEPRECATIONS:
            warnings.simplefilter("error", category)
        yield


@pytest.mark.parametrize("alg", ["ar", "prob_conf", "entropy_conf", "self_speculative"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_decoding_raises_no_deprecation(strict, alg, use_cache):
    model = random_model("qwen2", seed=3, peaky=True)
    gens = generate(model, WordTokenizer(), [[5, 6, 7], [9]], alg=alg, block_size=4, threshold=0.6,
                    max_new_tokens=8, use_cache=use_cache, eos_token_ids=[])
    assert all(len(g.token_ids) == 8 for g in gens)


def test_llama_decoding_raises_no_deprecation(strict):
    model = random_model("llama", seed=3, peaky=True)
    assert len(generate(model, WordTokenizer(), [[5, 6, 7]], alg="prob_conf", block_size=4, threshold=0.6,
                        max_new_tokens=6, eos_token_ids=[])[0].token_ids) == 6


def test_training_step_raises_no_deprecation(strict, tmp_path):
    from sdlm.testing import chat_record
    from sdlm.train import RetrofitConfig, retrofit

    model, tok = tiny_model("qwen2", seed=1)
    records = [chat_record(f"question {i}", f"answer number {i} is here") for i in range(8)]
    cfg = RetrofitConfig(base="tiny", data="mem", out=str(tmp_path / "ckpt"), max_steps=2, lr=1e-3, batch_size=2,
                         max_len=64, logging_steps=1, warmup=0)
    retrofit(cfg, model=model, tokenizer=tok, records=records)
    assert (tmp_path / "ckpt" / "sdlm_training.json").is_file()


def test_adapter_requests_raise_no_deprecation(strict, tmp_path):
    from lm_eval.api.instance import Instance

    from sdlm.adapter import SDLMLM
    from sdlm.models import ensure_mask_token, save_model

    model, tok = tiny_model("qwen2", seed=2)
    ensure_mask_token(model, tok, block_size=4)
    save_model(model, tok, tmp_path / "m")
    lm = SDLMLM(pretrained=str(tmp_path / "m"), alg="prob_conf", block_size=4, threshold=0.5, device="cpu")
    gen = Instance("generate_until", {}, ("hello there", {"until": [], "max_gen_toks": 4}), 0)
    ll = Instance("loglikelihood", {}, ("hello", " there"), 0)
    assert len(lm.generate_until([gen])) == 1 and len(lm.loglikelihood([ll])) == 1
