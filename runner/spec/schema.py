"""JSON Schema (Draft 2020-12) generated from the spec models; checked in as specs/phase.schema.json."""
from __future__ import annotations

import json
from typing import Any

from runner.spec.models import Phase

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


def phase_schema() -> dict[str, Any]:
    schema = Phase.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": SCHEMA_URI, "$id": "https://runner.dev/schemas/phase.schema.json", **schema}


def schema_text() -> str:
    return json.dumps(phase_schema(), indent=2, sort_keys=False) + "\n"
