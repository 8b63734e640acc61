"""The identity of a decoder, spelled once. Stdlib only.

A decoder is an algorithm (``ar``, ``prob_conf``, ``entropy_conf``, ``self_speculative``), a block size D and,
for the confidence algorithms, a threshold tau. Every place that names one -- the pipeline's grid, cell
folders and wildcard constraints, the report's labels, the TPF probe's keys, the adapter's validation, the
benchmarks -- goes through :class:`Decoder`, so adding an algorithm is a change here (plus its decoding loop).

Spellings (kept byte-identical to the cell folders and probe keys written before this module existed):

=====================  ==========================  ===================  ===================
decoder                cell folder (``name``)      probe key            label
=====================  ==========================  ===================  ===================
AR                     ``ar``                      --                   ``AR``
confidence, tau <= 1   ``prob_conf_D4_tau0.98``    ``prob_conf_tau0.98``  ``conf 0.98``
confidence, tau > 1    ``step1_D4``                ``prob_conf_tau2``   ``1 tok/step``
self-speculative       ``self_speculative_D4``     ``self_speculative`` ``self-spec``
=====================  ==========================  ===================  ===================

Confidence decoding with tau > 1 accepts exactly one token per step (spec section 3): it is the reference that
self-speculative decoding must equal and that the fidelity columns compare against (``is_one_token``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["ALGS", "CONFIDENCE_ALGS", "DECODER_PATTERN", "REFERENCE_TAU", "Decoder", "alg_label", "check_threshold",
           "fmt_tau", "is_one_token", "label_of", "probe_key_label"]

CONFIDENCE_ALGS = ("prob_conf", "entropy_conf")
ALGS = ("ar", *CONFIDENCE_ALGS, "self_speculative")
#: tau of the one-token-per-step reference cells (``decoding.reference_tau``); any value > 1 is equivalent
REFERENCE_TAU = 2.0
_D = r"[1-9][0-9]*"
_TAU = r"[0-9]+\.[0-9]+"
#: every cell folder name (a Snakemake wildcard constraint)
DECODER_PATTERN = (rf"ar|step1_D{_D}|self_speculative_D{_D}|(?:{'|'.join(CONFIDENCE_ALGS)})_D{_D}_tau{_TAU}")
_SHORT = {"ar": "AR", "prob_conf": "conf", "entropy_conf": "entropy", "self_speculative": "self-spec"}


def check_threshold(value: object) -> float:
    """The one threshold rule: a finite number > 0 (> 1 accepts exactly one token per step)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        tau = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in (0, inf), got {value!r}") from None
    if not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"threshold must be a number in (0, inf), got {value!r}")
    return tau


def fmt_tau(tau: float) -> str:
    """tau in a cell folder name: Python's float repr (0.98 -> "0.98", 1 -> "1.0"), one spelling per value."""
    return repr(float(tau))


def alg_label(alg: str) -> str:
    """The short label of an algorithm alone (figure legends): AR, conf, entropy, self-spec."""
    return _SHORT.get(alg, alg)


def is_one_token(alg: str, tau: float | None) -> bool:
    """Confidence decoding with tau > 1 accepts exactly one token per step: the fidelity reference."""
    return alg in CONFIDENCE_ALGS and tau is not None and tau == tau and float(tau) > 1.0


def label_of(alg: str, tau: float | None = None) -> str:
    """The label of a decoder in tables: ``AR``, ``1 tok/step``, ``self-spec``, ``conf 0.98`` (D plays no part;
    without a tau, the algorithm's short label)."""
    if is_one_token(alg, tau):
        return "1 tok/step"
    if alg in CONFIDENCE_ALGS and tau is not None and tau == tau:
        return f"{alg_label(alg)} {float(tau):g}"
    return alg_label(alg)


def probe_key_label(key: str) -> str:
    """The label of a TPF-probe key (``prob_conf_tau0.98`` -> ``conf 0.98``); an unknown key as it is."""
    try:
        return Decoder.parse(key, block_size=1).label  # the label does not depend on D
    except ValueError:
        return key


