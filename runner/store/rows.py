"""What the store writes and reads back, row by row: phase updates (only the known fields), events, and phase rows
decoded into ``PhaseRecord`` (the JSON columns parsed, the status as its enum)."""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from runner.lifecycle import ACTIVE, FailureKind, PhaseStatus
from runner.store.schema import PHASE_FIELDS

def _update(db: sqlite3.Connection, phase_id: int, fields: dict[str, Any]) -> None:
    unknown = set(fields) - PHASE_FIELDS
    if unknown:
        raise ValueError(f"unknown phase fields {sorted(unknown)}")
    for key, value in fields.items():
        db.execute(f"UPDATE phases SET {key} = ? WHERE id = ?", (value, phase_id))  # key is from PHASE_FIELDS


def _event(db: sqlite3.Connection, run_id: str, phase_id: int | None, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
    db.execute(
        "INSERT INTO events (run_id, phase_id, at, kind, message, data_json) VALUES (?, ?, ?, ?, ?, ?)",
        (run_id, phase_id, time.time(), kind, message, json.dumps(data or {}, default=str)),
    )


def _real(v: float) -> float | None:
    # SQLite stores NaN as NULL; infinities are kept.
    return None if v != v else v


class PhaseRecord(dict[str, Any]):
    """One phase as the store has it: the row, with its JSON columns decoded (``inputs``, ``outputs``,
    ``judgement``) and its status and failure kind as the lifecycle's enums.  Read it by attribute (typed); it is
    still the row's dict (``row["status"]``, ``{**row}``, JSON) for the code that has not moved to attributes."""

    id = property(lambda self: int(self["id"]))
    run_id = property(lambda self: str(self["run_id"]))
    seq = property(lambda self: int(self["seq"]))
    name = property(lambda self: str(self["name"]))
    spec_path = property(lambda self: str(self["spec_path"]))
    spec_sha256 = property(lambda self: str(self["spec_sha256"]))
    container_name = property(lambda self: self["container_name"])
    container_id = property(lambda self: self["container_id"])
    log_path = property(lambda self: self["log_path"])
    reason = property(lambda self: str(self["reason"]))
    exit_code = property(lambda self: self["exit_code"])
    oom_killed = property(lambda self: self["oom_killed"])
    stop_requested = property(lambda self: bool(self["stop_requested"]))
    verdict = property(lambda self: self["verdict"])
    explanation = property(lambda self: str(self["explanation"]))
    decision = property(lambda self: str(self["decision"]))
    failure_detail = property(lambda self: self["failure_detail"])
    created_at = property(lambda self: float(self["created_at"]))
    started_at = property(lambda self: self["started_at"])
    finished_at = property(lambda self: self["finished_at"])
    plan_json = property(lambda self: str(self["plan_json"]))
    phase_json = property(lambda self: str(self["phase_json"]))
    inputs = property(lambda self: self["inputs"])
    outputs = property(lambda self: self["outputs"])

    @property
    def status(self) -> PhaseStatus:
        return PhaseStatus(self["status"])

    @property
    def failure_kind(self) -> FailureKind | None:
        kind = self["failure_kind"]
        return FailureKind(kind) if kind else None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def _phase_dict(row: sqlite3.Row) -> PhaseRecord:
    d = dict(row)
    d["status"] = PhaseStatus(d["status"])
    d["inputs"] = json.loads(d.pop("inputs_json") or "{}")
    d["outputs"] = json.loads(d.pop("outputs_json") or "{}")
    d["judgement"] = json.loads(d.pop("judgement_json") or "null")
    d["oom_killed"] = None if d["oom_killed"] is None else bool(d["oom_killed"])
    d["stop_requested"] = bool(d["stop_requested"])
    return PhaseRecord(d)
