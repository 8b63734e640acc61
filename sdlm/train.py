"""Retrofit training (NSP, spec section 1) and the AR-SFT baseline on transformers' ``Trainer``.

Why a ``Trainer`` subclass and nothing more: the optimiser, schedule, gradient accumulation, bf16
autocast, ``accelerate launch`` / DeepSpeed (``pipeline/deepspeed/zero1.json``) and checkpointing all
come from transformers unchanged; only the loss is ours. :meth:`SDLMTrainer.compute_loss` runs the stock
model on the collator's 4-D block mask and explicit position ids and takes ONE cross-entropy mean over
all labelled positions of the (global) batch -- block targets, plus clean response tokens with
``clean_loss``. It also accumulates, for logging only, the loss at each block index i
(``loss_pos0`` .. ``loss_pos{D-1}``; pos 0 is the ordinary next-token loss) and the clean AR loss on the
response tokens (``loss_clean``, logged whether or not it is trained on).

``retrofit(cfg)`` is the whole job: records -> model (+ mask token) -> rows -> train -> checkpoint folder
(safetensors + tokenizer + config with the SDLM keys + ``sdlm_training.json``, written last, so its
presence means the folder is complete). ``ar_baseline=True`` trains the same records for the same steps
with plain causal rows and no mask token.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from sdlm.progress import Progress
from sdlm.cells import TRAINING_FILE
from sdlm.nsp import IGNORE, NSPCollator, build_ar_rows, build_nsp_rows
from sdlm.retrofit_config import RetrofitConfig  # noqa: F401  (re-exported: sdlm.train.RetrofitConfig)

# transformers 5 renamed gradient_checkpointing (the old name warns); use whichever this version has
_CKPT_ARG = ("activation_checkpointing" if "activation_checkpointing" in {f.name for f in dataclasses.fields(TrainingArguments)}
             else "gradient_checkpointing")


# ----------------------------------------------------------------------------------------------------
# Loss


def nsp_forward(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a collated batch: the stock model with our 4-D mask and explicit position ids."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False)
    return out.logits


def loss_terms(logits: torch.Tensor, batch: dict[str, torch.Tensor], block_size: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position CE, only where something is measured (so no (B, T, V) fp32 copy is made).

    Returns ``(obj_ce, stats, n_obj)``: the CE of every objective position (1-D, with grad), a detached
    (D + 1, 2) tensor of [sum, count] per block index 0..D-1 and, last, for the clean response tokens,
    and the number of objective positions.
    """
    labels, clean_t, bidx = batch["labels"], batch["clean_targets"], batch["block_index"]
    has_obj = labels != IGNORE
    has_clean = (clean_t != IGNORE) & (bidx < 0)
    sel = has_obj | has_clean
    target = torch.where(has_obj, labels, clean_t)[sel]
    ce = F.cross_entropy(logits[sel].float(), target, reduction="none")
    obj_sel = has_obj[sel]
    b = bidx[sel]
    stats = torch.zeros(block_size + 1, 2, dtype=torch.float64, device=logits.device)
    with torch.no_grad():
        d = ce.detach().double()
        for i in range(block_size):
            m = obj_sel & (b == i)
            stats[i, 0], stats[i, 1] = d[m].sum(), m.sum()
        m = has_clean[sel]
        stats[block_size, 0], stats[block_size, 1] = d[m].sum(), m.sum()
    return ce[obj_sel], stats, obj_sel.sum()


