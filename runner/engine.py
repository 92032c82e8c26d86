"""The engine: runs phases from spec to recorded outcome, and chains them.

The CLI and the daemon call the same methods.  Every transition is written to
the store before its side effect; containers carry labels and deterministic
names, so a restarted runner can tell what already happened.

A phase ends in exactly one recorded status:
  succeeded / failed / inconclusive (the verdict on an ended container)
  / cancelled (Ctrl-C, runner stop) / blocked (a precondition is unmet)
  / error (the engine refused: image missing, no GPU runtime, ...) / lost.
Losing the terminal (SIGHUP) or the runner process never stops a container:
the phase is recorded *detached* and can be picked up again.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

from runner import chain, faults, graph, preconditions
from runner.backends.base import Backend, ContainerState
from runner.criteria import Evidence, Trip, verdict as judge_verdict
from runner.metrics.series import MetricSet
from runner.errors import (ContainerNotFound, EngineUnavailable, ImageMissing, LaunchError, LaunchRefused, Problem, Refused, RunnerError,
                           SpecError, Temporary)
from runner.outputs import at_checkpoint, phase_outputs
from runner.plan import BindMount, LaunchPlan, launch_plan, merge_inputs, resolve
from runner.policy import MountPolicy, StatePaths, host_memory, launch_problems, missing_sources
from runner.spec import LoadedSpec, load_spec
from runner.spec.models import Phase
from runner.logfile import ContainerLog, LineSplitter
from runner.lifecycle import NOT_FOUND, STATUS_OF_VERDICT, Act, Container, F, PhaseView, failure_names, next_action
from runner.outputs import context
from runner.spec import interpolate
from runner.settings import load_settings
from runner.store import ACTIVE, Store
from runner.supervisor import Role, SupervisorLock
from runner.preconditions import abs_path
from runner.session import PhaseSession
from runner.units import format_duration

POLL_S = 0.5
WAKE_MIN_S = 0.05  # the most often new data makes a supervisor read its sources and run its guards
STOP_CHECK_S = 0.5  # how often a supervisor looks for a `runner stop` recorded by another process
EARLY_STOP_S = 60.0  # a stop this soon after the start may come before the trainer installed its SIGTERM handler
ENGINE_RETRY_S = 120.0  # how long supervision rides out an unreachable engine before detaching


class Reporter(Protocol):
    """Where the engine tells a person what is happening (a terminal, a log, a test)."""

    def info(self, message: str) -> None: ...
    def log_line(self, line: str) -> None: ...
    def progress(self, text: str) -> None: ...
    def live(self, phase: str, view: dict) -> None: ...


class QuietReporter:
    def info(self, message: str) -> None:
        pass

    def log_line(self, line: str) -> None:
        pass

    def progress(self, text: str) -> None:
        pass

    def live(self, phase: str, view: dict) -> None:
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
    verdict: str | None = None
    decision: chain.Decision | None = None


@dataclass
class RunResult:
    run_id: str
    phases: list[PhaseResult] = field(default_factory=list)

    @property
    def last(self) -> PhaseResult:
        return self.phases[-1]


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


@contextlib.contextmanager
def _deferring_sigint():
    """Ctrl-C while a container is being created: remembered (the event returned), not raised in the middle
    of the create/record steps (where it would leave a container nobody stops); the caller acts on it once
    the launch is settled.  Outside the main thread (the server) nothing changes."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


class Slots(Protocol):
    """Who may launch now.  The server's scheduler hands out GPU ids and CPU slots in queue order."""

    def acquire(self, phase_id: int, plan: LaunchPlan) -> LaunchPlan | None:
        """Block until the phase may launch; return the plan with the granted devices
        (None: the server is shutting down and the phase stays pending)."""

    def claim(self, phase_id: int, plan: LaunchPlan) -> None:
        """Record that an already running phase holds its plan's devices (re-adoption)."""

    def release(self, phase_id: int) -> None:
        """The phase no longer runs (idempotent)."""


class PassThrough:
    """A remote backend's slots: the plan goes as written (a GPU count stays a count: Slurm picks the
    devices on the node it allocates), and waiting for resources is the cluster's queue."""

    def acquire(self, phase_id: int, plan: LaunchPlan) -> LaunchPlan:
        return plan

    def claim(self, phase_id: int, plan: LaunchPlan) -> None:
        pass

    def release(self, phase_id: int) -> None:
        pass


class Unlimited:
    """The foreground: every phase may launch at once, with the devices its spec asks for.

    A count N becomes the device ids 0..N-1, the ones Docker's NVIDIA driver gives a count:
    asked for by id, the recorded plan names exactly the devices the container gets (and
    gpu_memory_free checks those).  ``all`` stays ``all`` (the foreground keeps no inventory)."""

    def acquire(self, phase_id: int, plan: LaunchPlan) -> LaunchPlan:
        if isinstance(plan.gpus, int) and plan.gpus > 0:
            return dataclasses.replace(plan, gpus=tuple(str(i) for i in range(plan.gpus)))
        return plan

    def claim(self, phase_id: int, plan: LaunchPlan) -> None:
        pass

    def release(self, phase_id: int) -> None:
        pass


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def _ended_with_the_engine(sup: PhaseSession, state: ContainerState) -> bool:
    """Whether the container ended during an outage of the engine seen while supervising (runner did
    not stop it: no guard, no criteria met early, no planned end)."""
    if not sup.engine_outages or sup.trip or sup.met_early or sup.end_reached is not None:
        return False
    from datetime import datetime

    try:  # Docker: 2026-11-27T07:25:40.123456789Z (nanoseconds; Python parses microseconds)
        text = (state.finished_at or "").rstrip("Z")
        head, _, frac = text.partition(".")
        ended = datetime.fromisoformat(head + ("." + frac[:6] if frac else "") + "+00:00").timestamp()
    except ValueError:
        return False
    # Ended while the engine was away (or as it came back up): a live-restored container that ends
    # later, on its own, is not an interruption.
    return any(down - 1.0 <= ended <= (back or time.time()) + 2.0 for down, back in sup.engine_outages)


def _planned_end(phase: Phase | None, sup: PhaseSession | None) -> int | None:
    """The step the phase is meant to reach: its stop_at, else metrics.total_steps."""
    if sup is not None and sup.guards.planned_end is not None:
        return sup.guards.planned_end
    return phase.metrics.total_steps if phase is not None and phase.metrics is not None else None


def declared_inputs(loaded: LoadedSpec) -> set[str]:
    return set((loaded.doc.data or {}).get("inputs") or {})


def chain_inputs(loaded: LoadedSpec, given: dict[str, str]) -> dict[str, str]:
    """The ``--input`` values the first spec declares.  An input only a later spec of the chain
    declares (e.g. restart_from_base's base_model) is fine: it is applied when that spec runs.
    A name no spec of the chain declares is a located error (a typo must not pass silently)."""
    mine = declared_inputs(loaded)
    extra = sorted(k for k in given if k not in mine)
    if extra:
        from runner import graph

        try:
            specs = graph.build(loaded.path, loaded, given).specs.values()  # --input may give a later spec's required input
        except SpecError:
            specs = [loaded]  # the chain's own errors are reported by plan; judge the names on this spec
        chain = set().union(*(declared_inputs(s) for s in specs))
        unknown = [k for k in extra if k not in chain]
        if unknown:
            line, col = loaded.doc.position(("inputs",))
            known = ", ".join(sorted(chain)) or "none"
            raise SpecError([Problem(str(loaded.path), line, col, "inputs",
                                     f"--input {name}: no spec of this chain declares such an input (declared: {known})")
                             for name in unknown])
    return {k: v for k, v in given.items() if k in mine}


