"""The checked-in JSON Schema matches the models, and every shipped spec follows it."""
import json
from pathlib import Path

import jsonschema
import pytest

from runner.spec import load_spec
from runner.spec.schema import phase_schema
from tests.conftest import REPO

SPECS = sorted(p for p in (REPO / "specs").rglob("*.yaml"))


def test_checked_in_schema_is_current():
    on_disk = json.loads((REPO / "specs" / "phase.schema.json").read_text())
    assert on_disk == phase_schema(), "specs/phase.schema.json is stale: run `runner schema > specs/phase.schema.json`"


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(phase_schema())
    assert phase_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_model_field_has_a_description():
    def walk(node, path="$"):
        if isinstance(node, dict):
            for name, prop in (node.get("properties") or {}).items():
                assert prop.get("description"), f"{path}.{name} has no description"
            for k, v in node.items():
                walk(v, f"{path}.{k}")

    walk(phase_schema())


@pytest.mark.parametrize("spec", SPECS, ids=[str(p.relative_to(REPO)) for p in SPECS])
def test_shipped_specs_are_valid_and_reference_the_schema(spec: Path):
    loaded = load_spec(spec)
    jsonschema.Draft202012Validator(phase_schema()).validate(json.loads(json.dumps(loaded.doc.data)))
    first = spec.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    target = (spec.parent / first.split("$schema=", 1)[1].strip()).resolve()
    assert target == (REPO / "specs" / "phase.schema.json").resolve()


def test_schema_rejects_what_the_loader_rejects():
    validator = jsonschema.Draft202012Validator(phase_schema())
    bad = {"apiVersion": "runner/v1", "kind": "Phase", "name": "x",
           "container": {"image": "i", "command": "python train.py", "shm_sise": "1g"}}
    assert len(list(validator.iter_errors(bad))) >= 2
