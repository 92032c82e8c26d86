"""The backend contract (runner/backends/base.py), one suite over FakeBackend, the Docker backend and the Slurm
backend (the ``contract`` fixture, conftest.py).  What the engine relies on: launch → id; inspect (running,
then exited with the container's exit code); stop(grace) is SIGTERM and returns once ended; logs (all of it,
``since``, follow); labels and find; time stamps; a second container of one name refused; a missing image;
an unknown id; remove.  Where a backend differs by design, the test says so (``remote``, ``records_stay``)."""
from __future__ import annotations

import time

import pytest

from runner.errors import ContainerNotFound, ImageMissing, LaunchError
from tests.contract.harness import CONTRACT_LABEL, MISSING_IMAGE, Program


def test_the_engine_answers(contract):
    contract.backend.ping()


@pytest.mark.parametrize("code", [0, 3])
def test_launch_gives_an_id_the_container_runs_then_exits_with_its_code(contract, code):
    cid, plan = contract.launch(Program(pause=2, exit_code=code))
    assert isinstance(cid, str) and cid
    running = contract.running(cid)
    assert (running.id, running.name, running.status) == (cid, plan.container_name, "running")
    assert running.running and not running.ended and running.exit_code is None
    ended = contract.ended(cid)
    assert (ended.id, ended.name, ended.status, ended.exit_code) == (cid, plan.container_name, "exited", code)
    assert ended.ended and not ended.running and not ended.oom_killed and not ended.infrastructure


def test_stop_is_sigterm_and_returns_once_the_container_has_ended(contract):
    cid, _ = contract.launch(Program(before=("ready",), pause=30))
    contract.running(cid)
    contract.logged(cid, "ready")  # its SIGTERM trap is set
    began = time.monotonic()
    contract.backend.stop(cid, 5)
    took = time.monotonic() - began
    state = contract.backend.inspect(cid)
    assert state.ended and not state.running and state.status == "exited"
    assert state.exit_code == 143, state  # its trap ran: SIGTERM (SIGKILL after the grace period would be 137)
    assert took < 25, f"stop took {took:.1f}s"
    contract.backend.stop(cid, 5)  # an ended container: nothing to do
    assert contract.backend.inspect(cid).exit_code == 143


def test_logs_give_the_whole_output_stdout_and_stderr(contract):
    cid, _ = contract.launch(Program(before=("one", "two"), stderr=("to-stderr",), pause=1, after=("three",)))
    contract.ended(cid)
    lines = contract.lines(contract.backend.logs(cid))
    assert [line for line in lines if line != "to-stderr"] == ["one", "two", "three"]
    assert lines.count("to-stderr") == 1


def test_logs_since_give_the_lines_logged_in_that_second_and_after(contract):
    cid, _ = contract.launch(Program(before=("early",), pause=2.5, after=("late",)))
    since = int(contract.logged(cid, "early")) + 1  # "early" came before that second, "late" comes after
    contract.ended(cid)
    assert contract.lines(contract.backend.logs(cid, since=since)) == ["late"]
    assert contract.lines(contract.backend.logs(cid, since=since - 10)) == ["early", "late"]


def test_logs_follow_the_container_to_its_end(contract):
    cid, _ = contract.launch(Program(before=("first",), pause=2, after=("last",)))
    contract.logged(cid, "first")  # running, in its pause
    assert contract.lines(contract.backend.logs(cid, follow=True)) == ["first", "last"]
    contract.ended(cid, timeout=5)


def test_runner_labels_round_trip_and_find_finds_by_label_without_changing_anything(contract):
    p, plan_p = contract.launch(Program(pause=3), phase="p")
    q, plan_q = contract.launch(Program(pause=3), phase="q")
    contract.running(p)
    contract.running(q)
    backend, run = contract.backend, plan_p.run_id
    for cid, plan in ((p, plan_p), (q, plan_q)):
        labels = backend.inspect(cid).labels
        assert {"runner.run-id": run, "runner.phase": plan.phase}.items() <= labels.items(), labels

    found = backend.find({"runner.run-id": run})
    assert sorted((s.id, s.name) for s in found) == sorted([(p, plan_p.container_name), (q, plan_q.container_name)])
    assert all(s.running and s.labels["runner.run-id"] == run for s in found)
    (only_q,) = backend.find({"runner.run-id": run, "runner.phase": "q"})
    assert (only_q.id, only_q.name, only_q.labels["runner.phase"]) == (q, plan_q.container_name, "q")
    assert q in [s.id for s in backend.find({"runner.run-id": None, "runner.phase": "q"})]  # None: any value
    assert p not in [s.id for s in backend.find({"runner.run-id": None, "runner.phase": "q"})]
    assert backend.find({"runner.run-id": run + "x"}) == []
    assert backend.find({"runner.run-id": run, "runner.phase": "absent"}) == []

    for _ in range(5):
        backend.find({"runner.run-id": run})  # find only looks
    assert backend.inspect(p).running and backend.inspect(q).running
    assert {s.exit_code for s in (contract.ended(p), contract.ended(q))} == {0}
    assert {s.ended for s in backend.find({"runner.run-id": run})} == {True}  # find sees the end too


