"""Presenting a report: the rich table and one-line summaries. Computes nothing new."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .report import Report, Trial
from .sizes import format_size

_STATUS_STYLE = {"ok": "green", "oom": "red", "killed": "red", "timeout": "yellow", "error": "magenta"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def step_text(trial: Trial) -> str:
    """Median step time and half the p10–p90 range, relative: `12.3 ±4%`."""
    if trial.step_ms is None:
        return "-"
    s = trial.step_ms
    spread = (s.p90 - s.p10) / 2 / s.median if s.median > 0 else 0.0
    return f"{s.median:.1f} ±{spread:.0%}"


def trial_line(trial: Trial) -> str:
    """One line per finished trial, for progress on stderr."""
    if trial.fits:
        return (f"batch {trial.batch_size}: ok, {step_text(trial)} ms/step, "
                f"{trial.samples_per_s:,.0f} samples/s, peak {format_size(trial.peak_bytes)}")
    return f"batch {trial.batch_size}: {trial.status}" + (f" — {trial.error}" if trial.error else "")


def table(report: Report) -> Table:
    env = report.environment
    limit_bytes = env.memory_limit_bytes or env.memory_total_bytes
    title = f"batchfind · {env.device_name or env.device} · limit {format_size(limit_bytes)}"
    grid = Table(title=title, title_justify="left")
    grid.add_column("batch", justify="right")
    grid.add_column("status")
    grid.add_column("phase")
    grid.add_column("step ms", justify="right")
    grid.add_column("samples/s", justify="right")
    grid.add_column("epoch", justify="right")
    grid.add_column("peak", justify="right")
    grid.add_column("of limit", justify="right")
    grid.add_column("note")
    for t in report.trials:
        notes = []
        if t.batch_size == report.limit.batch_size and t.fits:
            notes.append("largest fits" + (", verified" if t.fresh_process else ""))
        if t.batch_size == report.recommendation.batch_size:
            notes.append("[bold]recommended[/bold]")
        if t.fits and t.loss_finite is False:
            notes.append("[yellow]non-finite loss[/yellow]")
        if t.status == "oom":
            notes.append("out of memory")
        elif t.error:
            notes.append(Text(t.error[:60]).markup)
        share = f"{t.peak_bytes / limit_bytes:.0%}" if t.peak_bytes and limit_bytes else "-"
        grid.add_row(
            str(t.batch_size),
            f"[{_STATUS_STYLE.get(t.status, 'white')}]{t.status}[/]",
            t.phase,
            step_text(t),
            f"{t.samples_per_s:,.0f}" if t.samples_per_s else "-",
            _duration(t.epoch_s),
            format_size(t.peak_bytes),
            share,
            ", ".join(notes),
        )
    return grid


def print_report(report: Report, console: Console) -> None:
    console.print(table(report))
    rec, limit = report.recommendation, report.limit
    if rec.batch_size is not None:
        console.print(f"[bold]recommended batch: {rec.batch_size}[/bold] — {rec.reason}")
    if limit.batch_size is not None:
        edge = f"; first failure at {limit.first_oom}" if limit.first_oom else ""
        proof = " (verified in a fresh process)" if limit.verified else " (not verified in a fresh process)"
        console.print(f"largest that fits: {limit.batch_size}{edge}{proof}")
    if report.memory_model:
        m = report.memory_model
        console.print(
            f"memory model: {format_size(int(m['fixed_bytes']))} + {format_size(int(m['per_sample_bytes']))} × batch, "
            f"ceiling {format_size(m['ceiling_bytes'])} (from the {m['ceiling_from']}) → predicted edge {m['predicted_edge']}"
        )
    if report.stopped_because:
        console.print(f"stopped: {report.stopped_because}")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {Text(warning).markup}")
