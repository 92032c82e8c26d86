"""Carrying a run forward: read what the store says, ask the pure ``next_action`` what comes next, do it (one
handler per action), record it, repeat until the chain ends.  Every path that ends a phase ends in judge."""
from __future__ import annotations

from typing import Any

import json
import dataclasses
import time
from pathlib import Path

from runner.engine import judge
from runner.engine.decide import decide, decided_next
from runner.engine.follow import Detached, Ended, Interrupted, Lost, follow
from runner.engine.launch import launch_retrying, recover_launching, remove_finished
from runner.engine.logpump import LogPump
from runner.engine.planning import declared_inputs, plan as plan_spec
from runner.engine.ports import Core, PhaseResult, RunResult
from runner.engine.preconditions import unmet
from runner.engine.records import folder_of, phase_of, result_of, stored_plan
from runner.engine.session import PhaseSession
from runner.engine.signals import deferring_sigint, ignoring_sigint
from runner.engine.stop import cancel
from runner.errors import Refused, RunnerError, SpecError
from runner.lifecycle import JUDGED, Act, F, PhaseView, S, SubmissionState, next_action
from runner.plan import LaunchPlan
from runner.spec import load_spec
from runner.store import ACTIVE
from runner.supervisor import Role, SupervisorLock



def drive(core: Core, run_id: str, detach: bool = False) -> RunResult:
    """Carry a run forward from whatever the store says, until its chain ends.

    The one entry for `apply`, `attach` and the server (also after a restart): each step reads the recorded
    state and does the next thing, and every step is recorded before its side effect, so a runner killed
    anywhere resumes here without launching anything twice or deciding a chain twice.

    One supervisor per run: the run's supervisor lock is held throughout (``Refused`` when another
    process supervises it)."""
    lock = SupervisorLock(core.runs_dir, run_id, core.role)
    other = lock.acquire(core.lock_wait_s)
    if other is not None:
        hint = (f"`runner attach {run_id}` takes over from it" if other.role == Role.BACKGROUND
                else f"`runner status {run_id}` and `runner logs {run_id} -f` show how it goes")
        raise Refused(f"run {run_id} is supervised by {other.describe()}; one supervisor at a time", hint)
    try:
        return _drive_interruptible(core, run_id, detach)
    finally:
        lock.release()


def _drive_interruptible(core: Core, run_id: str, detach: bool) -> RunResult:
    try:
        return _drive(core, run_id, detach)
    except KeyboardInterrupt:
        # Ctrl-C before a phase's container was created (waiting for its turn, checking preconditions): the
        # phase is cancelled, not left pending for the next runner to launch.
        # Between two steps (after the launch was recorded, before following it): stopped like any Ctrl-C.
        with ignoring_sigint():
            for p in core.store.phases(run_id):
                if p["status"] == S.PENDING:
                    core.store.transition(p["id"], S.CANCELLED, "Ctrl-C before the container was created",
                                          failure_kind=str(F.CANCELLED), expect=frozenset({S.PENDING}),
                                          finished_at=time.time())
                elif p["status"] in (S.LAUNCHING, S.RUNNING) and not core.persistent:
                    core.reporter.info(f"Ctrl-C: stopping phase {p['name']}")
                    cancel(core, p["id"])
        raise


def _drive(core: Core, run_id: str, detach: bool) -> RunResult:
    run = RunResult(run_id)
    store = core.store
    while not core.detach_requested.is_set():
        if store.submission_state(run_id) == SubmissionState.CANCELLED and not any(p["status"] in ACTIVE for p in store.phases(run_id)):
            break  # `runner stop`: nothing more starts
        phases = store.phases(run_id)
        last = phases[-1] if phases else None
        decided = decided_next(core, last) if last is not None and last["status"] not in ACTIVE else None
        act = next_action(PhaseView.of(last, decided["next"] if decided else None) if last is not None else None)
        if act == Act.PLAN:
            sub = store.submission(run_id)
            run.record(start(core, run_id, sub["spec_path"], sub["inputs"], detach))
            continue
        assert last is not None
        if act == Act.FIND_CONTAINER:
            recover_launching(core, last)
        elif act == Act.LAUNCH:
            run.record(run_pending(core, last["id"], detach))
        elif act == Act.SUPERVISE:
            if detach or (run.phases and run.phases[-1].phase_id == last["id"] and not core.persistent):
                return run.record(result_of(store, last["id"]))
            run.record(readopt(core, last))
        elif act == Act.DECIDE:
            run.record(decide(core, last["id"], PhaseSession.restored(core, last["id"], last)))
        elif act == Act.START_NEXT:
            assert decided is not None
            run.record(start(core, run_id, decided["next"], decided["inputs"], detach, after=last))
        else:  # Act.DONE
            if not run.phases or run.phases[-1].phase_id != last["id"]:
                run.record(result_of(store, last["id"]))
            return run
    if not run.phases:
        phases = store.phases(run_id)
        run.phases.append(result_of(store, phases[-1]["id"]) if phases else PhaseResult(run_id, 0, "-", S.PENDING))
    return run


