"""Throughput as a curve over batch size, fitted to every measured size: what the sizes agree on,
so that a measurement that does not (a trial that stalled, or ran lucky) is found and measured
again before the fastest measurement is trusted. Pure arithmetic on (batch size, samples/s,
uncertainty) points."""

from __future__ import annotations

import math
from dataclasses import dataclass

# No interval is narrower than this when a point is judged off the curve: a tight interval from
# few steps is luck.
FLOOR = 0.01
# No point weighs more in the fit than one measured this precisely, on any device: the curve's three
# terms follow a CPU's throughput only to a few percent (caches), so batches 1-4 timed to ±1-3%
# pulled it to themselves and lifted its plateau above every larger size measured (gpt-small: the
# recommended size's measurement more than 5% under the plateau in 5 of 62 saved runs, up to 7.9%;
# in none with this floor).
SHAPE = 0.05
# Off-curve sizes whose throughput (measured or fitted) is within this of the plateau could change
# the recommendation: they are worth measuring again.
NEAR_PLATEAU = 0.05


@dataclass(frozen=True)
class Point:
    batch_size: int
    samples_per_s: float
    uncertainty: float  # half the width of its interval, relative to the value


@dataclass(frozen=True)
class Curve:
    """Time per sample = fixed_ms / b + sample_ms + doubling_ms × log2(b).

    A fixed cost per step that a batch shares (launches, Python, the optimizer step: what makes
    small batches slow), a cost per sample, and how that cost changes per doubling of the batch:
    about zero where throughput saturates (a GPU), positive where large batches spill out of the
    caches and run slower per sample (a CPU). None is negative. Linear in its parameters, so it is
    fitted by weighted least squares, with no search beyond leaving out a term."""

    fixed_ms: float
    sample_ms: float
    doubling_ms: float

    def ms_per_sample(self, batch_size: float) -> float:
        return self.fixed_ms / batch_size + self.sample_ms + self.doubling_ms * math.log2(batch_size)

    def samples_per_s(self, batch_size: float) -> float:
        return 1000 / self.ms_per_sample(batch_size)


def rise(points: list[Point]) -> list[Point]:
    """The points up to the fastest: where the curve describes how throughput rises to its best.
    Past it a CPU's throughput can fall off a cliff (a batch that no longer fits a cache, or whose
    tensors the allocator maps afresh each step) that no smooth curve follows, and the
    recommendation is never larger than the fastest size anyway."""
    fastest = max(points, key=lambda p: p.samples_per_s).batch_size if points else 0
    return [p for p in points if p.batch_size <= fastest]


def fit(points: list[Point], tolerance: float = 0.0) -> Curve | None:
    """The curve through the points, each weighted by its precision (up to `SHAPE`); None with
    fewer than three sizes, or where the fit says a measured size takes no time (it cannot describe
    them).

    A trial that stalled throughout (a page-fault storm, another process) sits far off the curve
    with an interval that does not say so, and would bend it towards itself: the point furthest off
    beyond its interval (and the tolerance) is left out and the rest refitted, up to a quarter of
    the points, so the curve is what the other sizes agree on."""
    kept = list(points)
    curve = _fit(kept)
    for _ in range(len(points) // 4):
        if curve is None or len({p.batch_size for p in kept}) <= 3:
            break
        worst = max(kept, key=lambda p: _standardized(curve, p, tolerance))
        if _standardized(curve, worst, tolerance) <= 1:
            break
        rest = [p for p in kept if p is not worst]
        refitted = _fit(rest)
        if refitted is None:
            break
        kept, curve = rest, refitted
    return curve


def _fit(points: list[Point]) -> Curve | None:
    if len({p.batch_size for p in points}) < 3:
        return None
    rows, values, weights = [], [], []
    for p in points:
        per_sample = 1000 / p.samples_per_s
        rows.append((1 / p.batch_size, 1.0, math.log2(p.batch_size)))
        values.append(per_sample)
        weights.append(1 / (per_sample * max(p.uncertainty, SHAPE)) ** 2)
    solved = _non_negative(rows, values, weights)
    if solved is None:
        return None
    curve = Curve(*solved)
    if any(curve.ms_per_sample(p.batch_size) <= 0 for p in points):
        return None
    return curve


def _non_negative(rows: list[tuple[float, ...]], values: list[float], weights: list[float]) -> list[float] | None:
    """The least-squares parameters with none negative: each is a cost. Among the fits that leave
    out the cost per sample, the cost per doubling or both (set to zero), the closest whose
    parameters are all non-negative; with three parameters trying each is the whole search.

    Unconstrained, two slow sizes among the small ones (a stall) fitted a negative cost per sample
    and a cost per doubling that bent the curve up between them to a plateau 12% above every size
    measured (gpt-small on a 2-core CPU); a cost per sample that falls as the batch doubles is what
    lets it bend up to a lucky last point. Sharing the step's fixed cost is already how larger
    batches get cheaper."""
    best, best_residual = None, math.inf
    for kept in ((0, 1, 2), (0, 1), (0, 2), (0,)):
        solved = _least_squares([tuple(r[i] for i in kept) for r in rows], values, weights)
        if solved is None or min(solved) < 0:
            continue
        full = [0.0, 0.0, 0.0]
        for i, value in zip(kept, solved):
            full[i] = value
        residual = sum(w * (sum(f * x for f, x in zip(full, r)) - v) ** 2 for r, v, w in zip(rows, values, weights))
        if residual < best_residual:
            best, best_residual = full, residual
    return best


def _least_squares(rows: list[tuple[float, ...]], values: list[float], weights: list[float]) -> list[float] | None:
    n = len(rows[0])
    normal = [[sum(w * r[i] * r[j] for r, w in zip(rows, weights)) for j in range(n)] for i in range(n)]
    rhs = [sum(w * r[i] * v for r, v, w in zip(rows, values, weights)) for i in range(n)]
    return _solve(normal, rhs)


def _standardized(curve: Curve, point: Point, tolerance: float) -> float:
    """How far off the curve a point is, in units of its own interval (or the tolerance if wider)."""
    return abs(deviation(curve, point)) / max(point.uncertainty, tolerance, FLOOR)


def deviation(curve: Curve, point: Point) -> float:
    """How far a measured point sits from the curve, relative to the curve."""
    return point.samples_per_s / curve.samples_per_s(point.batch_size) - 1


def outliers(curve: Curve, points: list[Point], tolerance: float) -> list[Point]:
    """Points further from the curve than their own interval (and than the tolerance), furthest
    first: a stall during a short trial, or drift, not the workload."""
    off = [p for p in points if _standardized(curve, p, tolerance) > 1]
    return sorted(off, key=lambda p: -_standardized(curve, p, tolerance))


def plateau(curve: Curve, sizes: list[int]) -> float:
    """The curve's highest throughput over these sizes."""
    return max(curve.samples_per_s(b) for b in sizes)


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None for a singular system."""
    n = len(b)
    m = [row[:] + [value] for row, value in zip(a, b)]
    scale = max(abs(x) for row in a for x in row) or 1.0
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) <= 1e-12 * scale:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            factor = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= factor * m[col][c]
    x = [0.0] * n
    for r in reversed(range(n)):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x