class LaunchChecked:
    """A backend whose ``launch`` refuses a plan the policy refuses (LaunchRefused, recorded by the caller);
    everything else is the backend's own."""

    def __init__(self, inner: Backend, check: Callable[[LaunchPlan], list[str]]):
        self.inner = inner
        self._check = check

    def launch(self, plan: LaunchPlan) -> str:
        problems = self._check(plan)
        if problems:
            raise LaunchRefused("refused to create " + plan.container_name + ": " + "; ".join(problems),
                                "the policy is checked again where every container is created")
        return self.inner.launch(plan)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class Engine:
    def __init__(self, store: Store, backend: Backend | Callable[[], Backend], runs_dir: str | Path,
                 reporter: Reporter | None = None, poll_s: float = POLL_S, role: str = Role.TERMINAL,
                 lock_wait_s: float = 0.0):
        self.store = store
        # Who this engine supervises as (runner status shows it), and how long `drive` waits for a supervisor
        # that is leaving (a background supervisor attach takes over from, a terminal handing over to the server).
        self.role = role
        self.lock_wait_s = lock_wait_s
        self._backend = backend
        self.runs_dir = Path(runs_dir).resolve()
        self.reporter = reporter or QuietReporter()
        self.poll_s = poll_s
        self.detach_requested = threading.Event()
        # The server puts its GPU/CPU scheduler here.  A remote backend (Slurm) queues and allocates itself.
        self.slots: Slots = PassThrough() if getattr(backend, "remote", False) else Unlimited()
        self.policy: MountPolicy | None = None  # the server's mount policy; None in the foreground
        # runner's own state (the run store, the vault; the server adds its inbox): never mountable, in any mode
        self.state_paths = StatePaths.of(self.runs_dir)
        self._checked: Backend | None = None
        self._pumped = 0.0  # monotonic time the log pump last passed lines on
        self._interrupt_pending = False  # a Ctrl-C deferred through a launch, acted on by the follow loop
        self.persistent = False  # the server keeps supervising through engine outages instead of detaching
        # Temporary launch errors (engine unreachable): first wait, doubling up to a minute.
        self.retry_base_s = 1.0
        self._launch_retry_s: float | None = None

    @property
    def backend(self) -> Backend:
        """The backend, connected on first use (validate/status work without an engine), behind the launch
        check: every container runner creates (phase, retry, chain step, re-adopted pending phase,
        validation run) passes ``launch_problems`` where it is created, whatever plan the store held."""
        if isinstance(self._backend, type) or not hasattr(self._backend, "launch"):
            self._backend = self._backend()
        if self._checked is None or self._checked.inner is not self._backend:  # type: ignore[attr-defined]
            self._checked = LaunchChecked(self._backend, self.launch_problems)  # type: ignore[arg-type]
        return self._checked

    def launch_problems(self, plan: LaunchPlan) -> list[str]:
        remote = getattr(self._backend, "remote", False)  # a Slurm node's memory is not this host's
        return launch_problems(plan, self.state_paths, self.policy, None if remote else host_memory())

    # ------------------------------------------------------------------ apply, drive, chain

    def apply(self, spec_path: str | Path, inputs: dict[str, str] | None = None, detach: bool = False) -> RunResult:
        """Run a spec and, unless ``detach``, every phase its `next:` rules chain after it.

        An engine that does not answer at all is a one-line error before anything is recorded; a
        temporary error once the run is under way is retried (``_launch_retrying``)."""
        graph.build(spec_path, inputs=inputs or {})  # a bad spec, or a broken chain, is said first, engine or not
        self.backend.ping()
        run_id = self.submit(spec_path, inputs or {}, source="apply", state="started")
        result = self.drive(run_id, detach=detach)
        if not any(p["status"] in ACTIVE for p in self.store.phases(run_id)):
            # Done: a later submission of the same spec (the inbox's dedupe) is not "already running".
            self.store.set_submission(run_id, "done", f"ended: {result.last.status}" if result.phases else "ended")
        return result

    def submit(self, spec_path: str | Path, inputs: dict[str, str], source: str, priority: int = 0,
               state: str = "queued") -> str:
        """Validate and plan a spec (spec errors: nothing is recorded), then record a run for it."""
        loaded = load_spec(spec_path)
        graph.build(loaded.path, loaded, inputs)  # the whole chain: next: specs load, inputs, loops bounded
        run_id = new_run_id()
        self.plan(loaded, chain_inputs(loaded, inputs), run_id)
        self.store.submit(run_id, str(loaded.path), loaded.sha256, inputs, source, priority, state)
        return run_id

    def drive(self, run_id: str, detach: bool = False) -> RunResult:
        """Carry a run forward from whatever the store says, until its chain ends.

        The one entry for `apply`, `attach` and the daemon (also after a restart): each
        step reads the recorded state and does the next thing, and every step is
        recorded before its side effect, so a runner killed anywhere resumes here
        without launching anything twice or deciding a chain twice.

        One supervisor per run: the run's supervisor lock is held throughout (``Refused`` when another
        process supervises it)."""
        lock = SupervisorLock(self.runs_dir, run_id, self.role)
        other = lock.acquire(self.lock_wait_s)
        if other is not None:
            hint = (f"`runner attach {run_id}` takes over from it" if other.role == Role.BACKGROUND
                    else f"`runner status {run_id}` and `runner logs {run_id} -f` show how it goes")
            raise Refused(f"run {run_id} is supervised by {other.describe()}; one supervisor at a time", hint)
        try:
            return self._drive_locked(run_id, detach)
        finally:
            lock.release()

    def _drive_locked(self, run_id: str, detach: bool) -> RunResult:
        try:
            return self._drive(run_id, detach)
        except KeyboardInterrupt:
            # Ctrl-C before a phase's container was created (waiting for its turn, checking preconditions): the
            # phase is cancelled, not left pending for the next runner to launch.
            # Between two steps (after the launch was recorded, before following it): stopped like any Ctrl-C.
            with _ignoring_sigint():
                for p in self.store.phases(run_id):
                    if p["status"] == "pending":
                        self.store.transition(p["id"], "cancelled", "Ctrl-C before the container was created",
                                              failure_kind=str(F.CANCELLED), expect=frozenset({"pending"}), finished_at=time.time())
                    elif p["status"] in ("launching", "running") and not self.persistent:
                        self.reporter.info(f"Ctrl-C: stopping phase {p['name']}")
                        self.cancel(p["id"])
            raise

    def _drive(self, run_id: str, detach: bool) -> RunResult:
        run = RunResult(run_id)
        while not self.detach_requested.is_set():
            if self.store.submission_state(run_id) == "cancelled" and not any(
                    p["status"] in ACTIVE for p in self.store.phases(run_id)):
                break  # `runner stop`: nothing more starts
            phases = self.store.phases(run_id)
            last = phases[-1] if phases else None
            decided = self._decided_next(last) if last is not None and last["status"] not in ACTIVE else None
            act = next_action(PhaseView.of(last, decided and decided["next"]) if last is not None else None)
            if act == Act.PLAN:
                sub = self.store.submission(run_id)
                result = self._start(run_id, sub["spec_path"], sub["inputs"], detach)
            elif act == Act.LAUNCH:
                result = self._run_pending(last["id"], detach)
            elif act == Act.FIND_CONTAINER:
                self._recover_launching(last)
                continue
            elif act == Act.SUPERVISE:
                if detach or (run.phases and run.phases[-1].phase_id == last["id"] and not self.persistent):
                    return _record(run, self._result(last["id"]))
                result = self._readopt(last)
            elif act == Act.DECIDE:
                result = self._decide(last["id"], self._restored(last["id"], _phase_of(last), _folder(last)))
            elif act == Act.START_NEXT:
                result = self._start(run_id, decided["next"], decided["inputs"], detach, after=last)
            else:  # Act.DONE
                if not run.phases or run.phases[-1].phase_id != last["id"]:
                    _record(run, self._result(last["id"]))
                return run
            _record(run, result)
        if not run.phases:
            phases = self.store.phases(run_id)
            run.phases.append(self._result(phases[-1]["id"]) if phases else PhaseResult(run_id, 0, "-", "pending"))
        return run

    def attach(self, run_id: str) -> RunResult:
        """Re-adopt a run's detached (or unsupervised running) phase: metrics continue from the
        stored points and offsets, guards and criteria apply, then the verdict and the chain."""
        phases = self.store.phases(run_id)
        rows = [r for r in phases
                if (r["status"] in ("running", "detached") and r["container_id"]) or r["status"] == "launching"]
        if not rows:
            # A phase judged meanwhile (by `runner status`) whose chain has not moved on yet: attach
            # carries the chain on (decide, start the next phase); a run whose chain ended refuses.
            last = phases[-1] if phases else None
            decided = self._decided_next(last) if last is not None and last["status"] not in ACTIVE else None
            view = PhaseView.of(last, decided and decided["next"]) if last is not None else None
            unstarted_next = decided is not None and not any(p["id"] > last["id"] for p in phases)
            if last is None or last["status"] == "lost" or next_action(view) not in (Act.DECIDE, Act.START_NEXT) \
                    or (next_action(view) == Act.START_NEXT and not unstarted_next):
                raise Refused(f"run {run_id} has no running or detached phase to attach to",
                              f"`runner status {run_id}` shows how it ended")
        return self.drive(run_id)

    def _start(self, run_id: str, spec_path: str, inputs: dict, detach: bool, after: dict | None = None) -> PhaseResult:
        """Plan a spec as the run's next phase, record it *pending*, and run it."""
        try:
            loaded = load_spec(spec_path)
            # --input values given at submission reach every phase that declares them; a next
            # rule's `with:` wins over them.
            if after is None:
                inputs = {k: v for k, v in inputs.items() if k in declared_inputs(loaded)}
            else:
                inputs = {**self._run_inputs(run_id, loaded), **inputs}
            # A phase run again in this run (a retry, a chain that loops back) is attempt 2, 3, ...:
            # its own container name and folder, so nothing of the earlier attempt is overwritten.
            attempt = 1 + sum(1 for p in self.store.phases(run_id) if p["name"] == loaded.phase.name)
            phase, plan, _ = self.plan(loaded, inputs, run_id, attempt)
        except SpecError as exc:
            if after is not None:
                self.store.event(run_id, after["id"], "chain.error", f"next spec {spec_path} is invalid:\n{exc}")
            raise
        phase_id = self.store.add_phase(
            run_id, plan.phase, str(loaded.path), loaded.sha256, plan.inputs,
            container_name=plan.container_name, log_path=str(Path(plan.phase_dir) / "container.log"),
            plan_json=json.dumps(dataclasses.asdict(plan)), phase_json=phase.model_dump_json(by_alias=True),
        )
        return self._run_pending(phase_id, detach)

    def _run_inputs(self, run_id: str, loaded: LoadedSpec) -> dict:
        """The inputs given when the run was submitted (`--input`), for a chained spec that declares
        them: `--input image=...` reaches every phase of the chain.  A next rule's `with:` wins."""
        try:
            given = self.store.submission(run_id)["inputs"] or {}
        except RunnerError:
            return {}
        return {k: v for k, v in given.items() if k in declared_inputs(loaded)}

    def _run_pending(self, phase_id: int, detach: bool = False) -> PhaseResult:
        """Wait for resources, check preconditions, launch and supervise a recorded *pending* phase."""
        row = self.store.phase(phase_id)
        run_id, phase, folder = row["run_id"], _phase_of(row), _folder(row)
        plan = _stored_plan(row)
        try:
            granted = self.slots.acquire(phase_id, plan)
        except RunnerError as exc:  # can never fit (more GPUs than the server has)
            self.store.transition(phase_id, "error", str(exc), failure_kind=str(F.REFUSED), finished_at=time.time())
            return self._result(phase_id)
        if granted is None:  # the server is shutting down: the phase stays pending, resumed on restart
            return self._result(phase_id)
        if self.store.phase(phase_id)["status"] != "pending":  # stopped while it waited for its turn
            self.slots.release(phase_id)
            return self._result(phase_id)
        try:
            if granted != plan:
                plan = granted
                self.store.update(phase_id, plan_json=json.dumps(dataclasses.asdict(plan)))
            self.reporter.info(f"run {run_id}: phase {plan.phase} ({plan.image})")
            blocked = self._preconditions(run_id, phase_id, phase, plan, folder)
            if blocked:
                self.store.transition(phase_id, "blocked", blocked, failure_kind=str(F.PRECONDITION),
                                      finished_at=time.time(), decision="blocked: the chain ends")
                return self._result(phase_id)
            sup = PhaseSession.fresh(self.store, self.backend, phase_id, phase, folder, plan, self.reporter.info)
            sup.start()  # watching checkpoints before the trainer starts: none can slip by
            with _deferring_sigint() as interrupted:
                try:
                    if self.store.phase(phase_id)["status"] == "pending" and interrupted.is_set():
                        raise KeyboardInterrupt
                    container_id = self._launch_retrying(phase_id, plan)
                except KeyboardInterrupt:
                    sup.stop()
                    self.store.transition(phase_id, "cancelled", "Ctrl-C before the container was created",
                                          failure_kind=str(F.CANCELLED), expect=frozenset({"pending"}), finished_at=time.time())
                    raise
                except BaseException:
                    sup.stop()
                    raise
            if interrupted.is_set():
                # Ctrl-C arrived while the container was being created: it is stopped like any Ctrl-C
                # (supervise's handler), now that runner knows which container it is.
                self._interrupt_pending = True
            if detach:
                sup.stop()  # `runner attach` (or the server) takes over; rescans find what was written meanwhile
                self.reporter.info(f"detached: container {container_id[:12]} runs on; follow with `runner logs {run_id} -f`")
                return self._result(phase_id)
            result = self.supervise(phase_id, plan, container_id, sup)
        finally:
            self.slots.release(phase_id)
        if result.status in ("succeeded", "failed", "inconclusive") and result.verdict:
            return self._decide(phase_id, sup)
        return result

    def _recover_launching(self, row: dict) -> None:
        """The runner stopped between recording *launching* and recording the container: look
        for the container by its deterministic name before anything else happens."""
        found = self._launched_container(row)
        act = next_action(PhaseView.of(row), NOT_FOUND if found is None else Container(True, found.status))
        if act == Act.RELAUNCH and found is not None:
            # Created, never started: the runner stopped between the two calls.  Starting it now could
            # start a container whose mounts or GPUs were meant for a plan this run has moved past, so
            # it is removed (with a recorded reason) and the phase launched again from *pending*.
            self.backend.remove(found.id)
            self.store.transition(row["id"], "pending", f"container {found.id[:12]} was created but never started "
                                  "(the runner stopped in between); removed it, launching again",
                                  expect=frozenset({"launching"}))
        elif act in (Act.ADOPT, Act.JUDGE):  # an ended container is judged by the supervision that follows
            self.store.transition(row["id"], "running", f"found container {found.id[:12]} after a restart",
                                  expect=frozenset({"launching"}), container_id=found.id, started_at=time.time())
        else:
            self.store.transition(row["id"], "pending", "the runner stopped while launching and no container exists;"
                                  " launching it now", expect=frozenset({"launching"}))

    def _launched_container(self, row: dict):
        """The container a *launching* phase created, found by its deterministic name (or None)."""
        found = [c for c in self.backend.find({"runner.run-id": row["run_id"], "runner.phase": row["name"]})
                 if c.name == row["container_name"]]
        return found[0] if found else None

    def _readopt(self, row: dict) -> PhaseResult:
        """Supervise a phase whose container runs (or ran) while nobody watched it."""
        phase, plan = _phase_of(row), _stored_plan(row)
        sup = self._restored(row["id"], phase, _folder(row))
        if row["started_at"]:
            sup.set_started(row["started_at"])  # guards' timeouts count from the container's start too
        self.slots.claim(row["id"], plan)
        try:
            sup.start()  # the guard repairs the vault; its first rescan finds what was written meanwhile
            self.store.transition(row["id"], "running", "re-attached", expect=frozenset({"running", "detached"}))
            self.reporter.info(f"run {row['run_id']}: attached to phase {row['name']} (container {row['container_id'][:12]})")
            result = self.supervise(row["id"], plan, row["container_id"], sup, fresh_log=True)
        finally:
            self.slots.release(row["id"])
        if result.status in ("succeeded", "failed", "inconclusive") and result.verdict:
            return self._decide(row["id"], sup)
        return result

    def _decided_next(self, row: dict) -> dict | None:
        """The next spec and inputs a finished phase's recorded decision names, if any."""
        for e in reversed(self.store.events(row["run_id"])):
            if e["kind"] == "chain.decision" and e["phase_id"] == row["id"]:
                return e["data"] if e["data"].get("next") else None
        return None

    def _fired(self, run_id: str) -> dict:
        """How often each (spec, rule) fired in this run so far, from the recorded decisions."""
        fired: dict = {}
        for e in self.store.events(run_id):
            if e["kind"] == "chain.decision" and e["data"].get("next"):
                rule = e["data"].get("rule")
                spec = e["data"].get("spec")
                if rule is not None and spec:
                    fired[(spec, rule)] = fired.get((spec, rule), 0) + 1
        return fired

    def _restored(self, phase_id: int, phase: Phase, folder: Path) -> PhaseSession:
        """The phase's session rebuilt from the store (every path but a fresh launch)."""
        return PhaseSession.recover(self.store, self.backend, phase_id, phase, folder,
                                    _stored_plan(self.store.phase(phase_id)), self.reporter.info)

    def plan(self, loaded: LoadedSpec, inputs: dict[str, str], run_id: str, attempt: int = 1) -> tuple[Phase, LaunchPlan, dict]:
        """Pure apart from the policy: the resolved phase, its launch plan and the merged inputs (SpecError)."""
        merged = merge_inputs(loaded, inputs)
        phase = resolve(loaded, merged, run_id, self.runs_dir, attempt)
        plan = launch_plan(phase, loaded, merged, run_id, self.runs_dir, attempt)
        if getattr(self._backend, "remote", False) and not isinstance(plan.gpus, int):
            # Slurm allocates GPUs by count on the node it picks: `all` or device ids mean nothing there.
            line, col = loaded.doc.position(("container", "gpus"))
            given = "all" if plan.gpus == "all" else "device ids " + ", ".join(plan.gpus)
            raise SpecError([Problem(str(loaded.path), line, col, "container.gpus",
                                     f"{given}: under Slurm give a count (gpus: 2); Slurm picks the node and its GPUs")])
        problems = self.policy.problems(loaded, plan) if self.policy is not None else []
        for i, m in enumerate(plan.mounts[:len(phase.container.mounts)]):
            why = self.state_paths.source_problem(m.source, m.read_only)
            if why:
                line, col = loaded.doc.position(("container", "mounts", i, "source"))
                problems.append(Problem(str(loaded.path), line, col, f"container.mounts[{i}].source", why))
        if problems:
            raise SpecError(problems)
        return phase, plan, merged

    def _preconditions(self, run_id: str, phase_id: int, phase: Phase, plan: LaunchPlan, folder: Path) -> str:
        """'' when every precondition is met, else the reasons (each check is recorded)."""
        if not phase.preconditions:
            return ""

        def image_present() -> bool:
            try:
                self.backend.check_image(plan.image)
                return True
            except ImageMissing:
                return False

        earlier = {p["name"]: p for p in self.store.phases(run_id) if p["id"] != phase_id}
        unmet = []
        remote = getattr(self._backend, "remote", False) or getattr(self.backend, "remote", False)
        for pre in phase.preconditions:
            if remote and pre.gpu_memory_free is not None:
                # The node (and so its GPUs) is known only once Slurm starts the job.
                ok, text = True, "gpu_memory_free: not checked under Slurm (the node is chosen when the job starts)"
            elif remote and pre.image_present:
                ok, text = True, "image_present: not checked under Slurm (images live on the nodes; the job says if one is missing)"
            else:
                ok, text = preconditions.check(pre, preconditions.resolver(folder), gpus=plan.gpus,
                                               image_present=image_present, previous=earlier.get)
            self.store.event(run_id, phase_id, "precondition." + ("met" if ok else "unmet"), text)
            if not ok:
                unmet.append(text)
        return "; ".join(unmet)

    def _decide(self, phase_id: int, sup: PhaseSession) -> PhaseResult:
        """The chain decision of an ended phase, recorded once (with what `drive` needs to act on it):
        a retry of the same spec when its `retry:` policy covers how it failed, else its `next:` rules."""
        row = self.store.phase(phase_id)
        spec = row["spec_path"]
        d = self._retry_decision(row, sup)
        if d is None and row["status"] == "lost":
            d = chain.Decision(None, None, {}, "the container was lost and no retry applies; the chain ends")
        if d is None:
            counts = {rule: n for (s, rule), n in self._fired(row["run_id"]).items() if s == spec}
            d = chain.decide(_phase_of(row).next, row["verdict"], sup.metrics, {**row["outputs"], "name": row["name"]},
                             row["inputs"], {"id": row["run_id"], "dir": str(self.runs_dir / row["run_id"])}, _folder(row), counts,
                             failure_names(row))
        if self.store.record_decision(phase_id, d.reason, {"next": d.spec, "inputs": d.inputs, "rule": d.rule, "spec": spec}):
            self.reporter.info(f"next: {d.reason}")
        result = self._result(phase_id)
        result.decision = d
        return result

    def _retry_decision(self, row: dict, sup: PhaseSession):
        """A decision to run the same spec again (attempt N+1), or None.  Only infrastructure
        failures the spec's `retry.on` names; never a guard trip or a failed verdict."""
        policy = _phase_of(row).retry
        kinds = failure_names(row)
        if policy is None or not kinds:
            return None
        matched = sorted(k for k in kinds if k in policy.on)
        if not matched:
            return None
        earlier = [p for p in self.store.phases(row["run_id"]) if p["name"] == row["name"] and p["id"] <= row["id"]]
        retries_so_far = len(earlier) - 1
        if retries_so_far >= policy.max:
            self.store.event(row["run_id"], row["id"], "phase.retry-exhausted",
                             f"{row['name']} failed ({', '.join(matched)}); no retries left ({policy.max} used)")
            return None
        outputs = dict(row["outputs"] or {})
        if sup.ckpt is not None and not outputs.get("last_checkpoint"):
            outputs.update(sup.ckpt.outputs())  # a lost phase was never judged: its vault still says what it kept
        ctx = {**context(outputs), "inputs": row["inputs"], "run": {"id": row["run_id"], "dir": str(self.runs_dir / row["run_id"])}}
        ctx["phase"] = {**ctx["phase"], "name": row["name"]}
        with_inputs = {k: interpolate.substitute(v, ctx) if isinstance(v, str) else interpolate.as_text(v)
                       for k, v in policy.with_.items()}
        attempt = retries_so_far + 2
        return chain.Decision("retry", row["spec_path"], {**row["inputs"], **with_inputs},
                              f"retry {attempt - 1} of {policy.max} ({', '.join(matched)}): attempt {attempt} of "
                              f"{row['name']}" + (f" with {', '.join(f'{k}={v}' for k, v in with_inputs.items())}"
                                                  if with_inputs else ""))

    # ------------------------------------------------------------------ launch

    @property
    def launch_retry_s(self) -> float:
        """How long temporary launch errors are retried: RUNNER_LAUNCH_RETRY_S, else 10 minutes for the
        server (nobody watches it) and 30 s in the foreground (a person does)."""
        if self._launch_retry_s is not None:
            return self._launch_retry_s
        env = os.environ.get("RUNNER_LAUNCH_RETRY_S")
        return float(env) if env else (600.0 if self.persistent else 30.0)

    @launch_retry_s.setter
    def launch_retry_s(self, value: float) -> None:
        self._launch_retry_s = value

    def _launch_retrying(self, phase_id: int, plan: LaunchPlan) -> str:
        """``launch``, riding out temporary errors (engine unreachable, API timeout) with backoff: the
        phase stays pending (or launching) with the reason, each try recorded as ``phase.retry``.  After
        a failed try that got as far as *launching*, the container is looked up by its name first (the
        create may have reached the engine), so nothing is launched twice.  Gives up after
        ``launch_retry_s`` with the phase recorded *error*."""
        delay, deadline, tries = self.retry_base_s, time.monotonic() + self.launch_retry_s, 0
        while True:
            try:
                row = self.store.phase(phase_id)
                if row["status"] == "launching":
                    self._recover_launching(row)  # → running (found it) or pending (launch again)
                    row = self.store.phase(phase_id)
                    if row["status"] == "running":
                        return row["container_id"]
                return self.launch(phase_id, plan)
            except Temporary as exc:
                tries += 1
                if time.monotonic() + delay > deadline:
                    reason = f"gave up after {tries} tries over {format_duration(self.launch_retry_s)}: {exc}"
                    self.store.transition(phase_id, "error", reason, failure_kind=str(F.INFRASTRUCTURE),
                                          expect=frozenset({"pending", "launching"}), finished_at=time.time())
                    raise
                self.store.update(phase_id, reason=f"{exc}; retrying in {format_duration(delay)} (try {tries})")
                self.store.event(plan.run_id, phase_id, "phase.retry", f"temporary: {exc}; retrying in "
                                 f"{format_duration(delay)} (try {tries})", {"try": tries, "delay": delay})
                self.reporter.info(f"temporary error: {exc}; retrying in {format_duration(delay)}")
                time.sleep(delay)
                delay = min(delay * 2, 60.0)

    def launch(self, phase_id: int, plan: LaunchPlan) -> str:
        """Preflight, record ``launching``, create+start the container, record ``running``.

        A temporary error (engine unreachable) is re-raised with the phase left where it was
        (``_launch_retrying`` tries again); any other refusal is recorded as status ``error``."""
        try:
            refused = self.launch_problems(plan)  # before anything is created, even a mount's folder
            if refused:
                self.store.event(plan.run_id, phase_id, "policy.refused", "; ".join(refused), {"problems": refused})
                raise LaunchRefused(f"refused to launch {plan.container_name}: " + "; ".join(refused),
                                    "runner checks every stored plan again where the container is created")
            missing = missing_sources(plan, self.store.phase(phase_id)["spec_path"])
            if missing:  # a spec error (exit 1), located at the mount, before anything is created
                raise SpecError(missing)
            self.backend.ping()
            self.backend.check_image(plan.image)
            self._prepare_mounts(plan)
            Path(plan.phase_dir).mkdir(parents=True, exist_ok=True)
            if not self.store.transition(phase_id, "launching", f"creating container {plan.container_name}",
                                         expect=frozenset({"pending"})):
                raise LaunchError(f"phase {plan.phase} is no longer pending (stopped?); not launched")
            faults.point("pre_create")
            container_id = self.backend.launch(plan)
            faults.point("post_create")
        except Temporary:
            raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, RunnerError) else f"internal error: {type(exc).__name__}: {exc}"
            self.store.transition(phase_id, "error", reason, failure_kind=str(F.REFUSED), finished_at=time.time())
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

    def supervise(self, phase_id: int, plan: LaunchPlan, container_id: str, sup: PhaseSession | None = None,
                  fresh_log: bool = False) -> PhaseResult:
        """Follow a running container to its end: logs, metrics, guards, criteria, timeout, stop and
        detach requests.  Returns the recorded outcome."""
        if sup is None:
            row = self.store.phase(phase_id)
            sup = self._restored(phase_id, _phase_of(row), _folder(row))
        log_path = Path(plan.phase_dir) / "container.log"
        pump = threading.Thread(target=self._pump_logs, args=(container_id, log_path, sup, "wb" if fresh_log else "ab"), daemon=True)
        pump.start()
        try:
            return self._follow(phase_id, plan, container_id, pump, sup)
        except KeyboardInterrupt:
            # Ctrl-C is a person asking to stop: the one signal that stops training.
            self.reporter.info(f"Ctrl-C: stopping {plan.container_name} (SIGTERM, up to {plan.stop_grace:g}s grace, then SIGKILL)")
            with _ignoring_sigint():
                self.cancel(phase_id)
            pump.join(timeout=5)
            return self._result(phase_id)

    def _follow(self, phase_id: int, plan: LaunchPlan, container_id: str, pump: threading.Thread, sup: PhaseSession) -> PhaseResult:
        # The phase's timeout counts from its container's start, also when this process re-adopted it
        # later (attach, a restarted server): the time before this process is taken from the record
        # once, the rest from the monotonic clock (a wall-clock jump never fires or delays a timeout).
        began = self.store.phase(phase_id)["started_at"]
        started = time.monotonic() - (max(0.0, time.time() - began) if began else 0.0)
        unreachable_since: float | None = None
        stopping = False
        interval = sup.phase.metrics.poll_interval if sup.phase.metrics else 1.0
        next_poll = 0.0
        queued = ""  # the cluster's reason while a Slurm job waits in its queue
        remote = getattr(self.backend, "remote", False)
        dated = not remote  # a remote job's clocks are set from its scheduler's start time, once
        next_stop_check = 0.0
        next_inspect = 0.0  # the engine is asked how the container stands on the timer, not on every data wake
        last_poll, pending = 0.0, False  # a wake (new data) not read yet
        state = None
        while True:
            if self._interrupt_pending:
                self._interrupt_pending = False
                raise KeyboardInterrupt  # a Ctrl-C deferred through the launch (supervise stops the container)
            if self.detach_requested.is_set():
                self.store.transition(phase_id, "detached", "runner left; the container keeps running", expect=ACTIVE)
                return self._result(phase_id)
            try:
                if state is None or time.monotonic() >= next_inspect:
                    next_inspect = time.monotonic() + self.poll_s
                    state = self.backend.inspect(container_id)
                if unreachable_since is not None and sup.engine_outages:
                    sup.engine_outages[-1][1] = time.time()  # the engine answers again
                unreachable_since = None
            except EngineUnavailable as exc:
                if unreachable_since is None:
                    sup.engine_outages.append([time.time(), None])  # a container ending now: the engine took it
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > ENGINE_RETRY_S:
                    self.store.transition(phase_id, "detached", f"lost contact with the engine: {exc}", expect=ACTIVE)
                    return self._result(phase_id)
                self.reporter.progress(f"engine unreachable, retrying: {exc}")
                time.sleep(self.poll_s)
                continue
            except ContainerNotFound:
                self.store.transition(phase_id, "lost", "the container disappeared from the engine",
                                      failure_kind=str(F.INFRASTRUCTURE), failure_detail="lost", expect=ACTIVE,
                                      finished_at=time.time())
                return self._result(phase_id)
            if state.ended:
                break
            if not stopping and time.monotonic() >= next_stop_check:
                # `runner stop` from another terminal asks the supervisor through the store: the one process that
                # follows the container stops it and records the end (vault, validation) with its own session.
                next_stop_check = time.monotonic() + STOP_CHECK_S
                if self.store.phase(phase_id)["stop_requested"]:
                    stopping = True
                    self.reporter.info(f"runner stop: stopping {plan.container_name} (SIGTERM, up to "
                                       f"{plan.stop_grace:g}s grace, then SIGKILL)")
                    self._stop_async(container_id, plan.stop_grace)
            if state.status == "queued":
                # Waiting in the cluster's queue (Slurm PENDING): nothing runs yet, so the timeout does not
                # count; status and queue show Slurm's reason.
                started = time.monotonic()
                if state.error != queued:
                    queued = state.error
                    self.store.update(phase_id, reason=queued)
                    self.reporter.info(queued)
                self.reporter.progress(f"queued  {plan.phase}  {queued}")
                time.sleep(self.poll_s)
                continue
            if queued:
                queued = ""
                self.store.update(phase_id, started_at=time.time(), reason=state.error or "started")
                self.store.event(plan.run_id, phase_id, "phase.started", state.error or "the container started")
                self.reporter.info(state.error or "started")
                started, dated = time.monotonic(), True
                sup.set_started(time.time())  # time guards (timeout, stall) count from here, not from the queue
                sup.last_new_step_at = time.monotonic()
            elif not dated:
                dated = True
                began_at = _epoch_of(state.started_at)
                if began_at is not None:  # re-adopted: the job started when the scheduler says, not at sbatch
                    started = time.monotonic() - max(0.0, time.time() - began_at)
                    sup.set_started(began_at)
                    self.store.update(phase_id, started_at=began_at)
            elapsed = time.monotonic() - started
            now = time.monotonic()
            if now >= next_poll or (pending and now - last_poll >= WAKE_MIN_S):
                next_poll, last_poll, pending = now + interval, now, False
                sup.watch_data()  # a logdir that appeared since the last poll
                self._poll_metrics(plan, phase_id, sup)
                if not stopping and sup.clock():
                    stopping = True
                    self.store.event(plan.run_id, phase_id, "guard.tripped", f"guard {sup.trip.guard} tripped: {sup.trip.reason}",
                                     {"step": sup.trip.step})
                    self.reporter.info(f"guard {sup.trip.guard} tripped: {sup.trip.reason}; stopping the container")
                    self._stop_async(container_id, plan.stop_grace)
                elif not stopping and sup.end_reached is not None:
                    stopping = True
                    self.store.event(plan.run_id, phase_id, "phase.planned_end",
                                     f"reached the planned end at step {sup.end_reached:,}; stopping the container",
                                     {"step": sup.end_reached})
                    self.reporter.info(f"reached the planned end at step {sup.end_reached:,} (stop_at); stopping the container")
                    self._stop_async(container_id, plan.stop_grace)
                elif not stopping and sup.phase.success and sup.phase.success.stop_when_met and sup.criteria_met():
                    stopping = sup.met_early = True
                    self.store.event(plan.run_id, phase_id, "criteria.met", "success criteria met; stopping early")
                    self.reporter.info("success criteria met (stop_when_met); stopping the container")
                    self._stop_async(container_id, plan.stop_grace)
                self.reporter.live(plan.phase, {**sup.view(), "state": state.status})
            if plan.timeout is not None and elapsed > plan.timeout and not stopping:
                stopping = True
                self.store.event(plan.run_id, phase_id, "phase.timeout", f"timeout {format_duration(plan.timeout)} reached; stopping")
                self.store.update(phase_id, reason=f"timeout after {format_duration(plan.timeout)}", failure_kind=str(F.TIMEOUT))
                self._stop_async(container_id, plan.stop_grace)
            self.reporter.progress(f"{format_duration(elapsed)}  {plan.phase}  {state.status}")
            # Wait for new data (a metric file changed, a stdout line: guards react to it at once, at most every
            # WAKE_MIN_S), or the timer (the container's state, sources that send no events).
            wait_s = self.poll_s if not pending else max(0.0, last_poll + WAKE_MIN_S - time.monotonic())
            if sup.wake.wait(wait_s):
                sup.wake.clear()
                pending = True
        saved = self._join_pump(pump)
        self._poll_metrics(plan, phase_id, sup)  # what was written just before the end
        result = self.finish(phase_id, state, sup)
        if saved:
            self._remove_finished(plan, phase_id, container_id)
        return result

    def _remove_finished(self, plan: LaunchPlan, phase_id: int, container_id: str) -> None:
        """Remove an ended phase's container once its outcome is recorded and its whole log saved (so `docker ps -a`
        does not fill up), unless backend.yaml says ``keep_containers: true``.  A Slurm job has no container here."""
        if getattr(self._backend, "remote", False):
            return
        try:
            if load_settings(self.runs_dir).keep_containers:
                return
            self.backend.remove(container_id)
        except (RunnerError, SpecError) as exc:  # the engine went away, or a bad backend.yaml: kept, and said
            self.store.event(plan.run_id, phase_id, "container.kept", f"container {container_id[:12]} kept: {exc}")
            return
        self.store.event(plan.run_id, phase_id, "container.removed",
                         f"container {plan.container_name} ({container_id[:12]}) removed; its log is "
                         f"{Path(plan.phase_dir) / 'container.log'} (keep_containers: true in backend.yaml keeps it)")

    def _join_pump(self, pump: threading.Thread, quiet_s: float = 10.0) -> bool:
        """Wait for the log pump to read the ended container's output to its end: as long as it makes progress
        (a flood still being read), and at most ``quiet_s`` seconds without any.  True when it read to the end."""
        self._pumped = time.monotonic()
        while pump.is_alive():
            pump.join(timeout=1.0)
            if time.monotonic() - self._pumped > quiet_s:
                return False
        return True

    def _poll_metrics(self, plan: LaunchPlan, phase_id: int, sup: PhaseSession) -> None:
        sup.record_poll(self.reporter.info)

    def finish(self, phase_id: int, state: ContainerState, sup: PhaseSession | None = None) -> PhaseResult:
        """Record the outcome of an ended container, once (a second caller changes nothing)."""
        row = self.store.phase(phase_id)
        if row["status"] not in ACTIVE:
            return self._result(phase_id)
        phase = Phase.model_validate(json.loads(row["phase_json"] or "{}")) if row["phase_json"] not in ("", "{}") else None
        folder = _folder(row)
        if sup is None and phase is not None:
            sup = self._restored(phase_id, phase, folder)
            self._poll_metrics_quiet(sup)
        fields = dict(exit_code=state.exit_code, oom_killed=int(state.oom_killed), finished_at=time.time())
        # Vault and validate everything first (also for cancelled phases): the verdict is taken on
        # every validation, including the last checkpoint's.
        vaulted = sup.vault_all() if sup is not None else {}
        # the metrics checkpoint validation produced, and the last checkpoint they must be of (one store read)
        validated = sup.ckpt.validated_until() if sup and sup.ckpt else {}
        if row["stop_requested"]:
            status, reason, v = "cancelled", self._stopped_reason(row, state), None
            fields.update(failure_kind=str(F.CANCELLED))
        else:
            exit_ok = state.exit_code == 0 and not state.oom_killed
            # How the container ended, decided here where it is known (never read back from the reason).
            exit_kind, exit_detail = F.CRASHED, ""
            if row.get("failure_kind") == F.TIMEOUT:
                exit_reason, exit_kind = row["reason"], F.TIMEOUT
                exit_ok = False
            elif state.oom_killed:
                exit_reason, exit_kind = "killed: out of memory (the container hit its memory limit)", F.OOM
            elif state.infrastructure:
                # A node that failed, a preemption: the phase did not end on its own.
                exit_reason = f"{state.error}: an infrastructure interruption ({state.infrastructure})"
                exit_kind, exit_detail = F.INFRASTRUCTURE, "interrupted"
                exit_ok = False
            elif sup is not None and not getattr(self.backend, "remote", False) and _ended_with_the_engine(sup, state):
                # The engine went away (a restart or stop without live-restore) and took the container
                # with it: whatever the exit code, the phase did not end on its own.
                exit_reason = (f"exit code {state.exit_code}: an infrastructure interruption — the Docker engine "
                               "became unreachable while the container ran (restarted or stopped without live-restore) "
                               "and the container ended with it")
                exit_kind, exit_detail = F.INFRASTRUCTURE, "interrupted"
                exit_ok = False
            else:
                exit_reason = (f"exit code {state.exit_code}" + (f": {state.error}" if state.error else "")
                               if state.exit_code is not None else state.error or "ended without an exit code")
                if state.exit_code in (137, 143) and not state.error and \
                        not (sup and (sup.trip or sup.met_early or sup.end_reached)):
                    # runner did not stop it (no guard, criteria or planned end; no `runner stop`)
                    exit_kind = F.KILLED if state.exit_code == 137 else F.STOPPED
                    exit_reason += (" — killed from outside runner (SIGKILL: `docker kill`, the OOM killer of the host?)"
                                    if state.exit_code == 137 else
                                    " — stopped from outside runner (SIGTERM: `docker stop`, a host shutdown, or the "
                                    "engine restarting without live-restore)")
            trip: Trip | None = sup.trip if sup else None
            success = phase.success if phase else None
            end_reached = sup.end_reached if sup else None
            v = judge_verdict(exit_ok, exit_reason, trip, success, sup.metrics if sup else MetricSet(),
                              met_early=bool(sup and sup.met_early), end_reached=end_reached,
                              planned_end=_planned_end(phase, sup), exit_kind=exit_kind, exit_detail=exit_detail,
                              evidence=Evidence(validated) if sup and sup.ckpt else None)
            status = STATUS_OF_VERDICT[v.verdict]
            reason = v.reasons[0]
            fields.update(failure_kind=v.failure_kind and str(v.failure_kind), failure_detail=v.failure_detail or None)
            if not exit_ok and trip is None and not (sup and sup.met_early) and end_reached is None:
                reason = exit_reason
        if v is not None:
            ckpt = phase.checkpoints if phase else None
            outputs = phase_outputs(row["log_path"] and str(Path(row["log_path"]).parent), v.verdict,
                                    sup.metrics if sup else MetricSet(), ckpt, abs_path(folder, ckpt.dir) if ckpt else None)
            outputs.update(vaulted)
            missed = sup.ckpt.missed_explanation(sup.metrics) if sup and sup.ckpt else ""
            verdict = v.verdict
            lost = sup.ckpt.missed_best(sup.metrics) if sup and sup.ckpt else None
            if lost is not None and lost.best_lost:
                # A checkpoint better than every vaulted one was missed: part of the verdict (on_missed_best).
                outputs["lost_best"] = lost.as_dict()
                if verdict == "success" and lost.fails:
                    verdict, status, reason = "failure", "failed", lost.summary()
                    fields.update(failure_kind=str(F.CHECKPOINT_LOST), failure_detail=None)
                elif verdict == "success" and lost.degrades:
                    outputs["degraded"] = lost.summary()
                outputs["verdict"] = verdict
            if sup and sup.ckpt:
                override, warning = sup.ckpt.unprotected_best(sup.metrics)
                outputs.update(override)
                if warning:
                    outputs["warnings"] = [warning]
                    missed = "\n".join(x for x in (missed, warning) if x)
                best_step = next((c["step"] for c in self.store.checkpoints(phase_id)
                                  if outputs.get("best_checkpoint") and c["vault_path"] == outputs["best_checkpoint"]), None)
                if best_step is not None:  # what the next phase is handed: ${{ best.step }}, ${{ best.NAME }}
                    outputs["best"] = at_checkpoint(sup.metrics, best_step, set(validated))
            fields.update(verdict=verdict, explanation=v.explanation() + ("\n" + missed if missed else ""),
                          outputs_json=json.dumps(outputs),
                          judgement_json=json.dumps(v.judgement.as_dict() if v.judgement else None))
        self.store.transition(phase_id, status, reason, expect=ACTIVE, **fields)
        if v is not None:
            self.reporter.info(f"verdict: {fields['verdict']}" + (" (degraded)" if "degraded" in outputs else "")
                               + "\n" + fields["explanation"])
        return self._result(phase_id)

    def _poll_metrics_quiet(self, sup: PhaseSession) -> None:
        try:
            sup.poll()
        except OSError:
            pass

    def _stop_async(self, container_id: str, grace: float) -> None:
        threading.Thread(target=self._stop_quietly, args=(container_id, grace), daemon=True).start()

    def _stop_quietly(self, container_id: str, grace: float) -> None:
        try:
            self.backend.stop(container_id, grace)
        except RunnerError as exc:
            self.reporter.info(f"stop failed: {exc}")

    def _pump_logs(self, container_id: str, log_path: Path, sup: PhaseSession | None = None, mode: str = "ab") -> None:
        """Copy the container's output to container.log, the reporter and the stdout metric parser.
        ``mode`` "wb" rewrites the log from the container's start (re-attach: nothing missed while away).

        A stream that breaks while the container still runs (the engine restarted with live-restore)
        is opened again from a little before the last line read; the lines sent again are recognised
        against the recent ones and skipped, so nothing is lost and nothing is doubled."""
        recent: collections.deque[bytes] = collections.deque(maxlen=500)
        overlap: list[bytes] | None = None  # after a reconnect: recent lines the new stream may repeat
        since: int | None = None
        last_line_at = time.time()
        writable = True

        def emit_all(lines: list[bytes], out: ContainerLog) -> None:
            """One write for a chunk's lines (a flood is written at disk speed), then each line to the parsers."""
            nonlocal writable
            if not lines:
                return
            if writable:
                try:
                    out.write(b"\n".join(lines) + b"\n")
                except OSError as exc:  # a full disk: the log file stops, the metrics and the view go on
                    writable = False
                    self.reporter.info(f"cannot write {log_path} ({exc}); the container's output is still "
                                       "read (`docker logs` has all of it)")
            for line in lines:
                self._line(line.decode("utf-8", "replace"), sup)
            self._pumped = time.monotonic()

        def emit(line: bytes, out: ContainerLog) -> None:
            emit_all([line], out)

        try:
            with ContainerLog(log_path, fresh=mode == "wb") as out:
                while True:
                    splitter = LineSplitter()  # \n, \r\n or \r end a record; a record is cut at 1 MiB
                    received = 0
                    for chunk in self.backend.logs(container_id, follow=True, since=since):
                        received += len(chunk)
                        batch = []
                        for line in splitter.feed(chunk):
                            if overlap is not None:
                                if line in overlap:  # sent again after the reconnect
                                    overlap = overlap[overlap.index(line) + 1:] or None
                                    continue
                                overlap = None
                            recent.append(line)
                            batch.append(line)
                        if batch:
                            last_line_at = time.time()
                            emit_all(batch, out)
                    if not self._still_running(container_id):
                        if since is None:
                            # Output without a newline reaches the engine's log only when the container ends, and
                            # a follow stream can end first: the whole log once more, past what was received.
                            for rest in self._log_rest(container_id, received):
                                for line in splitter.feed(rest):
                                    emit(line, out)
                        for line in splitter.flush():
                            emit(line, out)
                        return
                    # The stream ended but the container runs on (an engine restart, or its end not
                    # visible yet): read again from just before the last line.
                    time.sleep(self.poll_s * 2)
                    if self._still_running(container_id):
                        self.reporter.info("the container's log stream broke (engine restart?); reading it again")
                    since, overlap = int(last_line_at) - 2, list(recent)
        except RunnerError as exc:
            self.reporter.info(f"log stream ended: {exc}")

    def _log_rest(self, container_id: str, skip: int) -> Iterator[bytes]:
        """An ended container's output after its first ``skip`` bytes, as chunks (none when it cannot be read)."""
        try:
            for chunk in self.backend.logs(container_id, follow=False):
                if skip >= len(chunk):
                    skip -= len(chunk)
                    continue
                yield chunk[skip:]
                skip = 0
        except RunnerError:
            return

    def _still_running(self, container_id: str) -> bool:
        """After a log stream ends: does the container still run (waiting out an engine that restarts)?"""
        deadline = time.monotonic() + ENGINE_RETRY_S
        while True:
            try:
                return not self.backend.inspect(container_id).ended
            except ContainerNotFound:
                return False
            except EngineUnavailable:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.5)

    def _line(self, text: str, sup: PhaseSession | None) -> None:
        self.reporter.log_line(text)
        if sup is not None:
            sup.feed_line(text)

    # ------------------------------------------------------------------ cancel, stop, refresh

    def cancel(self, phase_id: int, wait: bool = True) -> None:
        """Stop a phase's container on request (SIGTERM, grace period, SIGKILL); records *cancelled*."""
        row = self.store.phase(phase_id)
        request_stop(self.store, row)
        if not row["container_id"] and row["status"] == "launching":
            # The runner that launched it may have died between create and record: the container
            # may exist (and train) under its deterministic name.  Stop that one, never nothing.
            found = self._launched_container(row)
            if found is not None:
                self.store.update(phase_id, container_id=found.id)
                row = self.store.phase(phase_id)
        if not row["container_id"]:
            self.store.transition(phase_id, "cancelled", "stopped before launch", failure_kind=str(F.CANCELLED),
                                  expect=ACTIVE, finished_at=time.time())
            return
        plan = json.loads(row["plan_json"] or "{}")
        self.backend.stop(row["container_id"], float(plan.get("stop_grace", 30)))
        if wait:
            self.finish(phase_id, self.backend.inspect(row["container_id"]))

    def _stopped_reason(self, row: dict, state: ContainerState) -> str:
        """How a phase stopped on request ended: on its own after SIGTERM, or killed after the grace period, and
        then whether the stop came so soon after the start that the trainer may not have had its handler yet."""
        if state.exit_code != 137 or state.oom_killed:
            return "stopped on request" + (f" (exit {state.exit_code})" if state.exit_code is not None else "")
        grace = float(json.loads(row["plan_json"] or "{}").get("stop_grace", 30))
        reason = f"stopped on request: no exit within {grace:g}s of SIGTERM, killed (exit 137)"
        asked = [e["at"] for e in self.store.events(row["run_id"])
                 if e["kind"] == "phase.stop-requested" and e["phase_id"] == row["id"]]
        if asked and row["started_at"] and asked[0] - row["started_at"] < EARLY_STOP_S:
            reason += (f"; the stop came {asked[0] - row['started_at']:.0f}s after the start, probably before the "
                       "trainer installed its SIGTERM handler (as a container's first process, a program without one "
                       "ignores SIGTERM)")
        return reason

    def result(self, phase_id: int) -> PhaseResult:
        """How a phase stands, as recorded."""
        return self._result(phase_id)

    def stop_run(self, run_id: str) -> list[PhaseResult]:
        """Cancel a run: its queued submission (nothing more starts) and every active phase."""
        self.store.cancel_submission(run_id)
        out = []
        for row in self.store.phases(run_id):
            if row["status"] in ACTIVE:
                self.cancel(row["id"])
                out.append(self._result(row["id"]))
        return out

    def refresh(self, run_id: str) -> None:
        """Bring active phases up to date with the engine (for a phase nobody is supervising)."""
        for row in self.store.phases(run_id):
            if row["status"] == "launching" and not row["container_id"]:
                found = self._launched_container(row)
                if found is None or found.status == "created":
                    continue  # being launched right now, or left for `attach` / the server to relaunch
                self.store.transition(row["id"], "running", f"found container {found.id[:12]} (the runner stopped "
                                      "while launching it)", expect=frozenset({"launching"}), container_id=found.id,
                                      started_at=time.time())
                row = self.store.phase(row["id"])
            if row["status"] not in ("running", "detached") or not row["container_id"]:
                continue
            try:
                state = self.backend.inspect(row["container_id"])
            except ContainerNotFound:
                self.store.transition(row["id"], "lost", "the container disappeared from the engine",
                                      failure_kind=str(F.INFRASTRUCTURE), failure_detail="lost", expect=ACTIVE,
                                      finished_at=time.time())
                continue
            if (state.status == "queued" or (state.running and " PENDING (" in row["reason"])) \
                    and state.error and state.error != row["reason"]:
                # A Slurm job waiting in the queue (Slurm's reason), or one that has just started (its node)
                self.store.update(row["id"], reason=state.error, **({} if state.status == "queued" else {"started_at": time.time()}))
            if state.ended:
                self.finish(row["id"], state)

    def view(self, phase_id: int) -> dict:
        """The live view of a phase nobody in this process supervises, rebuilt from the store."""
        row = self.store.phase(phase_id)
        sup = self._restored(phase_id, _phase_of(row), _folder(row))
        sup.started = row["started_at"] or time.time()
        view = sup.view()
        if view["rate"] is None:  # nobody here watched it run: the step rate from the points' wall times
            view["rate"] = _step_rate(sup.metrics)
            step, total, rate = view["step"], view["total"], view["rate"]
            if rate and total and step is not None and total > step:
                view["eta"] = (total - step) / rate
        plan = _stored_plan(row)
        view["gpus"] = list(plan.gpus) if plan is not None and isinstance(plan.gpus, tuple) else (plan.gpus if plan else 0)
        return view

    def _result(self, phase_id: int) -> PhaseResult:
        row = self.store.phase(phase_id)
        return PhaseResult(row["run_id"], phase_id, row["name"], row["status"], row["reason"], row["exit_code"],
                           row["container_id"], row["verdict"])


