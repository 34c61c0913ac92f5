"""Throughput and peak memory against batch size, as a PNG, SVG or PDF (matplotlib is an optional
extra)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from .errors import InputError
from .report import MEMORY_FAILURES, Report, Trial, config_section, first_fitting, latest_timed, write_atomic
from .sizes import format_size

GiB = 1024**3
# The most batch sizes written under the size axis.
TICK_LABELS = 12
FORMATS = ("png", "svg", "pdf")


def require_matplotlib():
    """pyplot, drawing to files only; a missing extra is bad input, found before a long probe."""
    # Its notes on where it keeps its cache (a read-only HOME: "mkdir -p failed", a temporary one
    # made instead) are nothing the user asked for, quiet or not.
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plot: needs matplotlib (pip install matplotlib)") from None
    return plt


def title(report: Report, source: str | None = None) -> str:
    """What was probed, where, under which limit: `cnn-small.yaml: cnn, SGD, fp32 · AMD EPYC · limit 2.0 GiB`."""
    env, dist, config = report.environment, report.distributed, report.config
    model_section, train = (config_section(config, key) for key in ("model", "train"))
    model = model_section.get("name")
    # The optimizer the trials stepped (a LightningModule's own), else the config's name for it.
    optimizer = report.optimizer or train.get("optimizer")
    what = ", ".join(str(v) for v in (model, optimizer, train.get("precision")) if v)
    what = f"{source}: {what}" if source and what else source or what or "batchfind"
    device = env.device_name or env.device
    ranks = f"{dist.world_size} × {device} ({dist.strategy})" if dist else device
    limit = env.usable_bytes
    per = " per device" if dist else ""
    # A run cut short never reached its larger sizes: its edge and curve are partial.
    cut = (" · interrupted" if report.interrupted else
           " · stopped by its time budget" if (report.stopped_because or "").startswith("time budget") else "")
    return (f"{what} · {ranks} · limit {format_size(limit)}{per}" if limit else f"{what} · {ranks}") + cut


# The largest value an axis draws: its margins and ticks overflow floats on the way to 1.8e308.
MAX_DRAWN = 1e300


def figure(report: Report, source: str | None = None):
    """Throughput with its p10–p90 spread and peak memory over batch size (the doubling sizes
    labelled on a log axis), and, when the edge was searched, every trial of that search in order."""
    plt = require_matplotlib()
    fitting = first_fitting(report.trials)
    if not fitting:
        raise InputError("plot: the report has no batch size that ran")
    sizes = sorted(fitting)
    refined = any(t.phase == "refine" for t in report.trials)
    search = [t for t in report.trials if t.phase in ("refine", "verify")] if refined else []
    fig = plt.figure(figsize=(11 if search else 8, 7), layout="constrained")
    grid = fig.add_gridspec(2, 2 if search else 1, width_ratios=[3, 2] if search else None)
    top = fig.add_subplot(grid[0, 0])
    bottom = fig.add_subplot(grid[1, 0], sharex=top)
    fig.suptitle(title(report, source).replace("$", r"\$"))  # a `$` in a file name is not mathtext

    # Throughput from throughput trials only: a fit check's two steps are no measure of it.
    timed = [t for _, t in sorted(latest_timed(report.trials).items()) if t.step_ms]
    spread = _spread(timed)
    for t, above in zip(timed, spread[1]):
        if not t.samples_per_s + above <= MAX_DRAWN:  # a report edited by hand
            raise InputError(f"trials.{report.trials.index(t)}.samples_per_s: {t.samples_per_s:.3g} samples/s, up to "
                             f"{t.samples_per_s + above:.3g} with its p10–p90 spread, is past what an axis can draw "
                             f"({MAX_DRAWN:.0e})")
    top.errorbar([t.batch_size for t in timed], [t.samples_per_s for t in timed], yerr=spread,
                 fmt="o-", color="tab:blue", capsize=3, label="samples/s (bars: p10–p90 step time)")
    top.set_ylabel("samples/s")
    measured = [s for s in sizes if fitting[s].peak_bytes is not None]
    bottom.plot(measured, [fitting[s].peak_bytes / GiB for s in measured], "o-", color="tab:green",
                label="peak memory")
    # On a CPU the limit caps the data segment, not the resident set (which holds code and files
    # too): the sizes where that peak was taken, so that the limit line has its match.
    counted = [s for s in sizes if fitting[s].capped_peak_bytes not in (None, fitting[s].peak_bytes)]
    if counted:
        bottom.plot(counted, [fitting[s].capped_peak_bytes / GiB for s in counted], "s--", color="darkgreen",
                    markersize=4, label="what the limit counts")
    failed = [t for t in report.trials if t.status in MEMORY_FAILURES and t.peak_bytes is not None]
    if failed:
        bottom.plot([t.batch_size for t in failed], [t.peak_bytes / GiB for t in failed], "x", color="tab:red",
                    markersize=9, linestyle="none", label="out of memory (peak before)")
    limit_bytes = report.environment.usable_bytes
    if limit_bytes:
        bottom.axhline(limit_bytes / GiB, color="tab:red", linestyle=":", label="memory limit")
    bottom.set_ylabel("peak memory (GiB)")
    bottom.set_xlabel("batch size per device" if report.distributed else "batch size")
    bottom.set_xscale("log", base=2)
    # Tick at the doubling sizes, written as numbers: refined sizes crowd near the edge, and get
    # their own panel.
    ticks = sorted({t.batch_size for t in report.trials if t.phase == "double"} or set(sizes))
    # Past TICK_LABELS doublings (a tabular model's 64 to 524288) the numbers would run into each
    # other: every second (third, ...) one is written, counted back from the largest.
    step = -(-len(ticks) // TICK_LABELS)
    bottom.set_xticks(ticks, labels=[str(s) if (len(ticks) - 1 - i) % step == 0 else ""
                                     for i, s in enumerate(ticks)])
    bottom.xaxis.set_minor_locator(plt.NullLocator())
    top.tick_params(labelbottom=False)
    marks = [(report.limit.batch_size, "largest fits", "tab:red"),
             (report.recommendation.batch_size, "recommended", "tab:purple")]
    for axis in (top, bottom):
        axis.grid(True, alpha=0.3)
        for size, label, color in marks:
            if size is not None:
                axis.axvline(size, color=color, linestyle="--", alpha=0.7, label=label if axis is bottom else None)
    if search:
        _search_panel(fig.add_subplot(grid[:, 1]), search, limit_bytes)
    handles = {}
    for axis in fig.axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=3, fontsize="small")
    return fig


def _spread(trials: list[Trial]) -> list[list[float]]:
    """Throughput below and above each point, from the step time's p90 and p10."""
    low, high = [], []
    for t in trials:
        s = t.step_ms
        # Never below zero: a report edited by hand may hold a p10 above its median.
        low.append(max(0.0, t.samples_per_s * (1 - s.median / s.p90)) if s.p90 > 0 else 0.0)
        high.append(max(0.0, t.samples_per_s * (s.median / s.p10 - 1)) if s.p10 > 0 else 0.0)
    return [low, high]


