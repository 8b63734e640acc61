"""Batched decoding state: the bookkeeping that keeps the loops in ``generate.py`` as short as the spec.

Layout (spec section 3, "Batching"): one rectangular KV cache for the batch. Each step feeds, per row, its
accepted-but-uncached tokens right-aligned and padded to the step's widest row (the *main* columns), then
the same side layout for every row (a decoding block or the verify segments). After the forward the side
columns are cropped off the cache, so the cache only ever holds causal keys/values; padded main columns stay
behind as *holes*, which the per-slot validity mask hides from then on. Every token carries an explicit
position id, so left padding and holes never shift positions. Finished rows are dropped from the batch (and
the cache) so they stop costing compute.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from sdlm.masks import MAIN, PAD, to_additive, visibility

from .blocks import Side
from .stats import DeviceClock, DecodeStats


class NonFiniteLogits(ValueError):
    """A forward pass gave NaN or inf logits: stop instead of decoding garbage with exit code 0."""


def cache_kwargs(model, cache) -> dict:
    """The KV cache as the keyword this model's forward takes: transformers renamed ``past_key_values`` to
    ``cache`` (the old name warns, and goes in 5.40); older releases know only ``past_key_values``."""
    return {_cache_keyword(type(model)): cache}


@functools.lru_cache(maxsize=64)
def _cache_keyword(model_class: type) -> str:
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@dataclass
class Finished:
    token_ids: list[int]
    text: str
    finish_reason: str  # "eos" | "stop" | "length"
    stats: DecodeStats


class DecodeState:
    def __init__(
        self,
        model,
        tokenizer,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        block_size: int,
        causal_attn: bool,
        eos_ids: list[int],
        stop: list[str],
        use_cache: bool = True,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.causal_attn, self.use_cache = causal_attn, use_cache
        self.stop = [s for s in stop if s]
        self.clock = DeviceClock(self.device)
        b = len(prompts)
        dev = self.device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        self.eos = torch.tensor(sorted(set(eos_ids)) or [-1], device=dev)
        lens = torch.tensor([len(p) for p in prompts], device=dev)
        self.prompts = prompts
        self.budget = self._budgets(lens, max_new_tokens)
        width = int(lens.max())
        # accepted tokens not yet in the cache, right-aligned (left padding for the prompts)
        self.pending = torch.full((b, width), self.pad_id, dtype=torch.long, device=dev)
        for i, p in enumerate(prompts):
            self.pending[i, width - len(p):] = torch.tensor(p, device=dev)
        self.n_pending = lens.clone()
        self.length = lens.clone()  # L: prompt + accepted tokens
        self.out = torch.full((b, max_new_tokens + 2 * block_size), self.pad_id, dtype=torch.long, device=dev)
        self.n_out = torch.zeros(b, dtype=torch.long, device=dev)
        self.done = torch.zeros(b, dtype=torch.bool, device=dev)
        self.reason = ["length"] * b
        self.rows = list(range(b))  # original row of each active row
        self.hist = torch.zeros((b, max(block_size, 1)), dtype=torch.long, device=dev)
        self.nfe = torch.zeros(b, dtype=torch.long, device=dev)
        self.discarded = torch.zeros(b, dtype=torch.long, device=dev)
        self.elapsed = torch.zeros(b, dtype=torch.float64)
        self.prefill_s: float | None = None
        self.results: dict[int, Finished] = {}
        self._reset_cache()

    # ---------------------------------------------------------------- setup
    def _budgets(self, lens: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Per-row token budget; a prompt too long for the context is an error, a budget that would run past
        the context is clipped to it (documented truncation, with a warning)."""
        ctx = getattr(self.model.config, "max_position_embeddings", None)
        budget = torch.full_like(lens, max_new_tokens)
        if ctx is None:
            return budget
        too_long = (lens >= ctx).nonzero().flatten().tolist()
        if too_long:
            i = too_long[0]
            raise ValueError(f"prompt {i} has {int(lens[i])} tokens, longer than the model's context of {ctx} tokens")
        room = ctx - lens
        if bool((room < budget).any()):
            warnings.warn(f"max_new_tokens={max_new_tokens} runs past the model's context of {ctx} tokens for some "
                          "prompts; their generation is clipped at the context length", stacklevel=3)
        return torch.minimum(budget, room)

    def _reset_cache(self) -> None:
        b = self.pending.shape[0]
        self.cache = DynamicCache()
        self.slot_pos = torch.zeros((b, 0), dtype=torch.long, device=self.device)
        self.slot_valid = torch.zeros((b, 0), dtype=torch.bool, device=self.device)

    # ---------------------------------------------------------------- the forward pass
    @property
    def all_done(self) -> bool:
        return not self.rows

    def last_token(self) -> torch.Tensor:
        return self.pending[:, -1]

    def forward(self, side: Side | None) -> torch.Tensor:
        """One forward: main columns (pending tokens, causal) then ``side``. Returns the side logits (B, S, V),
        or the last main column's logits (B, 1, V) when there is no side (AR)."""
        t0 = self.clock.now()
        if not self.use_cache:  # reference path: recompute everything each step with the same visibility rule
            self._reset_cache()
            self._pending_is_everything()
        w = int(self.n_pending.max())
        b = len(self.rows)
        col = torch.arange(w, device=self.device)
        main_ids = self.pending[:, self.pending.shape[1] - w:]
        main_valid = col[None] >= (w - self.n_pending)[:, None]
        main_pos = (self.length[:, None] - w + col[None]).clamp(min=0)
        main_seg = torch.where(main_valid, MAIN, PAD)
        no = torch.zeros((b, w), dtype=torch.bool, device=self.device)
        if side is None:
            ids, pos, seg, blk, keep = main_ids, main_pos, main_seg, no, 1
        else:
            ids = torch.cat([main_ids, side.ids], 1)
            pos = torch.cat([main_pos, side.pos], 1)
            seg = torch.cat([main_seg, side.seg], 1)
            blk = torch.cat([no, side.block], 1)
            keep = side.ids.shape[1]
        k_pos = torch.cat([self.slot_pos, pos], 1)
        k_seg = torch.cat([torch.where(self.slot_valid, MAIN, PAD), seg], 1)
        k_blk = torch.cat([torch.zeros_like(self.slot_valid), blk], 1)
        mask = to_additive(visibility(pos, seg, blk, k_pos, k_seg, k_blk, causal_attn=self.causal_attn), self.dtype)
        out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True, logits_to_keep=keep,
                         **cache_kwargs(self.model, self.cache))
        if not bool(torch.isfinite(out.logits).all()):  # NaN/inf would still argmax to some token, silently
            raise NonFiniteLogits(f"the model produced non-finite logits (NaN/inf) in forward {int(torch.as_tensor(self.nfe).max()) + 1} "
                                  f"(dtype {self.dtype}): its weights or activations overflow; decoding stopped")
        if side is not None:
            self.cache.crop(-side.ids.shape[1])
        self.slot_pos = torch.cat([self.slot_pos, main_pos], 1)
        self.slot_valid = torch.cat([self.slot_valid, main_valid], 1)
        self.n_pending.zero_()
        self.nfe += 1
        dt = self.clock.now() - t0
        if self.prefill_s is None:
            self.prefill_s = dt
        else:
            self.elapsed += dt
        return out.logits

    def _pending_is_everything(self) -> None:
        seqs = [self.prompts[i] + self.out[i, : self.n_out[i]].tolist() for i in range(len(self.rows))]
        width = max(map(len, seqs))
        self.pending = torch.full((len(seqs), width), self.pad_id, dtype=torch.long, device=self.device)
        for i, s in enumerate(seqs):
            self.pending[i, width - len(s):] = torch.tensor(s, device=self.device)
        self.n_pending = torch.tensor([len(s) for s in seqs], device=self.device)

    # ---------------------------------------------------------------- accepting tokens
    def append(self, tokens: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Accept the first ``k`` of ``tokens`` (B, K) per row; clip at EOS, budget and stop strings.

        Returns the accepted counts after clipping. Accepted tokens become the next step's pending tokens.
        """
        kk = tokens.shape[1]
        col = torch.arange(kk, device=self.device)
        proposed = k.clone()
        k = torch.minimum(k, self.budget - self.n_out)
        is_eos = torch.isin(tokens, self.eos) & (col[None] < k[:, None])
        hit_eos = is_eos.any(1)
        k = torch.where(hit_eos, is_eos.int().argmax(1) + 1, k)  # the EOS itself is generated (counted), not shown
        idx = self.n_out[:, None] + col[None]
        take = col[None] < k[:, None]
        self.out.scatter_(1, idx, torch.where(take, tokens, self.out.gather(1, idx)))
        self.n_out += k
        self.length += k
        self.discarded += proposed - k
        self.hist.scatter_add_(1, (k - 1).clamp(min=0)[:, None], torch.ones_like(k)[:, None])
        # accepted tokens, right-aligned, are what the next step feeds causally
        src = (col[None] - (kk - k)[:, None]).clamp(min=0)
        self.pending = tokens.gather(1, src)
        self.n_pending = k.clone()
        for i in hit_eos.nonzero().flatten().tolist():
            self._finish(i, "eos")
        for i in (self.n_out >= self.budget).nonzero().flatten().tolist():
            self._finish(i, "length")
        if self.stop:
            self._check_stop(k)
        return k

    def _finish(self, i: int, reason: str) -> None:
        if not self.done[i]:
            self.done[i] = True
            self.reason[i] = reason

    def _check_stop(self, k: torch.Tensor) -> None:
        """Stop strings, checked on decoded text across block boundaries: the new tokens plus enough earlier
        ones to hold any stop string (a token decodes to at least one character)."""
        reach = max(map(len, self.stop)) + 1
        for i in (~self.done).nonzero().flatten().tolist():
            n, new = int(self.n_out[i]), int(k[i])
            lo = max(0, n - new - reach)
            tail = self.tokenizer.decode(self.out[i, lo:n].tolist(), skip_special_tokens=True)
            if any(s in tail for s in self.stop):
                # shortest prefix whose text contains a stop string: tokens after it are discarded overshoot
                for j in range(n - new + 1, n + 1):
                    text = self.tokenizer.decode(self.out[i, :j].tolist(), skip_special_tokens=True)
                    if any(s in text for s in self.stop):
                        break
                self.discarded[i] += n - j
                self.n_out[i] = j
                kept = new - (n - j)  # >= 1: the stop string was not complete before this step
                self.hist[i, new - 1] -= 1  # the histogram counts kept tokens per forward, like n_out
                self.hist[i, kept - 1] += 1
                self._finish(i, "stop")

    # ---------------------------------------------------------------- retiring finished rows
    def retire(self, *row_tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Move finished rows to ``results`` and drop them from the batch and the cache.

        Extra per-row tensors of the caller (e.g. the self-speculative draft) are re-indexed alike."""
        if not bool(self.done.any()):
            return row_tensors
        for i in self.done.nonzero().flatten().tolist():
            self.results[self.rows[i]] = self._result(i)
        keep = (~self.done).nonzero().flatten()
        self.rows = [self.rows[i] for i in keep.tolist()]
        if self.cache.get_seq_length() > 0:
            self.cache.batch_select_indices(keep)
        for name in ("slot_pos", "slot_valid", "pending", "n_pending", "length", "out", "n_out", "done", "budget",
                     "hist", "nfe", "discarded"):
            setattr(self, name, getattr(self, name)[keep])
        self.elapsed = self.elapsed[keep.cpu()]
        self.reason = [self.reason[i] for i in keep.tolist()]
        self.prompts = [self.prompts[i] for i in keep.tolist()]
        return tuple(t[keep] for t in row_tensors)

    def _result(self, i: int) -> Finished:
        n = int(self.n_out[i])
        ids = self.out[i, :n].tolist()
        if self.reason[i] == "eos":
            ids = ids[:-1]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if self.reason[i] == "stop":
            cut = min((text.find(s) for s in self.stop if s in text), default=len(text))
            text = text[:cut]
        stats = DecodeStats(new_tokens=n, nfe=int(self.nfe[i]), accepted_hist=self.hist[i].tolist(),
                            prefill_s=float(self.prefill_s or 0.0), decode_s=float(self.elapsed[i]),
                            discarded_tokens=int(self.discarded[i]))
        return Finished(ids, text, self.reason[i], stats)
