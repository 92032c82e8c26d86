"""How the suite is cut into units of work for pytest-xdist (tests/xdist_groups.py): a unit runs on one worker."""
from tests.xdist_groups import MODULES, unit_of


def test_shared_resources_and_module_fixtures_make_one_unit_and_every_other_test_is_its_own():
    assert unit_of("tests/slurm/test_cluster.py::test_a") == unit_of("tests/contract/test_backend_contract.py::t[slurm]") \
        == unit_of("tests/integration/test_gpu.py::test_b") == "slurm"
    assert unit_of("tests/faults/test_engine_restart.py::test_row9") == "private-engine"
    sim = "tests/trainer/test_indextts_sim.py"
    assert sim in MODULES and unit_of(f"{sim}::test_a") == unit_of(f"{sim}::test_b[x]") == sim
    assert unit_of("tests/contract/test_backend_contract.py::t[docker]") == "tests/contract/test_backend_contract.py::t[docker]"
    assert unit_of("tests/trainer/test_train.py::test_a") != unit_of("tests/trainer/test_train.py::test_b")
