import os

# torch on the host (the trainers' own tests, the writers of the metrics tests) with one intra-op thread: on a
# 2-core machine running the suite in parallel, OpenMP's extra thread spins between the tiny models' steps (a
# 120-step run of images/trainer/train.py: 9.4 CPU-s with two threads, 6.6 with one). Set before anything imports
# torch, in the workers and in every process they start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import fcntl
import signal
import textwrap
import time
from pathlib import Path

import pytest

# The Docker engine, its images checked (session-scoped): shared by tests/contract and tests/slurm from here.
from tests.integration.conftest import docker_client  # noqa: F401
from tests.slurm.cluster import SlurmCluster, SlurmClusterError

REPO = Path(__file__).resolve().parent.parent

# A suite started in the background (`bash .ci/run &` from a script: no job control) inherits SIGINT ignored, and so
# would every `runner` it starts: the Ctrl-C tests would send a signal no process hears (Python keeps an ignored
# SIGINT ignored). Handled here, it is back to the default in every process the suite execs.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec file (dedented) and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


@pytest.fixture(scope="session")
def slurm_cluster():
    """One real two-node Slurm cluster (tests/slurm/cluster.py) for the whole test session, shared by tests/slurm
    and tests/contract: brought up on first use and torn down at the end.

    Two test sessions on one machine would share the bridge, the namespaces and the base folder: a lock file next
    to the base folder makes the second wait for the first (up to 10 minutes).  Leftovers of a crashed session
    (daemons recorded in <base>/run, namespaces, bridge, the DOCKER-USER rule) are cleaned by ``up()``."""
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


MINIMAL = """
apiVersion: runner/v1
kind: Phase
name: p1
container:
  image: trainer:latest
  command: [python3, -c, "print('hi')"]
"""


# The order the suite's tests are handed to pytest-xdist's workers: the long ones first (a real engine, a cluster,
# trainers), so that the many short unit tests fill the gaps at the end instead of a 100 s test starting last.
_FIRST = ("slurm", "faults", "integration", "contract", "trainer", "checkpoints", "metrics")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: no error where it is not loaded (-p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    """With ``-n N``: the tests that share a one-per-machine resource on one worker (tests/xdist_groups.py)."""
    from tests.xdist_groups import GroupScheduling

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Every test under tests/integration/, tests/faults/ and tests/slurm/ talks to a real Docker engine (and
    the Slurm ones to a real cluster): marked ``integration`` (``-m "not integration"`` runs the rest without).
    The long folders are ordered first."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts or "faults" in parts or "slurm" in parts:
            item.add_marker(pytest.mark.integration)

    def rank(item) -> int:
        parts = Path(str(item.fspath)).parts
        return next((i for i, name in enumerate(_FIRST) if name in parts), len(_FIRST))

    items.sort(key=rank)  # stable: within a folder, the order as written
