"""A phase's lifecycle: ``states`` (statuses, the one transition table, failure kinds) and ``next_action`` (the pure
step every path asks).  The names are re-exported here: ``from runner.lifecycle import S, F, next_action``."""
from runner.lifecycle.next_action import NOT_FOUND, Act, Container, PhaseView, chain_outcome, failure_names, next_action
from runner.lifecycle.states import (ACCIDENTS, ACTIVE, ENDED, FAILURE_DETAILS, GUARD_FAILURE, JUDGED, STATUS_OF_VERDICT,
                                     TRANSITIONS, F, FailureKind, PhaseStatus, S, SubmissionState, allowed)

__all__ = ["ACCIDENTS", "ACTIVE", "ENDED", "FAILURE_DETAILS", "GUARD_FAILURE", "JUDGED", "NOT_FOUND", "STATUS_OF_VERDICT",
           "TRANSITIONS", "Act", "Container", "F", "FailureKind", "PhaseStatus", "PhaseView", "S", "SubmissionState",
           "allowed", "chain_outcome", "failure_names", "next_action"]
