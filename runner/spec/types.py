"""Field types shared by the spec models: argv lists, durations, sizes, GPU requests.

Each type validates *before* pydantic's own checks so a user gets one message
that says what is accepted, instead of one line per union member."""
from __future__ import annotations

import re
from typing import Annotated, Literal, Union, cast

from pydantic import BeforeValidator, Field, WithJsonSchema

from runner.units import parse_duration, parse_size


_TEMPLATE = r"^\s*\$\{\{[^}]*\}\}\s*$"


def _scalar_text(value: object) -> object:
    """Numbers and booleans written in YAML become the text the user typed
    (the loader keeps it), so `[--lr, 1e-6]` passes "1e-6" to the program."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return getattr(value, "source", str(value))
    return value


def _argv(value: object) -> object:
    if isinstance(value, str):
        raise ValueError(
            "must be an argv list such as [python, train.py, --lr, '1e-6']; "
            "a plain string is never split by a shell"
        )
    if isinstance(value, list):
        return [_scalar_text(v) for v in value]
    return value


def _text_map(value: object) -> object:
    if isinstance(value, dict):
        return {k: _scalar_text(v) for k, v in value.items()}
    return value


def _gpus(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"must be a count (0 = CPU), 'all', or a list of device ids; got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a GPU count cannot be negative (0 means CPU only)")
        return value
    if value == "all":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)  # a ${{ inputs.gpus }} reference, substituted
    if isinstance(value, str) and re.match(_TEMPLATE, value):
        return value  # resolved (and checked again) when the run is planned
    if isinstance(value, list) and value and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value]
    raise ValueError(f"must be a count (0 = CPU), 'all', or a list of device ids such as [0, 1]; got {value!r}")


def _duration(value: object) -> float:
    return parse_duration(value)


def _size(value: object) -> object:
    if isinstance(value, str) and re.match(_TEMPLATE, value):
        return value  # resolved (and checked again) when the run is planned
    return parse_size(value)


def resolved_size(size: int | str) -> int:
    """A Size of a resolved phase, in bytes: its ${{ }} reference was substituted and parsed when the run was
    planned.  Only the static type changes (a value is passed through as it is)."""
    return cast(int, size)


_SCALAR = {"type": ["string", "number", "boolean"]}
Argv = Annotated[
    list[str],
    BeforeValidator(_argv),
    Field(min_length=1),
    WithJsonSchema({"type": "array", "items": _SCALAR, "minItems": 1}),
]
TextMap = Annotated[dict[str, str], BeforeValidator(_text_map), WithJsonSchema({"type": "object", "additionalProperties": _SCALAR})]
GpuRequest = Annotated[Union[int, Literal["all"], list[str], Annotated[str, Field(pattern=_TEMPLATE)]], BeforeValidator(_gpus)]
Duration = Annotated[
    float,
    BeforeValidator(_duration),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^\s*(\d+(\.\d+)?\s*(ms|s|m|h|d)\s*)+$"}, {"type": "number", "minimum": 0}]}),
]
Size = Annotated[
    Union[int, Annotated[str, Field(pattern=_TEMPLATE)]],
    BeforeValidator(_size),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[kKmMgGtTpP]?[iI]?[bB]?\s*$"}, {"type": "integer", "minimum": 0},
                              {"type": "string", "pattern": _TEMPLATE}]}),
]
InputValue = Union[str, int, float, bool, None]


Template = Annotated[str, Field(pattern=_TEMPLATE)]
# A number, or a ${{ }} reference that resolves to one when the run is planned.
Number = Union[float, Template]


_SIGMA = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:sigma|σ|sd)\s*$")


def _percent_or_number(value: object) -> object:
    if isinstance(value, str) and (sigma := _SIGMA.match(value)):
        return {"sigma": float(sigma.group(1))}
    if isinstance(value, str) and value.strip().endswith("%") and "${{" not in value:
        try:
            return {"relative": float(value.strip()[:-1]) / 100.0}
        except ValueError:
            raise ValueError(f"expected a percentage such as '20%', 'N sigma' or an absolute number, got {value!r}") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"absolute": float(value)}
    return value


def _step_window(value: object) -> object:
    """'500 steps' / '5 evals' / '10m' / 500 → {'steps': 500} / {'evals': 5} / {'seconds': 600}."""
    if isinstance(value, bool):
        raise ValueError(f"expected a window such as '500 steps', '5 evals' or '10m', got {value!r}")
    if isinstance(value, int):
        return {"steps": value}
    if isinstance(value, str):
        text = value.strip()
        parts = text.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1] in ("step", "steps"):
            return {"steps": int(parts[0])}
        if len(parts) == 2 and parts[0].isdigit() and parts[1] in ("eval", "evals", "evaluations", "points"):
            return {"evals": int(parts[0])}
        try:
            return {"seconds": parse_duration(text)}
        except ValueError:
            pass
    if isinstance(value, dict):
        return value
    raise ValueError(f"expected a window such as '500 steps', '5 evals' or '10m', got {value!r}")


Margin = Annotated[dict[str, float], BeforeValidator(_percent_or_number),
                   WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^\s*-?\d+(\.\d+)?\s*(%|sigma|σ|sd)\s*$"}, {"type": "number"}]})]


def _step_count(value: object) -> object:
    """'1000 steps' / 1000 → {'steps': 1000}."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number of steps such as '1000 steps', got {value!r}")
    if isinstance(value, int) and value >= 1:
        return {"steps": value}
    if isinstance(value, str):
        parts = value.strip().split()
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) >= 1 and parts[1] in ("step", "steps"):
            return {"steps": int(parts[0])}
    if isinstance(value, dict):
        return value
    raise ValueError(f"expected a number of steps such as '1000 steps', got {value!r}")


StepCount = Annotated[dict[str, int], BeforeValidator(_step_count),
                      WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^\s*\d+\s*steps?\s*$"}, {"type": "integer", "minimum": 1}]})]
StepWindow = Annotated[dict[str, float], BeforeValidator(_step_window),
                       WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 1}]})]
