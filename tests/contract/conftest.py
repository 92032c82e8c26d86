"""One backend contract suite over every backend: the ``contract`` fixture (``backend_kind``: fake, docker, slurm).

Each test describes what its container does as a ``Program`` (harness.py: lines, a pause, more lines, an exit
code, exit 143 on SIGTERM); the harness runs it as a shell command on the base image (Docker; Slurm, whose job
runs it with docker on a node) or as a clock-driven ``Script`` (FakeBackend).  Docker and Slurm are marked
``integration``: they use the real engine and images (``docker_client``) and the real test cluster
(``slurm_cluster``), the session's one of each (tests/conftest.py: the cluster is up once for tests/contract and
tests/slurm together).  Every container and job a test starts is stopped and removed at its end.
"""
from __future__ import annotations

import uuid

import docker
import pytest

from runner.backends.fake import FakeBackend
from tests.contract.harness import CONTRACT_LABEL, Contract
from tests.integration.conftest import BASE_IMAGE


@pytest.fixture(params=["fake", pytest.param("docker", marks=pytest.mark.integration),
                        pytest.param("slurm", marks=pytest.mark.integration)])
def backend_kind(request) -> str:
    return request.param


@pytest.fixture
def contract(backend_kind, request, tmp_path, monkeypatch):
    uid = uuid.uuid4().hex[:8]
    if backend_kind == "fake":
        fake = FakeBackend(images={BASE_IMAGE})
        yield Contract("fake", fake, uid, tmp_path, unknown_id=f"fake{0:060d}",
                       gone=lambda plan: all(c.plan.container_name != plan.container_name for c in fake.containers.values()))
        return
    request.getfixturevalue("docker_client")  # the engine answers and the images are built
    client = docker.from_env()
    if backend_kind == "docker":
        from runner.backends.docker import DockerBackend

        c = Contract("docker", DockerBackend(), uid, tmp_path, unknown_id="0" * 64,
                     gone=lambda plan: not client.containers.list(all=True, ignore_removed=True, filters={"name": f"^/?{plan.container_name}$"}))
        try:
            yield c
        finally:
            for container in client.containers.list(all=True, ignore_removed=True, filters={"label": f"{CONTRACT_LABEL}={uid}"}):
                container.remove(force=True)
            client.close()
        return
    from runner.backends.slurm import SlurmBackend
    from runner.settings import SlurmSettings

    cluster = request.getfixturevalue("slurm_cluster")
    for key, value in cluster.env.items():
        monkeypatch.setenv(key, value)
    c = Contract("slurm", SlurmBackend(SlurmSettings(poll_interval=0.5)), uid, cluster.base / "jobs" / f"contract-{uid}",
                 unknown_id="slurm:999999", records_stay=True, own_line=lambda line: line.startswith("runner-slurm: "),
                 # The job's record stays in Slurm's accounting; its container (on the nodes' engine) must be gone.
                 gone=lambda plan: not client.containers.list(all=True, ignore_removed=True, filters={"name": f"^/?{plan.container_name}$"}))
    try:
        yield c
    finally:
        out = cluster.run("squeue", "-h", "-o", "%i %j")
        for line in out.stdout.splitlines():
            jid, _, name = line.partition(" ")
            if name.startswith(f"runner-{c.run_id}-"):
                cluster.run("scancel", jid)
        for container in client.containers.list(all=True, ignore_removed=True, filters={"label": f"{CONTRACT_LABEL}={uid}"}):
            container.remove(force=True)
        client.close()
