"""Timing and peak memory of training steps at one batch size."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from . import devices


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (q in [0, 100])."""
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def step_stats(samples_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(samples_ms)
    return {
        "median": percentile(ordered, 50),
        "p10": percentile(ordered, 10),
        "p90": percentile(ordered, 90),
        "samples": [round(s, 4) for s in samples_ms],
    }


def measure(
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    *,
    warmup: int,
    steps: int,
    dataset_len: int,
    device: torch.device,
) -> dict[str, Any]:
    """Run warm-up then measured steps; raises whatever the step raises (OOM included)."""
    devices.reset_peak(device)
    x, y = batch(batch_size)
    losses = []
    for _ in range(warmup):
        losses.append(step(x, y))
    times_ms = []
    for _ in range(steps):
        # Synchronize before each clock read so queued GPU work is counted in its own step.
        devices.sync(device)
        start = time.perf_counter()
        losses.append(step(x, y))
        devices.sync(device)
        times_ms.append((time.perf_counter() - start) * 1000)
    peak, peak_allocated = devices.read_peak(device)
    last_loss = float(losses[-1])
    finite = bool(torch.isfinite(torch.stack(losses)).all())
    del x, y, losses
    stats = step_stats(times_ms)
    median_s = stats["median"] / 1000
    return {
        "batch_size": batch_size,
        "status": "ok",
        "step_ms": stats,
        "samples_per_s": batch_size / median_s if median_s > 0 else None,
        "epoch_s": math.ceil(dataset_len / batch_size) * median_s,
        "peak_bytes": peak,
        "peak_allocated_bytes": peak_allocated,
        "loss": last_loss if math.isfinite(last_loss) else None,
        "loss_finite": finite,
    }
