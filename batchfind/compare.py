"""Comparing two reports: what changed, and whether anything regressed past a bound."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .config import SYNTHETIC_DEFAULT_SIZE
from .report import MEMORY_FAILURES, Recommendation, Report, Trial, busy, config_section, first_fitting, latest_timed
from .sizes import format_size

# Between two runs under the default memory limit (a share of the RAM free at the start) on one
# machine: at most this share apart.
DEFAULT_CAP_DRIFT = 0.10


@dataclass(frozen=True)
class Change:
    metric: str  # "limit", "recommended batch", "samples/s @ 64", "peak bytes @ 64"
    base: float | None
    new: float | None
    change: float | None  # relative: +0.05 is 5% more
    higher_is_better: bool
    regressed: bool
    judged: bool = True  # False where it is shown but cannot regress (the warnings say why)


@dataclass(frozen=True)
class Comparison:
    changes: list[Change]
    max_regression: float
    warnings: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        return any(c.regressed for c in self.changes)


def _change(metric: str, base: float | None, new: float | None, higher_is_better: bool, bound: float) -> Change:
    if base is not None and new is None and higher_is_better:
        return Change(metric, base, new, None, higher_is_better, True)  # it no longer fits at all
    if base is None or new is None or base == 0:
        return Change(metric, base, new, None, higher_is_better, False)
    change = (new - base) / base
    worse = -change if higher_is_better else change
    return Change(metric, base, new, change, higher_is_better, worse > bound)


def compare(base: Report, new: Report, max_regression: float = 0.10) -> Comparison:
    """Limit, recommended batch, throughput at every size both timed, and peak memory at every
    size both ran."""
    # A check runs one size and recommends nothing: its limit and recommendation say only whether
    # that size still fits.
    checked = _checked(base) or _checked(new)
    # Under less memory the limit drops with it: shown, but no regression. Under more memory, or
    # under the default cap in both (a share of the RAM free at the start, a little different in
    # every run), a lower limit is one.
    same_cap = _same_cap(base, new)
    excused = not same_cap and _cap(new) < _cap(base)
    # A new report cut short (interrupted, out of time) never reached the sizes past its limit, nor
    # did one that stopped at a cap (max_batch, the dataset's size) before any size failed: its
    # limit is lower only where a size the base fitted failed in it. One cut short also saw only
    # part of the curve: its recommendation is not judged.
    partial = _cut_short(new)
    unbounded = partial or new.limit.first_oom is None
    changes = []
    if checked:
        checked_size = _checked_size(base, new)
        changes.append(dataclasses.replace(checked_size, regressed=checked_size.regressed and not excused,
                                           judged=not excused))
    else:
        limit = _change("limit", base.limit.batch_size, new.limit.batch_size, True, max_regression)
        judged = not excused and (not unbounded or _failed_by(new, base.limit.batch_size))
        changes.append(dataclasses.replace(limit, regressed=limit.regressed and judged, judged=judged))
        before, now = base.recommendation.batch_size, new.recommendation.batch_size
        recommended = _change("recommended batch", before, now, True, max_regression)
        # A size the base could not tell apart from its fastest is as good a choice by the base's
        # own measure.
        tied = _tied(now, base.recommendation)
        # Where the new limit is not judged (less memory, or a cap before any failure), the
        # recommendation is judged against what could be recommended below it.
        if (excused or unbounded) and before is not None and new.limit.batch_size is not None:
            before = min(before, new.limit.batch_size)
        dropped = _change("recommended batch", before, now, True, max_regression).regressed
        changes.append(dataclasses.replace(recommended, regressed=dropped and not (partial or tied),
                                           judged=not partial))
    old, now = first_fitting(base.trials), first_fitting(new.trials)
    # Throughput only where both timed the size: a fit check's two steps are no measure of it.
    old_timed, now_timed = latest_timed(base.trials), latest_timed(new.trials)
    unlike = []  # sizes whose peaks came from different kinds of process on a CPU
    for size in sorted(old.keys() & now.keys()):
        if size in old_timed and size in now_timed:
            changes.append(_change(f"samples/s @ {size}", old_timed[size].samples_per_s,
                                   now_timed[size].samples_per_s, True, max_regression))
        peak = _change(f"peak bytes @ {size}", old[size].peak_bytes, now[size].peak_bytes, False, max_regression)
        # A CPU worker that ran smaller sizes first holds what they left; a brand-new process (a
        # check, a probe's proof of its edge) does not: their peaks are shown, not judged.
        if _unlike_processes(base, new, old[size], now[size]):
            unlike.append(size)
            peak = dataclasses.replace(peak, regressed=False, judged=False)
        changes.append(peak)
    warnings = [f"the {which} report {_incomplete(report)}" for which, report in (("base", base), ("new", new))
                if _incomplete(report)]
    for which, report in (("base", base), ("new", new)):
        if load := busy(report.trials):
            warnings.append(f"the {which} report was timed on a busy machine ({load[0]}): its throughput, and the "
                            "batch it recommends, may differ from run to run")
    if unlike:
        sizes = ", ".join(map(str, unlike))
        warnings.append(f"peak memory at {sizes}: one report ran it in a brand-new process, the other in a worker "
                        "that ran smaller sizes first and holds what they left (a CPU): shown, not judged")
    if not old.keys() & now.keys():
        warnings.append("no batch size ran in both reports: no throughput or peak memory is compared")
    devices = [(r.environment.device, r.environment.device_name) for r in (base, new)]
    # A report where nothing fitted never learned its device: that is no difference.
    if None not in (devices[0][0], devices[1][0]) and devices[0] != devices[1]:
        warnings.append(
            f"different devices: {base.environment.device_name} ({base.environment.device}) vs "
            f"{new.environment.device_name} ({new.environment.device})"
        )
    if _ranks(base) != _ranks(new):
        warnings.append(f"different distribution: {_ranks(base)} vs {_ranks(new)}: sizes are per device, "
                        "samples/s count every rank")
    if not same_cap:
        caps = " vs ".join(format_size(_cap(r)) if math.isfinite(_cap(r)) else "not known" for r in (base, new))
        judged_or_not = "is not judged where it dropped under less memory" if excused else "is judged"
        warnings.append(f"different memory limits ({caps}): the limit moves with them and {judged_or_not}; peaks "
                        "near it may differ too")
    # The model's fields first: what was probed matters more than how.
    differing = sorted(_differences(_filled(base.config), _filled(new.config)), key=lambda key: not key.startswith("model."))
    if differing:
        more = f" and {len(differing) - 5} more" if len(differing) > 5 else ""
        warnings.append(f"different configs ({', '.join(differing[:5])}{more}): compare with care")
    return Comparison(changes, max_regression, warnings)


def _unlike_processes(base: Report, new: Report, old: Trial, now: Trial) -> bool:
    """Whether two runs of a size peaked in different kinds of process on a CPU. A GPU's peak
    counters restart with each trial; a CPU process's peak counts what it already held."""
    return "cpu" in (base.environment.device, new.environment.device) and old.fresh_process != now.fresh_process


