"""Divergence guards on realistic noisy trajectories: false alarms and detection delay.

    .venv/bin/python benchmarks/guards.py [--seed 0] [--every 10]

Reference: the raw rule runner shipped before (value vs. the raw running minimum, "above_best_by:
20%, for: 2000 steps"), measured in the same run.  Acceptance (issue "decisions"):
  * a healthy 400k-step run, 8% Gaussian per-step noise, one-off 2.5x spikes every ~2,000 points:
    no divergence trip;
  * a slow rise from a best value: a trip within 5,000 steps of the (noiseless) curve passing 5%
    above its best at 8% noise, and 3% at 2% noise.
Each figure is the step of the trip, and how far the noiseless curve had risen by then.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.criteria import Guards  # noqa: E402
from runner.spec.criteria_models import Guard  # noqa: E402


def healthy(steps: np.ndarray) -> np.ndarray:
    """Fast fall, then a long slow improvement: what a fine-tune that goes well looks like."""
    return 0.9 + 3.1 * np.exp(-steps / 20000.0) + 0.1 * np.exp(-steps / 200000.0)


def rising(steps: np.ndarray, best_step: int, per_1k: float) -> np.ndarray:
    """Falls to a best at ``best_step``, then rises by ``per_1k`` (fraction of the best) per 1,000 steps,
    accelerating slowly, as the incident's run did."""
    base = healthy(np.minimum(steps, best_step))
    after = np.maximum(0, steps - best_step) / 1000.0
    return base * (1 + per_1k * after + 0.02 * per_1k * after ** 1.5)


def noisy(curve: np.ndarray, noise: float, rng, spikes_every: int | None = 2000) -> np.ndarray:
    v = curve * (1 + noise * rng.standard_normal(curve.size))
    if spikes_every:
        v[rng.random(curve.size) < 1.0 / spikes_every] *= 2.5
    return v


def new_guard(for_steps: int = 2000) -> list[Guard]:
    return [Guard.model_validate({"metric": "loss", "diverges": {"for": f"{for_steps} steps"}})]


def raw_reference(steps, values, margin=0.20, for_steps=2000) -> int | None:
    """The old rule: raw value above the raw running minimum by ``margin``, sustained."""
    best = np.minimum.accumulate(np.where(np.isfinite(values), values, np.inf))
    prior = np.concatenate([[np.inf], best[:-1]])
    bad = values > prior * (1 + margin)
    start = None
    for i in range(steps.size):
        if bad[i]:
            start = steps[i] if start is None else start
            if steps[i] - start >= for_steps:
                return int(steps[i])
        else:
            start = None
    return None


def trip_of(guards, steps, values):
    g = Guards(guards)
    t0 = time.perf_counter()
    trip = g.feed({"loss": (steps, values, steps.astype(np.float64))})
    return trip, time.perf_counter() - t0


def passing(steps, curve, best_step, frac) -> int:
    best = curve[steps <= best_step].min()
    return int(steps[np.flatnonzero((steps > best_step) & (curve >= best * (1 + frac)))[0]])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=10, help="log interval in steps")
    ap.add_argument("--seeds", type=int, default=5, help="healthy runs to try")
    args = ap.parse_args()
    ok = True
    steps = np.arange(args.every, 400_001, args.every)
    print(f"points every {args.every} steps; default guard: diverges {{for: 2000 steps}} "
          f"(smoothing 1000 steps, margin 6 sigma, at least 1%)\n")
    print("healthy 400k-step run, 8% noise, 2.5x spikes every ~2,000 points")
    print(f"{'seed':>6} {'new rule':>12} {'raw reference':>14} {'feed time':>10}")
    for seed in range(args.seed, args.seed + args.seeds):
        rng = np.random.default_rng(seed)
        v = noisy(healthy(steps), 0.08, rng)
        trip, secs = trip_of(new_guard(), steps, v)
        ref = raw_reference(steps, v)
        ok &= trip is None
        print(f"{seed:>6} {('trip @ %d' % trip.step) if trip else 'no trip':>12} "
              f"{('trip @ %d' % ref) if ref else 'no trip':>14} {secs:>9.2f}s")
    print("\nslow rise from a best at step 300,000 (trip step - step the curve passes the target; "
          "negative = earlier)")
    print(f"{'noise':>6} {'target':>7} {'rise/1k':>8} {'passes at':>10} {'new rule':>10} {'delay':>7} "
          f"{'risen by':>9} {'raw reference':>14}")
    for noise, target in ((0.08, 0.05), (0.02, 0.03)):
        for per_1k in (0.001, 0.002, 0.005):
            rng = np.random.default_rng(args.seed + 100)
            curve = rising(steps, 300_000, per_1k)
            v = noisy(curve, noise, rng)
            trip, _ = trip_of(new_guard(), steps, v)
            p = passing(steps, curve, 300_000, target)
            ref = raw_reference(steps, v)
            best = curve[steps <= 300_000].min()
            if trip is None:
                ok = False
                print(f"{noise:>6.0%} {target:>7.0%} {per_1k:>8.1%} {p:>10} {'none':>10}")
                continue
            delay = trip.step - p
            ok &= delay <= 5000 and trip.step > 300_000
            risen = curve[steps == trip.step][0] / best - 1
            print(f"{noise:>6.0%} {target:>7.0%} {per_1k:>8.1%} {p:>10} {trip.step:>10} {delay:>7} {risen:>8.1%} "
                  f"{ref if ref else 'no trip':>14}")
    print("\nacceptance:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
