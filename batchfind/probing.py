"""The probe: config in, typed report out. Runs trials in worker processes and never prints."""

from __future__ import annotations

import dataclasses
import platform
import time
from typing import Callable

from . import __version__, noise, search
from .config import Config
from .errors import BatchfindError, InputError, NothingFits
from .memory import MemoryModel, fit
from .recommend import limit_of, recommend, with_training_plan
from .report import MEMORY_FAILURES, STATUSES, Distributed, Environment, Report, Trial
from .distributed import Agreement, AgreementLost, Topology, topology
from .group import Group
from .worker import SetupFailed

# A step whose p90 is this much above its p10 is too noisy to rank sizes by.
NOISY_SPREAD = 0.25
# Batches at each of the two sizes for the gradient noise scale.
NOISE_BATCHES = 12
# Above this share of a step spent waiting for data, training is input-bound.
INPUT_BOUND_SHARE = 0.2


class Prober:
    """Runs trials and keeps them. Holds one live group of workers (one per rank this process
    drives), replaced after any trial that did not end cleanly (memory after a failure is not a
    clean place to measure), or after every trial while `fresh_only` is set."""

    def __init__(self, config: Config, on_start: Callable[[int, str], None] | None,
                 on_end: Callable[[Trial], None] | None, topo: Topology | None = None):
        self.config, self.on_start, self.on_end, self.topo = config, on_start, on_end, topo
        self.raw = config.model_dump(mode="json")
        timeout = config.probe.trial_timeout_s
        # Other drivers may spend a whole trial timeout, then stop their workers, before they answer.
        self.agreement = Agreement(topo, 2 * timeout + 60) if topo and not topo.drives_all else None
        self.world_size = topo.world_size if topo else 1
        self.group: Group | None = None
        self.generation = 0
        self.trials: list[Trial] = []
        self.phase = "double"
        self.fresh_only = False

    def start(self) -> dict:
        self.group = self._spawn()
        return self.group.ready

    def _spawn(self) -> Group:
        self.generation += 1
        return Group(self.raw, self.config.probe.trial_timeout_s, self.topo, self.agreement, self.generation)

    def try_batch(self, size: int) -> Trial:
        if self.on_start:
            self.on_start(size, self.phase)
        try:
            if self.group is None:
                self.group = self._spawn()
            result = self.group.run(size, self.config.probe.trial_timeout_s)
            trial = Trial.from_dict({**result, "phase": self.phase})
        except SetupFailed as exc:
            status = exc.status if exc.status in STATUSES else "error"
            trial = Trial(batch_size=size, status=status, error=exc.message, fresh_process=True, phase=self.phase)
        if not trial.fits or self.fresh_only:
            self.close()
        self.trials.append(trial)
        if self.on_end:
            self.on_end(trial)
        return trial

    def try_fresh(self, size: int) -> Trial:
        self.close()
        return self.try_batch(size)

    def ask(self, request: dict) -> dict:
        """A request other than a trial, in a brand-new worker; a failure comes back as its status."""
        self.close()
        try:
            self.group = self._spawn()
            reply = self.group.call(request, self.config.probe.trial_timeout_s)
        except SetupFailed as exc:
            reply = {"status": exc.status, "error": exc.message}
        self.close()
        return reply

    def close(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None


@dataclasses.dataclass
class PlanResult:
    """What a plan hands back beside the trials the prober kept."""

    model: MemoryModel | None = None
    refined: bool = False
    advise: bool = False  # measure what the recommendation needs beyond the trials


Plan = Callable[[Prober, dict, Callable[[], bool]], PlanResult]


def probe(
    config: Config,
    *,
    on_trial_start: Callable[[int, str], None] | None = None,
    on_trial_end: Callable[[Trial], None] | None = None,
    memory_model: bool = True,
) -> Report:
    """Double up to the first failure, refine to the exact edge, verify it in a fresh process.

    `memory_model=False` refines by plain bisection (for comparison). Ctrl-C returns the partial
    report with `interrupted` set.
    """
    p = config.probe

    def plan(prober: Prober, facts: dict, keep_going: Callable[[], bool]) -> PlanResult:
        dataset_len, world = facts["dataset_len"], prober.world_size
        per_rank = dataset_len // world  # each rank's share of an epoch
        if p.min_batch > per_rank:
            raise InputError(f"probe.min_batch: {p.min_batch}{_ranks(world)} is larger than the dataset ({dataset_len} samples)")
        high = min(p.max_batch or per_rank, per_rank)
        outcome = PlanResult()
        doubled = search.double(prober.try_batch, p.min_batch, high, keep_going)
        ceiling = facts.get("memory_limit_bytes") or facts.get("memory_total_bytes")
        outcome.model = fit(prober.trials, ceiling)
        last = doubled[-1] if doubled else None
        fits = limit_of(prober.trials).batch_size
        if p.refine and last is not None and last.status in MEMORY_FAILURES and fits is not None:
            # Near the edge, measure in the kind of process that proves the answer: a brand-new one.
            prober.phase, prober.fresh_only = "refine", True
            search.refine(
                prober.try_batch, fits, last.batch_size, multiple_of=p.multiple_of,
                predict=(lambda: _edge(fit(prober.trials, ceiling))) if memory_model else None,
                keep_going=keep_going,
            )
            outcome.refined = True
        _verify(prober, keep_going)
        outcome.advise = True
        return outcome

    return _run(config, plan, on_trial_start, on_trial_end, _topology(config))


def _ranks(world: int) -> str:
    return f" × {world} ranks" if world > 1 else ""


def _topology(config: Config) -> Topology | None:
    # The rendezvous waits for every rank; give it as long as a trial may take.
    return topology(config.probe.nproc_per_node, config.probe.trial_timeout_s)


def _decide(trials: list[Trial], outcome: PlanResult, config: Config, facts: dict, world_size: int):
    """Trials with their training plan, the limit, the recommendation and its notes."""
    trials = with_training_plan(trials, config.train, config.recommend, world_size)
    limit = limit_of(trials, predicted_batch_size=_edge(outcome.model), refined=outcome.refined)
    limit_bytes = facts.get("memory_limit_bytes") or facts.get("memory_total_bytes")
    recommendation, notes = recommend(trials, limit, config.recommend, limit_bytes, facts.get("batchnorm", False),
                                      world_size)
    return trials, limit, recommendation, notes


def _advise(prober: Prober, config: Config, facts: dict, size: int | None, limit_size: int | None) -> dict:
    """At the recommended size, in a fresh worker: steps through the DataLoader for data read from
    files, and the gradient noise scale when asked for."""
    extras: dict = {}
    if size is None:
        return extras
    if facts["data"] != "synthetic":
        extras["loader"] = prober.ask({"op": "loader", "batch_size": size})
    if config.recommend.noise_scale:
        # Two sizes at least 2 apart are needed; BatchNorm needs 2 samples in a batch.
        big = min(max(size, 4), limit_size or size)
        small = max(2, big // 8)
        if big < 4:
            extras["noise_scale"] = {"status": "skipped", "error": f"needs a batch of at least 4 that fits (limit {big})"}
            return extras
        reply = prober.ask({"op": "noise", "small": small, "big": big, "batches": NOISE_BATCHES})
        if reply.get("status") == "ok":
            # Across ranks the gradient is averaged over every rank's batch: the global batch.
            world = prober.world_size
            scale = noise.estimate(small * world, reply["small"], big * world, reply["big"])
            extras["noise_scale"] = {**dataclasses.asdict(scale), "status": "ok", "measured_at": "initial weights"}
        else:
            extras["noise_scale"] = {"status": reply.get("status"), "error": reply.get("error")}
    return extras


def _edge(model: MemoryModel | None) -> int | None:
    return model.predicted_edge if model else None


def _verify(prober: Prober, keep_going: Callable[[], bool]) -> None:
    """Re-run the limit in a brand-new process unless it already ran in one; step down if it fails."""
    while keep_going():
        limit = limit_of(prober.trials)
        if limit.batch_size is None or limit.verified:
            return
        prober.phase = "verify"
        trial = prober.try_fresh(limit.batch_size)
        if trial.fits:
            return
        below = limit_of(prober.trials).batch_size
        if below is None:
            return
        prober.phase, prober.fresh_only = "refine", True
        search.refine(prober.try_batch, below, trial.batch_size,
                      multiple_of=prober.config.probe.multiple_of, keep_going=keep_going)


def check(
    config: Config,
    batch_size: int,
    *,
    on_trial_start: Callable[[int, str], None] | None = None,
    on_trial_end: Callable[[Trial], None] | None = None,
) -> Report:
    """Run one batch size in a brand-new process for the measured steps: does it still fit?"""

    def plan(prober: Prober, facts: dict, keep_going: Callable[[], bool]) -> PlanResult:
        world = prober.world_size
        if batch_size * world > facts["dataset_len"]:
            raise InputError(f"--batch: {batch_size}{_ranks(world)} is larger than the dataset ({facts['dataset_len']} samples)")
        prober.phase = "verify"
        prober.try_batch(batch_size)
        return PlanResult()

    return _run(config, plan, on_trial_start, on_trial_end, _topology(config))


def validate(config: Config) -> Report:
    """One training step of two samples on CPU: model and data build and agree. No probing."""
    cpu = config.model_copy(update={"probe": config.probe.model_copy(
        update={"device": "cpu", "warmup_steps": 0, "steps": 1, "memory_limit": None, "nproc_per_node": None})})

    def plan(prober: Prober, facts: dict, keep_going: Callable[[], bool]) -> PlanResult:
        prober.try_batch(min(2, facts["dataset_len"]))
        return PlanResult()

    return _run(cpu, plan, None, None, None)


def _run(
    config: Config,
    plan: Plan,
    on_trial_start: Callable[[int, str], None] | None,
    on_trial_end: Callable[[Trial], None] | None,
    topo: Topology | None,
) -> Report:
    started = time.monotonic()
    budget = config.probe.time_budget_s
    prober = Prober(config, on_trial_start, on_trial_end, topo)
    interrupted = False
    outcome = PlanResult()
    stopped = None
    facts: dict = {}

    def keep_going() -> bool:
        nonlocal stopped
        go = budget is None or time.monotonic() - started <= budget
        if prober.agreement:  # clocks differ between nodes: rank 0's says for all
            go = prober.agreement.decide(go)
        if not go:
            stopped = f"time budget of {budget:g} s spent"
        return go

    extras: dict = {}
    decision = None
    try:
        try:
            facts = prober.start()
        except SetupFailed as exc:
            raise _setup_error(exc) from None
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
        raise
    finally:
        prober.close()
        if prober.agreement:
            prober.agreement.finish()
    trials, limit, recommendation, notes = decision or _decide(prober.trials, outcome, config, facts, prober.world_size)
    recommendation = dataclasses.replace(recommendation, **extras)
    model = outcome.model
    return Report(
        tool={"name": "batchfind", "version": __version__},
        environment=Environment(
            torch_version=facts.get("torch_version"),
            device=facts.get("device"),
            device_name=facts.get("device_name"),
            memory_total_bytes=facts.get("memory_total_bytes"),
            memory_limit_bytes=facts.get("memory_limit_bytes"),
            threads=facts.get("threads"),
            python=platform.python_version(),
            platform=platform.platform(),
        ),
        config=prober.raw,
        dataset_len=facts.get("dataset_len"),
        parameters=facts.get("parameters"),
        input_lengths=facts.get("input_lengths"),
        trials=trials,
        limit=limit,
        memory_model=dataclasses.asdict(model) | {"predicted_edge": model.predicted_edge} if model else None,
        recommendation=recommendation,
        warnings=_warnings(trials, limit) + notes + _length_warnings(facts.get("input_lengths"))
        + _advice_warnings(recommendation, facts) + _strategy_warnings(config, topo),
        interrupted=interrupted,
        stopped_because=stopped or _why_stopped(trials, facts.get("dataset_len"), config.probe.max_batch,
                                                 prober.world_size),
        wall_s=time.monotonic() - started,
        distributed=Distributed(
            strategy=config.probe.strategy, world_size=topo.world_size, nodes=topo.nodes,
            backend=facts.get("backend"), launcher=topo.launcher,
        ) if topo else None,
    )


def _why_stopped(trials: list[Trial], dataset_len: int | None, max_batch: int | None, world: int) -> str | None:
    doubled = [t for t in trials if t.phase == "double"]
    if not doubled:
        return None
    last = doubled[-1]
    if not last.fits:
        return f"{last.status} at batch {last.batch_size}"
    if dataset_len and last.batch_size == dataset_len // world:
        return f"reached the dataset size ({dataset_len})"
    if last.batch_size == max_batch:
        return f"reached max_batch ({max_batch})"
    return "done"


def _advice_warnings(rec, facts: dict) -> list[str]:
    warnings = []
    loader = rec.loader
    if loader and loader.get("status") == "ok" and (loader.get("data_share") or 0) > INPUT_BOUND_SHARE:
        warnings.append(
            f"input-bound: at batch {rec.batch_size} {loader['data_share']:.0%} of each step waits for the "
            f"DataLoader ({loader['workers']} workers); raise data.workers or speed up loading"
        )
    elif loader and loader.get("status") != "ok":
        warnings.append(f"the DataLoader timing failed: {loader.get('status')}: {loader.get('error')}")
    scale = rec.noise_scale
    if scale and scale.get("status") == "ok" and facts.get("data") == "synthetic":
        warnings.append("the noise scale was measured on synthetic data: it describes random data, not your task")
    if scale and scale.get("status") == "ok" and scale.get("b_simple") is None:
        warnings.append("the gradient noise scale could not be estimated: |G|² came out non-positive (all noise)")
    return warnings


def _strategy_warnings(config: Config, topo: Topology | None) -> list[str]:
    if topo is None and "strategy" in config.probe.model_fields_set:
        return [f"probe.strategy {config.probe.strategy} applies to several ranks; this probe ran one process "
                "without it (use --nproc-per-node N or torchrun)"]
    return []


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
    if exc.status in ("oom", "killed"):
        return NothingFits(f"the model does not fit in memory before any batch ran: {exc.message}")
    return BatchfindError(f"could not set up the probe ({exc.status}): {exc.message}")


def _warnings(trials: list[Trial], limit) -> list[str]:
    warnings = [
        f"batch {t.batch_size}: the loss was not finite (NaN or inf); it is not recommended"
        for t in trials
        if t.fits and not t.loss_finite
    ]
    noisy = sorted({
        t.batch_size
        for t in trials
        if t.fits and t.step_ms and t.step_ms.p10 > 0 and t.step_ms.p90 / t.step_ms.p10 - 1 > NOISY_SPREAD
    })
    if noisy:
        warnings.append(
            f"step times varied by more than {NOISY_SPREAD:.0%} (p10 to p90) at batch {', '.join(map(str, noisy))}: "
            "throughput there is uncertain; more --steps or a quieter machine will tell"
        )
    contradicted = sorted({t.batch_size for t in trials if t.fits and limit.first_oom and t.batch_size >= limit.first_oom})
    if contradicted:
        warnings.append(
            f"batch {', '.join(map(str, contradicted))} ran in a long-lived worker but a fresh process or a later "
            f"trial ran out of memory at {limit.first_oom} or below; the limit is {limit.batch_size}"
        )
    if limit.batch_size is not None and not limit.verified:
        warnings.append(f"the limit {limit.batch_size} was not confirmed in a fresh process (time budget or interrupt)")
    return warnings
