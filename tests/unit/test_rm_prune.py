"""`runner rm` / `prune` (operations.remove_run, prunable) on the FakeBackend: containers, folders, vault copies and
records of finished runs go; a run with an active phase, or with a container still running, is refused; --keep-best
keeps each phase's best vaulted checkpoint and the records."""
import json
import os
import stat

import pytest

from runner.backends.fake import FakeBackend, Script
from runner.engine import Engine, QuietReporter
from runner.runs.operations import prunable, remove_run
from runner.store import Store
from tests.conftest import MINIMAL


@pytest.fixture
def engine(tmp_path):
    def make(backend):
        return Engine(Store(tmp_path / "runs" / "runner.db"), backend, tmp_path / "runs", QuietReporter(), poll_s=0.001)

    return make


def vaulted(engine, run, names=("model_step10.pth", "model_step20.pth"), best="model_step20.pth"):
    """Two read-only vaulted checkpoints for the run's phase, the second handed over as its best."""
    phase = engine.store.phases(run.run_id)[0]
    vault = engine.runs_dir / "vault" / run.run_id / phase["name"]
    vault.mkdir(parents=True)
    for step, name in enumerate(names, 1):
        f = vault / name
        f.write_bytes(b"w")
        f.chmod(stat.S_IRUSR)
        engine.store.checkpoint_intent(phase["id"], step * 10, name, str(f), str(f))
        engine.store.checkpoint_update(phase["id"], name, state="best" if name == best else "kept")
    engine.store.update(phase["id"], outputs_json=json.dumps({"best_checkpoint": str(vault / best)}))
    return vault


def test_rm_removes_containers_folders_vault_and_records(engine, write_spec):
    backend = FakeBackend()
    e = engine(backend)
    (e.runs_dir / "backend.yaml").write_text("keep_containers: true\n")  # ended containers kept: rm removes them
    run = e.apply(write_spec(MINIMAL))
    vault = vaulted(e, run)
    assert backend.containers and (e.runs_dir / run.run_id).is_dir()
    dry = remove_run(e, run.run_id, dry_run=True)
    assert dry.containers and str(vault.parent) in dry.folders and backend.containers  # nothing removed yet
    done = remove_run(e, run.run_id)
    assert not done.refused and not backend.containers
    assert not (e.runs_dir / run.run_id).exists() and not vault.exists()
    assert all(r["id"] != run.run_id for r in e.store.runs())


def test_keep_best_keeps_the_handed_over_checkpoint_and_the_records(engine, write_spec):
    e = engine(FakeBackend())
    run = e.apply(write_spec(MINIMAL))
    vault = vaulted(e, run)
    out = remove_run(e, run.run_id, keep_best=True)
    assert out.kept == [str(vault / "model_step20.pth")]
    assert sorted(os.listdir(vault)) == ["model_step20.pth"] and not (e.runs_dir / run.run_id).exists()
    states = {c["name"]: c["state"] for c in e.store.checkpoints(e.store.phases(run.run_id)[0]["id"])}
    assert states == {"model_step10.pth": "pruned", "model_step20.pth": "best"}


def test_a_run_still_running_is_never_removed(engine, write_spec):
    backend = FakeBackend(script={"p1": Script(polls=10**9)})
    e = engine(backend)
    run = e.apply(write_spec(MINIMAL), detach=True)
    out = remove_run(e, run.run_id)
    assert "not finished" in out.refused and backend.containers and (e.runs_dir / run.run_id).exists()
    assert prunable(e, 0.0, now=10**12) == []


def test_prune_picks_finished_runs_older_than_the_limit(engine, write_spec):
    e = engine(FakeBackend())
    run = e.apply(write_spec(MINIMAL))
    ended = e.store.phases(run.run_id)[-1]["finished_at"]
    assert prunable(e, 3600, now=ended + 60) == []
    assert prunable(e, 3600, now=ended + 7200) == [run.run_id]
