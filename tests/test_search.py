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


# ---- the edge ------------------------------------------------------------------------------

from batchfind.search import CAUTIOUS, edge  # noqa: E402


@dataclass
class Check:
    batch_size: int
    status: str
    fresh_process: bool


class Device:
    """Fit checks on a device whose brand-new processes fit below `fresh_edge + 1` and whose workers
    that ran before fit `bonus` more; a failure ends the worker."""

    def __init__(self, fresh_edge, bonus=0, status="oom"):
        self.fresh_edge, self.bonus, self.status = fresh_edge, bonus, status
        self.tried, self.warm, self.processes = [], False, 0
        self.closing = []  # the checks the search said were expected to be its last (indices)

    def fit(self, size, fresh):
        first = fresh or not self.warm
        self.processes += first
        ok = size <= self.fresh_edge + (0 if first else self.bonus)
        self.warm = ok
        self.tried.append((size, fresh))
        return Check(size, "ok" if ok else self.status, first)

    def close(self):
        self.closing.append(len(self.tried))


def search(device, known, **options):
    return edge(device.fit, known, closing=device.close, **options)


def closing_kept(device, outcomes, exact):
    """Checks said to be the last ran in brand-new processes; with a model that knows the edge the
    search ends on one, and only the last was said to be."""
    assert all(outcomes[i].fresh_process for i in device.closing)
    if exact and outcomes:
        assert device.closing == [len(outcomes) - 1], (device.closing, outcomes)


def doubling(fits, fails):
    return [Check(fits, "ok", False), Check(fails, "oom", False)]


def proven(outcomes, size, status):
    return any(o.batch_size == size and o.status == status and o.fresh_process for o in outcomes)


def test_an_exact_model_needs_two_brand_new_processes():
    device = Device(299)
    outcomes = search(device, doubling(256, 512), predict=lambda: 299)
    assert [(o.batch_size, o.status, o.fresh_process) for o in outcomes] == [(299, "ok", True), (300, "oom", True)]
    # The check of 300 was expected to be the last: no standby need start beside it.
    assert device.closing == [1]


def test_the_check_expected_to_end_the_search_is_announced_and_a_surprise_goes_on():
    """gpt-small on a CPU: 80 fits fresh, the model says 81 fails, and a failure there ends the
    search; where 81 fits after all, the search goes on past it."""
    device = Device(80)
    outcomes = search(device, doubling(64, 128), predict=lambda: 80, reuse=False)
    assert [(o.batch_size, o.status) for o in outcomes] == [(80, "ok"), (81, "oom")] and device.closing == [1]
    device = Device(81)
    outcomes = search(device, doubling(64, 128), predict=lambda: 80, reuse=False)
    assert [o.batch_size for o in outcomes] == [80, 81, 82] and device.closing == [1, 2]
    # Without a model nothing is expected of a check until the proof of the size above.
    device = Device(299)
    outcomes = search(device, doubling(256, 512))
    assert device.closing == [len(outcomes) - 1] and outcomes[-1].batch_size == 300


def test_without_a_model_it_bisects_inside_the_worker_while_sizes_fit():
    device = Device(299)
    outcomes = edge(device.fit, doubling(256, 512))
    assert proven(outcomes, 299, "ok") and proven(outcomes, 300, "oom")
    assert device.processes < len(outcomes)  # fits went on in the same worker


def test_a_size_a_worker_fitted_but_a_fresh_process_did_not_counts_as_a_failure():
    device = Device(299, bonus=1)  # workers that ran before fit 300 too
    outcomes = edge(device.fit, doubling(256, 512), predict=lambda: 310)
    assert proven(outcomes, 299, "ok") and proven(outcomes, 300, "oom")


def test_multiple_of_restricts_candidates():
    device = Device(299)
    outcomes = edge(device.fit, doubling(256, 512), multiple_of=8)
    assert all(o.batch_size % 8 == 0 for o in outcomes)
    assert proven(outcomes, 296, "ok") and proven(outcomes, 304, "oom")


def test_the_search_ends_within_its_resolution():
    device = Device(299)
    outcomes = edge(device.fit, doubling(256, 512), predict=lambda: 299, resolution=4)
    # 299 fits and the check 4 above it fails: closer than that would not repeat.
    assert [(o.batch_size, o.status) for o in outcomes] == [(299, "ok"), (303, "oom")]


