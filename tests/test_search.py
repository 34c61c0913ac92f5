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
    assert [o.batch_size for o in outcomes] == tried
    assert all(low <= s <= high for s in tried)
    assert tried == sorted(set(tried))
    # It stops at the first failure: every size below the threshold was tried, none above the first failure.
    expected = [s for s in powers_of_two(low, high) if s < threshold]
    expected += [s for s in powers_of_two(low, high) if s >= threshold][:1]
    assert tried == expected
    assert len(tried) <= (high // low).bit_length() + 1


# ---- refinement ---------------------------------------------------------------------------

from batchfind.search import refine  # noqa: E402


def run_refine(threshold, fits, fails, **kwargs):
    try_batch, tried = fails_at(threshold)
    refine(try_batch, fits, fails, **kwargs)
    fitting = [s for s in tried if s < threshold]
    return max(fitting, default=fits), tried


def test_plain_bisection_sequence():
    found, tried = run_refine(300, 256, 512)
    assert found == 299
    assert tried == [384, 320, 288, 304, 296, 300, 298, 299]


def test_a_perfect_model_needs_two_probes():
    found, tried = run_refine(300, 256, 512, predict=lambda: 299)
    assert found == 299 and tried == [299, 300]


def test_a_model_that_says_the_fitting_size_is_the_edge_probes_just_above():
    found, tried = run_refine(257, 256, 512, predict=lambda: 200)
    assert found == 256 and tried == [257]


def test_a_model_beyond_the_failure_is_ignored():
    _, with_model = run_refine(300, 256, 512, predict=lambda: 10_000)
    _, plain = run_refine(300, 256, 512)
    assert with_model == plain


def test_multiple_of_restricts_candidates():
    found, tried = run_refine(300, 256, 512, multiple_of=8)
    assert found == 296 and all(s % 8 == 0 for s in tried)


def test_refine_stops_on_an_error_and_on_the_budget():
    def try_batch(size):
        return Fake(size, "error")

    assert len(refine(try_batch, 4, 64)) == 1
    try_batch, tried = fails_at(300)
    calls = iter([True, True, False])
    refine(try_batch, 256, 512, keep_going=lambda: next(calls))
    assert len(tried) == 2


def bisection_bound(fits, fails, step):
    candidates = max(0, (fails - 1) // step - fits // step)
    return candidates.bit_length()


@given(
    data=st.data(),
    fits=st.integers(1, 5000),
    span=st.integers(2, 5000),
    step=st.sampled_from([1, 2, 8, 64]),
    model=st.sampled_from(["none", "exact", "low", "high", "wild"]),
)
def test_refine_finds_exactly_the_largest_fitting_candidate(data, fits, span, step, model):
    fails = fits + span
    threshold = data.draw(st.integers(fits + 1, fails))  # sizes below it fit
    predictions = {
        "none": None,
        "exact": lambda: threshold - 1,
        "low": lambda: int((threshold - 1) * 0.9),
        "high": lambda: int((threshold - 1) * 1.1) + 1,
        "wild": lambda: data.draw(st.integers(0, 3 * fails)),
    }
    try_batch, tried = fails_at(threshold)
    outcomes = refine(try_batch, fits, fails, multiple_of=step, predict=predictions[model])
    candidates = [s for s in range(fits + 1, fails) if s % step == 0]
    truth = max([s for s in candidates if s < threshold], default=fits)
    found = max([o.batch_size for o in outcomes if o.status == "ok"], default=fits)
    assert found == truth
    # Every tried size is a candidate, and none is tried twice.
    assert all(s in candidates for s in tried) and len(set(tried)) == len(tried)
    # The stated bound: at most 3 model probes plus plain bisection.
    assert len(tried) <= 3 + bisection_bound(fits, fails, step)
    if model == "exact":
        assert len(tried) <= 2


def test_a_model_proven_wrong_is_not_asked_again():
    calls = []

    def stubborn():
        calls.append(1)
        return 290  # the true edge is 299

    found, tried = run_refine(300, 256, 512, predict=stubborn)
    assert found == 299
    assert tried[:2] == [290, 291]  # its edge fits, and so does the size it said would fail
    assert len(calls) == 2  # from then on: bisection
