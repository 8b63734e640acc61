"""The lm-eval model ``sdlm`` (sdlm/adapter.py) against lm-eval's own ``hf`` model, on tiny random checkpoints.

What these show:
* with ``alg=ar`` our adapter returns exactly the generations of lm-eval's ``HFLM`` on the same (chat-templated)
  requests, so the AR baseline column is lm-eval's, not an artefact of our decoder or our request handling;
* loglikelihood / loglikelihood_rolling equal HFLM's within 1e-4, greedy flags included;
* ``until`` cuts the text where HFLM cuts it, ``max_gen_toks`` bounds the tokens, ``max_new_tokens`` caps it;
* bad model_args and sampling requests fail with one clear line, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lm_eval.api.instance import Instance  # noqa: E402

from sdlm.adapter import SDLMLM, check_model_args, decode_totals, parse_model_args  # noqa: E402

QUESTIONS = ["What is 3 + 4?", "Count from 1 to 5.", "hello world", "The quick brown fox jumps over the lazy dog. " * 3]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random Qwen2 with the SDLM keys (mask token, D=4), saved like a real checkpoint."""
    from sdlm.models import ensure_mask_token, save_model
    from sdlm.testing import tiny_model

    model, tok = tiny_model("qwen2", seed=0)
    ensure_mask_token(model, tok, block_size=4)
    return str(save_model(model, tok, tmp_path_factory.mktemp("tiny_qwen2")))


@pytest.fixture(scope="module")
def ar(ckpt):
    return SDLMLM.create_from_arg_string(f"pretrained={ckpt},alg=ar,batch_size=2,device=cpu")


@pytest.fixture(scope="module")
def hflm(ckpt):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=ckpt, device="cpu", batch_size=2, dtype="float32")


def _chat(lm, question: str) -> str:
    return lm.apply_chat_template([{"role": "system", "content": "You are a helpful assistant."},
                                   {"role": "user", "content": question}])


def _gen_reqs(contexts, first_doc: int = 0, **gen_kwargs) -> list[Instance]:
    kw = {"do_sample": False, **gen_kwargs}
    return [Instance("generate_until", {}, (c, dict(kw)), 0, ("demo", first_doc + i, 1)) for i, c in enumerate(contexts)]


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    assert get_model("sdlm") is SDLMLM


def test_ar_generations_equal_hflm(ar, hflm):
    contexts = [_chat(ar, q) for q in QUESTIONS]
    assert contexts == [_chat(hflm, q) for q in QUESTIONS]  # same chat templating as lm-eval's hf model
    reqs = _gen_reqs(contexts, until=["\n\n"], max_gen_toks=12)
    ours, theirs = ar.generate_until(reqs), hflm.generate_until(reqs)
    assert ours == theirs
    assert len(set(ours)) > 1  # not a degenerate comparison


def test_loglikelihood_equals_hflm(ar, hflm):
    from sdlm.decoding import generate

    contexts = [_chat(ar, q) for q in QUESTIONS]
    reqs = [Instance("loglikelihood", {}, (c, cont), 0, ("demo", i, 1))
            for i, (c, cont) in enumerate(zip(contexts, [" 7", " one two three", "hello", " fox"]))]
    reqs.append(Instance("loglikelihood", {}, ("", "hello there"), 0, ("demo", 9, 1)))  # empty context -> prefix token
    ours, theirs = ar.loglikelihood(reqs), hflm.loglikelihood(reqs)
    for (a, ga), (b, gb) in zip(ours, theirs):
        assert math.isfinite(a) and abs(a - b) < 1e-4 and ga == gb

    # the greedy flag is True exactly for the greedy continuation (token level, like TemplateLM does it)
    ctx = ar.tok_encode(contexts[0])
    greedy = generate(ar.model, ar.tokenizer, [ctx], alg="ar", max_new_tokens=5)[0].token_ids
    other = [(greedy[0] + 1) % len(ar.tokenizer)] + greedy[1:]
    tok_reqs = [(("a", "b"), ctx, greedy), (("a", "c"), ctx, other)]
    ours, theirs = ar._loglikelihood_tokens(tok_reqs), hflm._loglikelihood_tokens(tok_reqs)
    assert [g for _, g in ours] == [g for _, g in theirs] == [True, False]
    assert all(abs(a - b) < 1e-4 for (a, _), (b, _) in zip(ours, theirs))

    text = "The quick brown fox jumps over the lazy dog. " * 60  # several rolling windows at max_length 1024
    rolling = [Instance("loglikelihood_rolling", {}, (text,), 0, ("demo", 0, 1)),
               Instance("loglikelihood_rolling", {}, ("hello world",), 0, ("demo", 1, 1))]
    for a, b in zip(ar.loglikelihood_rolling(rolling), hflm.loglikelihood_rolling(rolling)):
        assert abs(a - b) < 1e-4 * max(1.0, abs(b))


