"""What the commands do to recorded runs through the engine (stop, logs, status's reconcile): below the CLI, so
tests and the server call it the same way. Rendering stays in runner/cli."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from runner.lifecycle import S
from runner.errors import ContainerNotFound, EngineUnavailable, NotFound, RunnerError
from runner.runs.queries import needs_reconcile, pick_phase
from runner.store import ACTIVE, Store
from runner.supervisor import Holder, Role, holder
from runner.runs.views import run_view

if TYPE_CHECKING:
    from runner.engine import Engine, PhaseResult, Reporter


def open_engine(state: Path, reporter: Reporter | None = None, role: str = Role.TERMINAL,
                lock_wait_s: float = 0.0) -> Engine:
    """An engine for the run store at ``state`` (runs live in its folder), on the backend its folder's
    backend.yaml names (default: the local Docker engine), supervising as ``role``."""
    from runner.backends.select import backend_factory
    from runner.engine import Engine

    return Engine(Store(state), backend_factory(state.parent), state.parent, reporter, role=role,
                  lock_wait_s=lock_wait_s)


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


@dataclass
class Stopping:
    """What `runner stop` set going: whether the run was still queued, the phases being stopped, and who stops them
    (the run's supervisor, or this process when nobody supervises it)."""

    queued: bool
    phases: Sequence[dict]
    by: Holder | None


def _supervisor(engine: Engine, run_id: str) -> Holder | None:
    """The run's supervisor that a stop can be asked of (None: nobody, or a lock naming no runner process)."""
    by = holder(engine.runs_dir, run_id)
    return by if by is not None and by.named else None


def request_stop(engine: Engine, run_id: str) -> Stopping:
    """Cancel a run: nothing more starts, and each active phase is asked to stop.  A phase whose run has a supervisor
    (a terminal, a background supervisor, the server) is stopped by it: the request is recorded and the supervisor
    acts on it within a second, ending the phase with its own session (vault, validation).  A phase that never got
    a container is cancelled here.  Returns at once; ``finish_stop`` waits for the ends."""
    from runner.engine import request_stop as record

    queued = engine.store.submission_state(run_id) == "queued"
    engine.store.cancel_submission(run_id)
    by = _supervisor(engine, run_id)
    rows = [r for r in engine.store.phases(run_id) if r["status"] in ACTIVE]
    for row in rows:
        if by is not None and row["status"] != S.PENDING:
            record(engine.store, row)
        elif not row["container_id"] and row["status"] == S.PENDING:
            engine.cancel(row["id"])
    return Stopping(queued, rows, by)


def finish_stop(engine: Engine, stopping: Stopping, poll_s: float = 0.3) -> list[PhaseResult]:
    """Wait until every phase ``request_stop`` asked to stop has ended, and return how each ended.  Phases nobody
    supervises (or whose supervisor left meanwhile) are stopped here: SIGTERM, the grace period, SIGKILL."""
    ids = [r["id"] for r in stopping.phases]
    while True:
        active = [r for r in (engine.store.phase(i) for i in ids) if r["status"] in ACTIVE]
        if not active:
            break
        if _supervisor(engine, active[0]["run_id"]) is None:
            for row in active:
                engine.cancel(row["id"])
            break
        time.sleep(poll_s)
    return [engine.result(i) for i in ids]


def stop(engine: Engine, run_id: str) -> tuple[bool, list[PhaseResult]]:
    """Cancel a run and wait for its phases to end: (whether it was still queued, how the phases ended)."""
    stopping = request_stop(engine, run_id)
    return stopping.queued, finish_stop(engine, stopping)


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


@dataclass
class Removal:
    """What `runner rm`/`prune` removed (or, with dry_run, would remove) of one run."""

    run_id: str
    containers: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # best checkpoints left in the vault (prune --keep-best)
    refused: str = ""  # why nothing was removed (an active phase)


def remove_run(engine: Engine, run_id: str, dry_run: bool = False, keep_best: bool = False) -> Removal:
    """Remove a finished run: its containers (phases and validation runs), its folder and its vault copies, then its
    records.  Never a run with an active phase (a chain still to run needs its handed-over checkpoint).  With
    ``keep_best`` the vault's best checkpoint of each phase stays, and so do the records (`checkpoints`,
    `export --best` still work).  The engine is asked first: when it cannot be, nothing is removed."""
    from runner.plan import LABEL_RUN, vault_root

    phases = engine.store.phases(run_id)
    out = Removal(run_id)
    active = [p["name"] for p in phases if p["status"] in ACTIVE]
    if active or engine.store.submission_state(run_id) == "queued":
        out.refused = f"run {run_id} is not finished ({', '.join(active) or 'queued'}): `runner stop {run_id}` first"
        return out
    found = engine.backend.find({LABEL_RUN: run_id})
    running = [c.name for c in found if c.running]
    if running:  # recorded as ended, yet still running (a stop that failed): never killed by a clean-up
        out.refused = f"run {run_id}: container(s) {', '.join(running)} still running; stop them first"
        return out
    out.containers = sorted({c.id for c in found} | {p["container_id"] for p in phases if p["container_id"]})
    runs_dir = Path(engine.runs_dir)
    best = {p["outputs"].get("best_checkpoint") for p in phases if (p["outputs"] or {}).get("best_checkpoint")} \
        if keep_best else set()
    vault = vault_root(runs_dir) / run_id
    out.folders = [str(f) for f in (runs_dir / run_id,) if f.exists()]
    if vault.exists():
        if best:
            out.kept = sorted(b for b in best if Path(b).exists())
            out.folders += [str(f) for f in sorted(vault.rglob("*")) if f.is_file() and str(f) not in best
                            and not any(str(f).startswith(b + "/") for b in best)]
        else:
            out.folders.append(str(vault))
    if dry_run:
        return out
    for cid in out.containers:
        try:
            engine.backend.remove(cid)
        except (NotFound, ContainerNotFound):
            pass  # already gone
    for f in out.folders:
        _remove_tree(Path(f))
    if keep_best:
        for p in phases:
            for c in engine.store.checkpoints(p["id"]):
                if c["vault_path"] not in best and c["state"] in ("kept", "best", "trash"):
                    engine.store.checkpoint_update(p["id"], c["name"], state="pruned")
    else:
        engine.store.delete_run(run_id)
    return out


def prunable(engine: Engine, older_than_s: float, now: float | None = None) -> list[str]:
    """Finished runs whose last phase ended (or that were created, if none ran) more than ``older_than_s`` ago."""
    import time

    now = time.time() if now is None else now
    out = []
    for run in engine.store.runs(limit=1_000_000):
        phases = engine.store.phases(run["id"])
        if any(p["status"] in ACTIVE for p in phases):
            continue
        ended = max([p["finished_at"] or 0.0 for p in phases] + [run["created_at"]])
        if now - ended > older_than_s:
            out.append(run["id"])
    return out


def _remove_tree(path: Path) -> None:
    """Remove a file or folder, vaulted read-only copies included; never follows a link out of it."""
    import os
    import shutil
    import stat

    def writable(func: Any, p: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(p), stat.S_IRWXU)
        if not os.path.islink(p) and os.path.isdir(p):
            os.chmod(p, stat.S_IRWXU)
        func(p)

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, onerror=writable)