def test_an_edge_one_sample_above_the_model_costs_one_more_process_not_a_gallop():
    """gpt-small on a CPU: the model said 81, and in some runs a brand-new process fits 82 too."""
    device = Device(82)
    outcomes = edge(device.fit, doubling(64, 128), predict=lambda: 81, reuse=False, resolution=1)
    assert [(o.batch_size, o.status, o.fresh_process) for o in outcomes] == [
        (81, "ok", True), (82, "ok", True), (83, "oom", True)]
    # The price: a model that stays two samples low costs a check more than an immediate gallop
    # (81, 82, 83, 85, 84 against 81, 82, 84, 83).
    device = Device(83)
    outcomes = edge(device.fit, doubling(64, 128), predict=lambda: 81, reuse=False, resolution=1)
    assert [o.batch_size for o in outcomes] == [81, 82, 83, 85, 84]
    # Wrong again, and the steps double.
    device = Device(90)
    outcomes = edge(device.fit, doubling(64, 128), predict=lambda: 81, reuse=False, resolution=1)
    assert [o.batch_size for o in outcomes][:5] == [81, 82, 83, 85, 89]
    assert proven(outcomes, 90, "ok") and proven(outcomes, 91, "oom")


def test_after_an_overshoot_a_fit_within_the_resolution_below_the_failure_ends_the_search():
    """Where memory varies between runs by `resolution` samples' worth (a CPU), a model that
    overshot by less than that needs one more check, not a climb towards its edge."""
    device = Device(338_800)
    outcomes = edge(device.fit, doubling(262_144, 524_288), predict=lambda: 339_700, reuse=False, resolution=1950)
    assert [(o.batch_size, o.status, o.fresh_process) for o in outcomes] == [
        (339_700, "oom", True), (337_750, "ok", True)]
    # Without the resolution the search climbs towards the model's edge from below.
    device = Device(338_800)
    assert len(edge(device.fit, doubling(262_144, 524_288), predict=lambda: 339_700, reuse=False)) > 3


def test_a_model_that_stays_high_after_it_overshot_costs_a_bisection_not_a_walk():
    """A Hugging Face GPT-2 under a CPU cap: every failure read the ceiling, so the model kept its
    edge at 122 where a brand-new process fitted 95, and the search stepped down one size per
    check (122, 121, ... 96: 28 checks). Two failed checks it steered, one look below, then halving."""
    for margin in (0.0, CAUTIOUS):
        device = Device(95)
        outcomes = edge(device.fit, doubling(64, 128), predict=lambda: 122, margin=margin, reuse=False)
        assert proven(outcomes, 95, "ok") and proven(outcomes, 96, "oom")
        assert len(outcomes) <= 9
    # A model whose edge is above the doubling's failure has overshot already: one check just below
    # the failure (where a worker's edge may sit a sample above a brand-new process's), one more
    # below the next failure, then bisection.
    device = Device(95)
    outcomes = edge(device.fit, doubling(64, 128), predict=lambda: 221, reuse=False)
    assert [o.batch_size for o in outcomes][:3] == [127, 126, 95] and len(outcomes) <= 9
    assert proven(outcomes, 95, "ok") and proven(outcomes, 96, "oom")
    # A CPU's model a percent high (mlp-tabular): the resolution below each failure finds the edge.
    device = Device(333_844)
    outcomes = edge(device.fit, doubling(262_144, 524_288), predict=lambda: 337_002, reuse=False, resolution=1950)
    assert [(o.batch_size, o.status) for o in outcomes] == [(337_002, "oom"), (335_052, "oom"), (333_102, "ok")]


def test_a_dropped_model_is_asked_once_more_at_the_first_fit_after_it():
    """gpt-small on a CPU: the doubling worker's 64 peaked lower than usual, so the model put the
    edge at 83 where brand-new processes fit 80. 83, 82 and 81 failed, and halving 64-81 took five
    more brand-new processes (72, 76, 78, 79, 80). Refitted through the brand-new process that
    fitted 72, the model says 81: between that fit and the failure, so it is followed, and the
    check just below the failure, 80, ends the search."""

    def learning(device, then):  # the doubling worker's edge until a brand-new process has fitted
        return lambda: then if any(fresh and size <= device.fresh_edge for size, fresh in device.tried) else 83

    device = Device(80)
    outcomes = search(device, doubling(64, 128), predict=learning(device, 81), reuse=False)
    assert [(o.batch_size, o.status) for o in outcomes] == [
        (83, "oom"), (82, "oom"), (81, "oom"), (72, "ok"), (80, "ok")]
    assert proven(outcomes, 80, "ok") and proven(outcomes, 81, "oom") and 4 in device.closing
    # Never asked again, a model that drifts but still points past the failure, and one that
    # never moves, cost what they did: halving.
    for then in (90, 83):
        device = Device(80)
        outcomes = search(device, doubling(64, 128), predict=learning(device, then), reuse=False)
        assert [o.batch_size for o in outcomes] == [83, 82, 81, 72, 76, 78, 79, 80]
    # Followed and wrong, it is not asked a third time, and the search still ends proven.
    device = Device(75)
    outcomes = search(device, doubling(64, 128), predict=learning(device, 81), reuse=False)
    assert [o.batch_size for o in outcomes][:5] == [83, 82, 81, 72, 80]
    assert proven(outcomes, 75, "ok") and proven(outcomes, 76, "oom")
    # Learned to within the bracket: followed there (below its edge by the margin of a model that
    # has overshot), then halving.
    device = Device(77)
    outcomes = search(device, doubling(64, 128), predict=learning(device, 77), reuse=False)
    assert [o.batch_size for o in outcomes][:5] == [83, 82, 81, 72, 75]
    assert proven(outcomes, 77, "ok") and proven(outcomes, 78, "oom")


