"""A finished two-phase run in a fresh run store, made with the FakeBackend (no Docker): phase 1's
loss comes down, then diverges; the divergence guard trips; the failure rule runs phase 2.  Used by
the report's and the web page's tests."""
import textwrap
from pathlib import Path

from runner.backends.fake import FakeBackend, Script
from runner.engine import Engine, QuietReporter
from runner.store import Store

P1 = """\
apiVersion: runner/v1
kind: Phase
name: p1-diverge
description: loss comes down, then diverges
container: {image: trainer:latest, command: [train]}
metrics:
  stdout: {step: 'step (\\d+)', patterns: {text_loss: 'text_loss ([-+.\\deE]+)'}}
  total_steps: 300
checkpoints: {dir: ckpt, pattern: "model_step{step}.pth", keep: {by: text_loss, mode: min}}
guards:
  - {metric: text_loss, diverges: {above_best_by: 50%, for: 20 steps, smoothing: 0.6}}
success:
  all:
    - {metric: text_loss, window: last 50 steps, reduce: mean, below: 3.2}
next:
  - {when: success, apply: p2.yaml}
  - {when: failure, apply: p2.yaml}
"""
P2 = """\
apiVersion: runner/v1
kind: Phase
name: p2
container: {image: trainer:latest, command: [train]}
"""


def make_run(folder: Path) -> tuple[Path, str]:
    """(the run store's path, the run id)."""
    (folder / "specs").mkdir(parents=True, exist_ok=True)
    (folder / "specs" / "p1.yaml").write_text(P1)
    (folder / "specs" / "p2.yaml").write_text(P2)
    losses = [4.0 - 0.01 * s for s in range(0, 150, 5)] + [3.0 * (1.2 ** k) for k in range(1, 12)]
    lines = [f"step {i * 5} text_loss {v:.4f}" for i, v in enumerate(losses)] + ["[bold red]not markup[/] <script>x</script>"]
    backend = FakeBackend(script={"p1-diverge": Script(lines=lines, exit_code=0), "p2": Script(lines=["ok"])})
    state = folder / "runs" / "runner.db"
    store = Store(state)
    engine = Engine(store, backend, folder / "runs", QuietReporter(), poll_s=0.001)
    run = engine.apply(folder / "specs" / "p1.yaml")
    p1 = store.phases(run.run_id)[0]
    for step, st, score in ((50, "kept", 3.5), (100, "best", 3.0), (20, "pruned", 3.8)):
        store.checkpoint_intent(p1["id"], step, f"model_step{step}.pth", f"ckpt/model_step{step}.pth",
                                f"vault/model_step{step}.pth")
        store.checkpoint_update(p1["id"], f"model_step{step}.pth", state=st, score=score, sha256="ab" * 32)
    store.event(run.run_id, p1["id"], "note", "an event mentioning <img src=x onerror=alert(1)> and capabilities: [[gpu]]")
    store.close()
    return state, run.run_id


def dedent(text: str) -> str:
    return textwrap.dedent(text)