def attach(core: Core, run_id: str) -> RunResult:
    """Re-adopt a run's detached (or unsupervised running) phase: metrics continue from the
    stored points and offsets, guards and criteria apply, then the verdict and the chain."""
    phases = core.store.phases(run_id)
    rows = [r for r in phases
            if (r["status"] in (S.RUNNING, S.DETACHED) and r["container_id"]) or r["status"] == S.LAUNCHING]
    if not rows:
        # A phase judged meanwhile (by `runner status`) whose chain has not moved on yet: attach
        # carries the chain on (decide, start the next phase); a run whose chain ended refuses.
        last = phases[-1] if phases else None
        decided = decided_next(core, last) if last is not None and last["status"] not in ACTIVE else None
        act = next_action(PhaseView.of(last, decided["next"] if decided else None)) if last is not None else None
        unstarted_next = decided is not None and last is not None and not any(p["id"] > last["id"] for p in phases)
        if last is None or last["status"] == S.LOST or act not in (Act.DECIDE, Act.START_NEXT) \
                or (act == Act.START_NEXT and not unstarted_next):
            raise Refused(f"run {run_id} has no running or detached phase to attach to",
                          f"`runner status {run_id}` shows how it ended")
    return drive(core, run_id)


def start(core: Core, run_id: str, spec_path: str, inputs: dict[str, Any], detach: bool, after: dict[str, Any] | None = None) -> PhaseResult:
    """Plan a spec as the run's next phase, record it *pending*, and run it."""
    try:
        loaded = load_spec(spec_path)
        # --input values given at submission reach every phase that declares them; a next
        # rule's `with:` wins over them.
        if after is None:
            inputs = {k: v for k, v in inputs.items() if k in declared_inputs(loaded)}
        else:
            inputs = {**_run_inputs(core, run_id, declared_inputs(loaded)), **inputs}
        # A phase run again in this run (a retry, a chain that loops back) is attempt 2, 3, ...:
        # its own container name and folder, so nothing of the earlier attempt is overwritten.
        attempt = 1 + sum(1 for p in core.store.phases(run_id) if p["name"] == loaded.phase.name)
        phase, plan, _ = plan_spec(core, loaded, inputs, run_id, attempt)
    except SpecError as exc:
        if after is not None:
            core.store.event(run_id, after["id"], "chain.error", f"next spec {spec_path} is invalid:\n{exc}")
        raise
    phase_id = core.store.add_phase(
        run_id, plan.phase, str(loaded.path), loaded.sha256, plan.inputs,
        container_name=plan.container_name, log_path=str(Path(plan.phase_dir) / "container.log"),
        plan_json=json.dumps(dataclasses.asdict(plan)), phase_json=phase.model_dump_json(by_alias=True),
    )
    return run_pending(core, phase_id, detach)


def _run_inputs(core: Core, run_id: str, declared: set[str]) -> dict[str, Any]:
    """The inputs given when the run was submitted (`--input`), for a chained spec that declares
    them: `--input image=...` reaches every phase of the chain.  A next rule's `with:` wins."""
    try:
        given = core.store.submission(run_id)["inputs"] or {}
    except RunnerError:
        return {}
    return {k: v for k, v in given.items() if k in declared}


