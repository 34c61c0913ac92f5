"""The command line: parse options, call the core, render, map errors to exit codes."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager, nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from . import __version__
from .errors import BatchfindError, InputError, StoppedByInput, clipped, debugging, plain, printable
from .errors import lines as message_lines
from .report import MEMORY_FAILURES
from .templates import TEMPLATE_NAMES, render

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


Template = Enum("Template", {name: name for name in TEMPLATE_NAMES}, type=str)


class Strategy(str, Enum):
    ddp = "ddp"
    fsdp = "fsdp"


class LRRule(str, Enum):
    auto = "auto"
    linear = "linear"
    sqrt = "sqrt"
    none = "none"


def _path(text: str | Path) -> Path:
    """A path given on the command line, as it is: click's own path type would refuse an unreadable
    one in four lines, where ours say it in one (and an output may be writable without being
    readable)."""
    if isinstance(text, Path):  # a default (init's batchfind.yaml), as written in the code
        return text
    if not text:  # an unset shell variable, say: as a Path it would be ".", this folder
        raise typer.BadParameter("an empty path")
    if text.endswith("/"):  # a folder's name: as a Path the slash goes, and `report.json/` would write report.json
        raise typer.BadParameter(f"{text} ends in /, which names a folder: expected a file")
    return Path(text)


ConfigArg = Annotated[Path, typer.Argument(metavar="CONFIG", help="Config file (YAML, TOML or JSON).", show_default=False,
                                            parser=_path)]
Device = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.", show_default=False)]
Steps = Annotated[Optional[int], typer.Option(help="Least number of measured steps in a throughput trial.",
                                              show_default=False)]
Warmup = Annotated[Optional[int], typer.Option(help="Warm-up steps before measuring.", show_default=False)]
FitSteps = Annotated[Optional[int], typer.Option(help="Steps of a fit check (at least 2).", show_default=False)]
MemoryLimit = Annotated[
    Optional[str],
    typer.Option(help="Memory cap, a size such as 2GiB or 512MiB: RAM on CPU; on GPU what the allocator may take "
                      "of the card.", show_default=False),
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
Output = Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the JSON report to FILE, atomically.",
                                               metavar="FILE", parser=_path)]
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
    debug: Debug = False,
) -> None:
    """Find the batch size to train with on this machine."""
    global _debug_first
    _debug_first = debug  # `batchfind --debug probe ...`, as well as after the command: `_errors` reads it


# `--debug` given before the command, for the command about to run.
_debug_first = False


# Columns a console that is not a terminal offers: wide enough that no table needs to fold.
_UNWRAPPED_WIDTH = 1000


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        # rich takes COLUMNS=0 at its word and prints nothing; the terminal itself knows better.
        given = os.environ.get("COLUMNS", "")
        width = None if not given.isdecimal() or int(given) > 0 else shutil.get_terminal_size().columns
        return Console(stderr=stderr, highlight=False, width=width)
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
    global _debug_first
    debug, _debug_first = debug or debugging() or _debug_first, False
    saved = os.environ.get("BATCHFIND_DEBUG")
    if debug:
        os.environ["BATCHFIND_DEBUG"] = "1"  # workers then send their own tracebacks too
    try:
        rank = _follower()
    except InputError:
        rank = None  # torchrun's variables are malformed: the probe says so where it meets its ranks
    who = f"rank {rank}: " if rank else ""  # under torchrun every rank may have its own say
    streams = sys.stdout, sys.stderr
    out = _guard(sys.stdout)
    sys.stdout, sys.stderr = out, _guard(sys.stderr)
    try:
        try:
            yield
        except typer.Exit:
            out.check()
            raise
        out.check()
    except BatchfindError as exc:
        lines, trace = message_lines(str(exc).rstrip("\n")), []
        if debug:  # the traceback, and still the exit code a script checks for
            # A worker's own traceback travels after its message and says where it failed: it goes
            # above the message, in place of this process's, which only shows the message passed on.
            start = next((i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")), None)
            if start is None:
                traceback.print_exc()
            else:
                lines, trace = lines[:start], lines[start:]
        for line in trace:  # as Python prints one: its lines are no errors of their own
            typer.echo(f"{who}{line}", err=True)
        for line in lines:  # a file's name may hold escape sequences: shown, never sent to the terminal
            typer.echo(f"{who}error: {printable(line)}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if debug:
            raise
        typer.echo(f"{who}internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        raise typer.Exit(1) from None
    finally:
        sys.stdout, sys.stderr = streams
        if saved is None:  # a caller in the same process (tests, notebooks) keeps its own setting
            os.environ.pop("BATCHFIND_DEBUG", None)
        else:
            os.environ["BATCHFIND_DEBUG"] = saved


class _Guarded:
    """A standard stream that cannot end a run: a reader that closed the pipe (`| head`) chose to
    stop reading, so the rest goes nowhere; a closed stream is an empty sink; characters the
    encoding lacks (PYTHONIOENCODING=ascii) are replaced. Any other failure to write (a full disk)
    is kept, and `check` reports it once the files are written."""

    def __init__(self, stream):
        self._stream = stream if stream is not None else open(os.devnull, "w")
        self._failed: OSError | None = None
        self._sunk = stream is None

    def write(self, text: str) -> int:
        if not self._sunk:
            try:
                try:
                    self._stream.write(text)
                except UnicodeEncodeError:
                    encoding = self._stream.encoding or "ascii"
                    self._stream.write(text.encode(encoding, "replace").decode(encoding))
            except OSError as exc:
                self._sink(exc)
        return len(text)

    def flush(self) -> None:
        if not self._sunk:
            try:
                self._stream.flush()
            except OSError as exc:
                self._sink(exc)

    def _sink(self, exc: OSError) -> None:
        self._sunk = True
        # A reader that stopped (a pipe) or a terminal that closed (EIO after a hang-up) is no failure.
        if not (isinstance(exc, BrokenPipeError) or exc.errno == errno.EIO):
            self._failed = exc
        try:  # what is still buffered goes nowhere at exit, instead of raising there again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def check(self) -> None:
        """Raise the failure to write, once."""
        failed, self._failed = self._failed, None
        if failed is not None:
            raise BatchfindError(f"cannot write to {str(getattr(self._stream, 'name', 'the output')).strip('<>')}: "
                                 f"{failed.strerror or failed}")

    def __getattr__(self, name: str):
        if name == "buffer":  # writers must come through write(), not around it
            raise AttributeError(name)
        return getattr(self._stream, name)


def _guard(stream) -> _Guarded:
    """The stream guarded, once: a command's guard inside `main`'s is the same one."""
    return stream if isinstance(stream, _Guarded) else _Guarded(stream)


# How long after an interrupt a repeated one is taken for the same impatient keypress.
REPEAT_S = 2.0


@contextmanager
def _interrupt_once() -> Iterator[None]:
    """SIGTERM (a cancelled CI job, torchrun stopping its ranks) and SIGHUP (a closed terminal) end a
    probe as Ctrl-C does: with the partial report written. A repeat within REPEAT_S is ignored: a
    quick double Ctrl-C would cut the writing short and lose the report; a later one still stops
    whatever is stuck. A signal the process was started ignoring (a job in the background, nohup)
    stays ignored."""
    first: float | None = None

    def interrupt(signum, frame):
        nonlocal first
        now = time.monotonic()
        if first is not None and now - first < REPEAT_S:
            return
        first = now
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_output(path: Path | None, option: str = "--output", keep: tuple[Path | None, ...] = ()) -> None:
    """Fail before a long probe, not after it, when the report cannot be written, or would be
    written over one of the files in `keep` (the config being probed, another output)."""
    from .files import path_problem
    from .report import replace_target

    if path is None:
        return
    if str(path) == "-":  # elsewhere standard output; here it would be a file named "-"
        raise InputError(f"{option}: '-' would be a file named '-': for standard output write /dev/stdout, "
                         "for that file ./-")
    problem = path_problem(path)
    if problem:
        raise InputError(f"{option}: {problem}")
    try:
        if path.is_dir():
            raise InputError(f"{option}: {path} is a directory, expected a file path")
        for other in filter(None, keep):
            if path.absolute() == other.absolute() or path.exists() and other.exists() and path.samefile(other):
                raise InputError(f"{option}: {path} would overwrite {other}, which this command also uses; "
                                 "choose another file")
        target = replace_target(path)
    except OSError as exc:
        raise InputError(f"{option}: {path}: {exc.strerror or exc}") from None
    if target is None:  # a device, a FIFO, /dev/stdout: written in place
        if not os.access(path, os.W_OK):
            raise InputError(f"{option}: {path} is not writable")
        try:  # a terminal's device opens only where there is one (/dev/tty, with no controlling terminal)
            if stat.S_ISCHR(os.stat(path).st_mode):
                os.close(os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK))
        except OSError as exc:
            raise InputError(f"{option}: cannot write {path}: {exc.strerror or exc}") from None
        return
    if not target.parent.is_dir():
        raise InputError(f"{option}: folder {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise InputError(f"{option}: folder {target.parent} is not writable")
    try:  # what access() says is not what a file system takes (root in /proc, a read-only mount)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".batchfind-"):
            pass
    except OSError as exc:
        raise InputError(f"{option}: cannot write in folder {target.parent}: {exc.strerror or exc}") from None


# How often a terminal's status line counts the seconds of set-up (a compiled model's: half a minute).
SETUP_TICK_S = 1.0
# Elsewhere (a CI log, a pipe) a line says set-up is still under way this often, so a set-up that
# hangs is not ten minutes of silence; a set-up that fails sooner still ends in its one line.
SETUP_NOTE_S = 60.0


@contextmanager
def _progress(console, quiet: bool):
    """Callbacks for a probe's progress: a line per trial, and on a terminal a status line that
    follows the steps of the trial under way. Yields (on_start, on_end, on_step)."""
    if quiet:
        yield None, None, None
        return
    started = time.monotonic()
    done = 0
    live = console.status("starting the workers …") if console.is_terminal else None

    def stamp() -> str:
        return f"[dim]{time.monotonic() - started:6.1f}s[/dim]"

    trials_began = threading.Event()
    lock = threading.Lock()  # a tick of set-up's count never lands after the first trial's line
    from .distributed import launcher_rank

    # Under torchrun the ranks' drivers meet before any worker starts, and may wait for one another.
    setting_up = ("meeting the other ranks, then " if launcher_rank() is not None else "") + (
        "starting the workers (torch, the model, the data)")

    def count_setup() -> None:
        while not trials_began.wait(SETUP_TICK_S if live else SETUP_NOTE_S):
            with lock:
                if trials_began.is_set():
                    break
                if live:
                    live.update(f"{setting_up} · {time.monotonic() - started:.0f} s")
                else:
                    console.print(f"{stamp()} still {setting_up} …")

    def on_start(size: int, phase: str) -> None:
        verb = {"double": "probing", "refine": "refining:", "verify": "verifying in a fresh process:",
                "remeasure": "measuring again:"}[phase]
        with lock:
            trials_began.set()
            console.print(f"{stamp()} {verb} batch {size} …")
            if live:
                live.update(f"batch {size} · trial {done + 1} · starting")

    def on_end(trial) -> None:
        from rich.markup import escape

        from .render import trial_line

        nonlocal done
        done += 1
        # Error messages hold brackets (`[enforce fail at ...]`) that are not markup.
        console.print(f"{stamp()} {escape(trial_line(trial))}")

    def on_step(event: dict) -> None:
        live.update(f"batch {event['batch_size']} · trial {done + 1} · step {event['step']} of at least "
                    f"{event['steps']} · {time.monotonic() - started:.0f} s so far")

    ticker = threading.Thread(target=count_setup, daemon=True)
    with live if live else nullcontext():
        ticker.start()
        try:
            yield on_start, on_end, on_step if live else None
        finally:
            trials_began.set()
            ticker.join()


def _if_slow(status: str) -> str:
    """Near the memory edge a step past the timeout is usually thrashing; steps that are only slow
    need more time."""
    return "; if its steps are only slow, raise probe.trial_timeout_s" if status == "timeout" else ""


def _is_stdout(path: Path) -> bool:
    """Whether `path` is this process's standard output (`/dev/stdout`, `/dev/fd/1`, the file it
    is redirected to)."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(1))
    except OSError:
        return False


