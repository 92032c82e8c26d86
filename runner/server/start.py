"""Starting `runner serve`: ``run(ServerConfig)`` takes the run store's server lock (and the inbox's), builds the mount
policy, the backend and the GPU inventory, starts the optional web page, and serves until SIGTERM/Ctrl-C.  The CLI
only parses its arguments into a ServerConfig."""
from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from runner.backends.select import backend_factory, is_remote
from runner.decisions.policy import MountPolicy
from runner.errors import Refused
from runner.server.scheduler import detect_gpus, parse_gpus
from runner.server.lock import ServerLock, find_server
from runner.server.server import Server
from runner.store import Store


@dataclass(frozen=True)
class ServerConfig:
    """What a server serves and how (runner serve's options, defaults and environment already applied)."""

    state: Path  # the run store (runs live in its folder)
    cpu_slots: int  # CPU-only phases that may run at once
    specs: list[Path] = field(default_factory=list)  # the spec library: mounts from it are allowed
    inbox: Path | None = None  # dropped spec files are submitted from here
    allow_mounts: list[str] = field(default_factory=list)  # more roots bind mounts may come from
    gpus: str | None = None  # GPU ids to schedule, 'none', or None: ask nvidia-smi
    notify: str | None = None  # webhook URL
    http: str | None = None  # HOST:PORT of the read-only web page, or None
    quiet: float = 10.0  # an inbox file with no events is read once unchanged this long


def run(config: ServerConfig) -> int:
    """Serve until told to stop (0).  Refused when another server holds the store or the inbox; a damaged store is
    said once a minute and never written (under compose's restart policy an exit would be a crash loop)."""
    state = config.state
    runs_dir = state.parent.resolve()
    if state.exists():
        damaged = Store(state).corrupt
        if damaged:
            return _refuse_damaged(state, damaged)
    lock = ServerLock(runs_dir)
    if not lock.acquire():
        running = find_server(runs_dir) or {}
        raise Refused(f"a server already serves {runs_dir} (pid {running.get('pid', '?')} on {running.get('host', '?')})",
                      "stop it first; one server per run store")
    try:
        inbox = config.inbox.resolve() if config.inbox is not None else None
        # One server per inbox too: two servers of different stores on one inbox would both take a drop
        # (a phantom run in one store, a rejection beside the accepted file in the other).
        if inbox is not None and not _lock_inbox(inbox):
            raise Refused(f"the inbox {inbox} is served by another `runner serve` (another run store)",
                          "one server per inbox: give this one an inbox of its own")
        extra = [p for p in os.environ.get("RUNNER_ALLOW_MOUNTS", "").split(":") if p]
        roots: list[str | Path] = [runs_dir, *config.specs, *([inbox] if inbox else []), *config.allow_mounts, *extra]
        factory = backend_factory(runs_dir)
        gpus: list[str]
        if is_remote(factory):  # Slurm places phases and allocates GPUs on its nodes
            gpus, gpu_source = [], "Slurm allocates them"
        else:
            configured = parse_gpus(config.gpus)
            gpus, gpu_source = configured if configured is not None else detect_gpus()
        factory().ping()  # fail now, with the one-line reason, not in the first run
        server = Server(Store(state), factory, runs_dir, inbox, config.specs, gpus, gpu_source, config.cpu_slots,
                        policy=MountPolicy.of(roots), notify=config.notify, quiet=config.quiet)
        _serve(server, state, runs_dir, config.http)
    finally:
        lock.release()
    return 0


def _serve(server: Server, state: Path, runs_dir: Path, http: str | None) -> None:
    web = None
    if http:
        from runner.server.http import WebServer, make_app

        web = WebServer(make_app(Store(state), runs_dir, lambda: find_server(runs_dir)), http)

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


def _refuse_damaged(state: Path, damaged: str) -> int:
    """A damaged store: nothing is written into it, and the server does not exit: it says why once a minute until it
    is stopped, and exits 0 then."""
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
