"""How the next batch size is chosen. Pure: it calls the trial functions it is handed and knows
nothing of torch or processes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

from .report import MEMORY_FAILURES


class Outcome(Protocol):
    batch_size: int
    status: str
    fresh_process: bool


@dataclass(frozen=True)
class Beyond:
    """A size not run because the memory model puts it far past the memory limit: it bounds the
    search from above as a failure does, and is proven like one (in a brand-new process) if the
    search gets there."""

    batch_size: int
    status: str = "beyond"
    fresh_process: bool = False
    fits: bool = False


# The margin below the model's edge once the model has overshot: the edges it predicted from the
# doubling sizes were within 2% on the workloads measured.
CAUTIOUS = 0.03

# A failure that says nothing about memory (a bug, bad data): probing further cannot help.
STOPPING = {"error"}


def disowned(outcomes: Sequence[Outcome], clear: Callable[[Outcome], bool] | None) -> list[Outcome]:
    """Failures in a long-lived worker at or below a size that fitted as the first trial of a
    brand-new process with far more memory free than varies between runs (`clear`): what earlier
    trials left in the worker failed them, not their size. Near the edge, where the fresh run left
    little free, a worker's failure still counts (memory there differs between processes)."""
    if clear is None:
        return []
    cleared = max((o.batch_size for o in outcomes if o.status == "ok" and o.fresh_process and clear(o)), default=0)
    return [o for o in outcomes if o.status in MEMORY_FAILURES and not o.fresh_process and o.batch_size <= cleared]


def powers_of_two(low: int, high: int) -> Iterator[int]:
    """low, 2·low, 4·low, … below high, then high itself."""
    size = low
    while size < high:
        yield size
        size *= 2
    yield high


def double(
    try_batch: Callable[[int], Outcome],
    low: int,
    high: int,
    keep_going: Callable[[], bool] = lambda: True,
) -> list[Outcome]:
    """Try powers of two from `low` up to `high` until the first size that does not fit."""
    outcomes: list[Outcome] = []
    for size in powers_of_two(low, high):
        if not keep_going():
            break
        outcome = try_batch(size)
        outcomes.append(outcome)
        if outcome.status != "ok":
            break
    return outcomes


