"""The run store: SQLite in WAL mode (runs/runner.db by default).

Tables: runs, phases (one row per phase of a run) and events (every decision
with its reason).  A transition is committed *before* the side effect it
announces (e.g. ``launching`` before the container is created), so a runner
killed at any moment can be reconciled from the store and container labels.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from runner.lifecycle import S
from runner.errors import InvalidTransition, NotFound, Permanent, StoreBusy, StoreCorrupt, StoreFull
from runner.lifecycle import ACTIVE, allowed  # the statuses and their one transition table
from runner.store.rows import PhaseRecord, _event, _phase_dict, _real, _update
from runner.store.schema import _SCHEMA, PHASE_FIELDS, SCHEMA_VERSION, TERMINAL
from runner.store.submissions import Submissions

__all__ = ["ACTIVE", "PHASE_FIELDS", "PhaseRecord", "SCHEMA_VERSION", "Store", "TERMINAL", "run_status"]


def _busy_limit() -> float:
    try:
        return float(os.environ.get("RUNNER_STORE_BUSY_S") or 3600)
    except ValueError:
        return 3600.0


class Store(Submissions):
    """One SQLite database; safe to share between the threads of one process."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.read_only = ""  # why the store could only be opened read-only (a full disk), or ""
        self.corrupt = ""  # what PRAGMA quick_check found wrong, or ""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise Permanent(f"{self.path} was written by a newer runner (schema {version} > {SCHEMA_VERSION})")
            cols = {r[1] for r in self.db.execute("PRAGMA table_info(checkpoints)")}
            phase_cols = {r[1] for r in self.db.execute("PRAGMA table_info(phases)")}
            # Opening a current store writes nothing: `runner status` must read a store whose disk is full.
            if version < SCHEMA_VERSION or "files_json" not in cols or (phase_cols and "failure_kind" not in phase_cols):
                self.db.executescript(_SCHEMA)
                cols = {r[1] for r in self.db.execute("PRAGMA table_info(checkpoints)")}
                if "files_json" not in cols:  # stores written before per-file records: an added column, nothing else
                    self.db.execute("ALTER TABLE checkpoints ADD COLUMN files_json TEXT")
                phase_cols = {r[1] for r in self.db.execute("PRAGMA table_info(phases)")}
                for col in ("failure_kind", "failure_detail"):  # stores written before failure kinds were recorded
                    if col not in phase_cols:
                        self.db.execute(f"ALTER TABLE phases ADD COLUMN {col} TEXT")
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            damage = self._damage()
        except sqlite3.DatabaseError as exc:
            damage = str(exc) if "malformed" in str(exc) or "not a database" in str(exc) else ""
            if not damage:
                self.db = self._read_only(exc)
        if damage:
            # Never write into a damaged store (a new run would land in a file SQLite cannot vouch for): open it
            # read-only so that `status` shows what it can; every write is refused with this reason.
            self.corrupt = damage
            try:
                self.db = self._read_only(sqlite3.DatabaseError(damage))
            except Permanent:
                self.db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
                self.db.row_factory = sqlite3.Row
                self.db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    def _damage(self) -> str:
        """'' when PRAGMA quick_check passes, else what it found (the first lines)."""
        rows = [r[0] for r in self.db.execute("PRAGMA quick_check(5)").fetchall()]
        return "" if rows == ["ok"] else "; ".join(rows)

    def _read_only(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection:
        """The store, read-only, when a normal open fails on an existing store: on a full disk SQLite
        cannot set up the WAL's shared memory.  Read as immutable: the main file, which holds everything
        once the last writer closed (a writer still running on that full disk cannot write either; what
        it had not checkpointed yet shows up after space is freed)."""
        if not self.path.exists():
            raise Permanent(f"cannot open run store {self.path}: {exc}") from None
        try:
            db = sqlite3.connect(self.path.resolve().as_uri() + "?immutable=1", uri=True, check_same_thread=False,
                                 isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("SELECT count(*) FROM runs").fetchone()
        except sqlite3.DatabaseError:
            raise Permanent(f"cannot open run store {self.path}: {exc}") from None
        self.read_only = str(exc)
        return db

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction; a full disk is a clear, temporary StoreFull (nothing of it was written)."""
        if self.corrupt:
            raise StoreCorrupt(f"the run store {self.path} is damaged (PRAGMA quick_check: {self.corrupt[:300]}); runner "
                               "writes nothing into it", "move it aside and start a new store (runner status still reads "
                               "what it can of this one), or restore it from a backup")
        if self.read_only:
            raise StoreFull(f"the run store {self.path} could only be opened read-only ({self.read_only}): its disk is "
                            "probably full; nothing was recorded, nothing earlier is lost",
                            "free space on that disk; `runner status` still reads the store meanwhile")
        with self._lock:
            try:
                self._begin()
                try:
                    yield self.db
                except BaseException:
                    if self.db.in_transaction:  # SQLite itself rolls back on some errors (a full disk)
                        self.db.execute("ROLLBACK")
                    raise
                self.db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if "full" not in str(exc):
                    raise
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise StoreFull(f"the disk of the run store {self.path} is full ({exc}); this change was not "
                                "recorded, nothing earlier is lost", "free space on that disk; runner goes on recording then") from None

    def _begin(self) -> None:
        """BEGIN IMMEDIATE, riding out another process that holds the store's lock (a backup, a second tool):
        SQLite waits 30 s itself, then runner waits on with backoff up to RUNNER_STORE_BUSY_S (1 hour), saying
        so on stderr; the caller's state stays in memory meanwhile.  StoreBusy (temporary) after that."""
        deadline = time.monotonic() + _busy_limit()
        delay = 1.0
        while True:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise StoreBusy(f"the run store {self.path} stayed locked by another process ({exc}); this change "
                                    "was not recorded", "find what holds it (fuser runner.db) and end it") from None
                print(f"runner: the run store {self.path} is locked by another process; waiting "
                      f"{delay:.0f} s", file=sys.stderr, flush=True)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    # ------------------------------------------------------------------ writes

    def create_run(self, run_id: str, spec_path: str) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO runs (id, spec_path, created_at) VALUES (?, ?, ?)", (run_id, spec_path, time.time()))
            _event(db, run_id, None, "run.created", f"run {run_id} created from {spec_path}")

    def record_decision(self, phase_id: int, reason: str, data: dict[str, Any]) -> bool:
        """A judged phase's chain decision and the event naming the next spec, in one transaction,
        once: returns False (and changes nothing) if the phase already has a decision."""
        with self.tx() as db:
            row = db.execute("SELECT run_id, decision FROM phases WHERE id = ?", (phase_id,)).fetchone()
            if row is None:
                raise NotFound(f"no phase with id {phase_id}")
            if row["decision"]:
                return False
            db.execute("UPDATE phases SET decision = ? WHERE id = ?", (reason, phase_id))
            _event(db, row["run_id"], phase_id, "chain.decision", reason, data)
            return True

    def add_phase(self, run_id: str, name: str, spec_path: str, spec_sha256: str, inputs: dict[str, Any], **fields: Any) -> int:
        with self.tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM phases WHERE run_id = ?", (run_id,)).fetchone()[0]
            cur = db.execute(
                "INSERT INTO phases (run_id, seq, name, spec_path, spec_sha256, inputs_json, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (run_id, seq, name, spec_path, spec_sha256, json.dumps(inputs), time.time()),
            )
            phase_id = int(cur.lastrowid or 0)  # an INSERT always sets it
            _update(db, phase_id, fields)
            _event(db, run_id, phase_id, "phase.pending", f"phase {name} queued", {"inputs": inputs})
            return phase_id

    def transition(self, phase_id: int, status: str, reason: str = "", expect: frozenset[str] | None = None, **fields: Any) -> bool:
        """Set a phase's status (and other fields) and record the event, in one transaction.

        With ``expect``, the transition happens only from one of those statuses
        (compare-and-set), so two processes finishing the same phase record one
        outcome; returns whether it happened."""
        with self.tx() as db:
            row = db.execute("SELECT run_id, name, status FROM phases WHERE id = ?", (phase_id,)).fetchone()
            if row is None:
                raise NotFound(f"no phase with id {phase_id}")
            if expect is not None and row["status"] not in expect:
                return False
            if not allowed(row["status"], status):
                raise InvalidTransition(f"phase {row['name']} cannot go from {row['status']} to {status} ({reason})")
            status = str(status)
            db.execute("UPDATE phases SET status = ?, reason = ? WHERE id = ?", (status, reason, phase_id))
            _update(db, phase_id, fields)
            message = f"phase {row['name']}: {row['status']} → {status}" + (f": {reason}" if reason else "")
            _event(db, row["run_id"], phase_id, f"phase.{status}", message, {k: v for k, v in fields.items() if k != "plan_json"})
            return True

    def as_if_crashed(self, phase_id: int, status: str, **fields: Any) -> None:
        """Fault injection (tests): put a phase in the state a crash would have left it in, outside the
        transition table (e.g. *launching* with no container id recorded)."""
        with self.tx() as db:
            db.execute("UPDATE phases SET status = ? WHERE id = ?", (str(status), phase_id))
            _update(db, phase_id, fields)

    def update(self, phase_id: int, **fields: Any) -> None:
        with self.tx() as db:
            _update(db, phase_id, fields)

    def event(self, run_id: str, phase_id: int | None, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        with self.tx() as db:
            _event(db, run_id, phase_id, kind, message, data or {})

    def drop_metrics_from(self, phase_id: int, name: str, step: int) -> None:
        """Forget a metric's points at ``step`` and after (an abandoned run's, once a new writer restarted)."""
        with self.tx() as db:
            db.execute("DELETE FROM metric_points WHERE phase_id = ? AND name = ? AND step >= ?", (phase_id, name, step))

    def save_metrics(self, phase_id: int, points: dict[str, Any], offsets: dict[str, int]) -> None:
        """New metric points (newest write wins per step) and source offsets, in one transaction,
        so a restarted runner resumes reading where the points end."""
        with self.tx() as db:
            for name, (steps, values, walls) in points.items():
                db.executemany(
                    "INSERT INTO metric_points (phase_id, name, step, value, wall) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (phase_id, name, step) DO UPDATE SET value = excluded.value, wall = excluded.wall"
                    " WHERE excluded.wall >= metric_points.wall",
                    [(phase_id, name, int(s), _real(v), float(w)) for s, v, w in zip(steps.tolist(), values.tolist(), walls.tolist())],
                )
            db.executemany(
                "INSERT INTO source_offsets (phase_id, file, offset) VALUES (?, ?, ?)"
                " ON CONFLICT (phase_id, file) DO UPDATE SET offset = excluded.offset",
                [(phase_id, f, o) for f, o in offsets.items()],
            )

    def checkpoint_intent(self, phase_id: int, step: int, name: str, source: str, vault_path: str) -> None:
        """Recorded before the link/copy, so a crash in between is repaired on restart."""
        with self.tx() as db:
            db.execute("INSERT INTO checkpoints (phase_id, step, name, source, vault_path, state) VALUES (?, ?, ?, ?, ?, 'vaulting')"
                       " ON CONFLICT (phase_id, name) DO NOTHING", (phase_id, step, name, source, vault_path))

    def checkpoint_update(self, phase_id: int, name: str, **fields: Any) -> None:
        allowed = {"how", "size", "sha256", "score", "metrics_json", "state", "ever_best", "vaulted_at", "files_json"}
        if set(fields) - allowed:
            raise ValueError(f"unknown checkpoint fields {sorted(set(fields) - allowed)}")
        with self.tx() as db:
            for key, value in fields.items():
                db.execute(f"UPDATE checkpoints SET {key} = ? WHERE phase_id = ? AND name = ?", (value, phase_id, name))

    def checkpoints(self, phase_id: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.db.execute("SELECT * FROM checkpoints WHERE phase_id = ? ORDER BY step, name", (phase_id,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["metrics"] = json.loads(d.pop("metrics_json") or "{}")
            d["ever_best"] = bool(d["ever_best"])
            d["files"] = json.loads(d.pop("files_json", None) or "null")
            out.append(d)
        return out

    # ------------------------------------------------------------------ reads

    def metric_points(self, phase_id: int) -> dict[str, list[tuple[int, float, float]]]:
        with self._lock:
            rows = self.db.execute("SELECT name, step, value, wall FROM metric_points WHERE phase_id = ? ORDER BY name, step",
                                   (phase_id,)).fetchall()
        out: dict[str, list[tuple[int, float, float]]] = {}
        for r in rows:
            out.setdefault(r["name"], []).append((r["step"], float("nan") if r["value"] is None else r["value"], r["wall"]))
        return out

    def offsets(self, phase_id: int) -> dict[str, int]:
        with self._lock:
            rows = self.db.execute("SELECT file, offset FROM source_offsets WHERE phase_id = ?", (phase_id,)).fetchall()
        return {r["file"]: r["offset"] for r in rows}

    def resolve_run(self, ref: str | None) -> str:
        """A run id from an exact id, a unique prefix, or None for the newest run."""
        with self._lock:
            if ref is None:
                row = self.db.execute("SELECT id FROM runs ORDER BY created_at DESC, id DESC LIMIT 1").fetchone()
                if row is None:
                    raise NotFound("no runs yet; start one with `runner apply SPEC`")
                return str(row["id"])
            # substr, not LIKE: a prefix is matched literally (`_` and `%` are characters of it, not wildcards)
            rows = self.db.execute("SELECT id FROM runs WHERE id = ? OR substr(id, 1, ?) = ? ORDER BY id",
                                   (ref, len(ref), ref)).fetchall()
        ids = [r["id"] for r in rows]
        if ref in ids:
            return ref
        if len(ids) == 1:
            return str(ids[0])
        if not ids:
            raise NotFound(f"no run {ref!r} in {self.path}")
        raise NotFound(f"run {ref!r} is ambiguous: {', '.join(ids[:5])}")

    def delete_run(self, run_id: str) -> None:
        """Forget a run: its phases, events, metric points, offsets, checkpoint records and submission, in one
        transaction (`runner rm`; the caller removed its containers and files first)."""
        with self.tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM phases WHERE run_id = ?", (run_id,))]
            for table in ("metric_points", "source_offsets", "checkpoints"):
                db.executemany(f"DELETE FROM {table} WHERE phase_id = ?", [(i,) for i in ids])
            for table in ("events", "phases", "submissions"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def run(self, run_id: str) -> dict[str, Any]:
        with self._lock:
            row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id!r}")
        return dict(row)

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.db.execute("SELECT * FROM runs ORDER BY created_at DESC, id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]

    def phases(self, run_id: str) -> list[PhaseRecord]:
        with self._lock:
            rows = self.db.execute("SELECT * FROM phases WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
        return [_phase_dict(r) for r in rows]

    def phase(self, phase_id: int) -> PhaseRecord:
        with self._lock:
            row = self.db.execute("SELECT * FROM phases WHERE id = ?", (phase_id,)).fetchone()
        if row is None:
            raise NotFound(f"no phase with id {phase_id}")
        return _phase_dict(row)

    def active_phases(self) -> list[PhaseRecord]:
        marks = ",".join("?" * len(ACTIVE))
        with self._lock:
            rows = self.db.execute(f"SELECT * FROM phases WHERE status IN ({marks}) ORDER BY id", tuple(ACTIVE)).fetchall()
        return [_phase_dict(r) for r in rows]

    def last_event_id(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    def events_since(self, after_id: int, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(kinds))
        with self._lock:
            rows = self.db.execute(f"SELECT * FROM events WHERE id > ? AND kind IN ({marks}) ORDER BY id",
                                   (after_id, *kinds)).fetchall()
        return [{**dict(r), "data": json.loads(r["data_json"])} for r in rows]

    def events(self, run_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.db.execute("SELECT * FROM events WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
        return [{**dict(r), "data": json.loads(r["data_json"])} for r in rows]


def run_status(phases: Sequence[Mapping[str, Any]]) -> str:
    """A run's status, derived from its phases: the first active phase's status, else the last phase's."""
    for p in phases:
        if p["status"] in ACTIVE:
            return str(p["status"])
    return phases[-1]["status"] if phases else S.PENDING
