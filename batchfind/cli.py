"""The command line: parse options, call the core, render, map errors to exit codes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from . import __version__
from .errors import BatchfindError, InputError
from .report import MEMORY_FAILURES

app = typer.Typer(
    help="Find the batch size to train with on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_INTERRUPTED = 130


EXIT_REQUIREMENT = 4


class RequireOn(str, Enum):
    recommended = "recommended"
    limit = "limit"


class Template(str, Enum):
    mlp = "mlp"
    cnn = "cnn"
    gpt = "gpt"
    custom = "custom"


class Strategy(str, Enum):
    ddp = "ddp"
    fsdp = "fsdp"


class LRRule(str, Enum):
    auto = "auto"
    linear = "linear"
    sqrt = "sqrt"
    none = "none"


ConfigArg = Annotated[Path, typer.Argument(metavar="CONFIG", help="Config file (YAML or TOML).", show_default=False)]
Device = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.", show_default=False)]
Steps = Annotated[Optional[int], typer.Option(help="Measured steps per batch size.", show_default=False)]
Warmup = Annotated[Optional[int], typer.Option(help="Warm-up steps before measuring.", show_default=False)]
MemoryLimit = Annotated[
    Optional[str],
    typer.Option(help="Memory cap, e.g. 2GiB or 512MiB: RAM on CPU, a fraction of the card on GPU.", show_default=False),
]
NprocPerNode = Annotated[
    Optional[int],
    typer.Option(help="N ranks on this machine, one device each, the same batch per device (or run under torchrun).",
                 show_default=False),
]
StrategyOption = Annotated[
    Optional[Strategy], typer.Option("--strategy", help="How the ranks train: ddp (default) or fsdp.", show_default=False)
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the JSON report to stdout (the table goes to stderr).")]
Output = Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the JSON report to FILE, atomically.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks (or set BATCHFIND_DEBUG=1).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no table (errors still show); for scripts.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"batchfind {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Find the batch size to train with on this machine."""


# Columns a console that is not a terminal offers: wide enough that no table needs to fold.
_UNWRAPPED_WIDTH = 1000


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr, highlight=False)
    # Logs and pipes are read later, in any width: the full table, and no line broken.
    return Console(stderr=stderr, highlight=False, width=_UNWRAPPED_WIDTH, soft_wrap=True)


def _follower() -> int | None:
    """Under torchrun, this process's rank when it is not rank 0: it probes but prints nothing."""
    from .distributed import launcher_rank

    rank = launcher_rank()
    return rank if rank else None


@contextmanager
def _errors(debug: bool) -> Iterator[None]:
    """Domain errors become one line and their exit code; tracebacks only when asked."""
    debug = debug or os.environ.get("BATCHFIND_DEBUG", "") not in ("", "0")
    rank = _follower()
    who = f"rank {rank}: " if rank else ""  # under torchrun every rank may have its own say
    try:
        yield
    except BatchfindError as exc:
        if debug:
            raise
        for line in str(exc).splitlines():
            typer.echo(f"{who}error: {line}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if debug:
            raise
        typer.echo(f"{who}internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        raise typer.Exit(1) from None


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled CI job, torchrun stopping its ranks) ends a probe as Ctrl-C does: with
    the partial report written."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_output(path: Path | None, option: str = "--output") -> None:
    """Fail before a long probe, not after it, when the report cannot be written."""
    if path is None:
        return
    if path.is_dir():
        raise InputError(f"{option}: {path} is a directory, expected a file path")
    if not path.parent.resolve().is_dir():
        raise InputError(f"{option}: folder {path.parent} does not exist")
    if not os.access(path.parent.resolve(), os.W_OK):
        raise InputError(f"{option}: folder {path.parent} is not writable")


def _progress(console, quiet: bool):
    if quiet:
        return None, None
    started = time.monotonic()

    def on_start(size: int, phase: str) -> None:
        verb = {"double": "probing", "refine": "refining:", "verify": "verifying in a fresh process:"}[phase]
        console.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim] {verb} batch {size} …")

    def on_end(trial) -> None:
        from rich.markup import escape

        from .render import trial_line

        # Error messages hold brackets (`[enforce fail at ...]`) that are not markup.
        console.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim] {escape(trial_line(trial))}")

    return on_start, on_end


