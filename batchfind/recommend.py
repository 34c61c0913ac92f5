"""Choosing the batch to train with from measured trials, and the learning rate and accumulation
that go with each size. Pure arithmetic on the trials."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from . import curve, search
from .config import OPTIMIZERS, RecommendConfig, TrainConfig
from .report import MEMORY_FAILURES, Limit, Recommendation, Trial, latest_timed, timed
from .sizes import rate_text

# Square-root scaling keeps Adam's per-step noise in proportion (Malladi et al., 2022); linear
# scaling is the usual rule for SGD (Goyal et al., 2017).
AUTO_RULE = {"sgd": "linear", "rmsprop": "linear", "adam": "sqrt", "adamw": "sqrt"}
# Below this many samples per micro-batch, BatchNorm's statistics get noisy enough to hurt.
SMALL_BATCHNORM_BATCH = 16


def limit_of(trials: list[Trial], clear: Callable[[Trial], bool] | None = None, **extra) -> Limit:
    """The largest size that ran below the smallest that failed for memory (failures
    `search.disowned` by a brand-new process aside).

    A size that ran in a long-lived worker but failed when re-run in a fresh process is a failure.
    """
    aside = {id(t) for t in search.disowned(trials, clear)}
    first_oom = min((t.batch_size for t in trials if t.status in MEMORY_FAILURES and id(t) not in aside), default=None)
    fitting = [t for t in trials if t.fits and (first_oom is None or t.batch_size < first_oom)]
    largest = max((t.batch_size for t in fitting), default=None)
    verified = any(t.batch_size == largest and t.fresh_process for t in fitting)
    return Limit(batch_size=largest, first_oom=first_oom, verified=verified, **extra)


def percent(share: float) -> str:
    """A setting's share as written, `2.5%` or `0.4%`: rounded to a whole percent it could read as
    another setting (0.025 as 2%, 0.004 as 0%)."""
    return f"{share * 100:.3g}%"


def lr_rule(rule: str, optimizer: str) -> str:
    # An optimizer of your own has no known rule: its learning rate is left as it is.
    return AUTO_RULE.get(optimizer, "none") if rule == "auto" else rule


def scaled_lr(lr: float, batch: int, reference: int | None, rule: str) -> float | None:
    if reference is None or rule == "none":
        return None if reference is None else lr
    ratio = batch / reference
    return lr * (ratio if rule == "linear" else math.sqrt(ratio))


def accumulation(batch: int, target: int | None) -> int | None:
    """Steps of `batch` samples reaching at least `target` samples per optimizer step."""
    return None if target is None else max(1, -(-target // batch))  # exact in integers


def with_training_plan(trials: list[Trial], train: TrainConfig, rec: RecommendConfig, world_size: int = 1,
                       own_optimizers: bool = False, optimizer_lr: float | None = None) -> list[Trial]:
    """Each trial with its global batch (per-device batch × ranks × accumulation steps toward the
    target batch) and the learning rate scaled to it: the optimizer sees the global batch. A model
    that builds its own optimizers (a LightningModule) gets no learning rate: `train.lr` is not its.
    A factory optimizer given no lr trains at its own default (`optimizer_lr`, as the built optimizer
    holds it), not at `train.lr`'s."""
    rule = lr_rule(rec.lr_rule, train.optimizer)
    base = train.lr if train.optimizer in OPTIMIZERS or "lr" in train.model_fields_set else optimizer_lr
    planned = []
    for t in trials:
        per_step = t.batch_size * world_size
        steps = accumulation(per_step, rec.target_batch)
        global_batch = per_step * (steps or 1)
        lr = None if own_optimizers or base is None else scaled_lr(base, global_batch, train.reference_batch, rule)
        planned.append(dataclasses.replace(t, lr=lr, accumulation_steps=steps, global_batch_size=global_batch))
    return planned


def noisy(trial: Trial, tolerance: float) -> bool:
    """Its throughput is uncertain by more than the tolerance: sizes that close cannot be told apart
    by it alone. A single measured step gives no interval at all."""
    return trial.uncertainty > tolerance or trial.throughput_range == (0.0, math.inf)


