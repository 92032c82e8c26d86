"""The dependencies pyproject.toml declares are the third-party packages runner/ imports: no more, no fewer."""
import ast
import re
import sys
import tomllib

from tests.conftest import REPO

IMPORT_TO_DIST = {"yaml": "pyyaml"}  # import name → distribution name, where they differ
OPTIONAL = {"torch"}  # imported lazily (checkpoint metadata), declared as the `torch` extra


def imported_packages() -> set[str]:
    found = set()
    for path in (REPO / "runner").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {IMPORT_TO_DIST.get(n, n) for n in found if n not in sys.stdlib_module_names and n != "runner"}


def declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_declared_dependencies_match_imports():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    imported = imported_packages()
    assert imported - OPTIONAL == declared(project["dependencies"])
    assert OPTIONAL <= imported and OPTIONAL <= declared(project["optional-dependencies"]["torch"])