def run_pending(core: Core, phase_id: int, detach: bool = False) -> PhaseResult:
    """Wait for resources, check preconditions, launch and supervise a recorded *pending* phase."""
    store = core.store
    row = store.phase(phase_id)
    run_id, phase, folder = row["run_id"], phase_of(row), folder_of(row)
    plan = stored_plan(row)
    assert plan is not None
    try:
        granted = core.slots.acquire(phase_id, plan)
    except RunnerError as exc:  # can never fit (more GPUs than the server has)
        store.transition(phase_id, S.ERROR, str(exc), failure_kind=str(F.REFUSED), finished_at=time.time())
        return result_of(store, phase_id)
    if granted is None:  # the server is shutting down: the phase stays pending, resumed on restart
        return result_of(store, phase_id)
    if store.phase(phase_id)["status"] != S.PENDING:  # stopped while it waited for its turn
        core.slots.release(phase_id)
        return result_of(store, phase_id)
    try:
        if granted != plan:
            plan = granted
            store.update(phase_id, plan_json=json.dumps(dataclasses.asdict(plan)))
        core.reporter.info(f"run {run_id}: phase {plan.phase} ({plan.image})")
        blocked = unmet(core, run_id, phase_id, phase, plan, folder)
        if blocked:
            store.transition(phase_id, S.BLOCKED, blocked, failure_kind=str(F.PRECONDITION),
                             finished_at=time.time(), decision="blocked: the chain ends")
            return result_of(store, phase_id)
        sup = PhaseSession.fresh(store, core.backend, phase_id, phase, folder, plan, core.reporter.info)
        sup.start()  # watching checkpoints before the trainer starts: none can slip by
        container_id = _launch(core, phase_id, plan, sup)
        if detach:
            sup.stop()  # `runner attach` (or the server) takes over; rescans find what was written meanwhile
            core.reporter.info(f"detached: container {container_id[:12]} runs on; follow with `runner logs {run_id} -f`")
            return result_of(store, phase_id)
        result = supervise(core, phase_id, plan, container_id, sup)
    finally:
        core.slots.release(phase_id)
    return decide(core, phase_id, sup) if result.status in JUDGED and result.verdict else result


def _launch(core: Core, phase_id: int, plan: LaunchPlan, sup: PhaseSession) -> str:
    """Launch with Ctrl-C deferred: one that arrives while the container is being created is acted on once runner
    knows which container it is (the follow loop stops it like any Ctrl-C)."""
    with deferring_sigint() as interrupted:
        try:
            if core.store.phase(phase_id)["status"] == S.PENDING and interrupted.is_set():
                raise KeyboardInterrupt
            container_id = launch_retrying(core, phase_id, plan)
        except KeyboardInterrupt:
            sup.stop()
            core.store.transition(phase_id, S.CANCELLED, "Ctrl-C before the container was created",
                                  failure_kind=str(F.CANCELLED), expect=frozenset({S.PENDING}), finished_at=time.time())
            raise
        except BaseException:
            sup.stop()
            raise
    if interrupted.is_set():
        core.interrupt_pending = True
    return container_id


def readopt(core: Core, row: dict[str, Any]) -> PhaseResult:
    """Supervise a phase whose container runs (or ran) while nobody watched it."""
    plan = stored_plan(row)
    assert plan is not None
    sup = PhaseSession.restored(core, row["id"], row)
    core.slots.claim(row["id"], plan)
    try:
        sup.start()  # the guard repairs the vault; its first rescan finds what was written meanwhile
        core.store.transition(row["id"], S.RUNNING, "re-attached", expect=frozenset({S.RUNNING, S.DETACHED}))
        core.reporter.info(f"run {row['run_id']}: attached to phase {row['name']} (container {row['container_id'][:12]})")
        result = supervise(core, row["id"], plan, row["container_id"], sup, fresh_log=True)
    finally:
        core.slots.release(row["id"])
    return decide(core, row["id"], sup) if result.status in JUDGED and result.verdict else result


def supervise(core: Core, phase_id: int, plan: LaunchPlan, container_id: str, sup: PhaseSession | None = None,
              fresh_log: bool = False) -> PhaseResult:
    """Follow a running container to its end (logs, metrics, guards, criteria, timeout, stop and detach
    requests) and record how it ended.  Returns the recorded outcome."""
    if sup is None:
        sup = PhaseSession.restored(core, phase_id)
    pump = LogPump(core, container_id, Path(plan.phase_dir) / "container.log", sup, fresh=fresh_log).start()
    outcome = follow(core, phase_id, plan, container_id, sup)
    if isinstance(outcome, Interrupted):
        # Ctrl-C is a person asking to stop: the one signal that stops training.
        core.reporter.info(f"Ctrl-C: stopping {plan.container_name} (SIGTERM, up to {plan.stop_grace:g}s grace, "
                           "then SIGKILL)")
        with ignoring_sigint():
            cancel(core, phase_id)
        pump.thread.join(timeout=5)
        return result_of(core.store, phase_id)
    if isinstance(outcome, Detached):
        core.store.transition(phase_id, S.DETACHED, outcome.reason, expect=ACTIVE)
        return result_of(core.store, phase_id)
    if isinstance(outcome, Lost):
        return judge.lost(core, phase_id, outcome.reason)
    assert isinstance(outcome, Ended)
    saved = pump.join()
    sup.record_poll(core.reporter.info)  # what was written just before the end
    result = judge.finish(core, phase_id, outcome.state, sup)
    if saved:
        remove_finished(core, plan, phase_id, container_id)
    return result