def _emit(report, as_json: bool, output: Path | None, quiet: bool = False) -> None:
    """The data first (stdout, then the file), the table last: nothing is lost if one step fails."""
    from .render import print_report
    from . import report as reports

    text = report.to_json()
    if as_json:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    try:
        if output is not None:
            reports.write_atomic(output, text + "\n")
    except OSError as exc:
        raise InputError(f"--output: cannot write {output}: {exc.strerror or exc}") from None
    finally:
        if not quiet:  # the table goes to stdout unless the JSON is there
            print_report(report, _console(stderr=as_json))


def _exit_code(report) -> int:
    if report.interrupted:
        return EXIT_INTERRUPTED
    if report.limit.batch_size is None:
        first = report.trials[0] if report.trials else None
        return 3 if first is not None and first.status in MEMORY_FAILURES else 1
    if any(not r.passed for r in report.requirements):
        return EXIT_REQUIREMENT
    return 0


@app.command(short_help="Probe batch sizes to the memory edge, measure each, recommend one.")
def probe(
    config: ConfigArg,
    device: Device = None,
    min_batch: Annotated[Optional[int], typer.Option(help="Smallest batch to try.", show_default=False)] = None,
    max_batch: Annotated[Optional[int], typer.Option(help="Largest batch to try.", show_default=False)] = None,
    steps: Steps = None,
    warmup: Warmup = None,
    memory_limit: MemoryLimit = None,
    time_budget: Annotated[
        Optional[float], typer.Option(help="Seconds after which no new trial starts.", show_default=False)
    ] = None,
    refine: Annotated[
        Optional[bool],
        typer.Option("--refine/--no-refine", help="Search the exact edge between powers of two.", show_default=False),
    ] = None,
    multiple_of: Annotated[
        Optional[int], typer.Option(help="Refined sizes are multiples of N (e.g. 8).", show_default=False)
    ] = None,
    nproc_per_node: NprocPerNode = None,
    strategy: StrategyOption = None,
    tolerance: Annotated[
        Optional[float],
        typer.Option(help="Recommend the smallest size within this fraction of the best throughput [0.02].",
                     show_default=False),
    ] = None,
    headroom: Annotated[
        Optional[float],
        typer.Option(help="Fraction of the memory limit the recommended size leaves free [0.10].", show_default=False),
    ] = None,
    lr_rule: Annotated[
        Optional[LRRule],
        typer.Option(help="How the learning rate scales with the batch (auto: linear for SGD, sqrt for Adam).",
                     show_default=False),
    ] = None,
    target_batch: Annotated[
        Optional[int], typer.Option(help="Show gradient-accumulation steps reaching this batch.", show_default=False)
    ] = None,
    noise_scale: Annotated[
        Optional[bool], typer.Option("--noise-scale", help="Estimate the gradient noise scale.", show_default=False)
    ] = None,
    require_batch: Annotated[
        Optional[int], typer.Option(help="Exit 4 if the recommended batch (or --require-on limit) is below N.",
                                    show_default=False)
    ] = None,
    require_on: Annotated[RequireOn, typer.Option(help="What --require-batch checks.")] = RequireOn.recommended,
    require_throughput: Annotated[
        Optional[float], typer.Option(help="Exit 4 if samples/s at the recommended batch is below X.",
                                      show_default=False)
    ] = None,
    as_json: AsJson = False,
    output: Output = None,
    plot_file: Annotated[
        Optional[Path], typer.Option("--plot", help="Also draw throughput and memory to a PNG (needs matplotlib).")
    ] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Probe batch sizes up to out-of-memory and the exact edge, measure each, and recommend one."""
    with _errors(debug):
        from .config import load_config
        from .probing import probe as run_probe
        from .report import check_requirements

        _check_output(output)
        cfg = load_config(config, {
            "--device": device, "--min-batch": min_batch, "--max-batch": max_batch, "--steps": steps,
            "--warmup": warmup, "--memory-limit": memory_limit, "--time-budget": time_budget,
            "--refine/--no-refine": refine, "--multiple-of": multiple_of, "--nproc-per-node": nproc_per_node,
            "--strategy": strategy.value if strategy else None, "--tolerance": tolerance,
            "--headroom": headroom, "--lr-rule": lr_rule.value if lr_rule else None, "--target-batch": target_batch,
            "--noise-scale": noise_scale,
        })
        _check_output(plot_file, "--plot")
        if require_throughput is not None and not (math.isfinite(require_throughput) and require_throughput > 0):
            raise InputError(f"--require-throughput: expected a positive number of samples/s (got {require_throughput})")
        if plot_file is not None:
            from .plot import require_matplotlib

            require_matplotlib()
        console = _console(stderr=True)
        follower = _follower() is not None
        on_start, on_end = _progress(console, quiet or follower)
        with _terminate_as_interrupt():
            report = run_probe(cfg, on_trial_start=on_start, on_trial_end=on_end)
        report = dataclasses.replace(report, requirements=check_requirements(
            report, batch=require_batch, on=require_on.value, throughput=require_throughput))
        if follower:  # rank 0 prints and writes the report: every rank holds the same one
            raise typer.Exit(_exit_code(report))
        _emit(report, as_json, output, quiet)
        code = _exit_code(report)
        if plot_file is not None and report.limit.batch_size is not None:
            from .plot import plot as draw

            draw(report, plot_file, source=config.name)
        if code == 3:
            first = report.trials[0]
            console.print(f"[red]nothing fits:[/red] even batch {first.batch_size} failed ({first.status})")
        for failed in (r for r in report.requirements if not r.passed):
            actual = "not measured" if failed.actual is None else f"{failed.actual:g}"
            console.print(f"[red]requirement failed:[/red] {failed.name}: {actual} (required ≥ {failed.required:g})")
        raise typer.Exit(code)


@app.command(short_help="Run one batch size in a fresh process; exit 0 if it fits.")
def check(
    config: ConfigArg,
    batch: Annotated[int, typer.Option(help="The batch size to check.", min=1, show_default=False)],
    device: Device = None,
    steps: Steps = None,
    warmup: Warmup = None,
    memory_limit: MemoryLimit = None,
    nproc_per_node: NprocPerNode = None,
    strategy: StrategyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report to stdout (the result line goes "
                                                          "to stderr).")] = False,
    debug: Debug = False,
) -> None:
    """Run one batch size (per device) in a fresh process: exit 0 if it fits, 3 if it runs out of memory."""
    with _errors(debug):
        from .config import load_config
        from .probing import check as run_check
        from .render import trial_line

        cfg = load_config(config, {"--device": device, "--steps": steps, "--warmup": warmup,
                                   "--memory-limit": memory_limit, "--nproc-per-node": nproc_per_node,
                                   "--strategy": strategy.value if strategy else None})
        report = run_check(cfg, batch)
        if report.interrupted:
            raise typer.Exit(EXIT_INTERRUPTED)
        trial = report.trials[0]
        code = 0 if trial.fits else 3 if trial.status in MEMORY_FAILURES else 1
        if _follower() is not None:  # rank 0 speaks for all
            raise typer.Exit(code)
        if as_json:
            sys.stdout.write(report.to_json() + "\n")
        typer.echo(trial_line(trial), err=as_json)
        raise typer.Exit(code)




@app.command()
def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print the same facts as JSON to stdout.")] = False,
    debug: Debug = False,
) -> None:
    """Show torch, GPUs (through NVML), the CPU model, cores and RAM."""
    with _errors(debug):
        from .devices import host_info
        from .sizes import format_size

        facts = host_info()
        if as_json:
            sys.stdout.write(json.dumps(facts, indent=2) + "\n")
            return
        console = _console()
        cpu = facts["cpu"]
        console.print(f"python {facts['python']} · torch {facts['torch']} · CUDA available: {facts['cuda_available']}")
        console.print(f"CPU: {cpu['name']}, {cpu['cores_logical']} logical cores, RAM "
                      f"{format_size(cpu['ram_total_bytes'])} ({format_size(cpu['ram_available_bytes'])} available)")
        for gpu in facts["gpus"]:
            console.print(f"GPU {gpu['index']}: {gpu['name']}, {format_size(gpu['memory_total_bytes'])} "
                          f"({format_size(gpu['memory_free_bytes'])} free), driver {facts['driver']}")
        if not facts["gpus"]:
            console.print(f"no NVIDIA GPU through NVML ({facts['nvml_error'] or 'none found'})")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the report."""
    from .report import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command(short_help="Compare two reports; exit 4 on a regression past the bound.")
def compare(
    base: Annotated[Path, typer.Argument(metavar="BASE", help="The earlier report (JSON).", show_default=False)],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The later report (JSON).", show_default=False)],
    max_regression: Annotated[
        str, typer.Option(help="Exit 4 when a metric gets worse by more than this (10% or 0.1).")
    ] = "10%",
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON to stdout (the table goes "
                                                          "to stderr).")] = False,
    debug: Debug = False,
) -> None:
    """Compare two reports: limit, recommended batch, throughput and peak memory; exit 4 on regression."""
    with _errors(debug):
        from .compare import compare as run_compare
        from .render import print_comparison
        from .report import load_report

        bound = _fraction(max_regression, "--max-regression")
        result = run_compare(load_report(base), load_report(new), bound)
        if as_json:
            sys.stdout.write(json.dumps(dataclasses.asdict(result) | {"regressed": result.regressed}, indent=2) + "\n")
        print_comparison(result, _console(stderr=as_json))
        raise typer.Exit(EXIT_REQUIREMENT if result.regressed else 0)