class SDLMTrainer(Trainer):
    """``Trainer`` with the NSP loss (see module doc) and per-block-index loss logging.

    The loss is the sum of objective CEs divided by ``num_items_in_batch`` -- the number of labelled
    positions over all gradient-accumulation micro-batches (and devices, with
    ``average_tokens_across_devices``) -- so it is one mean over the global batch, whatever the split.
    """

    def __init__(self, *args: Any, block_size: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.block_size = int(block_size)
        # our labels are already per-position targets: count them all, and let us normalise the loss
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = False
        self._stats = torch.zeros(self.block_size + 1, 2, dtype=torch.float64)

    def compute_loss(self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        logits = nsp_forward(model, inputs)
        obj_ce, stats, n_obj = loss_terms(logits, inputs, self.block_size)
        if obj_ce.numel() == 0:
            loss = logits.sum() * 0.0  # keeps the graph (DDP/DeepSpeed need every rank to backward)
        elif num_items_in_batch is not None:
            loss = obj_ce.sum() / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        else:
            loss = obj_ce.mean()
        if model.training:
            self._stats += stats.cpu()
        return (loss, {"logits": logits}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._stats[:, 1].sum() > 0:
            stats = self._stats.to(self.accelerator.device)
            if self.accelerator.num_processes > 1:
                stats = self.accelerator.reduce(stats, reduction="sum")
            for i in range(self.block_size):
                if stats[i, 1] > 0:
                    logs[f"loss_pos{i}"] = round(float(stats[i, 0] / stats[i, 1]), 4)
            if stats[-1, 1] > 0:
                logs["loss_clean"] = round(float(stats[-1, 0] / stats[-1, 1]), 4)
            self._stats.zero_()
        super().log(logs, start_time)


class LineLogger(TrainerCallback):
    """One readable line per log event (step, loss, per-position losses, lr), and keeps the history."""

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stdout
        self.history: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        self.history.append({"step": state.global_step, **logs})
        keys = ["loss"] + sorted(k for k in logs if k.startswith("loss_pos")) + ["loss_clean", "learning_rate", "grad_norm"]
        parts = [f"{k} {logs[k]:.4g}" for k in keys if isinstance(logs.get(k), (int, float))]
        parts += [f"{k} {v:.4g}" for k, v in logs.items() if k not in keys and isinstance(v, (int, float))]
        el = time.perf_counter() - self._t0
        print(f"[sdlm] step {state.global_step}/{state.max_steps} {el:.0f}s " + " ".join(parts),
              file=self.stream, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._progress = Progress(state.max_steps, "training step", stream=self.stream)

    def on_step_end(self, args, state, control, **kwargs):
        """At least a line a minute with an ETA, whatever logging_steps says (slow CPU steps)."""
        progress = getattr(self, "_progress", None)
        if progress is not None and state.is_world_process_zero:
            progress.update(state.global_step)


@torch.no_grad()
def block_losses(model: Any, rows: Sequence[dict], collator: NSPCollator, *, batch_size: int = 8) -> dict[str, float]:
    """Mean CE per block index (``loss_pos{i}``) and clean response CE (``loss_clean``) over ``rows``;
    for held-out checks before/after training (no gradient, model put in eval mode)."""
    was = model.training
    model.eval()
    D = collator.block_size
    tot = torch.zeros(D + 1, 2, dtype=torch.float64)
    dev = next(model.parameters()).device
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(dev) for k, v in collator(rows[i: i + batch_size]).items()}
        _, stats, _ = loss_terms(nsp_forward(model, batch), batch, D)
        tot += stats.cpu()
    model.train(was)
    out = {f"loss_pos{i}": float(tot[i, 0] / tot[i, 1]) for i in range(D) if tot[i, 1] > 0}
    if tot[D, 1] > 0:
        out["loss_clean"] = float(tot[D, 0] / tot[D, 1])
    return out


# ----------------------------------------------------------------------------------------------------
# The job


def freeze(model: Any, *, embeddings: bool, layers: int, keep_rows: Sequence[int] = ()) -> dict[str, int]:
    """Freeze the input embeddings (all rows but ``keep_rows``: the new mask token must still learn) and
    the lowest ``layers`` decoder layers; returns trainable / total parameter counts.

    Rows are kept by zeroing the other rows' gradients, so AdamW leaves them unchanged except for its
    decoupled weight decay (lr x wd per step, ~1e-6 relative at the demo's settings). A tied lm_head is
    the same tensor and is frozen with the embeddings.
    """
    if embeddings:
        emb = model.get_input_embeddings().weight
        if keep_rows:
            keep = torch.zeros(emb.shape[0], 1, dtype=emb.dtype, device=emb.device)
            keep[list(keep_rows)] = 1
            emb.register_hook(lambda g: g * keep.to(g.dtype))
        else:
            emb.requires_grad_(False)
    if layers:
        stack = getattr(getattr(model, "model", model), "layers", None)
        if stack is None or layers > len(stack):
            raise ValueError(f"cannot freeze {layers} layers: the model has {0 if stack is None else len(stack)}")
        for layer in stack[:layers]:
            layer.requires_grad_(False)
    params = {id(p): p for p in model.parameters()}.values()
    return {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}


def training_arguments(cfg: RetrofitConfig) -> TrainingArguments:
    """TrainingArguments for a config; CPU is used when no GPU is visible."""
    return TrainingArguments(
        output_dir=cfg.out,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup,
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.epochs,
        bf16=cfg.use_bf16(),
        use_cpu=not torch.cuda.is_available(),
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 500,
        report_to=cfg.report_to,
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        deepspeed=cfg.deepspeed,
        **({_CKPT_ARG: True} if cfg.gradient_checkpointing else {}),
    )


def retrofit(cfg: RetrofitConfig, *, model: Any = None, tokenizer: Any = None,
             records: Sequence[dict] | None = None, stream: Any = None) -> Path:
    """Run one retrofit (or AR-SFT baseline) and return the checkpoint folder.

    ``model``/``tokenizer``/``records`` may be given in memory (tests, notebooks); otherwise they come
    from ``cfg.base`` (any :func:`sdlm.models.load_model` source) and ``cfg.data`` (``gsm8k`` or a chat
    JSONL). Bad input raises ``ModelSourceError`` / ``DataError`` / ``RecordError`` / ``ValueError``
    with a one-line message (the CLI turns them into exit code 2).
    """
    from transformers import PrinterCallback, set_seed

    from sdlm.models import ensure_mask_token, load_model
    from sdlm.probe import TPFProbe
    from sdlm.provenance import atomic_write_json, provenance
    from sdlm.sft_data import chat_prompt, load_sft_records

    if cfg.block_size < 1:
        raise ValueError(f"block size must be >= 1, got {cfg.block_size}")
    if cfg.repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {cfg.repeat}")
    if cfg.freeze_layers < 0:
        raise ValueError(f"freeze_layers must be >= 0, got {cfg.freeze_layers}")
    set_seed(cfg.seed)
    if records is None:
        records = load_sft_records(cfg.data, limit=cfg.limit)
    records = list(records)
    probing = cfg.probe_every > 0 and not cfg.ar_baseline
    held: list[dict] = []
    if probing:
        if cfg.probe_prompts < 1 or cfg.probe_prompts >= len(records):
            raise ValueError(f"probe_prompts={cfg.probe_prompts} must be >= 1 and leave training records "
                             f"(there are {len(records)})")
        records, held = records[: -cfg.probe_prompts], records[-cfg.probe_prompts:]
    if model is None or tokenizer is None:
        model, tokenizer = load_model(cfg.base, dtype=torch.float32, attn_implementation=cfg.attn_implementation)
    if cfg.ar_baseline:
        mask_id = None
        rows, report = build_ar_rows(records, tokenizer, max_len=cfg.max_len)
    else:
        mask_id = ensure_mask_token(model, tokenizer, block_size=cfg.block_size, causal_attn=cfg.causal_attn)
        rows, report = build_nsp_rows(records, tokenizer, block_size=cfg.block_size, mask_token_id=mask_id,
                                      max_len=cfg.max_len, repeat=cfg.repeat, clean_loss=cfg.clean_loss, seed=cfg.seed)
    counts = freeze(model, embeddings=cfg.freeze_embeddings, layers=cfg.freeze_layers,
                    keep_rows=[mask_id] if mask_id is not None else [])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    D = 1 if cfg.ar_baseline else cfg.block_size
    collator = NSPCollator(D, pad_id, causal_attn=cfg.causal_attn, mask_dtype=model.dtype)
    model.config.use_cache = False
    model.train()

    printer = LineLogger(stream)
    print(f"[sdlm] {'AR-SFT baseline' if cfg.ar_baseline else f'NSP retrofit D={cfg.block_size}'} of {cfg.base}: "
          f"{report.n_rows} rows from {report.n_records} records ({report.n_tokens} tokens, {report.n_blocks} blocks, "
          f"{report.n_truncated} truncated, {sum(report.skipped.values())} skipped)", file=printer.stream, flush=True)
    callbacks: list[TrainerCallback] = [printer]
    probe = None
    if probing:
        probe = TPFProbe(model, tokenizer, [chat_prompt(tokenizer, r) for r in held], block_size=cfg.block_size,
                         every=cfg.probe_every, taus=cfg.probe_taus, max_new_tokens=cfg.probe_max_new_tokens,
                         at_start=cfg.probe_at_start, stream=printer.stream)
        callbacks.append(probe)
    print(f"[sdlm] trainable parameters: {counts['trainable']:,} of {counts['total']:,}", file=printer.stream, flush=True)
    trainer = SDLMTrainer(model=model, args=training_arguments(cfg), train_dataset=list(rows),
                          data_collator=collator, processing_class=tokenizer, block_size=D, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - t0 - (probe.probe_seconds if probe else 0.0)  # probes are not training

    model.config.use_cache = True
    out = Path(cfg.out)
    trainer.save_model(str(out))  # weights (safetensors) + config (SDLM keys) + tokenizer; rank 0 only
    if trainer.is_world_process_zero():
        steps = max(int(trainer.state.global_step), 1)
        last = {k: v for k, v in (printer.history[-1] if printer.history else {}).items()}
        summary = {
            "mode": "ar" if cfg.ar_baseline else "nsp",
            "config": dataclasses.asdict(cfg),
            "block_size": None if cfg.ar_baseline else cfg.block_size,
            "text_mask_token_id": mask_id,
            "causal_attn": cfg.causal_attn,
            "clean_loss": cfg.clean_loss,
            "repeat": cfg.repeat,
            "seed": cfg.seed,
            "data": report.as_dict(),
            "steps": int(trainer.state.global_step),
            "train_seconds": round(train_s, 2),
            "seconds_per_step": round(train_s / steps, 4),
            "train_loss": result.training_loss if math.isfinite(result.training_loss) else None,
            "last_log": last,
            "log_history": printer.history,
            "trainable_parameters": counts,
            "bf16_autocast": cfg.use_bf16(),  # what "bf16: auto" resolved to on this machine
            **({"tpf_curve": probe.curve, "probe_seconds": round(probe.probe_seconds, 2)} if probe else {}),
            "provenance": provenance(dataclasses.asdict(cfg), seed=cfg.seed),
        }
        atomic_write_json(out / TRAINING_FILE, summary)
        print(f"[sdlm] saved {out} ({trainer.state.global_step} steps, {train_s:.1f}s, "
              f"{train_s / steps:.3f}s/step)", file=printer.stream, flush=True)
    return out
