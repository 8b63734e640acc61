"""The settings of a retrofit run (:class:`RetrofitConfig`), torch-free: the ``sdlm retrofit`` parser and the
pipeline's command builder are generated from its fields, so an option is declared once, here."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RUN_FIELDS", "RetrofitConfig", "native_bf16", "option", "option_args", "option_flag", "retrofit_options"]


def option(default: Any, help: str = "", *, minimum: float | None = None, choices: tuple | None = None,
           cli: bool = True, path: bool = False) -> Any:
    """A retrofit option: its default, help text, bounds and choices, read by the ``sdlm retrofit`` parser and the
    pipeline's command builder (both generated from these fields; ``cli=False``: API only; ``path``: a file
    name the pipeline resolves against the repository)."""
    return dataclasses.field(default=default, metadata={"help": help, "minimum": minimum, "choices": choices,
                                                        "cli": cli, "path": path})


#: the fields that say which run this is (model, data, output, D, AR baseline), not how it trains
RUN_FIELDS = ("base", "data", "out", "block_size", "ar_baseline")


@dataclass
class RetrofitConfig:
    """Every setting of a retrofit run; saved verbatim in ``sdlm_training.json``.

    Defaults follow the paper's recipe (spec section 7: lr 5e-6 constant after 3% warm-up, weight decay
    0.01, D = 4, causal_attn false, repeat 3), except ``max_len`` (2048 instead of 5632). Short CPU demos
    need a much larger lr (the CPU feasibility note found 3e-4 best for SmolLM2-135M). The options (every
    field but :data:`RUN_FIELDS`) are the ``sdlm retrofit`` flags and the pipeline's training-preset keys.
    """

    base: str
    data: str
    out: str
    block_size: int = 4
    ar_baseline: bool = False
    max_steps: int = option(-1, "optimizer steps, >= 1; -1: epochs decide")
    epochs: float = option(1.0, "epochs, > 0 (when max_steps is -1)")
    lr: float = option(5e-6, "learning rate (paper 5e-6; short CPU demos want ~3e-4)")
    batch_size: int = option(4, "rows per device per micro-batch", minimum=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", minimum=1)
    max_len: int = option(2048, "tokens per row, clean part + blocks", minimum=1)
    seed: int = option(0, "seed of block sampling, shuffling and initialisation")
    clean_loss: bool = option(False, "also train on the clean response tokens (AR loss)")
    repeat: int = option(3, "block budget = repeat x candidate starts", minimum=1)
    causal_attn: bool = option(False, "causal attention inside blocks (paper: off)")
    bf16: bool | str = option(False, "bf16 autocast, fp32 weights: on, off, or auto (only where the device "
                                     "computes bf16 natively: a GPU, a CPU with AVX512-BF16 / AMX)")
    warmup: float = option(0.03, "warm-up: fraction of steps (< 1) or steps (>= 1)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    lr_scheduler: str = option("constant_with_warmup", "transformers scheduler name")
    logging_steps: int = option(10, "a log line every N steps", minimum=1)
    save_steps: int = option(0, "intermediate checkpoints every N steps, kept as <out>/checkpoint-N (0: none)")
    # 20 steps of the measured 25 s/step CPU retrofit (README) = a stop loses at most ~8 minutes of training
    resume_every: int = option(20, "save a resumable state (weights, optimizer, scheduler, RNG, data position) every N "
                                   "steps in <out>/resume; a rerun continues from it; deleted after the final save "
                                   "(0: off)")
    limit: int | None = option(None, "use only the first N records", minimum=1)
    attn_implementation: str = option("sdpa", "attention kernel", choices=("sdpa", "eager"))
    deepspeed: str | None = option(None, "DeepSpeed config JSON (e.g. pipeline/deepspeed/zero1.json)", path=True)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory)")
    report_to: str = option("none", "Trainer's report_to", cli=False)
    # cheaper retrofits (README "Retrofit options"): freeze the embeddings (the mask row stays trainable)
    # and/or the lowest N decoder layers
    freeze_embeddings: bool = option(False, "freeze input embeddings (the mask token row stays trainable)")
    freeze_layers: int = option(0, "freeze the lowest N decoder layers")
    # TPF probe (sdlm.probe): every N steps decode the last ``probe_prompts`` records (held out of training)
    probe_every: int = option(0, "TPF probe every N steps on held-out records (0: off); the curve goes to "
                                 "sdlm_training.json")
    probe_prompts: int = option(8, "records held out for the TPF probe", minimum=1)
    probe_max_new_tokens: int = option(96, "new tokens per probe prompt", minimum=1)
    probe_taus: tuple[float, ...] = option((0.98, 0.82), "thresholds probed (comma-separated on the command line)")
    probe_at_start: bool = option(True, "probe before the first step too", cli=False)

    def __post_init__(self) -> None:
        """The step options that Trainer would silently reinterpret (0 steps trains one; -5 means epochs)."""
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or \
                not (self.max_steps == -1 or self.max_steps >= 1):
            raise ValueError(f"max_steps must be >= 1, or -1 to let epochs decide; got {self.max_steps!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, float)) or \
                not math.isfinite(self.epochs) or self.epochs <= 0:
            raise ValueError(f"epochs must be a number > 0, got {self.epochs!r}")
        for name in ("save_steps", "resume_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if self.bf16 not in (True, False, "auto"):
            raise ValueError(f"bf16 must be true, false or 'auto', got {self.bf16!r}")

    def use_bf16(self) -> bool:
        """Whether this run trains under bf16 autocast: ``auto`` asks the hardware (:func:`native_bf16`)."""
        return native_bf16() if self.bf16 == "auto" else bool(self.bf16)


def retrofit_options() -> list[dataclasses.Field]:
    """The :class:`RetrofitConfig` fields a user sets from the command line or a pipeline training preset."""
    return [f for f in dataclasses.fields(RetrofitConfig) if f.name not in RUN_FIELDS and f.metadata.get("cli")]


def option_flag(name: str) -> str:
    """A RetrofitConfig field's command-line flag: ``max_steps`` -> ``--max-steps``."""
    return "--" + name.replace("_", "-")


def option_args(name: str, value: Any) -> list[str]:
    """The ``sdlm retrofit`` arguments that set option ``name`` to ``value`` (a config or a benchmark's
    spelling): ``True`` -> the bare flag, ``False``/``None`` -> nothing, a list -> comma-joined."""
    if value is None or value is False:
        return []
    if value is True:
        return [option_flag(name)]
    if isinstance(value, (list, tuple)):
        return [option_flag(name), ",".join(str(x) for x in value)]
    return [option_flag(name), str(value)]


def native_bf16() -> bool:
    """Does the training device compute bf16 natively? A GPU that says so, or a CPU with AVX512-BF16 / AMX.

    Elsewhere bf16 is emulated: measured 42x slower than fp32 for a 512x512 matmul on a 2-core AMD EPYC
    without AVX512, against 1.7x faster on the AVX512-BF16 machines the demo was first timed on."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))
