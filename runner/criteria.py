"""Pure decisions: windows, reductions, guards (incremental), success criteria and verdicts.

Guards are incremental state machines fed points in step order, so the same
code judges a live run (fed each poll) and a replay of a finished logdir (fed
everything at once, reporting the step at which each would have tripped).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from runner.metrics.series import MetricSet, Series
from runner.spec.criteria_models import Criterion, Group, Guard

# ---------------------------------------------------------------------------- windows and reductions


@dataclass(frozen=True)
class Window:
    kind: str  # all | last | since
    n: int = 0


def parse_window(value: str | int) -> Window:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError("a window of steps must be at least 1")
        return Window("last", value)
    text = str(value).strip()
    if text == "all":
        return Window("all")
    m = re.fullmatch(r"(?:last\s+)?(\d+)\s*steps?", text)
    if m:
        return Window("last", int(m.group(1)))
    m = re.fullmatch(r"since\s+(?:step\s+)?(\d+)", text)
    if m:
        return Window("since", int(m.group(1)))
    raise ValueError(f"window must be 'all', 'last N steps' or 'since STEP', got {value!r}")


def window_points(series: Series, window: Window) -> tuple[np.ndarray, np.ndarray]:
    if not len(series):
        return series.steps, series.values
    if window.kind == "all":
        return series.steps, series.values
    if window.kind == "since":
        return series.since(window.n)
    last = int(series.steps[-1])
    return series.since(last - window.n + 1)


def reduce(steps: np.ndarray, values: np.ndarray, how: str, alpha: float = 0.1) -> float | None:
    if values.size == 0:
        return None
    if how == "last":
        return float(values[-1])
    if how == "mean":
        return float(np.mean(values))
    if how == "min":
        return float(np.min(values))
    if how == "max":
        return float(np.max(values))
    if how == "ema":
        acc = float(values[0])
        for v in values[1:].tolist():
            acc = alpha * v + (1 - alpha) * acc
        return acc
    if how == "slope":
        if values.size < 2 or steps[-1] == steps[0]:
            return None
        finite = np.isfinite(values)
        if finite.sum() < 2:
            return None
        slope = np.polyfit(steps[finite].astype(np.float64), values[finite], 1)[0]
        return float(slope * 1000.0)  # per 1,000 steps, so thresholds read naturally
    raise ValueError(how)


# ---------------------------------------------------------------------------- guards


@dataclass
class Trip:
    guard: str
    step: int | None
    reason: str


class GuardState:
    """One guard's running state.  ``feed`` new points of its metric (in step order)."""

    def __init__(self, guard: Guard, index: int):
        self.guard = guard
        self.index = index
        self.kind = guard.kind
        self.best: float | None = None
        self.run_start: int | None = None  # first step of the current run of violations
        self.run_len = 0
        self.run_start_wall: float | None = None
        self.tripped: Trip | None = None
        self.distance = ""  # human text: how far from tripping

    @property
    def label(self) -> str:
        g = self.guard
        what = {"non_finite": "non-finite", "diverges": "diverges", "stall": "stall", "missing": "missing",
                "timeout": "timeout", "max_steps": "max_steps"}[self.kind]
        return f"{g.metric} {what}" if g.metric else what

    def feed(self, steps: np.ndarray, values: np.ndarray, walls: np.ndarray) -> Trip | None:
        if self.tripped or steps.size == 0:
            return self.tripped
        if self.kind == "non_finite":
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                i = int(bad[0])
                return self._trip(int(steps[i]), f"{self.guard.metric} is {values[i]} at step {int(steps[i])}")
            self.distance = "all finite"
        elif self.kind == "diverges":
            return self._feed_divergence(steps, values, walls)
        return None

    def _feed_divergence(self, steps, values, walls) -> Trip | None:
        g = self.guard
        d = g.diverges
        sign = 1.0 if g.mode == "min" else -1.0
        v = values * sign  # lower is better from here on
        finite = np.where(np.isfinite(v), v, np.inf)
        prior = np.inf if self.best is None else self.best * sign
        best = np.minimum.accumulate(np.concatenate([[prior], finite]))[:-1]  # best strictly before each point
        if "relative" in d.above_best_by:
            limit = best + np.abs(best) * d.above_best_by["relative"]
        else:
            limit = best + d.above_best_by["absolute"]
        violating = (v > limit) & np.isfinite(best)
        violating |= ~np.isfinite(v) & np.isfinite(best)
        window = d.for_
        for i in range(steps.size):
            # Vectorised above; this loop only tracks the run of violations.
            if violating[i]:
                if self.run_start is None:
                    self.run_start, self.run_len, self.run_start_wall = int(steps[i]), 0, float(walls[i])
                self.run_len += 1
                held = (int(steps[i]) - self.run_start) if "steps" in window else (
                    self.run_len if "evals" in window else float(walls[i]) - self.run_start_wall)
                need = window.get("steps", window.get("evals", window.get("seconds")))
                if held >= need:
                    best_val = float(best[i]) * sign
                    self.best = best_val
                    return self._trip(int(steps[i]), f"{g.metric} {values[i]:.4g} at step {int(steps[i])} has stayed above "
                                      f"{_margin_text(d.above_best_by)} of its best ({best_val:.4g}) since step {self.run_start}")
            else:
                self.run_start, self.run_len = None, 0
        new_best = float(np.min(finite)) if finite.size else np.inf
        if math.isfinite(min(prior, new_best)):
            self.best = min(prior, new_best) * sign
        if self.best is not None:
            last = float(values[-1])
            lim = float(limit[-1]) * sign if np.isfinite(limit[-1]) else None
            self.distance = f"best {self.best:.4g}, last {last:.4g}" + (f", limit {lim:.4g}" if lim is not None else "")
            if self.run_start is not None:
                self.distance += f", above since step {self.run_start}"
        return None

    def _trip(self, step: int | None, reason: str) -> Trip:
        self.tripped = Trip(self.label, step, reason)
        return self.tripped