def test_every_label_of_the_plan_round_trips(contract):
    cid, plan = contract.launch(Program(), labels={"team": "speech", "note": "a b=c"})
    state = contract.ended(cid)
    assert plan.labels.items() <= state.labels.items(), state.labels
    assert [s.id for s in contract.backend.find({"team": "speech", CONTRACT_LABEL: contract.uid})] == [cid]


def test_time_stamps_once_started_and_once_ended(contract):
    before = time.time()
    cid, _ = contract.launch(Program(pause=1.5))
    running = contract.running(cid)
    assert running.started_s is not None and running.finished_s is None, running
    ended = contract.ended(cid)
    after = time.time()
    started, finished = ended.started_s, ended.finished_s
    assert started is not None and finished is not None, ended
    assert started == pytest.approx(running.started_s, abs=1)
    assert before - 1 <= started <= finished <= after + 1  # near the wall clock (Slurm: whole seconds)
    assert finished - started >= 1  # it ran 1.5 s


def test_a_second_container_with_the_same_name_is_refused(contract):
    cid, plan = contract.launch(Program(pause=3))
    with pytest.raises(LaunchError, match="already exists"):
        contract.backend.launch(plan)
    contract.running(cid)
    with pytest.raises(LaunchError, match="already exists"):
        contract.backend.launch(plan)
    contract.backend.stop(cid, 5)
    assert [s.id for s in contract.backend.find({"runner.run-id": contract.run_id})] == [cid]


def test_a_second_container_with_the_same_name_is_refused_once_the_first_has_ended(contract):
    cid, plan = contract.launch(Program())
    contract.ended(cid)
    with pytest.raises(LaunchError, match="already exists"):
        contract.backend.launch(plan)
    assert [s.id for s in contract.backend.find({"runner.run-id": contract.run_id})] == [cid]


def test_a_missing_image(contract):
    backend = contract.backend
    if not backend.remote:
        with pytest.raises(ImageMissing, match=MISSING_IMAGE):
            backend.check_image(MISSING_IMAGE)
        with pytest.raises(ImageMissing, match=MISSING_IMAGE):
            backend.launch(contract.plan(Program(), image=MISSING_IMAGE))
        assert backend.find({"runner.run-id": contract.run_id}) == []  # nothing left behind
        return
    # Remote (Slurm): images live on the nodes; the job finds it missing there, ends non-zero and says so.
    backend.check_image(MISSING_IMAGE)
    cid, _ = contract.launch(Program(), image=MISSING_IMAGE)
    state = contract.ended(cid)
    assert state.exit_code not in (0, None) and MISSING_IMAGE in state.error, state


def test_an_unknown_id_is_not_found(contract):
    backend, unknown = contract.backend, contract.unknown_id
    with pytest.raises(ContainerNotFound):
        backend.inspect(unknown)
    with pytest.raises(ContainerNotFound):
        backend.stop(unknown, 1)
    with pytest.raises(ContainerNotFound):
        list(backend.logs(unknown))


def test_remove_an_ended_container(contract):
    cid, plan = contract.launch(Program(before=("bye",)))
    contract.ended(cid)
    contract.backend.remove(cid)
    assert contract.gone(plan)
    if contract.records_stay:  # Slurm: the job's record stays in accounting, ended
        assert contract.backend.inspect(cid).ended
        return
    with pytest.raises(ContainerNotFound):
        contract.backend.inspect(cid)
    assert contract.backend.find({"runner.run-id": contract.run_id}) == []
