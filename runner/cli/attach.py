"""runner attach RUN: supervise a run's active phase in the foreground (taking over from its background supervisor),
or (--background) start a background supervisor for it."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from rich.console import Console

from runner.cli import _common
from runner.cli._foreground import foreground, take_over
from runner.cli._render import say

if TYPE_CHECKING:
    from runner.engine import Engine, RunResult


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    at = sub.add_parser("attach", parents=parents,
                        help="supervise a run's phase here: guards, verdict and chain continue where they were "
                             "(takes over from a background supervisor)")
    at.add_argument("--strict", action="store_true",
                    help="exit 5 when the chain succeeded only through a failure branch (an earlier phase failed)")
    at.add_argument("--background", action="store_true",
                    help="start a background supervisor for the run instead (for a phase left --unsupervised) "
                         "and return; its log is RUNS/RUN/supervisor.log")
    at.add_argument("run", metavar="RUN", help="run id or unique prefix")


def run(args: argparse.Namespace, console: Console) -> int:
    if args.background:
        from runner.handover import start_background
        from runner.store import Store
        from runner.supervisor import holder

        state = _common.existing_state(args)
        store = Store(state)
        try:
            run_id = store.resolve_run(args.run)
        finally:
            store.close()
        h = holder(state.parent, run_id)
        if h is not None:
            say(console, f"run {run_id}: already supervised by {h.describe()}")
            return 0
        done = start_background(state, run_id)
        if done.by is None:
            say(console, f"run {run_id}: " + (f"no supervisor started: {done.note}" if done.note
                                                else "nothing left to supervise (it ended)"))
            return 1 if done.note else 0
        say(console, f"run {run_id}: supervised by {done.by.describe()}; its log: {done.log}")
        return 0

    def work(engine: Engine) -> RunResult:
        run_id = engine.store.resolve_run(args.run)
        engine.lock_wait_s = max(engine.lock_wait_s, take_over(engine, run_id, console))
        return engine.attach(run_id)

    return foreground(args, console, work, existing=True)
