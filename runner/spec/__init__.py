"""The spec: models (what a phase file may say), loader (YAML → models with located errors), schema export.

The names below are loaded on first use (PEP 562): importing a light part of the package (``runner.spec.interpolate``,
``runner.spec.types``) must not import pydantic and every model, which `runner status` and the metrics reader never
need."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.spec.loader import LoadedSpec, load_spec, load_spec_text
    from runner.spec.models import Phase

__all__ = ["LoadedSpec", "Phase", "load_spec", "load_spec_text"]


def __getattr__(name: str) -> Any:
    if name in ("LoadedSpec", "load_spec", "load_spec_text"):
        from runner.spec import loader

        return getattr(loader, name)
    if name == "Phase":
        from runner.spec.models import Phase

        return Phase
    raise AttributeError(f"module 'runner.spec' has no attribute {name!r}")
