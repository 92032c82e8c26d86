"""Creating a phase's container, and finding it again: every step recorded before its side effect, the policy
checked where the container is created, temporary engine errors ridden out, a launch cut short by a dead runner
found by the container's deterministic name (never launched twice), an ended container removed once recorded."""
from __future__ import annotations

from typing import Any

import os
import time
from pathlib import Path

from runner import faults
from runner.backends.base import ContainerState
from runner.engine.ports import Core
from runner.errors import LaunchError, LaunchRefused, RunnerError, SpecError, Temporary
from runner.lifecycle import NOT_FOUND, Act, Container, F, PhaseView, S, next_action
from runner.plan import LaunchPlan
from runner.decisions.policy import missing_sources
from runner.settings import load_settings
from runner.units import format_duration


def launched_container(core: Core, row: dict[str, Any]) -> ContainerState | None:
    """The container a *launching* phase created, found by its deterministic name (or None)."""
    found = [c for c in core.backend.find({"runner.run-id": row["run_id"], "runner.phase": row["name"]})
             if c.name == row["container_name"]]
    return found[0] if found else None


def find_launched(core: Core, row: dict[str, Any]) -> tuple[Act, ContainerState | None]:
    """What to do with a *launching* phase, asked of ``next_action`` with its container looked up by name:
    ADOPT or JUDGE (it exists and started: recorded *running* with its id, also when it has ended already),
    RELAUNCH (none, or created and never started); with the container found."""
    found = launched_container(core, row)
    act = next_action(PhaseView.of(row), NOT_FOUND if found is None else Container(True, found.status))
    if act in (Act.ADOPT, Act.JUDGE) and found is not None:
        core.store.transition(row["id"], S.RUNNING, f"found container {found.id[:12]} (the runner stopped while "
                              "launching it)", expect=frozenset({S.LAUNCHING}), container_id=found.id,
                              started_at=time.time())
    return act, found


def recover_launching(core: Core, row: dict[str, Any]) -> None:
    """The runner stopped between recording *launching* and recording the container: look for the container by
    its deterministic name before anything else happens; the phase ends *running* (found) or *pending*."""
    act, found = find_launched(core, row)
    if act == Act.RELAUNCH and found is not None:
        # Created, never started: the runner stopped between the two calls.  Starting it now could
        # start a container whose mounts or GPUs were meant for a plan this run has moved past, so
        # it is removed (with a recorded reason) and the phase launched again from *pending*.
        core.backend.remove(found.id)
        core.store.transition(row["id"], S.PENDING, f"container {found.id[:12]} was created but never started "
                              "(the runner stopped in between); removed it, launching again",
                              expect=frozenset({S.LAUNCHING}))
    elif act == Act.RELAUNCH:
        core.store.transition(row["id"], S.PENDING, "the runner stopped while launching and no container exists;"
                              " launching it now", expect=frozenset({S.LAUNCHING}))


def launch_retrying(core: Core, phase_id: int, plan: LaunchPlan) -> str:
    """``launch``, riding out temporary errors (engine unreachable, API timeout) with backoff: the
    phase stays pending (or launching) with the reason, each try recorded as ``phase.retry``.  After
    a failed try that got as far as *launching*, the container is looked up by its name first (the
    create may have reached the engine), so nothing is launched twice.  Gives up after
    ``launch_retry_s`` with the phase recorded *error*."""
    delay, deadline, tries = core.retry_base_s, time.monotonic() + core.launch_retry_s, 0
    while True:
        try:
            row = core.store.phase(phase_id)
            if row["status"] == S.LAUNCHING:
                recover_launching(core, row)  # → running (found it) or pending (launch again)
                row = core.store.phase(phase_id)
                if row["status"] == S.RUNNING:
                    return str(row["container_id"])
            return launch(core, phase_id, plan)
        except Temporary as exc:
            tries += 1
            if time.monotonic() + delay > deadline:
                reason = f"gave up after {tries} tries over {format_duration(core.launch_retry_s)}: {exc}"
                core.store.transition(phase_id, S.ERROR, reason, failure_kind=str(F.INFRASTRUCTURE),
                                      expect=frozenset({S.PENDING, S.LAUNCHING}), finished_at=time.time())
                raise
            core.store.update(phase_id, reason=f"{exc}; retrying in {format_duration(delay)} (try {tries})")
            core.store.event(plan.run_id, phase_id, "phase.retry", f"temporary: {exc}; retrying in "
                             f"{format_duration(delay)} (try {tries})", {"try": tries, "delay": delay})
            core.reporter.info(f"temporary error: {exc}; retrying in {format_duration(delay)}")
            time.sleep(delay)
            delay = min(delay * 2, 60.0)


