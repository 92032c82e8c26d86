"""Guard reaction time from every metric source: from the offending value being visible (flushed to the event
file or the JSONL file, printed on stdout) to the trainer in its container receiving SIGTERM.

    .venv/bin/python benchmarks/guard_reaction.py [--trips 20] [--source tensorboard jsonl stdout]

Each trip is one real container (image runner-trainer:latest, from images/build-offline.sh) under `runner`'s engine
with default settings (metrics.poll_interval 1 s): a small trainer logs `loss` every 0.1 s to one source, flushing
each value (torch's SummaryWriter.flush(), a JSONL line flushed, a print with flush=True), then logs NaN, flushes,
and prints the time it did (``VISIBLE t``); its SIGTERM handler prints the time it got the signal (``SIGTERM t``).
Reaction = SIGTERM − VISIBLE, both on this host's clock.  The phase's `non_finite` guard trips on the NaN.

The reference: before runner woke on the data (issue 23), the supervisor read its sources on a 1 s timer: a
reaction was up to ~1 s plus the stop.  Targets (issue 23): p50 < 0.25 s, p99 < 0.5 s per source.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.backends.docker import DockerBackend  # noqa: E402
from runner.engine import Engine  # noqa: E402
from runner.store import Store  # noqa: E402

TRAINER = r'''
import json, math, os, signal, sys, time
source, folder = sys.argv[1], sys.argv[2]
def on_term(*_):
    print(f"SIGTERM {time.time():.6f}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
os.makedirs(folder, exist_ok=True)
if source == "tensorboard":
    from torch.utils.tensorboard import SummaryWriter
    w = SummaryWriter(log_dir=folder, flush_secs=3600)
    def log(step, v):
        w.add_scalar("train/loss", v, step)
        w.flush()
elif source == "jsonl":
    out = open(os.path.join(folder, "metrics.jsonl"), "a")
    def log(step, v):
        out.write(json.dumps({"step": step, "loss": v}) + "\n")
        out.flush()
else:
    def log(step, v):
        print(f"step {step} loss {v}", flush=True)
time.sleep(1.0)  # the supervisor is watching by now
for step in range(1, 100000):
    bad = step == 12
    log(step, float("nan") if bad else 1.0 / step)
    if bad:
        print(f"VISIBLE {time.time():.6f}", flush=True)
    time.sleep(0.1)
'''

METRICS = {
    "tensorboard": 'tensorboard: {logdir: "${{ phase.dir }}/m", tags: {loss: train/loss}}',
    "jsonl": 'jsonl: {path: "${{ phase.dir }}/m/metrics.jsonl", fields: {loss: loss}}',
    "stdout": "stdout: {step: 'step (\\d+)', patterns: {loss: 'loss ([-+.\\deE]+|nan|inf)'}}",
}


def spec_text(source: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: runner/v1
        kind: Phase
        name: reaction-{source}
        container:
          image: runner-trainer:latest
          command: [python3, -c, {json.dumps(TRAINER)}, {source}, "${{{{ phase.dir }}}}/m"]
          stop_grace_period: 5s
          mounts: [{{source: "${{{{ phase.dir }}}}", target: "${{{{ phase.dir }}}}", create: true}}]
        metrics:
          {METRICS[source]}
        guards:
          - {{metric: loss, non_finite: true}}
        """)


class TimerOnly:
    """The reference, in the same run: the supervisor as it was before it woke on the data (its sources read on the
    metrics.poll_interval timer only): no DataWatch, stdout lines fed without a wake."""

    def __enter__(self):
        from runner import supervision
        from runner.checkpoints import watch

        self.saved = (watch.DataWatch.ensure, supervision.Supervision.feed_line)

        def feed_line(sup, line):
            if sup.sources.stdout is not None:
                with sup.lock:
                    sup.sources.stdout.feed(line)

        watch.DataWatch.ensure = lambda self: None
        supervision.Supervision.feed_line = feed_line
        return self

    def __exit__(self, *exc):
        from runner import supervision
        from runner.checkpoints import watch

        watch.DataWatch.ensure, supervision.Supervision.feed_line = self.saved


def one(tmp: Path, source: str) -> float:
    spec = tmp / f"{source}.yaml"
    spec.write_text(spec_text(source))
    engine = Engine(Store(tmp / "runs" / "runner.db"), DockerBackend(), tmp / "runs")
    result = engine.apply(spec).last
    log = Path(engine.store.phase(result.phase_id)["log_path"]).read_text()
    visible = re.search(r"VISIBLE ([\d.]+)", log)
    got = re.search(r"SIGTERM ([\d.]+)", log)
    if not (visible and got) or "non_finite" not in (result.reason or "") + str(engine.store.phase(result.phase_id)["failure_kind"]):
        raise SystemExit(f"{source}: no trip measured ({result.status}: {result.reason})\n{log[-2000:]}")
    return float(got.group(1)) - float(visible.group(1))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trips", type=int, default=20)
    ap.add_argument("--source", nargs="+", choices=list(METRICS), default=list(METRICS))
    ap.add_argument("--reference-trips", type=int, default=5, help="trips per source with the timer only (reference)")
    args = ap.parse_args()
    rows = []
    for source in args.source:
        times, ref = [], []
        for i in range(max(args.trips, args.reference_trips)):
            if i < args.trips:
                with tempfile.TemporaryDirectory() as tmp:
                    times.append(one(Path(tmp), source))
                print(f"{source} trip {i + 1}: {times[-1]:.3f} s", flush=True)
            if i < args.reference_trips:  # interleaved: the same machine state for both
                with tempfile.TemporaryDirectory() as tmp, TimerOnly():
                    ref.append(one(Path(tmp), source))
                print(f"{source} reference trip {i + 1} (timer only): {ref[-1]:.3f} s", flush=True)
        rows.append((source, times, ref))
    print("\nreaction (value visible → trainer gets SIGTERM), poll_interval 1 s, targets p50 < 0.25 s, p99 < 0.5 s;"
          " reference: the same trips read on the 1 s timer only (before issue 23):")
    for source, times, ref in rows:
        p50, p99 = statistics.median(times), pct(times, 0.99)
        verdict = "ok" if p50 < 0.25 and p99 < 0.5 else "MISSED"
        vs = f"reference p50 {statistics.median(ref):.3f} s, {statistics.median(ref) / p50:.0f}× slower" if ref else ""
        print(f"  {source:<12} n={len(times):<3} p50 {p50:.3f} s  p99 {p99:.3f} s  max {max(times):.3f} s  {verdict}  "
              f"({vs})")


if __name__ == "__main__":
    main()
