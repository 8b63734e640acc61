"""The processes of this machine, read from /proc: what the orphan and zombie tests look for."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def pids_where(test: Callable[[Path], bool]) -> list[int]:
    """Pids whose /proc entry passes ``test``; a process that exits while being read is skipped."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if test(entry):
                out.append(int(entry.name))
        except OSError:  # gone (or unreadable) between listing and reading
            continue
    return out


def cmdline_mentions(text: str) -> list[int]:
    """Processes whose command line contains ``text``."""
    return pids_where(lambda e: text in (e / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))


def cwd_under(root: Path) -> list[int]:
    """Processes whose working directory lies under ``root``."""
    return pids_where(lambda e: os.readlink(e / "cwd").startswith(str(root)))


def zombie_children() -> list[int]:
    """Zombie (exited, unreaped) children of this process."""
    me = os.getpid()

    def test(e: Path) -> bool:
        fields = (e / "stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] == "Z" and int(fields[1]) == me
    return pids_where(test)
