"""Guards, reductions, criteria and verdicts: the pure decisions."""
import math

import numpy as np
import pytest

from runner.decisions.guards import Guards
from runner.decisions.criteria import verdict
from runner.spec.windows import Window, parse_window
from runner.decisions.smoothing import reduce
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
    # Debiased as TensorBoard's smoothing: (0.25*3 + 0.5*2 + 1) / (0.25 + 0.5 + 1) ... normalised weights
    assert reduce(s, v, "ema", 0.5) == pytest.approx((0.125 * 3.0 * 2 + 0.25 * 2.0 * 2 + 0.5 * 1.0 * 2) / (0.875 * 2))
    assert reduce(s, v, "median") == 2.0
    assert reduce(s[:0], v[:0], "mean") is None


def test_non_finite_trips_at_the_first_bad_step():
    g = Guards([guard(metric="loss", non_finite=True)])
    assert g.feed({"loss": pts([1, 2], [1.0, 2.0])}) is None
    trip = g.feed({"loss": pts([3, 4], [math.inf, math.nan])})
    assert trip.step == 3 and "inf" in trip.reason


def test_divergence_relative_sustained_for_steps():
    # smoothing 0: the smoothed series is the running median of 3 (no averaging), to count steps exactly.
    g = Guards([guard(metric="loss", diverges={"above_best_by": "20%", "for": "300 steps", "smoothing": 0})])
    steps = list(range(0, 2400, 100))
    values = [3.0, 2.5, 2.0, 1.0, 1.0, 1.0, 1.3, 1.3, 1.0, 1.0, 1.3, 1.3, 1.35, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1,
              2.2, 2.3, 2.4]
    # Despiked (median of 3): above 1.2 (best 1.0 + 20%) at 700, back under at 900, then from 1100 on: trips at 1400.
    trip = g.feed({"loss": pts(steps, values)})
    assert trip is not None and trip.step == 1400, trip
    assert "since step 1,100" in trip.reason and "above its smoothed best 1" in trip.reason


def test_a_single_spike_never_trips_divergence():
    values = [1.0] * 50
    values[30] = 1e6  # one point a million times the loss
    g = Guards([guard(metric="loss", diverges={"above_best_by": "1%", "for": "1 evals", "smoothing": 0.5})])
    assert g.feed({"loss": pts(range(0, 5000, 100), values)}) is None
    g2 = Guards([guard(metric="loss", non_finite=True), guard(metric="loss", diverges={"for": "1 evals"})])
    values[30] = math.nan  # a NaN is no spike: non_finite trips at once, diverges ignores it
    trip = g2.feed({"loss": pts(range(0, 5000, 100), values)})
    assert trip.guard == "loss non-finite" and trip.step == 3000
    assert g2.states[1].tripped is None


def test_divergence_fed_in_pieces_trips_at_the_same_step():
    rng = np.random.default_rng(1)
    steps = np.arange(0, 30000, 10)
    values = np.where(steps < 15000, 1.0, 1.0 + (steps - 15000) / 50000) * (1 + 0.05 * rng.standard_normal(steps.size))
    spec = {"metric": "loss", "diverges": {"for": "1000 steps"}}
    whole = Guards([guard(**spec)]).feed({"loss": pts(steps, values)})
    g = Guards([guard(**spec)])
    cut = np.sort(rng.choice(steps.size, 40, replace=False))
    for a, b in zip(np.r_[0, cut], np.r_[cut, steps.size]):
        g.feed({"loss": pts(steps[a:b], values[a:b])})
    assert whole is not None and g.tripped == whole
    assert 15000 < whole.step < 25000


def test_divergence_max_mode():
    g = Guards([guard(metric="acc", mode="max", diverges={"above_best_by": "10%", "for": "2 evals", "smoothing": 0})])
    assert g.feed({"acc": pts([1, 2, 3, 4], [0.5, 0.9, 0.9, 0.85])}) is None
    assert g.feed({"acc": pts([5, 6, 7], [0.7, 0.6, 0.6])}).step == 7


def test_sigma_margin_adapts_to_the_runs_noise():
    rng = np.random.default_rng(7)
    steps = np.arange(0, 60000, 10)
    rise = np.where(steps < 30000, 1.0, 1.0 + (steps - 30000) / 300000)  # +1% per 3,000 steps after 30k
    trips, margins = {}, {}
    for noise in (0.08, 0.02):
        values = rise * (1 + noise * rng.standard_normal(steps.size))
        g = Guards([guard(metric="loss", diverges={"for": "2000 steps"})])  # the default margin: 4 sigma, at least 1%
        trips[noise] = g.feed({"loss": pts(steps, values)})
        assert trips[noise] is not None and trips[noise].step > 30000  # no trip before the rise
        margins[noise] = g.states[0].margin()
    # quieter run: smaller margin (4 sigma of 2% noise over 100 points is under the 1% floor)
    assert margins[0.02][0] < margins[0.08][0] / 2
    assert "sigma" in margins[0.08][1] and "min_margin floor" in margins[0.02][1]
    assert "sigma" in trips[0.08].reason


