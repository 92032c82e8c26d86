"""One phase's session: its supervision (metric sources, guards, criteria), its checkpoint guard and
the guard's validator, built in one place.

A session is the only way a phase is run, re-adopted, finished or viewed:
* ``PhaseSession.fresh`` before a launch (nothing read yet; the checkpoint guard watches before the
  trainer starts, so no checkpoint slips by);
* ``PhaseSession.recover`` on every other path (`attach`, the server after a restart, `status` and
  `stop` judging a phase nobody watched, the live view of another process's phase): the metric
  points and source offsets read so far, the guards fed with them, and the checkpoint rows (the
  guard's ``recover`` repairs a vault left mid-write);
* ``record_poll`` reads new metrics and records them (a full disk keeps them in memory);
* ``vault_all`` at the end vaults every complete checkpoint (also ones never seen being written),
  waits for validations and applies the final retention — before the phase is judged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TYPE_CHECKING, Callable

import numpy as np

from runner.backends.base import Backend
from runner.checkpoints.watch import DataWatch
from runner.errors import StoreFull
from runner.engine.records import folder_of, phase_of, stored_plan
from runner.plan import LaunchPlan, vault_of
from runner.paths import spec_relative
from runner.spec.models import Phase
from runner.store import Store
from runner.supervision import Supervision

if TYPE_CHECKING:
    from runner.checkpoints.guard import CheckpointGuard
    from runner.engine.ports import Core


class PhaseSession(Supervision):
    """A Supervision that knows its phase in the store, with its checkpoint guard and validator."""

    def __init__(self, phase: Phase, folder: Path | str, store: Store, run_id: str, phase_id: int):
        super().__init__(phase, folder)
        self.store = store
        self.run_id = run_id
        self.phase_id = phase_id
        self.data_watch: DataWatch | None = None  # started by start()

    # ------------------------------------------------------------------ building

    @classmethod
    def fresh(cls, store: Store, backend: Backend, phase_id: int, phase: Phase, folder: Path | str,
              plan: LaunchPlan | None, say: Callable[[str], None]) -> "PhaseSession":
        row = store.phase(phase_id)
        session = cls(phase, folder, store, row["run_id"], phase_id)
        session.ckpt = _checkpoint_guard(store, backend, row, phase, folder, plan, say)
        return session

    @classmethod
    def recover(cls, store: Store, backend: Backend, phase_id: int, phase: Phase, folder: Path | str,
                plan: LaunchPlan | None, say: Callable[[str], None]) -> "PhaseSession":
        session = cls.fresh(store, backend, phase_id, phase, folder, plan, say)
        new = {}
        for name, pts in store.metric_points(phase_id).items():
            arr = np.array(pts, dtype=np.float64)
            new[name] = (arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2])
            session.metrics.add(name, *new[name])
        session.guards.feed(new)
        session.trip = session.guards.tripped
        offsets = store.offsets(phase_id)
        if session.sources.tensorboard is not None:
            session.sources.tensorboard.offsets.update({f: o for f, o in offsets.items() if "tfevents" in f})
        if session.sources.jsonl is not None:
            session.sources.jsonl.offset = offsets.get(str(session.sources.jsonl.path), 0)
        row = store.phase(phase_id)
        if row["started_at"]:
            session.set_started(row["started_at"])  # timeouts count from the container's start
        return session

    @classmethod
    def restored(cls, core: Core, phase_id: int, row: dict[str, Any] | None = None) -> "PhaseSession":
        """The phase's session rebuilt from the store (every path but a fresh launch)."""
        row = row if row is not None else core.store.phase(phase_id)
        return cls.recover(core.store, core.backend, phase_id, phase_of(row), folder_of(row), stored_plan(row),
                           core.reporter.info)

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        """Watch the checkpoint folder (a recovered guard first repairs its vault and rescans) and the metric
        files' folders (a change wakes the supervisor: ``wake``)."""
        if self.ckpt is not None:
            self.ckpt.start()
        folders = ([self.sources.tensorboard.logdir] if self.sources.tensorboard is not None else []) + \
                  ([self.sources.jsonl.path.parent] if self.sources.jsonl is not None else [])
        self.data_watch = DataWatch(folders, self.wake) if folders else None
        self.watch_data()

    def watch_data(self) -> None:
        """Watch the metric folders that exist by now (called on every timer poll: a logdir appears late)."""
        if self.data_watch is not None:
            self.data_watch.ensure()

    def stop(self) -> None:
        if self.ckpt is not None:
            self.ckpt.stop()
        if self.data_watch is not None:
            self.data_watch.stop()

    def record_poll(self, say: Callable[[str], None]) -> None:
        """Read new metric points, feed the guards, record points and problems; apply retention."""
        new = self.poll()
        for name, (steps, values, walls) in self.unsaved.items():  # points a full disk kept out of the store
            if name in new:
                s, v, w = new[name]
                new[name] = (np.concatenate([steps, s]), np.concatenate([values, v]), np.concatenate([walls, w]))
            else:
                new[name] = (steps, values, walls)
        try:
            for name, (step, file) in self.sources.restarted.items():
                self.store.drop_metrics_from(self.phase_id, name, step)
                message = (f"{name}: {file} starts again at step {step:,} below steps already logged (a new writer in the "
                           f"same logdir: a restarted or resumed trainer); the phase judges the newest writer's steps, "
                           f"as TensorBoard shows them: the older run's points from step {step:,} on are dropped")
                self.store.event(self.run_id, self.phase_id, "metrics.restarted", message,
                                 {"metric": name, "step": step, "file": file})
                say(f"WARNING: {message}")
            if new:
                self.store.save_metrics(self.phase_id, new, self.sources.offsets())
            self.unsaved = {}
            for problem in self.sources.problems():
                self.store.event(self.run_id, self.phase_id, "metrics.problem", problem)
        except StoreFull as exc:
            # Guards and criteria go on from memory; the points are saved once there is space again.
            self.unsaved = new
            if not self.store_full:
                say(f"{exc} — supervision goes on; the metrics are recorded when there is space again")
            self.store_full = True
            return
        if self.store_full:
            self.store_full = False
            say("the run store has space again; metrics recorded")
        if self.ckpt is not None:
            self.ckpt.retain(self.metrics)

    def vault_all(self) -> dict[str, Any]:
        """At the end (the container has ended): vault every complete checkpoint, wait for queued
        validations and merge their results, final retention; the vault's outputs ({} without a guard)."""
        if self.data_watch is not None:  # the phase has ended: nothing more to wake for
            self.data_watch.stop()
        if self.ckpt is None:
            return {}

        def merge() -> None:  # validation results that arrived after the last poll
            new = self.poll()
            if new:
                self.store.save_metrics(self.phase_id, new, self.sources.offsets())

        outputs: dict[str, Any] = self.ckpt.finish(self.metrics, merge)
        return outputs


def _checkpoint_guard(store: Store, backend: Backend, row: dict[str, Any], phase: Phase, folder: Path | str,
                      plan: LaunchPlan | None, say: Callable[[str], None]) -> CheckpointGuard | None:
    if phase.checkpoints is None:
        return None
    from runner.checkpoints.guard import CheckpointGuard

    phase_dir = plan.phase_dir if plan is not None else str(Path(row["log_path"] or ".").parent)
    guard = CheckpointGuard(store, row["run_id"], row["id"], phase.checkpoints, spec_relative(folder, phase.checkpoints.dir),
                            vault_of(phase_dir), say=say)
    if phase.checkpoints.validate_ is not None and plan is not None:
        from runner.checkpoints.validation import Validator

        guard.validator = Validator(backend, plan, phase.checkpoints.validate_, store, row["run_id"], row["id"])
    return guard
