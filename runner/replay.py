"""`runner replay`: a spec's guards, success criteria and next rules over an existing logdir, as if live."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runner import chain
from runner.criteria import Guards, Trip, verdict
from runner.metrics.series import MetricSet
from runner.metrics.sources import LogdirReader
from runner.outputs import phase_outputs
from runner.plan import merge_inputs, resolve
from runner.spec import load_spec


@dataclass
class GuardReport:
    guard: str
    step: int | None
    reason: str


def replay(spec_path: str | Path, logdir: str | Path, inputs: dict[str, str] | None = None) -> dict:
    loaded = load_spec(spec_path)
    merged = merge_inputs(loaded, inputs or {})
    with tempfile.TemporaryDirectory() as tmp:
        phase = resolve(loaded, merged, "replay", tmp)
    tags = phase.metrics.tensorboard.tags if phase.metrics and phase.metrics.tensorboard else {}
    reader = LogdirReader(logdir, tags)
    metrics = MetricSet()
    for name, (s, v, w) in reader.poll().items():
        metrics.add(name, s, v, w)
    reports = guard_trips(phase.guards, metrics)
    first = min((r for r in reports if r.step is not None), key=lambda r: r.step, default=None)
    judged = metrics
    if first is not None:
        judged = truncate(metrics, first.step)  # the run would have stopped there
    trip = Trip(first.guard, first.step, first.reason) if first else None
    v = verdict(True, "exit code 0 (assumed)", trip, phase.success, judged)
    outputs = phase_outputs("", v.verdict, judged, None, None)
    d = chain.decide(phase.next, v.verdict, judged, {**outputs, "name": phase.name}, merged,
                     {"id": "replay", "dir": ""}, loaded.folder, {})
    return {"spec": str(loaded.path), "logdir": str(logdir), "problems": reader.problems,
            "metrics": {k: {"points": len(s), "first_step": int(s.steps[0]), "last_step": int(s.steps[-1])}
                        for k, s in metrics.series.items() if len(s)},
            "guards": [r.__dict__ for r in reports], "stopped_at": first.step if first else None,
            "verdict": v.verdict, "explanation": v.explanation(), "next": d.reason, "next_spec": d.spec}


def truncate(metrics: MetricSet, step: int) -> MetricSet:
    out = MetricSet()
    for name, s in metrics.series.items():
        keep = s.steps <= step
        out.add(name, s.steps[keep], s.values[keep], s.walls[keep])
    return out


def guard_trips(guards, metrics: MetricSet) -> list[GuardReport]:
    """For each guard, the step at which it would have tripped (None = never)."""
    reports = []
    all_steps = np.unique(np.concatenate([s.steps for s in metrics.series.values()])) if metrics.series else np.empty(0, np.int64)
    walls = _walls_by_step(metrics)
    for g in guards:
        kind = g.kind
        label = Guards([g]).states[0].label
        trip = None
        if kind in ("non_finite", "diverges"):
            state = Guards([g])
            s = metrics.series.get(g.metric)
            if s is not None and len(s):
                t = state.feed({g.metric: (s.steps, s.values, s.walls)})
                trip = (t.step, t.reason) if t else None
        elif kind == "max_steps":
            hit = all_steps[all_steps >= g.max_steps]
            trip = (int(hit[0]), f"reached step {int(hit[0])} (max_steps {g.max_steps})") if hit.size else None
        elif kind == "missing":
            if g.metric not in metrics.series and "steps" in g.missing.within:
                hit = all_steps[all_steps >= g.missing.within["steps"]]
                if hit.size:
                    trip = (int(hit[0]), f"{g.metric} has not appeared by step {int(hit[0])}")
            elif g.metric not in metrics.series and walls.size:
                limit = g.missing.within["seconds"]
                late = np.flatnonzero(walls[:, 1] - walls[0, 1] >= limit)
                if late.size:
                    trip = (int(walls[late[0], 0]), f"{g.metric} has not appeared within {limit:.0f}s")
        elif kind == "timeout" and walls.size:
            late = np.flatnonzero(walls[:, 1] - walls[0, 1] >= g.timeout)
            if late.size:
                trip = (int(walls[late[0], 0]), f"timeout: {g.timeout:.0f}s elapsed")
        elif kind == "stall" and walls.shape[0] > 1:
            gaps = np.diff(walls[:, 1])
            long = np.flatnonzero(gaps >= g.stall)
            if long.size:
                i = int(long[0])
                trip = (int(walls[i, 0]), f"stalled: no new step for {gaps[i]:.0f}s after step {int(walls[i, 0])}")
        reports.append(GuardReport(label, trip[0] if trip else None, trip[1] if trip else "would not trip"))
    return reports


def _walls_by_step(metrics: MetricSet) -> np.ndarray:
    """(step, first wall time at which any metric logged it), sorted by step."""
    if not metrics.series:
        return np.empty((0, 2))
    steps = np.concatenate([s.steps for s in metrics.series.values()])
    walls = np.concatenate([s.walls for s in metrics.series.values()])
    order = np.lexsort((walls, steps))
    steps, walls = steps[order], walls[order]
    first = np.ones(steps.size, dtype=bool)
    first[1:] = steps[1:] != steps[:-1]
    return np.column_stack([steps[first], walls[first]])
