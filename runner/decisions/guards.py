"""Pure decisions: the guards that stop a run early (divergence, non-finite, missing, stall, timeout, expect) and
the planned end.

Guards are incremental state machines fed points in step order, so the same
code judges a live run (fed each poll) and a replay of a finished logdir (fed
everything at once, reporting the step at which each would have tripped).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runner.metrics.series import MetricSet
from runner.spec.criteria_models import Divergence, Expect, Guard, StopAt
from runner.spec.models import Phase
from runner.decisions.smoothing import EMA_SIGMAS, HOLD_SHARE, LEVEL_MIN_POINTS, LEVEL_SHARE, PERSIST_SHARE, ROBUST_SIGMAS, RobustLevel, Smoother, num as _num, origin_of


# ---------------------------------------------------------------------------- guards


@dataclass
class Trip:
    guard: str
    step: int | None
    reason: str
    kind: str = ""  # the guard's kind (diverges, non_finite, missing, stall, timeout, expect): the failure kind


def _fmt_step(step: int | None) -> str:
    return "?" if step is None else f"{step:,}"


class GuardState:
    """One guard's running state, fed its metric's points one at a time in step order."""

    def __init__(self, guard: Guard, index: int):
        self.guard = guard
        self.index = index
        self.kind = guard.kind
        self.tripped: Trip | None = None
        self.distance = ""  # human text: how far from tripping
        self.best: float | None = None  # diverges: best smoothed value (sign-adjusted: lower is better)
        self.best_step: int | None = None
        self.run_start: int | None = None  # first step of the current run of violations
        self.run_len = 0
        self.run_start_wall: float | None = None
        self.smoother: Smoother | RobustLevel | None = None
        if self.kind == "diverges":
            d = self._diverges
            persist = float(d.for_["steps"]) if "steps" in d.for_ else None
            if isinstance(d.smoothing, dict):  # a window in steps: the robust level over it
                self.smoother = RobustLevel(max(1.0, float(d.smoothing["steps"])), persist)
            elif d.smoothing is not None:  # a weight per point: the EMA of the despiked points
                self.smoother = Smoother(weight=float(d.smoothing))
            elif persist is not None:
                self.smoother = RobustLevel(max(1.0, LEVEL_SHARE * persist), PERSIST_SHARE * persist, LEVEL_MIN_POINTS)
            else:
                self.smoother = Smoother(weight=0.6)

    @property
    def _diverges(self) -> Divergence:
        """A diverges guard's check (the model's validator: the kind is the one check a guard sets)."""
        assert self.guard.diverges is not None, f"not a diverges guard: {self.kind}"
        return self.guard.diverges

    @property
    def persist_steps(self) -> float | None:
        """How many steps a divergence must last (its `for`, capped in a short phase), when `for` is in steps."""
        if self.kind != "diverges" or "steps" not in self._diverges.for_:
            return None
        if isinstance(self.smoother, RobustLevel) and self.smoother.persist is not None:
            return self.smoother.persist
        return float(self._diverges.for_["steps"])

    @property
    def label(self) -> str:
        g = self.guard
        what = {"non_finite": "non-finite", "diverges": "diverges", "stall": "stall", "missing": "missing",
                "timeout": "timeout"}[self.kind]
        return f"{g.metric} {what}" if g.metric else what

    def point(self, step: int, value: float, wall: float) -> Trip | None:
        if self.tripped:
            return self.tripped
        if self.kind == "non_finite":
            if not math.isfinite(value):
                return self._trip(step, f"{self.guard.metric} is {value} at step {step:,}")
            self.distance = "all finite"
        elif self.kind == "diverges":
            return self._divergence(step, value, wall)
        return None

    def margin(self) -> tuple[float | None, str]:
        """The allowed rise above the best, and how it was set."""
        d = self._diverges
        sm = self.smoother
        assert sm is not None  # __init__ sets one for every diverges guard

        def part(m: dict[str, float]) -> tuple[float | None, str]:
            if "relative" in m:
                assert self.best is not None  # asked once a best is known (_divergence; the report checks st.best)
                return abs(self.best) * m["relative"], f"{m['relative'] * 100:g}% of the best"
            if "absolute" in m:
                return m["absolute"], f"{m['absolute']:g}"
            sigma = sm.sigma
            of = "the level's" if isinstance(sm, RobustLevel) else "the curve's"
            return (None, "") if sigma is None else (m["sigma"] * sigma, f"{m['sigma']:g} sigma of {of} noise")

        above = d.above_best_by or {"sigma": ROBUST_SIGMAS if isinstance(sm, RobustLevel) else EMA_SIGMAS}
        value, how = part(above)
        if "sigma" in above:
            floor, floor_how = part(d.min_margin)
            if value is not None and floor is not None and floor > value:
                value, how = floor, f"{floor_how}, the min_margin floor"
        return value, how

    def _divergence(self, step: int, value: float, wall: float) -> Trip | None:
        g = self.guard
        sign = 1.0 if g.mode == "min" else -1.0
        sm = self.smoother
        assert sm is not None  # __init__ sets one for every diverges guard
        s = sm.push(step, value * sign, learn_noise=self.run_start is None)
        if not sm.settled:
            self.distance = "settling (smoothing the first points)"
            return None
        best = sm.best_value if isinstance(sm, RobustLevel) else s
        assert best is not None  # RobustLevel.push sets best_value
        if self.best is None or best < self.best:
            self.best, self.best_step = best, step
            self.run_start, self.run_len = None, 0
        margin, how = self.margin()
        if margin is None:
            return None
        limit = self.best + margin
        shown = s * sign if math.isfinite(s) else s
        # Once beyond the limit, a robust level stays in the run while it is beyond HOLD_SHARE of the margin:
        # its noise around the limit does not restart the count of a rise that goes on.
        hold = HOLD_SHARE if isinstance(sm, RobustLevel) and self.run_start is not None else 1.0
        if s > self.best + hold * margin:
            if self.run_start is None:
                self.run_start, self.run_len, self.run_start_wall = step, 0, wall
            self.run_len += 1
            window = self._diverges.for_
            held: float
            need: float
            if "steps" in window:
                persist = self.persist_steps
                assert persist is not None  # a diverges guard with `for` in steps
                held, need = step - self.run_start, persist
            elif "evals" in window:
                held, need = self.run_len, window["evals"]
            else:
                assert self.run_start_wall is not None  # set with run_start
                held, need = wall - self.run_start_wall, window["seconds"]
            if held >= need:
                rise = abs((s - self.best) / self.best) * 100 if self.best else float("inf")
                side = "above" if sign > 0 else "below"
                return self._trip(step, (
                    f"smoothed {g.metric} has stayed more than {_num(margin)} ({how}) {side} its smoothed best "
                    f"{_num(self.best * sign)} (step {self.best_step:,}) since step {self.run_start:,}; "
                    f"at step {step:,} it is {_num(shown)}, {rise:.1f}% {side} the best{self._level_text()}"))
        else:
            self.run_start, self.run_len = None, 0
        persist_text = self._persist_text()
        self.distance = (f"smoothed {_num(shown)}; trips if it stays {'above' if sign > 0 else 'below'} {_num(limit * sign)} "
                         f"(its best {_num(self.best * sign)} at step {self.best_step:,} "
                         f"{'+' if sign > 0 else '-'} {_num(margin)}, {how}) for {persist_text}"
                         + (f"; beyond it since step {self.run_start:,}" if self.run_start is not None else ""))
        return None

    def _level_text(self) -> str:
        sm = self.smoother
        if not isinstance(sm, RobustLevel):
            return ""
        return f" (smoothed: the mean of the last {sm.tau:,.0f} steps, spikes left out)"

    def _persist_text(self) -> str:
        window = self._diverges.for_
        need = self.persist_steps
        if need is None or need == window["steps"]:
            return _window_text(window)
        return f"{need:,.0f} steps (`for: {int(window['steps']):,} steps` capped to the phase's planned length)"

    def _trip(self, step: int | None, reason: str) -> Trip:
        self.tripped = Trip(self.label, step, reason, self.kind)
        return self.tripped


def _window_text(window: dict[str, float]) -> str:
    if "steps" in window:
        return f"{int(window['steps']):,} steps"
    if "evals" in window:
        return f"{int(window['evals'])} evaluations"
    return f"{window['seconds']:g}s"


def _margin_text(margin: dict[str, float]) -> str:
    if "relative" in margin:
        return f"{margin['relative'] * 100:g}%"
    if "sigma" in margin:
        return f"{margin['sigma']:g} sigma"
    return f"+{margin['absolute']:g}"


class Guards:
    """All guards of a phase, and its planned end.  ``feed`` new metric points (any chunks, in step
    order); ``check_clock`` for time-based guards.  The live phase and `runner replay` both use it."""

    def __init__(self, guards: list[Guard], stop_at: StopAt | None = None, expect: Expect | None = None,
                 total_steps: int | None = None):
        self.states = [GuardState(g, i) for i, g in enumerate(guards)]
        self.stop_at = stop_at
        self.total_steps = total_steps  # metrics.total_steps (an absolute step): the planned length without a stop_at
        self.expect = ExpectCheck(expect) if expect is not None else None
        self.first_step: int | None = None
        self.second_step: int | None = None
        self.last_step: int | None = None
        self.last_new_wall: float | None = None
        self.first_wall: float | None = None
        self.seen: set[str] = set()
        self.end_reached: int | None = None  # the step at which the planned end was reached

    @property
    def origin(self) -> int | None:
        return origin_of(self.first_step, self.second_step)

    @property
    def planned_end(self) -> int | None:
        if self.stop_at is None:
            return None
        if self.stop_at.step is not None:
            return int(self.stop_at.step)
        assert self.stop_at.steps is not None  # StopAt's validator: exactly one of step and steps
        return None if self.origin is None else self.origin + int(self.stop_at.steps)

    @property
    def planned_length(self) -> int | None:
        """The phase's planned length in steps (stop_at, else metrics.total_steps), once its start is known:
        a divergence guard's windows scale down to fit a short phase."""
        if self.stop_at is not None and self.stop_at.steps is not None:
            return int(self.stop_at.steps)
        end = self.planned_end if self.stop_at is not None else (None if self.total_steps is None else int(self.total_steps))
        origin = self.origin
        return None if end is None or origin is None else max(1, end - origin)

    def feed(self, new: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Trip | None:
        """New points per metric name.  Points are taken in (step, metric name) order.  Returns the first trip."""
        parts = [(np.asarray(s, dtype=np.int64), np.full(len(s), name, dtype=object), np.asarray(v, dtype=np.float64),
                  np.asarray(w, dtype=np.float64)) for name, (s, v, w) in sorted(new.items()) if len(s)]
        if not parts:
            return self.tripped
        steps = np.concatenate([p[0] for p in parts])
        names = np.concatenate([p[1] for p in parts])
        values = np.concatenate([p[2] for p in parts])
        walls = np.concatenate([p[3] for p in parts])
        order = np.lexsort((names.astype(str), steps))
        for i in order.tolist():
            self.point(int(steps[i]), str(names[i]), float(values[i]), float(walls[i]))
        return self.tripped

    def point(self, step: int, name: str, value: float, wall: float) -> None:
        if self.first_step is None:
            self.first_step, self.first_wall = step, wall
        elif self.second_step is None and step > self.first_step:
            self.second_step = step
        if self.last_step is None or step > self.last_step:
            if self.last_new_wall is not None:
                self._stall_gap(wall - self.last_new_wall)
            self.last_step, self.last_new_wall = step, wall
        self.seen.add(name)
        if self.expect is not None and not self.expect.tripped:
            self.expect.point(step, name, value, self.origin)
        for st in self.states:
            if st.guard.metric == name and st.kind in ("non_finite", "diverges"):
                if isinstance(st.smoother, RobustLevel) and st.smoother.gap is None:
                    st.smoother.planned_length = self.planned_length  # read when its windows are fixed
                st.point(step, value, wall)
        origin = self.origin
        for st in self.states:
            g = st.guard
            if st.tripped or st.kind != "missing":
                continue
            assert g.missing is not None  # the model's validator: a guard's kind is the one check it sets
            if g.metric in self.seen:
                st.distance = "present"
            elif "steps" in g.missing.within:
                assert origin is not None  # this point set first_step
                limit = origin + int(g.missing.within["steps"])
                st.distance = f"not seen by step {step:,} (limit {limit:,})"
                if step >= limit:
                    st._trip(step, f"{g.metric} has not appeared within {int(g.missing.within['steps']):,} steps "
                                   f"of the phase's start (step {origin:,}); now at step {step:,}")
        end = self.planned_end
        if self.end_reached is None and end is not None and step >= end:
            self.end_reached = step

    def _stall_gap(self, gap: float) -> None:
        for st in self.states:
            stall = st.guard.stall  # set on a stall guard (its kind is the one check it sets)
            if st.kind == "stall" and not st.tripped and stall is not None and gap >= stall:
                st._trip(self.last_step, f"stalled: no new step for {gap:.0f}s after step {_fmt_step(self.last_step)} "
                                         f"(limit {stall:.0f}s)")

    def check_clock(self, elapsed: float, since_new_step: float) -> Trip | None:
        """Time-based guards: timeout, stall, missing-within-a-duration."""
        for st in self.states:
            if st.tripped:
                continue
            g = st.guard
            # the model's validator: a guard's kind is the one check it sets
            if st.kind == "timeout":
                assert g.timeout is not None
                st.distance = f"{elapsed:.0f}s of {g.timeout:.0f}s"
                if elapsed >= g.timeout:
                    st._trip(self.last_step, f"timeout: {elapsed:.0f}s elapsed (limit {g.timeout:.0f}s)")
            elif st.kind == "stall":
                assert g.stall is not None
                st.distance = f"last new step {since_new_step:.0f}s ago (limit {g.stall:.0f}s)"
                if since_new_step >= g.stall:
                    st._trip(self.last_step, f"stalled: no new step for {since_new_step:.0f}s after step "
                                             f"{_fmt_step(self.last_step)} (limit {g.stall:.0f}s)")
            elif st.kind == "missing" and g.metric not in self.seen and g.missing is not None and "seconds" in g.missing.within:
                limit = g.missing.within["seconds"]
                st.distance = f"not seen after {elapsed:.0f}s (limit {limit:.0f}s)"
                if elapsed >= limit:
                    st._trip(self.last_step, f"{g.metric} has not appeared within {limit:.0f}s")
        return self.tripped

    @property
    def tripped(self) -> Trip | None:
        """The first trip by step (ties: the guard listed first)."""
        trips = [st.tripped for st in self.states if st.tripped]
        if self.expect is not None and self.expect.tripped:
            trips.append(self.expect.tripped)
        if not trips:
            return None
        return min(trips, key=lambda t: (t.step if t.step is not None else float("inf")))


class ExpectCheck:
    """The phase's ``expect:``: the trainer's logged LR and first step against what the spec asked for."""

    def __init__(self, expect: Expect):
        self.lr = expect.lr_spec
        self.start = None if expect.start_step is None else int(expect.start_step)
        within = expect.start_within
        self.start_within = int(within["steps"]) if isinstance(within, dict) else int(within)
        self.tripped: Trip | None = None
        self.peak: float | None = None
        self.checked_start = False
        self.first: int | None = None
        self.start_problem = ""
        self.distance = ""

    def _tolerance(self, asked: float) -> float:
        w = self.lr.within if self.lr is not None else {}
        if "absolute" in w:
            return float(w["absolute"])
        return abs(asked) * float(w.get("relative", 0.1))

    def point(self, step: int, name: str, value: float, origin: int | None) -> None:
        if self.start is not None and not self.checked_start:
            self.checked_start, self.first = True, step
            if not self.start <= step <= self.start + self.start_within:
                self.start_problem = (
                    f"the trainer's first logged step is {step:,}; the spec expects a step count that starts at "
                    f"{self.start:,} (first step within {self.start_within:,}) — it resumed a checkpoint's step count "
                    "(a --resume restores the step, the optimizer and the LR schedule; --base-checkpoint loads weights only)")
        lr_problem = self._lr(step, name, value, origin)
        if not lr_problem and self.start_problem and self.lr is not None and name == self.lr.metric and \
                step == self.first and math.isfinite(value) and abs(value - float(self.lr.value)) > self._tolerance(float(self.lr.value)):
            # A resumed step count: no warmup of this phase explains an LR off the asked value either.
            lr_problem = (f"the trainer runs at {value:.3g} (step {step:,}); the spec asked for {float(self.lr.value):.3g} — "
                          "it restored its scheduler from the checkpoint (a --resume keeps the checkpoint's LR schedule "
                          "and ignores --learning-rate; start from --base-checkpoint to train at a new LR)")
        if lr_problem:
            also = f"; and {self.start_problem}" if self.start_problem else ""
            self.tripped = Trip("expect lr", step, lr_problem + also, "expect")
        elif self.start_problem and (self.lr is None or (self.first is not None and step > self.first) or name == self.lr.metric):
            # said once the first step's LR could be judged too (the same resume usually explains both)
            self.tripped = Trip("expect start_step", step, self.start_problem, "expect")

    def _lr(self, step: int, name: str, value: float, origin: int | None) -> str:
        if self.lr is None or name != self.lr.metric or not math.isfinite(value):
            return ""
        asked = float(self.lr.value)
        tol = self._tolerance(asked)
        self.peak = value if self.peak is None else max(self.peak, value)
        after = int(self.lr.after["steps"]) if isinstance(self.lr.after, dict) else int(str(self.lr.after).split()[0])
        first = origin if origin is not None else step
        self.distance = f"peak {self.peak:.3g} so far (asked {asked:.3g} ± {tol:.2g})"
        if value > asked + tol:
            why = "higher"
        elif step >= first + after and self.peak < asked - tol:
            why = "lower"
        else:
            return ""
        return (f"the trainer runs at {value:.3g} (step {step:,}); the spec asked for {asked:.3g} — {why} than asked: it "
                "restored its scheduler from the checkpoint (a --resume keeps the checkpoint's LR schedule and ignores "
                "--learning-rate; start from --base-checkpoint to train at a new LR)")


def total_steps_of(phase: Phase) -> int | None:
    """The phase's metrics.total_steps as a number (resolved from its spec), None when not given."""
    total = phase.metrics.total_steps if phase.metrics is not None else None
    try:
        return int(total) if total is not None else None
    except (TypeError, ValueError):
        return None


def run_guards(guards: list[Guard], stop_at: StopAt | None, metrics: MetricSet, clock_from_walls: bool = True,
               expect: Expect | None = None, total_steps: int | None = None) -> Guards:
    """Every point of ``metrics`` through a fresh Guards, as a live phase would have fed them, with
    the clock taken from the points' wall times (what `runner replay` does)."""
    g = Guards(guards, stop_at, expect, total_steps)
    new = {name: (s.steps, s.values, s.walls) for name, s in metrics.series.items() if len(s)}
    if not clock_from_walls:
        g.feed(new)
        return g
    parts = sorted(((int(st), name, float(v), float(w)) for name, (ss, vv, ww) in new.items()
                    for st, v, w in zip(ss.tolist(), vv.tolist(), ww.tolist())), key=lambda p: (p[0], p[1]))
    for step, name, value, wall in parts:
        if g.first_wall is not None:
            g.check_clock(wall - g.first_wall, 0.0)
        g.point(step, name, value, wall)
    return g
