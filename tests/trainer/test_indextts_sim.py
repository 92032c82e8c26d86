"""The simulated IndexTTS-2 GPT trainer (images/indextts-sim/, a test double) on the host's torch.

Resume, rotation, determinism, validation, SIGTERM, and the dynamics runner's end-to-end tests rely
on (images/indextts-sim/README.md), at a reduced scale: diverge_after 20,000 steps.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import REPO

SIM = REPO / "images" / "indextts-sim"
T = 20_000  # diverge_after at test scale
ENV = {k: v for k, v in os.environ.items() if not k.startswith("INDEXTTS_SIM_")}


def run(script, *args, env=None, timeout=120):
    proc = subprocess.run([sys.executable, str(SIM / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**ENV, **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def make(path, *args):
    run("make_checkpoint.py", "--out", path, "--diverge-after", T, *args)
    return path


def train(dirpath, resume, *args, env=None):
    """Train at --speed 0 into dirpath/{tb,ckpt}; return (ckpt dir, {tag: {step: value}}, stdout)."""
    out, tb = dirpath / "ckpt", dirpath / "tb"
    stdout = run("train_gpt_v2.py", "--resume", resume, "--speed", 0, "--logdir", tb, "--output-dir", out, *args, env=env)
    return out, scalars(tb), stdout


def scalars(tb):
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def mean(series, lo, hi):
    """Mean of the logged values at steps in (lo, hi]."""
    vals = [v for s, v in series.items() if lo < s <= hi]
    assert vals, (lo, hi)
    return sum(vals) / len(vals)


def level(path):
    """The checkpoint's noise-free loss level (L + D) and step."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    L, D, _ = ck["model"]["gpt.sim_state"].tolist()
    return L + D, ck["step"]


@pytest.fixture(scope="module")
def incident(tmp_path_factory):
    """The incident at test scale: the base model trained at 2e-5, batch 4, to step 30,000 (NaN by then)."""
    root = tmp_path_factory.mktemp("incident")
    base = make(root / "base.pth", "--step", 0)
    out, tags, stdout = train(root / "run", base, "--learning-rate", 2e-5, "--max-steps", 30_000, "--save-every", 1000)
    return root, base, out, tags, stdout


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """A crafted checkpoint in the rising part: step 23,500, smoothed text_loss 2.4, scenario recover."""
    return make(tmp_path_factory.mktemp("diverged") / "model_step23500.pth", "--step", 23_500, "--loss", 2.4)


def test_logs_three_tags_never_validation_and_saves_every_n(incident):
    _, _, out, tags, stdout = incident
    assert set(tags) == {"train/text_loss", "train/mel_loss", "train/lr"}
    assert sorted(tags["train/text_loss"]) == list(range(20, 30_001, 20))
    assert all(v == pytest.approx(2e-5) for v in tags["train/lr"].values())
    assert sorted(p.name for p in out.iterdir()) == sorted(f"model_step{s}.pth" for s in range(1000, 30_001, 1000))
    assert "resumed from" in stdout and "at step 0" in stdout and "done at step 30000" in stdout
    assert os.path.getsize(out / "model_step1000.pth") < 64_000
    # mel_loss: the same shape at about 0.3 of the scale
    text, mel = tags["train/text_loss"], tags["train/mel_loss"]
    assert 0.27 < mean(mel, 0, 20_000) / mean(text, 0, 20_000) < 0.33


def test_resume_starts_at_the_checkpoint_step_is_exact_and_rotates(incident, tmp_path):
    _, _, full, full_tags, _ = incident
    out, tags, stdout = train(tmp_path, full / "model_step10000.pth", "--learning-rate", 2e-5, "--max-steps", 12_000,
                              "--save-every", 500, "--keep-last", 2)
    assert "resumed from" in stdout and "at step 10000" in stdout
    for tag in ("train/text_loss", "train/mel_loss", "train/lr"):
        assert min(tags[tag]) == 10_020
        assert tags[tag] == {s: v for s, v in full_tags[tag].items() if 10_000 < s <= 12_000}
    assert sorted(p.name for p in out.iterdir()) == ["model_step11500.pth", "model_step12000.pth"]
    a = torch.load(full / "model_step12000.pth", map_location="cpu", weights_only=True)
    b = torch.load(out / "model_step12000.pth", map_location="cpu", weights_only=True)
    assert a["step"] == b["step"] == 12_000 and a["sim"] == b["sim"]
    assert torch.equal(a["model"]["gpt.sim_state"], b["model"]["gpt.sim_state"])


