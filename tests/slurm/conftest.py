"""The Slurm tests' ``store`` fixture (a run store on the cluster's shared folder).  The cluster itself is the
session-scoped ``slurm_cluster`` fixture of tests/conftest.py (one for the session, shared with tests/contract),
and ``docker_client`` comes from there too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import docker

import pytest

from tests.integration.conftest import wait_for


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs root and runs a real two-node Slurm cluster (tests/slurm)")


class Store:
    """A run store on the cluster's shared folder, with the runner CLI and Slurm's view of its jobs."""

    def __init__(self, cluster, folder: Path):
        self.cluster = cluster
        self.runs = folder / "runs"
        self.runs.mkdir(parents=True)
        self.state = self.runs / "runner.db"
        self.settings(poll_interval=0.5)

    def settings(self, **slurm) -> None:
        body = "\n".join(f"  {k}: {json.dumps(v)}" for k, v in slurm.items())
        (self.runs / "backend.yaml").write_text(f"backend: slurm\nslurm:\n{body}\n")

    def env(self, extra: dict | None = None) -> dict:
        return {**os.environ, **self.cluster.env, **(extra or {})}

    def __call__(self, *args, env=None, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runner.cli", "--state", str(self.state), *args],
                              capture_output=True, text=True, env=self.env(env), **kwargs)

    def popen(self, *args, env=None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(self.state), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env(env))

    def status(self, run: str | None = None) -> dict:
        out = self("status", *([run] if run else []), "--output", "json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def phases(self, run: str) -> list[dict]:
        return self.status(run)["phases"]

    def peek_phases(self, run: str) -> list[dict]:
        """A poll's phases (tests.integration.conftest.peek: the store read in this process, no `runner status`
        process each time); only while a supervisor follows the run (the CLI's status judges what nobody does)."""
        from tests.integration.conftest import peek

        return (peek(self.state, run) or {}).get("phases", [])

    def jobs(self, name: str, wait: bool = True) -> list[dict]:
        """sacct's records of the jobs with that name (each: id, state, nodes, times).  Accounting lags a few
        seconds behind slurmctld (tests/slurm/README.md): with ``wait``, until there is at least one."""
        def records():
            out = self.cluster.run("sacct", "--json", "-X", "--starttime", "now-1days", "--name", name, check=True)
            return [j for j in json.loads(out.stdout)["jobs"] if j.get("partition")]  # "" : not recorded yet
        return wait_for(f"accounting records of {name}", records, timeout=30) if wait else records()

    def job_state(self, name: str) -> str:
        (job,) = self.jobs(name)
        state = job["state"]
        return state["current"] if isinstance(state, dict) else state

    def cleanup(self) -> None:
        """Cancel this store's jobs and remove the containers of its runs (a failed test leaves neither)."""
        runs = [p.name for p in self.runs.iterdir() if p.is_dir()]
        for run in runs:
            out = self.cluster.run("squeue", "-h", "-o", "%i %j")
            for line in out.stdout.splitlines():
                jid, _, name = line.partition(" ")
                if name.startswith(f"runner-{run}"):
                    self.cluster.run("scancel", jid)
        client = docker.from_env()
        for run in runs:
            for c in client.containers.list(all=True, ignore_removed=True, filters={"label": f"runner.run-id={run}"}):
                c.remove(force=True)


@pytest.fixture
def store(slurm_cluster):
    s = Store(slurm_cluster, slurm_cluster.base / "jobs" / uuid.uuid4().hex[:8])
    yield s
    s.cleanup()
