"""The phase lifecycle: the pure next step of a run, tested by equality, for every state a phase can
be found in by any process (foreground apply, attach, the server after a restart, status, stop)."""
import pytest

from runner.lifecycle import NOT_FOUND, Act, Container, PhaseStatus, PhaseView, TRANSITIONS, allowed, next_action

S = PhaseStatus
RUNNING = Container(True, "running")
EXITED = Container(True, "exited")
CREATED = Container(True, "created")


@pytest.mark.parametrize("phase, container, action", [
    (None, None, Act.PLAN),
    (PhaseView(S.PENDING), None, Act.LAUNCH),
    (PhaseView(S.LAUNCHING), None, Act.FIND_CONTAINER),
    (PhaseView(S.LAUNCHING), NOT_FOUND, Act.RELAUNCH),
    (PhaseView(S.LAUNCHING), CREATED, Act.RELAUNCH),  # created, never started: removed, launched again
    (PhaseView(S.LAUNCHING), RUNNING, Act.ADOPT),
    (PhaseView(S.LAUNCHING), EXITED, Act.JUDGE),
    (PhaseView(S.RUNNING, "c1"), RUNNING, Act.SUPERVISE),
    (PhaseView(S.DETACHED, "c1"), RUNNING, Act.SUPERVISE),
    (PhaseView(S.DETACHED, "c1"), EXITED, Act.JUDGE),
    (PhaseView(S.RUNNING, "c1"), NOT_FOUND, Act.MARK_LOST),
    (PhaseView(S.SUCCEEDED, "c1", "success", decided=False), None, Act.DECIDE),
    (PhaseView(S.FAILED, "c1", "failure", decided=True, next_spec="/s/restart.yaml"), None, Act.START_NEXT),
    (PhaseView(S.FAILED, "c1", "failure", decided=True), None, Act.DONE),
    (PhaseView(S.BLOCKED), None, Act.DONE),
    (PhaseView(S.CANCELLED, "c1"), None, Act.DONE),
    (PhaseView(S.LOST, "c1"), None, Act.DECIDE),  # its retry policy may relaunch it
    (PhaseView(S.LOST, "c1", decided=True), None, Act.DONE),
])
def test_next_action(phase, container, action):
    assert next_action(phase, container) == action


def test_every_action_lands_on_an_allowed_transition():
    assert allowed("launching", "pending") and allowed("launching", "running")
    assert allowed("detached", "running") and allowed("running", "lost")
    assert not allowed("succeeded", "running") and not allowed("pending", "succeeded")
    assert not allowed("cancelled", "cancelled")  # one outcome, recorded once
    assert all(s in TRANSITIONS for s in S)


def test_phase_view_from_a_store_row():
    row = {"status": "failed", "container_id": "c1", "verdict": "failure", "decision": "rule 2 fired"}
    assert PhaseView.of(row, "/s/next.yaml") == PhaseView(S.FAILED, "c1", "failure", True, "/s/next.yaml")


def test_a_chain_outcome_tells_the_planned_path_from_a_recovery():
    from runner.lifecycle import chain_outcome

    def p(name, status, kind=None):
        return {"name": name, "status": status, "failure_kind": kind}

    assert chain_outcome([p("a", "succeeded"), p("b", "succeeded")]) == "succeeded"
    # a crash retried (the same phase again) is not a failure branch
    assert chain_outcome([p("ft", "failed", "crashed"), p("ft", "succeeded")]) == "succeeded"
    # a divergence that took the recovery branch, which then succeeded
    assert chain_outcome([p("ft", "failed", "diverged"), p("p1", "succeeded"), p("p2", "succeeded")]) == "recovered"
    assert chain_outcome([p("p1", "inconclusive"), p("restart", "succeeded")]) == "recovered"
    assert chain_outcome([p("ft", "failed", "diverged"), p("p1", "failed", "criteria")]) == "failed"
    assert chain_outcome([]) == ""