def test_ends_train_steps_epochs_and_max_steps_the_earliest_wins(incident, tmp_path):
    _, base, _, _, _ = incident
    _, tags, _ = train(tmp_path / "a", base, "--train-steps", 300, "--epochs", 1, "--epoch-steps", 200, "--log-every", 100)
    assert sorted(tags["train/text_loss"]) == [100, 200]
    _, tags, _ = train(tmp_path / "b", base, "--train-steps", 300, "--max-steps", 250, "--log-every", 100, "--seed", 3)
    assert sorted(tags["train/text_loss"]) == [100, 200, 250]  # the planned end is logged and saved
    assert sorted(p.name for p in (tmp_path / "b" / "ckpt").iterdir()) == ["model_step250.pth"]
    assert torch.load(tmp_path / "b" / "ckpt" / "model_step250.pth", weights_only=True)["sim"]["seed"] == 3
    proc = subprocess.run([sys.executable, str(SIM / "train_gpt_v2.py"), "--resume", base, "--no-such-flag"],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr


def test_validate_is_deterministic_json_and_nan_for_a_nan_state(incident):
    _, _, out, _, _ = incident
    best = out / "model_step20000.pth"
    first, second = run("validate.py", "--checkpoint", best), run("validate.py", "--checkpoint", best)
    assert first == second
    got = json.loads(first.strip().splitlines()[-1])
    assert got["step"] == 20_000 and set(got) == {"step", "val_text_loss", "val_mel_loss"}
    assert got["val_text_loss"] == pytest.approx(1.04 * level(best)[0]) and 0.95 < got["val_text_loss"] < 1.0
    assert got["val_mel_loss"] == pytest.approx(0.3 * got["val_text_loss"])
    gone = json.loads(run("validate.py", "--checkpoint", out / "model_step30000.pth").strip().splitlines()[-1])
    assert gone["step"] == 30_000 and math.isnan(gone["val_text_loss"]) and math.isnan(gone["val_mel_loss"])


def test_a_learns_to_the_best_by_diverge_after_then_diverges_and_goes_nan(incident):
    _, _, out, tags, _ = incident
    text = tags["train/text_loss"]
    windows = [mean(text, s - 2000, s) for s in range(2000, 20_001, 2000)]
    assert windows[0] > 2.8 and all(b < a for a, b in zip(windows, windows[1:]))  # falls all the way
    assert 0.92 < mean(text, 19_000, 20_000) < 0.97  # the best, ~0.94, at diverge_after
    assert mean(text, 21_000, 22_000) < 1.0  # still near the best 5-10% of T later
    assert 1.7 < mean(text, 23_000, 24_000) < 2.6 and mean(text, 24_000, 25_000) > 1.9  # ~+100%
    assert mean(text, 26_000, 29_000) > 3.0
    finite = [s for s, v in text.items() if math.isfinite(v)]
    first_nan = min(s for s, v in text.items() if math.isnan(v))
    assert max(finite) < first_nan and 29_000 < first_nan <= 29_400  # NaN at ~1.466 T, for good
    assert level(out / "model_step20000.pth")[0] == pytest.approx(0.94, abs=0.005)


def test_b_recover_at_a_low_lr(incident, diverged, tmp_path):
    _, _, full, _, _ = incident
    out, tags, _ = train(tmp_path / "rec", diverged, "--learning-rate", 1e-6, "--train-steps", 5000)
    text = tags["train/text_loss"]
    windows = [mean(text, s - 1000, s) for s in range(24_500, 28_501, 1000)]
    assert windows[0] > 2.0 and 1.0 < windows[-1] < 1.6
    assert all(b < a + 0.03 for a, b in zip(windows, windows[1:]))
    # at 2e-6 for an epoch it keeps improving slowly
    _, tags, _ = train(tmp_path / "epoch", out / "model_step28500.pth", "--learning-rate", 2e-6, "--epochs", 1)
    text = tags["train/text_loss"]
    assert min(text) == 28_520 and max(text) == 48_500
    assert mean(text, 46_500, 48_500) < mean(text, 28_500, 30_500) - 0.15
    # from the best checkpoint (D = 0) it stays at its level and drifts down, never up
    best = full / "model_step20000.pth"
    out, tags, _ = train(tmp_path / "best", best, "--learning-rate", 1e-6, "--train-steps", 5000)
    text = tags["train/text_loss"]
    assert all(0.9 < mean(text, s - 1000, s) < 0.98 for s in range(21_000, 25_001, 1000))
    levels = [level(out / f"model_step{s}.pth")[0] for s in range(21_000, 25_001, 1000)]
    assert levels == sorted(levels, reverse=True) and levels[-1] <= level(best)[0]


def test_c_plateau_rise_and_nan_scenarios(diverged, tmp_path):
    runs = {}
    for scenario in ("plateau", "rise", "nan"):  # the env override; the checkpoints then carry it
        out, tags, _ = train(tmp_path / scenario, diverged, "--learning-rate", 1e-6, "--train-steps", 5000,
                             env={"INDEXTTS_SIM_SCENARIO": scenario})
        runs[scenario] = tags["train/text_loss"]
        assert torch.load(out / "model_step28500.pth", weights_only=True)["sim"]["scenario"] == scenario
    plateau = [mean(runs["plateau"], s - 500, s) for s in range(24_000, 28_501, 500)]
    assert all(2.4 * 0.95 < w < 2.4 * 1.05 for w in plateau)
    rise = [mean(runs["rise"], s - 1000, s) for s in range(24_500, 28_501, 1000)]
    assert all(b > a for a, b in zip(rise, rise[1:])) and rise[-1] > 1.2 * rise[0]
    nan = runs["nan"]
    assert all(math.isfinite(v) for s, v in nan.items() if s < 24_500)
    assert all(math.isnan(v) for s, v in nan.items() if s >= 24_500)


def test_d_restart_from_base_at_5e6_batch8_warmup_gets_below_0_9_and_never_diverges(incident, tmp_path):
    _, base, _, _, _ = incident
    _, tags, _ = train(tmp_path, base, "--learning-rate", 5e-6, "--batch-size", 8, "--warmup", 10_000, "--epochs", 2)
    text, lr = tags["train/text_loss"], tags["train/lr"]
    assert lr[5000] == pytest.approx(2.5e-6) and lr[10_000] == lr[40_000] == pytest.approx(5e-6)
    windows = [mean(text, s - 2000, s) for s in range(2000, 40_001, 2000)]
    assert all(b < a + 0.02 for a, b in zip(windows, windows[1:]))  # never rises
    assert mean(text, 20_000, 22_000) < 0.92
    assert 0.84 < mean(text, 38_000, 40_000) < 0.9  # floor at batch 8: 0.86


def test_noise_has_rare_spikes(tmp_path):
    """Seed 0 logs a x2.5 spike at step 72,720 (a pure function of seed and step)."""
    ck = run("make_checkpoint.py", "--out", tmp_path / "c.pth", "--step", 72_000, "--loss", 1.0, "--scenario", "plateau")
    assert "step 72000" in ck
    _, tags, _ = train(tmp_path, tmp_path / "c.pth", "--learning-rate", 1e-6, "--train-steps", 1000)
    text = tags["train/text_loss"]
    assert 2.0 < text[72_720] < 3.2
    assert max(v for s, v in text.items() if s != 72_720) < 1.4


def test_sigterm_saves_the_current_step_and_exits_0(incident, tmp_path):
    _, base, _, _, _ = incident
    out = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, str(SIM / "train_gpt_v2.py"), "--resume", str(base), "--speed", "2000",
                             "--save-every", "100000", "--logdir", str(tmp_path / "tb"), "--output-dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        for line in proc.stdout:  # wait until it trains (the torch import takes a while)
            if line.startswith("training steps"):
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "SIGTERM received at" in stdout
    saved = [p.name for p in out.iterdir()]
    assert len(saved) == 1 and f"SIGTERM: saved {saved[0]} and stopped" in stdout
    step = level(out / saved[0])[1]
    assert saved[0] == f"model_step{step}.pth" and 1000 <= step <= 4000  # ~1 s at 2,000 steps/s
