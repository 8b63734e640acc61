"""Invariants of the decoding engine (spec sections 3-4, 8-9), on tiny in-process models."""

from __future__ import annotations

import math

import pytest
import torch

from sdlm.decoding import generate

from decoding_models import EOS, PAD, WordTokenizer, cycle_prompt, cyclic_model, random_model

TOK = WordTokenizer()
ARCHS = ["qwen2", "llama"]
SDLM_ALGS = ["prob_conf", "entropy_conf", "self_speculative"]


def prompts_mixed(seed: int = 1, lengths=(5, 1, 9, 3, 14)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 60, (n,), generator=g).tolist() for n in lengths]


def ids(gens):
    return [g.token_ids for g in gens]


def hf_greedy(model, prompt, max_new_tokens):
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
    new = out[0, len(prompt):].tolist()
    return new[: new.index(EOS)] if EOS in new else new


# ----------------------------------------------------------------------------------- AR baseline
@pytest.mark.parametrize("arch", ARCHS)
def test_ar_equals_transformers_generate(arch):
    model = random_model(arch, seed=2)
    prompts = prompts_mixed()
    ours = generate(model, TOK, prompts, alg="ar", max_new_tokens=24, batch_size=3)
    for p, g in zip(prompts, ours):
        assert g.token_ids == hf_greedy(model, p, 24)
        assert g.stats.tpf == pytest.approx(1.0)


@pytest.mark.parametrize("arch", ARCHS)
def test_ar_stops_at_eos_like_transformers(arch):
    model = cyclic_model(arch)
    prompts = [cycle_prompt(o, 5) for o in range(0, 12, 3)]
    ours = generate(model, TOK, prompts, alg="ar", max_new_tokens=30, batch_size=4)
    for p, g in zip(prompts, ours):
        assert g.token_ids == hf_greedy(model, p, 30)
        assert g.finish_reason == "eos" and EOS not in g.token_ids
        assert g.stats.new_tokens == len(g.token_ids) + 1 and g.stats.tpf == pytest.approx(1.0)


# ----------------------------------------------------------------------------------- D = 1, tau > 1
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("alg", SDLM_ALGS)
def test_block_size_one_is_ar(arch, alg):
    model = random_model(arch, seed=3, peaky=True)
    prompts = prompts_mixed(2)
    ar = generate(model, TOK, prompts, alg="ar", max_new_tokens=20)
    for tau in (0.5, 0.98):
        assert ids(generate(model, TOK, prompts, alg=alg, block_size=1, threshold=tau, max_new_tokens=20)) == ids(ar)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("alg", ["prob_conf", "entropy_conf"])
def test_threshold_above_one_accepts_one_token_per_step(arch, alg):
    model = cyclic_model(arch)  # confident model: with tau <= 1 it would accept whole blocks
    prompts = [cycle_prompt(o, 6) for o in (0, 4, 7)]
    for g in generate(model, TOK, prompts, alg=alg, block_size=4, threshold=1.5, max_new_tokens=20):
        assert g.stats.accepted_hist[1:] == [0, 0, 0]
        assert g.stats.new_tokens == g.stats.nfe  # prefill yields one token too
    fast = generate(model, TOK, prompts, alg=alg, block_size=4, threshold=0.5, max_new_tokens=20)
    assert all(g.stats.tpf > 1.5 for g in fast)


@pytest.mark.parametrize("arch", ARCHS)
def test_threshold_above_one_equals_ar_only_with_causal_blocks(arch):
    prompts = prompts_mixed(4)
    causal = random_model(arch, causal_attn=True, seed=5)
    one = generate(causal, TOK, prompts, alg="prob_conf", block_size=4, threshold=2.0, max_new_tokens=20)
    assert ids(one) == ids(generate(causal, TOK, prompts, alg="ar", max_new_tokens=20))
    # bidirectional block: block index 0 also attends to the mask tokens, so on an untrained model it differs
    bidir = random_model(arch, causal_attn=False, seed=5)
    one = generate(bidir, TOK, prompts, alg="prob_conf", block_size=4, threshold=2.0, max_new_tokens=20)
    assert ids(one) != ids(generate(bidir, TOK, prompts, alg="ar", max_new_tokens=20))


