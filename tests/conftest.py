import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec file (dedented) and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


MINIMAL = """
apiVersion: runner/v1
kind: Phase
name: p1
container:
  image: trainer:latest
  command: [python3, -c, "print('hi')"]
"""


def pytest_collection_modifyitems(config, items):
    """Every test under tests/integration/, tests/faults/ and tests/slurm/ talks to a real Docker engine (and
    the Slurm ones to a real cluster): marked ``integration`` (``-m "not integration"`` runs the rest without)."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts or "faults" in parts or "slurm" in parts:
            item.add_marker(pytest.mark.integration)
