"""runner stop RUN: cancel a run (queued or running)."""
from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from runner.cli import _common
from runner.cli._render import say


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    st = sub.add_parser("stop", parents=parents, help="stop a run's running phases (SIGTERM, grace period, SIGKILL)")
    st.add_argument("run", metavar="RUN", help="run id or unique prefix")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.operations import stop

    engine = _common.engine(args, existing=True)
    run_id = engine.store.resolve_run(args.run)
    queued, results = stop(engine, run_id)
    if not results:
        say(console, f"run {run_id}: " + ("cancelled while queued; nothing will start" if queued else "nothing running"))
    for r in results:
        say(console, f"run {run_id}: phase {r.phase} {r.status}")
    return 0
