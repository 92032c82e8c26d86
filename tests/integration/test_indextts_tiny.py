"""The incident on REAL training: the shipped specs/indextts/ chain, unchanged, on images/indextts-tiny — IndexTTS-2's
own GPT class (UnifiedVoice, 2 layers of width 64) trained on CPU by our trainer with the real script's command line.

A fine-tune whose LR is too high (1.0, reached through a long warmup: a fresh AdamW survives the first ~1,900
steps, then the model collapses, text_loss ~1.5 → 3.5+) really diverges → the divergence guard trips → phase 1
starts from the vault's best checkpoint at a really lower LR (1e-3, fresh optimizer and schedule through
--base-checkpoint, checked on the `lr` metric runner read from the [Train] lines) → the validation loss recovers
→ phase 2.  And from an already collapsed checkpoint: phase 1 plateaus → restart from the base model.
Inputs only say where it runs and shrink the schedules (the guards and criteria are the shipped ones).
About 3.5 minutes on 2 cores."""
import hashlib
import json

import pytest

from tests.conftest import REPO

TINY_IMAGE = "indextts-tiny:latest"
IN_IMAGE = "/workspace/index-tts"


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def tiny(tmp_path, docker_client, cli):
    try:
        docker_client.images.get(TINY_IMAGE)
    except Exception:
        pytest.fail(f"image {TINY_IMAGE} missing; build it with: bash images/build-offline.sh", pytrace=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "models").mkdir()
    # The pretrained tiny base model (made when the image was built), copied out to a host path as a user's gpt.pth.
    docker_client.containers.run(TINY_IMAGE, ["cp", f"{IN_IMAGE}/checkpoints/gpt.pth", str(tmp_path / "models")],
                                 volumes={str(tmp_path): {"bind": str(tmp_path), "mode": "rw"}}, remove=True)
    return tmp_path


