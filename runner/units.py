"""Parsing of human-friendly durations ("90s", "1h30m") and sizes ("16g", "100GiB")."""
from __future__ import annotations

import re

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)\s*$", re.IGNORECASE)


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string such as "90s", "3h", "1h30m", "250ms".

    Raises ValueError with a message fit for a spec error."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '90s' or '3h', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, total = 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if text and pos == len(text):
            return total
    raise ValueError(f"expected a duration such as '90s', '3h' or '1h30m', got {value!r}")


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as "16g", "512m", "100GiB", "1.5GB".

    Docker's convention applies: k/m/g/t/p are powers of 1024, with or without
    a trailing 'b'/'ib'."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '16g' or '100GiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            number, unit = float(m.group(1)), m.group(2).lower()
            power = "kmgtp".index(unit) + 1 if unit else 0
            return int(number * 1024**power)
    raise ValueError(f"expected a size such as '16g', '512m' or '100GiB', got {value!r}")


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"
