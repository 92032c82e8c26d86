"""runner logs RUN [PHASE]: a phase's container output."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.console import Console

from runner.cli import _common


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    lg = sub.add_parser("logs", parents=parents,
                        help="print a phase's container output (from the engine, or the saved copy)",
                        description="Print a phase's container output: from the engine while it has the container, "
                                    "else the copy saved in the phase folder.")
    lg.add_argument("run", metavar="RUN", help="run id or unique prefix")
    lg.add_argument("phase", nargs="?", metavar="PHASE",
                    help="phase name (default: the run's last phase, the one that started most recently)")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing while the container runs")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.runs.operations import phase_log

    engine = _common.engine(args, existing=True)
    run_id = engine.store.resolve_run(args.run)
    out = sys.stdout.buffer
    for chunk in phase_log(engine, run_id, args.phase, follow=args.follow):
        out.write(chunk)
        out.flush()
    return 0
