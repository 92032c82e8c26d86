"""The engine: runs one phase from spec to recorded outcome.

The CLI and the daemon call the same methods.  Every transition is written to
the store before its side effect; containers carry labels and deterministic
names, so a restarted runner can tell what already happened.

A phase ends in exactly one recorded status:
  succeeded / failed (exit code, OOM, timeout) / cancelled (Ctrl-C, runner stop)
  / error (the engine refused: image missing, no GPU runtime, ...) / lost.
Losing the terminal (SIGHUP) or the runner process never stops a container:
the phase is recorded *detached* and can be picked up again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from runner.backends.base import Backend, ContainerState
from runner.errors import ContainerNotFound, EngineUnavailable, LaunchError, RunnerError
from runner.plan import LaunchPlan, build_plan
from runner.spec import load_spec
from runner.store import ACTIVE, Store
from runner.units import format_duration

POLL_S = 0.5
ENGINE_RETRY_S = 120.0  # how long supervision rides out an unreachable engine before detaching


class Reporter(Protocol):
    """Where the engine tells a person what is happening (a terminal, a log, a test)."""

    def info(self, message: str) -> None: ...
    def log_line(self, line: str) -> None: ...
    def progress(self, text: str) -> None: ...


class QuietReporter:
    def info(self, message: str) -> None:
        pass

    def log_line(self, line: str) -> None:
        pass

    def progress(self, text: str) -> None:
        pass


@dataclass
class PhaseResult:
    run_id: str
    phase_id: int
    phase: str
    status: str
    reason: str = ""
    exit_code: int | None = None
    container_id: str | None = None


@contextlib.contextmanager
def _ignoring_sigint():
    """A second Ctrl-C must not interrupt the stop that the first one asked for."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


