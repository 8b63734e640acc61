"""Where a job runs: its own GPUs of the node (a slot pool of lock files) and its processes. Stdlib only.

Why: Snakemake's ``--resources gpu=8`` counts GPUs but hands out no ids, so every job it starts at once would
run on GPU 0. A GPU job takes N free GPUs of the node and runs on them alone: ``sdlm eval --gpus N`` and
``sdlm distill --gpus N`` (:func:`take_gpus`, in the process itself), ``sdlm gpus --need N -- <command>``
(:func:`run_with_gpus`: for ``accelerate launch`` of a training job, whose processes must start on them) --
``CUDA_VISIBLE_DEVICES`` is set to the ids taken, before CUDA starts.

The locks are ``flock`` locks on one file per GPU slot, so the kernel releases them when the holder ends in any way
-- success, failure, SIGKILL, a crash -- and a stale lock cannot exist. A job that finds too few free GPUs
waits (one log line, then a poll a second), so a run started without ``--resources gpu=N``, or a second
Snakemake on the same node, queues for devices instead of sharing them. ``jobs_per_gpu`` > 1 (config
``gpus.jobs_per_gpu``) gives each GPU that many slots; a job takes at most one slot per GPU, and the slot-0
files of all GPUs are tried before any slot 1, so jobs spread over the GPUs before they double up.

Where the locks live (:func:`lock_dir`): ``$SDLM_GPU_LOCK_DIR``, else ``<tmp>/sdlm-gpus-<uid>`` -- node-local, so
every Snakemake run of this user on this node draws from one pool -- in a sub-folder ``node``, or
``slurm-<job id>`` inside a SLURM allocation: a SLURM job's devices are its own (with device cgroups every job
sees its GPUs as 0..N-1), so jobs of different allocations never wait for each other, while the jobs of one
Snakemake run inside one allocation (``salloc``, then ``snakemake --cores all``) share its pool.

Which GPUs (:func:`pool`): inside a SLURM allocation the ``CUDA_VISIBLE_DEVICES`` SLURM set; else ``$SDLM_GPU_IDS``
(config ``gpus.ids``, exported by the pipeline), else ``CUDA_VISIBLE_DEVICES``, else every GPU ``nvidia-smi -L``
lists. The locks are held by the process that took them (and, across ``exec``, by the command it became), not by
its children: a launcher SIGKILLed alone frees the ids while its workers may still run (they end with
Snakemake, :mod:`sdlm.watchdog`).

Data parallel evaluation (:func:`data_parallel_command`): ``sdlm eval --processes P`` execs ``accelerate launch
--num_processes P --multi_gpu -m sdlm.cli eval ...`` with the same arguments, the job's threads shared among the
processes (on CPU with ``ACCELERATE_USE_CPU=1``: gloo processes).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DeviceError", "GPU_IDS_ENV", "JOBS_PER_GPU_ENV", "LOCK_DIR_ENV", "Lease", "acquire", "data_parallel_command",
           "jobs_per_gpu", "lock_dir", "parse_ids", "pool", "process_gpu_group", "run_with_gpus", "take_gpus", "try_acquire", "visible_gpus"]

LOCK_DIR_ENV = "SDLM_GPU_LOCK_DIR"
GPU_IDS_ENV = "SDLM_GPU_IDS"  # the node's pool (config gpus.ids)
JOBS_PER_GPU_ENV = "SDLM_JOBS_PER_GPU"  # config gpus.jobs_per_gpu
_HELD: list["Lease"] = []  # GPUs this process took (take_gpus): held until it ends


class DeviceError(ValueError):
    """A job that cannot get its GPUs (more asked for than exist, no GPU visible, locks unsupported); one line."""


def parse_ids(text: str) -> list[str]:
    """``"0,1,2"`` (or GPU / MIG UUIDs, as ``CUDA_VISIBLE_DEVICES`` may hold) -> ids; an id twice is an error."""
    ids = [x.strip() for x in text.split(",") if x.strip()]
    dup = sorted({x for x in ids if ids.count(x) > 1})
    if dup:
        raise DeviceError(f"GPU id(s) {', '.join(dup)} given twice in {text!r}")
    bad = [x for x in ids if not re.fullmatch(r"[A-Za-z0-9._:-]+", x)]
    if bad:
        raise DeviceError(f"GPU id {bad[0]!r} in {text!r} is not a device index or UUID")
    return ids


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this process may hand out: ``CUDA_VISIBLE_DEVICES`` when set (SLURM sets it to the job's own),
    else every GPU ``nvidia-smi -L`` lists (none when it is missing). No torch: a waiting job stays light."""
    env = os.environ if env is None else env
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return [] if cvd.strip() in ("", "-1", "NoDevFiles") else parse_ids(cvd)
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i in range(sum(1 for line in out.splitlines() if line.startswith("GPU ")))]