def _search_panel(axis, search: list[Trial], limit_bytes: int | None) -> None:
    """The edge search, one column per trial in the order run, each labelled with its size."""
    places = range(len(search))
    for i, t in zip(places, search):
        # Near the edge what the limit counts decides: drawn where known (every brand-new process
        # has it; a long-lived worker's trial below its earlier peak does not).
        peak = t.counted_peak_bytes
        if peak is None:
            continue
        ok = t.fits
        axis.plot(i, peak / GiB, "o" if ok else "x", color="tab:green" if ok else "tab:red",
                  markersize=8 if ok else 9, label="fits" if ok else "out of memory (peak before)")
    if limit_bytes:
        axis.axhline(limit_bytes / GiB, color="tab:red", linestyle=":", label="memory limit")
    axis.set_xticks(list(places), labels=[f"{t.batch_size}\n{t.phase}" for t in search], fontsize="small")
    axis.set_xlim(-0.5, len(search) - 0.5)
    axis.set_title("searching the edge, in order", fontsize="medium")
    axis.set_ylabel("peak memory (GiB)")
    axis.set_xlabel("batch size tried")
    axis.grid(True, axis="y", alpha=0.3)


def image_format(path: Path) -> str | None:
    """The image format a file's name asks for: png (also without a suffix), svg or pdf; None for
    any other suffix, which would get an image it does not name."""
    suffix = path.suffix.lower().lstrip(".")
    return "png" if not suffix else suffix if suffix in FORMATS else None


def plot(report: Report, path: Path, source: str | None = None) -> None:
    """Write the figure in the format its file's name asks for (`image_format`); `source` (the config
    file's name) goes into its title."""
    plt = require_matplotlib()
    fig = figure(report, source)
    image = io.BytesIO()
    try:
        fig.savefig(image, dpi=100, format=image_format(path) or "png")
    finally:
        plt.close(fig)
    write_atomic(path, image.getvalue())
