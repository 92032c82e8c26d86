"""A logdir that holds another run (a resume into the same folder; steps that jump forward or back): a phase
is judged on its own steps only, live and in `runner replay`, and it is said.  Event files written by torch's
real SummaryWriter, with the wall times the two runs had."""
import textwrap
import time

from torch.utils.tensorboard import SummaryWriter

from runner.metrics.sources import LogdirReader
from runner.decisions.replay import replay

SPEC = textwrap.dedent("""\
    apiVersion: runner/v1
    kind: Phase
    name: p1
    container: {image: x, command: [train]}
    metrics:
      tensorboard: {logdir: tb, tags: {text_loss: train/text_loss}}
    guards:
      - {metric: text_loss, diverges: {for: 1000 steps}}
    success:
      all:
        - {metric: text_loss, window: last 500 steps, reduce: mean, below: 1.8}
        - {metric: text_loss, window: last 500 steps, reduce: mean, progress: {from: start, to: 1.5, at_least: 50%}}
    """)


def write_run(logdir, steps, value, wall0):
    w = SummaryWriter(log_dir=str(logdir))
    for i, step in enumerate(steps):
        w.add_scalar("train/text_loss", value(step), step, walltime=wall0 + i * 0.1)
    w.close()


def old_then_new(tmp_path, new_start: int):
    """An old run (steps 0..20,000, rising to 4.0) written an hour ago, then the phase's own run from
    ``new_start``: flat at 1.6, below the plan's 1.8 (from 2.0 at its start)."""
    logdir = tmp_path / "tb"
    hour_ago = time.time() - 3600
    write_run(logdir, range(0, 20_001, 100), lambda s: 1.0 + 3.0 * s / 20_000, hour_ago)
    now = time.time()
    write_run(logdir, range(new_start, new_start + 5001, 100),
              lambda s: 2.0 if s - new_start < 500 else 1.6, now)
    return logdir, now


def test_a_live_phase_reads_only_the_points_written_since_it_started(tmp_path):
    logdir, started = old_then_new(tmp_path, 351_000)
    reader = LogdirReader(logdir, {"text_loss": "train/text_loss"})
    reader.since = started
    (steps, _values, _walls), = reader.poll().values()
    assert int(steps[0]) == 351_000 and int(steps[-1]) == 356_000 and len(steps) == 51
    assert reader.ignored == {"text_loss": 201}
    assert any("written before this phase started" in p for p in reader.problems)


def test_replay_judges_the_newest_run_when_steps_jump_forward_and_warns(tmp_path):
    logdir, _ = old_then_new(tmp_path, 351_000)
    (tmp_path / "p1.yaml").write_text(SPEC)
    report = replay(tmp_path / "p1.yaml", logdir)
    assert report["metrics"]["text_loss"]["first_step"] == 351_000
    assert report["phase_start"] >= 350_000  # the old run's steps are not the phase's start
    assert any("holds 2 writers' event files" in w and "step 351,000" in w for w in report["warnings"])
    # Judged on the phase's own steps: no divergence of the old run, and the rate from its own start.
    assert all(g["step"] is None for g in report["guards"]), report["guards"]
    assert report["verdict"] == "success", report["explanation"]


def test_replay_judges_the_newest_run_when_steps_jump_back(tmp_path):
    logdir, _ = old_then_new(tmp_path, 0)
    (tmp_path / "p1.yaml").write_text(SPEC)
    report = replay(tmp_path / "p1.yaml", logdir)
    assert report["metrics"]["text_loss"] == {"points": 51, "first_step": 0, "last_step": 5000}
    assert report["warnings"] and report["verdict"] == "success", report["explanation"]