def _ascii_stop(text: str) -> str:
    """A 2-character stop string taken from the middle of ``text`` (plain ASCII, so it decodes stably)."""
    for k in range(3, len(text) - 2):
        s = text[k:k + 2]
        if s.isascii() and s.strip() and s.isprintable():
            return s
    pytest.skip("random generation has no ASCII pair to use as a stop string")


def test_until_cuts_text_like_hflm(ar, hflm):
    ctx = [_chat(ar, QUESTIONS[0])]
    free = ar.generate_until(_gen_reqs(ctx, until=[], max_gen_toks=24))[0]
    stop = _ascii_stop(free)
    expected = free[:free.find(stop)]
    n_before = len(ar.request_stats)
    cut = ar.generate_until(_gen_reqs(ctx, until=[stop], max_gen_toks=24))
    assert cut == [expected] == hflm.generate_until(_gen_reqs(ctx, until=[stop], max_gen_toks=24))
    row = ar.request_stats[n_before]
    assert row["finish_reason"] == "stop" and row["new_tokens"] < 24


def test_max_gen_toks_per_request_and_cap(ar, hflm, ckpt):
    contexts = [_chat(ar, q) for q in QUESTIONS[:2]]
    reqs = _gen_reqs(contexts[:1], until=[], max_gen_toks=3) + _gen_reqs(contexts[1:], 1, until=[], max_gen_toks=7)
    n_before = len(ar.request_stats)
    assert ar.generate_until(reqs) == hflm.generate_until(reqs)
    rows = {r["doc_id"]: r for r in ar.request_stats[n_before:]}
    for doc_id, budget in ((0, 3), (1, 7)):  # two gen_kwargs groups, each with its own budget
        assert rows[doc_id]["max_gen_toks"] == budget
        assert rows[doc_id]["new_tokens"] == budget or rows[doc_id]["finish_reason"] == "eos"

    capped = SDLMLM(pretrained=ckpt, alg="ar", max_new_tokens=5, device="cpu")
    out = capped.generate_until(_gen_reqs(contexts[1:], until=[], max_gen_toks=7))
    assert capped.request_stats[0]["max_gen_toks"] == 5
    assert out == hflm.generate_until(_gen_reqs(contexts[1:], until=[], max_gen_toks=5))


def test_sdlm_decoding_stats_and_repeats(ckpt):
    lm = SDLMLM(pretrained=ckpt, alg="prob_conf", block_size=4, threshold=0.5, batch_size=3, device="cpu")
    reqs = _gen_reqs([_chat(lm, q) for q in QUESTIONS], until=[], max_gen_toks=10)
    out = lm.generate_until(reqs + [reqs[0]])  # a repeated Instance is decoded once
    assert out[-1] == out[0] and len(out) == 5
    rows = lm.request_stats
    assert len(rows) == 4 and {r["batch"] for r in rows} == {0, 1} and sorted(r["batch_size"] for r in rows) == [1, 3, 3, 3]
    for r in rows:
        assert r["task"] == "demo" and r["tpf"] == pytest.approx(r["new_tokens"] / r["nfe"])
        assert len(r["accepted_hist"]) == 4
    tot = decode_totals(rows)
    assert tot["tpf"] == pytest.approx(sum(r["new_tokens"] for r in rows) / sum(r["nfe"] for r in rows))
    # a batch shares one clock: its time counts once
    assert tot["wall_s"] < sum(r["prefill_s"] + r["decode_s"] for r in rows)


