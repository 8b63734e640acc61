# Stage 2: SFT data for retrofits. With `self_distill: {model: <key>}` the retrofit trains on
# results/data/sft/<name>.distilled.jsonl instead: the same prompts answered by that model's own greedy
# decoding (`sdlm distill`; lower-entropy targets are easier to predict in parallel, README "Retrofit options").
# `sdlm distill` appends every finished batch to <output>.partial (deliberately not a declared output, which
# Snakemake would delete before a rerun): the same command after a stop continues from it (README "Resuming").
# One job per sft_data entry: its components (GSM8K train from data_dir
# rewritten as chat by sdlm.sft_data, chat JSONL files, or hub datasets mapped to chat) concatenated into
# results/data/sft/<name>.jsonl (one {"messages": [...]} per line, written atomically).


rule prepare_sft:
    input:
        lambda wc: PLAN.sft_local_inputs(wc.dataset),
    output:
        f"{RESULTS}/data/sft/{{dataset}}.jsonl",
    params:
        # canonical JSON: params are compared as text between runs, so key order must not matter
        components=lambda wc: json.dumps(config["sft_data"][wc.dataset]["components"], sort_keys=True),
        repo=str(REPO),
    log:
        f"{RESULTS}/logs/prepare_sft/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_sft/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=PLAN.shared_resources("prepare")["mem_mb"],
        runtime=PLAN.shared_resources("prepare")["runtime"],
    script:
        "../scripts/prepare_sft.py"


rule distill_sft:
    input:
        data=f"{RESULTS}/data/sft/{{dataset}}.jsonl",
        model=lambda wc: f"{RESULTS}/models/{distill_settings(wc.dataset)['model']}/source.json",
    output:
        f"{RESULTS}/data/sft/{{dataset}}.distilled.jsonl",
    params:
        base=lambda wc: PLAN.source_for_loading(distill_settings(wc.dataset)["model"]),
        max_new=lambda wc: distill_settings(wc.dataset).get("max_new_tokens", 320),
        batch=lambda wc: distill_settings(wc.dataset).get("batch_size", 16),
        drop=lambda wc: "--drop-unfinished" if distill_settings(wc.dataset).get("drop_unfinished") else "",
        device=lambda wc: PLAN.distill_device(),  # eval.device (+ --gpus N: its own GPUs of the node's pool)
        dtype=lambda wc: f"--dtype {PLAN.distill_dtype(wc.dataset)}" if PLAN.distill_dtype(wc.dataset) else "",
    log:
        f"{RESULTS}/logs/distill_sft/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/distill_sft/{{dataset}}.tsv"
    threads: PLAN.distill_resources()["threads"]
    resources:
        mem_mb=PLAN.distill_resources()["mem_mb"],
        gpu=PLAN.distill_resources()["gpu"],
        runtime=PLAN.distill_resources()["runtime"],
    shell:
        "OMP_NUM_THREADS={threads} sdlm distill --base {params.base:q} --data {input.data:q} --out {output:q} "
        "--max-new-tokens {params.max_new} --batch-size {params.batch} --device {params.device} {params.dtype} "
        "--threads {threads} {params.drop} > {log} 2>&1"
