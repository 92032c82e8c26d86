"""runner serve: inbox, queue, GPU slots; re-adopts running containers on start."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from runner.cli import _common
from runner.errors import Refused, UsageError


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
    from runner.backends.select import backend_factory, is_remote
    from runner.server.server import Server, ServerLock, find_server
    from runner.decisions.policy import MountPolicy
    from runner.server.scheduler import detect_gpus, parse_gpus
    from runner.store import Store

    cpu_slots = _cpu_slots(args.cpu_slots)  # usage errors before the lock is taken
    if args.http:
        from runner.server.http import parse_address

        parse_address(args.http)
    state = _common.state(args)
    runs_dir = state.parent.resolve()
    if state.exists():
        damaged = Store(state).corrupt
        if damaged:
            return _refuse_damaged(state, damaged, console)
    lock = ServerLock(runs_dir)
    if not lock.acquire():
        running = find_server(runs_dir) or {}
        raise Refused(f"a server already serves {runs_dir} (pid {running.get('pid', '?')} on {running.get('host', '?')})",
                      "stop it first; one server per run store")
    try:
        specs = [Path(p) for p in (args.specs or (["specs"] if Path("specs").is_dir() else []))]
        inbox = Path(args.inbox).resolve() if args.inbox else None
        if inbox is not None:
            # One server per inbox too: two servers of different stores on one inbox would both take a drop
            # (a phantom run in one store, a rejection beside the accepted file in the other).
            if not _lock_inbox(inbox):
                raise Refused(f"the inbox {inbox} is served by another `runner serve` (another run store)",
                              "one server per inbox: give this one an inbox of its own")
        extra = [p for p in os.environ.get("RUNNER_ALLOW_MOUNTS", "").split(":") if p]
        roots = [runs_dir, *specs, *([inbox] if inbox else []), *args.allow_mount, *extra]
        factory = backend_factory(runs_dir)
        gpus: list[str]
        if is_remote(factory):  # Slurm places phases and allocates GPUs on its nodes
            gpus, gpu_source = [], "Slurm allocates them"
        else:
            configured = parse_gpus(args.gpus)
            gpus, gpu_source = configured if configured is not None else detect_gpus()
        factory().ping()  # fail now, with the one-line reason, not in the first run
        web = None
        if args.http:
            from runner.server.http import WebServer, make_app

            web = WebServer(make_app(Store(state), runs_dir, lambda: find_server(runs_dir)), args.http)
        server = Server(Store(state), factory, runs_dir, inbox, specs, gpus, gpu_source, cpu_slots,
                        policy=MountPolicy.of(roots), notify=args.notify, quiet=args.quiet)

        def leave(signum: int, frame: FrameType | None) -> None:
            # SIGTERM (docker stop, compose down) or Ctrl-C: stop supervising; containers keep running.
            server.say(f"signal {signal.Signals(signum).name}: leaving; training containers keep running")
            server.stop()

        signal.signal(signal.SIGTERM, leave)
        signal.signal(signal.SIGINT, leave)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            if web is not None:
                web.start()
                server.say(f"web page (read-only): {web.url}  JSON: {web.url}api/runs, {web.url}api/queue")
            server.serve()
        finally:
            if web is not None:
                web.stop()
    finally:
        lock.release()
    return 0


def _refuse_damaged(state: Path, damaged: str, console: Console) -> int:
    """A damaged store: nothing is written into it, and the server does not exit (under compose's restart policy an
    exit would be a crash loop): it says why once a minute until it is stopped, and exits 0 then."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    while not stop.is_set():
        print(f"runner serve: the run store {state} is damaged (PRAGMA quick_check: {damaged[:300]}); nothing is "
              "written into it and no phase is started. Move it aside (a new store starts empty) or restore it from a "
              "backup, then restart the server. `runner status` still reads what it can.", file=sys.stderr, flush=True)
        stop.wait(60)
    return 0


def _lock_inbox(inbox: Path) -> bool:
    """An flock on the inbox folder itself (no file added to it), held for the process's life; False when another
    server holds it."""
    import fcntl

    inbox.mkdir(parents=True, exist_ok=True)
    fd = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    return True  # the descriptor stays open (and locked) until the process ends
