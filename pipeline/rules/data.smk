# Stage 2: SFT data for retrofits. One job per sft_data entry: its components (GSM8K train from data_dir
# rewritten as chat by sdlm.sft_data, chat JSONL files, or hub datasets mapped to chat) concatenated into
# results/data/sft/<name>.jsonl (one {"messages": [...]} per line, written atomically).


rule prepare_sft:
    input:
        _sft_local_inputs,
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
        mem_mb=resources_of((config.get("resources") or {}).get("prepare"))["mem_mb"],
        runtime=resources_of((config.get("resources") or {}).get("prepare"))["runtime"],
    script:
        "../scripts/prepare_sft.py"
