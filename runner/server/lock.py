"""One server per run store, and how the commands find it: an flock on RUNS/server.lock held while the server lives,
and RUNS/server.json (pid, host, inbox, GPUs, queue, heartbeat) beside it.

Kept apart from the server itself so that `runner status`, `runner apply` and `runner queue` can ask whether a
server runs without importing it (and the engine with it): a status must answer in a fraction of a second."""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path


def info_path(runs_dir: Path) -> Path:
    return Path(runs_dir) / "server.json"


def lock_path(runs_dir: Path) -> Path:
    return Path(runs_dir) / "server.lock"


class ServerLock:
    """One server per run store: an flock on RUNS/server.lock, held while the server lives.
    The kernel drops it when the process dies (SIGKILL included), so a restarted server
    never waits for a stale heartbeat; it works across containers sharing the folder."""

    def __init__(self, runs_dir: Path):
        self.path = lock_path(runs_dir)
        self.fd: int | None = None

    def acquire(self, wait_s: float = 5.0) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.fd = fd
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:  # (a client probing the lock holds it for microseconds)
                    os.close(fd)
                    return False
                time.sleep(0.1)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _lock_held(runs_dir: Path) -> bool:
    try:
        fd = os.open(lock_path(runs_dir), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def find_server(runs_dir: Path) -> dict | None:
    """The running server for this run store (None: none is running): its lock is held, and
    its heartbeat file says where it is."""
    path = info_path(runs_dir)
    if not _lock_held(runs_dir):
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        info = {"pid": "?", "host": "?", "heartbeat_at": 0}
    info["heartbeat_age"] = time.time() - float(info.get("heartbeat_at", 0))
    info["path"] = str(path)
    return info