def test_chat_template_system_prompt_and_model_info(ckpt, ar):
    lm = SDLMLM(pretrained=ckpt, alg="ar", system_prompt="Be brief.", device="cpu")
    user = [{"role": "user", "content": "hi"}]
    assert lm.apply_chat_template(user).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    given = [{"role": "system", "content": "You are a helpful assistant."}, *user]
    assert lm.apply_chat_template(given) == ar.apply_chat_template(given)  # lm-eval's system_instruction wins
    assert ar.apply_chat_template(user, add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    assert ar.chat_template(True) == ar.tokenizer.chat_template and ar.tokenizer_name == ckpt.replace("/", "__")

    info = SDLMLM(pretrained=ckpt, alg="prob_conf", device="cpu").get_model_info()
    sha = hashlib.sha256(open(os.path.join(ckpt, "config.json"), "rb").read()).hexdigest()
    assert info["config_sha256"] == sha and info["checkpoint_path"] == ckpt
    assert (info["alg"], info["threshold"], info["block_size"], info["causal_attn"]) == ("prob_conf", 0.98, 4, False)
    assert info["mask_token_id"] == ar.model.config.text_mask_token_id and info["model_dtype"] == "float32"


def test_single_process_dp_hooks(ar):
    t = torch.tensor(3)
    assert ar.rank == 0 and ar.world_size == 1 and ar.device == torch.device("cpu")
    assert ar.all_gather(t) is t and ar.gather_object({"a": 1}) == [{"a": 1}] and ar.barrier() is None


@pytest.mark.parametrize("args, message", [
    ("pretrained=/nowhere,alg=magic", "unknown alg 'magic'; choose one of ar, prob_conf"),
    ("pretrained=/nowhere,threshold=0", "threshold must be a number in (0, inf), got 0"),
    ("pretrained=/nowhere,threshold=-0.5", "threshold must be a number in (0, inf), got -0.5"),
    ("pretrained=/nowhere,threshold=nan", "threshold must be a number in (0, inf), got nan"),
    ("pretrained=/nowhere,threshold=inf", "threshold must be a number in (0, inf), got inf"),
    ("pretrained=/nowhere,threshold=high", "threshold must be a number in (0, inf), got 'high'"),
    ("pretrained=/nowhere,block_size=0", "block_size must be >= 1, got 0"),
    ("pretrained=/nowhere,block_size=2.5", "block_size must be an integer, got 2.5"),
    ("pretrained=/nowhere,batch_size=auto", "batch_size='auto' is not supported"),
    ("pretrained=/nowhere,dtype=float8", "unknown dtype 'float8'"),
    ("pretrained=/nowhere,tau=0.9", "unknown model_args key(s) tau for model 'sdlm'"),
    ("pretrained", "malformed model_args item 'pretrained'"),
    ("pretrained=/a,pretrained=/b", "'pretrained' given twice"),
    ("=3,pretrained=/a", "malformed model_args item '=3'"),
    ("alg=ar", "model_args needs pretrained="),
])
def test_bad_model_args_fail_before_loading(args, message):
    with pytest.raises(ValueError) as err:
        SDLMLM.create_from_arg_string(args)  # /nowhere is never opened: validation comes first
    assert message in str(err.value) and "\n" not in str(err.value)


def test_lm_eval_injected_args(ckpt):
    """lm-eval passes batch_size/max_batch_size/device; explicit model_args win over them."""
    lm = SDLMLM.create_from_arg_string(f"pretrained={ckpt},alg=ar,batch_size=3",
                                       {"batch_size": 1, "max_batch_size": 64, "device": "cpu"})
    assert lm.batch_size == 3 and lm.device == torch.device("cpu")
    assert check_model_args(parse_model_args("pretrained=x,threshold=1e9"))["threshold"] == 1e9


def test_sampling_request_is_an_error(ar):
    reqs = [Instance("generate_until", {}, ("hi", {"do_sample": True, "temperature": 0.7}), 0, ("gsm8k_x", 0, 1))]
    with pytest.raises(ValueError, match="task gsm8k_x: the sdlm model decodes greedily only"):
        ar.generate_until(reqs)
    reqs = [Instance("generate_until", {}, ("hi", {"temperature": 0.5}), 0, ("gsm8k_x", 0, 1))]
    with pytest.raises(ValueError, match="greedily only"):
        ar.generate_until(reqs)


def test_ar_generations_equal_hflm_llama(tmp_path):
    """The same on a tied-embedding Llama (SmolLM2 layout), with batch padding of unequal prompts."""
    from lm_eval.models.huggingface import HFLM

    from sdlm.models import save_model
    from sdlm.testing import tiny_model

    model, tok = tiny_model("llama", seed=1)
    path = str(save_model(model, tok, tmp_path / "tiny_llama"))
    ours = SDLMLM(pretrained=path, alg="ar", batch_size=4, device="cpu")
    hf = HFLM(pretrained=path, device="cpu", batch_size=4, dtype="float32")
    reqs = _gen_reqs([_chat(ours, q) for q in QUESTIONS], until=["\n\n"], max_gen_toks=10)
    assert ours.generate_until(reqs) == hf.generate_until(reqs)
    assert ours.get_model_info()["mask_token_id"] is None  # a plain AR checkpoint runs with alg=ar
    with pytest.raises(ValueError, match="has no text_mask_token_id"):
        SDLMLM(pretrained=path, alg="prob_conf", block_size=4, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_clear_error():
    """lm-eval's CLI injects device=cuda:0 by default; on a CPU machine say so instead of a torch assertion."""
    with pytest.raises(ValueError, match="device 'cuda:0' requested but CUDA is not available"):
        SDLMLM.create_from_arg_string("pretrained=/nowhere,alg=ar", {"device": "cuda:0", "batch_size": 1})


def test_bf16_runs(ckpt):
    lm = SDLMLM(pretrained=ckpt, alg="prob_conf", dtype="bf16", device="cpu")
    assert lm.get_model_info()["model_dtype"] == "bfloat16"
    out = lm.generate_until(_gen_reqs([_chat(lm, QUESTIONS[0])], until=[], max_gen_toks=6))
    assert isinstance(out[0], str) and lm.request_stats[0]["new_tokens"] >= 1
    (ll, _), = lm.loglikelihood([Instance("loglikelihood", {}, ("hello", " world"), 0, ("demo", 0, 1))])
    assert math.isfinite(ll) and ll < 0
