"""``sdlm lm-eval ...``: lm-evaluation-harness's own command line, with our model and our tasks included.

Every lm-eval argument works unchanged (``run``, ``ls tasks``, ``validate``, ``--model_args``, ``--output_path``,
``--log_samples``, ``--apply_chat_template`` ...; a command without ``run`` is run as lm-eval itself does). What
this adds, before lm-eval starts:

* the ``sdlm`` model is registered (importing :mod:`sdlm.adapter`), and ``--include_path`` points at our
  ``tasks/`` folder unless given;
* ``--tasks`` names are checked first: ours in milliseconds, a near miss of ours refused at once, other names
  against lm-eval's (cached) index -- an unknown task is a one-line error, not a traceback 30 s later;
* our tasks' data must be reachable: with no data folder (``SDLM_DATA_DIR`` or ``--metadata
  '{"sdlm_data_dir": ...}'``) and no hub (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``), it fails at once;
* ``--threads N`` (ours; removed before lm-eval sees the arguments): torch threads, default the cores this process
  may use;
* ``--use_cache PATH``: lm-eval's request cache keys an answer by the request alone, so for the ``sdlm`` model
  every decoder (checkpoint, alg, D, tau, budgets, dtype...) gets a cache file of its own
  (:func:`sdlm.adapter.decoder_keyed_caching_lm`), and ``decode_totals.requests_from_cache`` in the results says
  how many answers came from it;
* our code tasks execute model-written programs in our sandbox (bubblewrap, :mod:`sdlm.scoring.sandbox`), which
  must be usable; when every requested code task is ours, ``--confirm_run_unsafe_code`` is added (stock code
  tasks run code unsandboxed: those still need the flag from you).
"""

from __future__ import annotations

import json
import os
import sys

__all__ = ["main"]

_SUBCOMMANDS = ("run", "ls", "validate")
_THREADS: list[int | None] = [None]


def _value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _has(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def prepare(argv: list[str]) -> list[str]:
    """The lm-eval argument list to run (checks done); ``ValueError`` (one line) for bad input."""
    from sdlm.tasks import check_task_names, code_tasks, is_ours, tasks_path

    args = list(argv)
    threads = _value(args, "--threads")  # ours, not lm-eval's: torch threads (default: the usable cores)
    if threads is not None:
        i = next(i for i, a in enumerate(args) if a == "--threads" or a.startswith("--threads="))
        del args[i:i + (1 if "=" in args[i] else 2)]
    _THREADS[0] = int(threads) if threads is not None else None
    if args and args[0] not in _SUBCOMMANDS and not args[0].startswith("-h"):
        args.insert(0, "run")  # lm-eval's legacy form, made explicit
    folder = tasks_path()
    if args and args[0] in _SUBCOMMANDS and not _has(args, "--include_path"):
        args += ["--include_path", str(folder)]
    if not args or args[0] != "run":
        return args
    tasks = [t.strip() for t in (_value(args, "--tasks") or "").split(",") if t.strip()]
    check_task_names(tasks)
    requested_ours = [t for t in tasks if is_ours(t)]
    if requested_ours:
        metadata = _value(args, "--metadata")
        data_dir = (json.loads(metadata).get("sdlm_data_dir") if metadata else None) or os.environ.get("SDLM_DATA_DIR")
        offline = any(os.environ.get(v, "").strip() not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        if not data_dir and offline:
            raise ValueError("our tasks read their data from SDLM_DATA_DIR (or --metadata '{\"sdlm_data_dir\": ...}'), "
                             "which is not set, and the Hugging Face hub is off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)")
    ours_code = [t for t in requested_ours if t in code_tasks()]
    if ours_code:
        from sdlm.scoring.sandbox import isolation

        isolation()  # no usable sandbox: a one-line error now, not after decoding
        stock = [t for t in tasks if not is_ours(t)]
        if not stock and not _has(args, "--confirm_run_unsafe_code"):
            args.append("--confirm_run_unsafe_code")
    return args


def main(argv: list[str]) -> int:
    """Run lm-eval's CLI on ``argv`` (see the module docstring); one-line errors exit with status 2."""
    try:
        args = prepare(argv)
    except (ValueError, OSError) as e:
        if os.environ.get("SDLM_DEBUG"):
            raise
        print(f"sdlm lm-eval: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    from sdlm.threads import set_threads

    set_threads(_THREADS[0])
    import lm_eval.api.model

    import sdlm.adapter  # registers the "sdlm" model
    from lm_eval.__main__ import cli_evaluate

    original = lm_eval.api.model.CachingLM
    if _has(args, "--use_cache"):  # one cache file per decoder (lm-eval keys requests without the model's arguments)
        lm_eval.api.model.CachingLM = sdlm.adapter.decoder_keyed_caching_lm()

    saved = sys.argv
    sys.argv = ["lm-eval", *args]
    try:
        cli_evaluate()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    finally:
        sys.argv = saved
        lm_eval.api.model.CachingLM = original
    return 0
