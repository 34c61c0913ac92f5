"""Throughput and peak memory against batch size, as a PNG (matplotlib is an optional extra)."""

from __future__ import annotations

import io
import math
from pathlib import Path

from .errors import InputError
from .report import MEMORY_FAILURES, Report, write_atomic

GiB = 1024**3


def require_matplotlib():
    """pyplot, drawing to files only; a missing extra is bad input, found before a long probe."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plot: needs matplotlib (pip install 'batchfind[plot]')") from None
    return plt


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def plot(report: Report, path: Path) -> None:
    plt = require_matplotlib()
    fitting = {t.batch_size: t for t in report.trials if t.fits}
    if not fitting:
        raise InputError("plot: the report has no batch size that ran")
    sizes = sorted(fitting)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6.5), constrained_layout=True)
    env = report.environment
    ranks = f" × {report.distributed.world_size} ({report.distributed.strategy})" if report.distributed else ""
    fig.suptitle(f"batchfind · {env.device_name or env.device}{ranks}")
    # A value not measured (null in the report) is a gap in the line, not a crash.
    top.plot(sizes, [_or_nan(fitting[s].samples_per_s) for s in sizes], "o-", color="tab:blue")
    top.set_ylabel("samples/s")
    bottom.plot(sizes, [_or_nan(fitting[s].peak_bytes) / GiB for s in sizes], "o-", color="tab:green",
                label="peak memory")
    failed = [t for t in report.trials if t.status in MEMORY_FAILURES]
    if failed:
        bottom.plot([t.batch_size for t in failed], [(t.peak_bytes or 0) / GiB for t in failed],
                    "x", color="tab:red", markersize=9, label="out of memory (peak before)")
    limit_bytes = env.memory_limit_bytes or env.memory_total_bytes
    if limit_bytes:
        bottom.axhline(limit_bytes / GiB, color="tab:red", linestyle=":", label="memory limit")
    bottom.set_ylabel("peak memory (GiB)")
    bottom.set_xlabel("batch size per device" if report.distributed else "batch size")
    bottom.set_xscale("log", base=2)
    marks = [(report.limit.batch_size, "largest fits", "tab:red"),
             (report.recommendation.batch_size, "recommended", "tab:purple")]
    for axis in (top, bottom):
        axis.grid(True, alpha=0.3)
        for size, label, color in marks:
            if size is not None:
                axis.axvline(size, color=color, linestyle="--", alpha=0.7, label=label if axis is bottom else None)
    bottom.legend(loc="upper left", fontsize="small")
    image = io.BytesIO()
    try:
        fig.savefig(image, dpi=100, format="png")
    finally:
        plt.close(fig)
    write_atomic(path, image.getvalue())
