"""What a run's report shows, gathered from the run store (pure data; no plotting, no HTML)."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runner.lifecycle import S
from runner.decisions.guards import Guards, total_steps_of
from runner.decisions.smoothing import metrics_origin, reduce, smoothed, window_points
from runner.spec.windows import parse_window
from runner.errors import SpecError
from runner.metrics.series import MetricSet, Series
from runner.spec.criteria_models import Criterion, Group, Guard
from runner.spec.models import Phase
from runner.lifecycle import chain_outcome
from runner.store import Store, run_status

TENSORBOARD_WEIGHT = 0.6  # TensorBoard's default smoothing, for metrics no divergence guard watches


@dataclass
class Threshold:
    guard: str
    steps: np.ndarray
    values: np.ndarray  # the smoothed best ± margin: the guard trips when the smoothed curve stays beyond it
    trip_step: int | None


@dataclass
class Window:
    start: int
    end: int
    label: str  # the criterion, its measured value and threshold, as a sentence
    short: str  # the same in a few words, on the plot
    passed: bool | None
    measured: float | None
    threshold: float | None
    show_measured: bool  # a measured value in the metric's units (not a slope or a share of the way)
    row: int = 0


@dataclass
class Mark:
    step: int
    value: float
    state: str


@dataclass
class MetricPlot:
    phase: str
    metric: str
    title: str
    steps: np.ndarray
    raw: np.ndarray
    smoothed: np.ndarray | None
    smoothing: str
    thresholds: list[Threshold] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    checkpoints: list[Mark] = field(default_factory=list)


@dataclass
class PhaseReport:
    row: dict
    plots: list[MetricPlot]
    checkpoints: list[dict]
    trips: list[dict]


@dataclass
class ChainNode:
    path: str
    phase: str
    taken: bool
    edges: list["ChainEdge"] = field(default_factory=list)


@dataclass
class ChainEdge:
    when: str
    target: ChainNode | None
    target_name: str
    taken: bool
    loop: bool = False


@dataclass
class RunReport:
    run: dict
    status: str
    phases: list[PhaseReport]
    events: list[dict]
    chain: ChainNode | None
    chain_problem: str
    outcome: str = ""  # lifecycle.chain_outcome: "recovered" when a failure branch led to the success


def _metric_set(points: dict) -> MetricSet:
    ms = MetricSet()
    for name, pts in points.items():
        if pts:
            s, v, w = zip(*pts)
            ms.add(name, list(s), list(v), list(w))
    return ms


def _criteria(node: Criterion | Group | None) -> list[Criterion]:
    if node is None:
        return []
    if isinstance(node, Criterion):
        return [node]
    items = node.all if node.all is not None else node.any
    assert items is not None  # a Group's validator requires exactly one of all: and any:
    return [c for item in items for c in _criteria(item)]


def _window(c: Criterion, ms: MetricSet, origin: int | None, row: int) -> Window | None:
    from runner.decisions.criteria import judge_criterion

    series = ms.series.get(c.metric)
    if series is None or not len(series):
        return None
    steps, values = window_points(series, parse_window(c.window), origin)
    if not len(steps):
        return None
    j = judge_criterion(c, ms, origin)
    threshold = c.below if c.below is not None else c.above
    try:
        threshold = None if threshold is None else float(threshold)
    except (TypeError, ValueError):
        threshold = None
    if c.progress is not None:
        try:
            threshold = float(c.progress.to)
        except (TypeError, ValueError):
            threshold = None
    measured = reduce(steps, values, c.reduce, c.ema_alpha)
    show = c.reduce != "slope" and measured is not None and math.isfinite(measured)
    mark = {True: "✓", False: "✗", None: "?"}[j.passed]
    cmp = f"< {threshold:.4g}" if c.below is not None and threshold is not None else (
        f"> {threshold:.4g}" if c.above is not None and threshold is not None else "progress")
    short = f"{mark} {c.reduce} {measured:.4g} (need {cmp})" if measured is not None and c.progress is None else (
        f"{mark} {c.reduce}: {j.value * 100:.0f}% of the way" if c.progress is not None and j.value is not None else f"{mark} {c.reduce}")
    return Window(int(steps[0]), int(steps[-1]), f"{mark} {j.text}", short, j.passed, measured if show else None,
                  threshold, show, row)


def _guard_threshold(g: Guard, phase: Phase, s: Series, plot: MetricPlot, trips: list[dict], row: dict) -> None:
    """A diverges guard on the plot of its metric: its smoothed level, its threshold, where it tripped."""
    # The guard's own level and threshold, fed the stored points as the live guard was (through Guards, so
    # that a short phase's windows are scaled to its planned length as they were live).
    guards = Guards([g], phase.stop_at, None, total_steps_of(phase))
    st = guards.states[0]
    smoother, d = st.smoother, g.diverges
    assert smoother is not None and d is not None and g.metric is not None  # a diverges guard on a plotted metric
    sign = 1.0 if g.mode == "min" else -1.0
    sm_values, limits = [], []
    for step, value, wall in zip(s.steps.tolist(), s.values.tolist(), s.walls.tolist()):
        guards.point(int(step), g.metric, float(value), float(wall))
        v = smoother.value
        sm_values.append(v * sign if v is not None and math.isfinite(v) else math.nan)
        best = st.best
        margin = st.margin()[0] if best is not None else None
        limits.append((best + margin) * sign if best is not None and margin is not None else math.nan)
    plot.smoothed = np.array(sm_values)
    plot.smoothing = (f"{d.smoothing['steps']:g} steps" if isinstance(d.smoothing, dict)
                      else f"weight {d.smoothing:g}" if d.smoothing is not None
                      else (f"{smoother.tau:g} steps" if smoother.tau else "weight 0.6")) + ", the guard's"
    trip_step = next((t["step"] for t in trips if t["message"].startswith(f"guard {st.label} ")), None)
    if trip_step is None and st.tripped is not None and row["status"] not in (S.RUNNING, S.DETACHED):
        trip_step = st.tripped.step
    plot.thresholds.append(Threshold(st.label, s.steps, np.array(limits), trip_step))


def phase_report(store: Store, row: dict) -> PhaseReport:
    ms = _metric_set(store.metric_points(row["id"]))
    try:
        phase = Phase.model_validate(json.loads(row["phase_json"])) if row["phase_json"] not in ("", "{}") else None
    except ValueError:
        phase = None
    origin = metrics_origin(ms)
    cks = store.checkpoints(row["id"])
    trips = [{"step": e["data"].get("step"), "message": e["message"]}
             for e in store.events(row["run_id"]) if e["phase_id"] == row["id"] and e["kind"] == "guard.tripped"]
    plots: dict[str, MetricPlot] = {}
    for name, s in sorted(ms.series.items()):
        if len(s):
            sm = smoothed(s.steps, s.values, weight=TENSORBOARD_WEIGHT)
            plots[name] = MetricPlot(row["name"], name, f"{row['name']}: {name}", s.steps, s.values,
                                     np.where(np.isfinite(sm), sm, np.nan), f"weight {TENSORBOARD_WEIGHT}")
    if phase is not None:
        for g in phase.guards:
            if g.kind != "diverges" or g.metric not in plots:
                continue
            _guard_threshold(g, phase, ms.series[g.metric], plots[g.metric], trips, row)
        for _k, c in enumerate(_criteria(phase.success)):
            if c.metric in plots:
                w = _window(c, ms, origin, len(plots[c.metric].windows))
                if w is not None:
                    plots[c.metric].windows.append(w)
        # checkpoints: without keep: has no metric to mark them on (it raised AttributeError here before)
        keep = phase.checkpoints.keep if phase.checkpoints is not None else None
        by = keep.by if keep is not None else None
        if by in plots and cks:
            s = ms.series[by]
            for ck in cks:
                value = ck["score"]
                if value is None:
                    idx = np.searchsorted(s.steps, ck["step"], side="right") - 1
                    value = float(s.values[idx]) if idx >= 0 else None
                if value is not None and math.isfinite(value):
                    plots[by].checkpoints.append(Mark(int(ck["step"]), float(value), ck["state"]))
    watched = {g.metric for g in (phase.guards if phase else [])} | {c.metric for c in _criteria(phase.success if phase else None)}
    ordered = sorted(plots.values(), key=lambda p: (p.metric not in watched, p.metric))
    return PhaseReport(row, ordered, cks, trips)


def chain_of(store: Store, run_id: str, phases: Sequence[dict[str, Any]]) -> tuple[ChainNode | None, str]:
    """The chain graph from the run's first spec, with the path this run took marked."""
    from runner.decisions import graph

    run = store.run(run_id)
    try:
        g = graph.build(run["spec_path"])
    except (SpecError, OSError) as exc:
        return None, f"the chain's specs could not be read now ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    ran = {os.path.normpath(str(Path(p["spec_path"]).resolve())) for p in phases}
    fired = set()
    for e in store.events(run_id):
        if e["kind"] == "chain.decision" and e["data"].get("rule") is not None and e["data"].get("spec"):
            fired.add((os.path.normpath(str(Path(e["data"]["spec"]).resolve())), e["data"]["rule"]))

    def node(path: str, seen: tuple[str, ...]) -> ChainNode:
        spec = g.specs.get(path)
        n = ChainNode(path, spec.phase.name if spec else "?", path in ran)
        for e in g.edges:
            if e.source != path:
                continue
            taken = (path, e.rule) in fired
            name = g.specs[e.target].phase.name if e.target in g.specs else "?"
            if e.target in seen:
                n.edges.append(ChainEdge(e.when, None, name, taken, loop=True))
            else:
                n.edges.append(ChainEdge(e.when, node(e.target, seen + (e.target,)), name, taken))
        return n

    return node(g.root, (g.root,)), ""


def run_report(store: Store, run_id: str) -> RunReport:
    phases = store.phases(run_id)
    chain, problem = chain_of(store, run_id, phases)
    return RunReport(store.run(run_id), run_status(phases), [phase_report(store, p) for p in phases],
                     store.events(run_id), chain, problem, chain_outcome(phases) or "")
