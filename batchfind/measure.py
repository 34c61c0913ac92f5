"""Timing and peak memory of training steps at one batch size."""

from __future__ import annotations

import fractions
import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader

from . import devices
from .data import to_device


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (q in [0, 100])."""
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# The confidence of a median step time's interval.
CONFIDENCE = 0.9


def median_interval(sorted_values: list[float]) -> tuple[float, float]:
    """A distribution-free interval for the median: the k-th smallest and k-th largest values, with
    k the largest whose binomial coverage reaches `CONFIDENCE` (min and max up to 7 values; below 5
    even they cover less: 75% for 3). Step times are skewed (a stall makes one step slow), so no
    normal approximation."""
    n = len(sorted_values)
    k = _order(n)
    return sorted_values[k - 1], sorted_values[n - k]


@functools.lru_cache(maxsize=None)
def _order(n: int) -> int:
    """The k of `median_interval` for n values: the largest k below n/2 (at least 1) whose interval
    covers the median with `CONFIDENCE`, i.e. P(X ≤ k - 1) ≤ (1 - CONFIDENCE) / 2 for
    X ~ Binomial(n, 1/2). Asked after every step of a trial, so each n is worked out once, in one
    pass over the binomial terms in exact integers (a trial of `probe.steps` at its cap, 1000, stays
    cheap)."""
    miss = 1 - fractions.Fraction(str(CONFIDENCE))
    whole = 2**n * miss.numerator
    k, term, below = 1, n, 1 + n  # term = C(n, k); below = C(n, 0) + ... + C(n, k)
    while k < n // 2 and 2 * below * miss.denominator <= whole:
        k += 1
        term = term * (n - k + 1) // k
        below += term
    return k


def step_stats(samples_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(samples_ms)
    low, high = median_interval(ordered)
    return {
        "median": percentile(ordered, 50),
        "p10": percentile(ordered, 10),
        "p90": percentile(ordered, 90),
        "ci_low": low,
        "ci_high": high,
        "samples": [round(s, 4) for s in samples_ms],
    }


def uncertainty(samples_ms: list[float]) -> float:
    """Half the width of the median's interval, relative to the median."""
    ordered = sorted(samples_ms)
    low, high = median_interval(ordered)
    middle = percentile(ordered, 50)
    return (high - low) / 2 / middle if middle > 0 else 0.0


# Steps in each half of a trial's steps when telling whether its first steps were still settling:
# fewer cannot show a trend apart from noise.
SETTLE_HALF = 3


def settling(times_ms: list[float]) -> int:
    """How many of the first measured steps were still settling, to be left out like the warm-up:
    the earlier half of the steps, while its median was slower than the whole interval of the later
    half's median, and again within what is left. A size new to a worker can take several steps to
    settle (memory for its larger tensors faulted in, the heap grown to them): cnn-small's 64,
    timed after 32 in a worker on a 2-core CPU, ran the first half of its steps after the warm-up
    1-25% slower than the second half (median 11%) in ten probes out of ten; 32 at most 4% slower
    in nine of them."""
    start = 0
    while len(times_ms) - start >= 2 * SETTLE_HALF:
        rest = times_ms[start:]
        half = len(rest) // 2
        _, high = median_interval(sorted(rest[half:]))
        if percentile(sorted(rest[:half]), 50) <= high:
            break
        start += half
    return start


# On a CPU, a size's first step in a worker that has stepped before took at most 1.42 times its
# quickest later step where it took a quarter second or more (cnn-small 128-1024, gpt-small 32 and
# 64, six runs each from batch 1; 1.61 in one from 16), and up to 2.3 times for steps of
# milliseconds (fixed costs of a new shape): docs/benchmarks.md. So a first step that long and this
# many times the bar shows its size out of the running.
GLANCE_MIN_MS = 250.0
GLANCE_FACTOR = 1.75


