"""Guards, reductions, criteria and verdicts: the pure decisions."""
import math

import numpy as np
import pytest

from runner.criteria import Guards, parse_window, reduce, verdict, Window
from runner.metrics.series import MetricSet, Series
from runner.spec.criteria_models import Group, Guard


def pts(steps, values, walls=None):
    steps = np.asarray(steps, np.int64)
    return steps, np.asarray(values, np.float64), np.asarray(walls if walls is not None else steps, np.float64)


def guard(**kw):
    return Guard.model_validate(kw)


def test_windows():
    assert parse_window("all") == Window("all")
    assert parse_window("last 500 steps") == parse_window("500 steps") == parse_window(500) == Window("last", 500)
    assert parse_window("since 1000") == Window("since", 1000)
    with pytest.raises(ValueError):
        parse_window("lots")


def test_reductions():
    s, v, _ = pts([0, 1000, 2000], [3.0, 2.0, 1.0])
    assert reduce(s, v, "last") == 1.0 and reduce(s, v, "mean") == 2.0
    assert reduce(s, v, "min") == 1.0 and reduce(s, v, "max") == 3.0
    assert reduce(s, v, "slope") == pytest.approx(-1.0)  # per 1,000 steps
    assert reduce(s, v, "ema", 0.5) == pytest.approx(0.5 * 1.0 + 0.5 * (0.5 * 2.0 + 0.5 * 3.0))
    assert reduce(s[:0], v[:0], "mean") is None


def test_non_finite_trips_at_the_first_bad_step():
    g = Guards([guard(metric="loss", non_finite=True)])
    assert g.feed({"loss": pts([1, 2], [1.0, 2.0])}) is None
    trip = g.feed({"loss": pts([3, 4], [math.inf, math.nan])})
    assert trip.step == 3 and "inf" in trip.reason


def test_divergence_relative_sustained_for_steps():
    g = Guards([guard(metric="loss", diverges={"above_best_by": "20%", "for": "300 steps"})])
    steps = list(range(0, 2000, 100))
    values = [3.0, 2.5, 2.0, 1.0, 1.1, 1.15, 1.3, 1.1, 1.25, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2, 2.3]
    # Above 1.2 (best 1.0 + 20%) at 600, back under at 700, then from 800 on for good: trips at 1100.
    trip = g.feed({"loss": pts(steps, values)})
    assert trip is not None and trip.step == 1100
    assert "since step 800" in trip.reason


def test_divergence_fed_in_pieces_trips_at_the_same_step():
    values = [3.0, 2.0, 1.0] + [1.5] * 10
    steps = list(range(0, 1300, 100))
    whole = Guards([guard(metric="loss", diverges={"above_best_by": 0.3, "for": "3 evals"})]).feed({"loss": pts(steps, values)})
    g = Guards([guard(metric="loss", diverges={"above_best_by": 0.3, "for": "3 evals"})])
    trip = None
    for i in range(len(steps)):
        trip = trip or g.feed({"loss": pts(steps[i : i + 1], values[i : i + 1])})
    assert whole.step == trip.step == 500


def test_divergence_max_mode():
    g = Guards([guard(metric="acc", mode="max", diverges={"above_best_by": "10%", "for": "2 evals"})])
    assert g.feed({"acc": pts([1, 2, 3], [0.5, 0.9, 0.85])}) is None
    assert g.feed({"acc": pts([4, 5], [0.7, 0.6])}).step == 5


def test_missing_stall_timeout_and_max_steps():
    g = Guards([guard(metric="val_loss", missing={"within": "2000 steps"}), guard(max_steps=5000)])
    assert g.feed({"loss": pts([1000], [1.0])}) is None
    trip = g.feed({"loss": pts([2000], [1.0])})
    assert trip.guard == "val_loss missing" and trip.step == 2000
    assert g.feed({"loss": pts([5000], [1.0])}).guard == "max_steps"
    clock = Guards([guard(stall="10m"), guard(timeout="1h")])
    assert clock.check_clock(elapsed=100, since_new_step=599) is None
    assert "stalled" in clock.check_clock(elapsed=100, since_new_step=600).reason
    assert "timeout" in clock.check_clock(elapsed=3600, since_new_step=0).reason


def metric_set(**series):
    m = MetricSet()
    for name, (steps, values) in series.items():
        m.add(name, *pts(steps, values))
    return m


def test_success_rate_progress_and_explanation():
    # From 4.0 toward 1.5: mean of the last 2 points 2.5 covers 60% of the way.
    m = metric_set(loss=(range(0, 500, 100), [4.0, 3.5, 3.0, 2.6, 2.4]))
    crit = Group.model_validate({"all": [
        {"metric": "loss", "window": "last 200 steps", "reduce": "mean", "below": 2.8},
        {"metric": "loss", "window": "last 200 steps", "reduce": "mean", "progress": {"from": "start", "to": 1.5, "at_least": "50%"}},
        {"metric": "loss", "reduce": "slope", "below": 0},
    ]})
    v = verdict(True, "exit code 0", None, crit, m)
    assert v.verdict == "success"
    text = v.explanation()
    assert "✓ mean(loss, last 200 steps) < 2.8: measured 2.5" in text
    assert "60% of the way" in text


def test_failure_and_inconclusive_verdicts():
    m = metric_set(loss=([0, 100], [3.0, 2.9]))
    crit = Group.model_validate({"all": [{"metric": "loss", "below": 2.0}]})
    assert verdict(True, "exit code 0", None, crit, m).verdict == "failure"
    missing = Group.model_validate({"all": [{"metric": "val_loss", "below": 2.0}]})
    assert verdict(True, "exit code 0", None, missing, m).verdict == "inconclusive"
    anyof = Group.model_validate({"any": [{"metric": "val_loss", "below": 2.0}, {"metric": "loss", "below": 3.0}]})
    assert verdict(True, "exit code 0", None, anyof, m).verdict == "success"
    assert verdict(False, "exit code 1", None, None, m).verdict == "failure"


def test_series_newest_write_wins():
    s = Series()
    s.add([1, 2, 3], [1.0, 2.0, 3.0], [10, 10, 10])
    s.add([2, 3], [20.0, 30.0], [5, 50])  # step 2 written earlier (wall 5): keeps 2.0; step 3 newer: 30
    s.add([4], [4.0], [60])
    assert s.steps.tolist() == [1, 2, 3, 4] and s.values.tolist() == [1.0, 2.0, 30.0, 4.0]
