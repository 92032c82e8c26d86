"""runner status [RUN]: runs and their phases; a detached phase whose container ended is judged first."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from runner.cli import _common
from runner.cli._render import STATUS_WIDTH, add_row, progress_text, render_view, say, server_line, short_time


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("status", parents=parents, help="show runs and their phases")
    s.add_argument("run", nargs="?", metavar="RUN", help="run id or unique prefix (default: recent runs)")
    s.add_argument("--output", "-o", choices=["table", "json"], default="table")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.daemon import find_server
    from runner.operations import reconcile, run_document
    from runner.store import ACTIVE
    from runner.views import queue_rows, run_view

    engine = _common.engine(args, existing=True)
    store = engine.store
    run_ids = [store.resolve_run(args.run)] if args.run else [r["id"] for r in store.runs()]
    server = find_server(_common.state(args).parent)
    note = reconcile(engine, run_ids, server_running=server is not None)
    views = [run_document(engine, r) if args.run else run_view(store, r) for r in run_ids]
    if args.output == "json":
        doc: Any = views[0] if args.run else {"runs": views}
        if note:
            doc = {**doc, "note": note}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    if not args.run:
        waiting = queue_rows(store)
        if server is not None or waiting:
            say(console, server_line(server))
            say(console, f"queue: {len(waiting)} waiting" + (" (`runner queue` lists them)" if waiting else ""))
            console.print()
    # At most 120 columns: long progress and reasons wrap (`runner status RUN` has them in full).
    table = Table(box=None, pad_edge=False, width=min(console.width, STATUS_WIDTH))
    for col in ("RUN", "PHASE", "STATUS", "VERDICT", "EXIT", "STARTED"):
        table.add_column(col, no_wrap=True)
    table.add_column("PROGRESS", overflow="fold", max_width=36)
    table.add_column("REASON", overflow="fold", min_width=20, ratio=1)
    for view in views:
        rows = {r["name"]: r for r in store.phases(view["id"])}
        for p in view["phases"] or [{"name": "-", "status": view["status"], "exit_code": None, "reason": "", "started_at": None}]:
            stored = rows.get(p["name"])
            progress = progress_text(engine, stored) if stored and stored["status"] in ("running", "detached") else ""
            verdict = (p.get("verdict") or "") + (f" ({p['failure_kind']})" if p.get("failure_kind") and p.get("verdict") else "")
            add_row(table, view["id"], p["name"], p["status"], verdict,
                    "" if p["exit_code"] is None else str(p["exit_code"]), short_time(p["started_at"]), progress, p["reason"])
    console.print(table)
    if args.run:
        for p in views[0]["phases"]:
            if p["explanation"] or p["decision"]:
                console.print()
                kind = f" ({p['failure_kind']})" if p.get("failure_kind") else ""
                say(console, f"phase {p['name']}: verdict {p['verdict'] or '-'}{kind}")
                for line in (p["explanation"] or "").splitlines():
                    say(console, f"  {line}")
                if p["decision"]:
                    say(console, f"  next: {p['decision']}")
        for row in store.phases(views[0]["id"]):
            if row["status"] in ACTIVE:
                console.print()
                console.print(render_view(row["name"], {**engine.view(row["id"]), "state": row["status"]}))
        console.print()
        for e in views[0]["events"]:
            say(console, f"{e['at']}  {e['message']}")
    if note:
        say(console, note)
    return 0
