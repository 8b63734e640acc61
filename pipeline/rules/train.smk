# Stage 3: training. `sdlm retrofit` per (base model, variant): D<D> is the NSP retrofit with block size D, ar
# the AR-SFT baseline (`--ar-baseline`, same data, same steps). The checkpoint folder is complete when
# sdlm_training.json (written last) exists; that file is the rule's output. Training steps stream to the job
# log ("[sdlm] step i/N ... loss_pos0 .."). The command line comes from sdlm.plan.Plan.retrofit_command.
# Every `resume_every` steps (default 20) the run saves a resumable state in <checkpoint>/resume/ -- not a
# declared output, so Snakemake leaves it when it reruns a stopped job, and the same command continues from it.

rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoint_file(f"{RESULTS}/checkpoints/{{base}}-{{variant}}/{TRAINING_FILE}"),
    params:
        cmd=lambda wc: PLAN.retrofit_command(wc.base, wc.variant),
        omp=lambda wc, threads: PLAN.omp_threads(wc.base, threads),
    log:
        f"{RESULTS}/logs/retrofit/{{base}}-{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/retrofit/{{base}}-{{variant}}.tsv"
    threads: lambda wc: train_resources(wc, "threads")
    resources:
        mem_mb=lambda wc: train_resources(wc, "mem_mb"),
        gpu=lambda wc: train_resources(wc, "gpu"),
        runtime=lambda wc: train_resources(wc, "runtime"),
    shell:
        "OMP_NUM_THREADS={params.omp} {params.cmd} > {log} 2>&1"
