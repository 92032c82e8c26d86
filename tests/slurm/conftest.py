"""The session-scoped ``slurm_cluster`` fixture: one real two-node Slurm cluster (tests/slurm/cluster.py) for
the whole test session, brought up on first use and torn down at the end.

Two test sessions on one machine would share the bridge, the namespaces and the base folder: a lock file next
to the base folder makes the second wait for the first (up to 10 minutes).  Leftovers of a crashed session
(daemons recorded in <base>/run, namespaces, bridge, the DOCKER-USER rule) are cleaned by ``up()``.
"""

from __future__ import annotations

import fcntl
import os
import time

import pytest

from tests.slurm.cluster import SlurmCluster, SlurmClusterError


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs root and runs a real two-node Slurm cluster (tests/slurm)")


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.fail("the Slurm test cluster needs root (network namespaces, a bridge, iptables); CI runs as root", pytrace=False)
    cluster = SlurmCluster()
    lock_path = cluster.base.parent / f"{cluster.base.name}.lock"
    with open(lock_path, "w") as lock:
        deadline = time.monotonic() + 600
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session holds {lock_path} (its Slurm cluster) for over 10 minutes")
                time.sleep(1)
        try:
            cluster.up()
        except SlurmClusterError as e:
            pytest.fail(f"the Slurm test cluster did not come up: {e}", pytrace=False)
        try:
            yield cluster
        finally:
            cluster.down()
