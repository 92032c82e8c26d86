"""runner metrics PATH: the scalars runner reads from a logdir, event file or JSONL file.

Fast to start: this module imports nothing heavy at the top, and rich is loaded only when rich draws something (a
terminal, a table that must be squeezed, a warning).  Piped output of a table that fits is written here directly,
byte for byte what rich writes for it (tests/metrics/test_metrics_cli.py compares the two).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

LAZY_CONSOLE = True  # run() gets None and makes its console only if rich draws (runner.cli.main)
COLUMNS = ("TAG", "POINTS", "FIRST STEP", "LAST STEP", "LAST", "MIN", "MAX")


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    m = sub.add_parser("metrics", parents=parents,
                       help="print the scalars runner reads from a logdir, event file or JSONL file")
    m.add_argument("path", metavar="PATH", help="a TensorBoard event file, a logdir, or a JSONL metrics file")
    m.add_argument("--tag", action="append", default=[], help="only these tags (repeatable)")
    m.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="table (a summary per tag), csv or json (every point)")


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    import numpy as np

    from runner.metrics.sources import read_scalars

    metrics, problems = read_scalars(args.path, args.tag)
    if problems:
        from rich.console import Console

        from runner.cli._render import say

        err = Console(stderr=True)
        for p in problems:
            say(err, f"warning: {p}")
    names = sorted(metrics.series)
    if args.format == "csv":
        out = ["tag,step,value"]
        for name in names:
            s = metrics.series[name]
            out += [f"{name},{st},{v!r}" for st, v in zip(s.steps.tolist(), s.values.tolist())]
        sys.stdout.write("\n".join(out) + "\n")
    elif args.format == "json":
        doc = {name: {"steps": metrics.series[name].steps.tolist(),
                      "values": [v if v == v and abs(v) != float("inf") else str(v) for v in metrics.series[name].values.tolist()]}
               for name in names}
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        rows: list[tuple[str, ...]] = []
        for name in names:
            s = metrics.series[name]
            fin = s.values[np.isfinite(s.values)]
            rows.append((name, str(len(s)), str(int(s.steps[0])), str(int(s.steps[-1])), f"{s.values[-1]:.6g}",
                         f"{fin.min():.6g}" if fin.size else "-", f"{fin.max():.6g}" if fin.size else "-"))
        plain = plain_table(COLUMNS, rows) if names and console is None else None
        if plain is not None:
            sys.stdout.write(plain)
        else:
            _rich_table(console, rows, args.path)
    return 0


def _rich_table(console: Console | None, rows: list[tuple[str, ...]], path: str) -> None:
    from rich.table import Table

    from runner.cli import _console
    from runner.cli._render import add_row, say

    console = console or _console()
    table = Table(box=None, pad_edge=False)
    for col in COLUMNS:
        table.add_column(col, no_wrap=True)
    for row in rows:
        add_row(table, *row)
    console.print(table)
    if not rows:
        say(console, f"no scalars found under {path}")


def plain_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str | None:
    """The table as rich prints it (``Table(box=None, pad_edge=False)``, no-wrap columns) through runner's console
    when stdout is not a terminal, or None when only rich can say what it prints: stdout is a terminal or rich is
    told to treat it as one (colours, the terminal's width), a cell is not printable ASCII (cell widths), or the
    table is wider than the console (rich squeezes it)."""
    env = os.environ
    if "FORCE_COLOR" in env or "TTY_COMPATIBLE" in env:
        return None
    try:
        if sys.stdout.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    try:  # as runner.cli._console sizes a console that is not a terminal
        width = max(40, int(env.get("COLUMNS") or 200))
    except ValueError:
        width = 200
    cells = [header, *rows]
    if any(not (c.isascii() and c.isprintable()) for row in cells for c in row):
        return None
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    if sum(widths) + 2 * (len(widths) - 1) > width:
        return None
    lines = []
    for row in cells:
        *first, last = row
        lines.append("".join(c.ljust(w) + "  " for c, w in zip(first, widths)) + last.ljust(widths[-1]) + "\n")
    return "".join(lines)
