"""The run store: transitions, events, compare-and-set, derived run status."""
import sqlite3

import pytest

from runner.errors import NotFound
from runner.store import Store, run_status


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "runs" / "runner.db")
    yield s
    s.close()


def test_transitions_are_recorded_with_events(store):
    store.create_run("r1", "/specs/a.yaml")
    pid = store.add_phase("r1", "p1", "/specs/a.yaml", "abc", {"lr": "1e-6"})
    assert store.transition(pid, "launching", "creating")
    assert store.transition(pid, "running", "container c1 started", container_id="c1")
    assert store.transition(pid, "succeeded", "exit code 0", exit_code=0, oom_killed=0)
    row = store.phase(pid)
    assert (row["status"], row["exit_code"], row["oom_killed"], row["container_id"]) == ("succeeded", 0, False, "c1")
    kinds = [e["kind"] for e in store.events("r1")]
    assert kinds == ["run.created", "phase.pending", "phase.launching", "phase.running", "phase.succeeded"]
    assert store.events("r1")[-1]["message"] == "phase p1: running → succeeded: exit code 0"


def test_compare_and_set_records_one_outcome(store):
    store.create_run("r1", "a")
    pid = store.add_phase("r1", "p1", "a", "x", {})
    store.transition(pid, "launching")
    store.transition(pid, "running")
    assert store.transition(pid, "cancelled", "stopped", expect=frozenset({"running"}))
    assert not store.transition(pid, "failed", "exit 143", expect=frozenset({"running"}))
    assert store.phase(pid)["status"] == "cancelled"
    assert [e["kind"] for e in store.events("r1")].count("phase.failed") == 0


def test_the_transition_table_is_enforced(store):
    from runner.errors import InvalidTransition
    from runner.lifecycle import ENDED, TRANSITIONS, PhaseStatus

    store.create_run("r1", "a")
    pid = store.add_phase("r1", "p1", "a", "x", {})
    with pytest.raises(InvalidTransition, match="cannot go from pending to succeeded"):
        store.transition(pid, "succeeded", "judged without ever running")
    assert store.phase(pid)["status"] == "pending"  # nothing written
    assert all(TRANSITIONS[s] == frozenset() for s in ENDED)  # an ended phase never moves
    assert set(TRANSITIONS) == set(PhaseStatus)


def test_resolve_run_by_prefix_and_latest(store):
    store.create_run("20260101-000000-aaaa", "a")
    store.create_run("20260102-000000-bbbb", "a")
    assert store.resolve_run(None) == "20260102-000000-bbbb"
    assert store.resolve_run("20260101") == "20260101-000000-aaaa"
    with pytest.raises(NotFound, match="ambiguous"):
        store.resolve_run("2026")
    with pytest.raises(NotFound, match="no run"):
        store.resolve_run("nope")


def test_wal_mode_and_integrity(store, tmp_path):
    store.create_run("r1", "a")
    db = sqlite3.connect(tmp_path / "runs" / "runner.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_run_status_is_derived():
    assert run_status([{"status": "succeeded"}, {"status": "running"}]) == "running"
    assert run_status([{"status": "succeeded"}, {"status": "failed"}]) == "failed"
    assert run_status([]) == "pending"


def test_unknown_field_is_a_bug(store):
    store.create_run("r1", "a")
    pid = store.add_phase("r1", "p1", "a", "x", {})
    with pytest.raises(ValueError):
        store.update(pid, status="x; DROP TABLE runs")


def test_metric_points_newest_write_wins_and_offsets_roundtrip(store):
    import numpy as np

    store.create_run("r1", "a")
    pid = store.add_phase("r1", "p1", "a", "x", {})
    arr = lambda *xs: np.array(xs, dtype=np.float64)
    store.save_metrics(pid, {"loss": (np.array([1, 2]), arr(1.0, float("nan")), arr(10, 10))}, {"/tb/events.1": 100})
    store.save_metrics(pid, {"loss": (np.array([2, 3]), arr(2.5, 3.0), arr(20, 20))}, {"/tb/events.1": 250})
    store.save_metrics(pid, {"loss": (np.array([3]), arr(99.0), arr(5))}, {})  # an older write: ignored
    points = store.metric_points(pid)["loss"]
    assert [(s, v) for s, v, _ in points] == [(1, 1.0), (2, 2.5), (3, 3.0)]
    assert store.offsets(pid) == {"/tb/events.1": 250}


def test_restored_supervision_continues_from_offsets(tmp_path):

    import numpy as np

    from runner.backends.fake import FakeBackend
    from runner.engine import Engine
    from runner.spec.models import Phase

    store = Store(tmp_path / "runner.db")
    engine = Engine(store, FakeBackend(), tmp_path)
    phase = Phase.model_validate({
        "apiVersion": "runner/v1", "kind": "Phase", "name": "p", "container": {"image": "i", "command": ["x"]},
        "metrics": {"tensorboard": {"logdir": str(tmp_path / "tb"), "tags": {"loss": "train/loss"}}},
        "guards": [{"metric": "loss", "diverges": {"above_best_by": "10%", "for": "2 evals", "smoothing": 0}}],
    })
    store.create_run("r", "s")
    pid = store.add_phase("r", "p", "s", "x", {}, phase_json=phase.model_dump_json(by_alias=True))
    store.save_metrics(pid, {"loss": (np.arange(1, 9), np.array([1.0] * 4 + [2.0] * 4), np.arange(1.0, 9))},
                       {str(tmp_path / "tb" / "events.out.tfevents.1"): 4242})
    sup = engine.session(pid)
    assert sup.sources.tensorboard.offsets == {str(tmp_path / "tb" / "events.out.tfevents.1"): 4242}
    assert sup.metrics.series["loss"].steps.tolist() == list(range(1, 9))
    assert sup.trip is not None and sup.trip.step == 7  # guard state is rebuilt too


def test_opening_a_current_store_writes_nothing(tmp_path):
    """`runner status` must read a store whose disk is full: opening it must not write."""
    import hashlib

    path = tmp_path / "runner.db"
    s = Store(path)
    s.create_run("r1", "a")
    s.close()
    before = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    again = Store(path)
    assert [r["id"] for r in again.runs()] == ["r1"]
    again.close()
    assert (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()) == before


def test_a_full_disk_is_a_clear_temporary_error_and_loses_nothing(tmp_path):
    from runner.errors import StoreFull, Temporary

    s = Store(tmp_path / "runner.db")
    s.create_run("r1", "a")
    pages = s.db.execute("PRAGMA page_count").fetchone()[0]
    s.db.execute(f"PRAGMA max_page_count={pages + 2}")  # as good as a full disk for SQLite
    with pytest.raises(StoreFull, match="is full") as exc:
        for i in range(10_000):
            s.event("r1", None, "note", "x" * 2000)
    assert isinstance(exc.value, Temporary)
    assert not s.db.in_transaction
    assert [r["id"] for r in s.runs()] == ["r1"]  # what was recorded is still there, and readable
    s.db.execute("PRAGMA max_page_count=1073741823")  # space again: recording goes on
    s.event("r1", None, "note", "after")
    assert s.events("r1")[-1]["message"] == "after"
