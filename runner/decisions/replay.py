"""`runner replay`: a spec's guards, success criteria and next rules over an existing logdir, as if live."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.decisions import chain
from runner.decisions.guards import run_guards, total_steps_of
from runner.decisions.criteria import verdict
from runner.lifecycle import failure_names
from runner.metrics.series import MetricSet
from runner.metrics.sources import LogdirReader
from runner.decisions.outputs import phase_outputs
from runner.plan import merge_inputs, resolve
from runner.spec import load_spec


@dataclass
class GuardReport:
    guard: str
    step: int | None
    reason: str


def replay(spec_path: str | Path, logdir: str | Path, inputs: dict[str, str] | None = None) -> dict[str, Any]:
    """The spec's guards, planned end, verdict and next rule over a finished logdir, through the
    same Guards a live phase uses (fed point by point, the clock taken from the points' wall times)."""
    loaded = load_spec(spec_path)
    merged = merge_inputs(loaded, inputs or {})
    with tempfile.TemporaryDirectory() as tmp:
        phase = resolve(loaded, merged, "replay", tmp)
    tags = phase.metrics.tensorboard.tags if phase.metrics and phase.metrics.tensorboard else {}
    reader = LogdirReader(logdir, tags)
    points = reader.poll()
    warnings: list[str] = []
    if len(reader.file_starts) > 1:
        # Several writers in one logdir (another run, a resume): like a live phase, judge only the newest
        # run's own points — from its writer's first record on — and say so.
        newest, (wall, step) = max(reader.file_starts.items(), key=lambda kv: kv[1][0])
        warnings.append(f"the logdir holds {len(reader.file_starts)} writers' event files (another run, or a resume): "
                        f"judged from the newest one's start (step {step:,}, {Path(newest).name}); earlier points left out")
        reader = LogdirReader(logdir, tags)
        reader.since = wall
        points = reader.poll()
    metrics = MetricSet()
    for name, (s, v, w) in points.items():
        metrics.add(name, s, v, w)
    guards = run_guards(phase.guards, phase.stop_at, metrics, expect=phase.expect, total_steps=total_steps_of(phase))
    reports = [GuardReport(st.label, st.tripped.step if st.tripped else None,
                           st.tripped.reason if st.tripped else "would not trip") for st in guards.states]
    trip = guards.tripped
    stops = [x for x in (trip.step if trip else None, guards.end_reached) if x is not None]
    judged = truncate(metrics, min(stops)) if stops else metrics  # the run would have stopped there
    end_reached = guards.end_reached if guards.end_reached is not None and (trip is None or trip.step is None
                                                                            or guards.end_reached < trip.step) else None
    if end_reached is not None:
        trip = None
    judged_as = verdict(True, "exit code 0 (assumed)", trip, phase.success, judged, end_reached=end_reached,
                        planned_end=guards.planned_end if end_reached is not None else None)
    outputs = phase_outputs("", judged_as.verdict, judged, None, None)
    failed = failure_names({"failure_kind": judged_as.failure_kind, "failure_detail": judged_as.failure_detail})
    d = chain.decide(phase.next, judged_as.verdict, judged, {**outputs, "name": phase.name}, merged,
                     {"id": "replay", "dir": ""}, loaded.folder, {}, failed)
    return {"spec": str(loaded.path), "logdir": str(logdir), "problems": reader.problems, "warnings": warnings,
            "metrics": {k: {"points": len(s), "first_step": int(s.steps[0]), "last_step": int(s.steps[-1])}
                        for k, s in metrics.series.items() if len(s)},
            "phase_start": guards.origin, "planned_end": guards.planned_end, "end_reached": end_reached,
            "guards": [r.__dict__ for r in reports], "stopped_at": min(stops) if stops else None,
            "verdict": judged_as.verdict, "failure_kind": judged_as.failure_kind and str(judged_as.failure_kind), "explanation": judged_as.explanation(), "next": d.reason, "next_spec": d.spec}


def truncate(metrics: MetricSet, step: int) -> MetricSet:
    out = MetricSet()
    for name, s in metrics.series.items():
        keep = s.steps <= step
        out.add(name, s.steps[keep], s.values[keep], s.walls[keep])
    return out
