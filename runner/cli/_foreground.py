"""Engine work in this process (apply, attach): live view, Ctrl-C stops; a terminal that goes (SIGHUP, SIGTERM,
``--detach``) hands its run over to a supervisor that stays (runner.handover), never leaves it alone.

The same code runs a background supervisor (``RUNNER_SUPERVISOR=background``, started by the hand-over): its
messages go to its log, the container's output is already in the phase's container.log, SIGHUP is ignored and
SIGTERM makes it leave (that is how `runner attach` takes over from it)."""
from __future__ import annotations

import argparse
import os
import signal
from types import FrameType
from typing import TYPE_CHECKING, Callable

from rich.console import Console

from runner.lifecycle import S
from runner.cli import _common
from runner.cli._render import TerminalReporter, say
from runner.supervisor import Role

if TYPE_CHECKING:
    from runner.engine import Engine, RunResult

# a run's last phase status → exit code (README, "Exit codes")
RECOVERED = 5  # --strict: the chain succeeded only through a failure branch
DEGRADED = 6  # the chain succeeded, but a phase's best checkpoint was lost (checkpoints.on_missed_best: warn)
EXIT: dict[str, int] = {S.SUCCEEDED: 0, S.DETACHED: 0, S.RUNNING: 0, S.FAILED: 1, S.BLOCKED: 1, S.LOST: 1, S.ERROR: 3, S.CANCELLED: 130}
TAKE_OVER_S = 60.0  # how long attach waits for a background supervisor it asked to leave


def role() -> str:
    from runner.handover import ROLE_ENV

    return Role.BACKGROUND if os.environ.get(ROLE_ENV) == Role.BACKGROUND else Role.TERMINAL


def foreground(args: argparse.Namespace, console: Console, work: Callable[[Engine], RunResult],
               existing: bool = False, lock_wait_s: float = 0.0) -> int:
    me = role()
    err = Console(stderr=True, highlight=False)
    if me == Role.BACKGROUND:
        # the container's output is in its container.log already: the supervisor's log keeps runner's own lines
        reporter = TerminalReporter(Console(file=open(os.devnull, "w")), err)
        lock_wait_s = max(lock_wait_s, 30.0)  # the terminal that started it may still be leaving
    else:
        reporter = TerminalReporter(console, err)
    engine = _common.engine(args, reporter, existing=existing, role=me, lock_wait_s=lock_wait_s)
    left = []

    def leave(signum: int, frame: FrameType | None) -> None:
        # Losing the terminal or the runner being stopped never stops training: the phase is handed over.
        if signum == signal.SIGHUP:
            reporter.dead = True
        left.append(signum)
        engine.detach_requested.set()

    signal.signal(signal.SIGHUP, signal.SIG_IGN if me == Role.BACKGROUND else leave)
    signal.signal(signal.SIGTERM, leave)
    try:
        run = work(engine)
    finally:
        reporter.close()
    for r in run.phases:
        reporter.info(f"run {r.run_id}: phase {r.phase} {r.status}" + (f" ({r.reason})" if r.reason else ""))
    code = EXIT.get(run.last.status, 1)
    if me == Role.TERMINAL and (getattr(args, "detach", False) or left):
        code = _hand_over(args, engine, run.run_id, reporter, code)
    if getattr(args, "detach", False):
        say(console, run.run_id)
    if code == 0 and run.last.status == S.SUCCEEDED:
        from runner.lifecycle import chain_outcome

        degraded = [(p["name"], p["outputs"]["degraded"]) for p in engine.store.phases(run.run_id)
                    if (p["outputs"] or {}).get("degraded")]
        for name, summary in degraded:
            say(err, f"run {run.run_id}: succeeded, degraded: phase {name}: {summary}; exit {DEGRADED}")
        if degraded:
            return DEGRADED

        if chain_outcome(engine.store.phases(run.run_id)) == "recovered":
            say(err, f"run {run.run_id}: succeeded after a failure branch (an earlier phase failed; `runner status "
                     f"{run.run_id}` says which)" + ("; exit 5 (--strict)" if getattr(args, "strict", False) else ""))
            if getattr(args, "strict", False):
                return RECOVERED
    return code


def _hand_over(args: argparse.Namespace, engine: Engine, run_id: str, reporter: TerminalReporter, code: int) -> int:
    """This terminal leaves an active run: hand it to the server or a background supervisor (unless
    ``--unsupervised``), and say who has it."""
    from runner.handover import hand_over

    if getattr(args, "unsupervised", False):
        reporter.info(f"WARNING: run {run_id} is UNSUPERVISED (--unsupervised): no guard, no checkpoint vault, no "
                      f"validation, no verdict and no next phase until `runner attach {run_id}` (or a server) takes it; "
                      "checkpoints the trainer deletes meanwhile are lost")
        return code
    done = hand_over(engine.store, _common.state(args), run_id)
    if done.by is not None and done.by.role in (Role.BACKGROUND, Role.SERVER):
        where = f"; its log: {done.log}" if done.log else ""
        reporter.info(f"run {run_id}: supervised by {done.by.describe()}{where}; guards, the checkpoint vault, the "
                      f"verdict and the chain go on (`runner attach {run_id}` to follow here, `runner stop {run_id}` "
                      "to stop)")
        return code
    if done.by is None and not done.note:
        return code  # ended meanwhile: already judged
    reporter.info(f"WARNING: run {run_id} could not be handed over and is UNSUPERVISED: "
                  + (done.note or f"held by {done.by.describe() if done.by else 'nobody'}")
                  + f"\n`runner attach {run_id}` supervises it here")
    return 3


def take_over(engine: Engine, run_id: str, console: Console) -> float:
    """Before `attach`: ask a background supervisor of the run on this host to leave (SIGTERM; it records the
    phase *detached* and ends) and return how long to wait for its lock."""
    import socket

    from runner.supervisor import holder

    h = holder(engine.runs_dir, run_id)
    if h is None or h.role != Role.BACKGROUND or h.host != socket.gethostname() or role() == Role.BACKGROUND:
        return 0.0
    # The lock file lies in the run folder, which containers may write: the pid it names is signalled only when it
    # is this run's background supervisor (`runner ... attach RUN`), never any process a container names.
    try:
        argv = open(f"/proc/{h.pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return 0.0
    if h.pid <= 1 or b"runner.cli" not in argv or b"attach" not in argv or run_id.encode() not in argv:
        return 0.0
    say(Console(stderr=True, highlight=False), f"run {run_id}: taking over from the background supervisor "
        f"(pid {h.pid})")
    try:
        os.kill(h.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    return TAKE_OVER_S