def edge(
    fit: Callable[[int, bool], Outcome],
    known: Sequence[Outcome],
    *,
    multiple_of: int = 1,
    predict: Callable[[], int | None] | None = None,
    margin: float = 0.0,
    reuse: bool = True,
    resolution: int = 1,
    closing: Callable[[], None] | None = None,
    keep_going: Callable[[], bool] = lambda: True,
    clear: Callable[[Outcome], bool] | None = None,
) -> list[Outcome]:
    """Find the largest fitting multiple of `multiple_of` below the smallest size that failed among
    the `known` outcomes (at least one did), and prove it: it fit as the first trial of a brand-new
    process, and the size above it failed in one. `fit(size, fresh)` runs a fit check, in a
    brand-new process when `fresh`, else in the worker that ran the last check (which, having only
    fitted so far, is still a clean place to measure).

    A brand-new process costs more than a step, so the search goes on inside the worker while sizes
    fit: from a fit it jumps to `predict()`, the memory model's edge refitted to everything tried so
    far. Sizes that fit there only count as evidence (a worker that has run before may fit a sample
    more than a brand-new one); a failure ends the worker. When the model says the best fit so far is
    the edge, the search proves it: that size in a brand-new process unless it ran first in one, then
    the size above. When the model keeps saying so and is wrong, the next check takes the same step
    once more (a CPU's edge drifts by a sample between runs), then the steps double (a gallop); a
    model that called the edge two or more samples low and does not move costs one check more
    than an immediate gallop would. Without a model each new size halves what is left, so the
    search always ends.

    Where a brand-new process costs more than a few fit checks (a GPU), `margin` makes each jump
    land safely below the model's edge: a model that overshot would otherwise cost a process for its
    failure and another to start below it. Once the model has overshot, every search does so. Once
    two checks it steered have failed, it is not asked again: the search looks once just below the
    failure, then halves what is left. A model whose failures all read the ceiling learns
    nothing from them (following it walked down one size per check), and one that stays low would
    start a gallop afresh after each failure. At the first fit after that (in a brand-new process:
    a failure ended the worker before it) the model is asked once more, and followed if it now
    puts the edge between that fit and the failure (up to the failure itself, a CPU's model being
    a sample high at times): a CPU's model learns from a brand-new process what the doubling
    worker's memory could not tell it (gpt-small: 83 from the worker, 81 through a brand-new
    process's 72, where 80 is the edge), and the halving would climb to an edge near the failure
    one check at a time.

    Without `reuse` every check runs in a brand-new process: where processes are cheap and a
    worker that ran before is a worse place to measure (a CPU, whose allocator keeps what earlier
    trials freed). The search ends, proven, once what fits and what fails are `resolution` apart or
    closer: where memory varies between runs (a CPU), a finer edge would not repeat.

    `closing()` is told before a check in a brand-new process that ends the search if it goes as
    expected (`_ends`): no brand-new process is expected after it.

    A worker's failure that a brand-new process then fitted far clear of the limit (`disowned`)
    bounds nothing: where no failure is left, the search ends, and the doubling goes on past it.
    """
    step = multiple_of
    tried: list[Outcome] = []
    warm = False  # the worker of the last check is alive and has only fitted
    misses = 0  # the model called the edge and the size above still fitted: step again, then gallop
    # Checks the model steered (an aim, a step or a gallop) that failed, then any that failed; a
    # model whose edge is at or above a size that already failed has overshot once before the
    # search begins.
    first = predict() if predict is not None else None
    bound = _failed_at(known, clear)
    overshoots = int(first is not None and bound is not None and first >= bound)
    asked_again = False  # the model, dropped, was asked once more
    while keep_going():
        seen = [*known, *tried]
        hi = _failed_at(seen, clear)
        if hi is None:
            break  # nothing left that bounds the search: the doubling goes on
        lo = max((o.batch_size for o in seen if o.status == "ok" and o.batch_size < hi), default=0)
        if lo == 0:
            break  # nothing below the failures fits
        proven = lo in {o.batch_size for o in seen if o.status == "ok" and o.fresh_process}
        # A size that failed in a worker but fitted in a brand-new process sits in the band where
        # the edge is fuzzy (CPU allocators): it counts as a failure, and is tried fresh only once.
        tried_fresh = {o.batch_size for o in seen if o.fresh_process}
        above = (lo // step + 1) * step  # the smallest candidate above what fits
        top = (hi - 1) // step * step  # the largest candidate below what fails
        # Within the resolution of what fits, the model's edge is as good as there: the next check
        # is the one that should fail.
        reach = min(max(above, (lo + resolution) // step * step), top)
        guess = None
        if predict is not None and above <= top:
            if overshoots < 2:
                guess = predict()
            elif not asked_again and tried and tried[-1].status == "ok":
                # The first fit since the model was dropped (after a failure, so in a brand-new
                # process): refitted through it, the model may have learned what the doubling
                # worker could not tell it. Followed only if it no longer points past the failure.
                asked_again, moved = True, predict()
                guess = moved if moved is not None and above <= moved <= hi else None
        calls_edge = guess is not None and guess < reach
        if above > top or hi - lo <= resolution or (calls_edge and not proven and not misses):
            # Nothing left between them, or the model says this is the edge: prove it.
            if not proven:
                size, fresh = lo, True
            elif hi not in tried_fresh:
                size, fresh = hi, True
            else:
                break
        else:
            middle = (above // step + (top - above) // step // 2) * step
            if calls_edge:
                # Past a proven fit the next check proves the size above, in a brand-new process.
                # The model may be wrong about that by a sample's drift (a CPU's fuzzy edge), so the
                # next check takes the same step; once it is wrong again, steps double in the
                # worker (never past the middle of what is left).
                jump = max(reach - lo, step) * 2 ** max(misses - 1, 0)
                size = reach if not misses else max(above, min(lo + jump, middle) // step * step)
                fresh = not warm or not misses
            elif guess is None:
                # Without a model each check halves what is left. Once the model has steered two
                # checks that failed, one check first looks the resolution below the failure (a
                # CPU's model overshoots by about a percent: the edge is there).
                down = hi - resolution if overshoots == 2 else 0
                size, fresh = max(middle, min(down // step * step, top)), not warm
            else:
                # With a margin, checks aim below the model's edge (by the margin, or half the way
                # there when that is closer), so they fit and the search climbs in one worker.
                guess = min(guess, hi - 1)
                target = guess - min(int(guess * margin), (guess - lo) // 2)
                if guess >= hi - resolution:
                    # The model puts the edge within the resolution below a failure: a fit there
                    # ends the search, so aim no lower.
                    target = max(target, hi - resolution)
                size, fresh = max(above, min(target // step * step, top)), not warm
        if closing is not None and fresh and _ends(size, lo, hi, proven, hi in tried_fresh, guess, resolution, above, top):
            closing()
        outcome = fit(size, fresh)
        tried.append(outcome)
        if outcome.status in STOPPING:
            break
        warm = reuse and outcome.status == "ok"
        misses = misses + 1 if calls_edge and size > lo and outcome.status == "ok" else 0
        if outcome.status != "ok" and (guess is not None or overshoots >= 2):
            overshoots += 1  # and, past the model, the look just below the failure
            if guess is not None and not calls_edge:
                margin = max(margin, CAUTIOUS)  # the model overshot: approach its edge from below
    return tried


def _failed_at(outcomes: Sequence[Outcome], clear: Callable[[Outcome], bool] | None) -> int | None:
    """The smallest size that failed, failures `disowned` aside."""
    aside = {id(o) for o in disowned(outcomes, clear)}
    return min((o.batch_size for o in outcomes if o.status != "ok" and id(o) not in aside), default=None)


def _ends(size: int, lo: int, hi: int, proven: bool, hi_fresh: bool, guess: int | None, resolution: int,
          above: int, top: int) -> bool:
    """Whether a check at `size` ends the search if it goes as expected: a fit where it proves what
    fitted, or the model puts the edge at or above it; a failure where it proves what failed, or the
    model puts the edge below it. A fit ends it when the failure above it has been proven and is
    within the resolution (or no candidate is left between); a failure, likewise the fit below.
    The proof of what failed is the last check whatever it shows."""
    if size == hi:
        return True
    if size == lo or (guess is not None and guess >= size):
        return hi_fresh and (hi - size <= resolution or size >= top)
    return guess is not None and proven and (size - lo <= resolution or size <= above)
