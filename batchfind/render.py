"""Presenting a report: the rich table and one-line summaries. Computes nothing new."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .devices import clean_error
from .errors import plural
from .report import Report, Trial, latest_timed
from .sizes import format_size, rate_text

_STATUS_STYLE = {"ok": "green", "oom": "red", "killed": "red", "timeout": "yellow", "error": "magenta"}
# What a narrow terminal gives up, in this order, until the table fits: the throughput bar, the
# phase, a column of its own for the share of the limit (it joins the peak), one for the status
# (it joins the note), the epoch estimate, the factors of the global batch (its total stays), and
# then energy, learning rate and global batch per row (the summary still gives the recommended one's).
COMPACT_STEPS = ("bar", "phase", "share", "status", "epoch", "factors", "energy", "lr", "global")
# The note column wraps between its phrases ("largest fits, verified"), so it needs room for the
# longest of them, up to this many characters (a long error message wraps at words).
_NOTE_MAX_PHRASE = 24
# Error messages in the note are cut here; the JSON report has them whole.
_NOTE_ERROR_CHARS = 60

# Where the memory model's ceiling came from, where its name alone does not say it.
_CEILING_FROM = {"fits": "the largest peak that ran"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def step_text(trial: Trial) -> str:
    """Median step time and how far it may be off (half its interval, relative): `12.3 ±4%`; a
    single measured step (a trial stopped at its bar) has no interval to give. Past ±100% (one
    step among a few that stalled for seconds) the figure says no more than that."""
    if trial.step_ms is None:
        return "-"
    if len(trial.step_ms.samples) == 1:
        return f"{trial.step_ms.median:.1f}"
    spread = f"{trial.uncertainty:.0%}" if trial.uncertainty <= 1 else ">100%"
    return f"{trial.step_ms.median:.1f} ±{spread}"


def bar(fraction: float, width: int = 10) -> str:
    """A bar of eighth-blocks, `fraction` of `width` characters long."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    return "█" * (eighths // 8) + ("▏▎▍▌▋▊▉"[eighths % 8 - 1] if eighths % 8 else "")


def change_text(change: float | None) -> str:
    """A relative change as a percentage (`+5.0%`), in three significant digits past a million
    percent."""
    if change is None:
        return "-"
    return f"{change:+.1%}" if abs(change) < 1e4 else f"{change * 100:+.3g}%"


def of_limit(trial: Trial, limit_bytes: int | None) -> str | None:
    """The trial's peak as a share of the limit (`96%`), of what the limit counts where that is
    known (a CPU's data segment, not its resident set, which holds code and files too): the
    measure the headroom is judged by, which takes a size's least (a CPU's size measured again
    reads what larger sizes left in the worker)."""
    counted = trial.counted_peak_bytes
    return f"{counted / limit_bytes:.0%}" if counted and limit_bytes else None


def trial_line(trial: Trial, limit_bytes: int | None = None) -> str:
    """One line per finished trial, for progress on stderr; with the limit, how much of it the peak took."""
    if trial.fits:
        share = of_limit(trial, limit_bytes)
        return (f"batch {trial.batch_size}: ok, {step_text(trial)} ms/step, "
                f"{rate_text(trial.samples_per_s)} samples/s, peak {format_size(trial.peak_bytes)}"
                + (f" ({share} of the {format_size(limit_bytes)} limit)" if share else ""))
    error = clean_error(trial.error) if trial.error else None
    return f"batch {trial.batch_size}: {trial.status}" + (f" — {error}" if error else "")


@dataclass(frozen=True)
class _Column:
    header: str
    cells: list[str]  # rich markup, one per trial
    justify: str = "right"

    @property
    def width(self) -> int:
        return max([len(self.header)] + [Text.from_markup(c).cell_len for c in self.cells])


def _title(report: Report) -> str:
    env, dist = report.environment, report.distributed
    limit = format_size(env.usable_bytes)
    if dist:
        nodes = f", {dist.nodes} nodes" if dist.nodes > 1 else ""
        return (f"batchfind · {dist.world_size} × {env.device_name or env.device} ({dist.strategy}{nodes}) · "
                f"limit {limit} per device · samples/s across all ranks")
    return f"batchfind · {env.device_name or env.device or 'no worker started'} · limit {limit}"


