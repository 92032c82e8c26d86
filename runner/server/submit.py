"""`runner apply` with a server running for the run store: queue the spec for it instead of running it here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import Refused
from runner.runs.operations import open_engine
from runner.decisions.policy import MountPolicy


@dataclass(frozen=True)
class Submitted:
    run_id: str
    position: int | None  # place in the server's queue, 1 = next; None once it has started


def submit_to_server(state: Path, spec: str | Path, inputs: dict[str, str], priority: int, server: dict[str, Any]) -> Submitted:
    """Validate and plan the spec as the server would (its mount policy), then record it queued for the server."""
    path = Path(spec).resolve()
    roots = [Path(r) for r in server.get("mount_roots") or []]
    if roots and not any(path == r or r in path.parents for r in roots):
        raise Refused(f"the server cannot see {path}: it reads specs under {', '.join(map(str, roots))}",
                      "move the spec under one of them, or run it here with --local")
    engine = open_engine(state)
    engine.policy = MountPolicy(tuple(server.get("mount_roots") or ())) if server.get("mount_roots") else None
    run_id = engine.submit(path, inputs, source="apply-server", priority=priority)
    waiting = [s for s in engine.store.submissions(("queued",)) if s["source"] != "apply"]
    position = next((i + 1 for i, s in enumerate(waiting) if s["run_id"] == run_id), None)
    return Submitted(run_id, position)
