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
    return f"{trial.step_ms.median:.1f} ±{trial.spread:.0%}"


def bar(fraction: float, width: int = 10) -> str:
    """A bar of eighth-blocks, `fraction` of `width` characters long."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    return "█" * (eighths // 8) + ("▏▎▍▌▋▊▉"[eighths % 8 - 1] if eighths % 8 else "")


def trial_line(trial: Trial) -> str:
    """One line per finished trial, for progress on stderr."""
    if trial.fits:
        speed = f"{trial.samples_per_s:,.0f}" if trial.samples_per_s else "-"
        return (f"batch {trial.batch_size}: ok, {step_text(trial)} ms/step, "
                f"{speed} samples/s, peak {format_size(trial.peak_bytes)}")
    return f"batch {trial.batch_size}: {trial.status}" + (f" — {trial.error}" if trial.error else "")


def table(report: Report) -> Table:
    env = report.environment
    limit_bytes = env.memory_limit_bytes or env.memory_total_bytes
    dist = report.distributed
    world = dist.world_size if dist else 1
    if dist:
        nodes = f", {dist.nodes} nodes" if dist.nodes > 1 else ""
        title = (f"batchfind · {world} × {env.device_name or env.device} ({dist.strategy}{nodes}) · "
                 f"limit {format_size(limit_bytes)} per device · samples/s across all ranks")
    else:
        title = f"batchfind · {env.device_name or env.device} · limit {format_size(limit_bytes)}"
    grid = Table(title=title, title_justify="left")
    grid.add_column("batch/device" if dist else "batch", justify="right")
    grid.add_column("status")
    grid.add_column("phase")
    grid.add_column("step ms", justify="right")
    grid.add_column("samples/s", justify="right")
    grid.add_column("", no_wrap=True)  # throughput bar
    grid.add_column("epoch", justify="right")
    grid.add_column("peak", justify="right")
    grid.add_column("of limit", justify="right")
    show_lr = any(t.lr is not None for t in report.trials)
    show_global = dist is not None or any(t.accumulation_steps is not None for t in report.trials)
    show_energy = any(t.joules_per_sample is not None for t in report.trials)
    if show_lr:
        grid.add_column("lr", justify="right")
    if show_global:
        grid.add_column("global batch", justify="right")
    if show_energy:
        grid.add_column("J/sample", justify="right")
    grid.add_column("note")
    rec = report.recommendation
    best = max((t.samples_per_s for t in report.trials if t.samples_per_s), default=0)
    for t in report.trials:
        notes = []
        if t.batch_size == report.limit.batch_size and t.fits:
            notes.append("largest fits" + (", verified" if t.fresh_process else ""))
        if t.batch_size == rec.fastest_batch_size and t.fits:
            notes.append("fastest")
        if t.batch_size == rec.batch_size and t.fits:
            notes.append("[bold]recommended[/bold]")
        if t.fits and t.loss_finite is False:
            notes.append("[yellow]non-finite loss[/yellow]")
        if t.status == "oom":
            notes.append("out of memory")
        elif t.error:
            notes.append(Text(t.error[:60]).markup)
        share = f"{t.peak_bytes / limit_bytes:.0%}" if t.peak_bytes and limit_bytes else "-"
        cells = [
            str(t.batch_size),
            f"[{_STATUS_STYLE.get(t.status, 'white')}]{t.status}[/]",
            t.phase,
            step_text(t),
            f"{t.samples_per_s:,.0f}" if t.samples_per_s else "-",
            bar(t.samples_per_s / best if t.samples_per_s and best else 0),
            _duration(t.epoch_s),
            format_size(t.peak_bytes),
            share,
        ]
        if show_lr:
            cells.append(f"{t.lr:.3g}" if t.lr is not None else "-")
        if show_global:
            cells.append(global_batch_text(t.batch_size, world, t.accumulation_steps, t.global_batch_size))
        if show_energy:
            cells.append(f"{t.joules_per_sample:.3g}" if t.joules_per_sample is not None else "-")
        grid.add_row(*cells, ", ".join(notes))
    return grid


def global_batch_text(batch: int, world: int, steps: int | None, total: int | None) -> str:
    """`64×2×4 = 512`: per-device batch × ranks × accumulation steps, as far as each applies."""
    factors = [str(batch)] + ([str(world)] if world > 1 else []) + ([str(steps)] if steps and steps > 1 else [])
    return f"{'×'.join(factors)} = {total}" if len(factors) > 1 else str(total)


def print_report(report: Report, console: Console) -> None:
    console.print(table(report))
    rec, limit = report.recommendation, report.limit
    if rec.batch_size is not None:
        console.print(f"[bold]recommended batch: {rec.batch_size}[/bold] — {rec.reason}")
        plan = []
        if rec.accumulation_steps or report.distributed:
            world = report.distributed.world_size if report.distributed else 1
            plan.append("global batch " + global_batch_text(rec.batch_size, world, rec.accumulation_steps,
                                                            rec.global_batch_size))
        if rec.lr is not None:
            plan.append(f"learning rate {rec.lr:.3g}")
        if plan:
            console.print("train with: " + "; ".join(plan))
    if rec.loader and rec.loader.get("status") == "ok" and rec.loader.get("data_share") is not None:
        ld = rec.loader
        console.print(
            f"through the DataLoader ({ld['workers']} workers) at {rec.batch_size}: {ld['step_ms']['median']:.1f} ms/step, "
            f"{ld['data_share']:.0%} waiting for data, epoch {_duration(ld['epoch_s'])}"
        )
    if rec.noise_scale and rec.noise_scale.get("b_simple") is not None:
        ns = rec.noise_scale
        interval = (f"80% interval {ns['ci_low']:,.0f}–{ns['ci_high']:,.0f}; " if ns.get("ci_low") is not None
                    else "")
        console.print(
            f"gradient noise scale B_simple ≈ {ns['b_simple']:,.0f} ({interval}"
            f"{ns['batches']} batches of {ns['small_batch']} and {ns['big_batch']}, at the {ns['measured_at']}): "
            "a lower bound on the batch that stays efficient later in training"
        )
    if limit.batch_size is not None:
        edge = f"; first failure at {limit.first_oom}" if limit.first_oom else ""
        proof = " (verified in a fresh process)" if limit.verified else " (not verified in a fresh process)"
        console.print(f"largest that fits: {limit.batch_size}{edge}{proof}")
        if limit.safe_batch_size is not None and limit.safe_batch_size < limit.batch_size:
            console.print(f"fits on every run: {limit.safe_batch_size} (memory here varies by up to "
                          f"{format_size(limit.variation_bytes)} between runs; larger sizes may fail on a later run)")
    if report.memory_model and limit.first_oom is not None:
        m = report.memory_model
        console.print(
            f"memory model: {format_size(int(m['fixed_bytes']))} + {format_size(int(m['per_sample_bytes']))} × batch, "
            f"ceiling {format_size(m['ceiling_bytes'])} (from the {m['ceiling_from']}) → predicted edge {m['predicted_edge']}"
        )
    if report.stopped_because:
        console.print(f"stopped: {report.stopped_because}")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {Text(warning).markup}")


def print_comparison(result, console: Console) -> None:
    grid = Table(title=f"batchfind compare · regression bound {result.max_regression:.0%}", title_justify="left")
    for name, justify in (("metric", "left"), ("base", "right"), ("new", "right"), ("change", "right"), ("", "left")):
        grid.add_column(name, justify=justify)
    for c in result.changes:
        bytes_metric = c.metric.startswith("peak")
        show = (lambda v: format_size(int(v)) if v is not None else "-") if bytes_metric else (
            lambda v: f"{v:,.0f}" if v is not None else "-")
        change = f"{c.change:+.1%}" if c.change is not None else "-"
        verdict = "[red]regressed[/red]" if c.regressed else ""
        grid.add_row(c.metric, show(c.base), show(c.new), change, verdict)
    console.print(grid)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {Text(warning).markup}")
    console.print("[red]regressed[/red]" if result.regressed else "no regression past the bound")
