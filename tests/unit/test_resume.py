"""Engine.drive resumes a run from whatever the store says (the server's restart path),
against the shipped FakeBackend: nothing launched twice, one verdict, one chain decision."""
import json

import pytest

from runner.backends.fake import FakeBackend, Script
from runner.engine import Engine, QuietReporter
from runner.store import Store
from tests.conftest import MINIMAL


@pytest.fixture
def make(tmp_path):
    store = Store(tmp_path / "runs" / "runner.db")

    def make(backend):
        engine = Engine(store, backend, tmp_path / "runs", QuietReporter(), poll_s=0.001)
        engine.persistent = True
        return engine

    return make


def kinds(engine, run_id):
    return [e["kind"] for e in engine.store.events(run_id)]


def chained(write_spec, tmp_path):
    (tmp_path / "two.yaml").write_text(MINIMAL.replace("name: p1", "name: two"))
    return write_spec(MINIMAL + "next:\n  - {when: success, apply: two.yaml}\n")


def test_a_queued_submission_is_driven_through_its_chain(make, write_spec, tmp_path):
    engine = make(FakeBackend())
    run_id = engine.submit(chained(write_spec, tmp_path), {}, source="inbox:x.yaml")
    assert engine.store.submission(run_id)["state"] == "queued" and engine.store.phases(run_id) == []
    run = engine.drive(run_id)
    assert [(p.phase, p.status) for p in run.phases] == [("p1", "succeeded"), ("two", "succeeded")]
    assert kinds(engine, run_id).count("chain.decision") == 2


def test_restart_while_running_readopts_the_same_container(make, write_spec):
    backend = FakeBackend(script={"p1": Script(polls=5)})
    first = make(backend)
    run_id = first.submit(write_spec(MINIMAL), {}, source="inbox:x.yaml")
    first.drive(run_id, detach=True)  # as if the server died right after the launch
    (cid,) = backend.containers
    second = make(backend)  # a new process
    run = second.drive(run_id)
    assert run.last.status == "succeeded" and run.last.container_id == cid
    assert len(backend.launched) == 1
    assert kinds(second, run_id).count("phase.succeeded") == 1


def test_launching_without_a_container_launches_once(make, write_spec):
    backend = FakeBackend()
    engine = make(backend)
    run_id = engine.submit(write_spec(MINIMAL), {}, source="inbox:x.yaml")
    engine.drive(run_id, detach=True)
    (phase,) = engine.store.phases(run_id)
    backend.vanish(phase["container_id"])  # pretend create never happened...
    engine.store.as_if_crashed(phase["id"], "launching", container_id=None)
    run = make(backend).drive(run_id)  # ...so the restart launches it, once
    assert run.last.status == "succeeded" and len(backend.launched) == 2
    assert "the runner stopped while launching and no container exists" in json.dumps(engine.store.events(run_id))


def test_launching_with_its_container_present_adopts_it(make, write_spec):
    backend = FakeBackend(script={"p1": Script(polls=3)})
    engine = make(backend)
    run_id = engine.submit(write_spec(MINIMAL), {}, source="inbox:x.yaml")
    engine.drive(run_id, detach=True)
    (phase,) = engine.store.phases(run_id)
    engine.store.as_if_crashed(phase["id"], "launching", container_id=None)
    run = make(backend).drive(run_id)
    assert run.last.status == "succeeded" and len(backend.launched) == 1


def test_vanished_container_is_lost_and_never_relaunched(make, write_spec):
    backend = FakeBackend(script={"p1": Script(polls=10**9)})
    engine = make(backend)
    run_id = engine.submit(write_spec(MINIMAL), {}, source="inbox:x.yaml")
    engine.drive(run_id, detach=True)
    backend.vanish(next(iter(backend.containers)))
    run = make(backend).drive(run_id)
    assert run.last.status == "lost" and "disappeared" in run.last.reason
    assert len(backend.launched) == 1


