"""The checkpoint guard of one phase: scan, vault, score, retain.

A background thread vaults: it wakes on a watchdog hint (a file closed or
renamed into place) or every ``rescan_s`` regardless, lists the folder (the
truth), and links each complete checkpoint into the vault at once.  Scoring
and retention run on the engine's tick, where the metrics live.

Store before side effect: a checkpoint row is written ('vaulting') before the
link, updated after; ``recover`` repairs whatever a crash left between the two.
Pruning is two-phase: moved to vault/.trash, deleted when the phase ends; a
checkpoint that is or has ever been among the best K is never pruned.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from runner.checkpoints import retention
from runner.checkpoints.vault import DiskFull, protect, sha256_of, size_of
from runner.checkpoints.watch import Watcher
from runner.errors import Temporary
from runner.metrics.series import MetricSet
from runner.preconditions import step_from_name
from runner.spec.criteria_models import Checkpoints
from runner.store import Store

RESCAN_S = 1.0
TORCH_SUFFIXES = (".pt", ".pth")


def loadable(path: Path) -> bool:
    """A .pt/.pth file is complete: for torch's zip format (every torch.save since 1.6) the
    archive's central directory, written last, lists the pickle; nothing is unpickled, so a
    multi-GB file is not read and no code in it runs, and it works with any torch (1.13's
    weights-only loader cannot read checkpoints holding plain floats).  Legacy pickles are
    loaded weights-only when torch is there."""
    if path.is_dir() or path.suffix not in TORCH_SUFFIXES:
        return True
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    try:
        import torch
    except ImportError:
        return True  # cannot check: size stability and close/rename events decide
    try:
        torch.load(str(path), map_location="cpu", weights_only=True)
        return True
    except Exception:  # a half-written or foreign file; looked at again on the next scan
        return False


class CheckpointGuard:
    def __init__(self, store: Store, run_id: str, phase_id: int, spec: Checkpoints, folder: Path, vault: Path,
                 say: Callable[[str], None] = lambda m: None, rescan_s: float = RESCAN_S):
        self.store = store
        self.run_id = run_id
        self.phase_id = phase_id
        self.spec = spec
        self.folder = folder
        self.vault = vault
        self.trash = vault / ".trash"
        self.say = say
        self.rescan_s = rescan_s
        self.watcher = Watcher(folder, polling=spec.polling, interval=rescan_s)
        self.pending: dict[str, tuple[int, float, float]] = {}  # name → (size, mtime, stable since)
        self.disk_full = False
        self.validator = None  # a checkpoints.validation.Validator, when the spec has validate:
        self.unloadable: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.recover()
        self.watcher.start()
        self._thread = threading.Thread(target=self._run, name="checkpoint-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.watcher.changed.set()
        if self._thread:
            self._thread.join(timeout=30)
        self.watcher.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.watcher.changed.wait(self.rescan_s)
            self.watcher.changed.clear()
            try:
                self.scan()
            except Exception as exc:  # the guard thread must survive anything a folder can do
                self._event("checkpoint.error", f"checkpoint scan failed: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ scan and vault

    def entries(self) -> dict[str, tuple[int, Path]]:
        """name → (step, path) for every checkpoint in the folder (files, or folders per step)."""
        out = {}
        try:
            with os.scandir(self.folder) as it:
                for e in it:
                    step = step_from_name(e.name, self.spec.pattern)
                    if step is not None:
                        out[e.name] = (step, Path(e.path))
        except FileNotFoundError:
            pass
        return out

    def scan(self, final: bool = False) -> list[str]:
        """Vault every complete checkpoint not vaulted yet; returns the names vaulted now."""
        with self._lock:
            finished = {Path(p).name for p in self.watcher.take_finished()}
            known = {c["name"]: c for c in self.store.checkpoints(self.phase_id)}
            now = time.time()
            done = []
            for name, (step, path) in sorted(self.entries().items(), key=lambda kv: kv[1][0]):
                if name in known and known[name]["state"] != "vaulting":
                    continue
                try:
                    size, mtime = (size_of(path), max((p.stat().st_mtime for p in path.rglob("*")), default=0.0)) if path.is_dir() \
                        else (path.stat().st_size, path.stat().st_mtime)
                except FileNotFoundError:
                    continue
                prev = self.pending.get(name)
                stable_since = prev[2] if prev and prev[:2] == (size, mtime) else now
                self.pending[name] = (size, mtime, stable_since)
                complete = name in finished or now - stable_since >= self.spec.settle or (final and prev is not None and prev[:2] == (size, mtime))
                if not complete or self.disk_full or not self.spec.vault:
                    continue
                if not loadable(path):
                    if name not in self.unloadable:
                        self.unloadable.add(name)
                        self._event("checkpoint.unloadable", f"{name} does not load yet; waiting")
                    continue
                if self._vault(name, step, path):
                    done.append(name)
                    self.pending.pop(name, None)
            return done

    def _vault(self, name: str, step: int, path: Path) -> bool:
        dst = self.vault / name
        self.store.checkpoint_intent(self.phase_id, step, name, str(path), str(dst))
        t0 = time.perf_counter()
        try:
            dst, how = protect(path, self.vault)
        except DiskFull as exc:
            self.disk_full = True
            self._event("checkpoint.disk-full", str(exc))
            self.say(f"ERROR: {exc}")
            return False
        except Temporary as exc:
            self._event("checkpoint.missed", f"{exc} (the trainer deleted it first)")
            return False
        took = time.perf_counter() - t0
        self.store.checkpoint_update(self.phase_id, name, state="kept", how=how, vaulted_at=time.time())
        self._event("checkpoint.vaulted", f"vaulted {name} (step {step}) by {how} in {took * 1000:.1f} ms",
                    {"step": step, "ms": took * 1000})
        self.store.checkpoint_update(self.phase_id, name, sha256=sha256_of(dst), size=size_of(dst))
        if self.validator is not None:
            self.validator.offer(step, str(dst))
        return True

    def recover(self) -> None:
        """Repair what a crash left: rows still 'vaulting', vault entries without rows."""
        rows = {c["name"]: c for c in self.store.checkpoints(self.phase_id)}
        for name, c in rows.items():
            if c["state"] != "vaulting":
                continue
            dst = Path(c["vault_path"])
            if dst.exists() and not (self.vault / (name + ".vaulting")).exists():
                self.store.checkpoint_update(self.phase_id, name, state="kept", how="recovered", vaulted_at=time.time(),
                                             sha256=sha256_of(dst), size=size_of(dst))
                self._event("checkpoint.recovered", f"{name}: vaulted before a restart; recorded now")
        if self.vault.is_dir():
            for entry in self.vault.iterdir():
                step = step_from_name(entry.name, self.spec.pattern)
                if step is not None and entry.name not in rows:
                    self.store.checkpoint_intent(self.phase_id, step, entry.name, str(self.folder / entry.name), str(entry))
                    self.store.checkpoint_update(self.phase_id, entry.name, state="kept", how="recovered",
                                                 vaulted_at=time.time(), sha256=sha256_of(entry), size=size_of(entry))
                    self._event("checkpoint.recovered", f"{entry.name}: found in the vault after a restart; recorded")

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
        s = metrics.series.get(keep.by)
        if s is None or not len(s):
            return None, snapshot
        i = int(np.searchsorted(s.steps, step, side="right"))
        if i == 0:
            return None, snapshot
        if self.spec.validate_ is not None and int(s.steps[i - 1]) != step:
            return None, snapshot  # validation metrics belong to their checkpoint's exact step
        if keep.window:
            lo = int(np.searchsorted(s.steps, step - keep.window + 1, side="left"))
            vals = s.values[lo:i]
            value = float(np.mean(vals)) if vals.size else None
        else:
            value = float(s.values[i - 1])
        return (value if value is not None and math.isfinite(value) else None), snapshot

    def retain(self, metrics: MetricSet, final: bool = False) -> None:
        """Score unscored checkpoints; mark best, ever-best; move prunable ones to the trash."""
        with self._lock:
            rows = [c for c in self.store.checkpoints(self.phase_id) if c["state"] in ("kept", "best", "trash")]
            latest_step = metrics.latest_step()
            for c in rows:
                # Score once the metric has reached the checkpoint's step (later values may still arrive before).
                ready = final or (latest_step is not None and latest_step >= c["step"]) or self.spec.validate_ is not None
                if c["score"] is None and ready:
                    value, snap = self.score(metrics, c["step"])
                    c["score"] = value
                    self.store.checkpoint_update(self.phase_id, c["name"], score=value, metrics_json=json.dumps(snap))
            if self.spec.keep is None:
                return
            k = self.spec.keep
            policy = retention.Policy(best=k.best, latest=k.latest, every=k.every, mode=k.mode)
            cands = [retention.Candidate(c["step"], c["score"], c["ever_best"]) for c in rows if c["state"] != "trash"]
            best, keep_steps, prune = retention.decide(cands, policy, final=final)
            for c in rows:
                if c["state"] == "trash":
                    continue
                if c["step"] in best:
                    if not c["ever_best"] or c["state"] != "best":
                        self.store.checkpoint_update(self.phase_id, c["name"], state="best", ever_best=1)
                elif c["step"] in prune:
                    self._to_trash(c)
                elif c["state"] == "best":
                    self.store.checkpoint_update(self.phase_id, c["name"], state="kept")

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
        if self.validator is not None:
            if not self.validator.drain(timeout=max(60.0, self.validator.spec.timeout)):
                self._event("validation.failed", "validations still running at the end of the phase; not waited for")
            if merge is not None:
                merge()
        self.retain(metrics, final=True)
        for c in self.store.checkpoints(self.phase_id):
            if c["state"] == "trash":
                target = self.trash / Path(c["vault_path"]).name
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                elif target.exists():
                    target.unlink()
                self.store.checkpoint_update(self.phase_id, c["name"], state="pruned")
        return self.outputs()

    def outputs(self) -> dict:
        rows = [c for c in self.store.checkpoints(self.phase_id) if c["state"] in ("kept", "best")]
        if not rows:
            return {}
        last = max(rows, key=lambda c: c["step"])
        out = {"last_checkpoint": last["vault_path"], "best_checkpoint": last["vault_path"]}
        best = [c for c in rows if c["state"] == "best" and c["score"] is not None]
        if best and self.spec.keep is not None:
            sign = 1 if self.spec.keep.mode == "min" else -1
            out["best_checkpoint"] = min(best, key=lambda c: (sign * c["score"], c["step"]))["vault_path"]
        return out

    def _event(self, kind: str, message: str, data: dict | None = None) -> None:
        self.store.event(self.run_id, self.phase_id, kind, message, data)
