"""Questions about recorded runs that the CLI, the web page and tests ask the same way (store only)."""
from __future__ import annotations

from typing import Any

from runner.errors import NotFound
from runner.store import ACTIVE, PhaseRecord, Store
from runner.supervisor import holder


def pick_phase(store: Store, run_id: str, name: str | None) -> PhaseRecord:
    """The phase named ``name`` (its latest attempt), or — without a name — the run's last phase."""
    phases = store.phases(run_id)
    if name:
        matching = [p for p in phases if p["name"] == name]
        if not matching:
            raise NotFound(f"run {run_id} has no phase {name!r} (phases: {', '.join(p['name'] for p in phases) or 'none'})")
        return matching[-1]
    if not phases:
        raise NotFound(f"run {run_id} has no phases")
    return phases[-1]


def checkpoint_phases(store: Store, run_id: str, name: str | None = None) -> list[tuple[PhaseRecord, list[dict[str, Any]]]]:
    """(phase row, its checkpoint rows) for the named phase, or for every phase that has checkpoints, in run order."""
    if name is not None:
        row = pick_phase(store, run_id, name)
        return [(row, store.checkpoints(row["id"]))]
    found = [(p, cks) for p in store.phases(run_id) if (cks := store.checkpoints(p["id"]))]
    if not found:
        raise NotFound(f"run {run_id} has no recorded checkpoints")
    return found


def needs_reconcile(store: Store, run_id: str, server_running: bool) -> bool:
    """Whether reading a run's status should first ask the engine how its active phases stand: not while a live
    server supervises the run store or a supervisor holds the run (they judge their own phases), and only when a
    phase is still active."""
    return (not server_running and any(p["status"] in ACTIVE for p in store.phases(run_id))
            and holder(store.path.parent, run_id) is None)  # a live supervisor judges its own phases
