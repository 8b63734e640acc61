"""Tiny random models and a tiny real tokenizer, built in-process, for tests and demos.

Why: every test of the method (masks, NSP rows, decoding, training) needs a *real* transformers model and
a tokenizer with a chat template, but the test machines have no network and 2 CPU cores. Everything here
is built from code in well under a second, deterministically (same seed -> same weights, same
tokenizer), with no file or hub access.

- :func:`tiny_tokenizer` -- a byte-level BPE tokenizer trained on a fixed small English/digit corpus, so
  any text round-trips exactly (byte fallback), with ChatML specials ``<|endoftext|>`` (pad),
  ``<|im_start|>``, ``<|im_end|>`` (EOS) and a ChatML chat template (the Qwen2.5 / SmolLM2 layout).
- :func:`tiny_model` -- a random 2-layer Qwen2 (``arch="qwen2"``, untied lm_head like Qwen2.5-3B) or
  Llama (``arch="llama"``, tied like SmolLM2) model, hidden size 64, sdpa attention by default.

Example::

    from sdlm.testing import tiny_model
    model, tok = tiny_model("qwen2", seed=0)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
"""

from __future__ import annotations

import functools
from typing import Any

import torch

# ChatML, as Qwen2.5 and SmolLM2 use it (without their default system prompts, to keep rows short).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

_CORPUS = [
    "You are a helpful assistant.",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "The quick brown fox jumps over the lazy dog.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? The answer is 72.",
    "def add(a, b):\n    return a + b\n",
    "user assistant system question answer hello world count from to",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "Let x = 3 + 4 * 2. Then x = 11, so the result is \\boxed{11}.",
]


@functools.lru_cache(maxsize=4)
def _bpe_json(vocab_size: int) -> str:
    """Train the byte-level BPE once per size and keep it as JSON (trainer output is deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tk.to_str()


def tiny_tokenizer(vocab_size: int = 384):
    """A fresh ``PreTrainedTokenizerFast`` (byte-level BPE, ChatML template, EOS ``<|im_end|>``).

    A new object each call, because callers mutate tokenizers (e.g. adding the mask token).
    ``vocab_size`` is the BPE target size (>= 259: 256 bytes + 3 specials); the result has exactly that
    many entries if the corpus supports enough merges, otherwise fewer.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_bpe_json(vocab_size)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=4096,
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_config(arch: str = "qwen2", vocab: int = 384, **overrides: Any):
    """Config of a tiny random model: 2 layers, hidden 64, 4 heads (2 KV heads), vocab ``vocab``."""
    from transformers import LlamaConfig, Qwen2Config

    common: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        attn_implementation="sdpa",
    )
    if arch == "qwen2":
        cls = Qwen2Config
        common.update(tie_word_embeddings=False, rope_theta=10000.0, use_sliding_window=False)
    elif arch == "llama":
        cls = LlamaConfig
        common.update(tie_word_embeddings=True, rope_theta=10000.0)
    else:
        raise ValueError(f"tiny_model: unknown arch {arch!r} (use 'qwen2' or 'llama')")
    common.update(overrides)
    return cls(**common)


def tiny_model(arch: str = "qwen2", vocab: int | None = None, seed: int = 0, **overrides: Any):
    """``(model, tokenizer)``: a random tiny Qwen2/Llama causal LM in fp32, eval mode, on CPU.

    ``vocab`` defaults to the tokenizer's size; pass a larger value to imitate checkpoints whose
    embedding matrix has unused padding rows (Qwen2.5). ``overrides`` go to the config (e.g.
    ``attn_implementation="eager"``, ``num_hidden_layers=1``). Same seed -> bit-identical weights.
    """
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    n = len(tok)
    vocab = n if vocab is None else vocab
    if vocab < n:
        raise ValueError(f"tiny_model: vocab={vocab} is smaller than the tokenizer ({n} entries)")
    config = tiny_config(arch, vocab, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


def tiny_sdlm_checkpoint(folder: str | Any, *, seed: int = 0, block_size: int = 4, head_scale: float = 40.0) -> str:
    """A tiny random Qwen2 SDLM checkpoint saved in ``folder`` (mask token, SDLM keys), its LM head scaled up so
    confidences spread over (0, 1): a threshold of 0.5 then accepts 1..D tokens per step, not trivially one."""
    from sdlm.models import ensure_mask_token, save_model

    model, tok = tiny_model("qwen2", seed=seed)
    ensure_mask_token(model, tok, block_size=block_size)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return str(save_model(model, tok, folder))


@torch.no_grad()
def stock_clean_scores(model: Any, rows: list[dict]) -> tuple[float, int, int]:
    """(summed CE, argmax hits, count) of the clean response targets of NSP rows, from the stock model's own
    causal forward over each row's clean sequence alone: a reference that involves no SDLM mask or collator."""
    nll, hits, count = 0.0, 0, 0
    model.eval()
    for r in rows:
        n = r["meta"]["n_clean"]
        logits = model(input_ids=torch.tensor([r["input_ids"][:n]])).logits[0]
        tgt = torch.tensor(r["clean_targets"][:n])
        keep = tgt != -100
        nll += float(torch.nn.functional.cross_entropy(logits[keep].float(), tgt[keep], reduction="sum"))
        hits += int((logits[keep].argmax(-1) == tgt[keep]).sum())
        count += int(keep.sum())
    return nll, hits, count


def chat_record(user: str, assistant: str | list[str], system: str | None = None) -> dict:
    """A chat/SFT record ``{"messages": [...]}``; a list of assistant strings makes a multi-turn record."""
    msgs: list[dict[str, str]] = [{"role": "system", "content": system}] if system is not None else []
    answers = [assistant] if isinstance(assistant, str) else assistant
    for i, a in enumerate(answers):
        msgs.append({"role": "user", "content": user if i == 0 else f"{user} (again {i})"})
        msgs.append({"role": "assistant", "content": a})
    return {"messages": msgs}
