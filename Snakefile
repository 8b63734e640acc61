# sdlm-bench pipeline: base model -> SFT data -> retrofit (per D, + AR-SFT baseline) or released checkpoint
# -> one evaluation cell per (model, task, decoder) (+ fidelity.json vs one-token-per-step decoding for SDLM
# cells) -> aggregate -> report. See README.md "Pipeline".
#
#   snakemake --cores all                                  # the claim run (config/config.yaml), resumable
#   snakemake --cores all --configfile config/smollm2.yaml # the quick SmolLM2 smoke run
#   snakemake -n --configfile config/paper.yaml            # the paper reproduction's DAG (dry run)
#   snakemake --workflow-profile pipeline/profiles/slurm --configfile config/paper.yaml   # on SLURM
#   snakemake results/cells/<model>/<task>/<decoder>/cell.json                           # one cell
#   snakemake --report results/report.html                 # HTML report with captions and provenance

from snakemake.utils import min_version

min_version("9.0")

# The default config only when none is given on the command line (Snakemake would otherwise MERGE the two,
# so a paper run would inherit the demo's models).
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config/config.yaml")


report: "pipeline/report/workflow.rst"


include: "pipeline/rules/common.smk"
include: "pipeline/rules/models.smk"
include: "pipeline/rules/data.smk"
include: "pipeline/rules/train.smk"
include: "pipeline/rules/eval.smk"
include: "pipeline/rules/report.smk"


localrules:
    all,
    models_meta,
    aggregate,
    report,


# The cells (and their fidelity files) are listed here too: Snakemake does not recreate a missing
# intermediate file whose consumers are up to date, and a deleted (or never completed) cell.json must bring
# back its cell and the report.
rule all:
    default_target: True
    input:
        all_cells(),
        all_fidelity(),
        all_published(),
        [f"{REPORT_DIR}/{o.name}" for o in REPORT_OUTPUTS],
        f"{REPORT_DIR}/cells.csv",
