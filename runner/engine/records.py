"""The phase record as the engine reads it back: the stored plan and resolved phase (never the spec file, which
may have changed since), the folder its relative paths resolve against, and the result a caller is given."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import json
from pathlib import Path

from runner.engine.ports import PhaseResult
from runner.store import Store

if TYPE_CHECKING:
    from runner.plan import LaunchPlan
    from runner.spec.models import Phase

# The plan and the phase's models (pydantic) are imported by the functions that rebuild them: reading a phase's
# record (`runner status`, `logs`) does not pay for them.


def stored_plan(row: dict[str, Any]) -> LaunchPlan | None:
    """The LaunchPlan recorded for a phase (JSON lists back to tuples, mounts back to BindMount)."""
    from runner.plan import BindMount, LaunchPlan

    data = json.loads(row["plan_json"] or "{}")
    if not data:
        return None
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    data["mounts"] = tuple(BindMount(**m) if isinstance(m, dict) else m for m in data["mounts"])
    return LaunchPlan(**data)


def phase_of(row: dict[str, Any]) -> Phase:
    """The resolved phase recorded when it was planned (the spec file may have changed since)."""
    from runner.spec.models import Phase

    return Phase.model_validate(json.loads(row["phase_json"]))


def stored_phase(row: dict[str, Any]) -> Phase | None:
    """``phase_of``, or None for a row recorded without one."""
    return phase_of(row) if row["phase_json"] not in (None, "", "{}") else None


def folder_of(row: dict[str, Any]) -> Path:
    """The folder a phase's relative paths resolve against: its spec file's."""
    return Path(row["spec_path"]).parent


def stop_grace(row: dict[str, Any]) -> float:
    """The stop grace the phase was launched with (seconds between SIGTERM and SIGKILL)."""
    return float(json.loads(row["plan_json"] or "{}").get("stop_grace", 30))


def result_of(store: Store, phase_id: int) -> PhaseResult:
    """How a phase stands, as recorded."""
    row = store.phase(phase_id)
    return PhaseResult(row["run_id"], phase_id, row["name"], row["status"], row["reason"], row["exit_code"],
                       row["container_id"], row["verdict"])


def request_stop(store: Store, row: dict[str, Any]) -> None:
    """Record that a person asked to stop a phase (once): whichever process supervises it acts on it."""
    if not row["stop_requested"]:
        store.update(row["id"], stop_requested=1)
        store.event(row["run_id"], row["id"], "phase.stop-requested", f"stop requested for phase {row['name']}")

