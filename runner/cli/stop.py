"""runner stop RUN: cancel a run (queued or running); says *stopping…* until its phases have really ended."""
from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console

from runner.lifecycle import S
from runner.cli import _common
from runner.cli._render import say


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    st = sub.add_parser("stop", parents=parents, help="stop a run's running phases (SIGTERM, grace period, SIGKILL) "
                        "and wait until they have ended")
    st.add_argument("run", metavar="RUN", help="run id or unique prefix")
    st.add_argument("--no-wait", action="store_true",
                    help="return once the stop is under way (the run's supervisor, or a background `runner stop`, "
                         "finishes it); `runner status RUN` shows when it is cancelled")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.runs.operations import finish_stop, request_stop

    err = Console(stderr=True, highlight=False)
    engine = _common.engine(args, existing=True)
    run_id = engine.store.resolve_run(args.run)
    stopping = request_stop(engine, run_id)
    running = [r for r in stopping.phases if r["status"] != S.PENDING or r["container_id"]]
    if not stopping.phases:
        say(console, f"run {run_id}: " + ("cancelled while queued; nothing will start" if stopping.queued
                                           else "nothing running"))
        return 0
    for r in running:
        grace = float(json.loads(r["plan_json"] or "{}").get("stop_grace", 30))
        who = f"its supervisor, {stopping.by.describe()}," if stopping.by else "runner"
        say(err, f"run {run_id}: phase {r['name']} stopping… ({who} sends SIGTERM; SIGKILL after {grace:g}s grace)")
    if args.no_wait and running:
        if stopping.by is None:
            from runner.handover import spawn
            from runner.supervisor import log_path

            spawn(_common.existing_state(args), ["stop", run_id], log_path(engine.runs_dir, run_id))
        say(console, f"run {run_id}: stopping; `runner status {run_id}` shows when it is cancelled")
        return 0
    for ended in finish_stop(engine, stopping):
        say(console, f"run {run_id}: phase {ended.phase} {ended.status}" + (f" ({ended.reason})" if ended.reason else ""))
    return 0
