# Stage 4: evaluation cells. One job per (model, task, decoder) -> results/cells/<model>/<task>/<decoder>/ (or one
# job per shard and a merge, with eval.shards), written by `sdlm eval` (results.json, samples_<task>.jsonl,
# stats_<task>.jsonl, and cell.json LAST and atomically: a cell folder without cell.json is not done, and the job
# reruns). The decoder folder names are sdlm.decoders.Decoder.name: <alg>_D<D>_tau<tau> (confidence),
# self_speculative_D<D>, ar, and step1_D<D> (one-token-per-step decoding of every SDLM model: the reference of the
# fidelity files). A GPU job takes its own GPUs of the node (`--gpus N`, sdlm.devices); data parallel is
# `--processes P` (sdlm eval relaunches itself under accelerate launch): both in {params.args} (sdlm.plan).
# Evaluation requests stream to the job log (lm-eval's progress bar "generate_until (sdlm)").
# Finished generation batches are kept in the cell folder (partial_generations.rank<r>.jsonl, not a declared
# output): the same command after a stop decodes only the rest (README "Resuming a stopped run").
# Then, beside every cell.json of an SDLM model, fidelity.json: its outputs against its step1_D<D> cell.


rule eval_cell:
    input:
        model=model_ready,
    output:
        f"{RESULTS}/cells/{{model}}/{{task}}/{{decoder}}/{CELL_FILE}",
    wildcard_constraints:
        model=UNSHARDED,  # a sharded model's cells come from merge_shards
    params:
        args=eval_args,
        outdir=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/eval/{{model}}/{{task}}/{{decoder}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval/{{model}}/{{task}}/{{decoder}}.tsv"
    threads: lambda wc: eval_resources(wc, "threads")
    resources:
        mem_mb=lambda wc: eval_resources(wc, "mem_mb"),
        gpu=lambda wc: eval_resources(wc, "gpu"),
        runtime=lambda wc: eval_resources(wc, "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} sdlm eval {params.args} --output {params.outdir} > {log} 2>&1"


# Sharded cells (eval.shards: K): one job per shard over the doc ids i, i+K, ... of the task, into
# <cell>/shards/<i>of<K>/ (shard.json written last; a finished shard is never recomputed, a stopped one resumes from
# its own partial_generations files); then merge_shards writes the cell's files as one unsharded job would
# (sdlm.shards: samples byte-identical, metrics recomputed in doc order, timings summed).
rule eval_shard:
    input:
        model=model_ready,
    output:
        f"{RESULTS}/cells/{{model}}/{{task}}/{{decoder}}/{SHARDS_DIR}/{{shard}}/{SHARD_FILE}",
    wildcard_constraints:
        model=SHARDED,
    params:
        args=eval_args,
        outdir=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/eval/{{model}}/{{task}}/{{decoder}}/shard{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval/{{model}}/{{task}}/{{decoder}}/shard{{shard}}.tsv"
    threads: lambda wc: eval_resources(wc, "threads")
    resources:
        mem_mb=lambda wc: eval_resources(wc, "mem_mb"),
        gpu=lambda wc: eval_resources(wc, "gpu"),
        runtime=lambda wc: eval_resources(wc, "runtime"),
    shell:
        "OMP_NUM_THREADS={threads} sdlm eval {params.args} --output {params.outdir} --shard {wildcards.shard} > {log} 2>&1"


localrules:
    merge_shards,


rule merge_shards:
    input:
        shard_files,
    output:
        f"{RESULTS}/cells/{{model}}/{{task}}/{{decoder}}/{CELL_FILE}",
    wildcard_constraints:
        model=SHARDED,
    params:
        outdir=lambda wc, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/eval/{{model}}/{{task}}/{{decoder}}.log",
    threads: 1
    resources:
        mem_mb=PLAN.shared_resources("report")["mem_mb"],
    shell:
        "sdlm merge-shards --output {params.outdir} {input:q} > {log} 2>&1"


# fidelity.json (sdlm.fidelity.write_fidelity): n, identical_text, same_answer per task of the cell, against
# the model's step1_D<D> cell; the reference cell itself gets 1.0 (computed). Cheap: runs locally.
localrules:
    fidelity,


rule fidelity:
    input:
        unpack(fidelity_inputs),
    output:
        f"{RESULTS}/cells/{{model}}/{{task}}/{{decoder}}/{FIDELITY_FILE}",
    log:
        f"{RESULTS}/logs/fidelity/{{model}}/{{task}}/{{decoder}}.log",
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../scripts/fidelity.py"


# With `publish: true`: the cell's samples and per-request stats gzipped beside them (deterministic bytes: no
# time or name in the gzip header), the copies that a published run (results/claim/) commits.
localrules:
    publish_cell,


rule publish_cell:
    input:
        f"{RESULTS}/cells/{{model}}/{{task}}/{{decoder}}/{CELL_FILE}",
    output:
        samples=f"{RESULTS}/cells/{{model}}/{{task}}/{{decoder}}/samples_{{task}}.jsonl.gz",
        stats=f"{RESULTS}/cells/{{model}}/{{task}}/{{decoder}}/stats_{{task}}.jsonl.gz",
    run:
        from sdlm.provenance import gzip_copy

        for out in output:
            gzip_copy(out[: -len(".gz")], out)