def _status(t: Trial) -> str:
    return f"[{_STATUS_STYLE.get(t.status, 'white')}]{t.status}[/]"


def trial_notes(report: Report, with_status: bool = False) -> list[str]:
    """What the table says about each trial, as rich markup; `with_status` when no column shows
    the status (a failure then names its own). "Largest fits" goes on the last trial at that size;
    "fastest" and "recommended" on the latest throughput trial at theirs (a re-measure supersedes
    the first; a fit check's two steps do not rank sizes)."""
    trials, rec, limit = report.trials, report.recommendation, report.limit
    last = {t.batch_size: i for i, t in enumerate(trials) if t.fits}
    latest = {id(t) for t in latest_timed(trials).values()}
    timed = {t.batch_size: i for i, t in enumerate(trials) if id(t) in latest}
    measured = [trials[i] for i in timed.values()
                if limit.batch_size is None or trials[i].batch_size <= limit.batch_size]
    fastest = max(measured, key=lambda t: t.samples_per_s).batch_size if measured else None
    labels: dict[int, list[str]] = {}
    if limit.batch_size in last:
        labels.setdefault(last[limit.batch_size], []).append("largest fits" + (", verified" if limit.verified else ""))
    if fastest is not None:
        labels.setdefault(timed[fastest], []).append("fastest")
    if rec.fastest_batch_size is not None and rec.fastest_batch_size != fastest and rec.fastest_batch_size in timed:
        labels.setdefault(timed[rec.fastest_batch_size], []).append("fastest within headroom")
    if rec.batch_size in timed:
        labels.setdefault(timed[rec.batch_size], []).append("[bold]recommended[/bold]")
    notes = []
    for i, t in enumerate(trials):
        note = list(labels.get(i, []))
        if t.fits and t.loss_finite is False:
            note.append("[yellow]non-finite loss[/yellow]")
        if t.status == "oom":
            note.append("[red]out of memory[/]" if with_status else "out of memory")
        elif t.error or (with_status and not t.fits):
            error = Text(textwrap.shorten(clean_error(t.error or ""), _NOTE_ERROR_CHARS, placeholder=" …")).markup
            note.append(": ".join(filter(None, [_status(t) if with_status else "", error])))
        notes.append(", ".join(note))
    return notes


def _columns(report: Report, compact: set[str]) -> list[_Column]:
    """The table's columns, less what `compact` (names from COMPACT_STEPS) gives up or merges."""
    trials = report.trials
    env, dist = report.environment, report.distributed
    limit_bytes = env.usable_bytes
    world = dist.world_size if dist else 1
    best = max((t.samples_per_s for t in trials if t.samples_per_s), default=0)

    def share(t: Trial) -> str:
        return of_limit(t, limit_bytes) or "-"

    columns = [_Column("batch/device" if dist else "batch", [str(t.batch_size) for t in trials])]
    if "status" not in compact:
        columns.append(_Column("status", [_status(t) for t in trials], "left"))
    if "phase" not in compact:
        # A fit check's few steps are not ranked: say which rows are fit checks.
        columns.append(_Column("phase", [t.phase + (" · fit" if t.purpose == "fit" else "") for t in trials], "left"))
    columns += [_Column("step ms", [step_text(t) for t in trials]),
                _Column("samples/s", [rate_text(t.samples_per_s) for t in trials])]
    if "bar" not in compact:
        columns.append(_Column("", [bar(t.samples_per_s / best if t.samples_per_s and best else 0) for t in trials],
                               "left"))
    if "epoch" not in compact:
        columns.append(_Column("epoch", [_duration(t.epoch_s) for t in trials]))
    if "share" in compact:
        columns.append(_Column("peak (of limit)", [
            format_size(t.peak_bytes) + (f" ({share(t)})" if share(t) != "-" else "") for t in trials]))
    else:
        columns += [_Column("peak", [format_size(t.peak_bytes) for t in trials]),
                    _Column("of limit", [share(t) for t in trials])]
    if "lr" not in compact and any(t.lr is not None for t in trials):
        columns.append(_Column("lr", [f"{t.lr:.3g}" if t.lr is not None else "-" for t in trials]))
    if "global" not in compact and (dist is not None or any(t.accumulation_steps is not None for t in trials)):
        columns.append(_Column("global batch", [
            str(t.global_batch_size) if "factors" in compact
            else global_batch_text(t.batch_size, world, t.accumulation_steps, t.global_batch_size) for t in trials]))
    if "energy" not in compact and any(t.joules_per_sample is not None for t in trials):
        columns.append(_Column("J/sample", [f"{t.joules_per_sample:.3g}" if t.joules_per_sample is not None else "-"
                                            for t in trials]))
    columns.append(_Column("note", trial_notes(report, with_status="status" in compact), "left"))
    return columns


