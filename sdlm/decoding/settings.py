"""How to decode, validated once and resolved once: the settings object that ``generate()``, the lm-eval adapter,
the TPF probe and self-distillation all pass down (one threshold rule, one set of defaults, one reading of the
checkpoint's SDLM keys).

A :class:`DecodeSettings` is made in one of three ways -- from Python (the constructor), from a config cell's
:class:`~sdlm.decoders.Decoder` (:meth:`DecodeSettings.for_decoder`), or from the ``sdlm`` model's model_args
(:class:`sdlm.adapter.ModelArgs` builds it) -- and validated when it is made, around its
:class:`~sdlm.decoders.Decoder` (alg, D, tau: the decoder's own rules, the threshold rule among them).
:meth:`DecodeSettings.resolve` then fills in what the checkpoint decides (D when none was given, the mask token,
``causal_attn``) once, against its config; whoever holds the resolved settings decodes with them as they are.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from sdlm.decoders import ALGS, Decoder, check_threshold

__all__ = ["DecodeSettings"]


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class DecodeSettings:
    """``alg`` (``sdlm.decoders.ALGS``); ``block_size`` D (None: the checkpoint's); ``threshold`` tau, a finite
    number > 0 (> 1 accepts one token per step); ``max_new_tokens`` per request; ``batch_size`` requests decoded
    together; ``use_cache`` (False recomputes every step: the reference path); ``mask_token_id`` and
    ``causal_attn`` (None: the checkpoint's, filled in by :meth:`resolve`)."""

    alg: str = "prob_conf"
    block_size: int | None = None
    threshold: float = 0.98
    max_new_tokens: int = 256
    batch_size: int = 8
    use_cache: bool = True
    mask_token_id: int | None = None
    causal_attn: bool | None = None
    #: the :class:`~sdlm.decoders.Decoder` these settings are built around, once D is known (given, or resolved)
    _decoder: Decoder | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.alg not in ALGS:
            raise ValueError(f"unknown alg {self.alg!r}; choose one of {', '.join(ALGS)}")
        _positive("max_new_tokens", self.max_new_tokens)
        _positive("batch_size", self.batch_size)
        if self.block_size is not None and (isinstance(self.block_size, bool) or not isinstance(self.block_size, int)
                                            or self.block_size < 1):
            raise ValueError(f"block_size must be a positive integer for alg={self.alg!r}, got {self.block_size!r}")
        # the threshold rule, once: by the Decoder where it reads tau (a confidence algorithm with its D), else here
        self._set_decoder()
        dec = self._decoder
        tau = dec.tau if dec is not None and dec.is_confidence else check_threshold(self.threshold)
        object.__setattr__(self, "threshold", tau)

    def _set_decoder(self) -> None:
        if self.alg == "ar" or self.block_size is not None:
            object.__setattr__(self, "_decoder", Decoder.of(self.alg, self.block_size, self.threshold))

    @classmethod
    def for_decoder(cls, decoder: Decoder, **rest) -> "DecodeSettings":
        """The settings of a :class:`~sdlm.decoders.Decoder` (alg, D, tau) plus the other fields."""
        tau = {"threshold": decoder.tau} if decoder.tau is not None else {}
        return cls(alg=decoder.alg, block_size=decoder.block_size, **tau, **rest)

    def with_(self, **changes) -> "DecodeSettings":
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)

    def with_budget(self, max_new_tokens: int, batch_size: int) -> "DecodeSettings":
        """A copy for one batch: another token budget and batch size, only those checked (the rest was validated,
        and resolved, when these settings were made)."""
        out = copy.copy(self)
        object.__setattr__(out, "max_new_tokens", _positive("max_new_tokens", max_new_tokens))
        object.__setattr__(out, "batch_size", _positive("batch_size", batch_size))
        return out

    def decoder(self, block_size: int | None = None) -> Decoder:
        """The :class:`~sdlm.decoders.Decoder` these settings decode with (D: given, else ours)."""
        if block_size is None and self._decoder is not None:
            return self._decoder
        return Decoder.of(self.alg, block_size if block_size is not None else self.block_size, self.threshold)

    # ---------------------------------------------------------------- against the checkpoint
    @property
    def resolved(self) -> bool:
        """D (1 for ``ar``), the mask token (where the algorithm needs one) and ``causal_attn`` are known."""
        if self.causal_attn is None:
            return False
        return self.block_size == 1 if self.alg == "ar" else (self.block_size is not None and self.mask_token_id is not None)

    def resolve(self, config: Any, *, source: str | None = None) -> "DecodeSettings":
        """These settings with the checkpoint's SDLM keys filled in, read once from its ``config``: D (``alg=ar``
        decodes one token per step: D = 1), the mask token, ``causal_attn``; values already given win. One-line
        ``ValueError`` when an SDLM algorithm finds no D or no mask token, or D does not fit the context;
        ``source`` names the checkpoint in those messages."""
        from sdlm.models import check_block_size, sdlm_settings

        if self.resolved:
            return self
        keys = sdlm_settings(config)
        d = 1 if self.alg == "ar" else (self.block_size if self.block_size is not None else keys.block_size)
        mask = self.mask_token_id if self.mask_token_id is not None else keys.mask_token_id
        what = source or "the model"
        if self.alg != "ar":
            if d is None:
                raise ValueError(f"alg={self.alg!r} needs block_size: pass block_size=D ({what}'s config names none)")
            if mask is None:
                raise ValueError(f"alg={self.alg!r} needs a mask token, but {what} has no text_mask_token_id in its "
                                 "config (not an SDLM checkpoint; use alg=ar or retrofit it)")
        check_block_size(config, d)
        out = copy.copy(self)
        for name, value in (("block_size", int(d)), ("mask_token_id", mask),
                            ("causal_attn", keys.causal_attn if self.causal_attn is None else bool(self.causal_attn))):
            object.__setattr__(out, name, value)
        if out._decoder is None:  # D came from the checkpoint: the decoder is known now
            out._set_decoder()
        return out
