"""Where the run store is: one resolver for the CLI, the server and tests."""
from __future__ import annotations

import os
from pathlib import Path

from runner.errors import NotFound

DEFAULT_STATE = "runs/runner.db"


def state_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--state, else $RUNNER_STATE, else runs/runner.db; runs live in its folder."""
    return Path(explicit or os.environ.get("RUNNER_STATE") or DEFAULT_STATE)


def existing_store(state: Path, hint: str = "start a run with `runner apply SPEC`, or pass --state") -> Path:
    """The run store a read-only command opens; a missing one is NotFound (opening would create it)."""
    if not state.exists():
        raise NotFound(f"no run store at {state}", hint)
    return state
