"""The probe: config in, typed report out. Runs trials in worker processes and never prints."""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from typing import Callable

from . import __version__, curve, noise, search
from .config import FLOAT_TARGETS, OPTIMIZERS, CNNModel, Config, DataConfig, MLPModel, TransformerModel, classes_unused
from .errors import STACKED_RAN_OUT, BatchfindError, InputError, StoppedByInput, clipped, plural
from .memory import MemoryModel, explains, failed_allocation, fit, safe_size
from .recommend import bar, choice, limit_of, points, recommend, to_change, with_training_plan
from .report import (MEMORY_FAILURES, STATUSES, Distributed, Environment, Report, Trial, busy, latest_timed, load_text,
                     timed)
from .sizes import format_size
from .devices import surely_cpu, usable_cpus
from .distributed import Agreement, AgreementLost, Topology, topology
from .group import START_S, Group
from .forks import Launcher, imports_first
from .worker import SetupFailed, environment

# Off-curve sizes measured again before the edge search, and the share of the throughput trials'
# time they may take.
REMEASURE_SIZES = 2
REMEASURE_SHARE = 1 / 3
# Batches at each of the two sizes for the gradient noise scale.
NOISE_BATCHES = 12
# Above this share of a step spent waiting for data, training is input-bound.
INPUT_BOUND_SHARE = 0.2
# DataLoader workers past this many per CPU only queue for its cores (torch warns past one per CPU),
# and a number far past it (a typo's 100000) would start that many processes: they are not timed.
WORKERS_PER_CPU = 4
# On a CPU, a power of two whose peak the memory model puts this far past the memory limit is not
# run when the edge search follows: its failure would cost the doubling worker a step of seconds
# (cnn-small's 2048: 2.2-3.8 s) and tell the search nothing the limit in force does not, and the
# search's brand-new processes prove where memory runs out.
PAST_LIMIT = 1.25
# The share of RAM left free with a standby idle beside a worker at its CPU memory cap.
STANDBY_RESERVE = 0.05


