"""The engine's decisions, against the shipped FakeBackend (the real engine is tested in integration/)."""

import pytest

from runner.backends.fake import FakeBackend, Script
from runner.engine import Engine, QuietReporter
from runner.errors import EngineUnavailable, GpuUnavailable, ImageMissing, LaunchError, SpecError
from runner.store import Store
from tests.conftest import MINIMAL


class Recorder(QuietReporter):
    def __init__(self):
        self.lines, self.infos = [], []

    def info(self, m):
        self.infos.append(m)

    def log_line(self, line):
        self.lines.append(line)

    def progress(self, text):
        pass


@pytest.fixture
def make(tmp_path):
    def make(backend=None, reporter=None):
        store = Store(tmp_path / "runs" / "runner.db")
        return Engine(store, backend or FakeBackend(), tmp_path / "runs", reporter or Recorder(), poll_s=0.001)

    return make


def test_success_is_recorded_with_logs(make, write_spec, tmp_path):
    rec = Recorder()
    backend = FakeBackend(script={"p1": Script(lines=["step 1", "done"], exit_code=0)})
    engine = make(backend, rec)
    result = engine.apply(write_spec(MINIMAL)).last
    assert (result.status, result.exit_code, result.reason) == ("succeeded", 0, "exit code 0")
    assert rec.lines == ["step 1", "done"]
    log = tmp_path / "runs" / result.run_id / "p1" / "container.log"
    assert log.read_text() == "step 1\ndone\n"
    kinds = [e["kind"] for e in engine.store.events(result.run_id)]
    assert kinds == ["run.created", "phase.pending", "phase.launching", "phase.running", "phase.succeeded",
                     "container.removed", "chain.decision", "run.done"]
    # removed once its log was saved (docker ps -a does not fill up); `runner logs` reads the saved copy
    assert backend.containers == {} and len(backend.removed) == 1


def test_failure_and_oom(make, write_spec):
    backend = FakeBackend(script={"p1": Script(exit_code=137, oom=True)})
    result = make(backend).apply(write_spec(MINIMAL)).last
    assert result.status == "failed" and "out of memory" in result.reason
    backend = FakeBackend(script={"p1": Script(exit_code=2)})
    result = make(backend).apply(write_spec(MINIMAL)).last
    assert (result.status, result.reason) == ("failed", "exit code 2")


def test_launching_is_recorded_before_the_container_exists(make, write_spec):
    """Each transition is committed before its side effect."""
    seen = []

    class Spy(FakeBackend):
        def launch(self, plan):
            seen.append(engine.store.phases(plan.run_id)[0]["status"])
            return super().launch(plan)

    engine = make(Spy())
    engine.apply(write_spec(MINIMAL))
    assert seen == ["launching"]


@pytest.mark.parametrize("backend,error,reason", [
    (FakeBackend(images=set()), ImageMissing, "not found"),
    (FakeBackend(reachable=False), EngineUnavailable, "unreachable"),
])
def test_refusals_are_recorded_as_error(make, write_spec, backend, error, reason):
    engine = make(backend)
    engine.retry_base_s, engine.launch_retry_s = 0.01, 0.05  # a temporary error is retried for a while first
    run_id = engine.submit(write_spec(MINIMAL), {}, source="apply", state="started")
    with pytest.raises(error):
        engine.drive(run_id)
    (phase,) = engine.store.phases(run_id)
    assert phase["status"] == "error" and reason in phase["reason"]
    assert backend.launched == []


def test_apply_with_no_engine_at_all_fails_at_once_and_records_nothing(make, write_spec):
    engine = make(FakeBackend(reachable=False))
    with pytest.raises(EngineUnavailable):
        engine.apply(write_spec(MINIMAL))
    assert engine.store.runs() == []


def test_a_finished_local_apply_marks_its_submission_done(make, write_spec):
    engine = make()
    run = engine.apply(write_spec(MINIMAL))
    assert engine.store.submission(run.run_id)["state"] == "done"


def test_gpu_without_runtime_fails_before_running(make, write_spec):
    backend = FakeBackend(gpu=False)
    engine = make(backend)
    with pytest.raises(GpuUnavailable):
        engine.apply(write_spec(MINIMAL + "  gpus: 1\n"))
    assert backend.containers == {}


def test_missing_mount_source_is_an_error_unless_create(make, write_spec, tmp_path):
    engine = make()
    with pytest.raises(SpecError, match="mount source .* does not exist"):
        engine.apply(write_spec(MINIMAL + "  mounts: [{source: ./nope, target: /x}]\n"))
    result = engine.apply(write_spec(MINIMAL + "  mounts: [{source: ./out, target: /x, create: true}]\n")).last
    assert result.status == "succeeded" and (tmp_path / "out").is_dir()


