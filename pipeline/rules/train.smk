# Stage 3: retrofits. `sdlm retrofit` per (base model, D) and the AR-SFT baseline (`--ar-baseline`, same data,
# same steps). The checkpoint folder is complete when sdlm_training.json (written last) exists; that file is
# the rule's output. Training steps stream to the job log ("[sdlm] step i/N ... loss_pos0 ..").

_TRAIN_FLAGS = {  # config key -> `sdlm retrofit` option
    "max_steps": "--max-steps", "epochs": "--epochs", "lr": "--lr", "batch_size": "--batch-size",
    "grad_accum": "--grad-accum", "max_len": "--max-len", "repeat": "--repeat", "seed": "--seed",
    "warmup": "--warmup", "weight_decay": "--weight-decay", "lr_scheduler": "--lr-scheduler",
    "logging_steps": "--logging-steps", "save_steps": "--save-steps", "limit": "--limit",
    "attn_implementation": "--attn-implementation",
}
_TRAIN_SWITCHES = {"clean_loss": "--clean-loss", "causal_attn": "--causal-attn", "bf16": "--bf16",
                   "gradient_checkpointing": "--gradient-checkpointing"}


def train_resources(base):
    return resources_of(training_of(base).get("resources"))


def retrofit_command(wildcards, ar=False):
    """The whole `sdlm retrofit` command line of one job (launcher included), shell-quoted."""
    base = wildcards.base
    t = training_of(base)
    res = train_resources(base)
    if t.get("launcher", "sdlm") == "accelerate":
        n = t.get("num_processes") or max(res["gpu"], 1)
        cmd = ["accelerate", "launch", "--num_processes", str(n)]
        if n > 1:
            cmd.append("--multi_gpu")
        if t.get("bf16"):
            cmd += ["--mixed_precision", "bf16"]
        cmd += ["-m", "sdlm.cli"]
    else:
        cmd = ["sdlm"]
    out = f"{RESULTS}/checkpoints/{base}-ar" if ar else f"{RESULTS}/checkpoints/{base}-D{wildcards.D}"
    cmd += ["retrofit", "--base", source_for_loading(base), "--data",
            f"{RESULTS}/data/sft/{config['models'][base]['retrofit']['data']}.jsonl", "--out", out, "--overwrite"]
    if ar:
        cmd.append("--ar-baseline")
    else:
        cmd += ["--block-size", str(wildcards.D)]
    cmd += ["--seed", str(t.get("seed", config["seed"]))] if "seed" not in t else []
    for k, flag in _TRAIN_FLAGS.items():
        if t.get(k) is not None:
            cmd += [flag, str(t[k])]
    cmd += [flag for k, flag in _TRAIN_SWITCHES.items() if t.get(k)]
    if t.get("deepspeed"):
        cmd += ["--deepspeed", str(repo_path(t["deepspeed"]))]
    if t.get("launcher", "sdlm") != "accelerate":
        cmd += ["--threads", str(res["threads"])]
    return shlex.join(cmd)


def omp_threads(wildcards, threads):
    """Threads per process: the job's threads shared among accelerate's processes."""
    t = training_of(wildcards.base)
    n = (t.get("num_processes") or max(train_resources(wildcards.base)["gpu"], 1)) if t.get("launcher") == "accelerate" else 1
    return max(1, threads // n)


def _ckpt(path):
    return protected(path) if config.get("protect_checkpoints") else path


def _train_inputs(wildcards):
    return {
        "base": f"{RESULTS}/models/{wildcards.base}/source.json",
        "data": f"{RESULTS}/data/sft/{config['models'][wildcards.base]['retrofit']['data']}.jsonl",
    }


rule retrofit:
    input:
        unpack(_train_inputs),
    output:
        _ckpt(f"{RESULTS}/checkpoints/{{base}}-D{{D}}/sdlm_training.json"),
    params:
        cmd=lambda wc: retrofit_command(wc),
        omp=omp_threads,
    log:
        f"{RESULTS}/logs/retrofit/{{base}}-D{{D}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/retrofit/{{base}}-D{{D}}.tsv"
    threads: lambda wc: train_resources(wc.base)["threads"]
    resources:
        mem_mb=lambda wc: train_resources(wc.base)["mem_mb"],
        gpu=lambda wc: train_resources(wc.base)["gpu"],
        runtime=lambda wc: train_resources(wc.base)["runtime"],
    shell:
        "OMP_NUM_THREADS={params.omp} {params.cmd} > {log} 2>&1"


rule ar_sft:
    input:
        unpack(_train_inputs),
    output:
        _ckpt(f"{RESULTS}/checkpoints/{{base}}-ar/sdlm_training.json"),
    params:
        cmd=lambda wc: retrofit_command(wc, ar=True),
        omp=omp_threads,
    log:
        f"{RESULTS}/logs/retrofit/{{base}}-ar.log",
    benchmark:
        f"{RESULTS}/benchmarks/retrofit/{{base}}-ar.tsv"
    threads: lambda wc: train_resources(wc.base)["threads"]
    resources:
        mem_mb=lambda wc: train_resources(wc.base)["mem_mb"],
        gpu=lambda wc: train_resources(wc.base)["gpu"],
        runtime=lambda wc: train_resources(wc.base)["runtime"],
    shell:
        "OMP_NUM_THREADS={params.omp} {params.cmd} > {log} 2>&1"
