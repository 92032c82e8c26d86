"""runner tensorboard [RUN]: the TensorBoard command line for a run's phases (each phase a run of its own)."""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from rich.console import Console

from runner.cli import _common
from runner.cli._render import say


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    tb = sub.add_parser("tensorboard", parents=parents,
                        help="print the tensorboard command that shows a run's phases side by side")
    tb.add_argument("run", nargs="?", metavar="RUN", help="run id or unique prefix (default: every run in the store)")
    tb.add_argument("--port", type=int, default=6006, help="the port tensorboard listens on (default 6006)")


def logdirs(store: Any, run_ids: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, logdir) of every phase whose metrics come from TensorBoard files, and notes on the others."""
    found, notes = [], []
    for run_id in run_ids:
        for row in store.phases(run_id):
            metrics = (json.loads(row["phase_json"] or "{}") or {}).get("metrics") or {}
            tb = metrics.get("tensorboard")
            label = f"{run_id}/{row['name']}"
            if tb and tb.get("logdir"):
                found.append((label, str(Path(row["spec_path"]).parent / tb["logdir"])))  # relative: to the spec file
            elif metrics:
                notes.append(f"{label}: metrics from stdout/JSONL, not TensorBoard files: `runner status {run_id}`, "
                             f"`runner report {run_id}`")
    return found, notes


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.store import Store

    store = Store(_common.existing_state(args))
    run_ids = [store.resolve_run(args.run)] if args.run else [r["id"] for r in store.runs()]
    found, notes = logdirs(store, run_ids)
    for note in notes:
        say(console, f"# {note}")
    if not found:
        say(console, f"# no phase of {'run ' + run_ids[0] if args.run else 'this store'} logs TensorBoard files; "
                     f"all runs side by side: tensorboard --logdir {shlex.quote(str(_common.state(args).parent))}")
        return 0
    spec = ",".join(f"{name}:{path}" for name, path in found)
    say(console, f"tensorboard --logdir_spec {shlex.quote(spec)} --port {args.port}")
    return 0
