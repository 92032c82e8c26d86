"""The keeping side of a phase's checkpoint guard: scoring each vaulted checkpoint on the keep metric, retention
(the best K and the last N; a checkpoint ever among the best is never pruned), the end of the phase (final retention,
validations merged, trash emptied) and what the vault hands on to the verdict and the next phase (best and last
checkpoint, missed checkpoints, a best the trainer's rotation left unprotected).

``Keeping`` is the guard's base class (checkpoints.guard.CheckpointGuard): it runs on the supervisor's tick and at
the end, where the metrics live; the scanning and vaulting run in the guard's own thread."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from runner.checkpoints import retention
from runner.checkpoints.lost import MissedBest, judge_missed
from runner.metrics.series import MetricSet

if TYPE_CHECKING:
    import threading

    from runner.checkpoints.validation import Validator
    from runner.spec.watch_models import Checkpoints
    from runner.store import Store

VAULTED = ("kept", "best", "trash", "pruned")  # states of a checkpoint that is (or was) complete in the vault


class Keeping:
    # What it uses of the guard it is a base of (checkpoints.guard.CheckpointGuard sets and defines them).
    store: Store
    run_id: str
    phase_id: int
    spec: Checkpoints
    trash: Path
    disk_full: bool
    validator: Validator | None
    seen: dict[str, int]
    why: dict[str, str]
    unscored: dict[str, dict]
    _lock: threading.Lock

    if TYPE_CHECKING:  # not at run time: the guard's own methods (and Hashing's wait_hashed) must not be shadowed
        def _event(self, kind: str, message: str, data: dict | None = None) -> None: ...
        def stop(self) -> None: ...
        def scan(self, final: bool = False) -> list[str]: ...
        def wait_hashed(self) -> None: ...
        def entries(self) -> dict[str, tuple[int, Path]]: ...

    # ------------------------------------------------------------------ score and retain

    def score(self, metrics: MetricSet, step: int) -> tuple[float | None, dict]:
        keep = self.spec.keep
        snapshot = {}
        for name, s in metrics.series.items():
            i = int(np.searchsorted(s.steps, step, side="right")) - 1
            if i >= 0:
                snapshot[name] = {"step": int(s.steps[i]), "value": float(s.values[i])}
        if keep is None:
            return None, snapshot
        series = metrics.series.get(keep.by)
        if series is None or not len(series):
            return None, snapshot
        i = int(np.searchsorted(series.steps, step, side="right"))
        if i == 0:
            return None, snapshot
        if self.spec.validate_ is not None and int(series.steps[i - 1]) != step:
            return None, snapshot  # validation metrics belong to their checkpoint's exact step
        if keep.window:
            lo = int(np.searchsorted(series.steps, step - keep.window + 1, side="left"))
            vals = series.values[lo:i]
            value = float(np.mean(vals)) if vals.size else None
        else:
            value = float(series.values[i - 1])
        return (value if value is not None and math.isfinite(value) else None), snapshot

    def retain(self, metrics: MetricSet, final: bool = False) -> None:
        """Score unscored checkpoints; mark best, ever-best; move prunable ones to the trash."""
        with self._lock:
            rows = [c for c in self.store.checkpoints(self.phase_id) if c["state"] in ("kept", "best", "trash", "incomplete")]
            reached = self._reached(metrics)
            for c in rows:
                if c["state"] == "incomplete":
                    continue  # scored once complete and vaulted: its value must not make it best before that
                # Score once the keep metric itself has reached the checkpoint's step: another tag at that step
                # (train loss logged before the evaluation lands) would score it by an older, staler value.
                ready = final or (reached is not None and reached >= c["step"]) or self.spec.validate_ is not None
                if c["score"] is None and ready:
                    value, snap = self.score(metrics, c["step"])
                    c["score"] = value
                    # Written when it changed: a checkpoint waiting for its validation, or one no keep metric
                    # scores, was written again at every tick (a store write per checkpoint, twice a second).
                    if value is not None or self.unscored.get(c["name"]) != snap:
                        self.store.checkpoint_update(self.phase_id, c["name"], score=value, metrics_json=json.dumps(snap))
                        self.unscored[c["name"]] = snap
            if self.spec.keep is None:
                return
            k = self.spec.keep
            policy = retention.Policy(best=k.best, latest=k.latest, every=k.every, mode=k.mode)
            cands = [retention.Candidate(c["step"], c["score"], c["ever_best"], complete=c["state"] != "incomplete")
                     for c in rows if c["state"] != "trash"]
            best, keep_steps, prune = retention.decide(cands, policy, final=final)
            for c in rows:
                if c["state"] in ("trash", "incomplete"):
                    continue
                if c["step"] in best:
                    if not c["ever_best"] or c["state"] != "best":
                        self.store.checkpoint_update(self.phase_id, c["name"], state="best", ever_best=1)
                elif c["step"] in prune:
                    self._to_trash(c)
                elif c["state"] == "best":
                    self.store.checkpoint_update(self.phase_id, c["name"], state="kept")

    def _reached(self, metrics: MetricSet) -> int | None:
        """The newest step of the keep metric (of any metric without keep.by: the snapshot only)."""
        if self.spec.keep is None:
            return metrics.latest_step()
        series = metrics.series.get(self.spec.keep.by)
        last = series.last() if series is not None else None
        return last[0] if last is not None else None

    def _to_trash(self, c: dict) -> None:
        src = Path(c["vault_path"])
        self.trash.mkdir(parents=True, exist_ok=True)
        if src.exists():
            os.replace(src, self.trash / src.name)
        self.store.checkpoint_update(self.phase_id, c["name"], state="trash")
        self._event("checkpoint.pruned", f"{c['name']} moved to the vault's trash (deleted when the phase ends)")

    def finish(self, metrics: MetricSet, merge: Callable[[], None] | None = None) -> dict:
        """Stop watching, vault what is left, wait for queued validations (``merge`` pulls their
        results into ``metrics``), final retention, empty the trash; the outputs."""
        self.stop()
        self.scan(final=True)
        for name, step in sorted(self.seen.items(), key=lambda kv: kv[1]):
            why = self.why.get(name, "")
            self._event("checkpoint.incomplete", f"{name} (step {step}) was still incomplete when the phase ended"
                        + (f" ({why})" if why else "") + "; not vaulted, never handed over", {"name": name, "step": step, "why": why})
        self.wait_hashed()
        if self.validator is not None:
            last = self._last_vaulted()
            done = {e["data"].get("step") for e in self._validation_events()}
            if last is not None and last["step"] not in done:  # validated before a runner restart: not again
                self.validator.final(last["step"], last["vault_path"])
            if not self.validator.drain(timeout=max(60.0, self.validator.spec.timeout)):
                self._event("validation.failed", "validations still running at the end of the phase; not waited for")
            if merge is not None:
                merge()
        self.retain(metrics, final=True)
        self._score_missed(metrics)
        for c in self.store.checkpoints(self.phase_id):
            if c["state"] == "trash":
                target = self.trash / Path(c["vault_path"]).name
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                elif target.exists():
                    target.unlink()
                self.store.checkpoint_update(self.phase_id, c["name"], state="pruned")
        return self.outputs()

    def _last_vaulted(self) -> dict | None:
        rows = [c for c in self.store.checkpoints(self.phase_id) if c["state"] in ("kept", "best", "trash", "pruned")]
        return max(rows, key=lambda c: c["step"]) if rows else None

    def validated_until(self) -> dict[str, int]:
        """For the judge (criteria.Evidence): each metric that validation produced for this phase → the step of
        the phase's last vaulted checkpoint.  {} without validation."""
        if self.validator is None:
            return {}
        last = self._last_vaulted()
        if last is None:
            return {}
        names = {k for e in self._validation_events() for k in e["data"] if k != "step"}
        return {name: int(last["step"]) for name in names}

    def _validation_events(self) -> list[dict]:
        return [e for e in self.store.events(self.run_id) if e["phase_id"] == self.phase_id and e["kind"] == "validation.done"]

    def _score_missed(self, metrics: MetricSet) -> None:
        """Record each missed checkpoint's keep metric at its step (known when it was saved): what the verdict
        weighs it by (missed_best) and what `runner checkpoints` shows."""
        if self.spec.keep is None:
            return
        for c in self.store.checkpoints(self.phase_id):
            if c["state"] == "missed" and c["score"] is None:
                value, snap = self.score(metrics, c["step"])
                if value is not None:
                    self.store.checkpoint_update(self.phase_id, c["name"], score=value, metrics_json=json.dumps(snap))

    def missed_best(self, metrics: MetricSet) -> MissedBest | None:
        """Whether the best checkpoint was lost (checkpoints.lost.judge_missed over this phase's rows): None when
        nothing was missed or left incomplete, or without keep.by."""
        keep = self.spec.keep
        if keep is None:
            return None
        rows = self.store.checkpoints(self.phase_id)
        values = {c["name"]: self.score(metrics, c["step"])[0] for c in rows if c["state"] == "missed" and c["score"] is None}
        return judge_missed(rows, keep.by, keep.mode, self.spec.on_missed_best, values)

    def missed_explanation(self, metrics: MetricSet) -> str:
        """Lines for the verdict: the best checkpoint lost (a missed one better than every vaulted one), every
        checkpoint missed, every one still incomplete at the end."""
        decision = self.missed_best(metrics)
        if decision is not None:
            return "\n".join(decision.lines())
        missed = [c for c in self.store.checkpoints(self.phase_id) if c["state"] == "missed"]
        if not missed:
            return ""
        return (f"note: {len(missed)} checkpoint(s) missed in all (deleted before they were complete and vaulted): "
                + ", ".join(c["name"] for c in missed[:6]) + (", ..." if len(missed) > 6 else ""))

    def unprotected_best(self, metrics: MetricSet) -> tuple[dict, str]:
        """After vaulting stopped (a full disk): if a checkpoint still in the trainer's folder scores
        better than every vaulted one, the outputs name it (it *is* the best) and the explanation says
        loudly that it is not protected.  ({}, "") otherwise."""
        if not self.disk_full or self.spec.keep is None:
            return {}, ""
        sign = 1 if self.spec.keep.mode == "min" else -1
        vaulted = {c["name"] for c in self.store.checkpoints(self.phase_id) if c["state"] in ("kept", "best")}
        kept = [c["score"] for c in self.store.checkpoints(self.phase_id) if c["name"] in vaulted and c["score"] is not None]
        best_kept = min((sign * v for v in kept), default=None)
        candidates = []
        for name, (step, path) in self.entries().items():
            value = self.score(metrics, step)[0] if name not in vaulted else None
            if value is not None and (best_kept is None or sign * value < best_kept):
                candidates.append((sign * value, -step, name, step, path, value))
        if not candidates:
            return {}, ""
        _, _, name, step, path, value = min(candidates)
        shown = "none" if best_kept is None else f"{sign * best_kept:.5g}"
        return {"best_checkpoint": str(path)}, (
            f"⚠ vaulting stopped (disk full): the best checkpoint, {name} (step {step:,}, {self.spec.keep.by} {value:.5g}), "
            f"is NOT in the vault (best vaulted: {shown}); phase.best_checkpoint is the trainer's own file {path} — "
            "copy it somewhere safe before the trainer's rotation deletes it")

    def outputs(self) -> dict:
        """phase.best_checkpoint / phase.last_checkpoint: vault paths of complete checkpoints only.  While the
        vault works, none vaulted means none to hand over ("" overrides the trainer's own newest file, which
        may be a half save); after a full disk stopped vaulting, {} leaves the trainer's files named."""
        rows = [c for c in self.store.checkpoints(self.phase_id) if c["state"] in ("kept", "best")]
        if not rows:
            return {} if self.disk_full or not self.spec.vault else {"best_checkpoint": "", "last_checkpoint": ""}
        last = max(rows, key=lambda c: c["step"])
        out = {"last_checkpoint": last["vault_path"], "best_checkpoint": last["vault_path"]}
        best = [c for c in rows if c["state"] == "best" and c["score"] is not None]
        if best and self.spec.keep is not None:
            sign = 1 if self.spec.keep.mode == "min" else -1
            out["best_checkpoint"] = min(best, key=lambda c: (sign * c["score"], c["step"]))["vault_path"]
        return out
