"""The command line: parse options, call the core, render, map errors to exit codes."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from . import __version__
from .errors import BatchfindError, InputError

app = typer.Typer(
    help="Find the batch size to train with on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_INTERRUPTED = 130

ConfigArg = Annotated[Path, typer.Argument(help="Config file (YAML or TOML).", show_default=False)]
Device = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.", show_default=False)]
Steps = Annotated[Optional[int], typer.Option(help="Measured steps per batch size.", show_default=False)]
Warmup = Annotated[Optional[int], typer.Option(help="Warm-up steps before measuring.", show_default=False)]
MemoryLimit = Annotated[
    Optional[str],
    typer.Option(help="Memory cap, e.g. 2GiB or 512MiB: RAM on CPU, a fraction of the card on GPU.", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the JSON report to stdout (the table goes to stderr).")]
Output = Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the JSON report to FILE, atomically.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks (or set BATCHFIND_DEBUG=1).")]


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


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Logs and pipes are read later, often wider than 80 columns: do not wrap the table there.
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 120)


@contextmanager
def _errors(debug: bool) -> Iterator[None]:
    """Domain errors become one line and their exit code; tracebacks only when asked."""
    debug = debug or os.environ.get("BATCHFIND_DEBUG", "") not in ("", "0")
    try:
        yield
    except BatchfindError as exc:
        if debug:
            raise
        for line in str(exc).splitlines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if debug:
            raise
        typer.echo(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        raise typer.Exit(1) from None


def _check_output(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        raise InputError(f"--output: {path} is a directory, expected a file path")
    if not path.parent.resolve().is_dir():
        raise InputError(f"--output: folder {path.parent} does not exist")
    if not os.access(path.parent.resolve(), os.W_OK):
        raise InputError(f"--output: folder {path.parent} is not writable")


def _progress(console):
    started = time.monotonic()

    def on_start(size: int, phase: str) -> None:
        verb = {"double": "probing", "refine": "refining:", "verify": "verifying in a fresh process:"}[phase]
        console.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim] {verb} batch {size} …")

    def on_end(trial) -> None:
        from .render import trial_line

        console.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim] {trial_line(trial)}")

    return on_start, on_end


def _emit(report, as_json: bool, output: Path | None) -> None:
    from .render import print_report
    from .report import write_atomic

    text = report.to_json()
    if output is not None:
        write_atomic(output, text + "\n")
    if as_json:
        print_report(report, _console(stderr=True))
        sys.stdout.write(text + "\n")
    else:
        print_report(report, _console())


def _exit_code(report) -> int:
    if report.interrupted:
        return EXIT_INTERRUPTED
    if report.limit.batch_size is None:
        first = report.trials[0] if report.trials else None
        return 3 if first is not None and first.status in ("oom", "killed", "timeout") else 1
    return 0


@app.command()
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
    as_json: AsJson = False,
    output: Output = None,
    debug: Debug = False,
) -> None:
    """Probe batch sizes up to out-of-memory and the exact edge, measure each, and recommend one."""
    with _errors(debug):
        from .config import load_config
        from .probe import probe as run_probe

        _check_output(output)
        cfg = load_config(config, {
            "--device": device, "--min-batch": min_batch, "--max-batch": max_batch, "--steps": steps,
            "--warmup": warmup, "--memory-limit": memory_limit, "--time-budget": time_budget,
            "--refine/--no-refine": refine, "--multiple-of": multiple_of,
        })
        console = _console(stderr=True)
        on_start, on_end = _progress(console)
        report = run_probe(cfg, on_trial_start=on_start, on_trial_end=on_end)
        _emit(report, as_json, output)
        code = _exit_code(report)
        if code == 3:
            first = report.trials[0]
            console.print(f"[red]nothing fits:[/red] even batch {first.batch_size} failed ({first.status})")
        raise typer.Exit(code)


@app.command()
def check(
    config: ConfigArg,
    batch: Annotated[int, typer.Option(help="The batch size to check.", min=1, show_default=False)],
    device: Device = None,
    steps: Steps = None,
    warmup: Warmup = None,
    memory_limit: MemoryLimit = None,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Run one batch size in a fresh process: exit 0 if it fits, 3 if it runs out of memory."""
    with _errors(debug):
        from .config import load_config
        from .probe import check as run_check
        from .render import trial_line

        cfg = load_config(config, {"--device": device, "--steps": steps, "--warmup": warmup,
                                   "--memory-limit": memory_limit})
        report = run_check(cfg, batch)
        if report.interrupted:
            raise typer.Exit(EXIT_INTERRUPTED)
        trial = report.trials[0]
        if as_json:
            sys.stdout.write(report.to_json() + "\n")
        typer.echo(trial_line(trial), err=as_json)
        raise typer.Exit(0 if trial.fits else 3 if trial.status in ("oom", "killed", "timeout") else 1)




@app.command()
def info(as_json: AsJson = False, debug: Debug = False) -> None:
    """Show torch, GPUs (through NVML), CPU cores and RAM."""
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