class Engine:
    def __init__(self, store: Store, backend: Backend | Callable[[], Backend], runs_dir: str | Path,
                 reporter: Reporter | None = None, poll_s: float = POLL_S):
        self.store = store
        self._backend = backend
        self.runs_dir = Path(runs_dir).resolve()
        self.reporter = reporter or QuietReporter()
        self.poll_s = poll_s
        self.detach_requested = threading.Event()

    @property
    def backend(self) -> Backend:
        """The backend, connected on first use (validate/status work without an engine)."""
        if isinstance(self._backend, type) or not hasattr(self._backend, "launch"):
            self._backend = self._backend()
        return self._backend  # type: ignore[return-value]

    # ------------------------------------------------------------------ apply

    def apply(self, spec_path: str | Path, inputs: dict[str, str] | None = None, detach: bool = False) -> PhaseResult:
        """Validate, plan, launch and (unless ``detach``) supervise one phase to its end."""
        loaded = load_spec(spec_path)
        run_id = new_run_id()
        plan = build_plan(loaded, inputs or {}, run_id, self.runs_dir)
        self.store.create_run(run_id, str(loaded.path))
        phase_id = self.store.add_phase(
            run_id, plan.phase, str(loaded.path), loaded.sha256, plan.inputs,
            container_name=plan.container_name, log_path=str(Path(plan.phase_dir) / "container.log"),
            plan_json=json.dumps(dataclasses.asdict(plan)),
        )
        self.reporter.info(f"run {run_id}: phase {plan.phase} ({plan.image})")
        container_id = self.launch(phase_id, plan)
        if detach:
            self.reporter.info(f"detached: container {container_id[:12]} runs on; follow with `runner logs {run_id} -f`")
            return self._result(phase_id)
        return self.supervise(phase_id, plan, container_id)

    def launch(self, phase_id: int, plan: LaunchPlan) -> str:
        """Preflight, record ``launching``, create+start the container, record ``running``.

        Any refusal is recorded as status ``error`` with the reason and re-raised."""
        try:
            self.backend.ping()
            self.backend.check_image(plan.image)
            self._prepare_mounts(plan)
            Path(plan.phase_dir).mkdir(parents=True, exist_ok=True)
            self.store.transition(phase_id, "launching", f"creating container {plan.container_name}")
            container_id = self.backend.launch(plan)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, RunnerError) else f"internal error: {type(exc).__name__}: {exc}"
            self.store.transition(phase_id, "error", reason, finished_at=time.time())
            raise
        self.store.transition(phase_id, "running", f"container {container_id[:12]} started",
                              container_id=container_id, started_at=time.time())
        return container_id

    @staticmethod
    def _prepare_mounts(plan: LaunchPlan) -> None:
        for m in plan.mounts:
            if os.path.exists(m.source):
                continue
            if m.create:
                os.makedirs(m.source, exist_ok=True)
            else:
                raise LaunchError(f"mount source {m.source} does not exist",
                                  "create it, or set create: true on the mount for an output folder")

    # ------------------------------------------------------------------ supervise

    def supervise(self, phase_id: int, plan: LaunchPlan, container_id: str) -> PhaseResult:
        """Follow a running container to its end: logs to container.log and the reporter,
        timeout, stop requests, detach requests.  Returns the recorded outcome."""
        log_path = Path(plan.phase_dir) / "container.log"
        pump = threading.Thread(target=self._pump_logs, args=(container_id, log_path), daemon=True)
        pump.start()
        try:
            return self._follow(phase_id, plan, container_id, pump)
        except KeyboardInterrupt:
            # Ctrl-C is a person asking to stop: the one signal that stops training.
            self.reporter.info(f"Ctrl-C: stopping {plan.container_name} (SIGTERM, up to {plan.stop_grace:g}s grace, then SIGKILL)")
            with _ignoring_sigint():
                self.cancel(phase_id)
            pump.join(timeout=5)
            return self._result(phase_id)

    def _follow(self, phase_id: int, plan: LaunchPlan, container_id: str, pump: threading.Thread) -> PhaseResult:
        started = time.monotonic()
        unreachable_since: float | None = None
        stopping = False
        while True:
            if self.detach_requested.is_set():
                self.store.transition(phase_id, "detached", "runner left; the container keeps running", expect=ACTIVE)
                return self._result(phase_id)
            try:
                state = self.backend.inspect(container_id)
                unreachable_since = None
            except EngineUnavailable as exc:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > ENGINE_RETRY_S:
                    self.store.transition(phase_id, "detached", f"lost contact with the engine: {exc}", expect=ACTIVE)
                    return self._result(phase_id)
                self.reporter.progress(f"engine unreachable, retrying: {exc}")
                time.sleep(self.poll_s)
                continue
            except ContainerNotFound:
                self.store.transition(phase_id, "lost", "the container disappeared from the engine", expect=ACTIVE,
                                      finished_at=time.time())
                return self._result(phase_id)
            if state.ended:
                break
            elapsed = time.monotonic() - started
            if plan.timeout is not None and elapsed > plan.timeout and not stopping:
                stopping = True
                self.store.event(plan.run_id, phase_id, "phase.timeout", f"timeout {format_duration(plan.timeout)} reached; stopping")
                self.store.update(phase_id, reason=f"timeout after {format_duration(plan.timeout)}")
                self._stop_async(container_id, plan.stop_grace)
            self.reporter.progress(f"{format_duration(elapsed)}  {plan.phase}  {state.status}")
            time.sleep(self.poll_s)
        pump.join(timeout=10)
        return self.finish(phase_id, state)

    def finish(self, phase_id: int, state: ContainerState) -> PhaseResult:
        """Record the outcome of an ended container, once (a second caller changes nothing)."""
        row = self.store.phase(phase_id)
        if row["stop_requested"]:
            status, reason = "cancelled", "stopped on request"
        elif row["reason"].startswith("timeout"):
            status, reason = "failed", row["reason"]
        elif state.oom_killed:
            status, reason = "failed", "killed: out of memory (the container hit its memory limit)"
        elif state.exit_code == 0:
            status, reason = "succeeded", "exit code 0"
        else:
            status, reason = "failed", f"exit code {state.exit_code}" + (f": {state.error}" if state.error else "")
        self.store.transition(phase_id, status, reason, expect=ACTIVE, exit_code=state.exit_code,
                              oom_killed=int(state.oom_killed), finished_at=time.time())
        return self._result(phase_id)

    def _stop_async(self, container_id: str, grace: float) -> None:
        threading.Thread(target=self._stop_quietly, args=(container_id, grace), daemon=True).start()

    def _stop_quietly(self, container_id: str, grace: float) -> None:
        try:
            self.backend.stop(container_id, grace)
        except RunnerError as exc:
            self.reporter.info(f"stop failed: {exc}")

    def _pump_logs(self, container_id: str, log_path: Path) -> None:
        """Copy the container's output to container.log and to the reporter, line by line."""
        partial = b""
        try:
            with open(log_path, "ab") as out:
                for chunk in self.backend.logs(container_id, follow=True):
                    out.write(chunk)
                    out.flush()
                    lines = (partial + chunk).split(b"\n")
                    partial = lines.pop()
                    for line in lines:
                        self.reporter.log_line(line.decode("utf-8", "replace"))
                if partial:
                    self.reporter.log_line(partial.decode("utf-8", "replace"))
        except RunnerError as exc:
            self.reporter.info(f"log stream ended: {exc}")

    # ------------------------------------------------------------------ cancel, stop, refresh

    def cancel(self, phase_id: int, wait: bool = True) -> None:
        """Stop a phase's container on request (SIGTERM, grace period, SIGKILL); records *cancelled*."""
        row = self.store.phase(phase_id)
        self.store.update(phase_id, stop_requested=1)
        self.store.event(row["run_id"], phase_id, "phase.stop-requested", f"stop requested for phase {row['name']}")
        if not row["container_id"]:
            self.store.transition(phase_id, "cancelled", "stopped before launch", expect=ACTIVE, finished_at=time.time())
            return
        plan = json.loads(row["plan_json"] or "{}")
        self.backend.stop(row["container_id"], float(plan.get("stop_grace", 30)))
        if wait:
            self.finish(phase_id, self.backend.inspect(row["container_id"]))

    def stop_run(self, run_id: str) -> list[PhaseResult]:
        """Cancel every active phase of a run."""
        out = []
        for row in self.store.phases(run_id):
            if row["status"] in ACTIVE:
                self.cancel(row["id"])
                out.append(self._result(row["id"]))
        return out

    def refresh(self, run_id: str) -> None:
        """Bring active phases up to date with the engine (for a phase nobody is supervising)."""
        for row in self.store.phases(run_id):
            if row["status"] not in ("running", "detached") or not row["container_id"]:
                continue
            try:
                state = self.backend.inspect(row["container_id"])
            except ContainerNotFound:
                self.store.transition(row["id"], "lost", "the container disappeared from the engine",
                                      expect=ACTIVE, finished_at=time.time())
                continue
            if state.ended:
                self.finish(row["id"], state)

    def _result(self, phase_id: int) -> PhaseResult:
        row = self.store.phase(phase_id)
        return PhaseResult(row["run_id"], phase_id, row["name"], row["status"], row["reason"], row["exit_code"], row["container_id"])
