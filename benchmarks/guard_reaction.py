"""Guard reaction time: from the offending value being written to the container receiving SIGTERM.

    .venv/bin/python benchmarks/guard_reaction.py [--runs 3]

Runs the reference trainer (image runner-trainer:latest, from images/build-offline.sh) in a real
container with --diverge-after, under a phase whose divergence guard uses default settings
(metrics.poll_interval 1 s).  The trainer logs every 10 steps and flushes its event file every
second (as its SummaryWriter is set to); on SIGTERM it prints the time it received it.
Reaction = SIGTERM receipt time − wall time of the event at the step where the guard tripped
(the value that made the trip final), both on this host's clock.
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

SPEC = """\
apiVersion: runner/v1
kind: Phase
name: reaction
container:
  image: runner-trainer:latest
  command: [python3, /app/train.py, --max-steps, 2000, --diverge-after, 150, --save-every, 1000,
            --step-delay, 0.02, --logdir, "${{ phase.dir }}/tb", --output-dir, "${{ phase.dir }}/ckpt"]
  mounts: [{source: "${{ phase.dir }}", target: "${{ phase.dir }}", create: true}]
metrics:
  tensorboard: {logdir: "${{ phase.dir }}/tb", tags: {text_loss: train/text_loss}}
guards:
  - {metric: text_loss, diverges: {above_best_by: 50%, for: 20 steps}}
"""


def one(tmp: Path) -> dict:
    spec = tmp / "reaction.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    engine = Engine(Store(tmp / "runs" / "runner.db"), DockerBackend(), tmp / "runs")
    result = engine.apply(spec).last
    events = engine.store.events(result.run_id)
    trip = next(e for e in events if e["kind"] == "guard.tripped")
    step = trip["data"]["step"]
    wall = {s: w for s, _, w in engine.store.metric_points(result.phase_id)["text_loss"]}[step]
    log = (Path(engine.store.phase(result.phase_id)["log_path"])).read_text()
    got = float(re.search(r"SIGTERM received at ([\d.]+)", log).group(1))
    engine.backend.remove(result.container_id)
    return {"step": step, "written": wall, "tripped": trip["at"], "sigterm": got,
            "detect_s": trip["at"] - wall, "reaction_s": got - wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    results = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            r = one(Path(tmp))
        results.append(r)
        print(f"run {i + 1}: tripped at step {r['step']}; written → guard decision {r['detect_s']:.2f} s, "
              f"written → SIGTERM in the container {r['reaction_s']:.2f} s", flush=True)
    reactions = [r["reaction_s"] for r in results]
    print(f"reaction (value written → container gets SIGTERM), default settings: median {statistics.median(reactions):.2f} s, "
          f"max {max(reactions):.2f} s over {len(results)} runs")


if __name__ == "__main__":
    main()