def _check_image(path: Path | None, option: str) -> None:
    from .plot import FORMATS, image_format

    if path is not None and image_format(path) is None:
        *others, last = ("." + f for f in FORMATS)
        raise InputError(f"{option}: {path.name}: expected a {', '.join(others)} or {last} file "
                         "(the format follows the name)")


def _not_stdout(output: Path | None, as_json: bool, option: str = "--output") -> None:
    """With --json the report already goes to standard output: anything more there is no JSON."""
    if as_json and output is not None and _is_stdout(output):
        raise InputError(f"{option}: {output} is standard output, where --json already writes the report")


def _emit(report, as_json: bool, output: Path | None, quiet: bool = False) -> None:
    """The file first, then stdout, then the table: a reader that stops reading, or a stream that
    cannot take the output, never costs the file; a file that cannot be written costs nothing else."""
    from .render import print_report

    text = report.to_json()
    failed = _write(text, output)
    if as_json:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    if not quiet:  # the table goes to stdout unless the JSON is there; warnings always to stderr
        print_report(report, _console(stderr=as_json), _console(stderr=True))
    if failed is not None:
        raise failed


def _write(text: str, output: Path | None) -> InputError | None:
    """Write the report to `output`, if given; a failure is handed back, to be raised once the rest
    of the output is out."""
    from . import report as reports

    try:
        if output is not None:
            reports.write_atomic(output, text + "\n")
    except BrokenPipeError:
        pass  # `-o >(head -c 10)`: its reader chose to stop
    except OSError as exc:
        return InputError(f"--output: cannot write {output}: {exc.strerror or exc}")
    return None


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
    fit_steps: FitSteps = None,
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
                                    min=1, show_default=False)
    ] = None,
    require_on: Annotated[Optional[RequireOn], typer.Option(help="What --require-batch checks [recommended].",
                                                             show_default=False)] = None,
    require_throughput: Annotated[
        Optional[float], typer.Option(help="Exit 4 if samples/s at the recommended batch is below X.",
                                      show_default=False)
    ] = None,
    as_json: AsJson = False,
    output: Output = None,
    plot_file: Annotated[
        Optional[Path], typer.Option("--plot", help="Also draw throughput and memory to a PNG, SVG or PDF "
                                     "(needs matplotlib).", metavar="FILE", parser=_path)
    ] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Probe batch sizes up to out-of-memory and the exact edge, measure each, and recommend one."""
    with _errors(debug):
        from .config import load_config
        from .probing import probe as run_probe
        from .report import check_requirements

        cfg = load_config(config, {
            "--device": device, "--min-batch": min_batch, "--max-batch": max_batch, "--steps": steps,
            "--warmup": warmup, "--fit-steps": fit_steps, "--memory-limit": memory_limit, "--time-budget": time_budget,
            "--refine/--no-refine": refine, "--multiple-of": multiple_of, "--nproc-per-node": nproc_per_node,
            "--strategy": strategy.value if strategy else None, "--tolerance": tolerance,
            "--headroom": headroom, "--lr-rule": lr_rule.value if lr_rule else None, "--target-batch": target_batch,
            "--noise-scale": noise_scale,
        })
        # Neither over the files this probe reads (the config, a data file) nor over each other.
        _check_output(output, keep=(config, cfg.data.path))
        _not_stdout(output, as_json)
        _check_output(plot_file, "--plot", keep=(config, cfg.data.path, output))
        _not_stdout(plot_file, as_json, "--plot")
        _check_image(plot_file, "--plot")
        if require_on is not None and require_batch is None:
            raise InputError("--require-on: says what --require-batch checks; give --require-batch N too")
        if require_throughput is not None and not (math.isfinite(require_throughput) and require_throughput > 0):
            raise InputError(f"--require-throughput: expected a positive number of samples/s (got {require_throughput})")
        if plot_file is not None:
            from .plot import require_matplotlib

            require_matplotlib()
        console = _console(stderr=True)
        follower = _follower() is not None
        with _interrupt_once():
            try:
                with _progress(console, quiet or follower) as (on_start, on_end, on_step):
                    report = run_probe(cfg, on_trial_start=on_start, on_trial_end=on_end, on_progress=on_step)
            except StoppedByInput as exc:  # what ran before the bad input was found is written first
                try:
                    if not follower:
                        _emit(exc.report, as_json, output, quiet)
                except InputError as unwritten:  # a full disk: both are told, one line each
                    raise InputError(f"{exc}\n{unwritten}") from None
                raise InputError(str(exc)) from None
            report = dataclasses.replace(report, requirements=check_requirements(
                report, batch=require_batch, on=(require_on or RequireOn.recommended).value, throughput=require_throughput))
            if follower:  # rank 0 prints and writes the report: every rank holds the same one
                raise typer.Exit(_exit_code(report))
            try:
                _emit(report, as_json, output, quiet)
            except InputError:  # a full disk: the thresholds that failed are told too
                _tell_requirements(console, report)
                raise
        from rich.markup import escape

        code = _exit_code(report)
        if plot_file is not None and report.limit.batch_size is not None:
            _draw(report, plot_file, "--plot", source=config.name)
            if not quiet:
                console.print(f"wrote {escape(printable(str(plot_file)))}")
        elif plot_file is not None and not quiet:
            console.print(f"no plot: no batch size ran, so {escape(printable(str(plot_file)))} was not written")
        if report.limit.batch_size is None and code in (1, 3):  # the line that says why, under --quiet too
            first = report.trials[0]
            from .probing import SETUP_RAN_OUT

            # Set-up that ran out of memory never ran the batch: the message says so itself.
            failed = "" if (first.error or "").startswith(SETUP_RAN_OUT) else \
                f"even batch {first.batch_size} failed ({first.status}): "
            console.print(f"[red]{'error' if code == 1 else 'nothing fits'}:[/red] {failed}"
                          f"{escape(clipped(first.error or 'no message', 600))}{_if_slow(first.status)}")
        _tell_requirements(console, report)
        raise typer.Exit(code)


def _tell_requirements(console, report) -> None:
    """A line for each `--require-*` threshold that failed, under --quiet too."""
    from rich.markup import escape

    for failed in (r for r in report.requirements if not r.passed):
        actual = "not measured" if failed.actual is None else _number(failed.actual)
        # A limit below which nothing failed is a lower bound, not where memory ran out.
        bound = (f"; a lower bound: no larger size was found not to fit, {escape(report.stopped_because or 'stopped')}"
                 if failed.name == "limit" and failed.actual is not None and report.limit.first_oom is None else "")
        console.print(f"[red]requirement failed:[/red] {failed.name}: {actual} (required ≥ "
                      f"{_number(failed.required)}{bound})")


@app.command(short_help="Run one batch size in a fresh process; exit 0 if it fits.")
def check(
    config: ConfigArg,
    batch: Annotated[int, typer.Option(help="The batch size to check.", min=1, show_default=False)],
    device: Device = None,
    fit_steps: FitSteps = None,
    memory_limit: MemoryLimit = None,
    nproc_per_node: NprocPerNode = None,
    strategy: StrategyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report to stdout (the result line goes "
                                                          "to stderr).")] = False,
    output: Output = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No result line when the batch fits; for scripts.")
                     ] = False,
    debug: Debug = False,
) -> None:
    """Run one batch size (per device) in a fresh process, the fit check a probe proves its limit with:
    exit 0 if it fits, 3 if it runs out of memory."""
    with _errors(debug):
        from .config import load_config
        from .probing import check as run_check
        from .render import trial_line

        cfg = load_config(config, {"--device": device, "--fit-steps": fit_steps,
                                   "--memory-limit": memory_limit, "--nproc-per-node": nproc_per_node,
                                   "--strategy": strategy.value if strategy else None})
        _check_output(output, keep=(config, cfg.data.path))
        _not_stdout(output, as_json)
        with _interrupt_once():  # SIGTERM too ends the check with its report written
            report = run_check(cfg, batch)
            trial = None if report.interrupted else report.trials[0]
            code = _exit_code(report)
            if _follower() is not None:  # rank 0 speaks for all
                raise typer.Exit(code)
            text = report.to_json()
            failed = _write(text, output)  # an interrupted check's report too
        if as_json:  # an interrupted check's report too: a pipe gets JSON either way
            sys.stdout.write(text + "\n")
        if trial is not None:
            if not (quiet and trial.fits):  # a failure says why, under --quiet too
                # Beside a report on stdout (--json, or -o /dev/stdout) it goes to stderr: stdout stays JSON.
                typer.echo(trial_line(trial, report.environment.usable_bytes) + _if_slow(trial.status),
                           err=as_json or (output is not None and _is_stdout(output)))
        else:
            typer.echo(f"stopped: interrupted before batch {batch} finished", err=True)
        if not quiet:
            from .render import print_warnings

            print_warnings(report.warnings, _console(stderr=True))
        if failed is not None:
            raise failed
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
def schema(debug: Debug = False) -> None:
    """Print the JSON Schema of the report."""
    with _errors(debug):
        from .report import json_schema

        sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command(short_help="Compare two reports; exit 4 on a regression past the bound.")
def compare(
    base: Annotated[Path, typer.Argument(metavar="BASE", help="The earlier report (JSON).", show_default=False,
                                         parser=_path)],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The later report (JSON).", show_default=False,
                                        parser=_path)],
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
        from .report import finite, load_report

        bound = _fraction(max_regression, "--max-regression")
        result = run_compare(load_report(base), load_report(new), bound)
        if as_json:
            data = finite(dataclasses.asdict(result) | {"regressed": result.regressed})
            sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
        print_comparison(result, _console(stderr=as_json), _console(stderr=True))
        raise typer.Exit(EXIT_REQUIREMENT if result.regressed else 0)


def _number(value: float) -> str:
    """A batch size as an integer (any size: `:g` would turn a huge one into a float and overflow),
    a rate in short form."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _fraction(text: str, option: str) -> float:
    percent = text.endswith("%")
    try:
        value = float(text[:-1]) / 100 if percent else float(text)
    except ValueError:
        raise InputError(f"{option}: expected a fraction like 10% or 0.1 (got {text!r})") from None
    # A bare 5 is more likely a percentage without its sign than 500%: it is refused, not guessed.
    if not percent and value >= 1:
        # The percentage it suggests is one it takes.
        hint = f"; write {text}% for a percentage" if value <= 1000 else ""
        raise InputError(f"{option}: a bare number is a fraction below 1 (0.05 is 5%){hint} (got {text!r})")
    if not 0 <= value <= 10:
        raise InputError(f"{option}: expected a percentage from 0% up to 1000% (got {text!r})")
    return value


