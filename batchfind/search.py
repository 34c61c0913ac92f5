"""How the next batch size is chosen. Pure: it calls `try_batch(size)` and knows nothing of torch."""

from __future__ import annotations

from typing import Callable, Iterator, Protocol


class Outcome(Protocol):
    batch_size: int
    status: str


# A failure that says nothing about memory (a bug, bad data): probing further cannot help.
STOPPING = {"error"}


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


def refine(
    try_batch: Callable[[int], Outcome],
    fits: int,
    fails: int,
    *,
    multiple_of: int = 1,
    predict: Callable[[], int | None] | None = None,
    model_probes: int = 3,
    keep_going: Callable[[], bool] = lambda: True,
) -> list[Outcome]:
    """Find the largest fitting multiple of `multiple_of` between `fits` (ran) and `fails` (did not).

    `predict()` returns the memory model's edge given everything tried so far. While that edge is
    below the failed size it chooses the next size: the edge itself, or the first candidate above
    what fits when the model says that is the edge. The model keeps choosing while it is right about
    the sizes it chose (at most `model_probes` times); once a size it expected to fit fails, or one
    it expected to fail fits, the bracket is halved from then on. So the probes never exceed
    `model_probes` plus plain bisection's ceil(log2(candidates + 1)), and a good model needs two:
    its edge, and one above.
    """
    outcomes: list[Outcome] = []
    step = multiple_of
    while keep_going():
        low = (fits // step + 1) * step  # the smallest candidate above what fits
        high = (fails - 1) // step * step  # the largest candidate below what fails
        if low > high:
            break
        guess = predict() if predict is not None and model_probes > 0 else None
        if guess is not None and guess < fails:
            size = min(max(guess // step * step, low), high)
        else:
            guess = None
            size = (low // step + (high - low) // step // 2) * step
        outcome = try_batch(size)
        outcomes.append(outcome)
        if outcome.status in STOPPING:
            break
        if guess is not None:
            model_probes = model_probes - 1 if (size <= guess) == (outcome.status == "ok") else 0
        if outcome.status == "ok":
            fits = size
        else:
            fails = size
    return outcomes
