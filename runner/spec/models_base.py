"""The base of every spec model."""
from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """Unknown fields are errors; fields are filled by their YAML names (aliases) or Python names."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
