"""Divergence guards on realistic noisy trajectories: false alarms and detection delay.

    .venv/bin/python benchmarks/guards.py [--seed 0] [--every 10]

Reference: the raw rule runner shipped before (value vs. the raw running minimum, "above_best_by:
20%, for: 2000 steps"), measured in the same run.  Acceptance (issue "decisions"):
  * a healthy 400k-step run, 8% Gaussian per-step noise, one-off 2.5x spikes every ~2,000 points:
    no divergence trip;
  * a slow rise from a best value: a trip within 5,000 steps of the (noiseless) curve passing 5%
    above its best at 8% noise, and 3% at 2% noise.
Each figure is the step of the trip, and how far the noiseless curve had risen by then.

Real noise (issue 21), the guard's own section below the first two:
  * healthy runs with 15% per-step noise and multi-step 5x spikes (~300 steps each, one every ~10,000 steps),
    logged every 20 and every 100 steps: no divergence trip (several seeds each);
  * the incident's slow rise (+0.1% of the best per 1k steps from a best at 300,000, 8% noise, 2.5x spikes):
    a trip before step 320,000 (logged every 10 steps);
  * an abrupt +20% regime change at step 200,000 of the noisy healthy run: a trip within 3,000 steps;
  * a loss that doubles inside a 5,000-step phase (stop_at: {steps: 5000}), logged every 10 or 100 steps: a trip
    before the phase ends.

    .venv/bin/python benchmarks/guards.py --noisy-only     # just that section (a few seconds)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.decisions.guards import Guards
from runner.spec.criteria_models import Guard, StopAt


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


def bursts(curve: np.ndarray, steps: np.ndarray, rng, every_steps: int = 10_000, length: int = 300,
           factor: float = 5.0) -> np.ndarray:
    """Multi-step spikes: one at a random place in every ``every_steps`` steps, each ``factor`` x the loss
    for ``length`` steps (+-1/3), as a bad batch streak or a data-loader hiccup makes them."""
    v = curve.copy()
    slots = np.arange(steps[0], steps[-1], every_steps)
    for start in slots + rng.uniform(0, every_steps, slots.size):
        v[(steps >= start) & (steps < start + length * rng.uniform(2 / 3, 4 / 3))] *= factor
    return v


def noisy_healthy(every: int, seed: int, noise: float = 0.15, end: int = 400_000) -> tuple[np.ndarray, np.ndarray]:
    """A healthy 400k-step run, ``noise`` per-step noise, 5x spikes of ~300 steps."""
    steps = np.arange(every, end + 1, every)
    rng = np.random.default_rng(seed)
    return steps, bursts(noisy(healthy(steps), noise, rng, spikes_every=None), steps, rng)


def incident(every: int, seed: int, noise: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """The incident's shape: a best at 300,000, then a slow rise of +0.1% of the best per 1k steps, accelerating;
    8% noise and one-off 2.5x spikes."""
    steps = np.arange(every, 400_001, every)
    return steps, noisy(rising(steps, 300_000, 0.001), noise, np.random.default_rng(seed))


def regime_change(every: int, seed: int, at: int = 200_000, jump: float = 0.20, noise: float = 0.15,
                  spikes: bool = True, end: int = 260_000) -> tuple[np.ndarray, np.ndarray]:
    """The noisy healthy run (with its 5x spikes) whose loss jumps by ``jump`` at step ``at`` and stays there."""
    steps = np.arange(every, end + 1, every)
    rng = np.random.default_rng(seed)
    curve = healthy(steps) * np.where(steps >= at, 1 + jump, 1.0)
    v = noisy(curve, noise, rng, spikes_every=None)
    return steps, (bursts(v, steps, rng) if spikes else v)


def doubling(every: int, seed: int, start: int = 0, noise: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """A 5,000-step phase (phase 1 of the recovery plan) whose loss holds for 1,000 steps, then doubles by its
    step 4,000 (x2 per 3,000 steps); 8% noise, one-off 2.5x spikes."""
    steps = start + np.arange(every, 5001, every)
    x = steps - start
    curve = 1.6 * 2.0 ** (np.maximum(0, x - 1000) / 3000)
    return steps, noisy(curve, noise, np.random.default_rng(seed))


def trip_step(steps, values, for_steps: int = 2000, stop_at: StopAt | None = None) -> int | None:
    g = Guards(new_guard(for_steps), stop_at)
    trip = g.feed({"loss": (steps, values, steps.astype(np.float64))})
    return None if trip is None else trip.step


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


def _at(step: int | None, ref: int | None = None) -> str:
    if step is None:
        return "no trip"
    return f"{step:,}" if ref is None else f"{step:,} ({step - ref:+,})"


def noisy_section(seeds: int, incident_seed: int = 100) -> bool:
    """Issue 21: real noise (15%, multi-step 5x spikes), the incident, a regime change, a short phase."""
    ok = True
    print("healthy 400k-step runs, 15% noise, 5x spikes of ~300 steps (one every ~10k steps): false alarms")
    print(f"{'every':>6} {'seeds':>6} {'false alarms':>13}  first trip per seed")
    for every in (20, 100):
        trips = [trip_step(*noisy_healthy(every, seed)) for seed in range(seeds)]
        bad = [t for t in trips if t is not None]
        ok &= not bad
        print(f"{every:>6} {seeds:>6} {len(bad):>13}  {', '.join(_at(t) for t in trips)}")
    trip = trip_step(*incident(10, incident_seed))
    ok &= trip is not None and 300_000 < trip < 320_000
    print(f"\nthe incident (best at 300,000, +0.1%/1k steps, 8% noise, 2.5x spikes; every 10, seed {incident_seed} as in "
          f"the slow-rise table): trip at {_at(trip)} (need < 320,000)")
    print(f"the same shape, other noise draws (seeds {incident_seed}-{incident_seed + 4}):")
    for every in (10, 20, 100):
        trips = [trip_step(*incident(every, seed)) for seed in range(incident_seed, incident_seed + 5)]
        print(f"{every:>6}  {', '.join(_at(t) for t in trips)}")
    print("\nabrupt +20% at step 200,000: trip step (delay), seeds 0-2 (need a delay <= 3,000 with 15% noise and spikes)")
    for noise, spikes in ((0.15, True), (0.08, False)):
        for every in (10, 20, 100):
            trips = [trip_step(*regime_change(every, seed, noise=noise, spikes=spikes)) for seed in range(3)]
            if noise == 0.15 and every in (20, 100):
                ok &= all(t is not None and 200_000 <= t <= 203_000 for t in trips)
            print(f"{noise:>4.0%} {'spikes' if spikes else '':>6} every {every:>3}  "
                  f"{', '.join(_at(t, 200_000) for t in trips)}")
    print("\na 5,000-step phase (stop_at: {steps: 5000}) whose loss doubles by its step 4,000: trip step (need < 5,000)")
    for every in (10, 100):
        trips = [trip_step(*doubling(every, seed), stop_at=StopAt(steps=5000)) for seed in range(3)]
        ok &= all(t is not None and t < 5000 for t in trips)
        print(f"{'':>11} every {every:>3}  {', '.join(_at(t) for t in trips)}")
    print("\ndetection delay of an abrupt +20% (8% noise), guard {for: 2000 steps}: median of 5 seeds")
    print(f"{'':>28} {'every 10':>10} {'every 100':>10}")
    for label, jump_at, stop in (("5,000-step phase (at 2,000)", 2000, StopAt(steps=5000)), ("long run (at 200,000)", 200_000, None)):
        delays = []
        for every in (10, 100):
            ds = []
            for seed in range(5):
                steps, v = regime_change(every, seed, at=jump_at, noise=0.08, spikes=False, end=jump_at + 3000 + 5000 * (stop is None))
                if stop is not None:
                    v = 1.6 * np.where(steps >= jump_at, 1.2, 1.0) * (1 + 0.08 * np.random.default_rng(seed).standard_normal(steps.size))
                t = trip_step(steps, v, stop_at=stop)
                ds.append(np.inf if t is None else t - jump_at)
            d = float(np.median(ds))
            delays.append("none" if not np.isfinite(d) else f"{d:,.0f}")
        print(f"{label:>28} {delays[0]:>10} {delays[1]:>10}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=10, help="log interval in steps")
    ap.add_argument("--seeds", type=int, default=5, help="healthy runs to try")
    ap.add_argument("--noisy-only", action="store_true", help="only the real-noise section (issue 21)")
    args = ap.parse_args()
    if args.noisy_only:
        ok = noisy_section(args.seeds, args.seed + 100)
        print("\nacceptance:", "met" if ok else "NOT met")
        return 0 if ok else 1
    ok = True
    steps = np.arange(args.every, 400_001, args.every)
    print(f"points every {args.every} steps; default guard: diverges {{for: 2000 steps}} (the spike-free mean of the "
          f"last 1,000 steps held 1,000 steps beyond its best + 4 sigma, at least 1%)\n")
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
    print()
    ok &= noisy_section(args.seeds, args.seed + 100)
    print("\nacceptance:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
