"""Progress lines a user can follow in a long job's log: done/total, elapsed time and an ETA, at least once a
minute (and at the end). Stdlib only."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """``update(done)`` prints ``[sdlm] <label> done/total (pct%) elapsed m:ss ETA m:ss`` when ``every_s``
    seconds passed since the last line, and when ``done`` reaches ``total``. The ETA assumes the remaining
    items cost what the ones finished by this process did on average (:meth:`skip`)."""

    def __init__(self, total: int, label: str, *, stream: TextIO | None = None, every_s: float = 60.0,
                 clock: Any = time.monotonic):
        self.total, self.label, self.every_s, self.clock = max(int(total), 0), label, every_s, clock
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = self.last = clock()
        self.lines: list[str] = []
        self.skipped = 0

    def skip(self, n: int) -> None:
        """``n`` items done without cost (kept from an earlier, stopped run): counted as done, not in the ETA's
        rate -- else a resumed job would promise to finish far too soon."""
        self.skipped += max(int(n), 0)

    def update(self, done: int, extra: str = "") -> str | None:
        now = self.clock()
        if now - self.last < self.every_s and done < self.total:
            return None
        self.last = now
        elapsed = now - self.t0
        paid = done - self.skipped
        eta = elapsed / paid * (self.total - done) if paid > 0 else float("nan")
        pct = 100.0 * done / self.total if self.total else 100.0
        line = (f"[sdlm] {self.label} {done}/{self.total} ({pct:.0f}%) elapsed {_clock(elapsed)} "
                f"ETA {_clock(eta) if eta == eta else '?'}" + (f" {extra}" if extra else ""))
        self.lines.append(line)
        print(line, file=self.stream, flush=True)
        return line
