"""THE one way a phase is finished.

Whoever sees a phase's container end — the run that followed it, a re-adopting supervisor, `runner status`
(refresh), `runner stop` (cancel) — calls ``finish`` with the container's final state; a container the engine
no longer knows is ``lost``.  Either records the outcome, failure kind, outputs and verdict once: a second
caller finds the phase ended and changes nothing."""
from __future__ import annotations

from typing import Any

import json
import time
from pathlib import Path

from runner.backends.base import ContainerState
from runner.decisions.criteria import Evidence, verdict as judge_verdict
from runner.checkpoints.lost import MissedBest
from runner.decisions.guards import Trip, total_steps_of
from runner.engine.ports import Core, PhaseResult
from runner.engine.records import folder_of, result_of, stop_grace, stored_phase
from runner.engine.session import PhaseSession
from runner.lifecycle import STATUS_OF_VERDICT, F, S
from runner.metrics.series import MetricSet
from runner.decisions.outputs import at_checkpoint, phase_outputs
from runner.paths import spec_relative
from runner.spec.models import Phase
from runner.store import ACTIVE

EARLY_STOP_S = 60.0  # a stop this soon after the start may come before the trainer installed its SIGTERM handler


def lost(core: Core, phase_id: int, reason: str = "the container disappeared from the engine") -> PhaseResult:
    """The engine no longer knows the phase's container: recorded *lost* (an infrastructure failure), once."""
    core.store.transition(phase_id, S.LOST, reason, failure_kind=str(F.INFRASTRUCTURE), failure_detail="lost",
                          expect=ACTIVE, finished_at=time.time())
    return result_of(core.store, phase_id)


def _weigh_lost_best(lost_best: MissedBest | None, verdict: str, status: S, reason: str, fields: dict[str, Any],
                     outputs: dict[str, Any]) -> tuple[str, S, str]:
    """A checkpoint better than every vaulted one was missed: part of the verdict (checkpoints.on_missed_best).
    Fills ``outputs`` (lost_best, degraded, verdict) and ``fields`` (the failure kind); the verdict, status and
    reason it leaves."""
    if lost_best is None or not lost_best.best_lost:
        return verdict, status, reason
    outputs["lost_best"] = lost_best.as_dict()
    if verdict == "success" and lost_best.fails:
        verdict, status, reason = "failure", S.FAILED, lost_best.summary()
        fields.update(failure_kind=str(F.CHECKPOINT_LOST), failure_detail=None)
    elif verdict == "success" and lost_best.degrades:
        outputs["degraded"] = lost_best.summary()
    outputs["verdict"] = verdict
    return verdict, status, reason


def finish(core: Core, phase_id: int, state: ContainerState, sup: PhaseSession | None = None) -> PhaseResult:
    """Record the outcome of an ended container, once (a second caller changes nothing).  ``sup``: the session
    that followed it; without one, the session is rebuilt from the store and reads what was written since."""
    row = core.store.phase(phase_id)
    if row["status"] not in ACTIVE:
        return result_of(core.store, phase_id)
    phase = stored_phase(row)
    folder = folder_of(row)
    if sup is None and phase is not None:
        sup = PhaseSession.restored(core, phase_id, row)
        try:
            sup.poll()
        except OSError:
            pass
    fields: dict[str, Any] = dict(exit_code=state.exit_code, oom_killed=int(state.oom_killed), finished_at=time.time())
    # Vault and validate everything first (also for cancelled phases): the verdict is taken on
    # every validation, including the last checkpoint's.
    vaulted = sup.vault_all() if sup is not None else {}
    # the metrics checkpoint validation produced, and the last checkpoint they must be of (one store read)
    validated = sup.ckpt.validated_until() if sup and sup.ckpt else {}
    if row["stop_requested"]:
        fields.update(failure_kind=str(F.CANCELLED))
        core.store.transition(phase_id, S.CANCELLED, stopped_reason(core, row, state), expect=ACTIVE, **fields)
        return result_of(core.store, phase_id)
    exit_ok, exit_reason, exit_kind, exit_detail = how_it_ended(core, row, state, sup)
    trip: Trip | None = sup.trip if sup else None
    metrics = sup.metrics if sup else MetricSet()
    end_reached = sup.end_reached if sup else None
    met_early = bool(sup and sup.met_early)
    v = judge_verdict(exit_ok, exit_reason, trip, phase.success if phase else None, metrics,
                      met_early=met_early, end_reached=end_reached, planned_end=planned_end(phase, sup),
                      exit_kind=exit_kind, exit_detail=exit_detail,
                      evidence=Evidence(validated) if sup and sup.ckpt else None)
    status = STATUS_OF_VERDICT[v.verdict]
    reason = v.reasons[0]
    fields.update(failure_kind=v.failure_kind and str(v.failure_kind), failure_detail=v.failure_detail or None)
    if not exit_ok and trip is None and not met_early and end_reached is None:
        reason = exit_reason
    ckpt = phase.checkpoints if phase else None
    outputs = phase_outputs(row["log_path"] and str(Path(row["log_path"]).parent), v.verdict, metrics, ckpt,
                            spec_relative(folder, ckpt.dir) if ckpt else None)
    outputs.update(vaulted)
    verdict, notes = v.verdict, ""
    if sup and sup.ckpt:
        notes = _vault_outputs(core, phase_id, sup, validated, outputs)
        verdict, status, reason = _weigh_lost_best(sup.ckpt.missed_best(metrics), verdict, status, reason, fields, outputs)
    fields.update(verdict=verdict, explanation=v.explanation() + ("\n" + notes if notes else ""),
                  outputs_json=json.dumps(outputs),
                  judgement_json=json.dumps(v.judgement.as_dict() if v.judgement else None))
    core.store.transition(phase_id, status, reason, expect=ACTIVE, **fields)
    core.reporter.info(f"verdict: {verdict}" + (" (degraded)" if "degraded" in outputs else "")
                       + "\n" + fields["explanation"])
    return result_of(core.store, phase_id)