def test_judged_phase_without_decision_is_decided_once_then_chained(make, write_spec, tmp_path):
    backend = FakeBackend(script={"p1": Script(polls=0)})
    engine = make(backend)
    run_id = engine.submit(chained(write_spec, tmp_path), {}, source="inbox:x.yaml")
    engine.drive(run_id, detach=True)
    (phase,) = engine.store.phases(run_id)
    # The server died after the verdict was recorded and before the decision.
    engine.finish(phase["id"], backend.inspect(phase["container_id"]))
    engine.finish(phase["id"], backend.inspect(phase["container_id"]))
    assert engine.store.phase(phase["id"])["decision"] == ""
    run = make(backend).drive(run_id)
    assert [p.phase for p in run.phases][-1] == "two"
    assert kinds(engine, run_id).count("chain.decision") == 2  # one per phase
    assert kinds(engine, run_id).count("phase.succeeded") == 2
    assert engine.store.record_decision(phase["id"], "again", {}) is False


def test_decision_recorded_but_next_phase_not_created_starts_it(make, write_spec, tmp_path):
    backend = FakeBackend(script={"p1": Script(polls=0)})
    engine = make(backend)
    run_id = engine.submit(chained(write_spec, tmp_path), {}, source="inbox:x.yaml")
    engine.drive(run_id, detach=True)
    (phase,) = engine.store.phases(run_id)
    engine.finish(phase["id"], backend.inspect(phase["container_id"]))
    assert engine.store.record_decision(phase["id"], "rule 1 fired", {"next": str(tmp_path / "two.yaml"), "inputs": {},
                                                                      "rule": 0, "spec": phase["spec_path"]})
    run = make(backend).drive(run_id)
    assert [p.phase for p in run.phases] == ["two"]
    assert [p["name"] for p in engine.store.phases(run_id)] == ["p1", "two"]


def test_gpus_granted_by_the_slots_are_the_ones_launched(make, write_spec):
    from runner.server.scheduler import Scheduler

    backend = FakeBackend(gpu=True)
    engine = make(backend)
    engine.slots = Scheduler(["0", "1", "2"], 1, rank=lambda run_id: (0, 0))
    run_id = engine.submit(write_spec(MINIMAL + "  gpus: 2\n"), {}, source="inbox:x.yaml")
    assert engine.drive(run_id).last.status == "succeeded"
    assert backend.launched[0].gpus == ("0", "1")
    assert json.loads(engine.store.phases(run_id)[0]["plan_json"])["gpus"] == ["0", "1"]
    assert engine.slots.snapshot()["gpus"] == {"0": None, "1": None, "2": None}  # released


def test_a_gpu_count_in_the_foreground_is_planned_as_the_ids_docker_gives_it(make, write_spec):
    """Docker's NVIDIA driver turns a count N into devices 0..N-1; runner asks for those ids by name,
    so the recorded plan (and gpu_memory_free) names exactly the devices the container gets."""
    backend = FakeBackend(gpu=True)
    engine = make(backend)
    result = engine.apply(write_spec(MINIMAL + "  gpus: 2\n")).last
    assert result.status == "succeeded"
    assert backend.launched[0].gpus == ("0", "1")
    assert json.loads(engine.store.phase(result.phase_id)["plan_json"])["gpus"] == ["0", "1"]
    engine.apply(write_spec(MINIMAL + "  gpus: all\n", name="all.yaml"))
    assert backend.launched[1].gpus == "all"  # the foreground keeps no inventory


def test_a_phase_that_can_never_fit_is_an_error_not_a_wait(make, write_spec):
    from runner.server.scheduler import Scheduler

    engine = make(FakeBackend(gpu=True))
    engine.slots = Scheduler([], 1, rank=lambda run_id: (0, 0))
    run_id = engine.submit(write_spec(MINIMAL + "  gpus: 1\n"), {}, source="inbox:x.yaml")
    result = engine.drive(run_id).last
    assert result.status == "error" and "needs 1 GPU(s); this server has 0" in result.reason


