"""compose.yaml for real, with docker-compose (v1, Debian's) and the offline images:
both services start, a dropped spec runs its chain, TensorBoard serves the run's scalars,
SIGKILLing the server mid-phase makes compose restart it and the restarted server
re-adopts the same training container; `compose down` leaves training containers alone."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid

import pytest

from tests.conftest import REPO
from tests.integration.conftest import keep_containers, wait_for
from tests.integration.conftest import peek as _peek


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def project(tmp_path, docker_client):
    if shutil.which("docker-compose") is None and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode:
        pytest.fail("neither docker-compose nor `docker compose` found; bash scripts/ensure-docker.sh installs it", pytrace=False)
    compose = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    home = tmp_path / "srv"
    shutil.copytree(REPO / "specs", home / "specs")
    (home / "runs").mkdir()
    keep_containers(home / "runs")  # the training container is looked at after compose down
    name = "rt" + uuid.uuid4().hex[:8]
    port = free_port()
    env = {**os.environ, "PWD": str(home), "RUNNER_TB_PORT": str(port), "RUNNER_GPUS": "none",
           "RUNNER_HTTP_PUBLISH": f"127.0.0.1:{free_port()}"}  # the web page's port: never one another test holds

    def run(*args, check=True, timeout=600):
        out = subprocess.run([*compose, "-f", str(REPO / "compose.yaml"), "-p", name, *args], cwd=home, env=env,
                             capture_output=True, text=True, timeout=timeout)
        if check:
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        return out

    run.home, run.port, run.name = home, port, name
    yield run
    run("down", check=False)
    for c in docker_client.containers.list(all=True, ignore_removed=True, filters={"label": "runner.run-id"}):
        if c.name.startswith("runner-") and str(home) in json.dumps(c.attrs.get("Mounts", [])):
            c.remove(force=True)


def test_compose_up_inbox_chain_tensorboard_and_sigkill(project, docker_client):
    state = project.home / "runs" / "runner.db"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "runner.cli", "--state", str(state), *args], capture_output=True, text=True)

    def status(run=None):
        out = cli("status", *([run] if run else []), "--output", "json")
        return json.loads(out.stdout) if out.returncode == 0 else None

    project("build", "runner")  # the compose build path (Docker's layer cache makes it quick after build-offline.sh)
    project("up", "-d")
    server = docker_client.containers.get(f"{project.name}_runner_1")
    inbox = project.home / "runs" / "inbox"
    wait_for("the server's inbox", lambda: (inbox / "accepted").is_dir(), timeout=60)
    shutil.copy(project.home / "specs/demo/pipeline.yaml", inbox / "pipeline.yaml")
    peek = lambda run=None: _peek(state, run)  # noqa: E731  (polls read the store in process)
    run_id = wait_for("the run", lambda: (peek() or {}).get("runs") and peek()["runs"][0]["id"], timeout=60)

    def midway():
        s = peek(run_id)
        p = s and s["phases"] and s["phases"][0]
        return p and p["status"] == "running" and len(os.listdir(project.home / "runs" / run_id / "demo-phase1" / "ckpt")) >= 1 and p

    p1 = wait_for("phase 1 to be midway", midway)
    training = docker_client.containers.get(p1["container_id"])
    started = training.attrs["State"]["StartedAt"]
    assert not [k for k in training.labels if k.startswith("com.docker.compose")]

    # SIGKILL the server process itself (not `docker kill`, which counts as a manual stop).
    pids = [int(p[1]) for p in server.top(ps_args="-eo comm,pid")["Processes"] if p[0].startswith(("runner", "python"))]
    assert pids, server.top()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for("compose to restart the server", lambda: (server.reload() or server.attrs["RestartCount"] >= 1)
             and server.status == "running", timeout=60)
    training.reload()
    assert training.status in ("running", "exited") and training.attrs["State"]["StartedAt"] == started

    wait_for("the chain to finish", lambda: len((peek(run_id) or {}).get("phases", [])) == 2
             and peek(run_id)["phases"][1]["status"] not in ("pending", "launching", "running", "detached"))
    final = status(run_id)
    p1, p2 = final["phases"]
    assert (p1["verdict"], p2["verdict"]) == ("success", "success")
    assert p1["container_id"] == training.id
    kinds = [e["kind"] for e in final["events"]]
    assert kinds.count("phase.succeeded") == 2 and kinds.count("chain.decision") == 2 and kinds.count("phase.launching") == 2
    cks = json.loads(cli("checkpoints", run_id, "demo-phase1", "--output", "json").stdout)["checkpoints"]
    best = [c for c in cks if c["state"] == "best"]
    assert best and os.path.exists(best[0]["vault_path"])

    def scalars():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{project.port}/data/plugin/scalars/tags", timeout=5) as r:
                tags = json.load(r)
        except OSError:
            return None
        return tags.get(f"{run_id}/demo-phase1/tb", {}).get("train/text_loss") is not None and tags

    assert wait_for("TensorBoard to serve the run's scalars", scalars, timeout=90)

    project("down")
    training.reload()  # compose down removed its services, never a training container
    assert training.status == "exited"