def test_detach_returns_running_and_refresh_finishes(make, write_spec):
    backend = FakeBackend(script={"p1": Script(polls=1)})
    engine = make(backend)
    result = engine.apply(write_spec(MINIMAL), detach=True).last
    assert result.status == "running"
    engine.refresh(result.run_id)  # first poll: still running
    engine.refresh(result.run_id)
    assert engine.store.phase(result.phase_id)["status"] == "succeeded"


def test_detach_request_leaves_container_running(make, write_spec):
    class DetachOnFirstInspect(FakeBackend):
        """The detach request arrives once supervision follows the running container (no timer race)."""

        def inspect(self, container_id):
            engine.detach_requested.set()
            return super().inspect(container_id)

    backend = DetachOnFirstInspect(script={"p1": Script(polls=10**9)})
    engine = make(backend)
    result = engine.apply(write_spec(MINIMAL)).last
    assert result.status == "detached"
    (container,) = backend.containers.values()
    assert container.status == "running" and container.stop_grace is None


def test_cancel_stops_with_grace_and_records_cancelled(make, write_spec):
    backend = FakeBackend(script={"p1": Script(polls=10**9)})
    engine = make(backend)
    result = engine.apply(write_spec(MINIMAL + "  stop_grace_period: 7s\n"), detach=True).last
    (after,) = engine.stop_run(result.run_id)
    assert after.status == "cancelled"
    (container,) = backend.containers.values()
    assert container.stop_grace == 7.0
    # A later refresh does not record a second outcome.
    engine.refresh(result.run_id)
    kinds = [e["kind"] for e in engine.store.events(result.run_id)]
    assert kinds.count("phase.cancelled") == 1 and "phase.failed" not in kinds


def test_timeout_stops_and_fails(make, write_spec):
    backend = FakeBackend(script={"p1": Script(polls=10**9)})
    result = make(backend).apply(write_spec(MINIMAL + "timeout: 50ms\n")).last
    assert result.status == "failed" and result.reason.startswith("timeout after")


def test_vanished_container_is_lost_never_success(make, write_spec):
    backend = FakeBackend(script={"p1": Script(polls=10**9)})
    engine = make(backend)
    result = engine.apply(write_spec(MINIMAL), detach=True).last
    backend.vanish(result.container_id)
    engine.refresh(result.run_id)
    assert engine.store.phase(result.phase_id)["status"] == "lost"


def test_same_phase_is_never_launched_twice(make, write_spec):
    backend = FakeBackend(script={"p1": Script(polls=10**9)})
    engine = make(backend)
    engine.apply(write_spec(MINIMAL), detach=True)
    plan = backend.launched[0]
    with pytest.raises(LaunchError, match="already exists"):
        backend.launch(plan)


STDOUT_METRICS = """
metrics:
  stdout: {step: 'step (\\d+)', patterns: {loss: 'loss ([-+.\\deE]+|nan|inf)'}}
  poll_interval: 10ms
"""


def test_stop_when_met_ends_the_run_early_with_success(make, write_spec):
    backend = FakeBackend(script={"p1": Script(lines=[f"step {s} loss {3.0 - s / 100}" for s in range(10, 200, 10)], polls=10**9)})
    spec = MINIMAL + STDOUT_METRICS + "success:\n  stop_when_met: true\n  all:\n    - {metric: loss, below: 1.5}\n"
    engine = make(backend)
    result = engine.apply(write_spec(spec)).last
    assert (result.status, result.verdict) == ("succeeded", "success")
    assert result.reason.startswith("criteria met, run stopped early")
    (container,) = backend.removed
    assert container.stop_grace is not None  # stopped by runner, gracefully
    kinds = [e["kind"] for e in engine.store.events(result.run_id)]
    assert "criteria.met" in kinds


def test_guard_trip_stops_and_fails_and_chain_takes_failure(make, write_spec, tmp_path):
    (tmp_path / "restart.yaml").write_text(MINIMAL.replace("name: p1", "name: restart"))
    backend = FakeBackend(script={"p1": Script(lines=["step 10 loss 2.0", "step 20 loss nan"], polls=10**9)})
    spec = MINIMAL + STDOUT_METRICS + "guards:\n  - {metric: loss, non_finite: true}\nnext:\n  - {when: failure, apply: restart.yaml}\n"
    run = make(backend).apply(write_spec(spec))
    first, second = run.phases
    assert (first.status, first.verdict) == ("failed", "failure")
    assert first.reason == "guard tripped (loss non-finite): loss is nan at step 20"
    assert second.phase == "restart" and second.status == "succeeded"


def test_blocked_precondition_launches_nothing(make, write_spec):
    backend = FakeBackend()
    spec = MINIMAL + "preconditions:\n  - file_exists: /no/such/checkpoint.pth\n"
    result = make(backend).apply(write_spec(spec)).last
    assert result.status == "blocked" and "does not exist" in result.reason
    assert backend.launched == []
