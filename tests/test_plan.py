"""The pipeline's program (sdlm.plan.Plan) without Snakemake: model variants, the grid, the job command lines,
and that the training options the schema accepts are exactly RetrofitConfig's."""

from __future__ import annotations

import shlex
from collections import Counter

import pytest
import yaml

from sdlm.config_checks import load_yaml_strict
from sdlm.plan import Plan, PlanError
from sdlm.retrofit_config import RetrofitConfig, retrofit_options

from datadir import REPO


def plan(name: str) -> Plan:
    return Plan(load_yaml_strict(REPO / "config" / name), REPO)


def test_claim_grid():
    """config/config.yaml, the claim run: the Qwen base model (AR) and its D = 4 retrofit on all of HumanEval,
    five cells, each SDLM cell paired against the base model's AR cell."""
    p = plan("config.yaml")
    assert list(p.models) == ["qwen", "qwen-D4"] and list(p.tasks) == ["humaneval_sdlm"]
    assert [d.name for d in p.decoders("qwen", "humaneval_sdlm")] == ["ar"]
    assert [d.name for d in p.decoders("qwen-D4", "humaneval_sdlm")] == [
        "prob_conf_D4_tau0.98", "prob_conf_D4_tau0.9", "self_speculative_D4", "step1_D4"]
    assert len(p.cells()) == 5 and len(p.fidelity_files()) == 4
    assert p.models["qwen-D4"].baseline == "qwen" and p.models["qwen"].kind == "ar"
    assert "--limit" not in shlex.split(p.eval_args("qwen", "humaneval_sdlm", "ar"))  # all 164 problems
    cmd = p.retrofit_command("qwen", "D4")
    for flag, value in (("--lr", "1e-05"), ("--max-len", "384"), ("--block-size", "4"), ("--probe-prompts", "8")):
        assert f"{flag} {value}" in cmd, (flag, cmd)
    assert "--clean-loss" in shlex.split(cmd)  # the second claim run labels the clean response tokens too


def test_demo_grid():
    """config/smollm2.yaml: SmolLM2 retrofits with D 4 and 8 plus the AR-SFT baseline; 35 cells."""
    p = plan("smollm2.yaml")
    assert list(p.models) == ["smollm2-D4", "smollm2-D8", "smollm2-ar"]
    kinds = Counter()
    for m in p.models:
        for t in p.tasks:
            for d in p.decoders(m, t):
                kinds["reference" if d.is_one_token else d.alg] += 1
    assert kinds == {"prob_conf": 12, "entropy_conf": 8, "self_speculative": 6, "ar": 3, "reference": 6}
    assert len(p.cells()) == 35 and len(p.fidelity_files()) == 32
    names = {d.name for d in p.decoders("smollm2-D8", "gsm8k_sdlm")}
    assert {"entropy_conf_D8_tau0.7", "prob_conf_D8_tau0.98", "self_speculative_D8", "step1_D8"} <= names
    assert [d.name for d in p.decoders("smollm2-D4", "mbpp_sdlm")] == ["prob_conf_D4_tau0.9", "self_speculative_D4",
                                                                      "step1_D4"]
    assert p.models["smollm2-D4"].baseline == "smollm2-ar" and p.models["smollm2-ar"].kind == "ar"


def test_paper_grid_size():
    p = plan("paper.yaml")
    assert len(p.cells()) == 424 and len(p.fidelity_files()) == 400  # 8 tasks (Table 1's eight columns)


def test_eval_args_of_a_cell():
    p = plan("test.yaml")
    args = shlex.split(p.eval_args("tiny-D4", "gsm8k_sdlm", "prob_conf_D4_tau0.9"))
    ma = dict(kv.split("=", 1) for kv in args[args.index("--model-args") + 1].split(","))
    assert ma == {"pretrained": "results/checkpoints/tiny-D4", "alg": "prob_conf", "block_size": "4",
                  "threshold": "0.9", "batch_size": "2", "max_new_tokens": "16", "dtype": "fp32", "device": "cpu",
                  "use_cache": "true"}
    assert args[args.index("--model-key") + 1] == "tiny-D4" and args[args.index("--limit") + 1] == "2"
    ref = shlex.split(p.eval_args("tiny-D4", "gsm8k_sdlm", "step1_D4"))
    assert "alg=prob_conf,block_size=4,threshold=2.0," in ref[ref.index("--model-args") + 1]
    with pytest.raises(PlanError, match="not in this configuration's grid"):
        p.eval_args("tiny-D4", "gsm8k_sdlm", "prob_conf_D4_tau0.5")


