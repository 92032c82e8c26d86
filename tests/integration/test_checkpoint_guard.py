"""The checkpoint guard with the reference trainer in a real container (--keep-last 2, --diverge-after),
including a runner killed with SIGKILL mid-phase and re-attached."""
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import REPO
from tests.integration.conftest import wait_for

SPEC = REPO / "specs/demo/checkpoint-guard.yaml"


def status(cli, run=None):
    out = cli("status", *([run] if run else []), "--output", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def checkpoints(cli, run, phase="demo-keep-best"):
    out = cli("checkpoints", run, phase, "--output", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["checkpoints"]


def check_best_survived(cli, run_id, tmp_path):
    cks = checkpoints(cli, run_id)
    scored = [c for c in cks if c["score"] is not None]
    lowest = min(scored, key=lambda c: (c["score"], c["step"]))
    (best,) = [c for c in cks if c["state"] == "best" and c["score"] == lowest["score"]][:1]
    assert best["step"] == lowest["step"]
    vault_file = Path(best["vault_path"])
    # Byte-identical to what the trainer wrote (a hard link to its file: the same bytes it closed) ...
    assert hashlib.sha256(vault_file.read_bytes()).hexdigest() == best["sha256"]
    assert torch.load(vault_file, map_location="cpu")["step"] == best["step"]
    # ... although the trainer deleted its own copy long ago.
    assert not Path(best["source"]).exists()
    p1, p2 = status(cli, run_id)["phases"]
    assert p1["outputs"]["best_checkpoint"] == best["vault_path"]
    assert p2["inputs"]["resume_from"] == best["vault_path"]  # the chain's next phase got it
    out = cli("export", run_id, "demo-keep-best", "--best", str(tmp_path / "exported.pth"))
    assert out.returncode == 0 and "verified" in out.stdout
    assert (tmp_path / "exported.pth").read_bytes() == vault_file.read_bytes()
    return best


def test_best_checkpoint_survives_keep_last_and_divergence(cli, tmp_path):
    out = cli("apply", str(SPEC), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run_id = status(cli)["runs"][0]["id"]
    best = check_best_survived(cli, run_id, tmp_path)
    assert best["step"] <= 150  # before the divergence


def test_sigkill_mid_phase_then_attach_loses_nothing(cli, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(cli.state), "apply", str(SPEC)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    run_id = None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        runs = (cli.peek() or {}).get("runs")  # in process: a `runner status` each half second costs a core's tenth
        if runs and runs[0]["phases"]:
            run_id = runs[0]["id"]
            if len([c for c in checkpoints_or_empty(cli, run_id) if c["step"] >= 100]) >= 1:
                break
    assert run_id, "the phase never started"
    proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: the worst case
    proc.wait(timeout=10)
    before = {c["step"]: c["sha256"] for c in checkpoints(cli, run_id) if c["sha256"]}
    # The trainer goes on writing (and its keep-last-2 deleting) while no runner watches: wait for two
    # checkpoints newer than any vaulted, so one of them was written and rotated away unwatched.
    ckpt_dir = cli.state.parent / run_id / "demo-keep-best" / "ckpt"
    wait_for("two checkpoints written while no runner watches", lambda: sum(
        1 for p in ckpt_dir.glob("model_step*.pth") if int(p.stem.split("step")[1]) > max(before, default=0)) >= 2,
        timeout=120, every=0.1)
    out = cli("attach", run_id, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    after = {c["step"]: c for c in checkpoints(cli, run_id)}
    for step, sha in before.items():  # the vault and the store agree on everything vaulted before the kill
        assert after[step]["sha256"] == sha
        if after[step]["state"] in ("best", "kept"):
            assert hashlib.sha256(Path(after[step]["vault_path"]).read_bytes()).hexdigest() == sha
    check_best_survived(cli, run_id, tmp_path)
    p1 = status(cli, run_id)["phases"][0]
    assert p1["status"] == "failed" and "diverges" in p1["reason"]  # judged once, by the attached runner
    events = [e["kind"] for e in status(cli, run_id)["events"]]
    assert events.count("phase.failed") == 1 and events.count("chain.decision") == 2


def checkpoints_or_empty(cli, run_id):
    out = cli("checkpoints", run_id, "--output", "json")
    return json.loads(out.stdout)["checkpoints"] if out.returncode == 0 else []


def test_validation_runs_score_checkpoints_by_val_loss(cli):
    out = cli("apply", str(REPO / "specs/demo/validate.yaml"), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run_id = status(cli)["runs"][0]["id"]
    cks = checkpoints(cli, run_id, "demo-validate")
    assert [c["step"] for c in cks] == [50, 100, 150, 200, 250, 300]
    events = status(cli, run_id)["events"]
    validated = {e["message"].split()[2].rstrip(":") for e in events if e["kind"] == "validation.done"}
    assert validated == {"50", "100", "150", "200", "250", "300"}
    for c in cks:  # the score is the val_loss the validation printed for that very checkpoint
        assert c["score"] is not None
        msg = next(e["message"] for e in events if e["kind"] == "validation.done" and e["message"].startswith(f"validated step {c['step']}:"))
        assert f"val_loss={c['score']:.5g}" in msg
    # Retention by val_loss: the best two are 'best'; nothing that was ever best is pruned.
    two_best = sorted(cks, key=lambda c: (c["score"], c["step"]))[:2]
    assert {c["step"] for c in cks if c["state"] == "best"} == {c["step"] for c in two_best}
    assert not any(c["ever_best"] and c["state"] == "pruned" for c in cks)


def test_stop_of_a_detached_phase_vaults_what_the_trainer_left(cli, tmp_path):
    """`apply --detach`, then `runner stop`: nobody watched the trainer, yet the phase is judged by a
    guard rebuilt from the store; its final scan (the container has ended) vaults every checkpoint that
    loads — copies of the trainer's files that its rotation would delete next."""
    out = cli("apply", str(SPEC), "--detach", "--unsupervised", "--input", "max_steps=100000")
    assert out.returncode == 0, out.stderr
    (run,) = status(cli)["runs"]
    ckpt_dir = tmp_path / "runs" / run["id"] / "demo-keep-best" / "ckpt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(ckpt_dir.glob("model_step*.pth"))) < 2:
        time.sleep(0.5)
    out = cli("stop", run["id"])
    assert out.returncode == 0, out.stderr
    phase = status(cli, run["id"])["phases"][0]
    assert phase["status"] == "cancelled"
    kept = [c for c in checkpoints(cli, run["id"]) if c["state"] in ("kept", "best")]
    assert len(kept) >= 2, checkpoints(cli, run["id"])
    for c in kept:
        assert "/vault/" in c["vault_path"]
        assert hashlib.sha256(Path(c["vault_path"]).read_bytes()).hexdigest() == c["sha256"]
    # The SIGTERM save (the last step) is among them: what the trainer wrote last is protected too.
    assert max(c["step"] for c in kept) == max(int(p.stem.split("step")[1]) for p in ckpt_dir.glob("model_step*.pth"))
