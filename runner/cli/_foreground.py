"""Engine work in this terminal (apply, attach): live view, Ctrl-C stops, SIGHUP/SIGTERM detach."""
from __future__ import annotations

import argparse
import signal
from types import FrameType
from typing import TYPE_CHECKING, Callable

from rich.console import Console

from runner.cli import _common
from runner.cli._render import TerminalReporter, say

if TYPE_CHECKING:
    from runner.engine import Engine, RunResult

# a run's last phase status → exit code (README, "Exit codes")
RECOVERED = 5  # --strict: the chain succeeded only through a failure branch
EXIT = {"succeeded": 0, "detached": 0, "running": 0, "failed": 1, "blocked": 1, "lost": 1, "error": 3, "cancelled": 130}


def foreground(args: argparse.Namespace, console: Console, work: Callable[[Engine], RunResult],
               existing: bool = False) -> int:
    reporter = TerminalReporter(console, Console(stderr=True, highlight=False))
    engine = _common.engine(args, reporter, existing=existing)

    def leave(signum: int, frame: FrameType | None) -> None:
        # Losing the terminal or the runner being stopped never stops training.
        if signum == signal.SIGHUP:
            reporter.dead = True
        engine.detach_requested.set()

    signal.signal(signal.SIGHUP, leave)
    signal.signal(signal.SIGTERM, leave)
    try:
        run = work(engine)
    finally:
        reporter.close()
    for r in run.phases:
        reporter.info(f"run {r.run_id}: phase {r.phase} {r.status}" + (f" ({r.reason})" if r.reason else ""))
    if getattr(args, "detach", False):
        say(console, run.run_id)
    code = EXIT.get(run.last.status, 1)
    if code == 0 and run.last.status == "succeeded":
        from runner.lifecycle import chain_outcome

        if chain_outcome(engine.store.phases(run.run_id)) == "recovered":
            say(Console(stderr=True, highlight=False),
                f"run {run.run_id}: succeeded after a failure branch (an earlier phase failed; `runner status "
                f"{run.run_id}` says which)" + ("; exit 5 (--strict)" if getattr(args, "strict", False) else ""))
            if getattr(args, "strict", False):
                return RECOVERED
    return code
