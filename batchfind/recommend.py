"""Choosing the batch to train with from measured trials."""

from __future__ import annotations

from .report import Limit, Recommendation, Trial


def limit_of(trials: list[Trial]) -> Limit:
    fitting = [t.batch_size for t in trials if t.fits]
    largest = max(fitting, default=None)
    failed = [t.batch_size for t in trials if t.status in ("oom", "killed") and (largest is None or t.batch_size > largest)]
    return Limit(batch_size=largest, first_oom=min(failed, default=None))


def recommend(trials: list[Trial]) -> Recommendation:
    """The fastest size that fits and kept a finite loss."""
    usable = [t for t in trials if t.fits and t.loss_finite and t.samples_per_s]
    if not usable:
        return Recommendation(None, "no batch size ran with a finite loss")
    best = max(usable, key=lambda t: t.samples_per_s)
    largest = max(usable, key=lambda t: t.batch_size)
    reason = f"fastest measured: {best.samples_per_s:,.0f} samples/s"
    if largest.batch_size != best.batch_size:
        reason += f"; the largest that fits ({largest.batch_size}) reached {largest.samples_per_s:,.0f} samples/s"
    return Recommendation(best.batch_size, reason)
