"""Resuming a stopped job: finished batches kept in an append-only file tied to the settings that made them.

Why: distillation and evaluation decode for hours; a run stopped at any point (session end, kill -9, power
loss) and started again with the same command must lose at most the batch it was decoding. Each finished batch
is appended as ONE JSON line, then flushed and fsynced; a restart with the same settings reads the lines back
and decodes only the rest. The first line names the settings (an identity dict and its hash): a file written
for other settings (another model, prompts, token budget, decoder...) is discarded with a message, never
merged. A line cut short by a kill is dropped (it was not a finished batch).

The file is never a declared Snakemake output (Snakemake deletes those before it reruns a job); the caller
deletes it once the real output is written. Stdlib only (torch lazily, for :func:`weights_digest`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from sdlm.provenance import atomic_write_text, config_hash

__all__ = ["PartialLog", "differing_keys", "distill_partial_path", "folder_fingerprint", "fsync_path", "fsync_tree", "weights_digest"]

FORMAT = "sdlm-partial-1"  # the header's "format": a file of another layout is discarded, not misread


def distill_partial_path(out: str | os.PathLike) -> Path:
    """Where ``sdlm distill`` keeps finished batches of ``out``: beside it, not a declared output."""
    return Path(f"{out}.partial")


def folder_fingerprint(folder: str | os.PathLike) -> dict[str, list[int]]:
    """Name -> [size, mtime_ns] of every file at the top of a model folder: cheap (no reading), and it changes
    when the weights are rewritten (a retrained checkpoint), so kept results of the old weights are refused."""
    out: dict[str, list[int]] = {}
    for p in sorted(Path(folder).iterdir()):
        if p.is_file():
            st = p.stat()
            out[p.name] = [st.st_size, st.st_mtime_ns]
    return out


def weights_digest(model: Any) -> str:
    """sha256 over a model's state dict (names, dtypes, shapes, bytes): the identity of weights held in memory.
    Seconds for a 0.5B model on a CPU, against a job of hours."""
    import torch

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def differing_keys(old: Any, new: dict[str, Any]) -> str:
    """The top-level keys whose values differ between two identities, for the message that discards kept work."""
    old = old if isinstance(old, dict) else {}
    return ", ".join(sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))) or "identity hash"


def fsync_path(path: str | os.PathLike) -> None:
    """fsync one file or folder (a folder: its entries, e.g. after a rename into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file under ``folder`` and the folders themselves, so a rename that publishes the folder
    never points at data still in the page cache (power loss)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)


class PartialLog:
    """An append-only JSONL of finished batches for one set of settings (``identity``, a JSON-able dict).

    ``kept``: the records a previous process appended with the same identity (``[]`` for a new file, or when
    the file was written for other settings: it is then deleted, and ``stream`` says why). :meth:`append`
    writes one record durably; :meth:`remove` deletes the file once the caller's real output exists.
    """

    def __init__(self, path: str | os.PathLike, identity: dict[str, Any], *, stream: TextIO | None = None):
        self.path = Path(path)
        self.identity = json.loads(json.dumps(identity, default=str))  # as it reads back from the file
        self.digest = config_hash(self.identity)
        self.stream = stream if stream is not None else sys.stderr
        self._file: Any = None
        self.kept: list[dict[str, Any]] = self._read()

    def _say(self, text: str) -> None:
        print(f"[sdlm] {text}", file=self.stream, flush=True)

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        rows, end, header = [], 0, None
        for line in data.split(b"\n")[:-1]:  # the piece after the last newline was cut short by a kill
            try:
                obj = json.loads(line)
            except ValueError:
                break
            if header is None:
                header = obj
            else:
                rows.append(obj)
            end += len(line) + 1
        why = self._mismatch(header)
        if why:
            self._say(f"discarding {self.path}: {why}; starting over")
            self.path.unlink()
            return []
        if end < len(data):  # drop the unfinished tail, so the next append starts on a fresh line
            os.truncate(self.path, end)
        if rows:
            self._say(f"resuming from {self.path}: {len(rows)} finished batch(es) kept from an earlier run")
        return rows

    def _mismatch(self, header: Any) -> str | None:
        """Why a file's header does not belong to this identity (None: it does)."""
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            return "not a partial-results file of this version"
        if header.get("identity_sha256") == self.digest:
            return None
        return f"it was written for other settings (differs in: {differing_keys(header.get('identity'), self.identity)})"

    def append(self, record: dict[str, Any]) -> None:
        """One finished batch, as one line, flushed and fsynced before returning."""
        if self._file is None:
            if not self.path.exists():
                header = {"format": FORMAT, "identity_sha256": self.digest, "identity": self.identity}
                atomic_write_text(self.path, json.dumps(header) + "\n")
                fsync_path(self.path.parent)  # the new name itself survives a power cut
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        """Delete the file: the job's real output is written, nothing is left to resume."""
        self.close()
        self.path.unlink(missing_ok=True)