def bar(trials: list[Trial], tolerance: float) -> float | None:
    """The samples/s a size larger than every size timed must beat for its throughput to be worth
    measuring in full, once throughput has stopped rising: the largest size timed did not beat every
    smaller one by more than the tolerance (a GPU's plateau; on a CPU, a batch that outgrew a
    cache, or whose tensors the allocator maps afresh each step). A larger size can then be the
    batch to train with only if it is faster than the size chosen so far by more than the
    tolerance leaves of the low end of that size's interval. None while throughput rises: every
    size is measured in full.

    The bar is for a trial's quickest step after its warm-up, the most its size can be credited
    with; a size judged on one step that stalled is judged slow, as a fit check's would be. On a CPU
    a first warm-up step far past it ends the trial too (`measure.StepPlan.dismissed`)."""
    latest = latest_timed(trials)
    largest = latest.pop(max(latest)) if latest else None
    if not latest or largest.samples_per_s * (1 - tolerance) > max(t.samples_per_s for t in latest.values()):
        return None
    chosen, _ = choice([*latest.values(), largest], tolerance)
    return to_change(chosen, tolerance)


def to_change(chosen: Trial, tolerance: float) -> float | None:
    """The samples/s a larger size must reach to be the batch to train with instead of `chosen`:
    faster by more than the tolerance leaves of the low end of `chosen`'s interval."""
    low = chosen.throughput_range[0]
    # No interval (a single step) rules no size out.
    return low / (1 - tolerance) if low > 0 else None


def choice(trials: list[Trial], tolerance: float) -> tuple[Trial, Trial]:
    """The smallest size as fast as the fastest, and the fastest. A smaller size counts as fast as
    the fastest only when the low end of its interval says so: a measurement that clears the
    tolerance by less than its own noise does so on some runs only."""
    fastest = max(trials, key=lambda t: t.samples_per_s)
    floor = (1 - tolerance) * fastest.samples_per_s
    chosen = min((t for t in trials if t is fastest or t.throughput_range[0] >= floor),
                 key=lambda t: t.batch_size)
    return chosen, fastest


def points(trials: list[Trial]) -> list[curve.Point]:
    """The throughput measurements among the trials, as the curve takes them."""
    return [curve.Point(t.batch_size, t.samples_per_s, t.uncertainty) for t in timed(trials)]


def _none_timed(trials: list[Trial], measured: list[Trial], largest: int | None) -> str:
    """Why no size could be recommended."""
    ran = [t for t in trials if t.fits]
    if not trials:
        return "no batch size was tried"
    if not ran:
        return "no batch size fitted"
    if measured:
        return (f"no size up to {largest} (the largest that fits on every run) was timed" if largest
                else "no size known to fit on every run was timed")
    if not any(t.purpose == "throughput" for t in ran):
        return "no throughput was measured: only fit checks ran"
    return "no batch size ran with a finite loss"