def _fraction(text: str, option: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InputError(f"{option}: expected a fraction like 10% or 0.1 (got {text!r})") from None
    if not 0 <= value < 10:
        raise InputError(f"{option}: expected a fraction between 0 and 10 (got {text!r})")
    return value


@app.command()
def init(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="Where to write the config.")] = Path("batchfind.yaml"),
    template: Annotated[Template, typer.Option(help="Which starting point.")] = Template.cnn,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    debug: Debug = False,
) -> None:
    """Write a commented config to start from."""
    with _errors(debug):
        from .report import write_atomic
        from .templates import TEMPLATES

        if path.exists() and not force:
            raise InputError(f"{path}: exists; pass --force to overwrite it")
        _check_output(path, "PATH")
        write_atomic(path, TEMPLATES[template.value])
        typer.echo(f"wrote {path} ({template.value}); check it with: batchfind validate {path}", err=True)


@app.command(short_help="Check a config and run one training step on CPU; no probing.")
def validate(config: ConfigArg, debug: Debug = False) -> None:
    """Check a config, and that its model and data build and run one training step on CPU; no probing."""
    with _errors(debug):
        from .config import load_config
        from .probing import validate as run_validate

        report = run_validate(load_config(config))
        if report.interrupted:
            raise typer.Exit(EXIT_INTERRUPTED)
        trial = report.trials[0]
        if not trial.fits:
            raise InputError(f"{config}: one training step on CPU failed: {trial.status}: {trial.error}")
        loss = f"loss {trial.loss:.4g}" if trial.loss is not None else "[yellow]the loss was not finite[/yellow]"
        _console().print(
            f"{config}: valid — {report.config['model']['name']} ({report.parameters:,} parameters), "
            f"{report.dataset_len:,} samples, one training step on CPU ran ({loss})"
        )


@app.command(short_help="Draw throughput and peak memory against batch size to a PNG.")
def plot(
    report_file: Annotated[Path, typer.Argument(metavar="REPORT", help="A JSON report.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The PNG to write.", show_default=False)],
    debug: Debug = False,
) -> None:
    """Draw throughput and peak memory against batch size (needs matplotlib)."""
    with _errors(debug):
        from .plot import plot as draw
        from .report import load_report

        _check_output(output)
        draw(load_report(report_file), output)
        typer.echo(f"wrote {output}", err=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
