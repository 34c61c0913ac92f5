"""Reading the files a user names, within bounds: a config or report is small, so anything that is
not (/dev/zero, a YAML alias bomb, nesting thousands deep) is refused in one line, not read forever."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import InputError

# A config is a few hundred bytes, a report about 1.3 KB per trial (5.4 KB for four): room to spare.
MAX_CONFIG_BYTES = 1 << 20
MAX_REPORT_BYTES = 64 << 20
# Values once YAML aliases are expanded, and levels of nesting: far above any real config or
# report, far below what exhausts memory or the interpreter's recursion limit.
MAX_VALUES = 100_000
MAX_DEPTH = 64
# Linux's NAME_MAX and PATH_MAX: longer names fail in the kernel with a message naming no field.
NAME_MAX = 255
PATH_MAX = 4096


def path_problem(path: str | os.PathLike) -> str | None:
    """Why no file can have this name (a NUL byte, a name too long), or None."""
    text = os.fspath(path)
    if "\0" in text:
        return "the path contains a NUL byte"
    if len(os.fsencode(text)) >= PATH_MAX:
        return f"the path is longer than {PATH_MAX - 1} bytes"
    if any(len(os.fsencode(part)) > NAME_MAX for part in Path(text).parts):
        return f"a name in the path is longer than {NAME_MAX} bytes"
    return None


def read_text(path: Path, limit: int, what: str) -> str:
    """The file's text, read up to `limit` bytes; every failure is one InputError naming the file."""
    problem = path_problem(path)
    if problem:
        raise InputError(f"{_show(path)}: {problem}")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # a device or a pipe has no size to check first
    except FileNotFoundError:
        raise InputError(f"{_show(path)}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{_show(path)}: is a directory, expected {what}") from None
    except OSError as exc:
        raise InputError(f"{_show(path)}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError(f"{_show(path)}: larger than {limit >> 20} MiB, expected {what}")
    try:
        return data.decode("utf-8-sig")  # a byte-order mark, as some editors write, is no content
    except UnicodeDecodeError as exc:
        raise InputError(f"{_show(path)}: not UTF-8 text (byte {exc.start}), expected {what}") from None


def check_shape(value: Any, path: Path, max_values: int | None = MAX_VALUES,
                max_text: int | None = MAX_CONFIG_BYTES) -> None:
    """Refuse data nested deeper than MAX_DEPTH, or holding more than `max_values` values or
    `max_text` characters of text, counting each use of a YAML alias (which may also refer to
    itself) as the copy it becomes later: in the report, a megabyte of text used a thousand times
    is a gigabyte. JSON has no aliases: its size bound is the file's."""
    stack = [(value, 1)]
    count = text = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if max_values is not None and count > max_values:
            raise InputError(f"{_show(path)}: more than {max_values} values once YAML aliases are expanded")
        if depth > MAX_DEPTH:
            raise InputError(f"{_show(path)}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, str):
            text += len(item)
        elif isinstance(item, dict):
            text += sum(len(key) for key in item if isinstance(key, str))
        if max_text is not None and text > max_text:
            raise InputError(f"{_show(path)}: more than {max_text >> 20} MiB of text once YAML aliases are expanded")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _show(path: Path) -> str:
    # The name itself may be what is wrong: NUL bytes and thousands of characters stay readable.
    text = repr(os.fspath(path))[1:-1]
    return text if len(text) <= 240 else f"{text[:200]}…{text[-32:]}"