def recommend(
    trials: list[Trial], limit: Limit, rec: RecommendConfig, limit_bytes: int | None, has_batchnorm: bool = False,
    world_size: int = 1,
) -> tuple[Recommendation, list[str]]:
    """The smallest size as fast as the fastest (within the tolerance, over the whole interval of
    its measurement) that leaves the headroom,
    the sizes that cannot be told apart from it, the curve through them, and warnings about the
    choice. Sizes whose first measurement sat off the curve were measured again during the probe:
    the latest measurement of each size counts."""
    # A size must fit on every run.
    largest = limit.safe_batch_size or limit.batch_size
    measured = timed(trials)
    usable = [t for t in measured if largest and t.batch_size <= largest]
    if not usable:
        return Recommendation(None, _none_timed(trials, measured, largest), largest_batch_size=limit.batch_size), []
    by_size = latest_timed(usable)
    notes = []
    # The headroom is of what the limit counts: compare the capped peak with it where it is known.
    # A size measured again after larger ones ran in the same CPU worker reads what they left: its
    # least peak is the one of the size itself.
    peaks: dict[int, int] = {}
    for t in usable:
        if t.counted_peak_bytes is not None:
            peaks[t.batch_size] = min(peaks.get(t.batch_size, t.counted_peak_bytes), t.counted_peak_bytes)
    roomy = [t for t in by_size.values()
             if not limit_bytes or peaks.get(t.batch_size, 0) <= (1 - rec.headroom) * limit_bytes]
    headroom_kept = bool(roomy)
    if not roomy:
        roomy = list(by_size.values())
        notes.append(f"no size left {percent(rec.headroom)} of the memory limit free; headroom ignored")
    chosen, fastest = choice(roomy, rec.tolerance)
    floor = (1 - rec.tolerance) * fastest.samples_per_s
    # A faster size that leaves too little memory free is not the fastest the reason may name.
    beaten = max(t.samples_per_s for t in by_size.values()) > fastest.samples_per_s
    # Nor is one whose loss was not finite (it is never recommended).
    diverged = any(t.fits and t.loss_finite is False and (t.samples_per_s or 0) > fastest.samples_per_s for t in trials)
    finite = " with a finite loss" if diverged else ""
    if chosen.batch_size == fastest.batch_size:
        reason = (f"{'fastest within the headroom' if beaten else 'fastest timed'}{finite} "
                  f"({rate_text(fastest.samples_per_s)} samples/s)")
    else:
        reason = (f"within {percent(rec.tolerance)} of the fastest{' within the headroom' if beaten else ''}{finite} "
                  f"({rate_text(chosen.samples_per_s)} vs {rate_text(fastest.samples_per_s)} samples/s at "
                  f"{fastest.batch_size}, at the low end of its interval too) with less memory")
    if rec.headroom and limit_bytes and headroom_kept:
        reason += f", leaving at least {percent(rec.headroom)} of the memory limit free"
    # The sizes whose measurement, within its interval, reaches within the tolerance of the fastest.
    alike = [t.batch_size for t in roomy if t.throughput_range[1] >= floor]
    # Noise matters where it blurs the choice: a size far slower than the fastest is no candidate,
    # however noisy.
    uncertain = sorted(t.batch_size for t in roomy if t.batch_size in alike and noisy(t, rec.tolerance))
    if uncertain:
        notes.append(
            f"throughput is uncertain by more than the {percent(rec.tolerance)} tolerance at batch "
            f"{', '.join(map(str, uncertain))}: sizes that close cannot be told apart; more --steps, a longer "
            "probe.max_time_s or a quieter machine would tell them apart"
        )
    steps = chosen.accumulation_steps
    # With accumulation or several ranks, BatchNorm normalizes over the per-device micro-batch only
    # (unless it is SyncBatchNorm), however large the global batch.
    split = (steps or 1) > 1 or world_size > 1
    if split and has_batchnorm and chosen.batch_size < SMALL_BATCHNORM_BATCH:
        notes.append(
            f"BatchNorm sees micro-batches of {chosen.batch_size}: its batch statistics are noisy below "
            f"{SMALL_BATCHNORM_BATCH}; consider GroupNorm, SyncBatchNorm or a larger micro-batch"
        )
    recommendation = Recommendation(
        batch_size=chosen.batch_size,
        reason=reason,
        fastest_batch_size=fastest.batch_size,
        largest_batch_size=limit.batch_size,
        lr=chosen.lr,
        accumulation_steps=steps,
        global_batch_size=chosen.global_batch_size,
        noisy=noisy(chosen, rec.tolerance),
        interval=[min(alike), max(alike)],
        curve=_described(points(usable), [t.batch_size for t in roomy], rec.tolerance),
        tied=sorted(alike),
    )
    return recommendation, notes


def _described(measured: list[curve.Point], sizes: list[int], tolerance: float) -> dict | None:
    """The curve through the latest measurement of each size the recommendation could pick, up to
    the fastest: its parameters, its plateau, and how far each measurement (earlier ones of a size
    measured again, and larger sizes, too) sits from it; None with fewer than three sizes."""
    latest = {p.batch_size: p for p in measured}
    rising = curve.rise([latest[b] for b in sizes if b in latest])
    fitted = curve.fit(rising, tolerance)
    if fitted is None:
        return None
    return {
        **dataclasses.asdict(fitted),
        "plateau_samples_per_s": curve.plateau(fitted, [p.batch_size for p in rising]),
        "points": [{"batch_size": p.batch_size, "samples_per_s": p.samples_per_s,
                    "fitted_samples_per_s": fitted.samples_per_s(p.batch_size),
                    "deviation": curve.deviation(fitted, p), "uncertainty": p.uncertainty} for p in measured],
    }
