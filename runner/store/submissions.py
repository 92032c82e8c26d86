"""Submitted runs and the inbox's intake records: the queue a server works through, a run's submission state
(queued, started, done, cancelled), and what happened to each file dropped into the inbox.

``Submissions`` is a base of runner.store.Store (its connection, lock and transactions)."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from runner.errors import NotFound
from runner.store.rows import _event


class Submissions:
    # What this base uses of runner.store.Store, declared for the type checker only (Store defines them).
    db: sqlite3.Connection
    _lock: threading.RLock

    if TYPE_CHECKING:
        def tx(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def submit(self, run_id: str, spec_path: str, spec_sha256: str, inputs: dict[str, Any], source: str,
               priority: int = 0, state: str = "queued", intake: dict[str, Any] | None = None) -> int | None:
        """Record a run and its submission (and, for an inbox file, its intake record) in one
        transaction; returns the intake record's id."""
        with self.tx() as db:
            _submit(db, run_id, spec_path, spec_sha256, inputs, source, priority, state)
            return _intake(db, run_id=run_id, **intake) if intake is not None else None

    def submission(self, run_id: str) -> dict[str, Any]:
        with self._lock:
            row = self.db.execute("SELECT * FROM submissions WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"run {run_id} has no submission record")
        return _sub_dict(row)

    def submissions(self, states: tuple[str, ...] = ("queued", "started")) -> list[dict[str, Any]]:
        """Submissions in ``states``, in queue order: priority (high first), then submission time."""
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self.db.execute(f"SELECT * FROM submissions WHERE state IN ({marks})"
                                   " ORDER BY priority DESC, submitted_at, run_id", states).fetchall()
        return [_sub_dict(r) for r in rows]

    def set_submission(self, run_id: str, state: str, note: str = "") -> None:
        with self.tx() as db:
            db.execute("UPDATE submissions SET state = ?, note = ? WHERE run_id = ?", (state, note, run_id))
            _event(db, run_id, None, f"run.{state}", f"run {run_id}: {state}" + (f": {note}" if note else ""))

    def set_submission_source(self, run_id: str, source: str, note: str) -> None:
        """Change who carries a run on (``apply`` → ``handed-over``: a server of this store takes it), with an event."""
        with self.tx() as db:
            db.execute("UPDATE submissions SET source = ? WHERE run_id = ?", (source, run_id))
            _event(db, run_id, None, "run.handed-over", f"run {run_id}: {note}")

    def submission_state(self, run_id: str) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT state FROM submissions WHERE run_id = ?", (run_id,)).fetchone()
        return row["state"] if row else None

    def cancel_submission(self, run_id: str) -> bool:
        """Mark a queued or started submission cancelled (once); True if it was."""
        with self.tx() as db:
            cur = db.execute("UPDATE submissions SET state = 'cancelled', note = 'stopped on request'"
                             " WHERE run_id = ? AND state IN ('queued', 'started')", (run_id,))
            if cur.rowcount:
                _event(db, run_id, None, "run.cancelled", f"run {run_id}: stopped on request; nothing more starts")
            return bool(cur.rowcount)

    def duplicate_of(self, spec_sha256: str, inputs: dict[str, Any]) -> str | None:
        """The queued or running submission with this content and these inputs, if any."""
        with self._lock:
            row = self.db.execute("SELECT run_id FROM submissions WHERE spec_sha256 = ? AND inputs_json = ?"
                                  " AND state IN ('queued', 'started') ORDER BY submitted_at LIMIT 1",
                                  (spec_sha256, json.dumps(inputs, sort_keys=True))).fetchone()
        return row["run_id"] if row else None

    def record_intake(self, **fields: Any) -> int:
        """An inbox file's outcome (rejected, duplicate, refused), recorded before the file is moved."""
        with self.tx() as db:
            return _intake(db, **fields)

    def intake_moved(self, intake_id: int) -> None:
        with self.tx() as db:
            db.execute("UPDATE intake SET moved = 1 WHERE id = ?", (intake_id,))

    def intake(self, unmoved: bool = False, limit: int = 50) -> list[dict[str, Any]]:
        where = "WHERE moved = 0" if unmoved else ""
        with self._lock:
            rows = self.db.execute(f"SELECT * FROM intake {where} ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]


def _submit(db: sqlite3.Connection, run_id: str, spec_path: str, sha: str, inputs: dict[str, Any], source: str, priority: int,
            state: str) -> None:
    now = time.time()
    db.execute("INSERT INTO runs (id, spec_path, created_at) VALUES (?, ?, ?)", (run_id, spec_path, now))
    db.execute("INSERT INTO submissions (run_id, spec_path, spec_sha256, inputs_json, priority, source, state, submitted_at)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (run_id, spec_path, sha, json.dumps(inputs, sort_keys=True), priority,
                                                    source, state, now))
    _event(db, run_id, None, "run.created", f"run {run_id} created from {spec_path} ({source})",
           {"inputs": inputs, "priority": priority})


def _intake(db: sqlite3.Connection, name: str, state: str, reason: str, moved_to: str, source: str,
            sha256: str | None = None, run_id: str | None = None) -> int:
    cur = db.execute("INSERT INTO intake (name, sha256, state, reason, run_id, source, moved_to, at)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (name, sha256, state, reason, run_id, source, moved_to, time.time()))
    return int(cur.lastrowid or 0)  # an INSERT always sets it


def _sub_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["inputs"] = json.loads(d.pop("inputs_json") or "{}")
    return d
