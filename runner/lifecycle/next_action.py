"""The pure step that says what to do next with a phase, from its record and its container's state.

Every path that carries a phase forward (the foreground `apply`, `attach`, the server after a
restart, `status`, `stop`) asks ``next_action`` and does what it says, so a phase found in any state
by any process is treated the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Sequence

from runner.lifecycle.states import ACCIDENTS, JUDGED, F, PhaseStatus, S

class Act(str, Enum):
    PLAN = "plan"                    # the run has no phase yet: plan the first spec, record it pending
    LAUNCH = "launch"                # pending: wait for slots, check preconditions, launch
    FIND_CONTAINER = "find"          # launching: look the container up by its deterministic name
    ADOPT = "adopt"                  # launching, container found running: record it running, then supervise
    RELAUNCH = "relaunch"            # launching, no container (or created, never started: remove it first)
    SUPERVISE = "supervise"          # running/detached, container running: follow it
    JUDGE = "judge"                  # active, container ended: vault, validate, judge, record
    MARK_LOST = "lost"               # active with a container id that the engine no longer knows
    DECIDE = "decide"                # judged, no chain decision recorded yet
    START_NEXT = "next"              # decided, the decision names a next spec not started yet
    DONE = "done"                    # nothing left to do for this run

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class PhaseView:
    """What next_action needs of a phase's record (the store's row, typed)."""

    status: PhaseStatus
    container_id: str | None = None
    verdict: str | None = None
    decided: bool = False
    next_spec: str | None = None  # what the recorded decision names (None: the chain ends)

    @classmethod
    def of(cls, row: dict[str, Any], next_spec: str | None = None) -> "PhaseView":
        return cls(PhaseStatus(row["status"]), row.get("container_id") or None, row.get("verdict") or None,
                   bool(row.get("decision")), next_spec)


@dataclass(frozen=True)
class Container:
    """What next_action needs of the container: absent (never created / not found), or its state."""

    exists: bool
    status: str = ""  # created | running | exited | dead | paused | restarting | removing

    @property
    def ended(self) -> bool:
        return self.status in ("exited", "dead")


NOT_FOUND = Container(False)


def next_action(phase: PhaseView | None, container: Container | None = None) -> Act:
    """Pure: what to do with a run whose last phase is ``phase`` (None: no phase yet), given its
    container as the engine reports it (``None``: not asked — only needed for active phases)."""
    if phase is None:
        return Act.PLAN
    s = phase.status
    if s == S.PENDING:
        return Act.LAUNCH
    if s == S.LAUNCHING:
        if container is None:
            return Act.FIND_CONTAINER
        if not container.exists or container.status == "created":
            return Act.RELAUNCH
        return Act.JUDGE if container.ended else Act.ADOPT
    if s in (S.RUNNING, S.DETACHED):
        if container is None:
            return Act.SUPERVISE  # ask the engine; supervision notices an ended or vanished container
        if not container.exists:
            return Act.MARK_LOST
        return Act.JUDGE if container.ended else Act.SUPERVISE
    if ((s in JUDGED and phase.verdict) or s == S.LOST) and not phase.decided:
        return Act.DECIDE  # a lost phase decides too: its retry policy may relaunch it
    if phase.next_spec:
        return Act.START_NEXT
    return Act.DONE


def chain_outcome(phases: Sequence[Mapping[str, Any]]) -> str:
    """Pure: how a run's chain ended, from its phase rows in order.  ``succeeded``: its planned success path
    (every phase succeeded, apart from attempts that failed by an accident and were retried); ``recovered``:
    its last phase succeeded after an earlier one failed or was inconclusive (a failure branch ran); otherwise
    the last phase's status (``failed``, ``running``...)."""
    if not phases:
        return ""
    last = phases[-1]["status"]
    if last != S.SUCCEEDED:
        return str(last)
    branched = any(p["status"] != S.SUCCEEDED and not (p.get("failure_kind") in ACCIDENTS and nxt["name"] == p["name"])
                   for p, nxt in zip(phases, phases[1:]))
    return "recovered" if branched else "succeeded"


def failure_names(row: dict[str, Any]) -> set[str]:
    """The names a `retry.on` or a `next:` rule's `when: {failed: [...]}` can match for an ended phase:
    its recorded failure kind (decided where it happened, never read back from the reason's words),
    the detail the kind was recorded with, and ``exit_code N``.  Empty for a phase that did not fail."""
    kind = row.get("failure_kind")
    if not kind:
        return set()
    names = {str(kind)}
    detail = row.get("failure_detail")
    if detail:
        names.add(str(detail))
    code = row.get("exit_code")
    if code is not None and kind in ACCIDENTS and kind != F.STALL:  # the trainer's own exit: a guard's stop exits 143 too
        names.add(f"exit_code {code}")
    return names