def _table_width(columns: list[_Column]) -> int:
    """Characters the table needs with its note wrapped: each column's widest cell, a space either
    side and one rule between columns and at both edges."""
    *fixed, note = columns
    phrases = [p for cell in note.cells for p in Text.from_markup(cell).plain.split(", ")]
    note_width = min(max([len(note.header)] + [len(p) + 1 for p in phrases]), _NOTE_MAX_PHRASE)
    return sum(c.width for c in fixed) + note_width + 3 * len(columns) + 1


def table(report: Report, width: int | None = None) -> Table | None:
    """The trials as a table; given a `width`, the fullest layout that fits it (see COMPACT_STEPS),
    None where not even the most compact one does."""
    for steps in range(len(COMPACT_STEPS) + 1):
        columns = _columns(report, set(COMPACT_STEPS[:steps]))
        if width is None or _table_width(columns) <= width:
            break
    else:
        return None
    grid = Table(title=_title(report), title_justify="left")
    *fixed, note = columns
    for column in fixed:  # numbers never wrap and never shrink; only the note does
        grid.add_column(column.header, justify=column.justify, no_wrap=True, min_width=column.width)
    grid.add_column(note.header, overflow="fold")
    for row in zip(*(c.cells for c in columns)):
        grid.add_row(*row)
    return grid


def global_batch_text(batch: int, world: int, steps: int | None, total: int | None) -> str:
    """`64×2×4 = 512`: per-device batch × ranks × accumulation steps, as far as each applies."""
    factors = [str(batch)] + ([str(world)] if world > 1 else []) + ([str(steps)] if steps and steps > 1 else [])
    return f"{'×'.join(factors)} = {total}" if len(factors) > 1 else str(total)


