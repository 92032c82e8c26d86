"""runner apply FILE: run a phase spec here, or submit it to the server running for this run store."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from runner.cli import _common
from runner.cli._foreground import foreground
from runner.cli._render import say


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("apply", parents=parents, help="run a phase spec in a container")
    a.add_argument("file", metavar="FILE", help="the phase spec (YAML); every spec its next: rules reach is checked first")
    a.add_argument("--input", "-i", action="append", default=[], metavar="NAME=VALUE", help="set an input (repeatable)")
    a.add_argument("--detach", "-d", action="store_true",
                   help="start the phase and return at once; the run stays supervised (by the server of this run "
                        "store, else a background supervisor: guards, checkpoint vault, verdict and chain go on)")
    a.add_argument("--unsupervised", action="store_true",
                   help="with --detach: leave the phase with nobody watching it (no guards, no vault, no verdict "
                        "until `runner attach`); checkpoints the trainer deletes meanwhile are lost")
    a.add_argument("--priority", type=int, default=0, help="queue priority when a server runs (higher first; default 0)")
    a.add_argument("--strict", action="store_true",
                    help="exit 5 when the chain succeeded only through a failure branch (an earlier phase failed)")
    a.add_argument("--local", action="store_true",
                   help="run in this terminal even if a server (runner serve) runs for this run store")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.server.lock import find_server

    inputs = _common.parse_inputs(args.input)  # a usage error before anything else is looked at
    server = None if args.local else find_server(_common.state(args).parent)
    if server is None:
        return foreground(args, console, lambda engine: engine.apply(args.file, inputs, detach=args.detach))
    from runner.server.submit import submit_to_server

    done = submit_to_server(_common.state(args), args.file, inputs, args.priority, server)
    say(Console(stderr=True, highlight=False),
        f"submitted to the server (pid {server['pid']} on {server['host']}, found by its lock on "
        f"{Path(server['path']).with_name('server.lock')} and its heartbeat file {server['path']}, "
        f"heartbeat {server['heartbeat_age']:.0f}s ago): run {done.run_id}"
        + (f", queue position {done.position}" if done.position else "")
        + f"; follow with `runner status {done.run_id}` or `runner logs {done.run_id} -f` (--local runs it here instead)")
    say(console, done.run_id)
    return 0
