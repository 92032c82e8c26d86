"""Following a running container to its end: the engine asked on a timer, metrics read when their data arrives,
guards, criteria, the planned end, the timeout, `runner stop` and detach requests acted on.

``follow`` never finishes a phase: it returns how following ended (``Ended`` with the container's final state,
``Detached``, ``Lost``, ``Interrupted``) and the driver records it (judge.finish, stop.cancel)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from runner.backends.base import ContainerState
from runner.engine.ports import ENGINE_RETRY_S, Core
from runner.engine.session import PhaseSession
from runner.errors import ContainerNotFound, EngineUnavailable, RunnerError
from runner.lifecycle import F
from runner.plan import LaunchPlan
from runner.units import format_duration

WAKE_MIN_S = 0.05  # the most often new data makes a supervisor read its sources and run its guards
STOP_CHECK_S = 0.5  # how often a supervisor looks for a `runner stop` recorded by another process


@dataclass(frozen=True)
class Ended:
    state: ContainerState  # the container's final state


@dataclass(frozen=True)
class Detached:
    reason: str  # the container runs on; nobody in this process follows it


@dataclass(frozen=True)
class Lost:
    reason: str  # the engine no longer knows the container


@dataclass(frozen=True)
class Interrupted:
    """Ctrl-C: a person asks to stop the phase."""


Outcome = Ended | Detached | Lost | Interrupted


def follow(core: Core, phase_id: int, plan: LaunchPlan, container_id: str, sup: PhaseSession) -> Outcome:
    try:
        return _Follower(core, phase_id, plan, container_id, sup).run()
    except KeyboardInterrupt:
        return Interrupted()


def stop_async(core: Core, container_id: str, grace: float) -> None:
    """SIGTERM now, SIGKILL after ``grace``, without holding up the caller (a failed stop is said, not raised)."""
    def stop() -> None:
        try:
            core.backend.stop(container_id, grace)
        except RunnerError as exc:
            core.reporter.info(f"stop failed: {exc}")

    threading.Thread(target=stop, daemon=True).start()


class _Follower:
    def __init__(self, core: Core, phase_id: int, plan: LaunchPlan, container_id: str, sup: PhaseSession):
        self.core, self.store, self.phase_id, self.plan, self.cid, self.sup = \
            core, core.store, phase_id, plan, container_id, sup
        # The phase's timeout counts from its container's start, also when this process re-adopted it
        # later (attach, a restarted server): the time before this process is taken from the record
        # once, the rest from the monotonic clock (a wall-clock jump never fires or delays a timeout).
        began = self.store.phase(phase_id)["started_at"]
        self.started = time.monotonic() - (max(0.0, time.time() - began) if began else 0.0)
        self.unreachable_since: float | None = None
        self.stopping = False
        self.interval = sup.phase.metrics.poll_interval if sup.phase.metrics else 1.0
        self.next_poll = 0.0
        self.queued = ""  # the cluster's reason while a Slurm job waits in its queue
        self.dated = not core.remote  # a remote job's clocks are set from its scheduler's start time, once
        self.next_stop_check = 0.0
        self.next_inspect = 0.0  # the engine is asked how the container stands on the timer, not on every data wake
        self.last_poll, self.pending = 0.0, False  # a wake (new data) not read yet
        self.state: ContainerState | None = None

    def run(self) -> Outcome:
        while True:
            if self.core.interrupt_pending:
                self.core.interrupt_pending = False
                return Interrupted()  # a Ctrl-C deferred through the launch
            if self.core.detach_requested.is_set():
                return Detached("runner left; the container keeps running")
            try:
                state = self._inspect()
            except EngineUnavailable as exc:
                if time.monotonic() - (self.unreachable_since or time.monotonic()) > ENGINE_RETRY_S:
                    return Detached(f"lost contact with the engine: {exc}")
                self.core.reporter.progress(f"engine unreachable, retrying: {exc}")
                time.sleep(self.core.poll_s)
                continue
            except ContainerNotFound:
                return Lost("the container disappeared from the engine")
            if state.ended:
                return Ended(state)
            self._stop_if_asked()
            if state.status == "queued":
                self._waiting_in_queue(state)
                continue
            self._started(state)
            self._read_and_guard(state)
            self._wait()

    def _inspect(self) -> ContainerState:
        try:
            if self.state is None or time.monotonic() >= self.next_inspect:
                self.next_inspect = time.monotonic() + self.core.poll_s
                self.state = self.core.backend.inspect(self.cid)
        except EngineUnavailable:
            self.sup.engine_unreachable()  # a container ending now: the engine took it
            self.unreachable_since = self.unreachable_since or time.monotonic()
            raise
        self.sup.engine_back()
        self.unreachable_since = None
        return self.state

    def _stop(self, grace: float | None = None) -> None:
        self.stopping = True
        stop_async(self.core, self.cid, self.plan.stop_grace if grace is None else grace)

    def _stop_if_asked(self) -> None:
        """`runner stop` from another terminal asks the supervisor through the store: the one process that follows
        the container stops it and records the end (vault, validation) with its own session."""
        if self.stopping or time.monotonic() < self.next_stop_check:
            return
        self.next_stop_check = time.monotonic() + STOP_CHECK_S
        if self.store.phase(self.phase_id)["stop_requested"]:
            self.core.reporter.info(f"runner stop: stopping {self.plan.container_name} (SIGTERM, up to "
                                    f"{self.plan.stop_grace:g}s grace, then SIGKILL)")
            self._stop()

    def _waiting_in_queue(self, state: ContainerState) -> None:
        """Waiting in the cluster's queue (Slurm PENDING): nothing runs yet, so the timeout does not count;
        status and queue show Slurm's reason."""
        self.started = time.monotonic()
        if state.error != self.queued:
            self.queued = state.error
            self.store.update(self.phase_id, reason=self.queued)
            self.core.reporter.info(self.queued)
        self.core.reporter.progress(f"queued  {self.plan.phase}  {self.queued}")
        time.sleep(self.core.poll_s)

    def _started(self, state: ContainerState) -> None:
        """The clocks set once the container runs: from now for a job that waited in the queue, from the
        scheduler's start time for a re-adopted remote job."""
        if self.queued:
            self.queued = ""
            self.store.update(self.phase_id, started_at=time.time(), reason=state.error or "started")
            self.store.event(self.plan.run_id, self.phase_id, "phase.started", state.error or "the container started")
            self.core.reporter.info(state.error or "started")
            self.started, self.dated = time.monotonic(), True
            self.sup.started_now()  # time guards (timeout, stall) count from here, not from the queue
        elif not self.dated:
            self.dated = True
            began_at = state.started_s
            if began_at is not None:  # re-adopted: the job started when the scheduler says, not at sbatch
                self.started = time.monotonic() - max(0.0, time.time() - began_at)
                self.sup.set_started(began_at)
                self.store.update(self.phase_id, started_at=began_at)

    def _read_and_guard(self, state: ContainerState) -> None:
        """New metrics read and recorded, then the guards, the planned end and the criteria; the timeout."""
        now = time.monotonic()
        plan, run_id, pid, sup = self.plan, self.plan.run_id, self.phase_id, self.sup
        if now >= self.next_poll or (self.pending and now - self.last_poll >= WAKE_MIN_S):
            self.next_poll, self.last_poll, self.pending = now + self.interval, now, False
            sup.watch_data()  # a logdir that appeared since the last poll
            sup.record_poll(self.core.reporter.info)
            if not self.stopping and sup.clock():
                assert sup.trip is not None
                self.store.event(run_id, pid, "guard.tripped", f"guard {sup.trip.guard} tripped: {sup.trip.reason}",
                                 {"step": sup.trip.step})
                self.core.reporter.info(f"guard {sup.trip.guard} tripped: {sup.trip.reason}; stopping the container")
                self._stop()
            elif not self.stopping and sup.end_reached is not None:
                self.store.event(run_id, pid, "phase.planned_end",
                                 f"reached the planned end at step {sup.end_reached:,}; stopping the container",
                                 {"step": sup.end_reached})
                self.core.reporter.info(f"reached the planned end at step {sup.end_reached:,} (stop_at); "
                                        "stopping the container")
                self._stop()
            elif not self.stopping and sup.phase.success and sup.phase.success.stop_when_met and sup.criteria_met():
                sup.met_early = True
                self.store.event(run_id, pid, "criteria.met", "success criteria met; stopping early")
                self.core.reporter.info("success criteria met (stop_when_met); stopping the container")
                self._stop()
            self.core.reporter.live(plan.phase, {**sup.view(), "state": state.status})
        elapsed = time.monotonic() - self.started
        if plan.timeout is not None and elapsed > plan.timeout and not self.stopping:
            self.store.event(run_id, pid, "phase.timeout", f"timeout {format_duration(plan.timeout)} reached; stopping")
            self.store.update(pid, reason=f"timeout after {format_duration(plan.timeout)}", failure_kind=str(F.TIMEOUT))
            self._stop()
        self.core.reporter.progress(f"{format_duration(elapsed)}  {plan.phase}  {state.status}")

    def _wait(self) -> None:
        """Wait for new data (a metric file changed, a stdout line: guards react to it at once, at most every
        WAKE_MIN_S), or the timer (the container's state, sources that send no events)."""
        wait_s = self.core.poll_s if not self.pending else max(0.0, self.last_poll + WAKE_MIN_S - time.monotonic())
        if self.sup.wake.wait(wait_s):
            self.sup.wake.clear()
            self.pending = True
