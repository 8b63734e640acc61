# Stage 5: aggregate and report. models.json (model metadata from the config) + every cell.json of the grid
# -> results/report/cells.csv (one row per cell and task, provenance columns included) and batches.csv
# (per decoded batch) -> tables (Markdown, LaTeX, HTML) and figures, all marked for `snakemake --report`.

REPORT_DIR = f"{RESULTS}/report"
# (file, caption, category, subcategory); must equal sdlm.report.REPORT_FILES (tests check it)
REPORT_OUTPUTS = [
    (f"{t}.{ext}", f"../report/{t}.rst", "Tables", {"table1": "Table 1 (accuracy, TPF)", "table3": "Table 3 (self-speculative)",
                                                    "speed": "Speed"}[t])
    for t in ("table1", "table3", "speed") for ext in ("md", "tex", "html")
] + [
    ("fig_tau_ablation.png", "../report/fig_tau_ablation.rst", "Figures", "tau ablation"),
    ("fig_throughput.png", "../report/fig_throughput.rst", "Figures", "throughput"),
    ("provenance.md", "../report/provenance.rst", "Provenance", "runs"),
]


def paper_numbers_path():
    p = (config.get("report") or {}).get("paper_numbers")
    return str(repo_path(p)) if p else None


def models_meta():
    """What the report needs to know about each model key (labels, D, paper key, speed-up baseline)."""
    return {m: {"label": v["label"], "kind": v["kind"], "origin": v["origin"], "base": v["base"],
                "block_size": v["block_size"], "paper_model": v["paper_model"], "baseline": v["baseline"],
                "source": config["models"][v["base"]]["source"]} for m, v in MODELS.items()}


rule models_meta:
    output:
        f"{REPORT_DIR}/models.json",
    params:
        meta=json.dumps(models_meta(), sort_keys=True),  # canonical text: key order never triggers a rerun
    log:
        f"{RESULTS}/logs/report/models_meta.log",
    script:
        "../scripts/models_meta.py"


rule aggregate:
    input:
        cells=all_cells(),
    output:
        cells=report(f"{REPORT_DIR}/cells.csv", caption="../report/cells.rst", category="Data", subcategory="cells"),
        batches=f"{REPORT_DIR}/batches.csv",
    log:
        f"{RESULTS}/logs/report/aggregate.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/aggregate.tsv"
    threads: 1
    resources:
        mem_mb=resources_of((config.get("resources") or {}).get("report"))["mem_mb"],
    script:
        "../scripts/aggregate.py"


rule report:
    input:
        cells=f"{REPORT_DIR}/cells.csv",
        batches=f"{REPORT_DIR}/batches.csv",
        models=f"{REPORT_DIR}/models.json",
        paper=[p for p in [paper_numbers_path()] if p],
    output:
        **{name.replace(".", "_"): report(f"{REPORT_DIR}/{name}", caption=cap, category=cat, subcategory=sub)
           for name, cap, cat, sub in REPORT_OUTPUTS},
    params:
        out=REPORT_DIR,
        table3_tau=(config.get("report") or {}).get("table3_tau", 0.98),
    log:
        f"{RESULTS}/logs/report/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/report.tsv"
    threads: 1
    resources:
        mem_mb=resources_of((config.get("resources") or {}).get("report"))["mem_mb"],
    script:
        "../scripts/report.py"