def test_retrofit_command_has_every_preset_option():
    """config/test.yaml's training preset `tiny`, every key as its flag, written out by hand from the YAML (the
    seed from `seed: 1234`, the threads from its resources)."""
    p = plan("test.yaml")
    preset = ["--seed", "1234", "--max-steps", "2", "--lr", "0.001", "--batch-size", "2", "--max-len", "256",
              "--repeat", "1", "--warmup", "0", "--logging-steps", "1", "--probe-every", "1", "--probe-prompts", "2",
              "--probe-max-new-tokens", "8", "--threads", "1"]
    assert shlex.split(p.retrofit_command("tiny", "D4")) == [
        "sdlm", "retrofit", "--base", "results/models/tiny/hf", "--data", "results/data/sft/gsm8k_tiny.distilled.jsonl",
        "--out", "results/checkpoints/tiny-D4", "--overwrite", "--block-size", "4", *preset]
    assert shlex.split(p.retrofit_command("tiny", "ar")) == [
        "sdlm", "retrofit", "--base", "results/models/tiny/hf", "--data", "results/data/sft/gsm8k_tiny.distilled.jsonl",
        "--out", "results/checkpoints/tiny-ar", "--overwrite", "--ar-baseline", *preset]


def test_the_cli_parses_what_the_pipeline_writes():
    """Every generated flag is one `sdlm retrofit` accepts, with the value RetrofitConfig gets."""
    from sdlm.cli import build_parser

    p = plan("gpu.yaml")
    for base in p.retrofit_bases:
        cmd = shlex.split(p.retrofit_command(base, "D4"))
        args = build_parser().parse_args(cmd[cmd.index("retrofit"):])
        preset = p.training_of(base)
        for f in retrofit_options():
            if f.name in preset and not f.metadata.get("path"):
                want = tuple(preset[f.name]) if isinstance(preset[f.name], list) else preset[f.name]
                assert getattr(args, f.name) == want, f.name


#: every training option of a retrofit, written out by hand (README "Retrofit": the options of `sdlm retrofit`
#: besides --base/--data/--out/--block-size/--ar-baseline/--threads/--overwrite)
TRAINING_OPTIONS = {
    "max_steps", "epochs", "lr", "batch_size", "grad_accum", "max_len", "seed", "clean_loss", "repeat", "causal_attn",
    "bf16", "warmup", "weight_decay", "lr_scheduler", "logging_steps", "save_steps", "resume_every", "limit",
    "attn_implementation", "deepspeed", "gradient_checkpointing", "freeze_embeddings", "freeze_layers", "probe_every",
    "probe_prompts", "probe_max_new_tokens", "probe_taus",
}


def test_schema_training_keys_are_the_retrofit_options():
    schema = yaml.safe_load((REPO / "pipeline" / "schemas" / "config.schema.yaml").read_text())
    keys = set(schema["$defs"]["training"]["properties"])
    pipeline_only = {"launcher", "num_processes", "resources"}
    assert keys - pipeline_only == TRAINING_OPTIONS
    assert {f.name for f in retrofit_options()} == TRAINING_OPTIONS
    assert TRAINING_OPTIONS <= set(RetrofitConfig.__dataclass_fields__)


def test_schema_algorithms_are_the_decoders():
    from sdlm.decoders import ALGS

    schema = yaml.safe_load((REPO / "pipeline" / "schemas" / "config.schema.yaml").read_text())
    assert ["ar", *schema["$defs"]["alg"]["enum"]] == list(ALGS)


def test_configuration_errors_are_one_line():
    cfg = load_yaml_strict(REPO / "config" / "test.yaml")
    cfg["models"]["tiny"]["retrofit"]["data"] = "nope"
    with pytest.raises(PlanError, match="models.tiny.retrofit.data 'nope' is not a key of sft_data"):
        Plan(cfg, REPO)
    cfg = load_yaml_strict(REPO / "config" / "test.yaml")
    cfg["models"]["tiny-D4"] = {"source": "tiny:qwen2", "released": True}
    with pytest.raises(PlanError, match="model key 'tiny-D4' is defined twice"):
        Plan(cfg, REPO)


def test_self_distillation_decodes_in_the_evaluation_dtype():
    """The distilled targets are the answers the model's AR cell gives: same dtype (the claim: bf16 on CPU)."""
    assert plan("config.yaml").distill_dtype("mbpp_code") == "bf16"
    assert plan("test.yaml").distill_dtype("gsm8k_tiny") == "fp32"
    cfg = load_yaml_strict(REPO / "config" / "test.yaml")
    del cfg["eval"]["dtype"]
    assert Plan(cfg, REPO).distill_dtype("gsm8k_tiny") is None  # the loader's default (fp32 on CPU)


