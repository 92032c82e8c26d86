"""Pure decisions' arithmetic: windows and reductions over a series, a phase's first step, smoothing (debiased EMA
with despiking), and the divergence guard's robust level and noise."""
from __future__ import annotations

import bisect
import math
from collections import deque

import numpy as np

from runner.metrics.series import MetricSet, Series
from runner.spec.windows import Window


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
            # __init__ takes exactly one of weight and tau_steps: without a weight there is a time constant.
            assert self.tau is not None
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


def num(x: object) -> str:
    """A number as people read it in explanations (4 significant digits); anything else as it is."""
    try:
        return f"{float(x):.4g}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(x)
