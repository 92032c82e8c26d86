"""The spec: models (what a phase file may say), loader (YAML → models with located errors), schema export."""
from runner.spec.loader import LoadedSpec, load_spec, load_spec_text
from runner.spec.models import Phase

__all__ = ["LoadedSpec", "Phase", "load_spec", "load_spec_text"]