def _same_cap(base: Report, new: Report) -> bool:
    """The same memory limit: the same bytes, or the default in both (no `probe.memory_limit`) and
    within 10% (the same machine, a little more or less RAM free)."""
    caps = [_cap(r) for r in (base, new)]
    if caps[0] == caps[1]:
        return True
    default = all(config_section(r.config, "probe").get("memory_limit") is None for r in (base, new))
    return default and math.isfinite(max(caps)) and abs(caps[0] - caps[1]) <= DEFAULT_CAP_DRIFT * max(caps)


def _cap(report: Report) -> float:
    """The memory a report's trials could use: its limit, or the whole device (a GPU without one)."""
    return report.environment.usable_bytes or math.inf


def _checked_size(base: Report, new: Report) -> Change:
    """Where either report is a check: whether the size checked (the new one's, where both are)
    still fits. It regressed only where it fitted in the base report and no longer does: a size
    that never fitted failing again is no change."""
    size = (new if _checked(new) else base).trials[0].batch_size
    before, now = base.limit.batch_size, new.limit.batch_size
    regressed = before is not None and before >= size and (now is None or now < size)
    # A check's limit is the size it ran: how far it lies from a probe's limit is no change.
    return Change("limit", before, now, None, True, regressed)


def _checked(report: Report) -> bool:
    """A `batchfind check` report: one size, run in a fresh process."""
    return bool(report.trials) and all(t.phase == "verify" for t in report.trials)


def _tied(size: int | None, rec: Recommendation) -> bool:
    if size is None:
        return False
    if rec.tied is not None:
        return size in rec.tied
    # A report from before `tied` was written: its span is all there is.
    return bool(rec.interval) and rec.interval[0] <= size <= rec.interval[-1]


def _cut_short(report: Report) -> bool:
    return report.interrupted or (report.stopped_because or "").startswith("time budget")


def _failed_by(report: Report, size: int | None) -> bool:
    """Whether a batch of `size` or less failed in `report`, in any way: out of memory, killed,
    timed out (as the report's limit took its failures: not one a brand-new process then fitted with
    room to spare), or an error (a size that trained before and now raises regressed as surely)."""
    if size is None:
        return False
    failed_for_memory = report.limit.first_oom is not None and report.limit.first_oom <= size
    return failed_for_memory or any(t.status not in MEMORY_FAILURES and not t.fits and t.batch_size <= size
                                    for t in report.trials)


def _incomplete(report: Report) -> str | None:
    """Why a report may hold less than a whole probe (its changes then say little), or None."""
    if report.interrupted:
        return "was interrupted: it holds only the sizes it reached"
    if _checked(report):
        return f"is a check of batch {report.trials[0].batch_size}, not a probe: its limit is that size at most"
    if report.stopped_because and report.stopped_because.startswith("time budget"):
        return f"stopped early ({report.stopped_because}): it holds only the sizes it reached"
    return None


def _ranks(report: Report) -> str:
    d = report.distributed
    return f"{d.strategy} × {d.world_size}" if d else "one process"


def _filled(config: dict) -> dict:
    """A report's config with the synthetic epoch filled in where a report from before it was
    (`data.size: null`): the same config either way."""
    data = config_section(config, "data")
    if data.get("kind", "synthetic") == "synthetic" and data.get("size") is None and isinstance(config, dict):
        return {**config, "data": {**data, "size": SYNTHETIC_DEFAULT_SIZE}}
    return config


# Mappings whose keys are the user's own (arguments, named inputs): a key in one only is a change.
_FREE = ("kwargs", "optimizer_kwargs", "forward_kwargs", "inputs")


def _differences(a: dict, b: dict, prefix: str = "", free: bool = False) -> list[str]:
    """The fields that differ. A setting one report has and the other lacks was added to batchfind
    between the two versions that wrote them: the older ran as it would by default, no difference."""
    keys = sorted(a.keys() | b.keys() if free else a.keys() & b.keys())
    out = []
    for key in keys:
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            out += _differences(left, right, f"{prefix}{key}.", free or key in _FREE)
        elif left != right:
            out.append(f"{prefix}{key}")
    return out
