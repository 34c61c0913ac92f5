"""Choosing the batch to train with from measured trials."""

from __future__ import annotations

from .report import MEMORY_FAILURES, Limit, Recommendation, Trial


def limit_of(trials: list[Trial], **extra) -> Limit:
    """The largest size that ran below the smallest that failed for memory.

    A size that ran in a long-lived worker but failed when re-run in a fresh process is a failure.
    """
    first_oom = min((t.batch_size for t in trials if t.status in MEMORY_FAILURES), default=None)
    fitting = [t for t in trials if t.fits and (first_oom is None or t.batch_size < first_oom)]
    largest = max((t.batch_size for t in fitting), default=None)
    verified = any(t.batch_size == largest and t.fresh_process for t in fitting)
    return Limit(batch_size=largest, first_oom=first_oom, verified=verified, **extra)


def recommend(trials: list[Trial], limit: Limit) -> Recommendation:
    """The fastest size that fits, kept a finite loss, and is not above the limit."""
    usable = [
        t for t in trials
        if t.fits and t.loss_finite and t.samples_per_s and limit.batch_size and t.batch_size <= limit.batch_size
    ]
    if not usable:
        return Recommendation(None, "no batch size ran with a finite loss")
    best = max(usable, key=lambda t: t.samples_per_s)
    largest = max(usable, key=lambda t: t.batch_size)
    reason = f"fastest measured: {best.samples_per_s:,.0f} samples/s"
    if largest.batch_size != best.batch_size:
        reason += f"; the largest that fits ({largest.batch_size}) reached {largest.samples_per_s:,.0f} samples/s"
    return Recommendation(best.batch_size, reason)
