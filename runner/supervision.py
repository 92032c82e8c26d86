"""What the engine watches while a phase runs: metric sources, guards, success criteria, live view data."""
from __future__ import annotations

import threading
import time
from typing import Any
from pathlib import Path

import numpy as np

from runner.decisions.guards import Guards, Trip, total_steps_of
from runner.decisions.criteria import Judgement, judge
from runner.metrics.sources import JsonlReader, LogdirReader, Sources, StdoutParser
from runner.metrics.series import MetricSet
from runner.paths import spec_relative
from runner.spec.models import Phase

SPARK = "▁▂▃▄▅▆▇█"


def build_sources(phase: Phase, folder: Path | str) -> Sources:
    m = phase.metrics
    if m is None:
        return Sources()
    tb = LogdirReader(spec_relative(folder, m.tensorboard.logdir), m.tensorboard.tags) if m.tensorboard else None
    js = JsonlReader(spec_relative(folder, m.jsonl.path), m.jsonl.step_field, m.jsonl.fields) if m.jsonl else None
    so = StdoutParser(m.stdout.step, m.stdout.patterns) if m.stdout else None
    return Sources(tb, js, so)


NO_METRICS_HINT = ("no metrics: block, so no progress, guards or criteria — the trainer's own lines can give them, e.g. "
                   "metrics: {stdout: {step: 'step (\\d+)', patterns: {loss: 'loss[= ]([-+.\\deE]+)'}}, total_steps: N}")


def new_guards(phase: Phase) -> Guards:
    """The phase's guards, told its planned length (stop_at, else metrics.total_steps) so that a divergence
    guard's windows fit inside a short phase."""
    return Guards(phase.guards, phase.stop_at, phase.expect, total_steps_of(phase))


def sparkline(values: np.ndarray, width: int = 16) -> str:
    v = values[-width:]
    v = v[np.isfinite(v)]
    if v.size < 2:
        return ""
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:
        return SPARK[3] * v.size
    return "".join(SPARK[int((x - lo) / (hi - lo) * (len(SPARK) - 1))] for x in v.tolist())