@app.command()
def init(
    path: Annotated[
        Path, typer.Argument(metavar="PATH", help="Where to write the config.", parser=_path)
    ] = Path("batchfind.yaml"),
    template: Annotated[Template, typer.Option(help="Which starting point.")] = Template["cnn"],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    debug: Debug = False,
) -> None:
    """Write a commented config to start from."""
    with _errors(debug):
        from .report import replace_target, write_atomic

        _check_output(path, "PATH")
        if path.suffix.lower() == ".json":  # read as JSON, which has no comments
            raise InputError(f"{path}: a template is a commented config, YAML or TOML; name it .yaml or .toml")
        if path.exists() and replace_target(path) is not None and not force:  # /dev/stdout clobbers nothing
            raise InputError(f"{path}: exists; pass --force to overwrite it")
        try:
            write_atomic(path, render(template.value, "toml" if path.suffix.lower() == ".toml" else "yaml"))
        except OSError as exc:  # a full disk, a device that refuses
            raise InputError(f"{path}: cannot write: {exc.strerror or exc}") from None
        typer.echo(f"wrote {path} ({template.value}); check it with: batchfind validate {path}", err=True)


@app.command(short_help="Check a config and run one training step on CPU; no probing.")
def validate(config: ConfigArg, debug: Debug = False) -> None:
    """Check a config, and that its model and data build and run one training step on CPU; no probing."""
    with _errors(debug):
        from rich.markup import escape

        from .config import load_config
        from .probing import validate as run_validate
        from .render import print_warnings

        report = run_validate(load_config(config))
        if report.interrupted:
            raise typer.Exit(EXIT_INTERRUPTED)
        trial = report.trials[0]
        if not trial.fits:
            raise InputError(f"{config}: one training step on CPU failed ({trial.status}): {trial.error}")
        loss = f"loss {trial.loss:.4g}" if trial.loss is not None else "[yellow]the loss was not finite[/yellow]"
        # The path as text, not markup, and no terminal control characters in it.
        shown = escape(str(config) if str(config).isprintable() else repr(str(config)))
        optimizer = f", {report.optimizer}" if report.optimizer else ""
        _console().print(
            f"{shown}: valid — {report.config['model']['name']} ({report.parameters:,} parameters{optimizer}), "
            f"{report.dataset_len:,} sample{'' if report.dataset_len == 1 else 's'}, "
            f"one training step on CPU ran ({loss})"
        )
        print_warnings(report.warnings, _console(stderr=True))


