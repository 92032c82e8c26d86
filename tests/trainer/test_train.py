"""The reference trainer (images/trainer/train.py) on the host's torch: resume, rotation, divergence."""
import math
import subprocess
import sys

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import REPO

TRAIN = REPO / "images" / "trainer" / "train.py"


def train(tmp_path, name, *args):
    out, tb = tmp_path / name / "ckpt", tmp_path / name / "tb"
    proc = subprocess.run([sys.executable, str(TRAIN), "--output-dir", str(out), "--logdir", str(tb),
                           "--log-every", "5", "--d-model", "32", "--layers", "1", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out, tb, proc.stdout


def scalars(tb, tag):
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_resume_is_exact(tmp_path):
    full, full_tb, _ = train(tmp_path, "full", "--max-steps", 20, "--save-every", 10)
    _, resumed_tb, stdout = train(tmp_path, "resumed", "--max-steps", 20, "--save-every", 10, "--resume", full / "model_step10.pth")
    assert "resumed from" in stdout and "at step 10" in stdout
    a = torch.load(full / "model_step20.pth", map_location="cpu")
    b = torch.load(tmp_path / "resumed" / "ckpt" / "model_step20.pth", map_location="cpu")
    assert a["step"] == b["step"] == 20
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert scalars(resumed_tb, "train/text_loss") == {s: v for s, v in scalars(full_tb, "train/text_loss").items() if s > 10}


def test_logs_the_three_tags_and_keeps_last_n(tmp_path):
    out, tb, _ = train(tmp_path, "run", "--max-steps", 50, "--save-every", 10, "--keep-last", 2)
    assert sorted(p.name for p in out.iterdir()) == ["model_step40.pth", "model_step50.pth"]
    for tag in ("train/text_loss", "train/mel_loss", "train/lr"):
        assert sorted(scalars(tb, tag)) == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    state = torch.load(out / "model_step50.pth", map_location="cpu")
    assert set(state) == {"step", "model", "optimizer", "rng"}


def test_loss_goes_down_then_diverge_after_blows_it_up(tmp_path):
    _, tb, _ = train(tmp_path, "run", "--max-steps", 120, "--warmup", 10, "--diverge-after", 80, "--save-every", 200)
    loss = scalars(tb, "train/text_loss")
    assert loss[80] < loss[5]  # it learns
    after = [loss[s] for s in (100, 105, 110, 115, 120)]
    assert all(not math.isfinite(v) or v > loss[80] * 1.2 for v in after)  # then diverges
