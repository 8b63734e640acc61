"""Per-request decoding statistics and honest clocks."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class DecodeStats:
    """What one request cost.

    ``new_tokens`` counts generated tokens up to and including the one that ended the request (a final EOS
    counts, as does the token completing a stop string), so plain AR decoding has TPF = 1 exactly.
    ``nfe`` counts the forward passes the request took part in, the prefill included (it already yields the
    first block). ``discarded_tokens`` are tokens the decoder produced in an accepted block beyond the end
    (after an EOS, a stop string or the token budget): block decoding overshoots, and we say by how much.
    ``prefill_s`` is the first forward of the request's batch; ``decode_s`` the rest until this request
    finished. Both are wall-clock with the device synchronised.
    """

    new_tokens: int = 0
    nfe: int = 0
    accepted_hist: list[int] = field(default_factory=list)  # accepted_hist[k-1]: steps that accepted k tokens
    prefill_s: float = 0.0
    decode_s: float = 0.0
    discarded_tokens: int = 0

    @property
    def tpf(self) -> float:
        return self.new_tokens / self.nfe if self.nfe else 0.0

    @property
    def tokens_per_s(self) -> float:
        total = self.prefill_s + self.decode_s
        return self.new_tokens / total if total > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tpf"] = self.tpf
        d["tokens_per_s"] = self.tokens_per_s
        return d


class DeviceClock:
    """``perf_counter`` that first waits for queued device work, so CUDA timings are not just launch times."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":  # pragma: no cover - not available in CI
            torch.mps.synchronize()
        return time.perf_counter()