def test_missing_counts_from_the_phase_start_of_a_resumed_run():
    g = Guards([guard(metric="val_loss", missing={"within": "2000 steps"})])
    # Resumed at 351,000, logging every 20 steps: the phase starts at 351,000, not 0.
    assert g.feed({"loss": pts([351020, 351040], [1.0, 1.0])}) is None
    assert g.origin == 351000
    assert g.feed({"loss": pts([352980], [1.0])}) is None
    trip = g.feed({"loss": pts([353000], [1.0])})
    assert trip.guard == "val_loss missing" and trip.step == 353000 and "351,000" in trip.reason
    present = Guards([guard(metric="val_loss", missing={"within": "2000 steps"})])
    assert present.feed({"loss": pts([351020, 351040, 360000], [1.0] * 3), "val_loss": pts([352000], [1.0])}) is None


def test_planned_end_counts_from_the_phase_start_and_is_no_trip():
    from runner.spec.criteria_models import StopAt

    g = Guards([], StopAt(steps=5000))
    g.feed({"loss": pts([351020, 351040, 355980], [1.0] * 3)})
    assert g.planned_end == 356000 and g.end_reached is None
    g.feed({"loss": pts([356000], [1.0])})
    assert g.end_reached == 356000 and g.tripped is None
    fresh = Guards([], StopAt(steps=300))
    fresh.feed({"loss": pts([0, 10, 300], [1.0] * 3)})
    assert fresh.origin == 0 and fresh.end_reached == 300


def test_max_steps_guard_is_a_clear_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="stop_at"):
        guard(max_steps=5000)


def test_stall_and_timeout():
    clock = Guards([guard(stall="10m"), guard(timeout="1h")])
    assert clock.check_clock(elapsed=100, since_new_step=599) is None
    assert "stalled" in clock.check_clock(elapsed=100, since_new_step=600).reason
    clock.check_clock(elapsed=3600, since_new_step=0)
    assert "timeout" in clock.states[1].tripped.reason
    gap = Guards([guard(stall="10m")])  # the same guard on the points' own wall times (replay, or a late read)
    assert gap.feed({"loss": pts([10, 20, 30], [1.0] * 3, [0, 100, 800])}).step == 20


def metric_set(**series):
    m = MetricSet()
    for name, (steps, values) in series.items():
        m.add(name, *pts(steps, values))
    return m


def test_success_rate_progress_and_explanation():
    # From 3.5 (mean of the first 200 steps) toward 1.5: mean of the last 2 points 2.5 covers 50% of the way.
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
    assert "50% of the way (need 50%)" in text


def test_failure_and_inconclusive_verdicts():
    m = metric_set(loss=([0, 100], [3.0, 2.9]))
    crit = Group.model_validate({"all": [{"metric": "loss", "below": 2.0}]})
    assert verdict(True, "exit code 0", None, crit, m).verdict == "failure"
    missing = Group.model_validate({"all": [{"metric": "val_loss", "below": 2.0}]})
    assert verdict(True, "exit code 0", None, missing, m).verdict == "inconclusive"
    anyof = Group.model_validate({"any": [{"metric": "val_loss", "below": 2.0}, {"metric": "loss", "below": 3.0}]})
    assert verdict(True, "exit code 0", None, anyof, m).verdict == "success"
    assert verdict(False, "exit code 1", None, None, m).verdict == "failure"


def test_planned_end_is_judged_and_an_early_exit_is_not_success():
    m = metric_set(loss=([351020, 351040, 356000], [3.0, 2.0, 1.0]))
    crit = Group.model_validate({"all": [{"metric": "loss", "below": 2.0}]})
    ok = verdict(False, "exit code 137", None, crit, m, end_reached=356000, planned_end=356000)
    assert ok.verdict == "success" and "planned end at step 356,000" in ok.explanation()
    short = verdict(True, "exit code 0", None, crit, metric_set(loss=([351020, 351040, 351500], [3.0, 2.0, 1.0])),
                    planned_end=356000)
    assert short.verdict == "failure" and "short of its planned end at step 356,000" in short.explanation()


