"""TPF probe during a retrofit: tokens per forward on held-out prompts, measured as training goes.

Why: the loss per block index says little about how many tokens confidence decoding will accept; the
curve that matters (and that a CPU budget is chosen from) is TPF against training steps. Every
``every`` optimizer steps the probe decodes a few held-out chat prompts with the model being trained --
confidence decoding at each threshold and self-speculative decoding, cached, fp32, greedy, exactly the
engine evaluation uses -- and records ``{"step", "train_seconds", "tpf": {...}}``. TPF alone is no health
signal: a model that has lost its answers can still accept many tokens per forward (the claim run's step-0
probe gave TPF 2.16 before any training). So the probe also records ``heldout_loss``, the cross-entropy per
block index and of the clean response tokens on the same held-out records (``losses``: a callable the trainer
supplies, :func:`sdlm.train.block_losses` on their NSP rows); a held-out ``loss_pos0`` that climbs while the
training loss falls is a model fitting its rows and losing new prompts. Probe time is kept out of
``train_seconds`` so the curve's x axis is training cost only. A resumed run continues the curve
(:meth:`TPFProbe.state` is saved with each resume checkpoint, :meth:`TPFProbe.restore` reads it back).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from sdlm.decoders import Decoder


@torch.no_grad()
def measure_tpf(model: Any, tokenizer: Any, prompts: Sequence[str], *, block_size: int, taus: Sequence[float],
                self_speculative: bool = True, max_new_tokens: int = 96, batch_size: int = 8) -> dict[str, float]:
    """Pooled TPF (all new tokens / all forwards, prefill included) per decoder over ``prompts``, keyed by
    :attr:`sdlm.decoders.Decoder.probe_key` (``prob_conf_tau0.98``, ``self_speculative``)."""
    from sdlm.decoding import DecodeSettings, generate

    decoders = [Decoder("prob_conf", block_size, float(t)) for t in taus]
    if self_speculative:
        decoders.append(Decoder("self_speculative", block_size))
    out = {}
    for dec in decoders:  # each decoder's settings made from it, resolved against the model once
        settings = DecodeSettings.for_decoder(dec, max_new_tokens=max_new_tokens, batch_size=batch_size)
        gens = generate(model, tokenizer, list(prompts), settings=settings.resolve(model.config))
        tokens = sum(g.stats.new_tokens for g in gens)
        forwards = sum(g.stats.nfe for g in gens)
        out[dec.probe_key] = round(tokens / max(forwards, 1), 4)
    return out


class TPFProbe(TrainerCallback):
    """Measures :func:`measure_tpf` at step 0 (optional), every ``every`` steps and at the last step."""

    def __init__(self, model: Any, tokenizer: Any, prompts: Sequence[str], *, block_size: int, every: int,
                 taus: Sequence[float] = (0.98, 0.82), self_speculative: bool = True, max_new_tokens: int = 96,
                 at_start: bool = True, stream: Any = None, losses: Callable[[], dict[str, float]] | None = None):
        if every < 1:
            raise ValueError(f"probe interval must be >= 1 step, got {every}")
        if not prompts:
            raise ValueError("the TPF probe needs at least one held-out prompt")
        self.model, self.tokenizer, self.prompts = model, tokenizer, list(prompts)
        self.kw = dict(block_size=block_size, taus=tuple(taus), self_speculative=self_speculative,
                       max_new_tokens=max_new_tokens)
        self.every, self.at_start, self.stream, self.losses = every, at_start, stream, losses
        self.curve: list[dict[str, Any]] = []
        self.probe_seconds = 0.0
        self.train_seconds_before = 0.0  # training time of earlier processes of a resumed run
        self._t0 = 0.0
        self._probe_s0 = 0.0
        self._last = -1

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to continue the curve (JSON-able)."""
        return {"curve": self.curve, "probe_seconds": self.probe_seconds, "last": self._last}

    def restore(self, state: dict[str, Any], train_seconds_before: float) -> None:
        self.curve, self.probe_seconds, self._last = list(state["curve"]), float(state["probe_seconds"]), int(state["last"])
        self.train_seconds_before = float(train_seconds_before)

    def _measure(self, step: int) -> None:
        if step == self._last:
            return
        self._last = step
        t = time.perf_counter()
        # training time so far: earlier processes' + this one's, probes excluded
        train_s = self.train_seconds_before + (t - self._t0) - (self.probe_seconds - self._probe_s0)
        was_training, use_cache = self.model.training, self.model.config.use_cache
        self.model.eval()
        self.model.config.use_cache = True
        try:
            # decode outside the Trainer's bf16 autocast: fp32, as evaluation decodes
            with torch.autocast(device_type=next(self.model.parameters()).device.type, enabled=False):
                tpf = measure_tpf(self.model, self.tokenizer, self.prompts, **self.kw)
                heldout = self.losses() if self.losses is not None else None
        finally:
            self.model.config.use_cache = use_cache
            self.model.train(was_training)
        took = time.perf_counter() - t
        self.probe_seconds += took
        point = {"step": step, "train_seconds": round(train_s, 2), "n_prompts": len(self.prompts),
                 "max_new_tokens": self.kw["max_new_tokens"], "probe_seconds": round(took, 2), "tpf": tpf}
        if heldout is not None:
            point["heldout_loss"] = {k: round(v, 4) for k, v in heldout.items()}
        self.curve.append(point)
        if self.stream is not None:
            print(f"[sdlm] tpf probe step {step}: " + " ".join(f"{k} {v:.3f}" for k, v in tpf.items())
                  + ("; held-out " + " ".join(f"{k} {v:.3f}" for k, v in heldout.items()) if heldout else "")
                  + f" ({took:.0f}s)", file=self.stream, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0, self._probe_s0 = time.perf_counter(), self.probe_seconds
        if self.at_start and state.global_step == 0 and state.is_world_process_zero:  # not again when resumed
            self._measure(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        last = state.max_steps > 0 and state.global_step >= state.max_steps
        if state.is_world_process_zero and (state.global_step % self.every == 0 or last):
            self._measure(state.global_step)


def ceiling_tpf(confidences: Sequence[float], *, block_size: int, threshold: float) -> float:
    """TPF a PERFECT block predictor would reach on one greedy trajectory under confidence decoding.

    ``confidences[t]`` is the model's own next-token probability of greedy token t given the true prefix
    (what a perfectly trained block position would output). Each step accepts the longest prefix of the
    next ``block_size`` tokens whose confidences exceed ``threshold``, and at least one token, as
    spec section 3 does; TPF = tokens / steps. Why: it bounds what any amount of retrofit training can
    reach at that tau for that model and task, so it tells whether a TPF target is reachable at all.
    """
    n, t, steps = len(confidences), 0, 0
    while t < n:
        k = 0
        while k < block_size and t + k < n and confidences[t + k] > threshold:
            k += 1
        t += max(k, 1)
        steps += 1
    return n / steps if steps else 0.0