@dataclass(frozen=True)
class StepPlan:
    """How many steps a trial runs, by what it is for.

    A fit check needs the memory of a steady-state step and nothing more: optimizer state appears
    at the first optimizer step, so the second step holds it. A throughput trial runs until both
    `min_steps` and `min_time_s` of measured steps are reached (torch.utils.benchmark's blocked
    autorange), so a step of milliseconds is timed many times and a step of seconds only
    `min_steps` times; then on while the median's interval is wider than `precision` (relative
    half-width) and another step fits in `max_time_s`. The `min_steps` always run, however long
    they take; past them `max_steps` bounds the number of steps. Where the time is bounded
    (`max_time_s`), steps still settling (`settling`) count as warm-up: past `min_steps` the trial
    goes on until the steps after them meet the same bounds, or until it has taken twice
    `max_time_s` (or `min_time_s`, if longer), give or take a step, whichever comes first.

    With a `bar_ms`, a throughput trial stops as soon as it has run a fit check's `fit_steps` if its
    quickest measured step took that long or longer (`outclassed`): its size could not change the
    recommendation, and the trial counts as a fit check. With `first_step_bar` (a CPU worker that
    has stepped before) it stops after its first warm-up step already where that step took
    `GLANCE_FACTOR` times the bar and at least `GLANCE_MIN_MS` (`dismissed`), unless fit checks take
    more than two steps: the optimizer state is there from the worker's earlier trials, and the bar
    is for sizes short of where memory nears its limit (`fit_steps` of a steady-state step are for
    the edge). A GPU's first step at a new size also picks kernels and sets up libraries, and a
    brand-new process's first step also starts the optimizer: neither is judged alone.
    """

    purpose: str  # "throughput" or "fit"
    warmup: int
    min_steps: int
    min_time_s: float = 0.0
    max_steps: int = 100
    precision: float = 0.0
    max_time_s: float = 0.0
    bar_ms: float | None = None
    fit_steps: int = 2
    first_step_bar: bool = False

    def outclassed(self, times_ms: list[float]) -> bool:
        # The quickest step only gets quicker with more steps: once a trial is not outclassed at
        # its first look, it never is.
        return (self.bar_ms is not None and bool(times_ms) and self.warmup + len(times_ms) >= self.fit_steps
                and min(times_ms) >= self.bar_ms)

    def dismissed(self, first_ms: float) -> bool:
        """Whether a trial's first warm-up step, taking `first_ms`, shows its size out of the running."""
        return (self.first_step_bar and self.bar_ms is not None and self.warmup > 0 and self.fit_steps <= 2
                and first_ms >= max(GLANCE_FACTOR * self.bar_ms, GLANCE_MIN_MS))

    def counted(self, times_ms: list[float]) -> list[float]:
        """The measured steps that count: those after any still settling, where time is bounded
        (ranks of a distributed trial each run the same fixed number of steps)."""
        return times_ms[settling(times_ms):] if self.max_time_s > 0 else times_ms

    def more(self, times_ms: list[float]) -> bool:
        if self.outclassed(times_ms):
            return False
        if len(times_ms) < max(self.min_steps, 1):
            return True
        if len(times_ms) >= self.max_steps:
            return False
        total_s = sum(times_ms) / 1000
        step_s = total_s / len(times_ms)  # the next step's cost, judged from every step
        if self.max_time_s > 0 and total_s + step_s > 2 * max(self.max_time_s, self.min_time_s):
            return False
        counted = self.counted(times_ms)
        elapsed_s = sum(counted) / 1000
        if len(counted) < self.min_steps or elapsed_s < self.min_time_s:
            return True
        return elapsed_s + step_s <= self.max_time_s and uncertainty(counted) > self.precision


def own(batch: Any, device: torch.device) -> Any:
    """The batch in containers of its own, its tensors shared: a step that pops a key from its batch
    (`batch.pop("labels")`, as Trainer's compute_loss does) leaves the next step's whole."""
    return to_device(batch, device)  # tensors already there stay the same tensors


