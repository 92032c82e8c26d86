"""runner status [RUN]: runs and their phases; a detached phase whose container ended is judged first."""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from runner.lifecycle import S
from runner.cli import _common
from runner.cli._render import STATUS_WIDTH, add_row, progress_text, render_view, say, server_line, short_time

if TYPE_CHECKING:
    from runner.engine import Engine


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("status", parents=parents, help="show runs and their phases")
    s.add_argument("run", nargs="?", metavar="RUN", help="run id or unique prefix (default: recent runs)")
    s.add_argument("--output", "-o", choices=["table", "json"], default="table",
                   help="table (one line per phase, fitted to the terminal or $COLUMNS) or json (everything, in full)")
    s.add_argument("--wide", "-w", action="store_true",
                   help="one line per phase with every cell in full (reasons and progress not cut)")


COLUMNS = ("RUN", "PHASE", "STATUS", "SUPERVISOR", "VERDICT", "EXIT", "STARTED", "PROGRESS", "REASON")
OPTIONAL = ("STARTED", "EXIT", "PROGRESS", "VERDICT")  # left out, in this order, when the reason would get < 24 columns


def status_table(lines: list[dict[str, str]], width: int | None) -> Table:
    """One line per phase: columns empty in every row are left out; at a narrow width the optional ones go
    first, so that the reason keeps room; what is left is cut with "…" (`--wide`: width None, nothing cut)."""
    shown = [c for c in COLUMNS if c in ("RUN", "PHASE", "STATUS", "REASON") or any(row[c] for row in lines)]

    def need(cols: list[str]) -> int:  # every column but REASON at its natural width, one space between
        return sum(max([len(c)] + [len(row[c]) for row in lines]) + 2 for c in cols if c != "REASON")

    for col in OPTIONAL:
        if width is None or width - need(shown) >= 24:
            break
        if col in shown:
            shown.remove(col)
    table = Table(box=None, pad_edge=False, width=width)
    for col in shown:
        table.add_column(col, no_wrap=True, overflow="ellipsis", ratio=1 if col == "REASON" and width else None)
    for row in lines:
        add_row(table, *(row[c] for c in shown))
    return table


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.server.lock import find_server
    from runner.runs.operations import reconcile, run_document
    from runner.runs.views import queue_rows, run_view

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
    # One line per phase at any width: cells are cut with "…" (`status RUN`, `--wide` and `-o json` have them in full).
    if args.wide:
        console = Console(highlight=False, width=100_000, file=console.file)
    width = None if args.wide else min(console.width, STATUS_WIDTH)
    lines = _table_lines(engine, views, width)
    console.print(status_table(lines, width))
    if args.run:
        _details(console, engine, views[0])
    if note:
        say(console, note)
    return 0


def _table_lines(engine: Engine, views: list[dict], width: int | None) -> list[dict]:
    """One line per phase of each run: its status, supervisor, verdict, exit, start, progress and reason."""
    store = engine.store
    lines = []
    for view in views:
        rows = {r["name"]: r for r in store.phases(view["id"])}
        for p in view["phases"] or [{"name": "-", "status": view["status"], "exit_code": None, "reason": "", "started_at": None}]:
            stored = rows.get(p["name"])
            progress = progress_text(engine, stored) if stored and stored["status"] in (S.RUNNING, S.DETACHED) else ""
            verdict = (p.get("verdict") or "") + (f" ({p['failure_kind']})" if p.get("failure_kind") and p.get("verdict") else "")
            verdict += " (degraded)" if p.get("degraded") else ""
            # who follows an active phase (runner.supervisor): "nobody" is said, never implied
            supervisor = (p.get("supervisor") or "").replace(" (pid ", " ").rstrip(")")
            lines.append({"RUN": view["id"], "PHASE": p["name"], "STATUS": p["status"], "SUPERVISOR": supervisor,
                          "VERDICT": verdict,
                          "EXIT": "" if p["exit_code"] is None else str(p["exit_code"]), "STARTED": short_time(p["started_at"]),
                          "PROGRESS": progress if width is None else progress[:36], "REASON": p["reason"]})
    return lines


def _details(console: Console, engine: Engine, view: dict) -> None:
    """`runner status RUN`: each phase's verdict and explanation, the live view of its active phases, its events."""
    from runner.store import ACTIVE

    for p in view["phases"]:
        if p["explanation"] or p["decision"] or p["reason"]:
            console.print()
            kind = f" ({p['failure_kind']})" if p.get("failure_kind") else ""
            say(console, f"phase {p['name']}: verdict {p['verdict'] or '-'}{kind}")
            if p.get("degraded"):
                say(console, f"  degraded: {p['degraded']}")
            if p["reason"] and p["reason"] not in (p["explanation"] or ""):
                say(console, f"  reason: {p['reason']}")
            for line in (p["explanation"] or "").splitlines():
                say(console, f"  {line}")
            if p["decision"]:
                say(console, f"  next: {p['decision']}")
    for p, row in zip(view["phases"], engine.store.phases(view["id"])):
        if row["status"] in ACTIVE:
            console.print()
            say(console, f"phase {row['name']}: supervised by {p.get('supervisor') or 'nobody'}"
                + (f" (`runner attach {view['id']}` supervises it here)" if p.get("supervisor") == "nobody" else ""))
            console.print(render_view(row["name"], {**engine.view(row["id"]), "state": row["status"]}))
    console.print()
    for e in view["events"]:
        say(console, f"{e['at']}  {e['message']}")
