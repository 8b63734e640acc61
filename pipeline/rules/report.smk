# Stage 5: aggregate and report. models.json (model metadata from the config) + every cell.json of the grid
# (+ the fidelity.json beside each SDLM cell) -> results/report/cells.csv (one row per cell and task,
# provenance columns included) and batches.csv (per decoded batch) -> tables (Markdown, LaTeX, HTML) and
# figures (the TPF-vs-steps one from the checkpoints' sdlm_training.json), all marked for `snakemake --report`.


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
        cells=report(f"{REPORT_DIR}/cells.csv", caption="../report/cells.rst", category="Data", subcategory="cells"),
        batches=f"{REPORT_DIR}/batches.csv",
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
        cells=f"{REPORT_DIR}/cells.csv",
        batches=f"{REPORT_DIR}/batches.csv",
        models=f"{REPORT_DIR}/models.json",
        paper=[p for p in [PLAN.paper_numbers_path()] if p],
        training=list(PLAN.training_summaries().values()),  # TPF probe curves (fig_tpf_vs_steps.png)
    output:
        **{name.replace(".", "_"): report(f"{REPORT_DIR}/{name}", caption=cap, category=cat, subcategory=sub)
           for name, cap, cat, sub in REPORT_OUTPUTS},
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