# ----------------------------------------------------------------------------------- batching and cache
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("causal_attn", [False, True])
@pytest.mark.parametrize("alg", SDLM_ALGS)
def test_batched_equals_unbatched_and_cached_equals_uncached(arch, causal_attn, alg):
    model = random_model(arch, causal_attn, seed=3, peaky=True)  # acceptance lengths differ per row and step
    prompts = prompts_mixed(1)
    for tau in (0.6, 0.9):
        kw = dict(alg=alg, block_size=4, threshold=tau, max_new_tokens=25)
        batched = generate(model, TOK, prompts, batch_size=len(prompts), **kw)
        single = [generate(model, TOK, [p], batch_size=1, **kw)[0] for p in prompts]
        uncached = generate(model, TOK, prompts, batch_size=len(prompts), use_cache=False, **kw)
        assert ids(batched) == ids(single) == ids(uncached)
        assert [g.stats.nfe for g in batched] == [g.stats.nfe for g in single]


@pytest.mark.parametrize("alg", SDLM_ALGS)
def test_batched_rows_stop_at_different_points(alg):
    model = cyclic_model("qwen2")
    prompts = [cycle_prompt(o, n) for o, n in [(0, 5), (3, 2), (6, 9), (9, 1), (2, 13)]]
    kw = dict(alg=alg, block_size=4, threshold=0.9, max_new_tokens=40)
    batched = generate(model, TOK, prompts, batch_size=5, **kw)
    single = [generate(model, TOK, [p], **kw)[0] for p in prompts]
    assert ids(batched) == ids(single)
    assert len({len(g.token_ids) for g in batched}) > 1 and all(g.finish_reason == "eos" for g in batched)
    assert ids(generate(model, TOK, prompts, batch_size=2, use_cache=False, **kw)) == ids(batched)


# ----------------------------------------------------------------------------------- self-speculative
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("causal_attn", [False, True])
@pytest.mark.parametrize("block_size", [2, 4])
def test_self_speculative_is_lossless(arch, causal_attn, block_size):
    """Spec section 4: identical tokens to one-token-per-step decoding of the same model and D."""
    for model in (random_model(arch, causal_attn, block_size=block_size, seed=7, peaky=True),
                  cyclic_model(arch, causal_attn, block_size)):
        prompts = prompts_mixed(3)[:3] + [cycle_prompt(o, 6) for o in (1, 5)]
        ref = generate(model, TOK, prompts, alg="prob_conf", block_size=block_size, threshold=2.0, max_new_tokens=30)
        spec = generate(model, TOK, prompts, alg="self_speculative", block_size=block_size, max_new_tokens=30,
                        batch_size=3)
        assert ids(spec) == ids(ref)


def test_self_speculative_accepts_whole_drafts_on_a_predictable_model():
    model = cyclic_model("qwen2")
    gens = generate(model, TOK, [cycle_prompt(0, 4)], alg="self_speculative", block_size=4, max_new_tokens=40)
    st = gens[0].stats
    assert st.accepted_hist[3] > 0 and st.tpf > 2.0


# ----------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("alg", ["ar", *SDLM_ALGS])
def test_eos_as_first_token(alg):
    model = random_model(seed=11)
    prompt = prompts_mixed(5)[0]
    first = generate(model, TOK, [prompt], alg=alg, block_size=4, threshold=2.0, max_new_tokens=5)[0].token_ids[0]
    g = generate(model, TOK, [prompt], alg=alg, block_size=4, threshold=2.0, max_new_tokens=5, eos_token_ids=[first])[0]
    assert g.token_ids == [] and g.text == "" and g.finish_reason == "eos" and g.stats.new_tokens == 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("alg", ["ar", *SDLM_ALGS])
def test_prompt_of_length_one(arch, alg):
    model = random_model(arch, seed=12, peaky=True)
    kw = dict(alg=alg, block_size=4, threshold=0.7, max_new_tokens=12, eos_token_ids=[])  # no early EOS
    cached = generate(model, TOK, [[7]], **kw)[0]
    uncached = generate(model, TOK, [[7]], use_cache=False, **kw)[0]
    assert cached.token_ids == uncached.token_ids and len(cached.token_ids) == 12


@pytest.mark.parametrize("alg", SDLM_ALGS)
@pytest.mark.parametrize("max_new", [1, 2, 3, 5, 7])
def test_max_new_tokens_never_exceeded(alg, max_new):
    model = cyclic_model("qwen2")
    prompts = [cycle_prompt(0, 3), cycle_prompt(9, 4)]  # they would run 8 and 10 tokens before EOS
    for g in generate(model, TOK, prompts, alg=alg, block_size=4, threshold=0.5, max_new_tokens=max_new):
        assert len(g.token_ids) == max_new == g.stats.new_tokens and g.finish_reason == "length"


