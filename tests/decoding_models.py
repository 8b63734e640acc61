"""Tiny in-process models for the decoding tests.

* ``random_model``: a random Qwen2/Llama with SDLM config keys; ``peaky=True`` scales the LM head so
  confidences spread over (0, 1) and acceptance lengths vary from row to row and step to step.
* ``cyclic_model``: a tiny model NSP-trained for a few seconds on a periodic token stream that contains
  EOS once per period, so its block guesses are right (TPF near D, self-speculative accepts whole drafts)
  and rows stop at different points.
* ``branchy_model``: a tiny model NSP-trained (D = 8) on a successor stream with branch points at irregular
  gaps (2-way, 4-way and "anything next"), so the confidence of a block position depends on how far the
  next branch is: every acceptance length 1..D occurs, for ``prob_conf`` and ``entropy_conf`` alike, and a
  confident position can follow an unconfident one. The conformance tests need exactly that.
"""

from __future__ import annotations

import functools

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from sdlm.masks import to_additive, training_visibility

VOCAB, EOS, PAD, MASK = 64, 1, 0, 63
CYCLE = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, EOS]


class WordTokenizer:
    """Token i <-> word ``t{i}``; PAD and EOS are special (dropped when skipping special tokens)."""

    pad_token_id, eos_token_id = PAD, EOS

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(f"t{i}" for i in ids if not (skip_special_tokens and i in (PAD, EOS)))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [int(w[1:]) for w in text.split()]


def _build(arch: str, causal_attn: bool, block_size: int, seed: int, max_pos: int = 256):
    torch.manual_seed(seed)
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=max_pos, tie_word_embeddings=False)
    config = (Qwen2Config if arch == "qwen2" else LlamaConfig)(**kw)
    config.text_mask_token_id, config.block_size, config.causal_attn = MASK, block_size, causal_attn
    model = (Qwen2ForCausalLM if arch == "qwen2" else LlamaForCausalLM)(config)
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    return model.eval()


def random_model(arch: str = "qwen2", causal_attn: bool = False, *, block_size: int = 4, seed: int = 0,
                 peaky: bool = False, max_pos: int = 256):
    model = _build(arch, causal_attn, block_size, seed, max_pos)
    if peaky:
        with torch.no_grad():
            model.lm_head.weight.mul_(30)
    return model


def _cycle_window(gen: torch.Generator, length: int) -> torch.Tensor:
    off = int(torch.randint(0, len(CYCLE), (1,), generator=gen))
    return torch.tensor(CYCLE * (length // len(CYCLE) + 2))[off:off + length]


def _nsp_batch(gen: torch.Generator, block_size: int, n: int = 24, rows: int = 8, sample=_cycle_window):
    """Windows of a token stream, every clean position a block start (targets: the next D tokens)."""
    ids, pos, labels = [], [], []
    for _ in range(rows):
        x = sample(gen, n + block_size)
        clean = x[:n]
        starts = list(range(n - 1))
        blk_ids = torch.cat([torch.cat([clean[p:p + 1], torch.full((block_size - 1,), MASK)]) for p in starts])
        blk_pos = torch.cat([torch.arange(p, p + block_size) for p in starts])
        blk_lab = torch.cat([x[p + 1:p + 1 + block_size] for p in starts])
        ids.append(torch.cat([clean, blk_ids]))
        pos.append(torch.cat([torch.arange(n), blk_pos]))
        labels.append(torch.cat([torch.full((n,), -100), blk_lab]))
    return torch.stack(ids), torch.stack(pos), torch.stack(labels)


@functools.lru_cache(maxsize=8)
def cyclic_model(arch: str = "qwen2", causal_attn: bool = False, block_size: int = 4, steps: int = 150):
    """NSP-train a tiny model on the periodic stream (a few seconds on CPU); cached per configuration."""
    return _nsp_train(_build(arch, causal_attn, block_size, seed=0), block_size, causal_attn, steps, _cycle_window)


# successor stream with branch points: token t is followed by succ(t), except at branch tokens
LOW, HIGH = 2, 62  # stream tokens; EOS, PAD and MASK are outside


def _succ(t: int) -> int:
    return LOW + (t + 1 - LOW) % (HIGH - LOW)


def _branches(seed: int = 0) -> dict[int, list[int]]:
    """Branch tokens at gaps of 1..12 tokens, each one of: 2-way (succ or one other), 4-way, anything next."""
    g = torch.Generator().manual_seed(seed)
    out, t = {}, LOW
    while True:
        t += int(torch.randint(1, 13, (1,), generator=g))
        kind = int(torch.randint(0, 3, (1,), generator=g))
        if t >= HIGH:
            return out
        others = [LOW + int(x) for x in torch.randint(0, HIGH - LOW, (3,), generator=g)]
        out[t] = [_succ(t), others[0]] if kind == 0 else [_succ(t), *others] if kind == 1 else list(range(LOW, HIGH))


BRANCHES = _branches()


def branchy_sample(gen: torch.Generator, length: int) -> torch.Tensor:
    """A random walk on the successor stream: a prompt or a training window."""
    s = LOW + int(torch.randint(0, HIGH - LOW, (1,), generator=gen))
    out = [s]
    while len(out) < length:
        nxt = BRANCHES.get(s, [_succ(s)])
        s = nxt[int(torch.randint(0, len(nxt), (1,), generator=gen))]
        out.append(s)
    return torch.tensor(out)


@functools.lru_cache(maxsize=4)
def branchy_model(causal_attn: bool = False, steps: int = 300):
    """NSP-train (D = 8) on the branchy stream, ~20 s on one CPU thread; decodes at any D <= 8."""
    return _nsp_train(_build("qwen2", causal_attn, 8, seed=0), 8, causal_attn, steps, branchy_sample)


def _nsp_train(model, block_size: int, causal_attn: bool, steps: int, sample):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids, pos, labels = _nsp_batch(gen, block_size, sample=sample)
        mask = to_additive(training_visibility(pos, block_size, causal_attn=causal_attn), torch.float32)
        logits = model(input_ids=ids, position_ids=pos, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def cycle_prompt(offset: int, length: int) -> list[int]:
    """``length`` tokens of the periodic stream starting at ``offset``, never ending on EOS."""
    stream = CYCLE * (length // len(CYCLE) + 3)
    p = stream[offset:offset + length]
    return p if p[-1] != EOS else stream[offset + 1:offset + 1 + length]
