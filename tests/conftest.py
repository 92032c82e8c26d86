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
