"""What the commands do to recorded runs through the engine (stop, logs, status's reconcile): below the CLI, so
tests and the server call it the same way. Rendering stays in runner/cli."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from runner.errors import EngineUnavailable, NotFound, RunnerError
from runner.queries import needs_reconcile, pick_phase
from runner.store import ACTIVE, Store
from runner.views import run_view

if TYPE_CHECKING:
    from runner.engine import Engine, PhaseResult, Reporter


def open_engine(state: Path, reporter: Reporter | None = None) -> Engine:
    """An engine for the run store at ``state`` (runs live in its folder), on the backend its folder's
    backend.yaml names (default: the local Docker engine)."""
    from runner.backends.select import backend_factory
    from runner.engine import Engine

    return Engine(Store(state), backend_factory(state.parent), state.parent, reporter)


def reconcile(engine: Engine, run_ids: list[str], server_running: bool) -> str | None:
    """Before showing runs: judge the active phases nobody supervises (a detached phase whose container ended).
    Returns a note when the engine could not be asked (the statuses shown may be stale)."""
    note = None
    for run_id in run_ids:
        if needs_reconcile(engine.store, run_id, server_running):
            try:
                engine.refresh(run_id)
            except EngineUnavailable as exc:
                note = f"note: {exc}; statuses may be stale"
    return note


def live_view(engine: Engine, phase_id: int) -> dict[str, Any] | None:
    """The live view of an active phase rebuilt from the store; None when it cannot be (a spec gone, a bad row)."""
    try:
        return engine.view(phase_id)
    except (RunnerError, OSError, ValueError):
        return None


def run_document(engine: Engine, run_id: str) -> dict[str, Any]:
    """One run as `runner status RUN -o json` and the web page's /api/runs/RUN show it: the run view with every
    event, and each active phase's live view under "live"."""
    doc = run_view(engine.store, run_id, events=True)
    for p, row in zip(doc["phases"], engine.store.phases(run_id)):
        if row["status"] in ACTIVE:
            p["live"] = live_view(engine, row["id"])
    return doc


def stop(engine: Engine, run_id: str) -> tuple[bool, list[PhaseResult]]:
    """Cancel a run: (whether it was still queued, the phases stopped)."""
    queued = engine.store.submission_state(run_id) == "queued"
    return queued, engine.stop_run(run_id)


def phase_log(engine: Engine, run_id: str, phase: str | None, follow: bool = False) -> Iterator[bytes]:
    """A phase's container output (default: the run's last phase): from the engine while it has the container,
    else the saved copy in the phase folder."""
    row = pick_phase(engine.store, run_id, phase)
    if row["container_id"]:
        try:
            stream = engine.backend.logs(row["container_id"], follow=follow)
            first = next(stream, None)  # the engine answers (or raises) before anything is written
        except RunnerError:
            pass  # container removed or engine down: fall back to the saved copy
        else:
            if first is not None:
                yield first
            yield from stream
            return
    log = Path(row["log_path"] or "")
    if not log.is_file():
        raise NotFound(f"no logs for phase {row['name']} of run {run_id} (it never started)")
    yield log.read_bytes()