class Prober:
    """Runs trials and keeps them. Holds one live group of workers (one per rank this process
    drives), replaced after any trial that did not end cleanly (memory after a failure is not a
    clean place to measure) or when a trial asks for a brand-new process.

    So that the search near the edge does not wait for Python, torch and the model each time a
    brand-new process is needed, a single-process probe (`standby_first`: one whose limit is proven
    in a brand-new process) starts a `Launcher` beside the first worker, whose start leaves a core
    idle, and the first trial waits until it has done its imports; each brand-new worker for a fit
    check is then forked from it when needed (ready in about 0.3 s where one started from nothing
    takes 3 s of a core), so none starts beside a check. Where the probe may run on a GPU
    (`devices.surely_cpu`), or if the launcher failed, it keeps a standby instead: a worker with the
    model built (on a CPU, set up in full; on a GPU, the device untouched) that takes over when a
    brand-new process is needed. Starting one costs a core for seconds, so none starts beside a
    throughput trial (it would slow it): the first beside the first worker; else when the plan says
    fit checks are next (`prepare`); then one each time a brand-new process starts for a fit check,
    unless the search expects that check to be its last (`closing`), until `end_standby`. Neither
    is kept where an idle standby would not fit in RAM beside a worker at its memory cap
    (`_room_for_standby`).

    Workers that only run fit checks (standbys, workers started for a fit check, and the first
    worker when `fits_only`) are told so: on a CPU their allocator is set for that
    (`worker.steady_allocator`).
    """

    def __init__(self, config: Config, on_start: Callable[[int, str], None] | None,
                 on_end: Callable[[Trial], None] | None, topo: Topology | None = None,
                 on_progress: Callable[[dict], None] | None = None, fits_only: bool = False,
                 standby_first: bool = False, smallest: bool = True):
        self.config, self.on_start, self.on_end, self.topo = config, on_start, on_end, topo
        self.fits_only, self.standby_first = fits_only, standby_first
        # Whether the first worker learns the smallest batch that trains; every later worker is told.
        self.smallest = smallest
        self.on_progress = on_progress
        self.raw = config.model_dump(mode="json")
        # What workers are started with (`start` may pin the CPU cap): the fields set, not every
        # default as well, so that a worker's config tells the same fields apart as set (a factory
        # optimizer gets `lr` only where it was given).
        self.worker_config = config.model_dump(mode="json", exclude_unset=True)
        # A worker reads its device before the config is validated (`Worker`).
        self.worker_config.setdefault("probe", {})["device"] = config.probe.device
        timeout = config.probe.trial_timeout_s
        # Other drivers may spend a worker's start or a whole trial, then stop their workers, before
        # they answer.
        self.agreement = Agreement(topo, 2 * max(timeout, START_S) + 60) if topo and not topo.drives_all else None
        self.world_size = topo.world_size if topo else 1
        self.group: Group | None = None
        self.standby: Group | None = None
        self.keep_standby = topo is None
        # Where brand-new workers for fit checks are forked from, on a CPU (`start`).
        self.launcher: Launcher | None = None
        self.generation = 0
        self.trials: list[Trial] = []
        self.start_s: float | None = None  # how long the first worker took to be ready
        self.learned: dict | None = None
        self.phase = "verify" if fits_only else "double"  # a plan of fit checks is a check
        self.prepared = False  # standbys have been asked for: brand-new processes are coming
        self.last_fresh = False  # the next brand-new process is expected to be the last

    def start(self) -> dict:
        started = time.monotonic()
        if self.standby_first and self.keep_standby:
            device = str(self.config.probe.device)
            if surely_cpu(device):
                self.launcher = Launcher(environment(device, fits_only=True), imports_first(self.config.train.optimizer))
            else:
                self.standby = self._new(standby=True)
        self.group = self._new(fits_only=self.fits_only, smallest=self.smallest)
        self.start_s = time.monotonic() - started
        # What the first worker learned of the data and the model: later workers start without
        # learning it again (reading the dataset for its lengths, say).
        self.learned = self.group.ready.get("learned")
        if self.raw["probe"]["memory_limit"] is None and self.group.ready.get("device") == "cpu":
            # A default CPU cap is a share of the memory available as a worker starts: read again by
            # a standby starting beside a check near the edge, it would leave out what that check
            # holds. Every later worker takes the first one's.
            cap = self.group.ready["memory_limit_bytes"]
            self.worker_config = {**self.worker_config, "probe": {**self.worker_config["probe"], "memory_limit": cap}}
        if self.launcher is not None and not self.launcher.ready(START_S):
            # It failed where the first worker did not: brand-new processes start from nothing.
            self._end_launcher()
        if self.standby is not None and not self.standby.standing_by():
            # It failed where the first worker did not: a brand-new process started when one is
            # needed will say why.
            self.standby.close()
            self.standby = None
        elif (self.standby is not None or self.launcher is not None) and not self._room_for_standby():
            self.end_standby()
            self._end_launcher()
        return self.group.ready

    def _room_for_standby(self) -> bool:
        """Whether a standby, idle with what its set-up took (on a CPU the model built, and the memory
        of its set-up's step), fits beside a worker that grows to its CPU memory cap and leaves
        `STANDBY_RESERVE` of RAM free. A cap holds each process, not the two together: where they do
        not fit (a model large for the machine, a cap near its RAM) they would make it swap or wake
        the kernel's OOM killer, so the probe keeps no standbys and starts each brand-new process
        when it needs one. A GPU's standby holds host memory only, which a GPU's cap does not count."""
        import psutil

        ready = self.group.ready
        limit = ready.get("memory_limit_bytes")
        held = self.group.private_bytes() if ready.get("device") == "cpu" and limit else None
        if held is None:
            return True
        memory = psutil.virtual_memory()
        return memory.available - max(limit - held, 0) >= STANDBY_RESERVE * memory.total

    def _new(self, standby: bool = False, fits_only: bool = False, smallest: bool = False) -> Group:
        self.generation += 1
        fits_only = standby or fits_only
        return Group(self.worker_config, self.topo, self.agreement, self.generation, standby=standby,
                     on_progress=self.on_progress, learned=self.learned, fits_only=fits_only,
                     smallest=smallest, launcher=self.launcher if fits_only else None)

    def _end_launcher(self) -> None:
        if self.launcher is not None:
            self.launcher.close()
            self.launcher = None

    def prepare(self) -> None:
        """Start a standby now, if none is waiting: brand-new processes will be needed soon."""
        self.prepared = True
        if self.keep_standby and self.standby is None and self.launcher is None:
            self.standby = self._new(standby=True)

    def closing(self) -> None:
        """The next brand-new process is expected to be the search's last: none starts beside it.
        A standby started there takes a core from that check for seconds (gpt-small's last check
        near the edge took 4.1-4.8 s beside one, 2.8-3.1 s without) and is then killed unused."""
        self.last_fresh = True

    def _fresh(self, fits: bool) -> Group:
        """A brand-new group: for fit checks (`fits`), the standby when there is one, and once
        standbys have been asked for a new one starts in its place, unless this was expected to be
        the last (`closing`). A group that times steps starts afresh."""
        self.close()
        if not fits or self.launcher is not None:
            return self._new(fits_only=fits)
        group, self.standby = self.standby, None
        last, self.last_fresh = self.last_fresh, False
        if self.keep_standby and self.prepared and not last:
            self.standby = self._new(standby=True)
        if group is None:
            return self._new(fits_only=True)
        try:
            group.activate(self.learned)
        except BaseException:
            group.close()
            raise
        return group

    def trial(self, size: int, purpose: str = "throughput", fresh: bool = False, bar: float | None = None) -> Trial:
        """One trial at `size`: in the current worker, or in a brand-new one when `fresh` (or when
        the last trial did not end cleanly). A throughput trial with a `bar` (samples/s) ends as a
        fit check if its quickest step cannot beat it."""
        if self.on_start:
            self.on_start(size, self.phase)
        try:
            if fresh or self.group is None:
                self.group = self._fresh(fits=purpose == "fit")
            result = self.group.run(size, purpose, self.config.probe.trial_timeout_s, bar)
            if result["status"] == "input":
                raise InputError(result["error"])
            # A throughput trial stopped at its bar says so; a failure says nothing.
            trial = Trial.from_dict({**result, "phase": self.phase, "purpose": result.get("purpose") or purpose})
        except SetupFailed as exc:
            status = exc.status if exc.status in STATUSES else "error"
            trial = Trial(batch_size=size, status=status, error=exc.message, fresh_process=True, phase=self.phase,
                          purpose=purpose)
        if not trial.fits:
            self.close()
        self.trials.append(trial)
        if self.on_end:
            self.on_end(trial)
        return trial

    def end_standby(self) -> None:
        """No more standbys: the search near the edge is over."""
        self.keep_standby = False
        if self.standby is not None:
            self.standby.close()
            self.standby = None

    def ask(self, request: dict) -> dict:
        """A request other than a trial, in a brand-new worker; a failure comes back as its status."""
        try:
            self.group = self._fresh(fits=False)
            reply = self.group.call(request, self.config.probe.trial_timeout_s)
        except SetupFailed as exc:
            reply = {"status": exc.status, "error": exc.message}
        self.close()
        return reply

    def close(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None

    def shutdown(self) -> None:
        self.end_standby()
        self.close()
        self._end_launcher()


@dataclasses.dataclass
class PlanResult:
    """What a plan hands back beside the trials the prober kept."""

    model: MemoryModel | None = None
    refined: bool = False
    advise: bool = False  # measure what the recommendation needs beyond the trials
    warnings: list[str] = dataclasses.field(default_factory=list)  # about the plan itself


Plan = Callable[[Prober, dict, Callable[[], bool]], PlanResult]


def probe(
    config: Config,
    *,
    on_trial_start: Callable[[int, str], None] | None = None,
    on_trial_end: Callable[[Trial], None] | None = None,
    on_progress: Callable[[dict], None] | None = None,
) -> Report:
    """Double up to the first failure, find the exact edge near the memory model's prediction, and
    prove it in brand-new processes. Ctrl-C returns the partial report with `interrupted` set.
    """
    _is_config(config)
    return _run(config, plan, on_trial_start, on_trial_end, _topology(config), config.probe.min_batch, on_progress,
                standby_first=True)


def plan(prober, facts: dict, keep_going: Callable[[], bool], memory_model: bool = True) -> PlanResult:
    """The probe's plan, on anything that runs trials like a `Prober` (a simulated device in tests).

    Powers of two run as throughput trials in one long-lived worker, except sizes the memory model
    puts beyond the headroom (they cannot be recommended, so a fit check says all that is needed).
    Once throughput has stopped rising, a size's throughput trial stops after a fit check's steps
    (on a CPU, after a first step far past the bar) unless its quickest step could make it the batch
    to train with (`recommend.bar`). Near the edge
    every trial is a fit check (`search.edge`). On a CPU, where the edge search follows, a power the
    model puts `PAST_LIMIT` times past the limit is not run (`search.Beyond`).
    """
    config = prober.config
    p = config.probe
    dataset_len, world = facts["dataset_len"], prober.world_size
    per_rank = dataset_len // world  # each rank's share of an epoch
    if p.min_batch > per_rank:
        raise InputError(f"probe.min_batch: {p.min_batch}{_ranks(world)} is larger than the dataset ({plural(dataset_len, 'sample')})")
    high = min(p.max_batch or per_rank, per_rank)
    first = max(p.min_batch, facts.get("smallest_batch", 1))
    if first > high:
        cap = (f"probe.max_batch: {high}" if p.max_batch and p.max_batch < per_rank
               else f"data: {plural(dataset_len, 'sample')}{_ranks(world)}")
        raise InputError(f"{cap}, but {_smallest_why(facts)}")
    # The cap itself is tried last: where it is no multiple of `multiple_of`, the largest one
    # below it is (a size the user could train with, as refined sizes are).
    if (rounded := high // p.multiple_of * p.multiple_of) >= first:
        high = rounded
    outcome = PlanResult()
    if first > p.min_batch:
        outcome.warnings.append(f"{_smallest_why(facts)}; the probe started at {first}")

    def model() -> MemoryModel | None:
        return _model(prober.trials, facts)

    checked: int | None = None  # the fastest size when the curve was last checked
    tolerance = config.recommend.tolerance

    def doubling_trial(size: int) -> Trial:
        nonlocal checked
        m = model()
        room = 1 - config.recommend.headroom
        if m is not None and m.peak_at(first) > room * m.ceiling_bytes:
            # No size can leave the headroom (Python and torch alone take more): it is ignored (the
            # recommendation says so), and every size short of the edge may be the one to train with.
            room = 1.0
        beyond = m is not None and m.peak_at(size) > room * m.ceiling_bytes
        if (beyond or bar(prober.trials, tolerance) is not None) and _fastest(prober.trials) != checked:
            # Throughput has stopped rising, or the edge is near, and the worker is still clean:
            # check the curve, again once another size has become the fastest (past a size that
            # stalled, the curve up to the new fastest takes it in).
            _remeasure(prober, tolerance, keep_going)
            checked = _fastest(prober.trials)
        if beyond:
            prober.prepare()  # the edge is near: brand-new processes come next
            if skip_past and m.ceiling_from == "limit" and m.peak_at(size) >= PAST_LIMIT * m.ceiling_bytes:
                return search.Beyond(size)
            return prober.trial(size, "fit")
        # Past the peak a size's steps are the longest of the probe (cnn-small's 512 and 1024: 12 s
        # of 47 on a CPU): a fit check's worth of them, or one far too slow, shows whether the rest
        # are worth running.
        return prober.trial(size, bar=bar(prober.trials, tolerance))

    skip_past = p.refine and facts.get("device") == "cpu"
    clear = clear_of(facts)
    start = first
    while start <= high:
        doubled = search.double(doubling_trial, start, high, keep_going)
        if doubled and doubled[-1].fits and _fastest(prober.trials) != checked:
            _remeasure(prober, config.recommend.tolerance, keep_going)
        if outcome.model is None:  # the edge the powers of two first gave
            outcome.model = model()
        last = doubled[-1] if doubled else None
        skipped = [last] if isinstance(last, search.Beyond) else []
        fits = limit_of(prober.trials, clear).batch_size
        if p.refine and last is not None and (last.status in MEMORY_FAILURES or skipped) and fits is not None:
            prober.phase = "refine"
            prober.prepare()
            m = model()
            variation = _variation(facts, m, prober.trials)
            cheap = _processes_cheap(prober, _edge(m))
            # Where memory varies between runs (a CPU), an edge finer than that would not repeat.
            resolution = max(1, int(variation / m.per_sample_bytes)) if explains(m, last.batch_size, variation) else 1
            search.edge(lambda size, fresh: prober.trial(size, "fit", fresh), [*prober.trials, *skipped],
                        multiple_of=p.multiple_of, predict=(lambda: _edge(model())) if memory_model else None,
                        margin=0.0 if cheap else search.CAUTIOUS, reuse=not cheap, resolution=resolution,
                        closing=prober.closing, keep_going=keep_going, clear=clear)
            outcome.refined = True
        # A size skipped as far past the limit that fitted after all (a model whose peaks stop
        # growing), or that failed in the worker only for what earlier sizes left there: the
        # doubling goes on past it.
        passed = skipped or any(t is last for t in search.disowned(prober.trials, clear))
        if (not passed or last.batch_size >= high or (limit_of(prober.trials, clear).batch_size or 0) < last.batch_size
                or not keep_going()):
            break
        # Up to the cap (max_batch, the dataset), which the doubling tries last.
        prober.phase, start = "double", min(2 * last.batch_size, high)
    _verify(prober, keep_going, clear)
    prober.end_standby()
    outcome.advise = True
    return outcome


def _fastest(trials: list[Trial]) -> int | None:
    latest = latest_timed(trials)
    return max(latest.values(), key=lambda t: t.samples_per_s).batch_size if latest else None


def _remeasure(prober, tolerance: float, keep_going: Callable[[], bool]) -> None:
    """Measure again, in the live worker, each right after its neighbour and before the fastest size
    (so drift between them cancels), the sizes whose throughput sits off the curve beyond their
    interval where that could change the choice: those the curve or their measurement puts within
    `curve.NEAR_PLATEAU` of the plateau. At most `REMEASURE_SIZES` of them, while all re-measures
    so far have taken at most `REMEASURE_SHARE` of the time the throughput trials took. Before
    them, and whatever it costs: in full, sizes below the fastest that only ever ran a fit check's
    steps (`_cut_off`); then the size past the fastest that its measurement may have held back from
    being the batch to train with (`_held_back`)."""
    measured = timed(prober.trials)
    last = latest_timed(measured)
    rising = curve.rise(points(list(last.values())))
    fitted = curve.fit(rising, tolerance)
    if fitted is None:
        return
    sizes = sorted(last)
    top = curve.plateau(fitted, [p.batch_size for p in rising])
    near = [p.batch_size for p in curve.outliers(fitted, rising, tolerance)
            if max(p.samples_per_s, fitted.samples_per_s(p.batch_size)) >= (1 - curve.NEAR_PLATEAU) * top]
    held = _held_back(fitted, last, tolerance)
    cut_off = _cut_off(prober.trials, last)
    # One share for the whole probe, however often the curve is checked.
    first = [t for t in measured if t.phase != "remeasure"]
    again = [t for t in prober.trials if t.phase == "remeasure"]
    budget = REMEASURE_SHARE * sum(t.wall_s or 0 for t in first) - sum(t.wall_s or 0 for t in again)
    phase = prober.phase
    prober.phase = "remeasure"
    for size in cut_off:
        if not keep_going() or not prober.trial(size).fits:
            prober.phase = phase
            return
    for size in ([held] if held else []) + near[:REMEASURE_SIZES]:
        i = sizes.index(size)
        neighbour = sizes[i - 1] if i else sizes[i + 1]
        # A worker's steps drift (on a 2-core CPU sizes measured again ran 5-23% quicker): a size
        # measured again is compared with a fastest size measured again beside it, not with one
        # measured earlier (cnn-small's 16, measured again, beat a 32 measured before it by 14%).
        fastest = _fastest(prober.trials)
        group = [neighbour, size] + ([fastest] if fastest not in (neighbour, size) else [])
        now = latest_timed(prober.trials)
        cost = sum(now[b].wall_s or 0 for b in group)
        if (cost > budget and size != held) or not keep_going():
            continue
        budget -= cost
        prober.phase = "remeasure"
        if not all(prober.trial(b).fits for b in group):
            break
    prober.phase = phase


def _cut_off(trials: list[Trial], latest: dict[int, Trial]) -> list[int]:
    """Sizes below the fastest that stopped at their bar in the doubling and were never timed: a
    larger size beat that bar since, so throughput had not stopped rising, and their one step may
    have stalled (a BERT on a 2-core CPU: 16 stalled, 32's and 64's single steps took 1.9 and 1.6
    times their usual, and 128 became the fastest) or sat in a dip the curve climbs out of
    (mlp-tabular's 8192). At most `REMEASURE_SIZES`, the largest."""
    fastest = max(latest.values(), key=lambda t: t.samples_per_s).batch_size
    stopped = {t.batch_size for t in trials if t.phase == "double" and t.fits and t.purpose == "fit"}
    return sorted(b for b in stopped if b < fastest and b not in latest)[-REMEASURE_SIZES:]


def _held_back(fitted: curve.Curve, latest: dict[int, Trial], tolerance: float) -> int | None:
    """The smallest timed size above the fastest, when its measurement may be all that keeps it
    from being the batch to train with: the curve through the sizes up to the fastest puts it faster
    than the size chosen by more than the tolerance, and its own interval reaches the samples/s
    that would change the choice (gpt-small on a 2-core CPU: 16 timed to ±4-24% below 8 in runs
    that chose 8, where it is 4-7% faster). A larger size that is slower on every step (cnn-small's
    64 there, a third slower and more) sits far below that."""
    chosen, fastest = choice(list(latest.values()), tolerance)
    larger = [b for b in latest if b > fastest.batch_size]
    need = to_change(chosen, tolerance)
    if not larger or need is None:
        return None
    size = min(larger)
    t = latest[size]
    faster = fitted.samples_per_s(size) * (1 - tolerance) >= fitted.samples_per_s(chosen.batch_size)
    return size if faster and t.throughput_range[1] >= need else None


def _smallest_why(facts: dict) -> str:
    return (f"the model cannot train on a batch below {facts['smallest_batch']}: a BatchNorm layer would see "
            "one value per channel, which torch refuses")


def _ranks(world: int) -> str:
    return f" × {world} ranks" if world > 1 else ""


def _topology(config: Config) -> Topology | None:
    # The rendezvous waits for every rank; give it as long as a trial may take.
    return topology(config.probe.nproc_per_node, config.probe.trial_timeout_s)


def _decide(trials: list[Trial], outcome: PlanResult, config: Config, facts: dict, world_size: int):
    """Trials with their training plan, the limit, the recommendation and its notes."""
    trials = with_training_plan(trials, config.train, config.recommend, world_size, facts.get("own_optimizers", False),
                                facts.get("optimizer_lr"))
    limit = limit_of(trials, clear_of(facts), predicted_batch_size=_edge(outcome.model), refined=outcome.refined)
    model = _model(trials, facts)
    variation = _variation(facts, model, trials)
    limit = dataclasses.replace(limit, variation_bytes=variation, safe_batch_size=safe_size(
        model, limit.batch_size, limit.first_oom, variation, trials, config.probe.multiple_of))
    limit_bytes = facts.get("memory_ceiling_bytes") or facts.get("memory_total_bytes")
    recommendation, notes = recommend(trials, limit, config.recommend, limit_bytes, facts.get("batchnorm", False),
                                      world_size)
    return trials, limit, recommendation, notes


def _model(trials: list[Trial], facts: dict) -> MemoryModel | None:
    """The memory model of these trials; on CPU a worker that ran before holds memory a brand-new
    process does not, so the two kinds of process are told apart."""
    ceiling = facts.get("memory_ceiling_bytes")
    return fit(trials, ceiling, kinds_differ=facts.get("device") == "cpu",
               noise_bytes=int((facts.get("memory_variation") or 0) * (ceiling or 0)))


# A brand-new process that fits a size with more than this share of the limit free (or four times
# what memory varies between runs, if more) is clear of the edge: a worker's failure at that size
# came from what earlier sizes left in it.
CLEAR_SHARE = 0.02


def clear_of(facts: dict) -> Callable[[Trial], bool]:
    """Whether a trial's peak left the limit far more free than memory varies between runs."""
    ceiling = facts.get("memory_ceiling_bytes") or facts.get("memory_total_bytes")
    margin = max(CLEAR_SHARE, 4 * (facts.get("memory_variation") or 0))
    return lambda t: bool(ceiling) and t.counted_peak_bytes is not None and t.counted_peak_bytes <= (1 - margin) * ceiling


def _variation(facts: dict, model: MemoryModel | None, trials: list[Trial]) -> int:
    """How much a worker's peak may vary between runs near the edge: a share of where memory ran
    out (the cap, or lower where a failure showed less to be usable), or more where brand-new
    processes at one size showed more: their peaks that far apart, or one that fitted this far below
    where memory ran out and another that ran out (a step of one's own under autocast spread 13 MiB
    over three checks where the share allowed 5). Only fit checks near the edge count, by what the
    cap counts, and what they show is taken up to the margin a brand-new process must leave to be
    clear of the edge (`clear_of`): more than that is not variation near the edge but something
    else (a worker killed for the machine's RAM, a set-up that ran out)."""
    ceiling = model.ceiling_bytes if model else facts.get("memory_ceiling_bytes") or 0
    share = int((facts.get("memory_variation") or 0) * ceiling)
    if not share:
        return share  # a GPU's allocator repeats to the block
    most = int(max(CLEAR_SHARE, 4 * facts["memory_variation"]) * ceiling)
    seen = 0
    for size in {t.batch_size for t in trials if t.fresh_process and t.purpose == "fit"}:
        runs = [t for t in trials if t.fresh_process and t.purpose == "fit" and t.batch_size == size]
        peaks = [t.capped_peak_bytes for t in runs if t.fits and t.capped_peak_bytes]
        if not peaks or max(peaks) < ceiling - most:
            continue  # clear of the edge
        if len(peaks) > 1:
            seen = max(seen, max(peaks) - min(peaks))
        if any(t.status == "oom" and t.capped_peak_bytes for t in runs):
            seen = max(seen, ceiling - min(peaks))
    return max(share, min(seen, most))


def _advise(prober: Prober, config: Config, facts: dict, size: int | None, limit_size: int | None) -> dict:
    """At the recommended size, in a fresh worker: steps through the DataLoader for data read from
    files, and the gradient noise scale when asked for."""
    extras: dict = {}
    if size is None:
        return extras
    workers, cpus = config.data.workers, usable_cpus()
    if facts["data"] != "synthetic" and workers > WORKERS_PER_CPU * cpus:
        extras["loader"] = {"status": "skipped", "error": f"data.workers: {workers} is more than {WORKERS_PER_CPU} "
                            f"per CPU ({plural(cpus, 'CPU')} here): set at most {WORKERS_PER_CPU * cpus} to time the DataLoader"}
    elif facts["data"] != "synthetic":
        reply = prober.ask({"op": "loader", "batch_size": size})
        # The request's own wall time is no part of the timing it reports.
        extras["loader"] = ({k: v for k, v in reply.items() if k != "wall_s"} if reply.get("status") == "ok"
                            else {"status": reply.get("status"), "error": reply.get("error")})
    if config.recommend.noise_scale:
        # Two sizes at least 2 apart are needed; BatchNorm needs 2 samples in a batch.
        big = min(max(size, 4), limit_size or size)
        small = max(2, big // 8)
        if big < 4:
            # Memory, or the dataset's size (each rank's share of it), caps the sizes that ran.
            cap = (f"the dataset holds {facts['dataset_len']}" if facts.get("dataset_len", 4) < 4 * prober.world_size
                   else f"limit {big}")
            extras["noise_scale"] = {"status": "skipped", "error": f"needs a batch of at least 4 that fits ({cap})"}
            return extras
        reply = prober.ask({"op": "noise", "small": small, "big": big, "batches": NOISE_BATCHES})
        if reply.get("status") == "ok" and not all(map(math.isfinite, reply["small"] + reply["big"])):
            extras["noise_scale"] = {"status": "error", "error": "the gradients were not finite (NaN or infinity) "
                                                                 f"at batch {small} or {big}"}
        elif reply.get("status") == "ok":
            # Across ranks the gradient is averaged over every rank's batch: the global batch.
            world = prober.world_size
            scale = noise.estimate(small * world, reply["small"], big * world, reply["big"])
            extras["noise_scale"] = {**dataclasses.asdict(scale), "status": "ok", "measured_at": "initial weights"}
        else:
            extras["noise_scale"] = {"status": reply.get("status"), "error": reply.get("error")}
    return extras


def _edge(model: MemoryModel | None) -> int | None:
    return model.predicted_edge if model else None


def _processes_cheap(prober, predicted: int | None) -> bool:
    """Whether starting a worker costs less than a fit check near the predicted edge: on a CPU steps
    near the edge take seconds and a standby worker is already waiting; on a GPU a new process
    costs seconds of CUDA start-up against fractions of a second per step."""
    stepped = [t for t in prober.trials if t.fits and t.step_ms and t.step_ms.median > 0]
    if predicted is None or not stepped or prober.start_s is None:
        return False
    largest = max(stepped, key=lambda t: t.batch_size)
    fit_s = prober.config.probe.fit_steps * largest.step_ms.median / 1000 * predicted / largest.batch_size
    return prober.start_s < fit_s


def _verify(prober, keep_going: Callable[[], bool], clear: Callable[[Trial], bool]) -> None:
    """Prove the limit in a brand-new process unless it already ran first in one; when that fails,
    search down to the edge below it."""
    limit = limit_of(prober.trials, clear)
    if limit.batch_size is None or limit.verified or not keep_going():
        return
    prober.phase = "verify"
    prober.closing()  # it fitted before: a fit ends the search
    if prober.trial(limit.batch_size, "fit", fresh=True).fits or limit_of(prober.trials, clear).batch_size is None:
        return
    prober.phase = "refine"
    search.edge(lambda size, fresh: prober.trial(size, "fit", fresh), list(prober.trials),
                multiple_of=prober.config.probe.multiple_of, closing=prober.closing, keep_going=keep_going,
                clear=clear)


def check(config: Config, batch_size: int) -> Report:
    """Run one batch size in a brand-new process, the fit check a probe proves its limit with: does
    it still fit?"""
    _is_config(config)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size: expected a whole number of at least 1 (got {batch_size!r})")

    def check_plan(prober: Prober, facts: dict, keep_going: Callable[[], bool]) -> PlanResult:
        world = prober.world_size
        if batch_size * world > facts["dataset_len"]:
            raise InputError(f"--batch: {batch_size}{_ranks(world)} is larger than the dataset ({plural(facts['dataset_len'], 'sample')})")
        if batch_size < facts.get("smallest_batch", 1):
            raise InputError(f"--batch: {batch_size}, but {_smallest_why(facts)}")
        prober.trial(batch_size, "fit")
        return PlanResult()

    return _run(config, check_plan, None, None, _topology(config), batch_size, fits_only=True)


def _is_config(config: object) -> None:
    """From Python, a path or a mapping where `load_config`'s result goes is said so in one line."""
    if not isinstance(config, Config):
        raise InputError(f"config: expected the Config that batchfind.load_config returns (got "
                         f"{type(config).__name__}): load_config(path) reads a file")


def validate(config: Config) -> Report:
    """One training step of two samples on CPU: model and data build and agree. No probing. Its
    warnings are those a probe would give about the config itself (settings the model never uses,
    inputs longer than the items scanned); the rest are about probing, which this is not."""
    _is_config(config)
    cpu = config.model_copy(update={"probe": config.probe.model_copy(
        update={"device": "cpu", "warmup_steps": 0, "steps": 1, "min_time_s": 0, "memory_limit": None,
                "nproc_per_node": None})})
    notes: list[str] = []

    def one_step(prober: Prober, facts: dict, keep_going: Callable[[], bool]) -> PlanResult:
        notes.extend(_unused_warnings(config, facts) + _length_warnings(facts.get("input_lengths")))
        prober.trial(min(2, facts["dataset_len"]))
        return PlanResult()

    return dataclasses.replace(_run(cpu, one_step, None, None, None, 2), warnings=notes)


def _run(
    config: Config,
    plan: Plan,
    on_trial_start: Callable[[int, str], None] | None,
    on_trial_end: Callable[[Trial], None] | None,
    topo: Topology | None,
    first: int,
    on_progress: Callable[[dict], None] | None = None,
    fits_only: bool = False,
    standby_first: bool = False,
) -> Report:
    """Start the workers and run `plan` on them (`fits_only`: a plan of fit checks, timing
    nothing). Where not even the set-up fits in memory, the report says so as a failure at `first`,
    the size the plan would have run first."""
    started = time.monotonic()
    budget = config.probe.time_budget_s
    # A check of a size above 1 has no use for the smallest batch that trains.
    prober = Prober(config, on_trial_start, on_trial_end, topo, on_progress, fits_only, standby_first,
                    smallest=not fits_only or first < 2)
    interrupted = False
    outcome = PlanResult()
    stopped = None
    facts: dict = {}

    def keep_going() -> bool:
        nonlocal stopped
        # The first trial always runs: a budget smaller than starting a worker still gets an answer.
        go = budget is None or not prober.trials or time.monotonic() - started <= budget
        if prober.agreement:  # clocks differ between nodes: rank 0's says for all
            go = prober.agreement.decide(go)
        if not go:
            stopped = f"time budget of {budget:g} s spent"
        return go

    extras: dict = {}
    decision = None
    halted = None
    try:
        try:
            facts = prober.start()
        except SetupFailed as exc:
            if exc.status not in ("oom", "killed"):
                raise _setup_error(exc) from None
            # Nothing fits, not even the smallest batch: a report that says so, as for a smallest
            # batch that ran out of memory, so `-o` and `--json` still get one.
            error = _nothing_fits(exc.message, config.data, config.probe.memory_limit is not None)
            prober.trials.append(Trial(batch_size=first, status=exc.status, fresh_process=True,
                                       purpose="fit", phase=prober.phase, error=error))
        if facts:
            outcome = plan(prober, facts, keep_going)
            # Advice requests add no trials, so the decision made before them stands.
            decision = _decide(prober.trials, outcome, config, facts, prober.world_size)
            if outcome.advise:
                _, limit, recommendation, _ = decision
                extras = _advise(prober, config, facts, recommendation.batch_size, limit.batch_size)
    except KeyboardInterrupt:
        interrupted, stopped = True, "interrupted"
        if prober.agreement:
            prober.agreement.abandon("interrupted")
    except AgreementLost as exc:  # another rank's process stopped: keep what all ranks agreed on
        interrupted, stopped = True, str(exc)
    except BaseException as exc:
        if prober.agreement:  # the other drivers would wait for this one until their timeout
            prober.agreement.abandon(f"{type(exc).__name__}: {exc}")
        if not isinstance(exc, InputError):
            raise
        halted = config.named(exc)
        if not any(t.fits for t in prober.trials):
            raise halted from exc
        # Found after sizes ran (a dataset item that raises): what they measured is kept.
        interrupted, stopped = True, f"bad input: {halted}"
    finally:
        prober.shutdown()
        if prober.agreement:
            prober.agreement.finish()
    if interrupted and outcome.model is None and facts:
        # The plan never handed its model back: the one its powers of two so far give.
        outcome.model = _model([t for t in prober.trials if t.phase in ("double", "remeasure")], facts)
    trials, limit, recommendation, notes = decision or _decide(prober.trials, outcome, config, facts, prober.world_size)
    recommendation = dataclasses.replace(recommendation, **extras)
    model = outcome.model
    report = Report(
        tool={"name": "batchfind", "version": __version__},
        environment=Environment(
            torch_version=facts.get("torch_version"),
            device=facts.get("device"),
            device_name=facts.get("device_name"),
            memory_total_bytes=facts.get("memory_total_bytes"),
            # Interrupted before a worker was ready, the limit asked for.
            memory_limit_bytes=facts.get("memory_limit_bytes", config.probe.memory_limit),
            threads=facts.get("threads"),
            python=platform.python_version(),
            platform=platform.platform(),
        ),
        config=prober.raw,
        dataset_len=facts.get("dataset_len"),
        parameters=facts.get("parameters"),
        optimizer=facts.get("optimizer"),
        input_lengths=facts.get("input_lengths"),
        trials=trials,
        limit=limit,
        memory_model=dataclasses.asdict(model) | {"predicted_edge": model.predicted_edge} if model else None,
        recommendation=recommendation,
        # A size measured twice (a re-measure, the verification) says the same once.
        warnings=list(dict.fromkeys(_warnings(trials, limit, clear_of(facts)) + _budget_warnings(stopped, limit)
                                    + _load_warnings(trials) + notes + outcome.warnings
                                    + _length_warnings(facts.get("input_lengths"))
                                    + _advice_warnings(recommendation, facts, config.recommend.target_batch,
                                                      topo.world_size // topo.nodes if topo else 1)
                                    + _strategy_warnings(config, topo)
                                    + [note for note in [facts.get("device_note")] if note]
                                    + _unused_warnings(config, facts))),
        interrupted=interrupted,
        stopped_because=stopped or _why_stopped(trials, facts.get("dataset_len"), config.probe.max_batch,
                                                 prober.world_size, config.probe.multiple_of, clear_of(facts)),
        wall_s=time.monotonic() - started,
        distributed=Distributed(
            strategy=config.probe.strategy, world_size=topo.world_size, nodes=topo.nodes,
            backend=facts.get("backend"), launcher=topo.launcher,
        ) if topo else None,
    )
    if halted is not None:
        raise StoppedByInput(str(halted), report)
    return report


def _why_stopped(trials: list[Trial], dataset_len: int | None, max_batch: int | None, world: int,
                 multiple_of: int = 1, clear: Callable[[Trial], bool] | None = None) -> str | None:
    doubled = [t for t in trials if t.phase == "double"]
    if not doubled:
        return None
    last = doubled[-1]
    aside = {id(t) for t in search.disowned(trials, clear)}
    if not last.fits and id(last) not in aside and last.status not in MEMORY_FAILURES:
        return f"{last.status} at batch {last.batch_size}"
    # Memory ran out at the limit's first failure: the search's, below the doubling's failure or past
    # a power the memory model put far beyond the limit (not run); a power that fitted in the
    # doubling too where it later failed in a brand-new process. Where the powers reached a cap
    # that fitted, the cap stopped them, whatever failed there later.
    first_oom = limit_of(trials, clear).first_oom
    fitted = max((t.batch_size for t in doubled if t.fits), default=0)
    failed = next((t for t in trials if t.batch_size == first_oom and t.status in MEMORY_FAILURES
                   and id(t) not in aside), None) if first_oom and (first_oom > fitted or not last.fits) else None
    if failed is not None and (failed.error or "").startswith(SETUP_RAN_OUT):
        return f"{failed.status} while setting up, before batch {failed.batch_size} ran"
    if failed is not None:
        return f"{failed.status} at batch {failed.batch_size}"
    # The cap, or the multiple of `multiple_of` below it that the doubling tried in its place.
    def reached(cap: int | None) -> bool:
        return cap is not None and last.batch_size in (cap, cap // multiple_of * multiple_of)

    if dataset_len and reached(dataset_len // world):
        return f"reached the dataset size ({dataset_len})"
    if reached(max_batch):
        return f"reached max_batch ({max_batch})"
    return "done"


def _budget_warnings(stopped: str | None, limit) -> list[str]:
    """A probe the time budget stopped before any size ran out of memory found no edge."""
    if stopped is None or not stopped.startswith("time budget") or limit.batch_size is None or limit.first_oom:
        return []
    return [f"the time budget ran out before any size was found not to fit: {limit.batch_size} is the largest size "
            "tried, and larger sizes may fit"]


def _advice_warnings(rec, facts: dict, target: int | None, ranks_here: int = 1) -> list[str]:
    """`ranks_here`: the ranks on this machine, each with its own DataLoader workers."""
    warnings = []
    reached = rec.global_batch_size or 0
    if target and rec.accumulation_steps == 1 and reached > target:
        # Accumulation only adds steps: one step of this batch already passes the batch asked for.
        # Sizes are per device; the target counts every rank's samples.
        world = reached // rec.batch_size if rec.batch_size else 1
        per_device = f" per device ({world} ranks)" if world > 1 else ""
        warnings.append(f"recommend.target_batch {target} is below the recommended batch's one step "
                        f"({reached} samples): train at a batch of {max(1, target // world)}{per_device} or below "
                        "to keep it")
    samples = facts.get("dataset_len")
    if target and samples and target > samples:
        # Every optimizer step would see the whole dataset, some samples more than once.
        warnings.append(f"recommend.target_batch {target} is more than the dataset ({plural(samples, 'sample')}): "
                        f"one optimizer step would take {target / samples:.3g} epochs")
    loader = rec.loader
    if loader and loader.get("status") == "ok" and (loader.get("data_share") or 0) > INPUT_BOUND_SHARE:
        cpus = usable_cpus()
        # Workers past the CPUs (every rank's here) only take turns with each other and with the step.
        remedy = ("raise data.workers or speed up loading" if loader["workers"] * ranks_here < cpus else
                  f"speed up loading: more workers than the {plural(cpus, 'CPU')} here would only take turns")
        warnings.append(
            f"input-bound: at batch {rec.batch_size} {loader['data_share']:.0%} of each step waits for the "
            f"DataLoader ({plural(loader['workers'], 'worker')}); {remedy}"
        )
    if loader and loader.get("status") == "ok" and (
            load := load_text(loader.get("other_cpu_share"), loader.get("steal_share"))):
        warnings.append(f"{load} while the DataLoader was timed: its step time and waiting share may be far from a "
                        "quiet machine's")
    if loader and loader.get("status") == "skipped":
        warnings.append(f"the DataLoader was not timed: {loader.get('error')}")
    elif loader and loader.get("status") != "ok":
        # Bad input says what it is (a dataset's item that raised); any other failure is named by its status.
        status = "" if loader.get("status") == "input" else f"{loader.get('status')}: "
        warnings.append(f"the DataLoader timing failed: {status}{loader.get('error')}")
    scale = rec.noise_scale
    if scale and scale.get("status") == "ok" and facts.get("data") == "synthetic":
        warnings.append("the noise scale was measured on synthetic data: it describes random data, not your task")
    if scale and scale.get("status") == "ok" and scale.get("b_simple") is None:
        warnings.append("the gradient noise scale could not be estimated: |G|² came out non-positive (all noise)")
    elif scale and scale.get("status") != "ok":
        warnings.append(f"the gradient noise scale was not estimated ({scale.get('status')}): {scale.get('error')}")
    return warnings


def _strategy_warnings(config: Config, topo: Topology | None) -> list[str]:
    if topo is None and "strategy" in config.probe.model_fields_set:
        return [f"probe.strategy {config.probe.strategy} applies to several ranks; this run was one process "
                "without it (use --nproc-per-node N or torchrun)"]
    return []


# Where a builtin model's synthetic samples take their shapes from.
_OWN_SHAPES = {MLPModel: "model.in_features and model.classes",
               CNNModel: "model.in_channels, model.image_size and model.classes",
               TransformerModel: "model.seq_len and model.vocab_size"}


def _unused_warnings(config: Config, facts: dict) -> list[str]:
    """Settings given that nothing used: a size for data that has its own, classes for float
    targets, a loss or output field for a model that computes its own loss, optimizer settings for
    a model that builds its own optimizers, and a learning-rate rule with no batch the rate was
    tuned for."""
    warnings = []
    if unused := facts.get("unused_parameters"):
        named = ", ".join(unused[:3]) + (f" and {len(unused) - 3} more" if len(unused) > 3 else "")
        warnings.append(f"{plural(len(unused), 'trainable parameter')} of the model get no gradient ({named}): DDP "
                        "ran with find_unused_parameters=True, as a training run under DDP must (or freeze them, which "
                        "spares DDP its search for them after every forward)")
    if "size" in config.data.model_fields_set and config.data.kind != "synthetic":
        # Set-up that did not finish (nothing fit, an interrupt) never read the data's length.
        length = f" ({facts['dataset_len']})" if facts.get("dataset_len") is not None else ""
        warnings.append(f"data.size: not used; the {config.data.kind} data's own length{length} "
                        "sets the steps per epoch")
    data = config.data
    loading = sorted({"workers", "pin_memory"} & data.model_fields_set)
    if loading and data.kind == "synthetic":
        warnings.append(f"{', '.join('data.' + key for key in loading)}: not used; synthetic data is made on the "
                        "device, and no DataLoader is timed")
    own = _OWN_SHAPES.get(type(config.model))
    if own and data.kind == "synthetic" and data.inputs is None:
        # A builtin model's random samples take their shapes from the model; a custom loss still
        # reads whether num_classes is given (classes or regression).
        shaping = {"input_shape", "input_dtype", "vocab_size", "target_shape", "image_size", "channels"}
        shaping |= {"num_classes"} if config.train.builtin_loss else set()
        ignored = sorted(shaping & data.model_fields_set)
        if ignored:
            warnings.append(f"{', '.join('data.' + key for key in ignored)}: not used; the builtin "
                            f"{config.model.name}'s synthetic samples follow {own}")
    elif own is None and classes_unused(config):
        warnings.append(f"data.num_classes: not used; {FLOAT_TARGETS}")
    if own is None and data.kind == "synthetic":
        # Shapes for images read from a folder (or the builtin cnn's): a model of one's own on
        # synthetic data takes `input_shape`, or `inputs`, which names every tensor itself.
        shaping = {"image_size", "channels"}
        if data.inputs is not None:
            shaping |= {"input_dtype", "vocab_size", "target_shape", "num_classes"}
        ignored = sorted(shaping & data.model_fields_set)
        if ignored:
            what = ("data.inputs names every tensor of the samples" if data.inputs is not None
                    else "a model of one's own takes synthetic samples of data.input_shape")
            warnings.append(f"{', '.join('data.' + key for key in ignored)}: not used; {what}")
    if data.kind not in ("synthetic", "tensors", "imagefolder"):
        if "path" in data.model_fields_set:
            warnings.append(f"data.path: not used; the dataset factory {data.kind} is called with data.kwargs "
                            "only (give it the path there)")
    elif data.kind != "synthetic" and data.kwargs:
        warnings.append(f"data.kwargs: not used; {data.kind} data is read from data.path as it is")
    if data.kind != "synthetic":
        # These shape synthetic samples; items read from files or a dataset of one's own have their own.
        shaping = {"input_shape", "input_dtype", "vocab_size", "target_shape", "num_classes", "inputs"}
        shaping |= {"image_size", "channels"} if data.kind != "imagefolder" else set()
        ignored = sorted(shaping & data.model_fields_set)
        if ignored:
            warnings.append(f"{', '.join('data.' + key for key in ignored)}: not used; the {data.kind} data's items "
                            "have shapes of their own")
    train = config.train
    if not facts.get("own_optimizers"):
        # A factory optimizer takes its settings from train.optimizer_kwargs (and train.lr), and
        # Adam and AdamW have no momentum.
        factory = train.optimizer not in OPTIMIZERS
        unread = ("momentum", "weight_decay") if factory else ("momentum",) if train.optimizer in ("adam", "adamw") else ()
        ignored = [f"train.{key}" for key in unread if key in train.model_fields_set]
        if ignored:
            why = (f"the factory optimizer {train.optimizer} takes its settings from train.optimizer_kwargs" if factory
                   else f"{train.optimizer} has no momentum (its betas stand in for it)")
            warnings.append(f"{', '.join(ignored)}: not used; {why}")
    # A step of one's own (or a LightningModule's training_step) takes the batch as it comes, calls
    # the model and computes the loss itself: how batchfind's step would do those is not read. The
    # data still reads two of them: `loss` makes synthetic targets floats (mse) or classes, and
    # `target` names the key that padding fills with the loss's ignore index.
    own_step = (f"train.step {train.step} calls the model and computes the loss itself" if train.step
                else "the LightningModule's training_step calls the model and computes the loss itself"
                if facts.get("own_optimizers") else None)
    shapes_targets = data.kind == "synthetic" and data.inputs is None
    scoring = [key for key in ("output", "loss", "call", "forward_kwargs") if key in train.model_fields_set
               and not (key == "loss" and shapes_targets and own_step)]
    if own_step and scoring:
        warnings.append(f"{', '.join('train.' + key for key in scoring)}: not used; {own_step}")
    elif facts.get("own_loss") and (scoring := [key for key in scoring if key in ("output", "loss")]):
        warnings.append(f"{', '.join('train.' + key for key in scoring)}: not used; the model's output has its "
                        "own `loss`, and that is what trains")
    unused = [f"train.{key}" for key in sorted({"optimizer", "lr", "momentum", "weight_decay", "optimizer_kwargs",
                                                "reference_batch"} & train.model_fields_set)]
    unused += ["recommend.lr_rule"] if "lr_rule" in config.recommend.model_fields_set else []
    if facts.get("own_optimizers") and unused:
        warnings.append(f"{', '.join(unused)}: not used; the LightningModule's configure_optimizers builds its "
                        "optimizers (and no learning rate is scaled for it)")
    elif config.recommend.lr_rule in ("linear", "sqrt") and train.reference_batch is None:
        # Asked for by name: `auto` is the default (the templates write it out) and `none` scales nothing.
        warnings.append(f"recommend.lr_rule: {config.recommend.lr_rule} scales train.lr from the batch it was tuned "
                        "for, train.reference_batch, which is not set: no learning rate is given")
    return warnings


def _load_warnings(trials: list[Trial]) -> list[str]:
    load = busy(trials)
    if load is None:
        return []
    return [f"{load[0]} while throughput was timed (median of {load[1]} trials): steps ran slower and noisier "
            "than on a quiet machine, and the recommendation may change from run to run"]


def _length_warnings(lengths: dict[str, int] | None) -> list[str]:
    if not lengths or lengths["scanned"] >= lengths["total"]:
        return []
    return [
        f"inputs vary in length; batches used the longest of the first {lengths['scanned']} of "
        f"{lengths['total']} items ({lengths['longest']}): longer items later in the dataset would need more memory"
    ]


def _setup_error(exc: SetupFailed) -> BatchfindError:
    if exc.status == "input":
        return InputError(exc.message)
    return BatchfindError(f"could not set up the probe ({exc.status}): {exc.message}")


# How a report's only trial says that set-up, not a batch, ran out of memory.
SETUP_RAN_OUT = "setting up (Python, torch, the model) ran out of memory before any batch ran"


def _nothing_fits(message: str, data: DataConfig, limited: bool = True) -> str:
    """`limited`: whether a memory limit was set (a CPU always has one; a GPU without one had the whole card)."""
    import psutil

    # Python, torch and the model come first; under a small cap any of them may be what ran out.
    # The allocator's words cut short, so the advice after them stays whole.
    text = f"{SETUP_RAN_OUT}: {clipped(message, 200)}; "
    raise_limit = "raise the memory limit (probe.memory_limit, or --memory-limit on probe and check), or make the "
    if not limited and any(word in message for word in ("CUDA", "CUDNN", "CUBLAS")):
        raise_limit = ("no memory limit was set, so the whole GPU ran out: a GPU with more memory, "
                       "train.precision bf16 or fp16 where it is fp32, or make the ")
    largest = _largest_input(data)
    per_sample = f"samples smaller ({largest[0]} holds {format_size(largest[1])} per sample)" if largest else None
    failed = failed_allocation(message)
    ram = psutil.virtual_memory().total
    if STACKED_RAN_OUT in message:
        # The batch is made before the model sees it: the data's size, whatever the model.
        text = f"{SETUP_RAN_OUT}: {STACKED_RAN_OUT}" + (f" ({format_size(failed)} in one allocation)" if failed else "")
        named = data.path or (data.kind if data.kind != "synthetic" else None)
        samples = per_sample or (f"samples of {named} smaller" if named else "samples smaller")
        if failed and "CUDA" not in message and failed > ram:
            return text + f", more than all of this machine's memory ({format_size(ram)}): make the {samples}"
        return text + "; " + raise_limit + samples
    if per_sample and failed and 2 * largest[1] >= failed:
        # An allocation no larger than set-up's check of two samples: the data's size, not the model's.
        return text + raise_limit + per_sample
    if failed and "CUDA" not in message and failed > ram:
        # No limit holds it on this machine's CPU: raising one cannot help.
        return text + (f"that one allocation ({format_size(failed)}) is more than all of this machine's memory "
                       f"({format_size(ram)}): look at what the model allocates for two samples")
    if data.kind == "tensors" and data.path is not None and data.path.is_file():
        # Set-up loads a tensors file whole: it may be the file, not the model, that does not fit.
        return text + raise_limit + (f"model or the data smaller ({data.path}, {format_size(data.path.stat().st_size)} "
                                     "on disk, is loaded whole)")
    return text + raise_limit + "model smaller"


# Bytes per element of the dtypes synthetic inputs may take.
_ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "bool": 1}


def _largest_input(data: DataConfig) -> tuple[str, int] | None:
    """The synthetic input given the most bytes per sample by its shape in the config, and how many."""
    if data.inputs:
        return max(((f"data.inputs.{name}", math.prod(spec.shape) * _ELEMENT_BYTES[spec.dtype])
                    for name, spec in data.inputs.items()), key=lambda named: named[1])
    if data.input_shape is not None:
        return "data.input_shape", math.prod(data.input_shape) * _ELEMENT_BYTES[data.input_dtype]
    return None


def _non_finite(trials: list[Trial]) -> list[str]:
    """One line for every size whose loss was not finite: at every size it is the model, not the batch."""
    ran = {t.batch_size for t in trials if t.fits}
    sizes = sorted({t.batch_size for t in trials if t.fits and t.loss_finite is False})
    if not sizes:
        return []
    if len(sizes) == len(ran):
        return [f"the loss was not finite (NaN or inf) at every size that ran ({sizes[0]} to {sizes[-1]}): "
                "look at the model, its loss and train.lr, not the batch size"]
    return [f"batch {', '.join(map(str, sizes))}: the loss was not finite (NaN or inf); not recommended"]


def _warnings(trials: list[Trial], limit, clear: Callable[[Trial], bool] | None = None) -> list[str]:
    warnings = _non_finite(trials)
    cleared = sorted({t.batch_size for t in search.disowned(trials, clear)})
    if cleared:
        warnings.append(
            f"batch {', '.join(map(str, cleared))} failed in a long-lived worker, which held what earlier sizes "
            "left, but fitted in a brand-new process with memory to spare: the probe went on past it"
        )
    contradicted = [t for t in trials if t.fits and limit.first_oom and t.batch_size >= limit.first_oom]
    if contradicted:
        # Near the edge a CPU's memory differs between processes, either way round.
        kinds = {t.fresh_process for t in contradicted}
        where = "a brand-new process" if kinds == {True} else "a long-lived worker" if kinds == {False} else "some processes"
        sizes = ", ".join(map(str, sorted({t.batch_size for t in contradicted})))
        warnings.append(
            f"batch {sizes} fitted in {where} but ran out of memory in another (at {limit.first_oom} or below); "
            f"the limit is {limit.batch_size}"
        )
    doubled = [t for t in trials if t.phase == "double"]
    for t in trials:
        if t.status == "error" and not (limit.batch_size is None and t is trials[0]):
            # Not the memory edge: a bug, or a crash, at this size. (Where even the first size
            # failed, the command's last line says so, and says it once.)
            # Where nothing fitted before it, nothing says a larger size would.
            ended = bool(doubled) and t is doubled[-1] and any(d.fits for d in doubled)
            error = clipped(t.error or "no message", 200)
            warnings.append(f"batch {t.batch_size} failed with an error, not for lack of memory: {error}"
                            + ("; the probe stopped there, so larger sizes may fit" if ended else ""))
    if limit.batch_size is not None and not limit.verified:
        errored = any(t.status == "error" and t.fresh_process and t.batch_size == limit.batch_size for t in trials)
        why = "its check there failed with an error, above" if errored else "time budget, interrupt or bad input"
        warnings.append(f"the limit {limit.batch_size} was not confirmed in a fresh process ({why})")
    return warnings
