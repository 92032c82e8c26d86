"""Criteria windows as a spec writes them ('all', 'last 500 steps', 'since 1000'): parsed here, at the bottom,
so the spec models validate them without importing the decisions (runner.decisions.criteria uses them)."""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    kind: str  # all | last | since
    n: int = 0


def parse_window(value: str | int) -> Window:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError("a window of steps must be at least 1")
        return Window("last", value)
    text = str(value).strip()
    if text == "all":
        return Window("all")
    m = re.fullmatch(r"(?:last\s+)?(\d+)\s*steps?", text)
    if m:
        return Window("last", int(m.group(1)))
    m = re.fullmatch(r"since\s+(?:step\s+)?(\d+)", text)
    if m:
        return Window("since", int(m.group(1)))
    raise ValueError(f"window must be 'all', 'last N steps' or 'since STEP', got {value!r}")