def print_report(report: Report, console: Console, notes: Console | None = None) -> None:
    """The table and its summary on `console`; the warnings on `notes` (stderr, where the table is
    the data on stdout), else on `console` too."""
    grid = table(report, console.width)
    if grid is not None:
        console.print(grid)
    else:  # a terminal too narrow for any table: a line per trial, wrapped as it needs
        console.print(_title(report))
        for t, note in zip(report.trials, trial_notes(report)):
            console.print(f"{t.phase}: {Text(trial_line(t)).markup}" + (f" — {note}" if note and t.fits else ""))
    rec, limit = report.recommendation, report.limit
    if rec.batch_size is not None:
        console.print(f"[bold]recommended batch: {rec.batch_size}[/bold] — {rec.reason}")
        tied = rec.tied if rec.tied is not None else rec.interval
        if tied and len(set(tied)) > 1:
            # The sizes themselves where known: a slower size between them is not among them.
            sizes = ", ".join(map(str, tied)) if rec.tied is not None else f"{tied[0]}–{tied[-1]}"
            console.print(f"cannot be told apart from the fastest: batch {sizes}")
        plan = []
        if rec.accumulation_steps or report.distributed:
            world = report.distributed.world_size if report.distributed else 1
            plan.append("global batch " + global_batch_text(rec.batch_size, world, rec.accumulation_steps,
                                                            rec.global_batch_size))
        if rec.lr is not None:
            plan.append(f"learning rate {rec.lr:.3g}")
        if plan:
            console.print("train with: " + "; ".join(plan))
    elif rec.reason and any(t.fits for t in report.trials):  # "nothing fits" has a line of its own
        console.print(f"[bold]no recommended batch[/bold]: {rec.reason}")
    if rec.loader and rec.loader.get("status") == "ok" and rec.loader.get("data_share") is not None:
        ld = rec.loader
        console.print(
            f"through the DataLoader ({plural(ld['workers'], 'worker')}) at {rec.batch_size}: {ld['step_ms']['median']:.1f} ms/step, "
            f"{ld['data_share']:.0%} waiting for data, epoch {_duration(ld['epoch_s'])}"
        )
    if rec.noise_scale and rec.noise_scale.get("b_simple") is not None:
        ns = rec.noise_scale
        upper = f"{ns['ci_high']:,.0f}" if ns.get("ci_high") is not None else "no bound"
        interval = f"80% interval {ns['ci_low']:,.0f}–{upper}; " if ns.get("ci_low") is not None else ""
        console.print(
            f"gradient noise scale B_simple ≈ {ns['b_simple']:,.0f} ({interval}"
            f"{ns['batches']} batches of {ns['small_batch']} and {ns['big_batch']}, at the {ns['measured_at']}): "
            "a lower bound on the batch that stays efficient later in training"
        )
    if limit.batch_size is not None:
        edge = f"; first failure at {limit.first_oom}" if limit.first_oom else ""
        proof = " (verified in a fresh process)" if limit.verified else " (not verified in a fresh process)"
        console.print(f"largest that fits: {limit.batch_size}{proof}{edge}")
        if limit.safe_batch_size is not None and limit.safe_batch_size < limit.batch_size:
            # An allowance (a share of the limit, or what brand-new runs showed where more), not a
            # measurement of every run: say so.
            console.print(f"fits on every run: {limit.safe_batch_size} (allowing {format_size(limit.variation_bytes)} "
                          "for memory that varies between runs; larger sizes may fail on a later run)")
    if report.memory_model and limit.batch_size is not None:
        m = report.memory_model
        # Where nothing ran out of memory the edge lies past every size run: an estimate, no more.
        beyond = "" if limit.first_oom is not None else f" (an estimate: no size up to {limit.batch_size} was found not to fit)"
        share = (report.dataset_len or 0) // (report.distributed.world_size if report.distributed else 1)
        if limit.first_oom is None and share and m["predicted_edge"] > share:
            beyond = (f" (an estimate, past the {share} samples of the dataset a device gets: memory is not what "
                      "bounds the batch)")
        console.print(
            f"memory model: {format_size(int(m['fixed_bytes']))} + {format_size(int(m['per_sample_bytes']))} × batch, "
            f"ceiling {format_size(m['ceiling_bytes'])} (from the {_CEILING_FROM.get(m['ceiling_from'], m['ceiling_from'])}) "
            f"→ predicted edge {m['predicted_edge']}{beyond}"
        )
    if report.stopped_because:
        console.print(f"stopped: {report.stopped_because}")
    print_warnings(report.warnings, notes or console)


def print_warnings(warnings: list[str], console: Console) -> None:
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {Text(warning).markup}")


def _compared(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric.startswith("peak"):
        return format_size(int(value))
    if metric.startswith("samples/s"):
        return rate_text(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.0f}"  # a size, exactly


def print_comparison(result, console: Console, notes: Console | None = None) -> None:
    """The comparison on `console`, its warnings on `notes` (stderr), else on `console` too."""
    title = f"batchfind compare · regression bound {result.max_regression * 100:.6g}%"  # 0.5% is not 0%
    rows = []
    for c in result.changes:
        change = change_text(c.change)
        verdict = ("regressed" if c.regressed else "not judged" if not c.judged
                   else "ok" if None not in (c.base, c.new) else "-")
        # The metric's name in the JSON counts bytes; the table shows them in MiB or GiB.
        metric = c.metric.replace("peak bytes", "peak memory")
        rows.append((metric, _compared(c.metric, c.base), _compared(c.metric, c.new), change, verdict))
    headers = ("metric", "base", "new", "change", "verdict")
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    colour = {"regressed": "[red]regressed[/red]"}
    if sum(widths) + 3 * len(widths) + 1 <= console.width:
        grid = Table(title=title, title_justify="left")
        for name in headers:
            grid.add_column(name, justify="left" if name in ("metric", "verdict") else "right", no_wrap=True)
        for row in rows:
            grid.add_row(*row[:-1], colour.get(row[-1], row[-1]))
        console.print(grid)
    else:  # a terminal too narrow for the table: a line per metric, wrapped as it needs
        console.print(title)
        for metric, base, new, change, verdict in rows:
            change = f" ({change})" if change != "-" else ""
            console.print(f"{metric}: {base} → {new}{change} {colour.get(verdict, verdict)}")
    print_warnings(result.warnings, notes or console)
    console.print("[red]regressed[/red]" if result.regressed else "no regression past the bound")
