"""`runner replay` on a real logdir, `runner plan` on chains, `runner metrics` output."""
import json
import subprocess
import sys
import textwrap

import pytest

from runner.decisions import graph
from runner.errors import SpecError
from runner.decisions.replay import replay
from tests.conftest import REPO


@pytest.fixture
def bottoming_logdir(tmp_path):
    """text_loss falls to a minimum at step 3000, then climbs: the run that motivated runner."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "tb"))
    for step in range(0, 8000, 50):
        loss = 3.0 - step / 1500 if step <= 3000 else 1.0 + (step - 3000) / 1000
        w.add_scalar("train/text_loss", loss, step, walltime=1_000_000 + step)
    w.close()
    return tmp_path / "tb"


SPEC = """\
apiVersion: runner/v1
kind: Phase
name: p1
container: {image: x, command: [train]}
metrics:
  tensorboard: {logdir: ./tb, tags: {text_loss: train/text_loss}}
guards:
  - {metric: text_loss, non_finite: true}
  - {metric: text_loss, diverges: {above_best_by: 20%, for: 500 steps}}
  - {stall: 1h}
success:
  all:
    - {metric: text_loss, window: last 500 steps, reduce: mean, below: 1.8}
next:
  - {when: success, apply: p2.yaml}
  - {when: failure, apply: restart.yaml}