def test_too_high_lr_diverges_guard_trips_phase1_from_the_vaulted_best_at_a_lower_lr_recovers_then_phase2(tiny, cli):
    base = tiny / "models" / "gpt.pth"
    given = {
        "image": TINY_IMAGE, "gpus": 0, "data_dir": tiny / "data", "base_model": base,
        "train_manifest": f"{IN_IMAGE}/data/train.jsonl", "val_manifest": f"{IN_IMAGE}/data/val.jsonl",
        "min_checkpoint_size": "100k", "disk_needed": "1GiB", "validate_every": 1, "log_interval": 10,
        # The fine-tune: LR 1.0 reached over a 20,000-step warmup (it passes ~0.1 at step ~1,900); 6,000 at most.
        "learning_rate": 1, "warmup_steps": 20000, "max_steps": 6000,
        # Phase 1: 800 steps at 1e-3 (the LR the base was pretrained at); phase 2: two epochs (256 steps) at 3e-4.
        "phase1_learning_rate": "1e-3", "phase1_warmup_steps": 50, "phase1_steps": 800,
        "phase2_learning_rate": "3e-4", "phase2_warmup_steps": 20, "phase2_epochs": 2,
    }
    args = [a for k, v in given.items() for a in ("--input", f"{k}={v}")]
    out = cli("apply", str(REPO / "specs" / "indextts" / "finetune.yaml"), *args, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = json.loads(cli("status", "--output", "json").stdout)["runs"]
    run = json.loads(cli("status", run["id"], "--output", "json").stdout)
    assert [p["name"] for p in run["phases"]] == ["indextts-finetune", "indextts-phase1-validate-lr", "indextts-phase2-continue"]
    ft, p1, p2 = run["phases"]

    # The fine-tune really diverged and the divergence guard stopped it.
    assert ft["status"] == "failed" and ft["reason"].startswith("guard tripped (text_loss diverges)"), ft["reason"]
    ckpts = json.loads(cli("checkpoints", run["id"], "indextts-finetune", "--output", "json").stdout)["checkpoints"]
    scored = sorted((c["step"], c["metrics"]["val_text_loss"]["value"]) for c in ckpts if "val_text_loss" in c["metrics"])
    assert len(scored) >= 2, ckpts
    best_val = min(v for _, v in scored)
    diverged_val = scored[-1][1]
    # Whether a checkpoint was saved (and validated) after the collapse depends on where between two saves the
    # guard trips: runs differ (CPU training is not bit-reproducible), and CI runs tripped at step 2,860, before
    # the 3,000 save (the real script saves every 1,000 steps). So the best is not the last checkpoint, unless the
    # guard stopped the fine-tune before its next save. The collapse is always in the training loss the guard
    # read: up by more than a nat.
    tl = ft["outputs"]["metrics"]["text_loss"]
    assert diverged_val > best_val or tl["last_step"] < scored[-1][0] + 1000, (scored, tl)
    assert tl["smoothed"] > tl["min"] + 1.0, tl
    collapsed = diverged_val > best_val + 1.0  # a save after the collapse: its validation loss up by more than a nat

    # Phase 1 started from the vault's best by validation loss; the bytes handed over are the vaulted ones.
    best = ft["outputs"]["best_checkpoint"]
    assert "vault" in best and "/indextts-finetune/" in best and p1["inputs"]["start_from"] == best
    record = next(c for c in ckpts if c["vault_path"] == best)
    assert record["metrics"]["val_text_loss"]["value"] == best_val
    assert sha256(best) == record["sha256"]

    # The LR in effect, read by runner from the trainer's [Train] lines: the fine-tune ramped far past 0.1;
    # phase 1 ran at 1e-3 (a fresh schedule: --base-checkpoint, not --resume), phase 2 at 3e-4.
    assert ft["outputs"]["metrics"]["lr"]["max"] > 0.1
    assert p1["outputs"]["metrics"]["lr"]["max"] == pytest.approx(1e-3, rel=0.01)
    assert p1["outputs"]["metrics"]["lr"]["last_step"] == 800
    assert p2["outputs"]["metrics"]["lr"]["max"] == pytest.approx(3e-4, rel=0.01)

    # Validation recovered in phase 1 (below the diverged fine-tune's, at or below the best it started from).
    assert p1["status"] == "succeeded", p1["explanation"]
    p1_ckpts = json.loads(cli("checkpoints", run["id"], "indextts-phase1-validate-lr", "--output", "json").stdout)["checkpoints"]
    p1_val = min(c["metrics"]["val_text_loss"]["value"] for c in p1_ckpts if "val_text_loss" in c["metrics"])
    assert p1_val <= best_val + 0.05 and (not collapsed or p1_val < diverged_val - 1.0), (p1_val, best_val, diverged_val)

    # Phase 2 from phase 1's best, and it held the target.
    p1_best = p1["outputs"]["best_checkpoint"]
    assert p2["inputs"]["start_from"] == p1_best
    assert sha256(p1_best) == next(c for c in p1_ckpts if c["vault_path"] == p1_best)["sha256"]
    assert p2["status"] == "succeeded", p2["explanation"]
    print(json.dumps({"finetune_vals": scored, "best": best, "phase1_val": p1_val,
                      "trip": ft["reason"], "phase1": p1["explanation"], "phase2": p2["explanation"]}, indent=1))


def test_from_a_collapsed_checkpoint_phase1_plateaus_and_the_chain_restarts_from_the_base(tiny, cli, docker_client):
    """The plan as it was run by hand: phase 1 from a checkpoint that had already collapsed (a fine-tune at 3e-2
    for 100 steps, fresh AdamW, no warmup) at a low LR barely moves — a real plateau — so the chain restarts from
    the base model, which trains again."""
    base = tiny / "models" / "gpt.pth"
    collapsed_dir = tiny / "collapsed"
    docker_client.containers.run(
        TINY_IMAGE, ["python", "trainers/train_gpt_v2.py", "--train-manifest", "data/train.jsonl", "--val-manifest",
                     "data/val.jsonl", "--tokenizer", "checkpoints/bpe.model", "--base-checkpoint", str(base),
                     "--learning-rate", "3e-2", "--warmup-steps", "0", "--max-steps", "100", "--output-dir", str(collapsed_dir)],
        volumes={str(tiny): {"bind": str(tiny), "mode": "rw"}}, remove=True)
    collapsed = collapsed_dir / "model_step100.pth"
    base_sha256 = sha256(base)
    given = {
        "image": TINY_IMAGE, "gpus": 0, "data_dir": tiny / "data", "base_model": base, "start_from": collapsed,
        "train_manifest": f"{IN_IMAGE}/data/train.jsonl", "val_manifest": f"{IN_IMAGE}/data/val.jsonl",
        "min_checkpoint_size": "100k", "disk_needed": "1GiB", "validate_every": 1, "log_interval": 10,
        "phase1_learning_rate": "1e-4", "phase1_warmup_steps": 20, "phase1_steps": 600,
        "restart_learning_rate": "1e-3", "restart_warmup_steps": 20, "restart_epochs": 4,
    }
    args = [a for k, v in given.items() for a in ("--input", f"{k}={v}")]
    out = cli("apply", str(REPO / "specs" / "indextts" / "phase1.yaml"), *args, timeout=600)
    (run,) = json.loads(cli("status", "--output", "json").stdout)["runs"]
    run = json.loads(cli("status", run["id"], "--output", "json").stdout)
    assert [p["name"] for p in run["phases"]] == ["indextts-phase1-validate-lr", "indextts-restart-from-base"], out.stdout[-3000:]
    p1, restart = run["phases"]

    # Phase 1 plateaued far above the target: no recovery at 1e-4 from a collapsed model.
    assert p1["verdict"] == "failure" and "reached its planned end at step 600" in p1["reason"], p1["explanation"]
    assert "✗ mean(text_loss, last 500 steps) < 1.8" in p1["explanation"]
    assert p1["outputs"]["metrics"]["text_loss"]["mean"] > 2.5
    assert p1["outputs"]["metrics"]["lr"]["max"] == pytest.approx(1e-4, rel=0.01)
    p1_val = [c["metrics"]["val_text_loss"]["value"] for c in
              json.loads(cli("checkpoints", run["id"], "indextts-phase1-validate-lr", "--output", "json").stdout)["checkpoints"]
              if "val_text_loss" in c["metrics"]]
    assert p1_val and min(p1_val) > 2.5, p1_val

    # The restart got the base model itself (bytes unchanged), at its own LR, and trained again.
    assert restart["inputs"]["base_model"] == str(base) and sha256(base) == base_sha256
    assert restart["outputs"]["metrics"]["lr"]["max"] == pytest.approx(1e-3, rel=0.01)
    r_val = [c["metrics"]["val_text_loss"]["value"] for c in
             json.loads(cli("checkpoints", run["id"], "indextts-restart-from-base", "--output", "json").stdout)["checkpoints"]
             if "val_text_loss" in c["metrics"]]
    assert r_val and min(r_val) < 1.6 < min(p1_val) - 1.0, (r_val, p1_val)
    # (Its own target, text_loss below 0.9, is the full-size model's: the tiny one's synthetic text stays above it.)
    print(json.dumps({"phase1_val": p1_val, "restart_val": r_val, "restart": restart["explanation"]}, indent=1))