def test_success_rate_baseline_is_a_window_mean_and_a_start_past_the_target_passes_if_it_stays():
    steps = list(range(351020, 356020, 20))
    noisy_start = [5.0] + [2.0] * (len(steps) - 1)  # one noisy first point must not make the baseline
    m = metric_set(loss=(steps, noisy_start[:-25] + [1.8] * 25))
    c = {"metric": "loss", "window": "last 500 steps", "reduce": "mean", "progress": {"from": "start", "to": 1.5, "at_least": "50%"}}
    j = verdict(True, "exit code 0", None, Group.model_validate({"all": [c]}), m).judgement.children[0]
    assert j.value == pytest.approx((2.12 - 1.8) / (2.12 - 1.5), abs=0.01) and j.passed is True  # baseline: mean of 25 points
    assert "from mean of the first 500 steps 2.12" in j.text
    below = metric_set(loss=(steps, [0.95] * len(steps)))
    j = verdict(True, "exit code 0", None, Group.model_validate({"all": [c]}), below).judgement.children[0]
    assert j.passed is True and "already at or past the target" in j.text
    rising = metric_set(loss=(steps, [0.95] * 200 + [1.6] * (len(steps) - 200)))
    assert verdict(True, "exit code 0", None, Group.model_validate({"all": [c]}), rising).verdict == "failure"


def test_series_newest_write_wins():
    s = Series()
    s.add([1, 2, 3], [1.0, 2.0, 3.0], [10, 10, 10])
    s.add([2, 3], [20.0, 30.0], [5, 50])  # step 2 written earlier (wall 5): keeps 2.0; step 3 newer: 30
    s.add([4], [4.0], [60])
    assert s.steps.tolist() == [1, 2, 3, 4] and s.values.tolist() == [1.0, 2.0, 30.0, 4.0]


# ---------------------------------------------------------------------------- expect: what the trainer really does


def _expect_guards(expect: dict):
    from runner.decisions.guards import Guards
    from runner.spec.criteria_models import Expect

    return Guards([], None, Expect.model_validate(expect))


def test_expect_lr_catches_a_resume_that_kept_the_checkpoints_schedule():
    # asked 1e-6, the trainer restored its scheduler and runs at 1.62e-5 (issue 18's measurement)
    g = _expect_guards({"lr": "1e-6"})
    g.feed({"lr": (np.array([351_100]), np.array([1.62e-5]), np.array([0.0]))})
    trip = g.tripped
    assert trip is not None and trip.guard == "expect lr" and trip.step == 351_100
    assert "runs at 1.62e-05" in trip.reason and "asked for 1e-06" in trip.reason and "restored its scheduler" in trip.reason


def test_expect_lr_allows_warmup_and_decay_but_not_a_peak_that_never_comes():
    steps = np.arange(100, 5100, 100)
    warm = np.minimum(steps / 1000, 1.0) * 1e-6 * (1 - 0.3 * steps / 5000)  # warmup then a linear decay
    g = _expect_guards({"lr": {"value": 1e-6, "within": "10%", "after": "1000 steps"}})
    g.feed({"lr": (steps, warm, np.zeros(steps.size))})
    assert g.tripped is None
    g = _expect_guards({"lr": {"value": 1e-4, "after": "1000 steps"}})  # runs at 1e-6 while 1e-4 was asked
    g.feed({"lr": (steps, warm, np.zeros(steps.size))})
    assert g.tripped is not None and "lower than asked" in g.tripped.reason and g.tripped.step == 1000  # origin 0


def test_expect_start_step_catches_a_resumed_step_count():
    g = _expect_guards({"start_step": 0})
    g.feed({"text_loss": (np.array([351_100, 351_200]), np.array([1.9, 1.8]), np.zeros(2))})
    assert g.tripped is not None and "first logged step is 351,100" in g.tripped.reason
    g = _expect_guards({"start_step": 0, "start_within": 100})
    g.feed({"text_loss": (np.array([100, 200]), np.array([1.9, 1.8]), np.zeros(2))})
    assert g.tripped is None


def test_expect_names_the_lr_when_a_resume_also_kept_the_step():
    g = _expect_guards({"lr": "1e-6", "start_step": 0})
    g.feed({"lr": (np.array([351_100]), np.array([1.62e-5]), np.zeros(1)),
            "text_loss": (np.array([351_100]), np.array([1.9]), np.zeros(1))})
    assert g.tripped.guard == "expect lr" and "runs at 1.62e-05" in g.tripped.reason
    assert "first logged step is 351,100" in g.tripped.reason


def test_expect_names_a_resumed_lr_below_the_asked_one_at_the_first_step():
    g = _expect_guards({"lr": {"value": 1e-6, "after": 1000}, "start_step": 0})
    g.feed({"lr": (np.array([351_010]), np.array([7.31e-7]), np.zeros(1))})
    assert g.tripped.guard == "expect lr" and "runs at 7.31e-07" in g.tripped.reason