class Supervision:
    """Live state of one phase: sources → metrics → guards and criteria."""

    def __init__(self, phase: Phase, folder: Path | str):
        self.phase = phase
        self.sources = build_sources(phase, folder)
        self.guards = new_guards(phase)
        self.lock = threading.Lock()  # the log pump feeds the stdout parser from its thread
        self.ckpt: Any = None  # the phase's CheckpointGuard, if it has a checkpoints: block (set by PhaseSession)
        self.trip: Trip | None = None
        self.met_early = False
        self.standing: Judgement | None = None
        self.started = time.time()  # wall time, for people; durations below use the monotonic clock
        self._mono_start = time.monotonic()
        if self.sources.tensorboard is not None:  # points older than the phase belong to another run
            self.sources.tensorboard.since = self.started
        self.unsaved: dict = {}  # metric points not in the store yet (its disk was full)
        self.store_full = False
        self.engine_outages: list[list] = []  # [wall time unreachable, wall time back (None: still away)]
        self.last_new_step_at = time.monotonic()
        self._rate_marks: list[tuple[float, int]] = []
        # Set when new data may be there (a stdout line fed here; a metric file changed: PhaseSession's DataWatch):
        # the supervisor wakes and reads at once instead of at its next timer tick.
        self.wake = threading.Event()

    @property
    def metrics(self) -> MetricSet:
        return self.sources.metrics

    def feed_line(self, line: str) -> None:
        if self.sources.stdout is not None:
            with self.lock:
                self.sources.stdout.feed(line)
            self.wake.set()

    def poll(self) -> dict:
        """Read new points, feed guards; returns the new points (for the store)."""
        with self.lock:
            new = self.sources.poll()
        validator = self.ckpt.validator if self.ckpt is not None else None
        if validator is not None:
            from runner.metrics.sources import merge_points

            for step, values, wall in validator.take():
                for name, value in values.items():
                    merge_points(new, name, np.array([step]), np.array([value]), np.array([wall]))
                    self.metrics.add(name, [step], [value], [wall])
        if self.sources.restarted:
            # The guards judged the abandoned run's steps too: judged again, from the start, on the series as
            # they are now (the newest writer's steps from the restart on).
            self.guards = new_guards(self.phase)
            new = {name: (s.steps, s.values, s.walls) for name, s in self.metrics.series.items() if len(s)}
        before = self.guards.last_step
        trip = self.guards.feed(new)
        if self.guards.last_step is not None and self.guards.last_step != before:
            self.last_new_step_at = time.monotonic()
            self._rate_marks.append((time.monotonic(), self.guards.last_step))
            self._rate_marks = [m for m in self._rate_marks if m[0] > time.monotonic() - 60]
        self.trip = self.trip or trip
        return new

    def set_started(self, wall: float) -> None:
        """The container started at ``wall`` (a re-adopted phase): time guards count from there; the
        time before this process is taken from the wall clock once, the rest from the monotonic one."""
        self.started = wall
        self._mono_start = time.monotonic() - max(0.0, time.time() - wall)
        if self.sources.tensorboard is not None:
            self.sources.tensorboard.since = wall

    def started_now(self) -> None:
        """The container started only now (a job that waited in the cluster's queue): the time guards (timeout,
        stall) count from here, not from the submission."""
        self.set_started(time.time())
        self.last_new_step_at = time.monotonic()

    def engine_unreachable(self) -> None:
        """The engine stopped answering (once per outage): a container that ends now ended with the engine."""
        if not self.engine_outages or self.engine_outages[-1][1] is not None:
            self.engine_outages.append([time.time(), None])

    def engine_back(self) -> None:
        if self.engine_outages and self.engine_outages[-1][1] is None:
            self.engine_outages[-1][1] = time.time()

    def ended_with_the_engine(self, finished_at: float | None) -> bool:
        """Whether the container, ended at ``finished_at`` (unix time), ended during an outage of the engine seen
        while supervising (runner did not stop it: no guard, no criteria met early, no planned end)."""
        if not self.engine_outages or self.trip or self.met_early or self.end_reached is not None or finished_at is None:
            return False
        # Ended while the engine was away (or as it came back up): a live-restored container that ends
        # later, on its own, is not an interruption.
        return any(down - 1.0 <= finished_at <= (back or time.time()) + 2.0 for down, back in self.engine_outages)

    def clock(self) -> Trip | None:
        # Monotonic: a wall-clock jump (NTP, a VM resumed, a changed date) never fires or delays a time guard.
        now = time.monotonic()
        trip = self.guards.check_clock(now - self._mono_start, now - self.last_new_step_at)
        self.trip = self.trip or trip
        return self.trip

    @property
    def end_reached(self) -> int | None:
        """The step at which the phase's planned end (stop_at) was reached, if it was."""
        return self.guards.end_reached

    def criteria_met(self) -> bool:
        if self.phase.success is None:
            return False
        self.standing = judge(self.phase.success, self.metrics)
        return self.standing.passed is True

    # ------------------------------------------------------------------ live view data

    def total_steps(self) -> int | None:
        return total_steps_of(self.phase) or self.guards.planned_end

    def view(self) -> dict:
        step = self.guards.last_step
        rate = None
        if len(self._rate_marks) >= 2:
            (t0, s0), (t1, s1) = self._rate_marks[0], self._rate_marks[-1]
            rate = (s1 - s0) / (t1 - t0) if t1 > t0 else None
        total = self.total_steps()
        eta = (total - step) / rate if (rate and total and step is not None and total > step) else None
        metrics = []
        for name, s in sorted(self.metrics.series.items()):
            if len(s):
                metrics.append({"name": name, "step": int(s.steps[-1]), "value": float(s.values[-1]),
                                "trend": sparkline(s.values)})
        if self.phase.success is not None:
            # the criteria's standing now, on what has been read so far (not the first poll's "no data")
            self.standing = judge(self.phase.success, self.metrics)
        return {
            "step": step, "total": total, "rate": rate, "eta": eta, "elapsed": time.time() - self.started,
            "metrics": metrics,
            "guards": [{"guard": st.label, "state": "TRIPPED: " + st.tripped.reason if st.tripped else (st.distance or "waiting for data")}
                       for st in self.guards.states],
            "criteria": self.standing.lines() if self.standing else [],
            "hint": "" if self.phase.metrics is not None else NO_METRICS_HINT,
        }
