# Stage 4: evaluation cells. One job per (model, task, decoder) -> results/cells/<model>/<task>/<decoder>/,
# written by `sdlm eval` (results.json, samples_<task>.jsonl, stats_<task>.jsonl, and cell.json LAST and
# atomically: a cell folder without cell.json is not done, and the job reruns). Decoders:
#   <alg>_D<D>_tau<tau>     confidence decoding (prob_conf | entropy_conf)
#   self_speculative_D<D>   self-speculative decoding (lossless: no threshold)
#   ar                      greedy AR decoding (the baselines; SDLMs too with decoding.ar_on_sdlm)
#   step1_D<D>              one-token-per-step decoding (prob_conf, tau = decoding.reference_tau > 1) of
#                           every SDLM model: the reference of the fidelity files
# Evaluation requests stream to the job log (lm-eval's progress bar "generate_until (sdlm)").
# Then, beside every cell.json of an SDLM model, fidelity.json: its outputs against its step1_D<D> cell.


rule eval_confidence:
    input:
        model=model_ready,
    output:
        f"{RESULTS}/cells/{{model}}/{{task}}/{{alg}}_D{{D}}_tau{{tau}}/cell.json",
    params:
        args=lambda wc: eval_args(wc, wc.alg, wc.D, wc.tau),
        outdir=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/eval/{{model}}/{{task}}/{{alg}}_D{{D}}_tau{{tau}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval/{{model}}/{{task}}/{{alg}}_D{{D}}_tau{{tau}}.tsv"
    threads: _eval_rule_resources("threads")
    resources:
        mem_mb=_eval_rule_resources("mem_mb"),
        gpu=_eval_rule_resources("gpu"),
        runtime=_eval_rule_resources("runtime"),
    shell:
        _EVAL_SHELL


rule eval_self_speculative:
    input:
        model=model_ready,
    output:
        f"{RESULTS}/cells/{{model}}/{{task}}/self_speculative_D{{D}}/cell.json",
    params:
        args=lambda wc: eval_args(wc, "self_speculative", wc.D),
        outdir=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/eval/{{model}}/{{task}}/self_speculative_D{{D}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval/{{model}}/{{task}}/self_speculative_D{{D}}.tsv"
    threads: _eval_rule_resources("threads")
    resources:
        mem_mb=_eval_rule_resources("mem_mb"),
        gpu=_eval_rule_resources("gpu"),
        runtime=_eval_rule_resources("runtime"),
    shell:
        _EVAL_SHELL


rule eval_ar:
    input:
        model=model_ready,
    output:
        f"{RESULTS}/cells/{{model}}/{{task}}/ar/cell.json",
    params:
        args=lambda wc: eval_args(wc, "ar"),
        outdir=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/eval/{{model}}/{{task}}/ar.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval/{{model}}/{{task}}/ar.tsv"
    threads: _eval_rule_resources("threads")
    resources:
        mem_mb=_eval_rule_resources("mem_mb"),
        gpu=_eval_rule_resources("gpu"),
        runtime=_eval_rule_resources("runtime"),
    shell:
        _EVAL_SHELL


rule eval_reference:
    input:
        model=model_ready,
    output:
        f"{RESULTS}/cells/{{model}}/{{task}}/step1_D{{D}}/cell.json",
    params:
        args=reference_args,
        outdir=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/eval/{{model}}/{{task}}/step1_D{{D}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval/{{model}}/{{task}}/step1_D{{D}}.tsv"
    threads: _eval_rule_resources("threads")
    resources:
        mem_mb=_eval_rule_resources("mem_mb"),
        gpu=_eval_rule_resources("gpu"),
        runtime=_eval_rule_resources("runtime"),
    shell:
        _EVAL_SHELL


# fidelity.json (sdlm.fidelity.write_fidelity): n, identical_text, same_answer per task of the cell, against
# the model's step1_D<D> cell; the reference cell itself gets 1.0 (computed). Cheap: runs locally.
localrules:
    fidelity,


rule fidelity:
    input:
        unpack(fidelity_inputs),
    output:
        f"{RESULTS}/cells/{{model}}/{{task}}/{{decoder}}/fidelity.json",
    log:
        f"{RESULTS}/logs/fidelity/{{model}}/{{task}}/{{decoder}}.log",
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/fidelity.py"
