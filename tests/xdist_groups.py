"""How the full suite is spread over pytest-xdist's workers (``pytest -n N``): one scheduler, chosen in
tests/conftest.py through pytest-xdist's ``pytest_xdist_make_scheduler`` hook.

Every test is its own unit of work, except the tests that share something a machine can hold only once, and the
modules of MODULES (an expensive module-scoped fixture); each such set is one unit, run by one worker, one test
after another:

- ``slurm``: the Slurm test cluster (one bridge, one set of namespaces, one base folder per machine): tests/slurm,
  the contract suite's Slurm cases, and tests/integration/test_gpu.py, whose private engine with the stand-in
  NVIDIA hook is the session's one shared with the Slurm GPU test.
- ``private-engine``: the restartable private engines of tests/faults/test_engine_restart.py.

Why not ``--dist loadgroup`` and ``xdist_group`` marks: pytest-xdist 3.8 marks a group by renaming the item's
node id, which pytest 9.2 no longer lets it do (the node id is derived); the marks were silently ignored and
the Slurm tests ran on every worker at once.  The group is read here from the node id itself, which both
versions give the controller.  Groups go first (the scheduler starts with its largest units), then the rest in
collection order (tests/conftest.py puts the long folders first)."""
from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

GROUPS = (
    ("slurm", lambda nodeid: nodeid.startswith("tests/slurm/") or nodeid.startswith("tests/integration/test_gpu.py::")
     or (nodeid.startswith("tests/contract/") and "[slurm" in nodeid)),
    ("private-engine", lambda nodeid: nodeid.startswith("tests/faults/test_engine_restart.py::")),
)


# Modules whose tests share an expensive module-scoped fixture (a simulated run of 30,000 steps, a run store with a
# report, a web server): one unit each, so the fixture is made once, not once on every worker that gets one of
# their tests (the simulator's module made its runs up to four times: tens of CPU-seconds of a two-core suite).
MODULES = ("tests/trainer/test_indextts_sim.py", "tests/integration/test_http.py", "tests/unit/test_report.py",
           "tests/unit/test_cli.py")


def group_of(nodeid: str) -> str | None:
    """The shared-resource group of a test (by its node id), None for a test that runs anywhere."""
    return next((name for name, member in GROUPS if member(nodeid)), None)


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its group, its module (MODULES), else the test itself."""
    module = nodeid.split("::", 1)[0]
    return group_of(nodeid) or (module if module in MODULES else nodeid)


class GroupScheduling(LoadScopeScheduling):
    """pytest-xdist's scope scheduling with a test's scope being its unit (unit_of)."""

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(nodeid)
