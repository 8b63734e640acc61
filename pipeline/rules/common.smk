# Wiring: the validated configuration, the plan (sdlm.plan: model variants, the grid, the job commands; a tested
# module), wildcard constraints and thin input functions. Runs while the DAG is built: no model, data or network.

import functools
import json
import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml", set_default=True)

REPO = Path(workflow.basedir).resolve()  # the repository (where the Snakefile is)

# What the schema cannot say (duplicate YAML keys, NaN thresholds, unknown tasks, devices, model sources,
# code tasks without a sandbox), checked now so a bad value stops the run before any job (sdlm.config_checks).
from sdlm.config_checks import ConfigError, check_config

try:
    check_config(config, repo=REPO,
                 files=workflow.overwrite_configfiles or [REPO / "config" / "config.yaml"])
except ConfigError as _e:
    raise WorkflowError(str(_e)) from None
from sdlm.cells import CELL_FILE, FIDELITY_FILE, SHARD_FILE, SHARDS_DIR, TRAINING_FILE
from sdlm.decoders import DECODER_PATTERN
from sdlm.plan import Plan, PlanError

try:
    PLAN = Plan(config, REPO)
except PlanError as _e:
    raise WorkflowError(str(_e)) from None
RESULTS = PLAN.results  # relative to the working directory (the repository)
MODELS = PLAN.models
TASKS = PLAN.tasks


# ---------------------------------------------------------------------------------------------- environment
# Jobs inherit these (on SLURM every job re-reads this file, so they hold there too).
if config.get("data_dir"):
    os.environ["SDLM_DATA_DIR"] = str(PLAN.repo_path(config["data_dir"]))
if config.get("model_cache"):
    os.environ["SDLM_MODEL_DIR"] = str(PLAN.repo_path(config["model_cache"]))
if config.get("offline"):
    for _v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[_v] = "1"
os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")
# the node's GPU pool that GPU jobs draw their own devices from (sdlm.devices; a SLURM job uses its allocation's)
from sdlm.devices import GPU_IDS_ENV, JOBS_PER_GPU_ENV

if (config.get("gpus") or {}).get("ids"):
    os.environ[GPU_IDS_ENV] = ",".join(str(i) for i in config["gpus"]["ids"])
if int((config.get("gpus") or {}).get("jobs_per_gpu") or 1) > 1:
    os.environ[JOBS_PER_GPU_ENV] = str(config["gpus"]["jobs_per_gpu"])
os.environ["PYTHONUNBUFFERED"] = "1"  # progress lines reach the job logs as they happen
# `sdlm` jobs stop when this Snakemake process is gone (sdlm.watchdog), so a SIGKILLed run leaves no job finishing
# behind its back and `snakemake --unlock` + the same command resumes it.
from sdlm.watchdog import WORKFLOW_PID_ENV, process_start_time

os.environ[WORKFLOW_PID_ENV] = f"{os.getpid()}:{process_start_time(os.getpid())}"


# ---------------------------------------------------------------------------------------------- wildcards
def _alternation(names):
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"


wildcard_constraints:
    model=_alternation(MODELS),
    name=_alternation(config["models"]),
    base=_alternation(PLAN.retrofit_bases),
    variant=r"D[1-9][0-9]*|ar",
    dataset=_alternation(config.get("sft_data") or {}),
    task=_alternation(TASKS),
    decoder=DECODER_PATTERN,
    shard=r"[0-9]+of[0-9]+",


# a sharded model's cells are merged from shard jobs (eval_shard + merge_shards), the others made by eval_cell
SHARDED = _alternation(PLAN.sharded_models())
UNSHARDED = _alternation([m for m in MODELS if m not in PLAN.sharded_models()])


# ---------------------------------------------------------------------------------------------- input functions
def _plan(fn):
    """A plan method as a Snakemake input/params function: a plan error is a one-line WorkflowError. (wraps:
    Snakemake reads the function's signature to decide which arguments to pass.)"""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PlanError as e:
            raise WorkflowError(str(e)) from None
    return wrapped


def all_cells():
    return PLAN.cells()


def all_fidelity():
    return PLAN.fidelity_files()


def all_published():
    return PLAN.published_files()


@_plan
def model_ready(wildcards):
    return PLAN.model_ready(wildcards.model)


@_plan
def eval_args(wildcards):
    return PLAN.eval_args(wildcards.model, wildcards.task, wildcards.decoder)


@_plan
def shard_files(wildcards):
    return PLAN.shard_files(wildcards.model, wildcards.task, wildcards.decoder)


def eval_resources(wildcards, key):
    return PLAN.eval_settings(wildcards.model)["resources"][key]


@_plan
def fidelity_inputs(wildcards):
    """A cell and its reference cell (their cell.json: the completion markers; the samples lie beside them)."""
    model, task = wildcards.model, wildcards.task
    if not PLAN.has_fidelity(model):
        raise WorkflowError(f"{model} is not an SDLM model (or decoding.reference_tau is null): its cells have no "
                            "fidelity.json")
    PLAN.decoder_of_cell(model, task, wildcards.decoder)
    return {"cell": f"{PLAN.cell_dir(model, task, wildcards.decoder)}/{CELL_FILE}",
            "reference": f"{PLAN.cell_dir(model, task, PLAN.reference_decoder(model))}/{CELL_FILE}"}


def train_inputs(wildcards):
    return {
        "base": f"{RESULTS}/models/{wildcards.base}/source.json",
        "data": PLAN.sft_file(config["models"][wildcards.base]["retrofit"]["data"]),
    }


def train_resources(wildcards, key):
    return PLAN.train_resources(wildcards.base)[key]


def checkpoint_file(path):
    return protected(path) if config.get("protect_checkpoints") else path


@_plan
def distill_settings(dataset):
    return PLAN.distill_settings(dataset)


# ---------------------------------------------------------------------------------------------- report
REPORT_DIR = f"{RESULTS}/report"
# every file of the report folder, with its caption (sdlm.report.outputs: render.py writes exactly these)
from sdlm.report.outputs import AGGREGATE_OUTPUTS, REPORT_OUTPUTS


def report_file(o):
    """An output of the report folder, marked for `snakemake --report` when it has a caption."""
    path = f"{REPORT_DIR}/{o.name}"
    if o.caption is None:
        return path
    return report(path, caption=f"../report/{o.caption}", category=o.category, subcategory=o.subcategory)
