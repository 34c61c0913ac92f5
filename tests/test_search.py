from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from batchfind.search import double, powers_of_two


@dataclass
class Fake:
    batch_size: int
    status: str


def fails_at(threshold, status="oom"):
    tried = []

    def try_batch(size):
        tried.append(size)
        return Fake(size, "ok" if size < threshold else status)

    return try_batch, tried


def test_powers_of_two_end_at_the_bound():
    assert list(powers_of_two(1, 64)) == [1, 2, 4, 8, 16, 32, 64]
    assert list(powers_of_two(3, 20)) == [3, 6, 12, 20]
    assert list(powers_of_two(5, 5)) == [5]


def test_doubling_stops_at_first_oom():
    try_batch, tried = fails_at(100)
    outcomes = double(try_batch, 1, 10_000)
    assert tried == [1, 2, 4, 8, 16, 32, 64, 128]
    assert [o.status for o in outcomes][-2:] == ["ok", "oom"]


def test_doubling_stops_at_max_batch_when_everything_fits():
    try_batch, tried = fails_at(10**9)
    double(try_batch, 8, 100)
    assert tried == [8, 16, 32, 64, 100]


def test_oom_at_min_batch_is_the_only_trial():
    try_batch, tried = fails_at(1)
    outcomes = double(try_batch, 4, 64)
    assert tried == [4] and outcomes[0].status == "oom"


def test_time_budget_stops_before_the_next_trial():
    try_batch, tried = fails_at(10**9)
    calls = iter([True, True, False])
    double(try_batch, 1, 1024, keep_going=lambda: next(calls))
    assert tried == [1, 2]


@given(low=st.integers(1, 64), high=st.integers(1, 1 << 20), threshold=st.integers(1, 1 << 21))
def test_doubling_never_passes_a_failure_and_stays_in_bounds(low, high, threshold):
    high = max(low, high)
    try_batch, tried = fails_at(threshold)
    outcomes = double(try_batch, low, high)
    assert all(low <= s <= high for s in tried)
    assert tried == sorted(set(tried))
    # Only the last outcome may be a failure, and every size below the threshold that was tried fits.
    assert all(o.status == "ok" for o in outcomes[:-1])
    assert all((o.status == "ok") == (o.batch_size < threshold) for o in outcomes)
    assert len(tried) <= (high // low).bit_length() + 1
