"""runner report [RUN]: one self-contained HTML file."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from runner.cli import _common
from runner.cli._render import say


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    rr = sub.add_parser("report", parents=parents,
                        help="write a run's report: plots, verdicts, chain and timeline in one HTML file")
    rr.add_argument("run", nargs="?", metavar="RUN", help="run id or unique prefix (default: the newest run)")
    rr.add_argument("--output", "-o", default=None, metavar="FILE", help="the HTML file (default report-RUN.html)")
    rr.add_argument("--png", default=None, metavar="DIR", help="also write each plot as a PNG file into DIR")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.paths import existing_store
    from runner.report import write_pngs, write_report
    from runner.store import Store

    store = Store(existing_store(_common.state(args), "pass --state, or run from the folder that holds runs/"))
    run_id = store.resolve_run(args.run)
    out = Path(args.output or f"report-{run_id}.html")
    size = write_report(store, run_id, out)
    say(console, f"report of run {run_id}: {out} ({size // 1024} KiB, self-contained)")
    if args.png:
        written = write_pngs(store, run_id, Path(args.png))
        say(console, f"{len(written)} plot(s) as PNG in {args.png}")
    return 0
