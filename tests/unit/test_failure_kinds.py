"""Failures have kinds, decided where they happen (never read back from the reason's words), and `retry:` and
`next:` act on them: a crash is retried, never taken for divergence; a divergence never retried."""
import sqlite3

import pytest

from runner.decisions import chain
from runner.backends.fake import FakeBackend, Script
from runner.decisions.guards import Trip
from runner.decisions.criteria import verdict
from runner.engine import Engine, QuietReporter
from runner.errors import SpecError
from runner.lifecycle import FailureKind, failure_names
from runner.metrics.series import MetricSet
from runner.spec import load_spec
from runner.spec.criteria_models import NextRule
from runner.store import Store
from tests.conftest import MINIMAL

STDOUT_METRICS = """
metrics:
  stdout: {step: 'step (\\d+)', patterns: {loss: 'loss ([-+.\\deE]+|nan|inf)'}}
  poll_interval: 10ms
"""
RULES = """
next:
  - {when: {failed: [diverged, non_finite, criteria]}, apply: recover.yaml}
"""


@pytest.fixture
def engine(tmp_path):
    def make(backend):
        return Engine(Store(tmp_path / "runs" / "runner.db"), backend, tmp_path / "runs", QuietReporter(), poll_s=0.001)

    return make


@pytest.fixture
def chain_dir(tmp_path, write_spec):
    write_spec(MINIMAL.replace("name: p1", "name: recover"), "recover.yaml")
    return tmp_path


def kinds(engine, run):
    return [(p["name"], p["status"], p["failure_kind"]) for p in engine.store.phases(run.run_id)]


@pytest.mark.parametrize("script, kind, detail", [
    (Script(exit_code=1), "crashed", None),
    (Script(exit_code=137, oom=True), "oom", None),
    (Script(exit_code=137), "killed", None),
    (Script(exit_code=143), "stopped", None),
])
def test_a_container_that_fails_on_its_own_is_an_accident_retried_and_never_the_recovery_branch(
        engine, write_spec, chain_dir, script, kind, detail):
    backend = FakeBackend(script={"p1": script})
    e = engine(backend)
    spec = MINIMAL + f"retry: {{on: [{kind}], max: 1}}\n" + RULES
    run = e.apply(write_spec(spec))
    # attempt 1 and its retry; both fail the same way; when retries run out, no recovery branch matches
    assert kinds(e, run) == [("p1", "failed", kind), ("p1", "failed", kind)]
    last = e.store.phases(run.run_id)[-1]
    assert last["decision"].startswith("no next rule matched"), last["decision"]
    assert f"does not match failure {kind}" in last["decision"]


def test_a_guard_trip_is_never_retried_and_takes_the_branch_of_its_kind(engine, write_spec, chain_dir):
    backend = FakeBackend(script={"p1": Script(lines=["step 10 loss 2.0", "step 20 loss nan"], polls=10**9)})
    e = engine(backend)
    spec = MINIMAL + STDOUT_METRICS + "guards:\n  - {metric: loss, non_finite: true}\n" \
        + "retry: {on: [crashed, oom, killed, stopped, infrastructure], max: 3}\n" + RULES
    run = e.apply(write_spec(spec))
    assert kinds(e, run) == [("p1", "failed", "non_finite"), ("recover", "succeeded", None)]
    assert "matches failure non_finite" in e.store.phases(run.run_id)[0]["decision"]


def test_criteria_not_met_is_its_own_kind(engine, write_spec, chain_dir):
    backend = FakeBackend(script={"p1": Script(lines=["step 10 loss 2.0", "step 20 loss 1.9"])})
    e = engine(backend)
    spec = MINIMAL + STDOUT_METRICS + "success:\n  all:\n    - {metric: loss, below: 1.0}\n" + RULES
    run = e.apply(write_spec(spec))
    assert kinds(e, run) == [("p1", "failed", "criteria"), ("recover", "succeeded", None)]


def test_timeout_precondition_and_lost_are_recorded_with_their_kind(engine, write_spec):
    e = engine(FakeBackend(script={"p1": Script(polls=10**9)}))
    run = e.apply(write_spec(MINIMAL + "timeout: 50ms\n"))
    assert kinds(e, run) == [("p1", "failed", "timeout")]
    e = engine(FakeBackend())
    run = e.apply(write_spec(MINIMAL + "preconditions:\n  - file_exists: /no/such/checkpoint.pth\n"))
    assert kinds(e, run)[-1] == ("p1", "blocked", "precondition")
    backend = FakeBackend(script={"p1": Script(polls=10**9)})
    e = engine(backend)
    run = e.apply(write_spec(MINIMAL), detach=True)
    backend.vanish(run.last.container_id)
    e.refresh(run.run_id)
    row = e.store.phase(run.last.phase_id)
    assert (row["status"], row["failure_kind"], row["failure_detail"]) == ("lost", "infrastructure", "lost")
    assert failure_names(row) == {"infrastructure", "lost"}


