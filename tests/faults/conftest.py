"""The fault-injection suite (../shared/FAULTS.md) against the real Docker engine.

Each test injects one row's fault through runner's public paths (the CLI as a separate process, the
inbox of `runner serve`) and then checks the invariants of DESIGN.md §4 that apply, with
``check_invariants``.  The fixtures are the integration suite's (every container a test makes carries
its ``runner-test.id`` label and is removed afterwards)."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import (  # noqa: F401  (fixtures)
    BASE_IMAGE, TEST_LABEL, TRAINER_IMAGE, backend, cli, docker_client, spec_for, test_id, wait_for,
)

VERDICT_EVENTS = ("phase.succeeded", "phase.failed", "phase.inconclusive", "phase.cancelled", "phase.error",
                  "phase.lost", "phase.blocked")
ACTIVE = ("pending", "launching", "running", "detached")


def status(cli, run=None) -> dict:
    out = cli("status", *([run] if run else []), "--output", "json")
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def first_phase(cli, run=None) -> dict:
    """A poll's view of a run's first phase (the only run when ``run`` is None), read in this process (cli.peek):
    {} until there is one.  For waits while a supervisor follows the run; `status` (the CLI) judges what nobody does."""
    if run is None:
        runs = (cli.peek() or {}).get("runs") or []
        phases = runs[0]["phases"] if len(runs) == 1 else []  # the list's run views carry their phases
    else:
        phases = (cli.peek(run) or {}).get("phases") or []
    return phases[0] if phases else {}


def only_run(cli) -> str:
    (run,) = status(cli)["runs"]
    return run["id"]


def containers(docker_client, labels: dict) -> list:
    """Every container (any state) carrying all the given labels."""
    return docker_client.containers.list(all=True, ignore_removed=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]})


def labelled_containers(docker_client, test_id) -> list:
    """The containers of this test (its specs carry the ``runner-test.id`` label)."""
    return containers(docker_client, {TEST_LABEL: test_id})


def run_containers(docker_client, run_id: str, phase: str | None = None) -> list:
    labels = {"runner.run-id": run_id, **({"runner.phase": phase} if phase else {})}
    return docker_client.containers.list(all=True, ignore_removed=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]})


def serve(cli, inbox: Path, specs: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    import os

    return subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(cli.state), "serve", "--inbox", str(inbox),
                             "--specs", str(specs), "--gpus", "none"],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def check_invariants(cli, run_id: str, docker_client) -> dict:
    """DESIGN.md §4 on one run; returns its status document.

    3: at most one container per phase (counted by runner's labels on the engine), so nothing launched twice;
    5: each phase recorded at most one outcome (verdict event) and one chain decision;
    a reason for every recorded state; 6: the store passes PRAGMA integrity_check."""
    doc = status(cli, run_id)
    for p in doc["phases"]:
        assert p["reason"], f"phase {p['name']} is {p['status']} without a reason"
        assert len(run_containers(docker_client, run_id, p["name"])) <= 1, f"phase {p['name']} launched twice"
        outcomes = [e for e in doc["events"] if e["phase"] == p["name"] and e["kind"] in VERDICT_EVENTS]
        assert len(outcomes) <= 1, outcomes
        decisions = [e for e in doc["events"] if e["phase"] == p["name"] and e["kind"] == "chain.decision"]
        assert len(decisions) <= 1, decisions
        if p["status"] not in ACTIVE:
            assert len(outcomes) == 1, f"phase {p['name']} is {p['status']} with no recorded outcome"
    for e in doc["events"]:
        if e["kind"].startswith("phase.") and e["kind"][6:] in ACTIVE + tuple(k[6:] for k in VERDICT_EVENTS):
            assert e["message"].strip(), e
    con = sqlite3.connect(f"file:{cli.state}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    return doc
