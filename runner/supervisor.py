"""Who supervises a run: one supervisor at a time, enforced by an advisory lock on the run's folder.

A supervisor is the process that follows a run's active phase (logs, metrics, guards, the checkpoint
vault, validation, the verdict, the chain): `runner apply` in a terminal, a background supervisor
(`apply --detach`, a terminal that went away), or `runner serve`.  It holds ``RUNS/RUN/supervisor.lock``
(``flock``, released by the kernel when the process ends, however it ends) with who it is written inside,
so `runner status` can say who watches each phase and a second supervisor is refused instead of
racing the first over the same container and vault.

The lock lives on the run store's filesystem.  flock works on local filesystems; the run store is
required to be local anyway (SQLite).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = "supervisor.lock"
LOG_NAME = "supervisor.log"  # a background supervisor's own output, next to the phases' container logs


class Role:
    """Who supervises (the words `runner status` shows)."""

    TERMINAL = "terminal"      # runner apply / attach in the foreground
    BACKGROUND = "background"  # a detached supervisor process of its own (apply --detach, a lost terminal)
    SERVER = "server"          # runner serve


@dataclass(frozen=True)
class Holder:
    """The supervisor holding a run's lock."""

    role: str
    pid: int
    host: str
    since: float

    @property
    def named(self) -> bool:
        """A supervisor runner can talk to (not a lock file someone else put there, or one being written)."""
        return self.pid > 0

    def describe(self) -> str:
        if not self.named:
            return "unknown (its lock file names no runner process)"
        return f"{self.role} (pid {self.pid}{'' if self.host == socket.gethostname() else ' on ' + self.host})"


def lock_path(runs_dir: Path | str, run_id: str) -> Path:
    return Path(runs_dir) / run_id / LOCK_NAME


def log_path(runs_dir: Path | str, run_id: str) -> Path:
    return Path(runs_dir) / run_id / LOG_NAME


def _read(fd: int) -> Holder | None:
    try:
        raw = os.pread(fd, 4096, 0).decode()
        d = json.loads(raw)
        return Holder(str(d["role"]), int(d["pid"]), str(d["host"]), float(d["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # being written right now, or not ours: held, by someone unnamed


def holder(runs_dir: Path | str, run_id: str) -> Holder | None:
    """Who supervises the run now, or None when nobody does.  Never blocks, never creates anything."""
    path = lock_path(runs_dir, run_id)
    try:
        # the run folder is mounted into containers: never follow a link, never block on a FIFO put there
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None  # no lock file: nobody ever supervised it from this store, or its folder is gone
    except OSError:
        return Holder("unknown", 0, "", 0.0)  # a link or something else put there: never taken for "nobody"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return Holder("unknown", 0, "", 0.0)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or Holder("unknown", 0, "", 0.0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class SupervisorLock:
    """The lock of one run, held while this process supervises it.

    ``acquire`` waits up to ``wait_s`` for a supervisor that is leaving (attach taking over from a background
    supervisor, the server taking over from a terminal that went away) and returns the holder that kept it
    when it could not get it.  The lock file is opened without following symlinks (the run folder is
    mounted into containers)."""

    def __init__(self, runs_dir: Path | str, run_id: str, role: str):
        self.path = lock_path(runs_dir, run_id)
        self.role = role
        self._fd: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait_s: float = 0.0) -> Holder | None:
        if self._fd is not None:
            self._depth += 1  # re-entrant in one process: attach → drive
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{self.path} is not a regular file (the run folder is mounted into its containers); "
                          "runner does not use it")
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    other = _read(fd) or Holder("unknown", 0, "", 0.0)
                    os.close(fd)
                    return other
                time.sleep(0.1)
        me = {"role": self.role, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd, self._depth = fd, 1
        return None

    def release(self) -> None:
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # nobody's name left behind (a reader may still see it for an instant)
        except OSError:
            pass
        os.close(fd)  # closing the last descriptor releases the flock
