"""Stopping phases on request, and bringing phases nobody supervises up to date with the engine: both end in
judge (finish, lost) like every other path."""
from __future__ import annotations

import time

from runner.engine import judge
from runner.engine.launch import find_launched, launched_container
from runner.engine.ports import Core, PhaseResult
from runner.engine.records import request_stop, result_of, stop_grace
from runner.errors import ContainerNotFound
from runner.lifecycle import Act, F, S
from runner.store import ACTIVE


def cancel(core: Core, phase_id: int, wait: bool = True) -> None:
    """Stop a phase's container on request (SIGTERM, grace period, SIGKILL); records *cancelled*."""
    row = core.store.phase(phase_id)
    request_stop(core.store, row)
    if not row["container_id"] and row["status"] == S.LAUNCHING:
        # The runner that launched it may have died between create and record: the container
        # may exist (and train) under its deterministic name.  Stop that one, never nothing.
        found = launched_container(core, row)
        if found is not None:
            core.store.update(phase_id, container_id=found.id)
            row = core.store.phase(phase_id)
    if not row["container_id"]:
        core.store.transition(phase_id, S.CANCELLED, "stopped before launch", failure_kind=str(F.CANCELLED),
                              expect=ACTIVE, finished_at=time.time())
        return
    core.backend.stop(row["container_id"], stop_grace(row))
    if wait:
        judge.finish(core, phase_id, core.backend.inspect(row["container_id"]))


def stop_run(core: Core, run_id: str) -> list[PhaseResult]:
    """Cancel a run: its queued submission (nothing more starts) and every active phase."""
    core.store.cancel_submission(run_id)
    out = []
    for row in core.store.phases(run_id):
        if row["status"] in ACTIVE:
            cancel(core, row["id"])
            out.append(result_of(core.store, row["id"]))
    return out


def refresh(core: Core, run_id: str) -> None:
    """Bring active phases up to date with the engine (for a phase nobody is supervising)."""
    for row in core.store.phases(run_id):
        if row["status"] == S.LAUNCHING and not row["container_id"]:
            act, _ = find_launched(core, row)  # found: recorded running
            if act == Act.RELAUNCH:
                continue  # being launched right now, or left for `attach` / the server to relaunch
            row = core.store.phase(row["id"])
        if row["status"] not in (S.RUNNING, S.DETACHED) or not row["container_id"]:
            continue
        try:
            state = core.backend.inspect(row["container_id"])
        except ContainerNotFound:
            judge.lost(core, row["id"])
            continue
        if (state.status == "queued" or (state.running and " PENDING (" in row["reason"])) \
                and state.error and state.error != row["reason"]:
            # A Slurm job waiting in the queue (Slurm's reason), or one that has just started (its node)
            core.store.update(row["id"], reason=state.error, **({} if state.status == "queued" else {"started_at": time.time()}))
        if state.ended:
            judge.finish(core, row["id"], state)
