"""runner serve: inbox, queue, GPU slots; re-adopts running containers on start."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from runner.cli import _common
from runner.errors import UsageError


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    sv = sub.add_parser("serve", parents=parents,
                        help="run as a server: inbox, queue, GPU slots; re-adopts running containers on start")
    sv.add_argument("--inbox", default=os.environ.get("RUNNER_INBOX"), metavar="DIR",
                    help="watch DIR for dropped spec files (default $RUNNER_INBOX; none: only `runner apply` submits)")
    sv.add_argument("--specs", action="append", default=None, metavar="DIR",
                    help="spec library (repeatable; default ./specs): mounts from it are allowed, and a dropped copy of "
                         "one of its files runs as that file")
    sv.add_argument("--allow-mount", action="append", default=[], metavar="DIR",
                    help="also allow bind mounts from under DIR (repeatable; also $RUNNER_ALLOW_MOUNTS, ':'-separated)")
    sv.add_argument("--gpus", default=os.environ.get("RUNNER_GPUS"), metavar="IDS",
                    help="GPU ids to schedule, e.g. 0,1,3, or 'none' (default $RUNNER_GPUS, else ask nvidia-smi)")
    sv.add_argument("--cpu-slots", type=int, default=None, metavar="N",
                    help="CPU-only phases that may run at once (default $RUNNER_CPU_SLOTS or 4)")
    sv.add_argument("--notify", default=os.environ.get("RUNNER_NOTIFY"), metavar="URL",
                    help="POST a JSON message to URL on verdicts, guard trips and lost phases (default $RUNNER_NOTIFY)")
    sv.add_argument("--http", default=os.environ.get("RUNNER_HTTP"), metavar="HOST:PORT",
                    help="also serve a read-only web page (runs, queue, reports) and JSON under /api/ "
                         "(e.g. 127.0.0.1:8080; default $RUNNER_HTTP, none)")
    sv.add_argument("--quiet", type=float, default=10.0, metavar="SECONDS",
                    help="with no file events, an inbox file is read once unchanged this long (default 10)")


def _cpu_slots(given: int | None) -> int:
    if given is None:
        try:
            given = int(os.environ.get("RUNNER_CPU_SLOTS") or 4)
        except ValueError:
            raise UsageError(f"RUNNER_CPU_SLOTS={os.environ['RUNNER_CPU_SLOTS']!r} is not a number") from None
    if given < 1:
        raise UsageError("--cpu-slots must be at least 1")
    return given


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.server.start import ServerConfig, run as serve

    cpu_slots = _cpu_slots(args.cpu_slots)  # usage errors before the lock is taken
    if args.http:
        from runner.server.http import parse_address

        parse_address(args.http)
    return serve(ServerConfig(
        state=_common.state(args), cpu_slots=cpu_slots, inbox=Path(args.inbox) if args.inbox else None,
        specs=[Path(p) for p in (args.specs or (["specs"] if Path("specs").is_dir() else []))],
        allow_mounts=list(args.allow_mount), gpus=args.gpus, notify=args.notify, http=args.http, quiet=args.quiet))