def _vault_outputs(core: Core, phase_id: int, sup: PhaseSession, validated: dict[str, Any], outputs: dict[str, Any]) -> str:
    """What the vault adds to a judged phase's outputs (a best checkpoint it had to protect from the trainer's
    rotation, ``best``: the metrics at the best checkpoint); returns what the explanation must add (missed
    checkpoints, warnings)."""
    metrics = sup.metrics
    missed: str = sup.ckpt.missed_explanation(metrics)
    override, warning = sup.ckpt.unprotected_best(metrics)
    outputs.update(override)
    if warning:
        outputs["warnings"] = [warning]
        missed = "\n".join(x for x in (missed, warning) if x)
    best_step = next((c["step"] for c in core.store.checkpoints(phase_id)
                      if outputs.get("best_checkpoint") and c["vault_path"] == outputs["best_checkpoint"]), None)
    if best_step is not None:  # what the next phase is handed: ${{ best.step }}, ${{ best.NAME }}
        outputs["best"] = at_checkpoint(metrics, best_step, set(validated))
    return missed


def how_it_ended(core: Core, row: dict[str, Any], state: ContainerState,
                 sup: PhaseSession | None) -> tuple[bool, str, F, str]:
    """Whether the container ended well, in words, and its failure kind and detail — decided here, where it is
    known (never read back from the reason)."""
    exit_ok = state.exit_code == 0 and not state.oom_killed
    if row.get("failure_kind") == F.TIMEOUT:
        return False, row["reason"], F.TIMEOUT, ""
    if state.oom_killed:
        return exit_ok, "killed: out of memory (the container hit its memory limit)", F.OOM, ""
    if state.infrastructure:
        # A node that failed, a preemption: the phase did not end on its own.
        return False, f"{state.error}: an infrastructure interruption ({state.infrastructure})", F.INFRASTRUCTURE, \
            "interrupted"
    if sup is not None and not core.remote and sup.ended_with_the_engine(state.finished_s) \
            and core.backend.live_restore() is not True:
        # The engine went away (a restart or stop without live-restore) and took the container
        # with it: whatever the exit code, the phase did not end on its own.  An engine with live-restore
        # leaves its containers running: one that ended meanwhile ended on its own (a CI run's ticker finished
        # during a long outage and was called an interruption).
        return False, (f"exit code {state.exit_code}: an infrastructure interruption — the Docker engine "
                       "became unreachable while the container ran (restarted or stopped without live-restore) "
                       "and the container ended with it"), F.INFRASTRUCTURE, "interrupted"
    reason = (f"exit code {state.exit_code}" + (f": {state.error}" if state.error else "")
              if state.exit_code is not None else state.error or "ended without an exit code")
    if state.exit_code in (137, 143) and not state.error and not (sup and (sup.trip or sup.met_early or sup.end_reached)):
        # runner did not stop it (no guard, criteria or planned end; no `runner stop`)
        if state.exit_code == 137:
            return exit_ok, reason + " — killed from outside runner (SIGKILL: `docker kill`, the OOM killer of the host?)", \
                F.KILLED, ""
        return exit_ok, reason + (" — stopped from outside runner (SIGTERM: `docker stop`, a host shutdown, or the "
                                  "engine restarting without live-restore)"), F.STOPPED, ""
    return exit_ok, reason, F.CRASHED, ""


def stopped_reason(core: Core, row: dict[str, Any], state: ContainerState) -> str:
    """How a phase stopped on request ended: on its own after SIGTERM, or killed after the grace period, and
    then whether the stop came so soon after the start that the trainer may not have had its handler yet."""
    if state.exit_code != 137 or state.oom_killed:
        return "stopped on request" + (f" (exit {state.exit_code})" if state.exit_code is not None else "")
    reason = f"stopped on request: no exit within {stop_grace(row):g}s of SIGTERM, killed (exit 137)"
    asked = [e["at"] for e in core.store.events(row["run_id"])
             if e["kind"] == "phase.stop-requested" and e["phase_id"] == row["id"]]
    if asked and row["started_at"] and asked[0] - row["started_at"] < EARLY_STOP_S:
        reason += (f"; the stop came {asked[0] - row['started_at']:.0f}s after the start, probably before the "
                   "trainer installed its SIGTERM handler (as a container's first process, a program without one "
                   "ignores SIGTERM)")
    return reason


def planned_end(phase: Phase | None, sup: PhaseSession | None) -> int | None:
    """The step the phase is meant to reach: its stop_at, else metrics.total_steps."""
    if sup is not None and sup.guards.planned_end is not None:
        return sup.guards.planned_end
    return total_steps_of(phase) if phase is not None else None
