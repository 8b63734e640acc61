# Stage 5: aggregate and report. Every cell.json of the grid (+ the fidelity.json beside each SDLM cell) ->
# results/report/cells.csv (one row per cell and task, provenance columns included), batches.csv (per decoded
# batch), problems.csv (every problem's score: the paired comparison with the AR baseline) and load.csv (the
# machine's load while each cell ran) -- the only rule that opens the cell folders. Then those files +
# models.json (model metadata from the config) + the checkpoints' sdlm_training.json -> tables (Markdown, LaTeX,
# HTML) and figures; the report rule declares every file it reads. File names and captions: sdlm.report.outputs.


rule models_meta:
    output:
        f"{REPORT_DIR}/models.json",
    params:
        meta=PLAN.models_meta_json(),
    log:
        f"{RESULTS}/logs/report/models_meta.log",
    script:
        "../scripts/models_meta.py"


rule aggregate:
    input:
        cells=all_cells(),
        fidelity=all_fidelity(),  # read beside each cell.json by sdlm.report.aggregate
    output:
        **{o.key: report_file(o) for o in AGGREGATE_OUTPUTS},
    log:
        f"{RESULTS}/logs/report/aggregate.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/aggregate.tsv"
    threads: 1
    resources:
        mem_mb=PLAN.shared_resources("report")["mem_mb"],
    script:
        "../scripts/aggregate.py"


rule report:
    input:
        **{o.key: f"{REPORT_DIR}/{o.name}" for o in AGGREGATE_OUTPUTS},  # everything it reads of the cells
        models=f"{REPORT_DIR}/models.json",
        paper=[p for p in [PLAN.paper_numbers_path()] if p],
        training=list(PLAN.training_summaries().values()),  # TPF probe curves (fig_tpf_vs_steps.png)
    output:
        **{o.key: report_file(o) for o in REPORT_OUTPUTS},
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
        table3_tau=(config.get("report") or {}).get("table3_tau", 0.98),
        training=json.dumps(PLAN.training_summaries(), sort_keys=True),
    log:
        f"{RESULTS}/logs/report/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/report.tsv"
    threads: 1
    resources:
        mem_mb=PLAN.shared_resources("report")["mem_mb"],
    script:
        "../scripts/report.py"