def test_stop_while_waiting_for_slots_launches_nothing(make, write_spec):
    import threading
    import time

    from runner.plan import build_plan
    from runner.server.scheduler import Scheduler
    from runner.spec import load_spec

    backend = FakeBackend(gpu=True, script={"p1": Script(polls=10**9)})
    engine = make(backend)
    engine.slots = Scheduler(["0"], 1, rank=lambda run_id: (0, run_id),
                             note=lambda pid, text: engine.store.update(pid, reason=text))
    second = engine.submit(write_spec(MINIMAL + "  gpus: 1\n", name="b.yaml"), {}, source="inbox:b.yaml")
    queued = engine.submit(write_spec(MINIMAL, name="c.yaml"), {}, source="inbox:c.yaml")
    busy = build_plan(load_spec(write_spec(MINIMAL + "  gpus: 1\n", name="a.yaml")), {}, "a", "/tmp")
    engine.slots.acquire(999, busy)  # another phase holds GPU 0
    other = make(backend)
    other.slots = engine.slots  # another run's thread in the same server
    waiter = threading.Thread(target=lambda: other.drive(second))
    waiter.start()
    time.sleep(0.3)
    (pending,) = engine.store.phases(second)
    assert pending["status"] == "pending" and pending["reason"].startswith("queued: waiting for 1 GPU(s)")
    engine.stop_run(second)
    engine.stop_run(queued)
    engine.slots.release(999)  # the GPU frees up...
    waiter.join(5)
    assert engine.store.phases(second)[0]["status"] == "cancelled"
    assert backend.launched == []  # ...but the stopped phase never launches
    make(backend).drive(queued)
    assert engine.store.phases(queued) == []
    assert engine.store.submission(queued)["state"] == "cancelled"


def test_a_container_that_ended_while_nobody_watched_is_judged_once(make, write_spec, tmp_path):
    backend = FakeBackend(script={"p1": Script(polls=0, exit_code=3)})
    engine = make(backend)
    run_id = engine.submit(chained(write_spec, tmp_path), {}, source="inbox:x.yaml")
    engine.drive(run_id, detach=True)
    run = make(backend).drive(run_id)  # it exited with 3 while the server was down
    assert [(p.phase, p.status, p.exit_code) for p in run.phases] == [("p1", "failed", 3)]
    assert kinds(engine, run_id).count("phase.failed") == 1 and kinds(engine, run_id).count("chain.decision") == 1
    assert len(backend.launched) == 1


def test_reconcile_names_running_containers_it_does_not_know(tmp_path, write_spec):
    from runner.server.server import Server

    backend = FakeBackend(script={"p1": Script(polls=10**9)})
    other = Engine(Store(tmp_path / "other" / "runner.db"), backend, tmp_path / "other", QuietReporter())
    other.apply(write_spec(MINIMAL), detach=True)
    lines = []
    server = Server(Store(tmp_path / "runs" / "runner.db"), lambda: backend, tmp_path / "runs", None, [], [], "test", 1,
                    say=lines.append)
    server.reconcile()
    assert any("is not in this run store; leaving it alone" in line for line in lines)
    assert all(c.status == "running" for c in backend.containers.values())


def test_detach_reports_the_launched_phase_once(make, write_spec):
    engine = make(FakeBackend(script={"p1": Script(polls=10**9)}))
    run = engine.apply(write_spec(MINIMAL), detach=True)
    assert [(p.phase, p.status) for p in run.phases] == [("p1", "running")]


