"""runner queue: the server's waiting work, in start order."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from runner.cli import _common
from runner.cli._render import add_row, say, server_line


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    q = sub.add_parser("queue", parents=parents, help="list the server's waiting work, in the order it will start")
    q.add_argument("--output", "-o", choices=["table", "json"], default="table", help="table, or json for scripts")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.server.lock import find_server
    from runner.paths import existing_store
    from runner.store import Store
    from runner.runs.views import queue_rows

    state = existing_store(_common.state(args), "start a server with `runner serve`, or pass --state")
    server = find_server(state.parent)
    rows = queue_rows(Store(state))
    if args.output == "json":
        sys.stdout.write(json.dumps({"server": server, "queue": rows}, indent=2, default=str) + "\n")
        return 0
    say(console, server_line(server))
    if not rows:
        say(console, "queue: empty")
        return 0
    table = Table(box=None, pad_edge=False)
    for col in ("#", "RUN", "PRIO", "PHASE", "SUBMITTED", "SOURCE"):
        table.add_column(col, no_wrap=True)
    table.add_column("WAITING FOR", overflow="fold", min_width=20)
    for i, r in enumerate(rows, 1):
        add_row(table, str(i), r["run"], str(r["priority"]), r["phase"] or Path(r["spec"]).name, r["submitted_at"] or "",
                r["source"], r["waiting_for"])
    console.print(table)
    return 0
