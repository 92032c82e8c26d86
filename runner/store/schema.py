"""The run store's tables (SQLite), its schema version, and the phase fields a transition may set."""
from __future__ import annotations

from runner.lifecycle import ENDED

SCHEMA_VERSION = 1
TERMINAL = ENDED

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    spec_path   TEXT NOT NULL,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS phases (
    id             INTEGER PRIMARY KEY,
    run_id         TEXT NOT NULL REFERENCES runs(id),
    seq            INTEGER NOT NULL,
    name           TEXT NOT NULL,
    spec_path      TEXT NOT NULL,
    spec_sha256    TEXT NOT NULL,
    inputs_json    TEXT NOT NULL DEFAULT '{}',
    plan_json      TEXT NOT NULL DEFAULT '{}',
    phase_json     TEXT NOT NULL DEFAULT '{}',
    container_name TEXT,
    container_id   TEXT,
    log_path       TEXT,
    status         TEXT NOT NULL,
    reason         TEXT NOT NULL DEFAULT '',
    exit_code      INTEGER,
    oom_killed     INTEGER,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    verdict        TEXT,
    explanation    TEXT NOT NULL DEFAULT '',
    judgement_json TEXT NOT NULL DEFAULT 'null',
    outputs_json   TEXT NOT NULL DEFAULT '{}',
    decision       TEXT NOT NULL DEFAULT '',
    failure_kind   TEXT,
    failure_detail TEXT,
    created_at     REAL NOT NULL,
    started_at     REAL,
    finished_at    REAL,
    UNIQUE (run_id, seq)
);
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY,
    run_id    TEXT NOT NULL,
    phase_id  INTEGER,
    at        REAL NOT NULL,
    kind      TEXT NOT NULL,
    message   TEXT NOT NULL,
    data_json TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS metric_points (
    phase_id INTEGER NOT NULL,
    name     TEXT NOT NULL,
    step     INTEGER NOT NULL,
    value    REAL,
    wall     REAL NOT NULL,
    PRIMARY KEY (phase_id, name, step)
);
CREATE TABLE IF NOT EXISTS source_offsets (
    phase_id INTEGER NOT NULL,
    file     TEXT NOT NULL,
    offset   INTEGER NOT NULL,
    PRIMARY KEY (phase_id, file)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id          INTEGER PRIMARY KEY,
    phase_id    INTEGER NOT NULL,
    step        INTEGER NOT NULL,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    vault_path  TEXT NOT NULL,
    how         TEXT NOT NULL DEFAULT '',
    size        INTEGER,
    sha256      TEXT,
    score       REAL,
    metrics_json TEXT NOT NULL DEFAULT '{}',
    state       TEXT NOT NULL,
    ever_best   INTEGER NOT NULL DEFAULT 0,
    vaulted_at  REAL,
    files_json  TEXT,
    UNIQUE (phase_id, name)
);
CREATE TABLE IF NOT EXISTS submissions (
    run_id       TEXT PRIMARY KEY REFERENCES runs(id),
    spec_path    TEXT NOT NULL,
    spec_sha256  TEXT NOT NULL,
    inputs_json  TEXT NOT NULL DEFAULT '{}',
    priority     INTEGER NOT NULL DEFAULT 0,
    source       TEXT NOT NULL,
    state        TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    note         TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS intake (
    id       INTEGER PRIMARY KEY,
    name     TEXT NOT NULL,
    sha256   TEXT,
    state    TEXT NOT NULL,
    reason   TEXT NOT NULL DEFAULT '',
    run_id   TEXT,
    source   TEXT NOT NULL,
    moved_to TEXT NOT NULL,
    moved    INTEGER NOT NULL DEFAULT 0,
    at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, id);
CREATE INDEX IF NOT EXISTS phases_status ON phases(status);
"""

PHASE_FIELDS = {
    "container_name", "container_id", "log_path", "exit_code", "oom_killed", "stop_requested",
    "started_at", "finished_at", "plan_json", "phase_json", "reason", "verdict", "explanation", "judgement_json", "outputs_json",
    "decision", "failure_kind", "failure_detail",
}