def test_a_created_but_never_started_container_is_removed_and_launched_again(make, write_spec):
    backend = FakeBackend(script={"p1": Script(polls=3)})
    engine = make(backend)
    run_id = engine.submit(write_spec(MINIMAL), {}, source="inbox:x.yaml")
    engine.drive(run_id, detach=True)
    (phase,) = engine.store.phases(run_id)
    backend.never_started(phase["container_id"])
    engine.store.as_if_crashed(phase["id"], "launching", container_id=None)
    run = make(backend).drive(run_id)
    assert run.last.status == "succeeded" and len(backend.launched) == 2 and len(backend.removed) == 2
    assert backend.containers == {}  # the never-started one removed before the relaunch, the second after its end
    assert "was created but never started" in json.dumps(engine.store.events(run_id))


def crashed_while_launching(make, write_spec):
    backend = FakeBackend(script={"p1": Script(polls=10**9)})
    engine = make(backend)
    run_id = engine.submit(write_spec(MINIMAL), {}, source="apply")
    engine.drive(run_id, detach=True)
    (phase,) = engine.store.phases(run_id)
    engine.store.as_if_crashed(phase["id"], "launching", container_id=None)
    return backend, engine, run_id, phase


def test_stop_of_a_launching_phase_stops_the_container_it_created(make, write_spec):
    backend, engine, run_id, phase = crashed_while_launching(make, write_spec)
    make(backend).stop_run(run_id)
    row = engine.store.phase(phase["id"])
    assert row["status"] == "cancelled" and row["container_id"] == phase["container_id"]
    assert backend.containers[phase["container_id"]].status == "exited"  # stopped, not left training unwatched


def test_status_refresh_records_the_container_of_a_launching_phase(make, write_spec):
    backend, engine, run_id, phase = crashed_while_launching(make, write_spec)
    make(backend).refresh(run_id)
    row = engine.store.phase(phase["id"])
    assert row["status"] == "running" and row["container_id"] == phase["container_id"]


def test_attach_takes_over_a_launching_phase(make, write_spec):
    backend, engine, run_id, phase = crashed_while_launching(make, write_spec)
    backend.containers[phase["container_id"]].polls_left = 2
    run = make(backend).attach(run_id)
    assert run.last.status == "succeeded" and len(backend.launched) == 1


def test_an_unreachable_engine_at_launch_is_retried_with_backoff_then_launched_once(make, write_spec):
    import threading

    backend = FakeBackend(reachable=False)
    engine = make(backend)
    engine.retry_base_s = 0.05
    run_id = engine.submit(write_spec(MINIMAL), {}, source="inbox:x.yaml")
    seen = []

    def back_later():
        import time

        time.sleep(0.3)
        seen.append((engine.store.phases(run_id)[0]["status"], engine.store.phases(run_id)[0]["reason"]))
        backend.reachable = True

    threading.Thread(target=back_later).start()
    run = engine.drive(run_id)
    assert run.last.status == "succeeded" and len(backend.launched) == 1
    assert seen[0][0] == "pending" and "retrying in" in seen[0][1]  # waiting, with the reason, meanwhile
    assert kinds(engine, run_id).count("phase.retry") >= 2


def test_launch_retries_give_up_with_an_error_and_the_reason(make, write_spec):
    backend = FakeBackend(reachable=False)
    engine = make(backend)
    engine.retry_base_s, engine.launch_retry_s = 0.01, 0.05
    run_id = engine.submit(write_spec(MINIMAL), {}, source="inbox:x.yaml")
    with pytest.raises(Exception, match="unreachable"):
        engine.drive(run_id)
    (phase,) = engine.store.phases(run_id)
    assert phase["status"] == "error" and phase["reason"].startswith("gave up after")
    assert backend.launched == []


def test_the_timeout_of_a_readopted_phase_counts_from_its_start(make, write_spec):
    import time

    backend = FakeBackend(script={"p1": Script(polls=10**9)})
    engine = make(backend)
    run_id = engine.submit(write_spec(MINIMAL + "timeout: 30m\n"), {}, source="inbox:x.yaml")
    engine.drive(run_id, detach=True)
    (phase,) = engine.store.phases(run_id)
    engine.store.update(phase["id"], started_at=time.time() - 3600)  # it has run for an hour already
    run = make(backend).drive(run_id)  # a restarted server re-adopts it
    assert run.last.status == "failed" and "timeout" in run.last.reason


