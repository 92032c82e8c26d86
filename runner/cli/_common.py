"""Helpers the command modules share: the run store's path, inputs from the command line, the engine."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from runner.errors import UsageError
from runner.paths import existing_store, state_path

if TYPE_CHECKING:
    from runner.engine import Engine


def state(args: argparse.Namespace) -> Path:
    return state_path(args.state)


def existing_state(args: argparse.Namespace) -> Path:
    """The run store of a command that reads recorded runs: a missing one is NotFound, never created."""
    return existing_store(state(args))


def engine(args: argparse.Namespace, reporter: Any = None, existing: bool = False, role: str = "terminal",
           lock_wait_s: float = 0.0) -> Engine:
    from runner.runs.operations import open_engine

    return open_engine(existing_state(args) if existing else state(args), reporter, role, lock_wait_s)


def parse_inputs(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--input {pair!r}: expected NAME=VALUE")
        out[name] = value
    return out
