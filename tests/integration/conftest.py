"""Integration tests talk to a real Docker engine and use the offline images.

They are never skipped: without an engine they fail, saying how to start one
(bash scripts/ensure-docker.sh, which .ci/run and scripts/test.sh call)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import docker
import pytest

from runner.backends.docker import DockerBackend
from tests.integration.gpu_engine import gpu_engine  # noqa: F401  (the private engine with a stand-in NVIDIA hook)

BASE_IMAGE = os.environ.get("RUNNER_BASE_IMAGE", "runner-base:bookworm")
TRAINER_IMAGE = os.environ.get("RUNNER_TRAINER_IMAGE", "runner-trainer:latest")
TEST_LABEL = "runner-test.id"


def nvidia_host(client) -> str:
    """Why this engine may accept GPU requests ('' when it cannot): tests that expect a refusal are skipped there."""
    if "nvidia" in (client.info().get("Runtimes") or {}):
        return "the Docker engine has the NVIDIA runtime"
    if shutil.which("nvidia-container-runtime-hook"):
        return "nvidia-container-runtime-hook is on PATH (Docker's NVIDIA device driver registers itself)"
    return ""


@pytest.fixture
def no_gpu_runtime(docker_client):
    """Skip on an NVIDIA host: the test checks how runner explains an engine that refuses GPUs."""
    why = nvidia_host(docker_client)
    if why:
        pytest.skip(f"{why}: this test needs an engine that refuses GPU requests (CI has one)")


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"no Docker engine ({exc}); start one with: bash scripts/ensure-docker.sh", pytrace=False)
    for image in (BASE_IMAGE, TRAINER_IMAGE):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.fail(f"image {image} missing; build it with: bash images/build-offline.sh", pytrace=False)
    return client


@pytest.fixture
def test_id(docker_client):
    """A label value unique to this test; its containers are removed afterwards."""
    value = uuid.uuid4().hex[:10]
    yield value
    for c in docker_client.containers.list(all=True, ignore_removed=True, filters={"label": f"{TEST_LABEL}={value}"}):
        c.remove(force=True)


@pytest.fixture
def backend(docker_client):
    return DockerBackend()


@pytest.fixture
def spec_for(tmp_path, test_id):
    """Write a phase spec running ``command`` on the base image, labelled for cleanup."""

    def make(command, name="p1", extra="", image=BASE_IMAGE, container_extra="") -> str:
        path = tmp_path / f"{name}.yaml"
        cmd = ", ".join(json.dumps(c) for c in command)
        path.write_text(textwrap.dedent(f"""\
            apiVersion: runner/v1
            kind: Phase
            name: {name}
            labels: {{{TEST_LABEL}: "{test_id}"}}
            container:
              image: {image}
              command: [{cmd}]
            """) + textwrap.indent(textwrap.dedent(container_extra), "  ") + textwrap.dedent(extra))
        return str(path)

    return make


@pytest.fixture
def cli(tmp_path):
    """Run the runner CLI as a separate process, as a user would."""
    state = tmp_path / "runs" / "runner.db"

    def run(*args, env=None, **kwargs):
        return subprocess.run([sys.executable, "-m", "runner.cli", "--state", str(state), *args],
                              capture_output=True, text=True, env={**os.environ, **(env or {})}, **kwargs)

    run.state = state
    run.peek = lambda run_id=None: peek(state, run_id)
    yield run
    _remove_containers_of_runs(state)


def peek(state, run_id=None) -> dict | None:
    """What `runner status [RUN] -o json` shows, read from the store in this process; None before the store exists.

    For a test's polls while a supervisor follows the run (a terminal, a server, a background supervisor): each
    `runner status` is a process that spends ~0.5 s of CPU importing runner, and polls of four parallel tests every
    half second kept a core of CI's two busy.  It neither judges a phase nobody supervises (`status`'s reconcile: a
    poll that waits for that calls the CLI) nor has the live view or the events (a poll needs the phases; reading
    every event again each time is waste); assertions on what a user sees call the CLI."""
    from pathlib import Path

    from runner.runs.views import run_view
    from runner.store import Store

    if not Path(state).exists():
        return None
    store = Store(state)
    try:
        if run_id is not None:
            return run_view(store, store.resolve_run(run_id))
        return {"runs": [run_view(store, r["id"]) for r in store.runs()]}
    finally:
        store.close()


def _remove_containers_of_runs(state) -> None:
    """Remove the containers of every run in a test's store (specs from specs/ carry no test label)."""
    if not state.exists():
        return
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
        try:
            runs = [row[0] for row in con.execute("SELECT id FROM runs")]
        finally:
            con.close()
        client = docker.from_env()
    except (sqlite3.Error, docker.errors.DockerException):
        return
    for run_id in runs:
        _stop_background_supervisor(state.parent, run_id)
        for c in client.containers.list(all=True, ignore_removed=True, filters={"label": f"runner.run-id={run_id}"}):
            try:
                c.remove(force=True)
            except docker.errors.DockerException:
                pass
    client.close()


def _stop_background_supervisor(runs_dir, run_id) -> None:
    """A background supervisor a test's `apply --detach` started: stopped by its PID (it leaves its container, which
    the caller removes next)."""
    import signal

    from runner.supervisor import Role, holder

    h = holder(runs_dir, run_id)
    if h is None or h.role != Role.BACKGROUND or h.pid <= 0:
        return
    try:
        os.kill(h.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and holder(runs_dir, run_id) is not None:
        time.sleep(0.1)


def keep_containers(runs_dir) -> None:
    """backend.yaml ``keep_containers: true``: a test that looks at an ended phase's container after its end (by
    default runner removes it once its log is saved)."""
    from pathlib import Path

    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    (Path(runs_dir) / "backend.yaml").write_text("keep_containers: true\n")


def wait_for(what, check, timeout=240.0, every=0.5):
    """Poll ``check`` until it returns something true (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def stop_server(proc) -> None:
    """SIGTERM a `runner serve` started by a test (it leaves its containers running), SIGKILL after 30 s."""
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