class Flaky(FakeBackend):
    """Each launch takes the next script: attempt 1 fails one way, attempt 2 another."""

    def __init__(self, *scripts):
        super().__init__()
        self.queue = list(scripts)

    def launch(self, plan):
        self.script[plan.phase] = self.queue.pop(0)
        return super().launch(plan)


RETRYING = MINIMAL.replace("name: p1", "name: p1\ninputs: {resume_from: none}") + """\
retry: {on: [oom, lost, exit_code 3], max: 2, with: {resume_from: "${{ phase.dir }}/after-${{ phase.verdict }}"}}
next:
  - {when: failure, apply: two.yaml}
"""


def test_an_oom_is_retried_as_a_new_attempt_with_its_own_name_and_inputs(make, write_spec, tmp_path):
    (tmp_path / "two.yaml").write_text(MINIMAL.replace("name: p1", "name: two"))
    backend = Flaky(Script(oom=True, exit_code=137), Script())
    engine = make(backend)
    run_id = engine.submit(write_spec(RETRYING), {}, source="apply")
    run = engine.drive(run_id)
    first, second = engine.store.phases(run_id)
    assert (first["name"], first["status"], second["name"], second["status"]) == ("p1", "failed", "p1", "succeeded")
    assert first["decision"].startswith("retry 1 of 2 (oom): attempt 2 of p1")
    assert second["container_name"].endswith("-p1-2") and second["log_path"].endswith("/p1.2/container.log")
    assert second["inputs"]["resume_from"].endswith("/p1/after-failure")  # from the failed attempt's outputs
    assert run.last.status == "succeeded" and len(backend.launched) == 2


def test_retries_never_cover_a_failed_verdict_and_stop_at_max(make, write_spec, tmp_path):
    (tmp_path / "two.yaml").write_text(MINIMAL.replace("name: p1", "name: two"))
    backend = Flaky(Script(exit_code=3), Script(exit_code=3), Script(exit_code=3), Script())
    engine = make(backend)
    run_id = engine.submit(write_spec(RETRYING), {}, source="apply")
    engine.drive(run_id)
    names = [(p["name"], p["status"]) for p in engine.store.phases(run_id)]
    assert names == [("p1", "failed"), ("p1", "failed"), ("p1", "failed"), ("two", "succeeded")]  # 2 retries, then next:
    assert "phase.retry-exhausted" in kinds(engine, run_id)
    crit = Flaky(Script(lines=["step 1 loss 5.0"]), Script())  # success criteria not met: a failed verdict, never retried
    engine2 = make(crit)
    spec = RETRYING.replace("retry:", "metrics: {stdout: {step: 'step (\\d+)', patterns: {loss: 'loss ([0-9.]+)'}}}\n"
                                      "success: {all: [{metric: loss, below: 1}]}\nretry:")
    run2 = engine2.submit(write_spec(spec), {}, source="apply")
    engine2.drive(run2)
    assert [p["name"] for p in engine2.store.phases(run2)] == ["p1", "two"]


def test_a_lost_container_is_retried(make, write_spec, tmp_path):
    (tmp_path / "two.yaml").write_text(MINIMAL.replace("name: p1", "name: two"))
    backend = Flaky(Script(polls=10**9), Script())
    engine = make(backend)
    run_id = engine.submit(write_spec(RETRYING), {}, source="apply")
    engine.drive(run_id, detach=True)
    backend.vanish(next(iter(backend.containers)))
    make(backend).drive(run_id)
    assert [(p["name"], p["status"]) for p in engine.store.phases(run_id)] == [("p1", "lost"), ("p1", "succeeded")]