def pool(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPU ids a job of this node may take (see the module doc for the order of precedence)."""
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID") and env.get("CUDA_VISIBLE_DEVICES") is not None:
        return visible_gpus(env)  # SLURM's grant to this allocation; gpus.ids names another machine's numbering
    if env.get(GPU_IDS_ENV):
        return parse_ids(env[GPU_IDS_ENV])
    return visible_gpus(env)


def jobs_per_gpu(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    text = env.get(JOBS_PER_GPU_ENV) or "1"
    if not text.isdigit() or int(text) < 1:
        raise DeviceError(f"{JOBS_PER_GPU_ENV}={text!r} must be an integer >= 1")
    return int(text)


def lock_dir(env: Mapping[str, str] | None = None) -> Path:
    """The folder of this node's (or this SLURM allocation's) slot files; see the module doc."""
    env = os.environ if env is None else env
    base = Path(env.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"sdlm-gpus-{os.getuid()}")
    job = env.get("SLURM_JOB_ID")
    return base / (f"slurm-{job}" if job else "node")


@dataclass
class Lease:
    """GPUs held by this process: ``ids`` (in the order of the pool) and the locked slot files' descriptors."""

    ids: list[str]
    fds: list[int] = field(repr=False)

    def keep_across_exec(self) -> None:
        """Let an ``exec``'d command inherit the locked descriptors, and with them the locks."""
        for fd in self.fds:
            os.set_inheritable(fd, True)

    def release(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


def _safe(gpu: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", gpu)


def _lock(fd: int, path: Path, *, block: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise DeviceError(f"file locks are not supported in {str(path.parent)!r} ({e.strerror}); set "
                              f"{LOCK_DIR_ENV} to a local folder such as /tmp/sdlm-gpus") from None
        raise


def try_acquire(need: int, ids: Sequence[str], *, jobs_per_gpu: int = 1, folder: str | os.PathLike) -> Lease | None:
    """``need`` GPUs of ``ids`` with a free slot each, all or none (None: not enough free now)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alloc = folder / "alloc.lock"
    guard = os.open(alloc, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _lock(guard, alloc, block=True)  # one scan at a time: two jobs never each take half of one free set
        taken: dict[str, int] = {}
        for slot in range(jobs_per_gpu):  # slot 0 of every GPU first: spread before doubling up
            for gpu in ids:
                if len(taken) == need:
                    break
                if gpu in taken:
                    continue
                path = folder / f"gpu-{_safe(gpu)}.slot{slot}.lock"
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                if _lock(fd, path, block=False):
                    taken[gpu] = fd
                    os.ftruncate(fd, 0)  # who holds it, for a person reading the folder
                    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n".encode())
                else:
                    os.close(fd)
        if len(taken) < need:
            for fd in taken.values():
                os.close(fd)
            return None
        order = [g for g in ids if g in taken]
        return Lease(order, [taken[g] for g in order])
    finally:
        os.close(guard)


def acquire(need: int, ids: Sequence[str] | None = None, *, jobs_per_gpu: int = 1,
            folder: str | os.PathLike | None = None, poll_s: float = 1.0, timeout_s: float | None = None,
            log: Callable[[str], None] | None = None) -> Lease:
    """Block until ``need`` GPUs of ``ids`` (default: :func:`pool`) are free; ``DeviceError`` when they can never
    be."""
    ids = list(pool() if ids is None else ids)
    if need < 1:
        raise DeviceError(f"a job needs at least 1 GPU to take, got {need}")
    if jobs_per_gpu < 1:
        raise DeviceError(f"jobs_per_gpu must be >= 1, got {jobs_per_gpu}")
    if need > len(ids):
        seen = ", ".join(ids) if ids else "none (CUDA_VISIBLE_DEVICES unset or empty and nvidia-smi lists none)"
        raise DeviceError(f"this job needs {need} GPU(s) but the pool has {len(ids)}: {seen}; set gpus.ids in the "
                          "config, or lower the job's resources.gpu")
    folder = Path(folder) if folder is not None else lock_dir()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0, said = time.monotonic(), False
    while True:
        lease = try_acquire(need, ids, jobs_per_gpu=jobs_per_gpu, folder=folder)
        if lease is not None:
            if said:
                log(f"[sdlm] got GPU(s) {','.join(lease.ids)} after {time.monotonic() - t0:.0f} s")
            return lease
        if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
            raise DeviceError(f"no {need} free GPU(s) of {', '.join(ids)} within {timeout_s:g} s (locks in {folder})")
        if not said:
            log(f"[sdlm] waiting for {need} free GPU(s) of {', '.join(ids)} (locks in {folder})")
            said = True
        time.sleep(poll_s)


def _export(lease: Lease, env: dict[str, str]) -> None:
    env["CUDA_VISIBLE_DEVICES"] = ",".join(lease.ids)
    print(f"[sdlm] GPU(s) {env['CUDA_VISIBLE_DEVICES']} for this job (CUDA_VISIBLE_DEVICES)", file=sys.stderr, flush=True)


def take_gpus(need: int) -> list[str]:
    """This process takes ``need`` GPUs of the pool (waiting for them) and sees only those: call it before CUDA
    starts. They stay taken until the process ends (or execs a command, which keeps them)."""
    lease = acquire(need, jobs_per_gpu=jobs_per_gpu())
    lease.keep_across_exec()
    _HELD.append(lease)
    _export(lease, os.environ)  # type: ignore[arg-type]
    return lease.ids


def run_with_gpus(need: int, command: Sequence[str], *, ids: Sequence[str] | None = None, per_gpu: int | None = None,
                  env: Mapping[str, str] | None = None) -> None:
    """Take ``need`` GPUs of ``ids`` (default :func:`pool`; ``per_gpu`` jobs per GPU, default :func:`jobs_per_gpu`),
    export them as ``CUDA_VISIBLE_DEVICES`` and exec ``command`` (never returns)."""
    if not command:
        raise DeviceError("no command given after --")
    lease = acquire(need, ids, jobs_per_gpu=jobs_per_gpu() if per_gpu is None else per_gpu)
    lease.keep_across_exec()
    env = dict(os.environ if env is None else env)
    _export(lease, env)
    try:
        os.execvpe(command[0], list(command), env)
    except OSError as e:
        lease.release()
        raise DeviceError(f"cannot run {command[0]!r}: {e.strerror}") from None


def process_gpu_group(local_rank: int, local_processes: int, n_gpus: int) -> list[int]:
    """The GPUs (indices among the visible ones) that data-parallel process ``local_rank`` of ``local_processes`` on
    this node splits its model over (``device: auto``): every ``local_processes``-th one from its own rank, as
    lm-eval's ``parallelize=True`` assigns them -- so the GPU accelerate makes the process's current device (its
    rank's) is in its group."""
    if n_gpus < local_processes or n_gpus % local_processes:
        raise DeviceError(f"{n_gpus} visible GPU(s) do not split evenly over {local_processes} processes on this node")
    if not 0 <= local_rank < local_processes:
        raise DeviceError(f"local rank {local_rank} is outside 0..{local_processes - 1}")
    return [i for i in range(n_gpus) if i % local_processes == local_rank]


def _drop_option(argv: Sequence[str], flag: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def data_parallel_command(argv: Sequence[str], processes: int, *, threads: int, cpu: bool) -> tuple[list[str], dict[str, str]]:
    """``sdlm <argv>`` with ``--processes P`` as ``accelerate launch`` of P processes running the same command without
    ``--processes`` / ``--gpus`` (the GPUs are taken already) and with ``--threads`` = their share of ``threads``;
    plus the environment they need (``OMP_NUM_THREADS``; ``ACCELERATE_USE_CPU=1`` on CPU, where accelerate's
    multi-GPU launcher then starts gloo processes)."""
    rest = _drop_option(_drop_option(_drop_option(argv, "--processes"), "--gpus"), "--threads")
    share = max(1, threads // processes)
    cmd = ["accelerate", "launch", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", *(["--multi_gpu"] if processes > 1 else []), "-m", "sdlm.cli", *rest,
           "--threads", str(share)]
    env = {"OMP_NUM_THREADS": str(share)}
    if cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    return cmd, env
