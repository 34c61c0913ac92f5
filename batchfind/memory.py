"""The memory model: peak memory as a fixed part plus a per-sample part, and the edge it predicts.

Pure arithmetic on measured trials. Peak memory is close to linear in the batch size (a straight
line over small batches predicted a large GPU's edge within 2%, where a log-log fit was off tenfold).
The line goes through the largest sizes that ran, since the cost of one more sample near the edge
is what matters (on CPU small batches carry per-batch overheads that bend the line). The ceiling
is learned from failures where possible: the peak a failed trial reached plus the allocation that
failed is where memory really ran out, in the same units as the measured peaks — on CPU the cap
counts the data segment while the peak counts resident memory, and this absorbs the difference.
A failure in a brand-new process says more than one in a long-lived worker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

_CUDA_TRIED = re.compile(r"Tried to allocate ([\d.]+) (B|KiB|MiB|GiB|TiB)")
_CPU_TRIED = re.compile(r"tried to allocate (\d+) bytes")
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


# The line is fitted through this many of the largest sizes that ran.
FIT_POINTS = 3


class Measured(Protocol):
    batch_size: int
    status: str
    peak_bytes: int | None
    failed_alloc_bytes: int | None
    fresh_process: bool


@dataclass(frozen=True)
class MemoryModel:
    fixed_bytes: float
    per_sample_bytes: float
    ceiling_bytes: int
    points: int  # fitting trials the line was fitted to
    ceiling_from: str  # "failure" (learned) or "limit" (the configured cap or device total)

    def peak_at(self, batch_size: float) -> float:
        return self.fixed_bytes + self.per_sample_bytes * batch_size

    @property
    def predicted_edge(self) -> int:
        """The largest batch whose predicted peak stays under the ceiling."""
        # The epsilon keeps float noise in the fit from turning an exact 362.0 into 361.
        return max(0, int((self.ceiling_bytes - self.fixed_bytes) / self.per_sample_bytes + 1e-9))


def failed_allocation(message: str | None) -> int | None:
    """The size of the allocation that failed, from CUDA's or the CPU allocator's message."""
    if not message:
        return None
    if m := _CPU_TRIED.search(message):
        return int(m.group(1))
    if m := _CUDA_TRIED.search(message):
        return int(float(m.group(1)) * _UNITS[m.group(2)])
    return None


def fit(trials: list[Measured], limit_bytes: int | None) -> MemoryModel | None:
    """Least-squares line through the largest fitting trials' peaks; None until it can predict anything."""
    peaks = {t.batch_size: t.peak_bytes for t in trials if t.status == "ok" and t.peak_bytes}
    if len(peaks) < 2:
        return None
    points = sorted(peaks.items())[-FIT_POINTS:]
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    if slope <= 0:
        return None  # memory did not grow with the batch: nothing to extrapolate
    failures = [t for t in trials if t.status == "oom" and t.peak_bytes and t.failed_alloc_bytes]
    failures = [t for t in failures if t.fresh_process] or failures
    learned = [t.peak_bytes + t.failed_alloc_bytes for t in failures]
    if learned:
        ceiling, source = min(learned), "failure"
    elif limit_bytes:
        ceiling, source = limit_bytes, "limit"
    else:
        return None
    return MemoryModel(mean_y - slope * mean_x, slope, ceiling, n, source)
