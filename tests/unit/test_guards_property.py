"""Live and replay are one code path: any trajectory, fed in arbitrary poll-sized chunks, gives the
same trips, trip steps, planned end and verdict as one batch, and as `runner replay` on event files
written by a real writer."""
import math
import textwrap

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.decisions.guards import Guards, run_guards
from runner.decisions.criteria import verdict
from runner.metrics.series import MetricSet
from runner.decisions.replay import replay, truncate
from runner.spec.criteria_models import Group, Guard, StopAt

GUARDS = [
    {"metric": "loss", "non_finite": True},
    {"metric": "loss", "diverges": {"for": "200 steps"}},
    {"metric": "loss", "diverges": {"above_best_by": "10%", "for": "3 evals", "smoothing": 0.6}},
    {"metric": "val", "diverges": {"above_best_by": 0.05, "for": "2 evals", "smoothing": 0}},
    {"metric": "val", "missing": {"within": "1500 steps"}},
]
SUCCESS = {"all": [{"metric": "loss", "window": "last 300 steps", "reduce": "mean", "below": 1.5},
                   {"metric": "loss", "window": "last 300 steps", "reduce": "mean",
                    "progress": {"from": "start", "to": 1.0, "at_least": "40%"}}]}


@st.composite
def trajectories(draw):
    n = draw(st.integers(20, 300))
    start = draw(st.sampled_from([0, 351_000, 298_800]))
    gap = draw(st.integers(1, 40))
    steps = start + gap * np.arange(1, n + 1)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    trend = draw(st.sampled_from(["fall", "rise", "flat", "fall-rise"]))
    x = np.linspace(0, 1, n)
    curve = {"fall": 3 - 2 * x, "rise": 1 + 2 * x, "flat": 1.5 + 0 * x, "fall-rise": 1 + 2 * (x - 0.5) ** 2}[trend]
    loss = curve * (1 + draw(st.sampled_from([0.0, 0.02, 0.1])) * rng.standard_normal(n))
    if draw(st.booleans()):
        loss[rng.integers(n)] *= 5  # a spike
    if draw(st.booleans()):
        loss[rng.integers(n // 2, n)] = math.nan
    every = draw(st.integers(1, 10))
    val_at = np.arange(every - 1, n, every) if draw(st.booleans()) else np.arange(0)
    val = curve[val_at] + 0.01 * rng.standard_normal(val_at.size)
    walls = 1_000_000.0 + np.arange(n) * 0.5
    points = {"loss": (steps, loss.astype(np.float32).astype(np.float64), walls),
              "val": (steps[val_at], val.astype(np.float32).astype(np.float64), walls[val_at])}
    stop = draw(st.one_of(st.none(), st.integers(100, 3000)))
    return points, stop


def merged(points):
    out = [(int(s), name, float(v), float(w)) for name, (ss, vv, ww) in points.items()
           for s, v, w in zip(ss, vv, ww)]
    return sorted(out, key=lambda p: (p[0], p[1]))


def outcome(g: Guards, metrics: MetricSet):
    trips = [(st.label, st.tripped.step, st.tripped.reason) if st.tripped else None for st in g.states]
    first = g.tripped
    stops = [x for x in (first.step if first else None, g.end_reached) if x is not None]
    judged = truncate(metrics, min(stops)) if stops else metrics
    end = g.end_reached if g.end_reached is not None and (first is None or g.end_reached < first.step) else None
    v = verdict(True, "exit code 0", None if end is not None else first, Group.model_validate(SUCCESS), judged,
                end_reached=end, planned_end=g.planned_end if end is not None else None)
    return trips, g.end_reached, g.planned_end, v.verdict, v.explanation()


def metric_set(points) -> MetricSet:
    m = MetricSet()
    for name, (s, v, w) in points.items():
        m.add(name, s, v, w)
    return m


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trajectories(), st.lists(st.integers(1, 50), min_size=1, max_size=40))
def test_chunked_feed_equals_one_batch(traj, sizes):
    points, stop = traj
    guards = [Guard.model_validate(g) for g in GUARDS]
    stop_at = StopAt(steps=stop) if stop else None
    batch = Guards(guards, stop_at)
    batch.feed(points)
    live = Guards(guards, stop_at)
    stream = merged(points)
    i = k = 0
    while i < len(stream):  # polls of arbitrary size, each a dict of new points per metric
        chunk = stream[i : i + sizes[k % len(sizes)]]
        i, k = i + len(chunk), k + 1
        new = {}
        for s, name, v, w in chunk:
            new.setdefault(name, ([], [], []))
            for lst, x in zip(new[name], (s, v, w)):
                lst.append(x)
        live.feed({n: tuple(np.asarray(a) for a in arrs) for n, arrs in new.items()})
    metrics = metric_set(points)
    assert outcome(live, metrics) == outcome(batch, metrics)
    # and `runner replay`'s own loop (clock from the points' wall times) agrees on every point guard
    assert outcome(run_guards(guards, stop_at, metrics), metrics) == outcome(batch, metrics)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(trajectories())
def test_runner_replay_on_real_event_files_equals_the_live_feed(tmp_path_factory, traj):
    from torch.utils.tensorboard import SummaryWriter

    points, stop = traj
    folder = tmp_path_factory.mktemp("replay")
    writer = SummaryWriter(str(folder / "tb"))
    for s, name, v, w in merged(points):
        writer.add_scalar("train/loss" if name == "loss" else "val/loss", v, s, walltime=w)
    writer.close()
    spec = folder / "p.yaml"
    guards_yaml = "\n".join(f"  - {g}".replace("'", "") for g in GUARDS)
    spec.write_text(textwrap.dedent("""\
        apiVersion: runner/v1
        kind: Phase
        name: p
        container: {image: x, command: [train]}
        metrics:
          tensorboard: {logdir: ./tb, tags: {loss: train/loss, val: val/loss}}
        """) + (f"stop_at: {{steps: {stop}}}\n" if stop else "") + "guards:\n" + guards_yaml + "\n"
        + "success: " + str(SUCCESS).replace("'", "") + "\n")
    report = replay(spec, folder / "tb")
    live = Guards([Guard.model_validate(g) for g in GUARDS], StopAt(steps=stop) if stop else None)
    live.feed(points)
    trips, end, planned, v, explanation = outcome(live, metric_set(points))
    assert [(r["guard"], r["step"]) for r in report["guards"]] == [(t[0], t[1]) if t else (lbl, None) for t, lbl in
                                                                  zip(trips, [s.label for s in live.states])]
    assert report["verdict"] == v and report["planned_end"] == planned
    assert report["explanation"].replace("exit code 0 (assumed)", "exit code 0") == explanation
