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
          command: [python3, -c, {TRAINER!r}, {source}, "${{{{ phase.dir }}}}/m"]
          stop_grace_period: 5s
          mounts: [{{source: "${{{{ phase.dir }}}}", target: "${{{{ phase.dir }}}}", create: true}}]
        metrics:
          {METRICS[source]}
        guards:
          - {{metric: loss, non_finite: true}}
        """)


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
    args = ap.parse_args()
    rows = []
    for source in args.source:
        times = []
        for i in range(args.trips):
            with tempfile.TemporaryDirectory() as tmp:
                times.append(one(Path(tmp), source))
            print(f"{source} trip {i + 1}: {times[-1]:.3f} s", flush=True)
        rows.append((source, times))
    print("\nreaction (value visible → trainer gets SIGTERM), poll_interval 1 s, targets p50 < 0.25 s, p99 < 0.5 s:")
    for source, times in rows:
        p50, p99 = statistics.median(times), pct(times, 0.99)
        verdict = "ok" if p50 < 0.25 and p99 < 0.5 else "MISSED"
        print(f"  {source:<12} n={len(times):<3} p50 {p50:.3f} s  p99 {p99:.3f} s  max {max(times):.3f} s  "
              f"(vs the 1 s timer: {p50 / 1.0:.2f}×)  {verdict}")


if __name__ == "__main__":
    main()