@app.command(short_help="Draw throughput and peak memory against batch size to a PNG, SVG or PDF.")
def plot(
    report_file: Annotated[Path, typer.Argument(metavar="REPORT", help="A JSON report.", show_default=False,
                                                parser=_path)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The PNG, SVG or PDF to write.", show_default=False,
                                         metavar="FILE", parser=_path)],
    debug: Debug = False,
) -> None:
    """Draw throughput and peak memory against batch size (needs matplotlib)."""
    with _errors(debug):
        from .report import load_report

        _check_output(output, keep=(report_file,))
        _check_image(output, "--output")
        report = load_report(report_file)
        if not any(t.fits for t in report.trials):
            raise InputError(f"{report_file}: no batch size ran in this report: there is nothing to plot")
        _draw(report, output, "--output", read_from=report_file)
        typer.echo(f"wrote {output}", err=True)


def _draw(report, path: Path, option: str, source: str | None = None, read_from: Path | None = None) -> None:
    """The plot, written to `path`; a file that cannot be written (a full disk) is bad input, and so
    is a value no axis can draw in a report `read_from` a file, which is named."""
    from .plot import plot as draw

    try:
        draw(report, path, source=source)
    except BrokenPipeError:
        pass  # `-o /dev/stdout | head -c 8`: its reader chose to stop
    except OSError as exc:
        raise InputError(f"{option}: cannot write {path}: {exc.strerror or exc}") from None
    except InputError as exc:
        raise InputError(f"{read_from}: {exc}" if read_from else str(exc)) from None


def main() -> None:
    # Guarded here too, for what click writes before any command runs (--help, --version).
    out = sys.stdout = _guard(sys.stdout)
    sys.stderr = _guard(sys.stderr)
    try:
        code = app(standalone_mode=False)
    except typer.Abort:  # Ctrl-C while click parses (typers that do not make it an exit of their own)
        code = EXIT_INTERRUPTED
    except Exception as exc:
        # click's own errors (a bad option value, a missing argument), from whichever click typer
        # brings: one line, as every other error, with where help is.
        if not any(c.__name__ == "ClickException" for c in type(exc).__mro__):
            raise
        names = {c.__name__ for c in type(exc).__mro__}
        ctx = getattr(exc, "ctx", None)
        if "NoArgsIsHelpError" in names:  # a bare `batchfind`: its message is the help itself
            typer.echo(exc.format_message(), err=True)
        else:
            hint = f" (see {ctx.command_path if ctx else 'batchfind'} --help)" if "UsageError" in names else ""
            typer.echo(f"error: {printable(plain(exc.format_message()))}{hint}", err=True)
        code = exc.exit_code
    try:
        out.check()
    except BatchfindError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
