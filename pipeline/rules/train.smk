# Stage 3: retrofits. `sdlm retrofit` per (base model, D) and the AR-SFT baseline (`--ar-baseline`, same data,
# same steps). The checkpoint folder is complete when sdlm_training.json (written last) exists; that file is
# the rule's output. Training steps stream to the job log ("[sdlm] step i/N ... loss_pos0 ..").

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
