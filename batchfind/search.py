"""How the next batch size is chosen. Pure: it calls `try_batch(size)` and knows nothing of torch."""

from __future__ import annotations

from typing import Callable, Iterator, Protocol


class Outcome(Protocol):
    batch_size: int
    status: str


# A failure that says nothing about memory (a bug, bad data): probing further cannot help.
STOPPING = {"error", "input"}


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
