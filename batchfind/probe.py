"""The probe: config in, typed report out. Runs trials in worker processes and never prints."""

from __future__ import annotations

import platform
import time
from typing import Callable

from . import __version__, search
from .config import Config
from .errors import BatchfindError, InputError, NothingFits
from .recommend import limit_of, recommend
from .report import Environment, Report, STATUSES, Trial
from .worker import SetupFailed, Worker

# A step whose p90 is this much above its p10 is too noisy to rank sizes by.
NOISY_SPREAD = 0.25


class Prober:
    """Holds the one live worker; replaces it after any trial that did not end cleanly."""

    def __init__(self, config: Config, on_start: Callable[[int], None] | None, on_end: Callable[[Trial], None] | None):
        self.config, self.on_start, self.on_end = config, on_start, on_end
        self.raw = config.model_dump(mode="json")
        self.worker: Worker | None = None
        self.trials: list[Trial] = []

    def start(self) -> dict:
        self.worker = self._spawn()
        return self.worker.ready

    def _spawn(self) -> Worker:
        return Worker(self.raw, self.config.probe.trial_timeout_s)

    def try_batch(self, size: int) -> Trial:
        if self.on_start:
            self.on_start(size)
        try:
            if self.worker is None:
                self.worker = self._spawn()
            trial = Trial.from_dict(self.worker.run(size, self.config.probe.trial_timeout_s))
        except SetupFailed as exc:
            status = exc.status if exc.status in STATUSES else "error"
            trial = Trial(batch_size=size, status=status, error=exc.message, fresh_process=True)
        if not trial.fits:
            # Memory after a failure is not a clean place to measure: the next trial gets a new process.
            self.close()
        self.trials.append(trial)
        if self.on_end:
            self.on_end(trial)
        return trial

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


Plan = Callable[[Callable[[int], Trial], int, Callable[[], bool]], list[Trial]]


def probe(
    config: Config,
    *,
    on_trial_start: Callable[[int], None] | None = None,
    on_trial_end: Callable[[Trial], None] | None = None,
) -> Report:
    """Probe batch sizes for `config`. Ctrl-C returns the partial report with `interrupted` set."""
    p = config.probe

    def plan(try_batch: Callable[[int], Trial], dataset_len: int, keep_going: Callable[[], bool]) -> list[Trial]:
        if p.min_batch > dataset_len:
            raise InputError(f"probe.min_batch: {p.min_batch} is larger than the dataset ({dataset_len} samples)")
        return search.double(try_batch, p.min_batch, min(p.max_batch or dataset_len, dataset_len), keep_going)

    return _run(config, plan, on_trial_start, on_trial_end)


def check(
    config: Config,
    batch_size: int,
    *,
    on_trial_start: Callable[[int], None] | None = None,
    on_trial_end: Callable[[Trial], None] | None = None,
) -> Report:
    """Run one batch size in a brand-new process for the measured steps: does it still fit?"""

    def plan(try_batch: Callable[[int], Trial], dataset_len: int, keep_going: Callable[[], bool]) -> list[Trial]:
        if batch_size > dataset_len:
            raise InputError(f"--batch: {batch_size} is larger than the dataset ({dataset_len} samples)")
        return [try_batch(batch_size)]

    return _run(config, plan, on_trial_start, on_trial_end)


def _run(
    config: Config,
    plan: Plan,
    on_trial_start: Callable[[int], None] | None,
    on_trial_end: Callable[[Trial], None] | None,
) -> Report:
    started = time.monotonic()
    budget = config.probe.time_budget_s
    prober = Prober(config, on_trial_start, on_trial_end)
    interrupted = False
    stopped = None
    facts: dict = {}

    def keep_going() -> bool:
        nonlocal stopped
        if budget is not None and time.monotonic() - started > budget:
            stopped = f"time budget of {budget:g} s spent"
            return False
        return True

    try:
        try:
            facts = prober.start()
        except SetupFailed as exc:
            raise _setup_error(exc) from None
        trials = plan(prober.try_batch, facts["dataset_len"], keep_going)
        if stopped is None and trials:
            stopped = _why_stopped(trials[-1], facts["dataset_len"], config.probe.max_batch)
    except KeyboardInterrupt:
        interrupted, stopped = True, "interrupted"
    finally:
        prober.close()
    trials = prober.trials
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
        trials=trials,
        limit=limit_of(trials),
        recommendation=recommend(trials),
        warnings=_warnings(trials),
        interrupted=interrupted,
        stopped_because=stopped,
        wall_s=time.monotonic() - started,
    )


def _why_stopped(last: Trial, dataset_len: int, max_batch: int | None) -> str:
    if not last.fits:
        return f"{last.status} at batch {last.batch_size}"
    if last.batch_size == dataset_len:
        return f"reached the dataset size ({dataset_len})"
    if last.batch_size == max_batch:
        return f"reached max_batch ({max_batch})"
    return "done"


def _setup_error(exc: SetupFailed) -> BatchfindError:
    if exc.status == "input":
        return InputError(exc.message)
    if exc.status in ("oom", "killed"):
        return NothingFits(f"the model does not fit in memory before any batch ran: {exc.message}")
    return BatchfindError(f"could not set up the probe ({exc.status}): {exc.message}")


def _warnings(trials: list[Trial]) -> list[str]:
    warnings = [
        f"batch {t.batch_size}: the loss was not finite (NaN or inf); it is not recommended"
        for t in trials
        if t.fits and not t.loss_finite
    ]
    noisy = [
        t.batch_size
        for t in trials
        if t.fits and t.step_ms and t.step_ms.p10 > 0 and t.step_ms.p90 / t.step_ms.p10 - 1 > NOISY_SPREAD
    ]
    if noisy:
        warnings.append(
            f"step times varied by more than {NOISY_SPREAD:.0%} (p10 to p90) at batch {', '.join(map(str, noisy))}: "
            "throughput there is uncertain; more --steps or a quieter machine will tell"
        )
    return warnings
