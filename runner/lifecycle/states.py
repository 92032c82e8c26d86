"""A phase's states and the one table of allowed transitions (the store enforces it); how a phase failed
(FailureKind, recorded where it is decided); a submitted run's states."""
from __future__ import annotations

from enum import Enum


class PhaseStatus(str, Enum):
    """Where a phase is.  The value is what the store and `status -o json` show."""

    PENDING = "pending"            # recorded, waiting for its turn (slots, GPUs), preconditions, launch
    LAUNCHING = "launching"        # recorded before the container is created: a crash here is recoverable by name
    RUNNING = "running"            # its container runs, supervised (or being re-adopted)
    DETACHED = "detached"          # its container runs, nobody supervises it (`apply --detach`, runner left)
    SUCCEEDED = "succeeded"        # judged: success
    FAILED = "failed"              # judged: failure (guard trip, criteria, container failed)
    INCONCLUSIVE = "inconclusive"  # judged: some criteria had no data
    BLOCKED = "blocked"            # a precondition was not met; nothing launched
    CANCELLED = "cancelled"        # stopped on request
    LOST = "lost"                  # its container disappeared from the engine
    ERROR = "error"                # could not be launched (permanent infrastructure error)

    def __str__(self) -> str:  # so f-strings and the store see the plain value
        return self.value


S = PhaseStatus
ACTIVE = frozenset({S.PENDING, S.LAUNCHING, S.RUNNING, S.DETACHED})
ENDED = frozenset(set(S) - ACTIVE)
JUDGED = frozenset({S.SUCCEEDED, S.FAILED, S.INCONCLUSIVE})
STATUS_OF_VERDICT = {"success": S.SUCCEEDED, "failure": S.FAILED, "inconclusive": S.INCONCLUSIVE}

# The one table: from each status, the statuses a phase may move to.  An ended phase never moves.
TRANSITIONS: dict[PhaseStatus, frozenset[PhaseStatus]] = {
    S.PENDING: frozenset({S.PENDING, S.LAUNCHING, S.BLOCKED, S.CANCELLED, S.ERROR}),
    # launching → pending: the runner died before the container existed (or it was created and never
    # started, and was removed): launch again.
    S.LAUNCHING: frozenset({S.RUNNING, S.PENDING, S.CANCELLED, S.ERROR}),
    S.RUNNING: frozenset({S.RUNNING, S.DETACHED, S.LOST, S.CANCELLED} | JUDGED),
    S.DETACHED: frozenset({S.RUNNING, S.DETACHED, S.LOST, S.CANCELLED} | JUDGED),
    **{s: frozenset() for s in ENDED},
}


def allowed(current: str, new: str) -> bool:
    return PhaseStatus(new) in TRANSITIONS[PhaseStatus(current)]


class FailureKind(str, Enum):
    """How a phase failed, recorded where it is decided (the guard that tripped, the judge, the engine
    that lost the container).  `next:` rules and `retry:` match on it; `status -o json` shows it.

    Two families a careful engineer tells apart: evidence about the training (diverged, non_finite,
    criteria) — the recovery branches act on those — and accidents of the machine (crashed, oom, killed,
    stopped, ended_early, infrastructure, and stall: a hung data loader or collective) — which say
    nothing about the learning rate: retry from the latest checkpoint.  The rest (missing, misconfigured,
    timeout, cancelled, precondition, refused, checkpoint_lost) need a person."""

    DIVERGED = "diverged"              # a divergence guard tripped
    NON_FINITE = "non_finite"          # NaN/inf in a guarded metric
    MISSING = "missing"                # a metric the spec requires never appeared (e.g. no validation)
    MISCONFIGURED = "misconfigured"    # `expect:` — the trainer does not run at the LR/step asked
    STALL = "stall"                    # no new step for too long
    TIMEOUT = "timeout"                # the phase's time limit
    CRITERIA = "criteria"              # ended (or reached its planned end) and judged short of its criteria
    ENDED_EARLY = "ended_early"        # exit 0 short of its planned end
    CRASHED = "crashed"                # the trainer itself exited non-zero
    OOM = "oom"                        # out of memory (the container's limit)
    KILLED = "killed"                  # SIGKILL from outside runner, not the container's OOM (the host's OOM killer?)
    STOPPED = "stopped"                # SIGTERM from outside runner (`docker stop`, a host shutdown)
    INFRASTRUCTURE = "infrastructure"  # the engine, node or job went away and took the container with it
    CANCELLED = "cancelled"            # `runner stop`
    PRECONDITION = "precondition"      # a precondition was not met; nothing launched
    REFUSED = "refused"                # the launch was refused (mount policy) or impossible; nothing launched
    CHECKPOINT_LOST = "checkpoint_lost"  # the best checkpoint was missed (checkpoints.on_missed_best: fail)

    def __str__(self) -> str:
        return self.value


F = FailureKind
# Kinds that say nothing about the training itself: a retry from the latest checkpoint is the answer.
ACCIDENTS = frozenset({F.CRASHED, F.OOM, F.KILLED, F.STOPPED, F.INFRASTRUCTURE, F.ENDED_EARLY, F.STALL})
# What `retry.on` also accepts: the details some kinds are recorded with (older spellings included).
FAILURE_DETAILS = ("lost", "interrupted")
GUARD_FAILURE = {"diverges": F.DIVERGED, "non_finite": F.NON_FINITE, "missing": F.MISSING, "stall": F.STALL,
                 "timeout": F.TIMEOUT, "expect": F.MISCONFIGURED}


class SubmissionState(str, Enum):
    """A submitted run: queued (waiting for the server), started (driven), done, cancelled."""

    QUEUED = "queued"
    STARTED = "started"
    DONE = "done"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value