def _margin_text(margin: dict[str, float]) -> str:
    return f"{margin['relative'] * 100:g}%" if "relative" in margin else f"+{margin['absolute']:g}"


class Guards:
    """All guards of a phase.  ``feed`` new metric points; ``check_clock`` for time-based guards."""

    def __init__(self, guards: list[Guard]):
        self.states = [GuardState(g, i) for i, g in enumerate(guards)]
        self.last_step: int | None = None
        self.first_wall: float | None = None
        self.last_new_wall: float | None = None  # when a new step was last seen (wall clock of the reader)
        self.seen: set[str] = set()

    def feed(self, new: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Trip | None:
        """New points per metric name.  Returns the first trip, if any."""
        trip = None
        for name, (steps, values, walls) in new.items():
            if steps.size == 0:
                continue
            self.seen.add(name)
            top = int(steps.max())
            if self.last_step is None or top > self.last_step:
                self.last_step = top
            for st in self.states:
                if st.guard.metric == name and st.kind in ("non_finite", "diverges"):
                    t = st.feed(steps, values, walls)
                    trip = trip or t
        for st in self.states:
            if st.tripped:
                continue
            g = st.guard
            if st.kind == "max_steps" and self.last_step is not None:
                st.distance = f"step {self.last_step} of {g.max_steps}"
                if self.last_step >= g.max_steps:
                    trip = trip or st._trip(self.last_step, f"reached step {self.last_step} (max_steps {g.max_steps})")
            if st.kind == "missing" and g.metric not in self.seen and "steps" in g.missing.within:
                limit = int(g.missing.within["steps"])
                if self.last_step is not None:
                    st.distance = f"not seen by step {self.last_step} (limit {limit})"
                    if self.last_step >= limit:
                        trip = trip or st._trip(self.last_step, f"{g.metric} has not appeared by step {self.last_step} (limit {limit} steps)")
            elif st.kind == "missing" and g.metric in self.seen:
                st.distance = "present"
        return trip

    def check_clock(self, elapsed: float, since_new_step: float) -> Trip | None:
        """Time-based guards: timeout, stall, missing-within-a-duration."""
        trip = None
        for st in self.states:
            if st.tripped:
                continue
            g = st.guard
            if st.kind == "timeout":
                st.distance = f"{elapsed:.0f}s of {g.timeout:.0f}s"
                if elapsed >= g.timeout:
                    trip = trip or st._trip(self.last_step, f"timeout: {elapsed:.0f}s elapsed (limit {g.timeout:.0f}s)")
            elif st.kind == "stall":
                st.distance = f"last new step {since_new_step:.0f}s ago (limit {g.stall:.0f}s)"
                if since_new_step >= g.stall:
                    trip = trip or st._trip(self.last_step, f"stalled: no new step for {since_new_step:.0f}s (limit {g.stall:.0f}s)")
            elif st.kind == "missing" and g.metric not in self.seen and "seconds" in g.missing.within:
                limit = g.missing.within["seconds"]
                st.distance = f"not seen after {elapsed:.0f}s (limit {limit:.0f}s)"
                if elapsed >= limit:
                    trip = trip or st._trip(self.last_step, f"{g.metric} has not appeared within {limit:.0f}s")
        return trip

    @property
    def tripped(self) -> Trip | None:
        return next((st.tripped for st in self.states if st.tripped), None)


# ---------------------------------------------------------------------------- success criteria


@dataclass
class Judgement:
    """One criterion (or group) with its measured value and whether it passed (None = no data)."""

    text: str
    value: float | None
    passed: bool | None
    children: list["Judgement"] = field(default_factory=list)

    def lines(self, indent: int = 0) -> list[str]:
        mark = {True: "✓", False: "✗", None: "?"}[self.passed]
        out = [f"{'  ' * indent}{mark} {self.text}"]
        for c in self.children:
            out += c.lines(indent + 1)
        return out

    def as_dict(self) -> dict:
        return {"text": self.text, "value": self.value, "passed": self.passed, "children": [c.as_dict() for c in self.children]}


def _num(x) -> str:
    try:
        return f"{float(x):.4g}"
    except (TypeError, ValueError):
        return str(x)


def describe(c: Criterion) -> str:
    w = parse_window(c.window)
    where = "whole phase" if w.kind == "all" else (f"last {w.n} steps" if w.kind == "last" else f"since step {w.n}")
    if c.below is not None:
        cmp = f"< {_num(c.below)}"
    elif c.above is not None:
        cmp = f"> {_num(c.above)}"
    else:
        p = c.progress
        cmp = f"≥ {_margin_text(p.at_least)} of the way from {p.from_} to {p.to}"
    return f"{c.reduce}({c.metric}, {where}) {cmp}"


def judge_criterion(c: Criterion, metrics: MetricSet) -> Judgement:
    series = metrics.series.get(c.metric)
    text = describe(c)
    if series is None or not len(series):
        return Judgement(text + ": no data", None, None)
    steps, values = window_points(series, parse_window(c.window))
    value = reduce(steps, values, c.reduce, c.ema_alpha)
    if value is None or not math.isfinite(value):
        return Judgement(f"{text}: measured {value}", value, None if value is None else False)
    if c.below is not None:
        passed = value < float(c.below)
        return Judgement(f"{text}: measured {value:.4g}", value, passed)
    if c.above is not None:
        passed = value > float(c.above)
        return Judgement(f"{text}: measured {value:.4g}", value, passed)
    p = c.progress
    start = float(series.values[0]) if p.from_ == "start" else float(p.from_)
    target = float(p.to)
    if start == target:
        rate = 1.0
    else:
        rate = (start - value) / (start - target)
    need = p.at_least.get("relative", p.at_least.get("absolute"))
    passed = rate >= need
    return Judgement(f"{text}: measured {value:.4g} from {start:.4g}, {rate * 100:.0f}% of the way", rate, passed)


def judge(node: Criterion | Group, metrics: MetricSet) -> Judgement:
    if isinstance(node, Criterion):
        return judge_criterion(node, metrics)
    items = node.all if node.all is not None else node.any
    children = [judge(i, metrics) for i in items]
    results = [c.passed for c in children]
    if node.all is not None:
        passed = False if False in results else (None if None in results else True)
        text = "all of"
    else:
        passed = True if True in results else (None if None in results else False)
        text = "any of"
    return Judgement(text, None, passed, children)


@dataclass
class Verdict:
    verdict: str  # success | failure | inconclusive
    reasons: list[str]
    judgement: Judgement | None = None

    def explanation(self) -> str:
        lines = list(self.reasons)
        if self.judgement is not None:
            lines += self.judgement.lines()
        return "\n".join(lines)


def verdict(exit_ok: bool, exit_reason: str, trip: Trip | None, success: Group | None, metrics: MetricSet,
            cancelled: bool = False, met_early: bool = False) -> Verdict:
    """The phase's verdict with the reasons a person can check."""
    judgement = judge(success, metrics) if success is not None else None
    if cancelled:
        return Verdict("failure", ["cancelled on request"], judgement)
    if trip is not None:
        return Verdict("failure", [f"guard tripped ({trip.guard}): {trip.reason}"], judgement)
    if not exit_ok and not met_early:
        return Verdict("failure", [f"container failed: {exit_reason}"], judgement)
    if judgement is None:
        return Verdict("success", [exit_reason, "no success criteria: judged by the exit code"], None)
    head = "criteria met, run stopped early" if met_early else f"container {exit_reason}"
    if judgement.passed is True:
        return Verdict("success", [head + "; success criteria passed"], judgement)
    if judgement.passed is False:
        return Verdict("failure", [head + "; success criteria not met"], judgement)
    return Verdict("inconclusive", [head + "; some criteria had no data"], judgement)
