"""Parsing and printing byte sizes (`2GiB`, `512MiB`, `1.5GB`), and printing rates."""

import re
from decimal import Decimal

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4, "p": 1000**5, "pb": 1000**5, "e": 1000**6, "eb": 1000**6,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "pib": 1024**5, "eib": 1024**6,
}
# With a sign: a negative size is told it must be positive, not that it is no size.
# ASCII digits only: `\d` takes any script's (١GiB), which no one means as a size.
_SIZE = re.compile(r"^\s*(-?[0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*\Z")
# The largest limit the kernel's setrlimit takes (a signed 64-bit count of bytes).
MAX_BYTES = 2**63 - 1
MIN_BYTES = 1024**2


def parse_size(text: str | int) -> int:
    """Bytes in `text`; raises ValueError with what was expected."""
    if isinstance(text, bool):
        raise ValueError(f"expected a size like 2GiB or 512MiB (got {text!r})")
    if isinstance(text, float) and text.is_integer():
        text = int(text)  # JSON's 2e9: a whole number of bytes, written as a float
    if isinstance(text, int):
        size = text
    else:
        match = _SIZE.match(str(text))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _UNITS:
            raise ValueError(f"expected a size like 2GiB, 512MiB or 1.5GB (got {text!r})")
        number = match.group(1)
        if _UNITS[unit] == 1 and "." in number:
            raise ValueError(f"a number of bytes is whole: add a unit, as in {number}GiB (got {text!r})")
        # Decimal, not float, and only so many digits: hundreds must give "too large", not an overflow.
        size = int(Decimal(number) * _UNITS[unit]) if len(number.split(".")[0]) <= 24 else MAX_BYTES + 1
    if size <= 0:
        raise ValueError(f"must be > 0 bytes (got {text!r})")
    if size < MIN_BYTES:  # no process runs torch in less: a unit left out (2 for 2GiB)
        raise ValueError(f"must be at least 1 MiB; a number without a unit counts bytes (got {text!r}: "
                         f"{size} bytes)")
    if size > MAX_BYTES:
        raise ValueError(f"must be at most {MAX_BYTES} bytes (8 EiB) (got {_short(text)})")
    return size


def _short(text: str | int) -> str:
    text = repr(text) if isinstance(text, str) else str(text)
    return text if len(text) <= 40 else f"{text[:20]}…({len(text)} characters)"


def format_size(size: int | None) -> str:
    """`1.50 GiB`-style text; `-` for not measured."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} EiB"  # MAX_BYTES is 8 EiB


def rate_text(per_s: float | None) -> str:
    """Samples per second: whole numbers from 100 up, three significant digits below (0.412, 41.2)
    and past a trillion (a report read back may hold any number: 1e+300, not 301 digits)."""
    if per_s is None:
        return "-"
    return f"{per_s:,.0f}" if 100 <= per_s < 1e12 else f"{per_s:.3g}"