def test_stop_string_spanning_two_accepted_blocks():
    model = cyclic_model("qwen2")
    prompt = cycle_prompt(0, 3)  # t2 t3 t4 -> the model continues t5 t6 t7 | t8 t9 t10 t11 | ...
    full = generate(model, TOK, [prompt], alg="prob_conf", block_size=4, threshold=0.5, max_new_tokens=8)[0]
    assert full.token_ids[:6] == [5, 6, 7, 8, 9, 10]
    steps = full.stats.accepted_hist
    assert steps[3] >= 1  # whole blocks accepted: the first step yields t5 t6 t7 t8, the next t9 ...
    g = generate(model, TOK, [prompt], alg="prob_conf", block_size=4, threshold=0.5, max_new_tokens=30,
                 stop=["t8 t9"])[0]
    assert g.finish_reason == "stop" and g.text == "t5 t6 t7 "
    assert g.stats.new_tokens == 5 and g.stats.discarded_tokens > 0  # the block overshoot is reported
    assert sum((k + 1) * n for k, n in enumerate(g.stats.accepted_hist)) == 5  # kept tokens per forward
    # the same stop string is found whatever the decoding granularity
    ar = generate(model, TOK, [prompt], alg="ar", max_new_tokens=30, stop=["t8 t9"])[0]
    assert ar.text == g.text and ar.stats.new_tokens == 5


def test_statistics_are_consistent():
    model = random_model(seed=3, peaky=True)
    for g in generate(model, TOK, prompts_mixed(1), alg="prob_conf", block_size=4, threshold=0.6, max_new_tokens=25):
        st = g.stats
        assert st.tpf == pytest.approx(st.new_tokens / st.nfe)
        assert sum((k + 1) * n for k, n in enumerate(st.accepted_hist)) == st.new_tokens
        assert st.nfe == sum(st.accepted_hist) and st.prefill_s > 0 and st.decode_s > 0
        assert st.tokens_per_s == pytest.approx(st.new_tokens / (st.prefill_s + st.decode_s))


# ----------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw, msg", [
    (dict(alg="maskgit_plus"), "unknown alg 'maskgit_plus'"),
    (dict(threshold=0), "threshold must be a number in (0, inf)"),
    (dict(threshold=-0.5), "threshold must be a number in (0, inf)"),
    (dict(threshold=math.nan), "threshold must be a number in (0, inf)"),
    (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
    (dict(block_size=0), "block_size must be a positive integer"),
])
def test_bad_arguments_give_clear_errors(kw, msg):
    args = dict(alg="prob_conf", block_size=4, threshold=0.9, max_new_tokens=4) | kw
    with pytest.raises(ValueError) as e:
        generate(random_model(), TOK, [[3, 4]], **args)
    assert msg in str(e.value)


def test_prompt_longer_than_context_is_an_error():
    model = random_model(max_pos=16)
    with pytest.raises(ValueError, match="prompt 0 has 20 tokens, longer than the model's context of 16"):
        generate(model, TOK, [list(range(2, 22))], alg="prob_conf", max_new_tokens=4)


def test_budget_running_past_context_is_clipped_with_a_warning():
    model = random_model(max_pos=16)
    with pytest.warns(UserWarning, match="clipped at the context length"):
        g = generate(model, TOK, [list(range(2, 12))], alg="prob_conf", threshold=0.5, max_new_tokens=40)[0]
    assert len(g.token_ids) <= 6


def test_missing_mask_token_is_an_error():
    model = random_model()
    del model.config.text_mask_token_id
    with pytest.raises(ValueError, match="no text_mask_token_id"):
        generate(model, TOK, [[3, 4]], alg="prob_conf", max_new_tokens=4)


@pytest.mark.parametrize("alg", ["ar", *SDLM_ALGS])
def test_half_precision_with_padding_rows_gives_no_nans(alg):
    """bf16 masks use the dtype's most negative finite value: fully hidden padding rows must not make NaNs."""
    model = cyclic_model("qwen2").to(torch.bfloat16)
    try:
        prompts = [cycle_prompt(0, 9), cycle_prompt(3, 1), cycle_prompt(5, 4)]  # left padding of 8 and 5 tokens
        gens = generate(model, TOK, prompts, alg=alg, block_size=4, threshold=0.9, max_new_tokens=12)
        single = [generate(model, TOK, [p], alg=alg, block_size=4, threshold=0.9, max_new_tokens=12)[0] for p in prompts]
        assert [g.token_ids[:3] for g in gens] == [g.token_ids[:3] for g in single]
        assert gens[0].token_ids == [11, 12] and gens[0].finish_reason == "eos"  # the cycle, then EOS
    finally:
        model.to(torch.float32)