@dataclass(frozen=True)
class Decoder:
    alg: str
    block_size: int | None = None
    tau: float | None = None

    def __post_init__(self) -> None:
        if self.alg not in ALGS:
            raise ValueError(f"unknown alg {self.alg!r}; choose one of {', '.join(ALGS)}")
        if self.alg == "ar":
            if self.tau is not None:
                raise ValueError("ar takes no threshold")
            object.__setattr__(self, "block_size", None)
            return
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"{self.alg} needs a block size >= 1, got {self.block_size!r}")
        if self.alg == "self_speculative":
            if self.tau is not None:
                raise ValueError("self_speculative takes no threshold (it is lossless)")
            return
        object.__setattr__(self, "tau", check_threshold(self.tau))

    # ---------------------------------------------------------------- what it is
    @property
    def is_confidence(self) -> bool:
        return self.alg in CONFIDENCE_ALGS

    @property
    def is_one_token(self) -> bool:
        """Exactly one token per step: confidence decoding with tau > 1 (the fidelity reference)."""
        return is_one_token(self.alg, self.tau)

    # ---------------------------------------------------------------- its spellings
    @property
    def name(self) -> str:
        """The cell folder: ``ar``, ``step1_D<D>``, ``self_speculative_D<D>``, ``<alg>_D<D>_tau<tau>``."""
        if self.alg == "ar":
            return "ar"
        if self.is_one_token:
            return f"step1_D{self.block_size}"
        if self.alg == "self_speculative":
            return f"self_speculative_D{self.block_size}"
        return f"{self.alg}_D{self.block_size}_tau{fmt_tau(self.tau)}"

    @property
    def label(self) -> str:
        """Tables and figures: ``AR``, ``1 tok/step``, ``self-spec``, ``conf 0.98``, ``entropy 0.7``."""
        return label_of(self.alg, self.tau)

    @property
    def probe_key(self) -> str:
        """The key of a TPF probe point (``sdlm_training.json`` ``tpf_curve``): D is the checkpoint's."""
        return f"{self.alg}_tau{self.tau:g}" if self.is_confidence else self.alg

    # ---------------------------------------------------------------- back from a spelling
    @classmethod
    def parse(cls, name: str, *, block_size: int | None = None, reference_tau: float = REFERENCE_TAU) -> "Decoder":
        """A cell folder name, or a probe key (then ``block_size`` is the checkpoint's D).

        ``step1_D<D>`` parses to prob_conf with ``reference_tau``: its folder does not record the tau."""
        text = str(name)
        if text == "ar":
            return cls("ar")
        if m := re.fullmatch(rf"step1_D({_D})", text):
            return cls("prob_conf", int(m.group(1)), reference_tau)
        if m := re.fullmatch(rf"self_speculative(?:_D({_D}))?", text):
            return cls("self_speculative", int(m.group(1)) if m.group(1) else block_size)
        algs = "|".join(CONFIDENCE_ALGS)
        if m := re.fullmatch(rf"({algs})_D({_D})_tau([0-9.eE+-]+)", text):
            return cls(m.group(1), int(m.group(2)), float(m.group(3)))
        if m := re.fullmatch(rf"({algs})_tau([0-9.eE+-]+)", text):  # a probe key
            return cls(m.group(1), block_size, float(m.group(2)))
        raise ValueError(f"{text!r} is not a decoder name (ar, step1_D<D>, self_speculative_D<D>, "
                         f"<alg>_D<D>_tau<tau>) nor a probe key (<alg>_tau<tau>, self_speculative)")

    @classmethod
    def of(cls, alg: str, block_size: int | None, threshold: float | None) -> "Decoder":
        """The decoder of a set of model_args (``alg``, ``block_size``, ``threshold``): the block size is dropped
        for ``ar`` and the threshold kept only for the confidence algorithms, which are the ones that read it."""
        if alg == "ar":
            return cls("ar")
        return cls(alg, block_size, threshold if alg in CONFIDENCE_ALGS else None)

    @classmethod
    def reference(cls, block_size: int, tau: float = REFERENCE_TAU) -> "Decoder":
        """The one-token-per-step reference of a block size: prob_conf with ``tau`` > 1."""
        if not tau > 1:
            raise ValueError(f"the one-token-per-step reference needs tau > 1, got {tau!r}")
        return cls("prob_conf", block_size, tau)

    def model_args(self) -> dict[str, object]:
        """The ``alg`` / ``block_size`` / ``threshold`` model_args of this decoder (the adapter's spelling)."""
        out: dict[str, object] = {"alg": self.alg}
        if self.alg != "ar":
            out["block_size"] = self.block_size
        if self.is_confidence:
            out["threshold"] = self.tau
        return out