"""


def test_replay_reports_the_divergence_step(tmp_path, bottoming_logdir):
    spec = tmp_path / "p1.yaml"
    spec.write_text(SPEC)
    report = replay(spec, bottoming_logdir)
    by = {g["guard"]: g for g in report["guards"]}
    # The raw curve bottoms at 1.0 (step 3000) and passes +20% at 3200; the guard judges the mean of the last
    # 500 steps (half of `for`, at least 10 logging intervals), which lags 250 steps: its best 1.1 (step 3,100),
    # +20% of it passed at 3,550; held for 500 steps → trips at 4050.
    assert by["text_loss diverges"]["step"] == 4050
    assert by["text_loss non-finite"]["step"] is None
    assert by["stall"]["step"] is None
    assert report["stopped_at"] == 4050
    assert report["verdict"] == "failure"
    assert report["next_spec"].endswith("restart.yaml")
    out = subprocess.run([sys.executable, "-m", "runner.cli", "replay", str(spec), "--logdir", str(bottoming_logdir)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "guard text_loss diverges: trips at step 4050" in out.stdout
    assert "next: rule 2 fired" in out.stdout


def test_metrics_csv_matches_the_writer(tmp_path, bottoming_logdir):
    out = subprocess.run([sys.executable, "-m", "runner.cli", "metrics", str(bottoming_logdir), "--format", "csv"],
                         capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "tag,step,value"
    assert lines[1] == "train/text_loss,0,3.0"
    assert len(lines) == 1 + 160
    doc = json.loads(subprocess.run([sys.executable, "-m", "runner.cli", "metrics", str(bottoming_logdir), "--format", "json"],
                                    capture_output=True, text=True).stdout)
    assert doc["train/text_loss"]["steps"][-1] == 7950


def test_plan_validates_every_reachable_spec(tmp_path):
    (tmp_path / "p1.yaml").write_text(SPEC.replace("apply: p2.yaml}", "apply: p2.yaml, with: {resume_from: '${{ phase.best_checkpoint }}', typo: 1}}"))
    (tmp_path / "p2.yaml").write_text(textwrap.dedent("""\
        apiVersion: runner/v1
        kind: Phase
        name: p2
        inputs: {resume_from: null, needed: null}
        container: {image: x, command: [train, "${{ inputs.resume_from }}"]}
        """))
    (tmp_path / "restart.yaml").write_text("apiVersion: runner/v1\nkind: Phase\nname: r\ncontainer: {image: x, comand: [a]}\n")
    with pytest.raises(SpecError) as exc:
        graph.build(tmp_path / "p1.yaml")
    text = str(exc.value)
    assert "p1.yaml:15:" in text and "p2.yaml declares no input 'typo'" in text
    assert "p2.yaml requires input 'needed'" in text
    assert "restart.yaml:4:" in text and "did you mean 'command'" in text


def test_plan_requires_max_iterations_on_loops(tmp_path):
    loop = SPEC.replace("{when: failure, apply: restart.yaml}", "{when: failure, apply: p1.yaml}").replace("  - {when: success, apply: p2.yaml}\n", "")
    (tmp_path / "p1.yaml").write_text(loop)
    with pytest.raises(SpecError, match="loops back to an earlier phase; set max_iterations"):
        graph.build(tmp_path / "p1.yaml")
    (tmp_path / "p1.yaml").write_text(loop.replace("apply: p1.yaml}", "apply: p1.yaml, max_iterations: 3}"))
    g = graph.build(tmp_path / "p1.yaml")
    assert "↺" in graph.render_tree(g, tmp_path)


def test_outputs_are_only_usable_in_next(tmp_path):
    from runner.spec import load_spec

    (tmp_path / "bad.yaml").write_text(SPEC.replace("command: [train]", "command: [train, '${{ phase.best_checkpoint }}']"))
    with pytest.raises(SpecError, match="known only when the phase has ended"):
        load_spec(tmp_path / "bad.yaml")


@pytest.mark.parametrize("spec", ["specs/demo/pipeline.yaml", "specs/demo/pipeline-diverge.yaml", "specs/indextts/phase1.yaml"])
def test_shipped_chains_pass_plan(spec):
    g = graph.build(REPO / spec)
    assert len(g.specs) >= 2
    assert graph.render_mermaid(g).startswith("flowchart TD")


def test_replay_of_the_shipped_incident_chain_on_the_simulated_trainer(tmp_path):
    """`runner replay` of the SHIPPED specs/indextts/ chain's guards on the event files the simulated IndexTTS
    trainer writes to OUTPUT_DIR/logs (8% noise, spikes; run on the host at full speed): the divergence guard
    trips within 5,000 steps of the noiseless curve passing +5%, and the chain goes to phase 1 — the same path
    the live scenario test (tests/integration/test_indextts.py) asserts in real containers.  The shipped specs
    read the trainer's [Train] stdout lines live; replay reads TensorBoard, so the copy here maps the same
    metric names to the trainer's tags (train/text_loss ...) and changes nothing else."""
    import yaml

    sim_dir = REPO / "images" / "indextts-sim"
    T = 40_000
    base = tmp_path / "gpt.pth"
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "val.jsonl", "bpe.model"):
        (data / name).write_text("")
    env = {**{k: v for k, v in __import__("os").environ.items() if not k.startswith("INDEXTTS_SIM_")},
           "INDEXTTS_SIM_SPEED": "0"}
    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], capture_output=True, text=True, cwd=sim_dir, env=env)  # noqa: E731
    out = run(sim_dir / "make_checkpoint.py", "--out", base, "--step", 0, "--diverge-after", T)
    assert out.returncode == 0, out.stderr
    out = run(sim_dir / "train_gpt_v2.py", "--train-manifest", data / "train.jsonl", "--val-manifest", data / "val.jsonl",
              "--tokenizer", data / "bpe.model", "--base-checkpoint", base, "--learning-rate", "2e-5",
              "--max-steps", int(T * 1.4), "--log-interval", 20, "--output-dir", tmp_path / "out")
    assert out.returncode == 0, out.stderr
    chain = tmp_path / "chain"
    chain.mkdir()
    for spec in (REPO / "specs" / "indextts").glob("*.yaml"):
        (chain / spec.name).write_text(spec.read_text())
    doc = yaml.safe_load((chain / "finetune.yaml").read_text())
    names = doc["metrics"]["stdout"]["patterns"]
    doc["metrics"] = {"tensorboard": {"logdir": "logs", "tags": {n: f"train/{n}" for n in names}}}
    # PyYAML (YAML 1.1) reads the key `on` as true; runner's loader reads it as the user means it
    doc["retry"] = {("on" if k is True else k): v for k, v in doc["retry"].items()}
    (chain / "finetune.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    report = replay(chain / "finetune.yaml", tmp_path / "out" / "logs")
    by = {g["guard"]: g for g in report["guards"]}
    sys.path.insert(0, str(sim_dir))
    import sim

    best = sim.trajectory(T, T).level
    passes = next(s for s in range(T, 2 * T, 20) if sim.trajectory(s, T).level >= 1.05 * best)
    assert T < by["text_loss diverges"]["step"] <= passes + 5000, (by, passes)
    assert report["verdict"] == "failure" and report["next_spec"].endswith("phase1.yaml")
