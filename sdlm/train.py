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

Resuming: every ``resume_every`` steps transformers' own checkpoint (weights, optimizer, scheduler, RNG, data
position, trainer state) is written to ``<out>/resume/incomplete/checkpoint-N``, completed with
``sdlm_resume.json`` (what lives only in this process: log lines, the TPF curve, the loss accumulators, the
training seconds, the resume record, and the run's identity), fsynced, and only then renamed to
``<out>/resume/checkpoint-N`` -- so a save cut short is never resumed from. A rerun of the same run (same
config, records and base weights) continues from the newest one with transformers' ``resume_from_checkpoint``;
the final checkpoint equals an uninterrupted run's. The folder is deleted after ``sdlm_training.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from sdlm.progress import Progress
from sdlm.cells import RESUME_DIR, TRAINING_FILE
from sdlm.nsp import IGNORE, NSPCollator, build_ar_rows, build_nsp_rows
from sdlm.retrofit_config import RetrofitConfig  # noqa: F401  (re-exported: sdlm.train.RetrofitConfig)

# transformers 5 renamed gradient_checkpointing (the old name warns); use whichever this version has
_CKPT_ARG = ("activation_checkpointing" if "activation_checkpointing" in {f.name for f in dataclasses.fields(TrainingArguments)}
             else "gradient_checkpointing")
RESUME_STATE_FILE = "sdlm_resume.json"  # our part of a resume checkpoint, beside transformers' files
INCOMPLETE_DIR = "incomplete"  # <out>/resume/incomplete/checkpoint-N: a save in progress, never resumed from


# ----------------------------------------------------------------------------------------------------
# Loss


class TrainingDiverged(ValueError):
    """A non-finite loss or weight: training stops with one line, and no checkpoint holds the NaNs."""


def require_finite_weights(model: Any, step: int) -> None:
    from sdlm.models import first_non_finite

    bad = first_non_finite(model)
    if bad is not None:
        raise TrainingDiverged(f"training diverged: {bad[1]} non-finite values (NaN/inf) in {bad[0]} after step "
                               f"{step}; nothing saved")


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
    sel, target, obj, groups = measured_positions(batch, block_size)
    ce = F.cross_entropy(logits[sel].float(), target, reduction="none")
    with torch.no_grad():
        stats = group_sums(ce.detach().double(), groups)
    return ce[obj], stats, obj.sum()


def measured_positions(batch: dict[str, torch.Tensor], block_size: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The positions a loss is measured at: ``(sel, target, obj, groups)`` with ``sel`` a (B, T) mask,
    ``target`` the token each selected position predicts, ``obj`` the objective (block-target) positions among
    them, and ``groups`` D + 1 masks over the selected positions: one per block index 0..D-1 (objective
    positions), last the clean response tokens (``clean_loss`` labels)."""
    labels, clean_t, bidx = batch["labels"], batch["clean_targets"], batch["block_index"]
    has_obj = labels != IGNORE
    has_clean = (clean_t != IGNORE) & (bidx < 0)
    sel = has_obj | has_clean
    obj_sel, b = has_obj[sel], bidx[sel]
    groups = [obj_sel & (b == i) for i in range(block_size)] + [has_clean[sel]]
    return sel, torch.where(has_obj, labels, clean_t)[sel], obj_sel, groups


def group_sums(values: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """(len(groups), 2) float64 [sum, count] of ``values`` per group mask."""
    out = torch.zeros(len(groups), 2, dtype=torch.float64, device=values.device)
    for i, m in enumerate(groups):
        out[i, 0], out[i, 1] = values[m].sum(), m.sum()
    return out


class SDLMTrainer(Trainer):
    """``Trainer`` with the NSP loss (see module doc) and per-block-index loss logging.

    The loss is the sum of objective CEs divided by ``num_items_in_batch`` -- the number of labelled
    positions over all gradient-accumulation micro-batches (and devices, with
    ``average_tokens_across_devices``) -- so it is one mean over the global batch, whatever the split.
    """

    def __init__(self, *args: Any, block_size: int, resume_state: Callable[[], dict] | None = None,
                 keep_every: int = 0, keep_dir: str | os.PathLike | None = None, **kwargs: Any):
        """``resume_state()``: the caller's JSON-able state saved with every resume checkpoint (see module doc);
        ``keep_every``: also keep the checkpoints of those steps as ``<keep_dir>/checkpoint-N`` (``save_steps``)."""
        super().__init__(*args, **kwargs)
        self.block_size = int(block_size)
        # our labels are already per-position targets: count them all, and let us normalise the loss
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = False
        self._stats = torch.zeros(self.block_size + 1, 2, dtype=torch.float64)
        self.resume_state, self.keep_every, self.keep_dir = resume_state, keep_every, keep_dir
        self._staging: Path | None = None
        self._pending_loss_state: dict | None = None
        self.add_callback(_RestoreLossState(self))

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
            if not bool(torch.isfinite(loss.detach()).all()):  # before backward: nothing is stepped or saved
                raise TrainingDiverged(f"training diverged: the loss is {float(loss.detach())} at step "
                                       f"{self.state.global_step + 1} (lr {self.args.learning_rate:g}); nothing saved")
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
        if "train_loss" in logs and getattr(self, "_initial_global_step", 0) > 0:
            # resumed: transformers averages over this process's steps only; the run's mean is over all of them
            # (the same expression an uninterrupted run evaluates, on the restored running sum)
            logs["train_loss"] = self._total_loss_scalar / max(self.state.global_step, 0.001)
        super().log(logs, start_time)

    # ---- resuming (module doc)
    def _loss_state(self) -> dict[str, Any]:
        """The loss accumulators since the last log line, per process (collective: every rank calls it)."""
        dev = self.accelerator.device
        tr = self.accelerator.gather(self._tr_loss.detach().float().reshape(1).to(dev)).tolist()
        stats = self.accelerator.gather(self._stats.to(dev)[None]).tolist()
        return {"tr_loss": tr, "block_stats": stats, "total_loss_scalar": self._total_loss_scalar,
                "globalstep_last_logged": self._globalstep_last_logged}

    def restore_loss_state(self, state: dict[str, Any]) -> None:
        """Applied when training begins (transformers zeroes these in ``train()``), so the next log line and
        the final ``train_loss`` equal an uninterrupted run's."""
        self._pending_loss_state = state

    def _apply_loss_state(self) -> None:
        s, self._pending_loss_state = self._pending_loss_state, None
        if s is None:
            return
        rank = self.accelerator.process_index
        self._tr_loss = torch.tensor(s["tr_loss"][rank], dtype=torch.float32, device=self.args.device)
        self._stats = torch.tensor(s["block_stats"][rank], dtype=torch.float64)
        self._total_loss_scalar = float(s["total_loss_scalar"])
        self._globalstep_last_logged = int(s["globalstep_last_logged"])
        self.state.save_steps = self.args.save_steps  # the checkpoint's trainer state holds the earlier setting

    def _get_output_dir(self, trial: Any) -> str:
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """transformers' checkpoint, written into ``incomplete/``, completed with ``sdlm_resume.json``, fsynced,
        then renamed into place; older ones are rotated away (transformers' ``rotate_checkpoints``, limit 1)."""
        from sdlm.provenance import atomic_write_json
        from sdlm.resume import fsync_path, fsync_tree

        require_finite_weights(model, self.state.global_step)  # a NaN state is never kept to resume from
        run_dir = Path(self.args.output_dir)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / INCOMPLETE_DIR
        extra = {"trainer": self._loss_state(), **(self.resume_state() if self.resume_state else {})}
        if self.args.should_save:
            shutil.rmtree(staging / name, ignore_errors=True)
        self.accelerator.wait_for_everyone()  # before any rank writes its part (DeepSpeed shards)
        self._staging = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            atomic_write_json(staging / name / RESUME_STATE_FILE, {"step": self.state.global_step, **extra})
            fsync_tree(staging / name)
            if self.keep_every and self.keep_dir is not None and self.state.global_step % self.keep_every == 0:
                _link_tree(staging / name, Path(self.keep_dir) / name)  # before the rename: a kill redoes both
            final = run_dir / name
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging / name, final)
            fsync_path(staging)
            fsync_path(run_dir)
            rotate_checkpoints(str(run_dir), save_total_limit=1)  # keeps the newest: the one just renamed
        self.accelerator.wait_for_everyone()


class _RestoreLossState(TrainerCallback):
    """Restores the loss accumulators when training begins, after transformers has zeroed them."""

    def __init__(self, trainer: SDLMTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._apply_loss_state()


def _link_tree(src: Path, dst: Path) -> None:
    """A kept copy of a checkpoint folder: hard links (no data copied; checkpoints are never rewritten in place),
    plain copies where the filesystem has no links; written beside ``dst`` and renamed."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=link)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


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
            self._progress.skip(state.global_step)  # resumed: the steps of earlier processes cost nothing here

    def on_step_end(self, args, state, control, **kwargs):
        """At least a line a minute with an ETA, whatever logging_steps says (slow CPU steps)."""
        progress = getattr(self, "_progress", None)
        if progress is not None and state.is_world_process_zero:
            progress.update(state.global_step)


@torch.no_grad()
def block_losses(model: Any, rows: Sequence[dict], collator: NSPCollator, *, batch_size: int = 8,
                 top1: bool = False) -> dict[str, float]:
    """Mean CE per block index (``loss_pos{i}``) and clean response CE (``loss_clean``) over ``rows``;
    for held-out checks before/after training (no gradient, model put in eval mode).

    ``top1``: also the share of those positions whose argmax is the target (``top1_pos{i}``, ``top1_clean``).
    On self-distilled targets that is agreement with the base model's greedy tokens, which sees what a mean
    CE hides: the third claim attempt kept HumanEval ``loss_pos0`` at 0.043 yet flipped 52 verdicts,
    because greedy code turns on a few argmax flips."""
    was = model.training
    model.eval()
    D = collator.block_size
    tot = torch.zeros(D + 1, 2, dtype=torch.float64)
    hits = torch.zeros(D + 1, 2, dtype=torch.float64)
    dev = next(model.parameters()).device
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(dev) for k, v in collator(rows[i: i + batch_size]).items()}
        logits = nsp_forward(model, batch)
        _, stats, _ = loss_terms(logits, batch, D)
        tot += stats.cpu()
        if top1:
            sel, target, _, groups = measured_positions(batch, D)
            hits += group_sums((logits[sel].argmax(-1) == target).double(), groups).cpu()
    model.train(was)
    names = [f"pos{i}" for i in range(D)] + ["clean"]
    out = {f"loss_{n}": float(tot[i, 0] / tot[i, 1]) for i, n in enumerate(names) if tot[i, 1] > 0}
    if top1:
        out |= {f"top1_{n}": float(hits[i, 0] / hits[i, 1]) for i, n in enumerate(names) if hits[i, 1] > 0}
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
    """TrainingArguments for a config; CPU is used when no GPU is visible. transformers' checkpoints go to
    ``<out>/resume`` every ``resume_every`` steps (and at ``save_steps`` multiples: :class:`SaveAlso`)."""
    every = cfg.resume_every or cfg.save_steps
    return TrainingArguments(
        output_dir=str(Path(cfg.out) / RESUME_DIR),
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
        save_strategy="steps" if every > 0 else "no",
        save_steps=every if every > 0 else 500,
        report_to=cfg.report_to,
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        deepspeed=cfg.deepspeed,
        **({_CKPT_ARG: True} if cfg.gradient_checkpointing else {}),
    )


class SaveAlso(TrainerCallback):
    """A checkpoint at every multiple of ``every`` too (``save_steps`` beside ``resume_every``)."""

    def __init__(self, every: int):
        self.every = every

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0:
            control.should_save = True


def run_identity(cfg: RetrofitConfig, records: Sequence[dict], base_weights_sha256: str,
                 args: TrainingArguments) -> dict:
    """What a resume checkpoint must have been trained with to be continued: every setting but where and how
    often checkpoints are written, the records, the base weights, the device kind, bf16 autocast as resolved
    here and the number of processes. Flat, so a refusal names the differences."""
    from sdlm.provenance import config_hash

    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "save_steps", "resume_every")}
    return json.loads(json.dumps({**config, "records_sha256": config_hash(list(records)),
                                  "base_weights_sha256": base_weights_sha256, "device": args.device.type,
                                  "bf16_autocast": cfg.use_bf16(), "world_size": args.world_size}, default=str))


def resume_point(folder: Path, identity: dict, *, stream: Any, may_delete: bool) -> tuple[str | None, dict | None]:
    """The newest complete resume checkpoint in ``folder`` (transformers' ``get_last_checkpoint``; a save cut
    short is still in ``incomplete/`` and is ignored) and its ``sdlm_resume.json``, if it belongs to this run.
    State of another run is deleted with a message naming what differs, never continued."""
    from sdlm.provenance import config_hash
    from sdlm.resume import differing_keys

    if may_delete:
        shutil.rmtree(folder / INCOMPLETE_DIR, ignore_errors=True)
    last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if last is None:
        return None, None
    try:
        state = json.loads((Path(last) / RESUME_STATE_FILE).read_text())
    except (OSError, ValueError):
        state = None
    if isinstance(state, dict) and state.get("run_sha256") == config_hash(identity):
        return last, state
    why = (f"made by another run (differs in: {differing_keys(state.get('run'), identity)})"
           if isinstance(state, dict) else f"no readable {RESUME_STATE_FILE}")
    print(f"[sdlm] discarding the resume state in {folder}: {why}; training from the start", file=stream, flush=True)
    if may_delete:
        shutil.rmtree(folder, ignore_errors=True)
    return None, None


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
    from sdlm.provenance import atomic_write_json, config_hash, provenance
    from sdlm.resume import weights_digest
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
    all_records = records
    probing = cfg.probe_every > 0 and not cfg.ar_baseline
    held: list[dict] = []
    if probing:
        if cfg.probe_prompts < 1 or cfg.probe_prompts >= len(records):
            raise ValueError(f"probe_prompts={cfg.probe_prompts} must be >= 1 and leave training records "
                             f"(there are {len(records)})")
        records, held = records[: -cfg.probe_prompts], records[-cfg.probe_prompts:]
    if model is None or tokenizer is None:
        model, tokenizer = load_model(cfg.base, dtype=torch.float32, attn_implementation=cfg.attn_implementation)
    base_sha256 = weights_digest(model) if cfg.resume_every or cfg.save_steps else None  # before the mask row
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
        # the held-out records' own rows (clean response tokens labelled too): the probe's health signal
        held_rows, _ = build_nsp_rows(held, tokenizer, block_size=cfg.block_size, mask_token_id=mask_id,
                                      max_len=cfg.max_len, repeat=cfg.repeat, clean_loss=True, seed=cfg.seed)
        probe = TPFProbe(model, tokenizer, [chat_prompt(tokenizer, r) for r in held], block_size=cfg.block_size,
                         every=cfg.probe_every, taus=cfg.probe_taus, max_new_tokens=cfg.probe_max_new_tokens,
                         at_start=cfg.probe_at_start, stream=printer.stream,
                         losses=lambda: block_losses(model, held_rows, collator))
        callbacks.append(probe)
    print(f"[sdlm] trainable parameters: {counts['trainable']:,} of {counts['total']:,}", file=printer.stream, flush=True)

    # ---- resuming (module doc): what this process keeps in memory goes into every resume checkpoint
    out = Path(cfg.out)
    args = training_arguments(cfg)
    identity = run_identity(cfg, all_records, base_sha256, args) if base_sha256 else None
    ckpt, saved = (resume_point(out / RESUME_DIR, identity, stream=printer.stream, may_delete=args.should_save)
                   if identity else (None, None))
    resumes: list[dict[str, Any]] = []
    before_s = 0.0  # training seconds of earlier processes
    if saved is not None:
        resumes = [*saved["resumes"], {"from_step": saved["step"],
                                        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
        before_s = float(saved["train_seconds"])
        printer.history = list(saved["log_history"])
        if probe is not None:
            probe.restore(saved["probe"], before_s)
        print(f"[sdlm] resuming from {ckpt} (step {saved['step']}; resume {len(resumes)} of this run)",
              file=printer.stream, flush=True)

    def train_seconds() -> float:
        """Training time so far, earlier processes included, probes excluded."""
        probe_s = (probe.probe_seconds - probe_s0) if probe is not None else 0.0
        return before_s + time.perf_counter() - t0 - probe_s

    def resume_state() -> dict[str, Any]:
        return {"run_sha256": config_hash(identity), "run": identity, "train_seconds": train_seconds(),
                "log_history": printer.history, "probe": probe.state() if probe is not None else None,
                "resumes": resumes}

    trainer = SDLMTrainer(model=model, args=args, train_dataset=list(rows), data_collator=collator,
                          processing_class=tokenizer, block_size=D, callbacks=[*callbacks, SaveAlso(cfg.save_steps)],
                          resume_state=resume_state if identity else None, keep_every=cfg.save_steps, keep_dir=out)
    trainer.remove_callback(PrinterCallback)
    if saved is not None:
        trainer.restore_loss_state(saved["trainer"])
    probe_s0 = probe.probe_seconds if probe is not None else 0.0
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=ckpt)
    train_s = train_seconds()

    model.config.use_cache = True
    require_finite_weights(model, trainer.state.global_step)
    trainer.save_model(str(out))  # weights (safetensors) + config (SDLM keys) + tokenizer; rank 0 only
    if trainer.is_world_process_zero():
        steps = max(int(trainer.state.global_step), 1)
        train_loss = float(result.metrics.get("train_loss", result.training_loss))  # a resumed run's: SDLMTrainer.log
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
            "train_loss": train_loss if math.isfinite(train_loss) else None,
            "last_log": last,
            "log_history": printer.history,
            "trainable_parameters": counts,
            "bf16_autocast": cfg.use_bf16(),  # what "bf16: auto" resolved to on this machine
            **({"tpf_curve": probe.curve, "probe_seconds": round(probe.probe_seconds, 2)} if probe else {}),
            # how often this run was stopped and continued (train_seconds and the curve's times add up the processes)
            "resumed": {"count": len(resumes), "from_steps": [r["from_step"] for r in resumes], "details": resumes},
            "provenance": provenance(dataclasses.asdict(cfg), seed=cfg.seed),
        }
        atomic_write_json(out / TRAINING_FILE, summary)
        shutil.rmtree(out / RESUME_DIR, ignore_errors=True)  # finished: nothing left to resume
        print(f"[sdlm] saved {out} ({trainer.state.global_step} steps, {train_s:.1f}s, "
              f"{train_s / steps:.3f}s/step)", file=printer.stream, flush=True)
    return out
