"""The one family of errors the core raises; the CLI maps each to a message and an exit code."""

import contextlib
import os
import re
import signal
from typing import Any, Iterator


class BatchfindError(Exception):
    """A failure the user can act on; `exit_code` is what the CLI returns."""

    exit_code = 1


class InputError(BatchfindError):
    """Bad input: a config file, a field, an option or a data file."""

    exit_code = 2


class StoppedByInput(InputError):
    """Bad input found after trials had run (a dataset item that raises): the `report` of what ran,
    marked as cut short, to be written before the error is told."""

    def __init__(self, message: str, report: Any):
        super().__init__(message)
        self.report = report

    def __reduce__(self):  # pickled whole, across a process pool
        return type(self), (str(self), self.report)


class UserExit(Exception):
    """`sys.exit` or a KeyboardInterrupt raised by the user's code (a step, a loss, a model's
    forward, a dataset's item) in a worker, which ignores Ctrl-C itself: that code's failure, told
    like any other, not the end of the worker."""

    def __init__(self, exc: BaseException):
        super().__init__(f"SystemExit (sys.exit({exc.code!r}))" if isinstance(exc, SystemExit) else type(exc).__name__)


@contextlib.contextmanager
def exits_are_errors() -> Iterator[None]:
    """Around a call of the user's code: its `sys.exit` or KeyboardInterrupt becomes a `UserExit`.
    A KeyboardInterrupt where Ctrl-C is not ignored may be a real one, and stays one."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            raise
        raise UserExit(exc) from exc
    except SystemExit as exc:
        raise UserExit(exc) from exc


# How set-up says that two of the data's samples, stacked into a batch, did not fit: the data's
# size, not the model's (the worker raises it, the probe's advice reads it).
STACKED_RAN_OUT = "two of the data's samples, stacked into a batch, ran out of memory"


def debugging() -> bool:
    """Tracebacks instead of one-line errors: `--debug`, or BATCHFIND_DEBUG set to anything but
    empty, 0, false, no or off."""
    return os.environ.get("BATCHFIND_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def lines(text: str) -> list[str]:
    """A message's lines, broken at line feeds only: the other characters Python breaks lines at
    (vertical tab, form feed, \\x1c-\\x1e, \\x85, \\u2028, a lone carriage return) may be in a
    file's name, which a message must keep whole (`printable` escapes them)."""
    return [line.removesuffix("\r") for line in text.split("\n")] if text else []


def clipped(text: str, most: int = 300) -> str:
    """The first line of a message, cut to `most` characters: an error echoes what it was given,
    which may be a whole file."""
    line = lines(text.strip())[0] if text.strip() else ""
    return line if len(line) <= most else line[:most - 1] + "…"


# Halves of a character with no other half: what Python makes of bytes that are not UTF-8 (in a
# file's name), which no UTF-8 output or strict JSON reader takes.
_SURROGATES = "\ud800-\udfff"
_UNPAIRED = re.compile(f"[{_SURROGATES}]")
# Characters that steer a terminal or reorder the text around them: C0 and C1 controls (an escape
# sequence recolours, moves or clears), Unicode's line and paragraph separators, its bidirectional
# overrides and isolates; and the unpaired halves, which a terminal cannot be sent at all.
_STEERING = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069{_SURROGATES}]")


def printable(value: Any) -> Any:
    """`value` (text, or the keys and text in a JSON value) with the characters that steer a
    terminal written as escapes (`\\x1b`); line breaks, tabs and all other text kept."""
    return _escaped(value, _STEERING)


def encodable(value: Any) -> Any:
    """`value` (text, or the keys and text in a JSON value) with unpaired surrogates written as
    escapes (`\\udcef`): JSON that any reader takes, and batchfind reads back."""
    return _escaped(value, _UNPAIRED)


def _escaped(value: Any, pattern: re.Pattern) -> Any:
    if isinstance(value, str):
        return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), value)
    if isinstance(value, dict):
        return {_escaped(k, pattern): _escaped(v, pattern) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v, pattern) for v in value]
    return value


def plural(n: int, noun: str) -> str:
    """`1 sample`, `2 samples`: a message that counts says it in words that agree."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# A DataLoader worker's failure comes back as the worker's traceback, headed "Caught X in DataLoader
# worker process N.": what went wrong is on its last line, as "module.X: message".
_LOADER_WORKER = re.compile(r"Caught \w+ (in DataLoader worker process \d+)\.\s*\nOriginal Traceback")


def unwrapped(message: str) -> str:
    """A message as its code raised it; a DataLoader worker's, the message inside and where it ran."""
    found = _LOADER_WORKER.match(message)
    if not found:
        return message
    last = message.strip().splitlines()[-1]
    return f"{last.split(': ', 1)[-1]} ({found.group(1)})"


def described(exc: BaseException) -> str:
    """An exception as `Type: the first line of its message`, cut to `clipped`'s length. The user's
    code raised it: a message whose `str` itself fails says so instead of failing here."""
    if isinstance(exc, (UserExit, SystemExit)):
        return str(exc if isinstance(exc, UserExit) else UserExit(exc))
    try:
        text = clipped(unwrapped(str(exc)))
    except Exception:  # noqa: BLE001 - anything the user's __str__ raises
        text = "(its message could not be read)"
    return f"{type(exc).__name__}: {text}".strip(": ")


def plain(message: str) -> str:
    """A validation message (pydantic's, or a typer's worded as pydantic does) in the words of every
    other error."""
    return message.replace("Value error, ", "").replace("Input should be", "must be")
