"""FakeBackend's polled scripts (the engine's unit tests use them) honour the contract too: the suite in
test_backend_contract.py runs the fake by the clock, these check the same points on a container that runs
for a number of inspections."""
import time

from runner.backends.fake import FakeBackend, Script
from runner.plan import LaunchPlan


def plan(phase: str = "p1", run: str = "r1") -> LaunchPlan:
    return LaunchPlan(run_id=run, phase=phase, container_name=f"runner-{run}-{phase}", image="trainer:latest",
                      command=("true",), env={}, mounts=(), workdir=None, gpus=0, shm_size=None, memory=None, cpus=None,
                      user=None, labels={"runner.run-id": run, "runner.phase": phase}, stop_grace=5.0, timeout=None,
                      phase_dir="/nonexistent")


def test_find_does_not_use_up_a_polled_scripts_inspections():
    backend = FakeBackend(script={"p1": Script(polls=2, exit_code=3)})
    cid = backend.launch(plan())
    for _ in range(10):
        (found,) = backend.find({"runner.run-id": "r1"})
        assert found.running and found.status == "running"
    assert backend.containers[cid].polls_left == 2
    assert [backend.inspect(cid).running for _ in range(3)] == [True, True, False]  # the script's own polls
    (found,) = backend.find({"runner.run-id": "r1"})
    assert (found.status, found.exit_code, found.ended) == ("exited", 3, True)


def test_a_polled_scripts_lines_are_logged_at_its_start():
    backend = FakeBackend(script={"p1": Script(lines=["a", "b"], polls=0)})
    before = int(time.time())
    cid = backend.launch(plan())
    assert b"".join(backend.logs(cid)) == b"a\nb\n"
    assert b"".join(backend.logs(cid, since=before)) == b"a\nb\n"
    assert b"".join(backend.logs(cid, since=before + 2)) == b""  # none logged from that second on
    assert b"".join(backend.logs(cid, follow=True)) == b"a\nb\n"  # by polls: what there is, then the stream ends


def test_a_polled_container_has_time_stamps():
    backend = FakeBackend(script={"p1": Script(polls=1)})
    before = time.time()
    cid = backend.launch(plan())
    running = backend.inspect(cid)
    assert running.finished_at is None and before <= running.started_s <= time.time()
    ended = backend.inspect(cid)
    assert ended.ended and running.started_s == ended.started_s <= ended.finished_s <= time.time()
    assert ended.started_at.endswith("Z") and len(ended.started_at) == len("2026-11-27T07:25:40.123456789Z")


def test_stop_ends_a_polled_container_with_sigterms_code_and_a_finish_time():
    backend = FakeBackend(script={"p1": Script(polls=10**9)})
    cid = backend.launch(plan())
    backend.stop(cid, 7)
    state = backend.inspect(cid)
    assert (state.status, state.exit_code, backend.containers[cid].stop_grace) == ("exited", 143, 7)
    assert state.finished_s is not None and state.finished_s >= state.started_s


def test_a_container_never_started_has_no_start_time():
    backend = FakeBackend(script={"p1": Script(polls=10**9)})
    cid = backend.launch(plan())
    backend.never_started(cid)
    state = backend.inspect(cid)
    assert (state.status, state.running, state.started_at, state.finished_at) == ("created", False, None, None)


def test_find_any_value_and_no_match():
    backend = FakeBackend(script={"p1": Script(polls=10**9), "p2": Script(polls=10**9)})
    a = backend.launch(plan("p1"))
    b = backend.launch(plan("p2", run="r2"))
    assert sorted(s.id for s in backend.find({"runner.run-id": None})) == sorted([a, b])
    assert [s.id for s in backend.find({"runner.run-id": None, "runner.phase": "p2"})] == [b]
    assert backend.find({"runner.run-id": "r3"}) == []
