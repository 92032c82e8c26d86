"""Issue 18: a resume that ignores the asked LR is caught and named, on both IndexTTS images.

The user's mistake, as it happened: the shipped phase 1 with `--resume CHECKPOINT` instead of `--base-checkpoint`
(the real script then restores the optimizer AND the scheduler, so `--learning-rate 1e-6` is silently ignored).
The phase's `expect:` (the LR in effect, the step count from 0) stops it with a reason that says what the trainer
did, on the simulator (a full checkpoint at step 351,000 trained at 2e-5) and on real tiny training (a full
checkpoint the tiny trainer saved at step 1,000, trained at 1e-3)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import REPO

IN_IMAGE = "/workspace/index-tts"


def _with_resume(tmp_path, base: str) -> str:
    """specs/indextts/phase1.yaml as a user who added --resume would have written it (the base model stays the
    --base-checkpoint, as in the real script's defaults; the chain rules left out)."""
    text = (REPO / "specs" / "indextts" / "phase1.yaml").read_text()
    old = '--base-checkpoint, "${{ inputs.start_from }}"'
    assert old in text
    text = text.replace(old, f'--base-checkpoint, {base}, --resume, "${{{{ inputs.start_from }}}}"')
    text = text[: text.index("\nnext:")] + "\n"
    path = tmp_path / "phase1-resume.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("image", ["indextts-sim:latest", "indextts-tiny:latest"])
def test_a_resume_that_keeps_the_checkpoints_lr_is_stopped_and_named(image, tmp_path, docker_client, cli):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    mount = {str(tmp_path): {"bind": str(tmp_path), "mode": "rw"}}
    if image.startswith("indextts-sim"):
        for name in ("train.jsonl", "val.jsonl", "bpe.model"):
            (data / name).write_text("")
        docker_client.containers.run(image, ["python", "make_checkpoint.py", "--out", str(ckpt / "model_step351000.pth"),
                                            "--step", "351000", "--learning-rate", "2e-5", "--total-steps", "1000000"],
                                     volumes=mount, remove=True)
        docker_client.containers.run(image, ["python", "make_checkpoint.py", "--out", str(data / "gpt.pth"), "--step", "0"],
                                     volumes=mount, remove=True)
        start, trained_at, base = ckpt / "model_step351000.pth", 2e-5, "/data/gpt.pth"
        files = {"train_manifest": "/data/train.jsonl", "val_manifest": "/data/val.jsonl", "tokenizer": "/data/bpe.model",
                 "validate_script": REPO / "images" / "indextts-sim" / "validate.py", "phase1_steps": 400000}
    else:
        docker_client.containers.run(image, ["python", "train_gpt_v2.py", "--train-manifest", f"{IN_IMAGE}/data/train.jsonl",
                                            "--val-manifest", f"{IN_IMAGE}/data/val.jsonl",
                                            "--base-checkpoint", f"{IN_IMAGE}/checkpoints/gpt.pth",
                                            "--tokenizer", f"{IN_IMAGE}/checkpoints/bpe.model",
                                            "--learning-rate", "1e-3", "--warmup-steps", "50", "--max-steps", "1000",
                                            "--output-dir", str(ckpt)], volumes=mount, remove=True)
        start, trained_at, base = ckpt / "model_step1000.pth", 1e-3, f"{IN_IMAGE}/checkpoints/gpt.pth"
        files = {"train_manifest": f"{IN_IMAGE}/data/train.jsonl", "val_manifest": f"{IN_IMAGE}/data/val.jsonl",
                 "validate_script": REPO / "images" / "indextts-tiny" / "validate.py", "phase1_steps": 3000}
    assert start.is_file()
    given = {"image": image, "gpus": 0, "data_dir": data, "start_from": start, "min_checkpoint_size": "1k",
             "disk_needed": "1GiB", "log_interval": 10, "phase1_learning_rate": "1e-6", "phase1_warmup_steps": 50, **files}
    args = [a for k, v in given.items() for a in ("--input", f"{k}={v}")]
    out = cli("apply", _with_resume(tmp_path, base), *args, timeout=300)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = json.loads(cli("status", "--output", "json").stdout)["runs"]
    (p,) = json.loads(cli("status", run["id"], "--output", "json").stdout)["phases"]
    assert p["status"] == "failed", p
    reason = p["reason"]
    assert "expect lr" in reason and "the spec asked for 1e-06" in reason and "restored its scheduler" in reason, reason
    ran_at = float(reason.split("the trainer runs at ")[1].split()[0])
    assert abs(ran_at - 1e-6) > 1e-7 and ran_at <= trained_at * 1.01, reason  # the checkpoint's schedule, not the asked LR