def launch(core: Core, phase_id: int, plan: LaunchPlan) -> str:
    """Preflight, record ``launching``, create+start the container, record ``running``.

    A temporary error (engine unreachable) is re-raised with the phase left where it was
    (``launch_retrying`` tries again); any other refusal is recorded as status ``error``."""
    try:
        refused = core.launch_problems(plan)  # before anything is created, even a mount's folder
        if refused:
            core.store.event(plan.run_id, phase_id, "policy.refused", "; ".join(refused), {"problems": refused})
            raise LaunchRefused(f"refused to launch {plan.container_name}: " + "; ".join(refused),
                                "runner checks every stored plan again where the container is created")
        missing = missing_sources(plan, core.store.phase(phase_id)["spec_path"])
        if missing:  # a spec error (exit 1), located at the mount, before anything is created
            raise SpecError(missing)
        core.backend.ping()
        core.backend.check_image(plan.image)
        prepare_mounts(plan)
        Path(plan.phase_dir).mkdir(parents=True, exist_ok=True)
        if not core.store.transition(phase_id, S.LAUNCHING, f"creating container {plan.container_name}",
                                     expect=frozenset({S.PENDING})):
            raise LaunchError(f"phase {plan.phase} is no longer pending (stopped?); not launched")
        faults.point("pre_create")
        container_id = core.backend.launch(plan)
        faults.point("post_create")
    except Temporary:
        raise
    except Exception as exc:
        reason = str(exc) if isinstance(exc, RunnerError) else f"internal error: {type(exc).__name__}: {exc}"
        core.store.transition(phase_id, S.ERROR, reason, failure_kind=str(F.REFUSED), finished_at=time.time())
        raise
    core.store.transition(phase_id, S.RUNNING, f"container {container_id[:12]} started",
                          container_id=container_id, started_at=time.time())
    return container_id


def prepare_mounts(plan: LaunchPlan) -> None:
    for m in plan.mounts:
        if os.path.exists(m.source):
            continue
        if m.create:
            os.makedirs(m.source, exist_ok=True)
        else:
            raise LaunchError(f"mount source {m.source} does not exist",
                              "create it, or set create: true on the mount for an output folder")


def remove_finished(core: Core, plan: LaunchPlan, phase_id: int, container_id: str) -> None:
    """Remove an ended phase's container once its outcome is recorded and its whole log saved (so `docker ps -a`
    does not fill up), unless backend.yaml says ``keep_containers: true``.  A Slurm job has no container here."""
    if core.remote:
        return
    try:
        if load_settings(core.runs_dir).keep_containers:
            return
        core.backend.remove(container_id)
    except (RunnerError, SpecError) as exc:  # the engine went away, or a bad backend.yaml: kept, and said
        core.store.event(plan.run_id, phase_id, "container.kept", f"container {container_id[:12]} kept: {exc}")
        return
    core.store.event(plan.run_id, phase_id, "container.removed",
                     f"container {plan.container_name} ({container_id[:12]}) removed; its log is "
                     f"{Path(plan.phase_dir) / 'container.log'} (keep_containers: true in backend.yaml keeps it)")
