"""How to decode, validated once: the settings object that ``generate()``, the lm-eval adapter, the TPF probe
and self-distillation all pass around (one threshold rule, one set of defaults)."""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    together; ``use_cache`` (False recomputes every step: the reference path)."""

    alg: str = "prob_conf"
    block_size: int | None = None
    threshold: float = 0.98
    max_new_tokens: int = 256
    batch_size: int = 8
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.alg not in ALGS:
            raise ValueError(f"unknown alg {self.alg!r}; choose one of {', '.join(ALGS)}")
        object.__setattr__(self, "threshold", check_threshold(self.threshold))
        _positive("max_new_tokens", self.max_new_tokens)
        _positive("batch_size", self.batch_size)
        if self.block_size is not None and (isinstance(self.block_size, bool) or not isinstance(self.block_size, int)
                                            or self.block_size < 1):
            raise ValueError(f"block_size must be a positive integer for alg={self.alg!r}, got {self.block_size!r}")

    @classmethod
    def for_decoder(cls, decoder: Decoder, **rest) -> "DecodeSettings":
        """The settings of a :class:`~sdlm.decoders.Decoder` (alg, D, tau) plus the other fields."""
        tau = {"threshold": decoder.tau} if decoder.tau is not None else {}
        return cls(alg=decoder.alg, block_size=decoder.block_size, **tau, **rest)

    def with_(self, **changes) -> "DecodeSettings":
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)

    def decoder(self, block_size: int | None = None) -> Decoder:
        """The :class:`~sdlm.decoders.Decoder` these settings decode with (D: given, else ours)."""
        return Decoder.of(self.alg, block_size if block_size is not None else self.block_size, self.threshold)