def _epoch_of(iso: str | None) -> float | None:
    """A backend's UTC time stamp (2026-11-27T09:00:00Z, optionally with a fraction) as a unix time."""
    if not iso:
        return None
    from datetime import datetime

    head = iso.rstrip("Z").partition(".")[0]
    try:
        return datetime.fromisoformat(head + "+00:00").timestamp()
    except ValueError:
        return None


def _stored_plan(row: dict) -> LaunchPlan | None:
    """The LaunchPlan recorded for a phase (JSON lists back to tuples, mounts back to BindMount)."""
    data = json.loads(row["plan_json"] or "{}")
    if not data:
        return None
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    data["mounts"] = tuple(BindMount(**m) if isinstance(m, dict) else m for m in data["mounts"])
    return LaunchPlan(**data)


def _phase_of(row: dict) -> Phase:
    """The resolved phase recorded when it was planned (the spec file may have changed since)."""
    return Phase.model_validate(json.loads(row["phase_json"]))


def request_stop(store: Store, row: dict) -> None:
    """Record that a person asked to stop a phase (once): whichever process supervises it acts on it."""
    if not row["stop_requested"]:
        store.update(row["id"], stop_requested=1)
        store.event(row["run_id"], row["id"], "phase.stop-requested", f"stop requested for phase {row['name']}")


def _folder(row: dict) -> Path:
    """The folder a phase's relative paths resolve against: its spec file's."""
    return Path(row["spec_path"]).parent


def _step_rate(metrics: MetricSet, window_s: float = 120.0) -> float | None:
    """Steps per second over the last ``window_s`` of the longest series (by wall time)."""
    series = max(metrics.series.values(), key=len, default=None)
    if series is None or len(series) < 2:
        return None
    walls, steps = series.walls, series.steps
    recent = walls >= walls[-1] - window_s
    w, st = walls[recent], steps[recent]
    if len(w) < 2 or w[-1] <= w[0]:
        return None
    return float(st[-1] - st[0]) / float(w[-1] - w[0])


def _record(run: RunResult, result: PhaseResult) -> RunResult:
    """Add a phase's latest result to ``run`` (replacing an earlier result of the same phase)."""
    if run.phases and run.phases[-1].phase_id == result.phase_id:
        run.phases[-1] = result
    else:
        run.phases.append(result)
    return run
