"""The memory model: peak memory as a fixed part plus a per-sample part, and the edge it predicts.

Pure arithmetic on measured trials. Peak memory is close to linear in the batch size (a straight
line over small batches predicted a large GPU's edge within 2%, where a log-log fit was off tenfold).
The line goes through the largest sizes that ran, since the cost of one more sample near the edge
is what matters (on CPU small batches carry per-batch overheads that bend the line).

The line is fitted to the peaks of what the memory limit counts (`capped_peak_bytes`: reserved
bytes on GPU, the data segment on CPU), so its ceiling is the limit itself, known before anything
fails. A failure can still lower it (a GPU allocator that cannot use its last fragment): the peak a
failed trial reached plus the allocation that failed is where memory really ran out. Where capped
peaks are not known, the line goes through resident peaks and the ceiling is learned from failures,
or else is the limit itself, which leans low: on CPU resident memory holds library pages that the
cap does not count.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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
    capped_peak_bytes: int | None
    failed_alloc_bytes: int | None
    fresh_process: bool
    retained_bytes: int | None
    retained_free_bytes: int | None


@dataclass(frozen=True)
class MemoryModel:
    fixed_bytes: float
    per_sample_bytes: float
    ceiling_bytes: int
    points: int  # fitting trials the line was fitted to
    # "limit": the limit in force or the memory the device can give; "failure": learned from where a
    # failed trial ran out; "fits": raised to the largest peak that ran (the stated ceiling, or what
    # a failure read, was lower)
    ceiling_from: str

    def peak_at(self, batch_size: float) -> float:
        return self.fixed_bytes + self.per_sample_bytes * batch_size

    @property
    def predicted_edge(self) -> int:
        """The largest batch whose predicted peak stays under the ceiling."""
        # The epsilon keeps float noise in the fit from turning an exact 362.0 into 361.
        return max(0, int((self.ceiling_bytes - self.fixed_bytes) / self.per_sample_bytes + 1e-9))


def explains(model: MemoryModel | None, failed: int | None, variation: int = 0) -> bool:
    """Whether the memory model puts the edge below a size that failed: running out of the limit,
    not something else (a model's own limit, a fake), is what stopped it. A ceiling that is only the
    largest peak that ran ("fits") says where memory has not run out yet, not where it does; a line
    that rises by no more than the run-to-run `variation` over the upper half of the sizes up to the
    failure cannot be told from noise."""
    return (model is not None and model.ceiling_from != "fits" and failed is not None
            and model.predicted_edge < failed and model.per_sample_bytes * failed > 2 * variation)


def safe_size(model: MemoryModel | None, limit: int | None, first_oom: int | None, variation: int,
              trials: Iterable[Measured] = (), multiple_of: int = 1) -> int | None:
    """The largest size up to `limit` whose peak, by the memory model near the edge, leaves the
    run-to-run `variation` free. `limit` ran in a brand-new process: a model that puts the edge
    below it by more than the variation accounts for is contradicted by that run (a line through
    noise, on a model whose peaks barely grow) and leaves the limit as it is, as does a line by which
    the variation is worth half the limit or more. A size among `trials` that ran first in brand-new
    processes, each time with its peak leaving the variation free, is safe: the answer is never below
    it (what a size measured outranks where a line puts it). Where the line decides, the size is a
    multiple of `multiple_of`, as refined sizes are. Where nothing failed (a probe its time budget
    or an interruption stopped), a model that puts the edge at the limit or below says the same as a
    failure just above it would."""
    failed = first_oom if first_oom is not None or limit is None else limit + 1
    if limit is None or not variation or not explains(model, failed, variation):
        return limit
    allowance = variation / model.per_sample_bytes
    if model.predicted_edge < limit - allowance or 2 * allowance >= limit:
        return limit
    below = int((model.ceiling_bytes - variation - model.fixed_bytes) / model.per_sample_bytes)
    below -= below % multiple_of
    # A size judged by its highest peak in brand-new processes, and not at all where one of them failed.
    fresh: dict[int, list[Measured]] = {}
    for t in trials:
        if t.fresh_process and t.batch_size <= limit:
            fresh.setdefault(t.batch_size, []).append(t)
    shown = max((size for size, runs in fresh.items()
                 if all(t.status == "ok" and t.capped_peak_bytes for t in runs)
                 and max(t.capped_peak_bytes for t in runs) <= model.ceiling_bytes - variation), default=0)
    return max(1, min(limit, max(below, shown)))


def failed_allocation(message: str | None) -> int | None:
    """The size of the allocation that failed, from CUDA's or the CPU allocator's message."""
    if not message:
        return None
    if m := _CPU_TRIED.search(message):
        return int(m.group(1))
    if m := _CUDA_TRIED.search(message):
        return int(float(m.group(1)) * _UNITS[m.group(2)])
    return None


def fit(trials: list[Measured], ceiling_bytes: int | None, kinds_differ: bool = False,
        noise_bytes: int = 0) -> MemoryModel | None:
    """Least-squares line through the largest fitting trials' peaks; None until it can predict anything.

    `ceiling_bytes`: where the capped peak runs out (the limit in force, or what the GPU can give).
    `kinds_differ`: long-lived workers' peaks are offset from brand-new processes' (CPU).
    `noise_bytes`: how much one size's peak varies between brand-new processes.
    """
    capped = _line(trials, "capped_peak_bytes", kinds_differ, noise_bytes)
    if capped and ceiling_bytes:
        # A failure that read less than what ran says nothing the limit in force does not.
        learned = _learned(trials, "capped_peak_bytes")
        if learned is not None and learned[1] == "failure" and learned[0] < ceiling_bytes:
            return MemoryModel(*capped[:2], learned[0], capped[2], "failure")
        # A size that ran above the stated ceiling (a GPU's free memory read before another
        # process let go) shows the ceiling is at least that high.
        reached = _reached(trials, "capped_peak_bytes")
        if reached > ceiling_bytes:
            return MemoryModel(*capped[:2], reached, capped[2], "fits")
        return MemoryModel(*capped[:2], ceiling_bytes, capped[2], "limit")
    resident = _line(trials, "peak_bytes", kinds_differ, noise_bytes)
    if resident is None:
        return None
    learned = _learned(trials, "peak_bytes", ceiling_bytes)
    if learned is not None:
        return MemoryModel(*resident[:2], learned[0], resident[2], learned[1])
    if ceiling_bytes:
        return MemoryModel(*resident[:2], ceiling_bytes, resident[2], "limit")
    return None


def _line(trials: list[Measured], field: str, kinds_differ: bool,
          noise_bytes: int = 0) -> tuple[float, float, int] | None:
    """(fixed, per sample, points) through the largest sizes with a peak; None when memory does not grow.

    When the largest size ran first in a brand-new process, the line goes through it. A CPU worker
    that ran other sizes before holds memory they left behind (free heap and kernels compiled for
    their shapes: 250 MiB for a small CNN under a 2 GiB cap) and says how much: what a brand-new
    process would have reached is its peak less that (`fresh_equivalent`). What differs beyond that
    between the two kinds of process (`kinds_differ`) is kept out of the slope, which comes from
    sizes of one kind: trials that ran first in a brand-new process once there are two within a
    factor of two of the largest, else the others."""
    peaks: dict[int, tuple[int, bool]] = {}
    for t in trials:
        value = getattr(t, field)
        if value and field == "capped_peak_bytes":
            value = fresh_equivalent(t)
        if t.status == "ok" and value:
            old, fresh = peaks.get(t.batch_size, (0, False))
            peaks[t.batch_size] = (max(value, old), fresh or t.fresh_process)
    if len(peaks) < 2:
        return None
    ordered = sorted(peaks.items())
    fresh = [(x, y) for x, (y, first) in ordered if first][-FIT_POINTS:]
    # Only fresh sizes near the largest give the slope there: the first trial (batch 1, say) sits
    # where per-batch overheads bend the line.
    fresh = [(x, y) for x, y in fresh if 2 * x >= fresh[-1][0]] if fresh else []
    if fresh and max(y for _, y in fresh) - min(y for _, y in fresh) <= noise_bytes:
        # Peaks that rose no more than they vary between runs (cnn-small's 511 and 512 under 1 GiB,
        # 0.4 MiB apart; mixup's 127 and 128, 1.4 MiB apart where a sample takes 4) give a slope of
        # their noise, not of the batch; sizes far enough apart to rise past it still give it
        # (mlp-tabular's edge checks 0.76% apart, 16 MiB).
        fresh = fresh[-1:]
    worker = [(x, y) for x, (y, first) in ordered if not first][-FIT_POINTS:]
    points = [(x, y) for x, (y, _) in ordered][-FIT_POINTS:]
    if kinds_differ:
        points = fresh if len(fresh) >= 2 else worker if len(worker) >= 2 else points
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    if slope <= 0:
        return None  # memory did not grow with the batch: nothing to extrapolate
    if fresh and fresh[-1][0] == ordered[-1][0]:
        x, y = fresh[-1]
        return y - slope * x, slope, n
    return mean_y - slope * mean_x, slope, n


# How much of a worker's retained free heap a trial is taken to have reused (`fresh_equivalent`).
REUSED_FREE_HEAP = 0.4


def fresh_equivalent(trial: Measured) -> int:
    """The capped peak a brand-new process would have reached: this trial's, less what its worker
    retained from earlier trials. Of the retained free heap the trial may have reused anything from
    none (then all of it comes off) to all (then none does). Measured on a small GPT and a small CNN
    near a 2 GiB cap, brand-new processes sat inside that range or within a MiB of it; in 30 probes
    of each the share reused that matched them was 0.14-0.56 (median 0.35) for the GPT and at most
    0.25 (median 0.04) for the CNN (docs/benchmarks.md). At `REUSED_FREE_HEAP` the GPT's first guess
    at the edge was exact in 17 of the 30 (11 at a half), a size low, which costs a brand-new
    process more, in 2 (16 at a half), and more than a size high in 1; at 0.3 it was high in 26.
    The CNN's first guess is low at any share above 0.1."""
    free = min(max(trial.retained_free_bytes or 0, 0), max(trial.retained_bytes or 0, 0))
    return trial.capped_peak_bytes - (trial.retained_bytes or 0) + int(free * REUSED_FREE_HEAP)


def _learned(trials: list[Measured], field: str, ceiling_bytes: int | None = None) -> tuple[int, str] | None:
    """Where memory ran out in a failed trial (its peak plus the allocation that failed), and
    "failure"; a failure in a brand-new process says more than one in a long-lived worker. A peak
    that ran shows the ceiling to be at least that high: a failure that read less (a fake, or a
    peak read while other mappings moved) leaves the ceiling at that peak, and "fits"."""
    failures = [t for t in trials if t.status == "oom" and getattr(t, field) and t.failed_alloc_bytes
                # One allocation larger than the whole limit in force says where the model asks too
                # much, not where memory runs out.
                and not (ceiling_bytes and t.failed_alloc_bytes > ceiling_bytes)]
    failures = [t for t in failures if t.fresh_process] or failures
    learned = min((getattr(t, field) + t.failed_alloc_bytes for t in failures), default=None)
    if learned is None:
        return None
    reached = _reached(trials, field)
    return (learned, "failure") if learned >= reached else (reached, "fits")


def _reached(trials: list[Measured], field: str) -> int:
    """The largest peak that ran."""
    return max((getattr(t, field) for t in trials if t.status == "ok" and getattr(t, field)), default=0)