def measure(
    step: Callable[[Any], torch.Tensor],
    batch: Callable[[int], Any],
    batch_size: int,
    plan: StepPlan,
    *,
    dataset_len: int,
    device: torch.device,
    meter: devices.CappedPeak,
    energy: Callable[[], float] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the plan's warm-up and measured steps; raises whatever the step raises (OOM included).

    `on_step(done, planned)` is told after each step, warm-up included (`planned` is the least
    number of steps the plan runs)."""
    devices.reset_peak(device)
    shared = devices.shared_memory(device)
    b = batch(batch_size)
    planned = plan.warmup + plan.min_steps
    losses = []
    times_ms: list[float] = []
    dismissed = False
    for i in range(plan.warmup):
        if i == 0 and plan.first_step_bar:
            # Timed: where the bar dismisses the trial on it (`StepPlan.dismissed`), it is the one step.
            given = own(b, device)
            devices.sync(device)
            load, start = devices.HostLoad(), time.perf_counter()
            losses.append(step(given))
            devices.sync(device)
            first_ms = (time.perf_counter() - start) * 1000
            dismissed = plan.dismissed(first_ms)
        else:
            losses.append(step(own(b, device)))
        if on_step:
            on_step(i + 1, planned)
        if dismissed:
            times_ms = [first_ms]
            break
    joules = None
    if not dismissed:
        devices.sync(device)
        joules_before = energy() if energy else None
        load = devices.HostLoad()
        while plan.more(times_ms):
            given = own(b, device)
            # Synchronize before each clock read so queued GPU work is counted in its own step.
            devices.sync(device)
            start = time.perf_counter()
            losses.append(step(given))
            devices.sync(device)
            times_ms.append((time.perf_counter() - start) * 1000)
            if on_step:
                on_step(plan.warmup + len(times_ms), planned)
        joules = energy() - joules_before if energy else None
    host = load.read()
    peak, peak_allocated = devices.read_peak(device)
    capped = meter.read()
    devices.check_shared(device, shared, capped if capped is not None else devices.data_segment(device))
    last_loss = float(losses[-1])
    finite = bool(torch.isfinite(torch.stack(losses)).all())
    steps = len(losses)
    del b, losses
    counted = plan.counted(times_ms)
    stats = step_stats(counted)
    median_s = stats["median"] / 1000
    return {
        "batch_size": batch_size,
        "status": "ok",
        "purpose": "fit" if dismissed or plan.outclassed(times_ms) else plan.purpose,
        "steps": steps,
        "settling_steps": len(times_ms) - len(counted),
        "step_ms": stats,
        "samples_per_s": batch_size / median_s if median_s > 0 else None,
        "epoch_s": math.ceil(dataset_len / batch_size) * median_s,
        "peak_bytes": peak,
        "peak_allocated_bytes": peak_allocated,
        "capped_peak_bytes": capped,
        "loss": last_loss if math.isfinite(last_loss) else None,
        "loss_finite": finite,
        "joules_per_sample": joules / (len(times_ms) * batch_size) if joules is not None else None,
        **host,
    }


def gradient_sq_norms(
    model: torch.nn.Module,
    sample: Callable[[int], Any],
    batch_size: int,
    count: int,
    gradients: Callable[[Any], None],
) -> list[float]:
    """|g|² of the mean-loss gradient on `count` independent batches, without stepping the optimizer."""
    norms = []
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(count):
        b = sample(batch_size)
        model.zero_grad(set_to_none=True)
        gradients(b)
        norms.append(_sq_norm([p.grad for p in params if p.grad is not None]))
    model.zero_grad(set_to_none=True)
    return norms


def _sq_norm(grads: list[torch.Tensor]) -> float:
    """|g|²; under FSDP each rank holds a shard of every gradient, so the shards' sums are added up.
    (DDP's gradients are already averaged over the ranks and whole on each.)"""
    import torch.distributed as dist

    sharded = dist.is_initialized() and any(hasattr(g, "to_local") for g in grads)
    total = sum(((g.to_local() if hasattr(g, "to_local") else g).float().pow(2).sum() for g in grads),
                torch.zeros((), device=grads[0].device if grads else "cpu"))
    if sharded:
        dist.all_reduce(total)
    return float(total)


def measure_loader(
    step: Callable[[Any], torch.Tensor],
    loader: DataLoader,
    batch_size: int,
    *,
    warmup: int,
    steps: int,
    dataset_len: int,
    device: torch.device,
    min_time_s: float = 0.0,
) -> dict[str, Any]:
    """Steps fed by the DataLoader: the whole step, and the part spent waiting for the batch; at
    least `steps` timed and `min_time_s` of them (a few steps of milliseconds would take one stall
    of a busy machine for the loader's). Whatever `warmup` says, the steps that wait for the
    loader's workers to start are not timed: one batch from each (or one, without workers)."""
    total_ms, wait_ms = [], []
    warmup = max(warmup, loader.num_workers, 1)
    batches = _forever(loader)
    load = devices.HostLoad()
    i = 0
    while i < warmup + steps or (sum(total_ms) < min_time_s * 1000 and len(total_ms) < StepPlan.max_steps):
        devices.sync(device)
        start = time.perf_counter()
        b = to_device(next(batches), device)
        fetched = time.perf_counter()
        step(b)
        devices.sync(device)
        if i >= warmup:
            total_ms.append((time.perf_counter() - start) * 1000)
            wait_ms.append((fetched - start) * 1000)
        i += 1
    total, wait = step_stats(total_ms), step_stats(wait_ms)
    median_s = total["median"] / 1000
    return {
        "status": "ok",
        "batch_size": batch_size,
        "workers": loader.num_workers,
        "pin_memory": loader.pin_memory,
        "step_ms": total,
        "data_wait_ms": wait,
        "data_share": wait["median"] / total["median"] if median_s > 0 else None,
        "samples_per_s": batch_size / median_s if median_s > 0 else None,
        "epoch_s": math.ceil(dataset_len / batch_size) * median_s,
        **load.read(),
    }


def _forever(loader: Iterable) -> Iterator:
    while True:
        yield from loader
