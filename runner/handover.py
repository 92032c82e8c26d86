"""Who supervises a run after the terminal that started it goes (`apply --detach`, SIGHUP, SIGTERM).

`runner apply --detach` must mean *my terminal is free and the run is still managed*: guards, the
checkpoint vault, validation, the verdict and the chain go on.  So a phase left by its terminal is
handed over, never left alone:

- to the server of the run store when one runs (``runner serve``): the run's submission is marked
  ``handed-over`` and the server's next tick takes it (its `drive` waits for the leaving terminal's lock);
- otherwise to a background supervisor of its own: ``runner attach RUN`` started in a session of its own
  (no terminal, no SIGHUP, no Ctrl-C), its output in ``RUNS/RUN/supervisor.log``, holding the run's
  supervisor lock (runner.supervisor) like any supervisor.

Unsupervised is possible only when asked for (``--unsupervised``), and said loudly by the caller.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runner.server.lock import find_server
from runner.store import ACTIVE, Store
from runner.supervisor import Holder, Role, holder, log_path

HANDED_OVER = "handed-over"  # a submission source the server owns (daemon.SERVER_SOURCES_SKIPPED lacks it)
ROLE_ENV = "RUNNER_SUPERVISOR"  # set by runner for the processes it starts as background supervisors
PICKUP_S = 20.0  # how long a hand-over waits to see the new supervisor hold the run


@dataclass
class Handover:
    """Who took the run (None: nobody needed to: the run ended meanwhile), and where its output goes."""

    by: Holder | None
    log: Path | None
    note: str = ""  # why nobody took it, when something went wrong (the background supervisor's last lines)


def spawn(state: Path, argv: list[str], log: Path, role: str | None = None) -> subprocess.Popen:
    """Start ``runner --state STATE ARGV...`` in a session of its own (it outlives this terminal: no SIGHUP, no
    Ctrl-C reaches it), stdin closed, stdout and stderr appended to ``log``.  argv only: no shell."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **({ROLE_ENV: role} if role else {})}
    if not role:
        env.pop(ROLE_ENV, None)
    env.pop("COLUMNS", None)
    # The run folder is mounted into containers: the log is never a link or a FIFO put there (O_NOFOLLOW, no block).
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{log} is not a regular file (the run folder is mounted into its containers)")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} runner {' '.join(argv)} (pid of the caller {os.getpid()})\n"
                  .encode())
        out.flush()
        return subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(state), *argv],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, close_fds=True)


def _active(store: Store, run_id: str) -> bool:
    return any(p["status"] in ACTIVE for p in store.phases(run_id))


def _await(runs_dir: Path, run_id: str, taken: Callable[[Holder], bool], gone: Callable[[], bool],
           wait_s: float) -> Holder | None:
    """Poll the run's lock until the new supervisor holds it (``taken``), or ``gone`` says there is no point
    waiting any longer, or ``wait_s`` passes.  The holder that took it, else None."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        h = holder(runs_dir, run_id)
        if h is not None and taken(h):
            return h
        if gone():
            break
        time.sleep(0.1)
    return None


def _tail(path: Path, lines: int = 6) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_background(state: Path, run_id: str, wait_s: float = PICKUP_S) -> Handover:
    """Start a background supervisor for the run and wait until it holds the run (or the run ended)."""
    runs_dir = state.parent
    log = log_path(runs_dir, run_id)
    proc = spawn(state, ["attach", run_id], log, role=Role.BACKGROUND)
    took = _await(runs_dir, run_id, lambda h: h.pid == proc.pid, lambda: proc.poll() is not None, wait_s)
    if took is not None:
        return Handover(took, log)
    store = Store(state)
    try:
        if not _active(store, run_id):
            return Handover(None, log)  # the phase ended meanwhile: judged by the supervisor that just ran
    finally:
        store.close()
    return Handover(holder(runs_dir, run_id), log, note=_tail(log))


def hand_over(store: Store, state: Path, run_id: str, wait_s: float = PICKUP_S) -> Handover:
    """Leave the run supervised after this process goes: by the run store's server when one runs, else by a
    background supervisor.  Called after this process released the run's lock."""
    if not _active(store, run_id):
        return Handover(None, None)
    server = find_server(state.parent)
    if server is None:
        return start_background(state, run_id, wait_s)
    store.set_submission_source(run_id, HANDED_OVER, f"handed over to the server (pid {server.get('pid')}) by "
                                f"the terminal that started it (pid {os.getpid()})")
    took = _await(state.parent, run_id, lambda h: h.role == Role.SERVER, lambda: not _active(store, run_id), wait_s)
    if took is not None or not _active(store, run_id):
        return Handover(took, None)
    return Handover(holder(state.parent, run_id), None, note=f"the server (pid {server.get('pid')}) has not taken "
                    f"it yet; its log says why")