def test_the_verdict_decides_the_kind_from_what_ended_the_phase():
    m = MetricSet()
    trip = Trip("loss diverges", 500, "rose", "diverges")
    assert verdict(True, "exit code 0", trip, None, m).failure_kind == FailureKind.DIVERGED
    assert verdict(True, "x", Trip("stall", 5, "no step", "stall"), None, m).failure_kind == FailureKind.STALL
    assert verdict(True, "x", Trip("expect lr", 5, "off", "expect"), None, m).failure_kind == FailureKind.MISCONFIGURED
    v = verdict(False, "exit code 1", None, None, m, exit_kind=FailureKind.CRASHED)
    assert (v.verdict, v.failure_kind) == ("failure", FailureKind.CRASHED)
    assert verdict(True, "exit code 0", None, None, m).failure_kind is None
    assert verdict(True, "x", None, None, m, cancelled=True).failure_kind == FailureKind.CANCELLED


def test_a_guard_stop_exit_code_is_not_a_retry_name():
    """A guard's stop ends the container with 143: `retry: {on: [exit_code 143]}` must not retry a divergence."""
    assert failure_names({"failure_kind": "diverged", "exit_code": 143}) == {"diverged"}
    assert failure_names({"failure_kind": "stopped", "exit_code": 143}) == {"stopped", "exit_code 143"}
    assert failure_names({"failure_kind": None, "exit_code": 0}) == set()


def test_when_failed_matches_only_failures_of_those_kinds(tmp_path):
    rule = NextRule.model_validate({"when": {"failed": ["diverged", "criteria"]}, "apply": "x.yaml"})
    decide = lambda verdict, failed: chain.decide([rule], verdict, MetricSet(), {}, {}, {}, tmp_path, {}, failed)  # noqa: E731
    assert decide("failure", {"diverged"}).rule == 0
    assert decide("failure", {"crashed", "exit_code 1"}).rule is None
    assert decide("success", set()).rule is None
    assert decide("inconclusive", set()).rule is None


def test_unknown_kinds_are_spec_errors_located_at_the_field(write_spec):
    with pytest.raises(SpecError) as exc:
        load_spec(write_spec(MINIMAL + "next:\n  - {when: {failed: [exploded]}, apply: x.yaml}\n"))
    assert "next[0].when" in str(exc.value) and "'exploded'" in str(exc.value)
    with pytest.raises(SpecError) as exc:
        load_spec(write_spec(MINIMAL + "retry: {on: [diverged]}\n"))
    assert "retry.on" in str(exc.value) and "'diverged'" in str(exc.value)  # a divergence is never retried


def test_a_store_written_before_failure_kinds_opens_and_gains_the_columns(tmp_path):
    path = tmp_path / "old.db"
    Store(path).db.close()
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE phases DROP COLUMN failure_kind")
    con.execute("ALTER TABLE phases DROP COLUMN failure_detail")
    con.commit()
    con.close()
    store = Store(path)
    cols = {r[1] for r in store.db.execute("PRAGMA table_info(phases)")}
    assert {"failure_kind", "failure_detail"} <= cols


@pytest.mark.parametrize("live_restore, exit_code, interrupted", [
    (True, 0, False),   # live-restore: the engine left it running; it ended on its own, well
    (True, 1, False),   # ... or failed on its own (a crash, not the engine's doing)
    (False, 0, True),   # the engine stopped it (a trainer that saves on SIGTERM exits 0)
    (None, 143, True),  # the engine cannot say: taken for the engine's doing, as before
])
def test_a_container_ending_during_an_engine_outage_is_an_interruption_only_without_live_restore(
        live_restore, exit_code, interrupted):
    """A container that ended while the engine could not be reached: with live-restore the engine did not take it
    (a CI run's 12-second ticker finished during a long outage on a loaded machine and was called an
    infrastructure interruption); without it, or when the engine cannot say, it did."""
    import time
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from runner.backends.base import ContainerState
    from runner.engine.judge import how_it_ended
    from runner.supervision import Supervision

    now = time.time()
    sup = SimpleNamespace(engine_outages=[[now - 10, now - 1]], trip=None, met_early=False, end_reached=None)
    sup.ended_with_the_engine = lambda finished: Supervision.ended_with_the_engine(sup, finished)
    core = SimpleNamespace(remote=False, backend=FakeBackend(live_restore=live_restore))
    ended = datetime.fromtimestamp(now - 5, timezone.utc).isoformat()
    state = ContainerState(id="c", name="n", status="exited", running=False, exit_code=exit_code, finished_at=ended)
    ok, reason, got, _detail = how_it_ended(core, {"failure_kind": None, "reason": ""}, state, sup)
    assert (got is FailureKind.INFRASTRUCTURE) == interrupted, reason
    assert ok == (not interrupted and exit_code == 0)
