"""The gradient noise scale from gradient norms at two batch sizes.

McCandlish et al., "An Empirical Model of Large-Batch Training" (2018), appendix A.1: the squared
norm of a batch-B gradient estimate has expectation |G|² + tr(Σ)/B, so two batch sizes give
unbiased estimates of both terms, and the "simple" noise scale B_simple = tr(Σ)/|G|² says past
which batch size extra samples per step stop buying proportionally fewer steps.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import fmean


@dataclass(frozen=True)
class NoiseScale:
    b_simple: float | None  # None when |G|² was not positive: the gradient is all noise at this point
    ci_low: float | None  # a bootstrap 10th-90th percentile interval over the measured batches;
    ci_high: float | None  # None where that many resamples saw no signal (no upper bound)
    grad_sq: float  # estimate of |G|²
    trace_cov: float  # estimate of tr(Σ)
    small_batch: int
    big_batch: int
    batches: int  # gradient norms measured at each size
    samples: int  # samples used in all


def components(b_small: int, sq_small: float, b_big: int, sq_big: float) -> tuple[float, float]:
    """(|G|², tr(Σ)) from mean squared gradient norms at two batch sizes (appendix A.1)."""
    grad_sq = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
    trace = (sq_small - sq_big) / (1 / b_small - 1 / b_big)
    return grad_sq, trace


def estimate(b_small: int, small: list[float], b_big: int, big: list[float], *,
             resamples: int = 500, seed: int = 0) -> NoiseScale:
    """B_simple from lists of squared gradient norms, with a bootstrap interval.

    The ratio of the two means is taken after averaging, as the paper advises: a ratio per pair
    of batches would be biased by noise in |G|².
    """
    if b_small >= b_big:
        raise ValueError(f"the small batch ({b_small}) must be smaller than the big one ({b_big})")
    grad_sq, trace = components(b_small, fmean(small), b_big, fmean(big))
    rng = random.Random(seed)
    boots = []
    for _ in range(resamples):
        g, t = components(b_small, fmean(rng.choices(small, k=len(small))),
                          b_big, fmean(rng.choices(big, k=len(big))))
        # No signal in this resample: as far as it can tell, no batch is large enough. Left out,
        # such resamples would pull the interval low.
        boots.append(t / g if g > 0 else math.inf)
    boots.sort()
    low, high = (boots[int(q * (len(boots) - 1))] for q in (0.1, 0.9))
    return NoiseScale(
        b_simple=trace / grad_sq if grad_sq > 0 else None,
        ci_low=low if math.isfinite(low) else None, ci_high=high if math.isfinite(high) else None,
        grad_sq=grad_sq, trace_cov=trace,
        small_batch=b_small, big_batch=b_big, batches=min(len(small), len(big)),
        samples=b_small * len(small) + b_big * len(big),
    )