def test_edge_stops_on_an_error_and_on_the_budget():
    device = Device(10, status="error")
    assert len(edge(device.fit, doubling(4, 64))) == 1
    device = Device(299)
    calls = iter([True, True, False])
    assert len(edge(device.fit, doubling(256, 512), keep_going=lambda: next(calls))) == 2


@given(
    data=st.data(),
    fits=st.integers(1, 5000),
    span=st.integers(2, 5000),
    step=st.sampled_from([1, 2, 8, 64]),
    bonus=st.integers(0, 2),
    reuse=st.booleans(),
    model=st.sampled_from(["none", "exact", "low", "high", "wild"]),
)
def test_edge_proves_exactly_the_largest_fitting_candidate(data, fits, span, step, bonus, reuse, model):
    fails = fits + span
    fresh_edge = data.draw(st.integers(fits, fails - 1))  # sizes up to it fit in a brand-new process
    predictions = {
        "none": None,
        "exact": lambda: fresh_edge,
        "low": lambda: int(fresh_edge * 0.9),
        "high": lambda: int(fresh_edge * 1.1) + 1,
        "wild": lambda: data.draw(st.integers(0, 3 * fails)),
    }
    device = Device(fresh_edge, bonus=bonus)
    known = [Check(fits, "ok", True), Check(fails, "oom", False)]
    outcomes = search(device, known, multiple_of=step, predict=predictions[model], reuse=reuse)
    closing_kept(device, outcomes, model == "exact")
    candidates = [s for s in range(fits + 1, fails) if s % step == 0]
    truth = max([s for s in candidates if s <= fresh_edge], default=fits)
    above = min([s for s in candidates if s > truth], default=fails)
    assert proven(known + outcomes, truth, "ok")
    if above < fails:
        assert proven(outcomes, above, "oom")
    assert all(o.batch_size in candidates or o.batch_size in (fits, fails) for o in outcomes)
    # However wrong the model, a search, not a walk: checks grow with the bits of the bracket.
    assert len(outcomes) <= 3 * (span // step).bit_length() + 8


@given(
    data=st.data(),
    fits=st.integers(1, 5000),
    span=st.integers(2, 5000),
    resolution=st.integers(2, 400),
    model=st.sampled_from(["exact", "low", "high", "wild"]),
)
def test_edge_within_the_resolution_is_proven_and_never_above_the_truth(data, fits, span, resolution, model):
    """Brand-new processes only (a CPU): the limit fits fresh, a size no more than the resolution
    above it failed fresh (or the doubling's failure is that close), and nothing fitting is passed."""
    fails = fits + span
    fresh_edge = data.draw(st.integers(fits, fails - 1))
    predictions = {
        "exact": lambda: fresh_edge,
        "low": lambda: int(fresh_edge * 0.9),
        "high": lambda: int(fresh_edge * 1.1) + 1,
        "wild": lambda: data.draw(st.integers(0, 3 * fails)),
    }
    device = Device(fresh_edge)
    known = [Check(fits, "ok", True), Check(fails, "oom", True)]
    outcomes = search(device, known, predict=predictions[model], reuse=False, resolution=resolution)
    closing_kept(device, outcomes, model == "exact")
    seen = known + outcomes
    hi = min(o.batch_size for o in seen if o.status != "ok")
    lo = max(o.batch_size for o in seen if o.status == "ok" and o.batch_size < hi)
    assert lo <= fresh_edge < hi
    assert proven(seen, lo, "ok") and proven(seen, hi, "oom")
    assert hi - lo <= resolution or hi - lo == 1
    assert all(o.fresh_process for o in outcomes)
    assert len(outcomes) <= 3 * span.bit_length() + 8
