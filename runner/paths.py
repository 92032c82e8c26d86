"""Where the run store is: one resolver for the CLI, the server and tests."""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from runner.errors import NotFound

DEFAULT_STATE = "runs/runner.db"
SETTINGS_FILE = "backend.yaml"  # the run store's backend settings, in its folder (runner.settings)


def state_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--state, else $RUNNER_STATE, else runs/runner.db; runs live in its folder."""
    return Path(explicit or os.environ.get("RUNNER_STATE") or DEFAULT_STATE)


def existing_store(state: Path, hint: str = "start a run with `runner apply SPEC`, or pass --state") -> Path:
    """The run store a read-only command opens; a missing one is NotFound (opening would create it)."""
    if not state.exists():
        raise NotFound(f"no run store at {state}", hint)
    return state


@functools.lru_cache(maxsize=64)
def _name_regex(pattern: str) -> re.Pattern:
    """{step} → the step's digits; any other {placeholder} and * → anything (e.g. epoch={epoch}-step={step}.ckpt)."""
    out = []
    for part in re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\}|\*)", pattern):
        if part == "{step}":
            out.append(r"(?P<step>\d+)")
        elif part == "*" or (part.startswith("{") and part.endswith("}") and len(part) > 2):
            out.append(r".*?")
        else:
            out.append(re.escape(part))
    return re.compile("^" + "".join(out) + "$")


def step_from_name(name: str, pattern: str) -> int | None:
    m = _name_regex(pattern).match(name)
    return int(m.group("step")) if m and "{step}" in pattern else None


def spec_relative(folder: Path | str, path: str | os.PathLike[str]) -> Path:
    """THE resolver of a path written in a spec: ``~`` expanded, then relative to the spec file's folder (an absolute
    path stays), normalised.  Mounts, metric files, checkpoint folders, preconditions and `next:` specs all use it."""
    return Path(os.path.normpath(os.path.join(folder, os.path.expanduser(os.fspath(path)))))
