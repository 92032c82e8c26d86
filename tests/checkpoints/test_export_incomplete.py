"""`runner export` and `runner checkpoints` with incomplete checkpoints (issue 24), as a user runs them (the CLI as
a subprocess, on a store built through Store's API): an incomplete checkpoint is never exported (refused with
the reason, --force to override), and the listing says which rule decided each checkpoint was complete."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from runner.checkpoints.vault import file_hashes, sha256_of
from runner.store import Store
from tests.checkpoints.test_guard import safetensors_bytes


def hf_folder(d, step, whole=True):
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(safetensors_bytes(16))
    torch.save({"a": 1}, d / "training_args.bin")
    if whole:
        torch.save({"state": {}}, d / "optimizer.pt")
        torch.save({}, d / "scheduler.pt")
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def site(tmp_path, best_whole=True):
    """Run r1, phase train: checkpoint-10 kept, checkpoint-20 best (whole, or vaulted half by an older runner),
    checkpoint-30 incomplete (the trainer is still writing it), checkpoint-5 missed."""
    state = tmp_path / "runs" / "runner.db"
    state.parent.mkdir(parents=True)
    store = Store(state)
    store.create_run("r1", "spec.yaml")
    pid = store.add_phase("r1", "train", "spec.yaml", "0" * 64, {},
                          phase_json=json.dumps({"checkpoints": {"keep": {"by": "eval_loss", "mode": "min"}}}))
    vault = tmp_path / "runs" / "vault" / "r1" / "train"
    rule = "huggingface Trainer: trainer_state.json (written last)"
    for step, state_, score, whole in ((10, "kept", 2.0, True), (20, "best", 1.0, best_whole)):
        d = vault / f"checkpoint-{step}"
        hf_folder(d, step, whole)
        store.checkpoint_intent(pid, step, d.name, str(tmp_path / "ckpt" / d.name), str(d))
        store.checkpoint_update(pid, d.name, state=state_, score=score, sha256=sha256_of(d), size=1, how="link",
                                files_json=json.dumps(file_hashes(d)), ever_best=int(state_ == "best"))
        store.event("r1", pid, "checkpoint.vaulted", f"vaulted {d.name}", {"name": d.name, "step": step, "rule": rule,
                                                                            "layout": "huggingface"})
    for step, state_ in ((30, "incomplete"), (5, "missed")):
        store.checkpoint_intent(pid, step, f"checkpoint-{step}", str(tmp_path / "ckpt" / f"checkpoint-{step}"),
                                str(vault / f"checkpoint-{step}"))
        store.checkpoint_update(pid, f"checkpoint-{step}", state=state_)
    store.event("r1", pid, "checkpoint.waiting", "checkpoint-30 is incomplete",
                {"name": "checkpoint-30", "step": 30, "why": "trainer_state.json not written yet", "rule": rule})
    store.close()
    return state


def runner(state, *args):
    env = {**os.environ, "DOCKER_HOST": f"unix://{state.parent}/no-engine.sock", "RUNNER_STATE": "", "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "runner.cli", "--state", str(state), *args], capture_output=True,
                          text=True, env=env, timeout=120, cwd=state.parent)


def test_the_listing_says_which_rule_decided_and_what_an_incomplete_one_waits_for(tmp_path):
    state = site(tmp_path)
    doc = json.loads(runner(state, "checkpoints", "r1", "-o", "json").stdout)
    rows = {c["name"]: c for c in doc["checkpoints"]}
    assert rows["checkpoint-20"]["rule"] == "huggingface Trainer: trainer_state.json (written last)"
    assert rows["checkpoint-20"]["handed_over"] and not rows["checkpoint-30"]["handed_over"]
    assert rows["checkpoint-30"]["state"] == "incomplete"
    assert rows["checkpoint-30"]["rule"] == "waiting: trainer_state.json not written yet"
    out = runner(state, "checkpoints", "r1")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.split() and line.split()[0].isdigit()}
    assert "best (handed over)" in lines["20"] and "incomplete" in lines["30"] and "missed" in lines["5"]
    assert "vault" not in lines["30"] and "vault" not in lines["5"]  # no vault path for what is not in the vault


def test_export_takes_the_best_complete_checkpoint_and_names_the_one_still_being_written(tmp_path):
    state = site(tmp_path)
    out = runner(state, "export", "r1", "--best", str(tmp_path / "out") + "/")
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(tmp_path / "out" / "checkpoint-20")) == sorted(
        ["config.json", "model.safetensors", "training_args.bin", "optimizer.pt", "scheduler.pt", "trainer_state.json"])
    assert "checkpoint-30 still being written" in out.stdout


def test_export_refuses_a_half_vaulted_best_with_the_reason_and_force_overrides(tmp_path):
    state = site(tmp_path, best_whole=False)
    out = runner(state, "export", "r1", "--best", str(tmp_path / "out") + "/")
    assert out.returncode == 1
    assert "checkpoint-20 (step 20), the best checkpoint of phase train, is incomplete in the vault" in out.stderr
    assert "no trainer_state.json" in out.stderr and "optimizer.pt, scheduler.pt" in out.stderr
    assert "--force" in out.stderr and not (tmp_path / "out" / "checkpoint-20").exists()
    out = runner(state, "export", "r1", "--best", str(tmp_path / "out") + "/", "--force")
    assert out.returncode == 0, out.stderr
    assert "WARNING: exported incomplete on purpose (--force): no trainer_state.json" in out.stdout
    assert sorted(os.listdir(tmp_path / "out" / "checkpoint-20")) == ["config.json", "model.safetensors", "training_args.bin"]


def test_no_complete_checkpoint_at_all_says_the_incomplete_ones_are_no_candidates(tmp_path):
    state = tmp_path / "runs" / "runner.db"
    state.parent.mkdir(parents=True)
    store = Store(state)
    store.create_run("r2", "spec.yaml")
    pid = store.add_phase("r2", "train", "spec.yaml", "0" * 64, {})
    store.checkpoint_intent(pid, 10, "checkpoint-10", "src", "dst")
    store.checkpoint_update(pid, "checkpoint-10", state="incomplete")
    store.close()
    out = runner(state, "export", "r2", "--best", str(tmp_path / "out"))
    assert out.returncode == 1
    assert "no scored best checkpoint (checkpoint-10 incomplete: never a candidate until complete and vaulted)" in out.stderr
