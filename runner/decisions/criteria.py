"""Pure decisions: windows, reductions, guards (incremental), success criteria and verdicts.

Guards are incremental state machines fed points in step order, so the same
code judges a live run (fed each poll) and a replay of a finished logdir (fed
everything at once, reporting the step at which each would have tripped).
"""
from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from runner.lifecycle import GUARD_FAILURE, FailureKind
from runner.metrics.series import MetricSet, Series
from runner.spec.criteria_models import Criterion, Expect, Group, Guard, StopAt
from runner.spec.models import Phase
from runner.spec.windows import Window, parse_window

# ---------------------------------------------------------------------------- windows and reductions


def window_points(series: Series, window: Window, origin: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The points of a window.  'since N' counts from the phase's start (``origin``), not from step 0."""
    if not len(series):
        return series.steps, series.values
    if window.kind == "all":
        return series.steps, series.values
    if window.kind == "since":
        return series.since((origin or 0) + window.n)
    last = int(series.steps[-1])
    return series.since(last - window.n + 1)


def reduce(steps: np.ndarray, values: np.ndarray, how: str, alpha: float = 0.1) -> float | None:
    if values.size == 0:
        return None
    if how == "last":
        return float(values[-1])
    if how == "mean":
        return float(np.mean(values))
    if how == "median":
        return float(np.median(values))
    if how == "min":
        return float(np.min(values))
    if how == "max":
        return float(np.max(values))
    if how == "ema":  # debiased, as TensorBoard's smoothing with weight 1 - alpha
        acc = norm = 0.0
        for v in values.tolist():
            acc = (1 - alpha) * acc + alpha * v
            norm = (1 - alpha) * norm + alpha
        return acc / norm
    if how == "slope":
        if values.size < 2 or steps[-1] == steps[0]:
            return None
        finite = np.isfinite(values)
        if finite.sum() < 2:
            return None
        slope = np.polyfit(steps[finite].astype(np.float64), values[finite], 1)[0]
        return float(slope * 1000.0)  # per 1,000 steps, so thresholds read naturally
    raise ValueError(how)


# ---------------------------------------------------------------------------- the phase's start


def origin_of(first: int | None, second: int | None) -> int | None:
    """The step a phase started at, from its first two distinct logged steps.

    A run resumed at 351,000 that logs every 20 steps first logs 351,020: its start is one logging
    interval before its first logged step.  A first log at step 0 is the start itself."""
    if first is None:
        return None
    if second is None or first <= 0:
        return first
    return max(0, first - (second - first))


def metrics_origin(metrics: MetricSet) -> int | None:
    steps = [s.steps[:2] for s in metrics.series.values() if len(s)]
    if not steps:
        return None
    u = np.unique(np.concatenate(steps))
    return origin_of(int(u[0]), int(u[1]) if u.size > 1 else None)


# ---------------------------------------------------------------------------- smoothing


DESPIKE = 3  # running median over this many points: a one-off spike never reaches the average
SETTLED = 0.8  # the debiased EMA's weight of real data before its minimum counts as a best
NOISE_WEIGHT = 0.99  # the noise estimate averages |point - curve| over about the last 100 points
# Consecutive running medians share points, so the EMA of them wobbles more than the formula for
# independent points says: measured on white noise (benchmarks/guards.py), 1.4-1.8x; 1.6 is used.
MEDIAN_CORRELATION = 1.6
DEFAULT_MIN_POINTS = 25  # the default smoothing averages at least ~25 points (benchmarks/guards.py --every 100)


class Smoother:
    """A series despiked (running median of 3), then smoothed by a debiased EMA as TensorBoard's
    smoothing slider does, with an estimate of the smoothed curve's noise.  Fed point by point, so
    any split of the same points into chunks gives the same values."""

    def __init__(self, weight: float | None = None, tau_steps: float | None = None, min_points: int = 0):
        if (weight is None) == (tau_steps is None):
            raise ValueError("give a weight per point or a time constant in steps")
        self.weight, self.tau = weight, tau_steps
        # A time constant of at least this many logging intervals (set from the first interval seen):
        # a trainer that logs rarely still gets enough points averaged to see through its noise.
        self.min_points = min_points
        self.recent: list[float] = []
        self.acc = self.norm = 0.0
        self.value: float | None = None  # the smoothed value (inf while the despiked value is non-finite)
        self.noise_acc = self.noise_norm = 0.0
        self.noise_n = 0
        self.w_acc = self.w_norm = 0.0  # typical per-point weight (for the noise of the smoothed curve)
        self.last_step: int | None = None

    def push(self, step: int, x: float, learn_noise: bool = True) -> float:
        """Add a point (higher = worse: callers flip the sign for mode max); returns the smoothed value.
        ``learn_noise`` False keeps the noise estimate as it is (a guard does not let a divergence
        widen its own yardstick)."""
        self.recent.append(x if math.isfinite(x) else math.inf)
        if len(self.recent) > DESPIKE:
            del self.recent[0]
        m = sorted(self.recent)[(len(self.recent) - 1) // 2]  # lower median while fewer than 3: optimistic
        if self.weight is not None:
            w = self.weight
        else:
            # The first point stands for one step: the debiased average then settles after ~1.6 time constants.
            gap = 1 if self.last_step is None else max(0, step - self.last_step)
            if self.min_points and self.last_step is not None and self.noise_n == 0 and gap > 0:
                self.tau = max(self.tau, self.min_points * gap)
            w = math.exp(-gap / self.tau)
        self.last_step = step
        if not math.isfinite(m):
            self.value = math.inf
            return self.value
        if learn_noise and self.value is not None and math.isfinite(self.value):
            self.noise_acc = NOISE_WEIGHT * self.noise_acc + (1 - NOISE_WEIGHT) * abs(m - self.value)
            self.noise_norm = NOISE_WEIGHT * self.noise_norm + (1 - NOISE_WEIGHT)
            self.noise_n += 1
            self.w_acc = NOISE_WEIGHT * self.w_acc + (1 - NOISE_WEIGHT) * w
            self.w_norm = NOISE_WEIGHT * self.w_norm + (1 - NOISE_WEIGHT)
        self.acc = w * self.acc + (1 - w) * m
        self.norm = w * self.norm + (1 - w)
        self.value = self.acc / self.norm if self.norm > 0 else m
        return self.value

    @property
    def settled(self) -> bool:
        return self.norm >= SETTLED and self.noise_n >= 3

    @property
    def sigma(self) -> float | None:
        """Standard deviation of the smoothed curve's noise: the points' typical distance from the
        curve (mean absolute deviation x 1.2533 = sd for Gaussian noise), scaled by the EMA's
        variance reduction sqrt((1-w)/(1+w))."""
        if self.noise_n < 3 or self.noise_norm <= 0:
            return None
        point_sd = 1.2533 * self.noise_acc / self.noise_norm
        w = self.w_acc / self.w_norm if self.w_norm > 0 else 0.0
        return MEDIAN_CORRELATION * point_sd * math.sqrt((1 - w) / (1 + w))


def smoothed(steps: np.ndarray, values: np.ndarray, weight: float | None = None, tau_steps: float | None = None) -> np.ndarray:
    """The smoothed series (as divergence guards see it), for reports, outputs and criteria."""
    sm = Smoother(weight, tau_steps)
    return np.array([sm.push(int(s), float(v)) for s, v in zip(steps.tolist(), values.tolist())], dtype=np.float64)


# ---------------------------------------------------------------------------- the divergence guard's level


# Tuned with benchmarks/guards.py (15% noise with 5x spikes of ~300 steps logged every 20 and 100 steps; the
# incident's slow rise; a +20% regime change; a loss doubling inside a 5,000-step phase).
ROBUST_SIGMAS = 4.0  # the default margin of the robust level, in its noise's standard deviations
EMA_SIGMAS = 6.0  # the default margin of the EMA (a `for` in evals or a duration, or a weight per point)
OUTLIER_SIGMAS = 5.0  # a point this many robust standard deviations from its window's median is a spike: left out
LEVEL_SHARE = 0.5  # the default level window, as a share of `for` (steps) ...
LEVEL_MIN_POINTS = 10  # ... and at least this many logging intervals, so a trainer that logs rarely is still averaged
PERSIST_SHARE = 0.5  # the default persistence, as a share of `for`; never shorter than the window (two disjoint windows)
BEST_WINDOWS = 8  # the best is the best mean over this many level windows: less noise, so a best less lucky
BEST_SHORT_SIGMAS = 3.0  # ... or one window's mean plus this many of its sigmas, where lower (a fast fall)
BEST_UNCERTAINTY = 0.5  # ... plus this many of its own sigmas (a best is not a lucky dip of few points)
SHORT_SHARE = 0.2  # in a phase of known length, the window and the persistence are each at most this share of it,
SHORT_MIN_POINTS = 10  # but a cap never brings either below this many logging intervals
HOLD_SHARE = 0.75  # a run beyond the limit goes on while the level stays beyond this share of the margin
NOISE_MIN_POINTS = 1000  # the noise scale is measured over at least this many recent points (a stable yardstick)
IQR_SD = 1.349  # interquartile range of a normal distribution, in standard deviations


class _Window:
    """The points of the last ``span`` steps, sorted, with a running sum: median and trimmed mean."""

    def __init__(self) -> None:
        self.span = math.inf
        self.points: deque[tuple[int, float]] = deque()
        self.sorted: list[float] = []
        self.total = self.total_err = 0.0  # sum of the finite values (Neumaier's compensated summation)
        self.n_inf = self.since_exact = 0

    def add(self, step: int, x: float) -> None:
        while self.points and self.points[0][0] <= step - self.span:
            old = self.points.popleft()[1]
            del self.sorted[bisect.bisect_left(self.sorted, old)]
            self._sum(-old)
        self.points.append((step, x))
        bisect.insort(self.sorted, x)
        self._sum(x)

    def _sum(self, x: float) -> None:
        if not math.isfinite(x):
            self.n_inf += 1 if x > 0 else -1
            return
        t = self.total + x
        self.total_err += ((self.total - t) + x) if abs(self.total) >= abs(x) else ((x - t) + self.total)
        self.total = t

    def median(self) -> float:
        xs, n = self.sorted, len(self.sorted)
        return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

    def level(self, band: float) -> tuple[float, int]:
        """The mean of the points within ``band`` of the median, and how many (inf: mostly non-finite)."""
        m = self.median()
        if not math.isfinite(m):
            return math.inf, len(self.sorted)
        xs, finite = self.sorted, len(self.sorted) - self.n_inf
        lo, hi = bisect.bisect_left(xs, m - band), bisect.bisect_right(xs, m + band, 0, finite)
        if hi <= lo:  # no noise measured (a noiseless series): the median
            return m, 1
        if 2 * (lo + finite - hi) >= hi - lo:
            return math.fsum(xs[lo:hi]) / (hi - lo), hi - lo
        self.since_exact += 1
        if self.since_exact >= len(xs):  # now and then exactly: no drift of the running sum
            self.total, self.total_err, self.since_exact = math.fsum(xs[:finite]), 0.0, 0
        left_out = math.fsum(xs[:lo]) + math.fsum(xs[hi:finite])
        return ((self.total - left_out) + self.total_err) / (hi - lo), hi - lo


class RobustLevel:
    """The level a divergence guard judges, robust to spikes: the mean of the points of the last
    ``window`` steps, leaving out those further than OUTLIER_SIGMAS robust standard deviations from the
    window's median (a spike, even one that lasts hundreds of steps, is left out whole, while a real
    rise moves the median with it).  The points' noise is the interquartile range of each point's
    distance from the median of the window before it, over the last NOISE_MIN_POINTS points or more
    (a spike cannot inflate it; the distance to a moving median takes the curve's own trend out);
    the level's noise (``sigma``) is that over the square root of the points averaged.  The candidate
    for the best (``best_value``) is the same mean over BEST_WINDOWS windows plus BEST_UNCERTAINTY of
    its own sigmas, or the level plus BEST_SHORT_SIGMAS of its sigmas where lower (a fast fall).  Fed
    point by point, so any chunking gives the same values.

    The window and the persistence (``persist``, for a guard whose `for` is in steps) are fixed at the
    second logged step, from the logging interval then seen and the phase's planned length when known
    (``planned_length``): at least ``min_points`` logging intervals for the window; in a phase of known
    length, each capped at SHORT_SHARE of it (but not below SHORT_MIN_POINTS intervals)."""

    def __init__(self, window_steps: float, persist_steps: float | None, min_points: int = 0):
        self.want_window, self.want_persist, self.min_points = float(window_steps), persist_steps, min_points
        self.planned_length: int | None = None  # the phase's planned length in steps, set by Guards when known
        self.tau = self.want_window  # the window in steps, once fixed (reports show it)
        self.persist = persist_steps
        self.gap: int | None = None
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.win, self.long = _Window(), _Window()
        self.res: deque[float] = deque()
        self.res_sorted: list[float] = []
        self.res_max = NOISE_MIN_POINTS
        self.point_sd: float | None = None
        self.n_in = 0
        self.value: float | None = None  # the level (inf when most of the window is non-finite)
        self.best_value: float | None = None  # the level over BEST_WINDOWS windows

    def _fix_windows(self, gap: int) -> None:
        self.gap = gap
        window = max(self.want_window, self.min_points * gap)
        persist = self.want_persist
        if self.planned_length:
            cap = max(SHORT_SHARE * self.planned_length, SHORT_MIN_POINTS * gap)
            window = min(window, cap)
            persist = None if persist is None else min(persist, cap)
        if persist is not None and self.min_points:  # the default: the level beyond the limit in two disjoint windows
            persist = max(persist, window)
        self.tau, self.persist = float(window), persist
        self.win.span, self.long.span = self.tau, BEST_WINDOWS * self.tau
        self.res_max = max(NOISE_MIN_POINTS, 2 * int(window // gap))

    def push(self, step: int, x: float, learn_noise: bool = True) -> float:
        """Add a point (higher = worse: callers flip the sign for mode max); returns the level.
        ``learn_noise`` False keeps the noise scale as it is (a divergence does not widen its own yardstick)."""
        x = x if math.isfinite(x) else math.inf
        if self.first_step is None:
            self.first_step = step
        elif self.gap is None and self.last_step is not None and step > self.last_step:
            self._fix_windows(step - self.last_step)
        self.last_step = step
        if learn_noise and self.win.sorted and math.isfinite(x):
            base = self.win.median()
            if math.isfinite(base):
                # the baseline's own noise (a median of n points: variance pi/2n) taken out of the distance
                r = (x - base) / math.sqrt(1 + math.pi / (2 * len(self.win.sorted)))
                self.res.append(r)
                bisect.insort(self.res_sorted, r)
                if len(self.res) > self.res_max:
                    del self.res_sorted[bisect.bisect_left(self.res_sorted, self.res.popleft())]
                n = len(self.res_sorted)
                if n >= 4:
                    self.point_sd = (self.res_sorted[(3 * n) // 4] - self.res_sorted[n // 4]) / IQR_SD
        self.win.add(step, x)
        self.long.add(step, x)
        band = OUTLIER_SIGMAS * (self.point_sd or 0.0)
        self.value, self.n_in = self.win.level(band)
        long_value, long_n = self.long.level(band)
        sigma = self.sigma
        if sigma is not None:
            # the long mean less lucky for its uncertainty; a fall faster than it follows: one window, less a lucky dip
            long_value += BEST_UNCERTAINTY * (self.point_sd or 0.0) / math.sqrt(max(1, long_n))
            self.best_value = min(long_value, self.value + BEST_SHORT_SIGMAS * sigma)
        else:
            self.best_value = long_value
        return self.value

    @property
    def settled(self) -> bool:
        """A full window (the phase has run for the window's length) and a noise scale."""
        return (self.gap is not None and self.last_step is not None and self.first_step is not None
                and self.last_step - self.first_step >= self.tau - self.gap and self.point_sd is not None)

    @property
    def sigma(self) -> float | None:
        """Standard deviation of the level's noise: the points' robust spread over sqrt(points averaged)."""
        if self.point_sd is None or self.n_in == 0:
            return None
        return self.point_sd / math.sqrt(self.n_in)


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
            d = guard.diverges
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
    def persist_steps(self) -> float | None:
        """How many steps a divergence must last (its `for`, capped in a short phase), when `for` is in steps."""
        if self.kind != "diverges" or "steps" not in self.guard.diverges.for_:
            return None
        if isinstance(self.smoother, RobustLevel) and self.smoother.persist is not None:
            return self.smoother.persist
        return float(self.guard.diverges.for_["steps"])

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
        d = self.guard.diverges
        sm = self.smoother

        def part(m: dict) -> tuple[float | None, str]:
            if "relative" in m:
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
        s = sm.push(step, value * sign, learn_noise=self.run_start is None)
        if not sm.settled:
            self.distance = "settling (smoothing the first points)"
            return None
        best = sm.best_value if isinstance(sm, RobustLevel) else s
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
            window = g.diverges.for_
            if "steps" in window:
                held, need = step - self.run_start, self.persist_steps
            elif "evals" in window:
                held, need = self.run_len, window["evals"]
            else:
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
        need = self._persist_text()
        self.distance = (f"smoothed {_num(shown)}; trips if it stays {'above' if sign > 0 else 'below'} {_num(limit * sign)} "
                         f"(its best {_num(self.best * sign)} at step {self.best_step:,} "
                         f"{'+' if sign > 0 else '-'} {_num(margin)}, {how}) for {need}"
                         + (f"; beyond it since step {self.run_start:,}" if self.run_start is not None else ""))
        return None

    def _level_text(self) -> str:
        sm = self.smoother
        if not isinstance(sm, RobustLevel):
            return ""
        return f" (smoothed: the mean of the last {sm.tau:,.0f} steps, spikes left out)"

    def _persist_text(self) -> str:
        window = self.guard.diverges.for_
        need = self.persist_steps
        if need is None or need == window["steps"]:
            return _window_text(window)
        return f"{need:,.0f} steps (`for: {int(window['steps']):,} steps` capped to the phase's planned length)"

    def _trip(self, step: int | None, reason: str) -> Trip:
        self.tripped = Trip(self.label, step, reason, self.kind)
        return self.tripped


def _window_text(window: dict) -> str:
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
            if g.metric in self.seen:
                st.distance = "present"
            elif "steps" in g.missing.within:
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
            if st.kind == "stall" and not st.tripped and gap >= st.guard.stall:
                st._trip(self.last_step, f"stalled: no new step for {gap:.0f}s after step {_fmt_step(self.last_step)} "
                                         f"(limit {st.guard.stall:.0f}s)")

    def check_clock(self, elapsed: float, since_new_step: float) -> Trip | None:
        """Time-based guards: timeout, stall, missing-within-a-duration."""
        for st in self.states:
            if st.tripped:
                continue
            g = st.guard
            if st.kind == "timeout":
                st.distance = f"{elapsed:.0f}s of {g.timeout:.0f}s"
                if elapsed >= g.timeout:
                    st._trip(self.last_step, f"timeout: {elapsed:.0f}s elapsed (limit {g.timeout:.0f}s)")
            elif st.kind == "stall":
                st.distance = f"last new step {since_new_step:.0f}s ago (limit {g.stall:.0f}s)"
                if since_new_step >= g.stall:
                    st._trip(self.last_step, f"stalled: no new step for {since_new_step:.0f}s after step "
                                             f"{_fmt_step(self.last_step)} (limit {g.stall:.0f}s)")
            elif st.kind == "missing" and g.metric not in self.seen and "seconds" in g.missing.within:
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
        elif self.start_problem and (self.lr is None or step > self.first or name == self.lr.metric):
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


# ---------------------------------------------------------------------------- success criteria


@dataclass
class Judgement:
    """One criterion (or group) with its measured value and whether it passed (None = no data).  A
    *skipped* one (a reference nothing handed over) counts neither way in its group."""

    text: str
    value: float | None
    passed: bool | None
    children: list[Judgement] = field(default_factory=list)
    skipped: bool = False

    def lines(self, indent: int = 0) -> list[str]:
        mark = "–" if self.skipped else {True: "✓", False: "✗", None: "?"}[self.passed]
        out = [f"{'  ' * indent}{mark} {self.text}"]
        for c in self.children:
            out += c.lines(indent + 1)
        return out

    def as_dict(self) -> dict:
        return {"text": self.text, "value": self.value, "passed": self.passed, "skipped": self.skipped,
                "children": [c.as_dict() for c in self.children]}


@dataclass(frozen=True)
class Evidence:
    """What the judge knows beyond the metric series: for each metric produced by validating checkpoints,
    the step of the phase's last checkpoint.  A validation older than it never decides (the phase went on
    after it), and every validation value says which checkpoint it came from."""

    validated_until: dict[str, int] = field(default_factory=dict)


def _num(x) -> str:
    try:
        return f"{float(x):.4g}"
    except (TypeError, ValueError):
        return str(x)


def describe(c: Criterion) -> str:
    w = parse_window(c.window)
    where = "whole phase" if w.kind == "all" else (f"last {w.n:,} steps" if w.kind == "last" else f"from {w.n:,} steps after the start")
    if c.below is not None:
        cmp = f"< {_num(c.below)}"
    elif c.above is not None:
        cmp = f"> {_num(c.above)}"
    elif c.not_worse_than is not None:
        m = c.margin
        slack = f"{m['relative'] * 100:g}%" if "relative" in m else _num(m.get("absolute", 0.0))
        ref = "the value handed over" if c.not_worse_than == "" else _num(c.not_worse_than)
        cmp = f"no worse than {ref} (+ {slack})" if c.mode == "min" else f"no worse than {ref} (- {slack})"
    else:
        p = c.progress
        base = "its start" if p.from_ in ("start", "") else _num(p.from_)
        cmp = f"≥ {_margin_text(p.at_least)} of the way from {base} to {_num(p.to)}"
    return f"{c.reduce}({c.metric}, {where}) {cmp}"


def start_window(c: Criterion) -> int:
    """Steps from the phase's start averaged for a 'start' baseline."""
    if c.progress is not None and c.progress.start_window:
        return int(c.progress.start_window["steps"])
    w = parse_window(c.window)
    return w.n if w.kind == "last" else 1000


def _source(c: Criterion, steps: np.ndarray, values: np.ndarray, evidence: Evidence | None) -> str:
    """Which checkpoint a validation metric's measured value came from ('' for training metrics)."""
    if evidence is None or c.metric not in evidence.validated_until or not len(steps):
        return ""
    finite = np.isfinite(values)
    if c.reduce in ("min", "max") and finite.any():
        pick = np.where(finite, values, np.inf if c.reduce == "min" else -np.inf)
        i = int(np.argmin(pick) if c.reduce == "min" else np.argmax(pick))
        return f" (validation of the checkpoint at step {int(steps[i]):,})"
    if c.reduce == "last":
        return f" (validation of the checkpoint at step {int(steps[-1]):,})"
    return f" (validations of checkpoints at steps {int(steps[0]):,}–{int(steps[-1]):,})"


def judge_criterion(c: Criterion, metrics: MetricSet, origin: int | None = None,
                    evidence: Evidence | None = None) -> Judgement:
    series = metrics.series.get(c.metric)
    text = describe(c)
    if c.not_worse_than == "":
        return Judgement(f"{text}: not judged — nothing was handed over to compare with (a phase applied by hand: "
                         "give the value with --input)", None, None, skipped=True)
    if series is None or not len(series):
        return Judgement(text + ": no data", None, None)
    if evidence is not None and c.metric in evidence.validated_until:
        newest, last_ckpt = int(series.steps[-1]), evidence.validated_until[c.metric]
        if newest < last_ckpt:
            # The phase went on after the newest validation: deciding on it would judge a model it no longer is.
            return Judgement(f"{text}: not judged — the newest {c.metric} is the validation of the checkpoint at step "
                             f"{newest:,}, older than the phase's last checkpoint (step {last_ckpt:,}); stale evidence "
                             "never decides", None, None)
    origin = metrics_origin(metrics) if origin is None else origin
    steps, values = window_points(series, parse_window(c.window), origin)
    value = reduce(steps, values, c.reduce, c.ema_alpha)
    src = _source(c, steps, values, evidence)
    if value is None or not math.isfinite(value):
        return Judgement(f"{text}: measured {value}{src}", value, None if value is None else False)
    if c.below is not None:
        passed = value < float(c.below)
        return Judgement(f"{text}: measured {value:.4g}{src}", value, passed)
    if c.above is not None:
        passed = value > float(c.above)
        return Judgement(f"{text}: measured {value:.4g}{src}", value, passed)
    if c.not_worse_than is not None:
        ref, m = float(c.not_worse_than), c.margin
        allowed = abs(ref) * m["relative"] if "relative" in m else float(m.get("absolute", 0.0))
        sign = 1.0 if c.mode == "min" else -1.0
        worse = sign * (value - ref)
        passed = worse <= allowed
        how = (f"{abs(worse) / abs(ref) * 100:.1f}% {'worse' if worse > 0 else 'better'} than" if ref else
               ("worse than" if worse > 0 else "no worse than"))
        return Judgement(f"{text}: measured {value:.4g}{src}, {how} the reference {ref:.4g}", value, passed)
    p = c.progress
    if p.from_ in ("start", ""):
        n = start_window(c)
        first = series.steps[0] if origin is None else origin
        head = series.values[(series.steps <= first + n)]
        head = head[np.isfinite(head)]
        if not head.size:
            return Judgement(f"{text}: no finite value in the first {n:,} steps", None, False)
        start = float(np.mean(head))
        start_text = f"mean of the first {n:,} steps {start:.4g}" + (" (no start value handed over)" if p.from_ == "" else "")
    else:
        start = float(p.from_)
        start_text = f"{start:.4g} (the value it started from)"
    target = float(p.to)
    sign = 1.0 if p.mode == "min" else -1.0
    need = p.at_least.get("relative", p.at_least.get("absolute"))
    if sign * (start - target) <= 0:  # started at or past the target: it must still be there
        passed = sign * (value - target) <= 0
        return Judgement(f"{text}: started at {start_text}, already at or past the target {target:.4g}; measured "
                         f"{value:.4g}, {'still' if passed else 'no longer'} at or past it", 1.0 if passed else 0.0, passed)
    rate = (start - value) / (start - target)
    passed = rate >= need
    return Judgement(f"{text}: measured {value:.4g} from {start_text}, {rate * 100:.0f}% of the way (need {need * 100:.0f}%)",
                     rate, passed)


def judge(node: Criterion | Group, metrics: MetricSet, evidence: Evidence | None = None) -> Judgement:
    if isinstance(node, Criterion):
        return judge_criterion(node, metrics, evidence=evidence)
    items = node.all if node.all is not None else node.any
    children = [judge(i, metrics, evidence) for i in items]
    results = [c.passed for c in children if not c.skipped]
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
    failure_kind: FailureKind | None = None  # decided here, with the verdict (None unless failure)
    failure_detail: str = ""  # a finer name `retry.on` may match (lost, interrupted, stopped)

    def explanation(self) -> str:
        lines = list(self.reasons)
        if self.judgement is not None:
            lines += self.judgement.lines()
        return "\n".join(lines)


def _short_of(metrics: MetricSet, end: int) -> bool:
    """Whether the last logged step is more than one logging interval short of ``end`` (a trainer
    logging every 20 steps may end at 356,000 with its last log at 355,980)."""
    last = metrics.latest_step()
    if last is None:
        return True
    series = max((s for s in metrics.series.values() if len(s)), key=lambda s: int(s.steps[-1]))
    interval = int(series.steps[-1] - series.steps[-2]) if len(series) > 1 else 0
    return last + interval < end


def verdict(exit_ok: bool, exit_reason: str, trip: Trip | None, success: Group | None, metrics: MetricSet,
            cancelled: bool = False, met_early: bool = False, end_reached: int | None = None,
            planned_end: int | None = None, exit_kind: FailureKind = FailureKind.CRASHED,
            exit_detail: str = "", evidence: Evidence | None = None) -> Verdict:
    """The phase's verdict with the reasons a person can check.

    Reaching the planned end (``end_reached``) is the normal end of a phase: the success criteria
    judge it whatever the exit code of a container runner stopped there.  A container that exits 0
    more than one logging interval short of a planned end (stop_at, or metrics.total_steps) has not
    done its work: failure.

    A failure carries its kind, decided here from what ended the phase: a guard's trip is the guard's
    kind; a container that failed on its own is ``exit_kind`` (the engine tells a crash from an OOM, a
    kill from outside, a lost engine); criteria not met is ``criteria``."""
    judgement = judge(success, metrics, evidence) if success is not None else None
    if cancelled:
        return Verdict("failure", ["cancelled on request"], judgement, FailureKind.CANCELLED)
    if trip is not None:
        return Verdict("failure", [f"guard tripped ({trip.guard}): {trip.reason}"], judgement,
                       GUARD_FAILURE.get(trip.kind, FailureKind.DIVERGED))
    if end_reached is not None:
        head = f"reached its planned end at step {end_reached:,}" + (f" (planned: {planned_end:,})" if planned_end else "")
    elif met_early:
        head = "criteria met, run stopped early"
    elif not exit_ok:
        return Verdict("failure", [f"container failed: {exit_reason}"], judgement, exit_kind, exit_detail)
    elif planned_end is not None and _short_of(metrics, planned_end):
        last = metrics.latest_step()
        return Verdict("failure", [f"container {exit_reason} at step {_fmt_step(last)}, short of its planned end at step "
                                   f"{planned_end:,}: stopped from outside runner (`docker stop`, a host shutdown), or "
                                   "the trainer's own end is set earlier than the spec's stop_at / total_steps"],
                       judgement, FailureKind.ENDED_EARLY, "stopped")
    else:
        head = f"container {exit_reason}"
    if judgement is None:
        plain = exit_reason if end_reached is None and not met_early else head
        return Verdict("success", [plain, "no success criteria: judged by how it ended"], None)
    if judgement.passed is True:
        return Verdict("success", [head + "; success criteria passed"], judgement)
    if judgement.passed is False:
        return Verdict("failure", [head + "; success criteria not met"], judgement, FailureKind.CRITERIA)
    return Verdict("inconclusive", [head + "; some criteria had no data"], judgement)