def _paper(**eval_override) -> Plan:
    cfg = load_yaml_strict(REPO / "config" / "paper.yaml")
    cfg["models"]["sdlm-3b-d4"]["eval"] = eval_override
    return Plan(cfg, REPO)


def test_gpu_jobs_take_their_own_gpus_and_processes():
    """Every GPU job names its GPUs (`sdlm eval --gpus N`, `sdlm gpus --need N --` before accelerate's training
    launch) and a data-parallel cell its processes; a CPU job's command is what it was."""
    p = plan("paper.yaml")
    args = shlex.split(p.eval_args("qwen2.5-3b-instruct", "gsm8k_sdlm", "ar"))
    assert args[args.index("--gpus") + 1] == "1" and "--processes" not in args
    big = shlex.split(p.eval_args("sdlm-32b-d4", "gsm8k_sdlm", "prob_conf_D4_tau0.98"))
    assert big[big.index("--gpus") + 1] == "2" and "device=auto" in big[big.index("--model-args") + 1]
    assert p.retrofit_command("qwen2.5-3b", "D4").startswith(
        "sdlm gpus --need 8 -- accelerate launch --num_processes 8 --multi_gpu --mixed_precision bf16 -m sdlm.cli retrofit")
    dp = _paper(device="auto", launcher="accelerate", num_processes=4, resources={"gpu": 8})
    args = shlex.split(dp.eval_args("sdlm-3b-d4", "gsm8k_sdlm", "prob_conf_D4_tau0.98"))
    assert (args[args.index("--gpus") + 1], args[args.index("--processes") + 1]) == ("8", "4")
    one_each = _paper(device="cuda", launcher="accelerate", resources={"gpu": 4})  # default: one process per GPU
    assert one_each.eval_processes("sdlm-3b-d4") == 4
    cpu = plan("test.yaml")
    assert "--gpus" not in cpu.eval_args("tiny-ar", "gsm8k_sdlm", "ar") and cpu.distill_device() == "cpu"
    assert plan("gpu.yaml").distill_device() == "cuda --gpus 1"


@pytest.mark.parametrize("settings, message", [
    ({"num_processes": 2}, "num_processes 2 needs launcher: accelerate (launcher is 'sdlm')"),
    ({"launcher": "accelerate", "num_processes": 3, "resources": {"gpu": 8}}, "8 GPU(s) do not split evenly over num_processes 3"),
    ({"launcher": "accelerate", "device": "cuda", "num_processes": 2, "resources": {"gpu": 4}},
     "device cuda runs one GPU per process, but resources.gpu is 4 for num_processes 2"),
    ({"launcher": "accelerate", "device": "cuda:1", "resources": {"gpu": 2}}, "device 'cuda:1' pins every process"),
    ({"launcher": "accelerate", "device": "auto", "resources": {"gpu": 0}}, "needs resources.gpu >= 1"),
])
def test_bad_process_settings_are_one_line_errors(settings, message):
    with pytest.raises(PlanError) as err:
        _paper(**settings)
    assert message in str(err.value) and "models.sdlm-3b-d4.eval" in str(err.value) and "\n" not in str(err.value)


def test_sharded_cells():
    """eval.shards: K -> K shard folders per cell, what its merge waits for; unsharded models have none."""
    p = _paper(shards=3)
    assert p.shards("sdlm-3b-d4") == ["0of3", "1of3", "2of3"]
    # paper.yaml shards the two 32B models' cells in 4 (their eval settings), the override adds sdlm-3b-d4
    assert sorted(p.sharded_models()) == ["qwen2.5-32b-instruct", "sdlm-32b-d4", "sdlm-3b-d4"]
    assert p.shards("sdlm-32b-d4") == ["0of4", "1of4", "2of4", "3of4"]
    assert p.shard_files("sdlm-3b-d4", "gsm8k_sdlm", "step1_D4") == [
        f"results/cells/sdlm-3b-d4/gsm8k_sdlm/step1_D4/shards/{i}of3/shard.json" for i in range(3)]
    assert p.shards("sdlm-3b-d8") == []
    with pytest.raises(PlanError, match="not in this configuration's grid"):
        p.shard_files("sdlm-3b-d4", "gsm8k_sdlm", "ar")
