"""The simulated IndexTTS-2 GPT trainer (images/indextts-sim/, a test double) on the host's torch.

Its interface is the real script's (trainers/train_gpt_v2.py of JarodMica/index-tts, branch training_v2):
required arguments, --base-checkpoint vs --resume (the LR restored with the scheduler), the log folder and tags,
the [Train] lines, model_step{N}.pth every 1,000 steps plus latest.pth, rotation by the stored list of paths,
no SIGTERM handler, the ends.  Then the dynamics runner's end-to-end tests rely on (images/indextts-sim/README.md),
at a reduced scale: diverge_after 20,000 steps.
"""
import contextlib
import io
import json
import math
import os
import re
import runpy
import signal
import subprocess
import sys
import time
import traceback
import types

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import REPO

SIM = REPO / "images" / "indextts-sim"
T = 20_000  # diverge_after at test scale
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("INDEXTTS_SIM_")}, "INDEXTTS_SIM_SPEED": "0"}
TRAIN_LINE = re.compile(r"^\[Train\] epoch=(\d+) step=(\d+) text_loss=(\S+) mel_loss=(\S+) mel_top1=(\S+) lr=(\S+)$")


# Run in this process (runpy, as `python SCRIPT` runs it): the simulator's trainer and checkpoint maker import only
# the standard library, torch and tensorboard, which this process already has; a second interpreter for each run
# spent ~2 CPU-seconds importing torch, most of this module's time. validate.py (whose point is what it does not
# import) and the tests of signals and processes still start their own.
IN_PROCESS = ("train_gpt_v2.py", "make_checkpoint.py")


def run(script, *args, env=None, timeout=120, check=True):
    argv, environ = [str(SIM / script), *map(str, args)], {**ENV, **(env or {})}
    if script in IN_PROCESS:
        proc = run_in_process(argv, environ)
    else:
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=environ,
                              cwd=SIM)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def run_in_process(argv, environ):
    """``python ARGV`` in this process: the script's ``__main__`` with that argv, environment and working folder
    (all put back after); its exit status as a process would have it (SystemExit's code; 1 and the traceback on
    stderr for an exception); what it printed."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ), os.getcwd(), list(sys.path), sys.argv
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(SIM)
    sys.argv = list(argv)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(argv[0], run_name="__main__")
            except SystemExit as exc:
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved[0])
        os.chdir(saved[1])
        sys.path[:], sys.argv = saved[2], saved[3]
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def make(path, *args):
    run("make_checkpoint.py", "--out", path, "--diverge-after", T, *args)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """What the real script requires to exist: the manifests and the tokenizer (the simulator reads none)."""
    d = tmp_path_factory.mktemp("data")
    for name in ("train.jsonl", "val.jsonl", "bpe.model"):
        (d / name).write_text("")
    return ["--train-manifest", d / "train.jsonl", "--val-manifest", d / "val.jsonl", "--tokenizer", d / "bpe.model"]


def train(data, dirpath, *args, env=None):
    """Train into dirpath/out; return (out, {tag: {step: value}}, stdout)."""
    out = dirpath / "out"
    stdout = run("train_gpt_v2.py", *data, "--output-dir", out, *args, env=env).stdout
    return out, scalars(out / "logs"), stdout


def scalars(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def mean(series, lo, hi):
    """Mean of the logged values at steps in (lo, hi]."""
    vals = [v for s, v in series.items() if lo < s <= hi]
    assert vals, (lo, hi)
    return sum(vals) / len(vals)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def level(path):
    """The checkpoint's noise-free loss level (L + D) and step."""
    ck = load(path)
    L, D, _ = ck["model"]["gpt.sim_state"].tolist()
    return L + D, ck.get("step", 0)


def ckpts(out):
    return sorted(p.name for p in out.iterdir() if p.name.startswith("model_step"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make(tmp_path_factory.mktemp("base") / "gpt.pth", "--step", 0)


@pytest.fixture(scope="module")
def incident(tmp_path_factory, data, base):
    """The incident at test scale: the base model at 2e-5, batch 4, no warmup, to step 30,000 (NaN by then)."""
    root = tmp_path_factory.mktemp("incident")
    out, tags, stdout = train(data, root, "--base-checkpoint", base, "--learning-rate", 2e-5, "--max-steps", 30_000,
                              "--warmup-steps", 0, "--log-interval", 20)
    return out, tags, stdout


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """A crafted checkpoint in the rising part: step 23,500, smoothed text_loss 2.4, scenario recover."""
    return make(tmp_path_factory.mktemp("diverged") / "model_step23500.pth", "--step", 23_500, "--loss", 2.4)


# ---- the interface -------------------------------------------------------------------------------------
def test_required_arguments_and_unknown_flags_exit_2_as_the_real_parser(data, base, tmp_path):
    proc = run("train_gpt_v2.py", check=False)
    assert proc.returncode == 2
    assert "the following arguments are required: --train-manifest, --val-manifest, --tokenizer" in proc.stderr
    for flag in ("--save-every", "--keep-last", "--logdir", "--train-steps", "--speed", "--log-every", "--epoch-steps"):
        proc = run("train_gpt_v2.py", *data, flag, "1", check=False)
        assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr, flag
    # A missing tokenizer or manifest fails as the real script does (a traceback, exit 1).
    proc = run("train_gpt_v2.py", *data[:5], tmp_path / "nope.model", "--base-checkpoint", base,
               "--output-dir", tmp_path / "o", check=False)
    assert proc.returncode == 1 and "tokenizer not found" in proc.stderr
    # --resume wants a full trainer checkpoint: the weights-only base model has no optimizer.
    proc = run("train_gpt_v2.py", *data, "--base-checkpoint", base, "--resume", base, "--output-dir", tmp_path / "o",
               check=False)
    assert proc.returncode == 1 and "KeyError: 'optimizer'" in proc.stderr


def test_logs_train_tags_every_interval_val_at_epoch_ends_and_saves_every_1000_keeping_3(incident):
    out, tags, stdout = incident
    assert set(tags) == {"train/text_loss", "train/mel_loss", "train/mel_top1", "train/lr",
                         "val/text_loss", "val/mel_loss", "val/mel_top1"}
    assert sorted(tags["train/text_loss"]) == list(range(20, 30_001, 20))
    assert sorted(tags["val/text_loss"]) == [20_000]  # epochs of 20,000 steps (INDEXTTS_SIM_EPOCH_STEPS)
    # Cosine schedule over --max-steps (no warmup here): the logged LR is the scheduler's.
    lr = tags["train/lr"]
    assert lr[20] == pytest.approx(2e-5, rel=1e-3) and lr[15_000] == pytest.approx(1e-5, rel=1e-3) and lr[30_000] < 1e-12
    lines = [TRAIN_LINE.match(line) for line in stdout.splitlines() if line.startswith("[Train]")]
    assert len(lines) == 1500 and all(lines)
    first = lines[0].groups()
    assert first[:2] == ("1", "20") and float(first[2]) == pytest.approx(tags["train/text_loss"][20], rel=1e-3)
    assert lines[-1].group(1) == "2" and lines[-1].group(6) == "0.00e+00"
    assert "[Val] epoch=1 step=20000 text_loss=" in stdout and stdout.rstrip().endswith("Training complete.")
    # model_step{N}.pth every 1,000 steps; the rotation keeps the last 3; latest.pth beside them.
    assert ckpts(out) == ["model_step28000.pth", "model_step29000.pth", "model_step30000.pth"]
    assert (out / "latest.pth").exists() and (out / "logs").is_dir()
    ck = load(out / "model_step30000.pth")
    # The list is saved before the rotation trims it (as the real script does): 4 paths, the oldest deleted next.
    assert ck["recent_checkpoints"] == [str(out / f"model_step{s}.pth") for s in (27_000, 28_000, 29_000, 30_000)]
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "step"} <= set(ck) and ck["step"] == 30_000
    assert load(out / "latest.pth")["step"] == 30_000
    assert os.path.getsize(out / "model_step30000.pth") < 64_000
    text, mel = tags["train/text_loss"], tags["train/mel_loss"]
    assert 0.27 < mean(mel, 0, 20_000) / mean(text, 0, 20_000) < 0.33


@pytest.fixture(scope="module")
def short(tmp_path_factory, data, base):
    """3,000 steps from the base at 2e-5 (default warmup 1,000), logged every 100."""
    root = tmp_path_factory.mktemp("short")
    return train(data, root, "--base-checkpoint", base, "--learning-rate", 2e-5, "--max-steps", 3000)


def test_resume_restores_optimizer_and_scheduler_so_the_asked_lr_is_ignored(data, base, short, tmp_path):
    a_out, a_tags, _ = short
    # Asked for 1e-2 (or 1e-6): the same LR and the same losses as the uninterrupted run.
    for asked in ("1e-2", "1e-6"):
        out, tags, stdout = train(data, tmp_path / asked, "--base-checkpoint", base, "--resume", a_out / "model_step2000.pth",
                                  "--learning-rate", asked, "--max-steps", 3000)
        assert f"Resumed from {a_out / 'model_step2000.pth'} at epoch 0, step 2000." in stdout
        for tag in ("train/text_loss", "train/mel_loss", "train/lr"):
            assert tags[tag] == {s: v for s, v in a_tags[tag].items() if s > 2000}, tag
        assert tags["train/lr"][2100] == pytest.approx(8.44e-6, rel=1e-3)  # 2e-5 on its cosine, whatever was asked


def test_resume_in_a_new_folder_deletes_the_previous_runs_files_by_their_stored_paths(data, base, short, tmp_path):
    a_out, _, _ = short
    assert ckpts(a_out) == ["model_step1000.pth", "model_step2000.pth", "model_step3000.pth"]
    resumed_from = a_out / "model_step2000.pth"
    out, _, _ = train(data, tmp_path, "--base-checkpoint", base, "--resume", resumed_from, "--max-steps", 5000)
    # Its list was [A/1000, A/2000]; saving 3000, 4000, 5000 here pops both, the resumed-from file included.
    assert ckpts(out) == ["model_step3000.pth", "model_step4000.pth", "model_step5000.pth"]
    assert not resumed_from.exists() and not (a_out / "model_step1000.pth").exists()
    assert (a_out / "model_step3000.pth").exists()


def test_resume_auto_takes_latest_pth_in_the_output_dir(data, base, tmp_path):
    out, _, _ = train(data, tmp_path, "--base-checkpoint", base, "--max-steps", 1500, "--log-interval", 500)
    assert ckpts(out) == ["model_step1000.pth", "model_step1500.pth"]
    _, tags, stdout = train(data, tmp_path, "--base-checkpoint", base, "--resume", "auto", "--max-steps", 2500,
                            "--log-interval", 500)
    assert "Resumed from" in stdout and "step 1500." in stdout
    assert max(tags["train/text_loss"]) == 2500 and 2000 in tags["train/text_loss"]


def test_base_checkpoint_starts_at_step_0_with_a_fresh_schedule_at_the_asked_lr(data, short, tmp_path):
    a_out, _, _ = short
    start = a_out / "model_step3000.pth"
    out, tags, stdout = train(data, tmp_path, "--base-checkpoint", start, "--learning-rate", 1e-6, "--max-steps", 500,
                              "--warmup-steps", 100, "--log-interval", 50)
    assert "Resumed" not in stdout
    assert sorted(tags["train/lr"]) == list(range(50, 501, 50))
    assert tags["train/lr"][50] == pytest.approx(5e-7, rel=1e-4) and tags["train/lr"][100] == pytest.approx(1e-6, rel=1e-4)
    assert ckpts(out) == ["model_step500.pth"]  # the final one (no 1,000 boundary)
    assert load(out / "model_step500.pth")["recent_checkpoints"] == [str(out / "model_step500.pth")]
    assert abs(mean(tags["train/text_loss"], 0, 500) / level(start)[0] - 1) < 0.1


def test_the_earlier_of_max_steps_and_epochs_ends_it(data, base, tmp_path):
    env = {"INDEXTTS_SIM_EPOCH_STEPS": "300"}
    out, tags, stdout = train(data, tmp_path / "a", "--base-checkpoint", base, "--epochs", 2, "--log-interval", 100, env=env)
    assert sorted(tags["train/text_loss"]) == [100, 200, 300, 400, 500, 600]
    assert sorted(tags["val/text_loss"]) == [300, 600]
    assert "[Val] epoch=2 step=600" in stdout and ckpts(out) == ["model_step600.pth"]
    out, tags, _ = train(data, tmp_path / "b", "--base-checkpoint", base, "--epochs", 2, "--max-steps", 450,
                         "--log-interval", 100, env=env)
    assert sorted(tags["train/text_loss"]) == [100, 200, 300, 400] and sorted(tags["val/text_loss"]) == [300]
    assert ckpts(out) == ["model_step450.pth"]


def test_validate_is_deterministic_json_and_nan_for_a_nan_state(tmp_path):
    best = make(tmp_path / "model_step20000.pth", "--step", 20_000)
    first = run("validate.py", "--checkpoint", best, "--val-manifest", "v.jsonl", "--tokenizer", "bpe.model").stdout
    assert first == run("validate.py", "--checkpoint", best).stdout
    got = json.loads(first.strip().splitlines()[-1])
    assert got["step"] == 20_000 and set(got) == {"step", "val_text_loss", "val_mel_loss"}
    assert got["val_text_loss"] == pytest.approx(1.04 * level(best)[0]) and 0.95 < got["val_text_loss"] < 1.0
    assert got["val_mel_loss"] == pytest.approx(0.3 * got["val_text_loss"])
    gone = json.loads(run("validate.py", "--checkpoint", make(tmp_path / "n.pth", "--step", 30_000)).stdout.splitlines()[-1])
    assert gone["step"] == 30_000 and math.isnan(gone["val_text_loss"]) and math.isnan(gone["val_mel_loss"])


def test_validate_reads_checkpoints_without_torch_and_agrees_with_torch_load(data, base, tmp_path):
    """validate.py's reader (sim.load_light: torch's zip format, no torch import) gives what torch.load gives, for
    a weights file, a trainer checkpoint and a NaN state; a file it does not know is None (validate.py then
    torch.loads it), and a validation never imports torch when it need not."""
    sys.path.insert(0, str(SIM))
    try:
        import sim
    finally:
        sys.path.remove(str(SIM))
    out, _, _ = train(data, tmp_path / "t", "--base-checkpoint", base, "--max-steps", 1000)
    nan = make(tmp_path / "n.pth", "--step", 30_000)
    for path in (base, out / "model_step1000.pth", nan):
        light, real = sim.load_light(str(path)), torch.load(path, map_location="cpu", weights_only=False)
        assert light is not None, path
        for key in ("gpt.sim_state", "gpt.nan_countdown", "gpt.text_head.weight"):
            mine, theirs = light.get("model", light)[key].array, real.get("model", real)[key].numpy()
            assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs, equal_nan=True), key
        assert light.get("step") == real.get("step") and light.get("sim") == real.get("sim")
        assert [str(x) for x in sim.from_checkpoint(light)] == [str(x) for x in sim.from_checkpoint(real)]
    legacy = tmp_path / "legacy.pth"
    torch.save({"step": 1}, legacy, _use_new_zipfile_serialization=False)
    assert sim.load_light(str(legacy)) is None
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, foreign)  # a pickled module: not a simulator checkpoint
    assert sim.load_light(str(foreign)) is None
    probe = "import sys, runpy; sys.argv = ['validate.py', '--checkpoint', sys.argv[1]]; " \
            "exec(\"try:\\n runpy.run_path('validate.py', run_name='__main__')\\nexcept SystemExit: pass\"); " \
            "print('torch imported' if 'torch' in sys.modules else 'no torch')"
    got = subprocess.run([sys.executable, "-c", probe, str(out / "model_step1000.pth")], capture_output=True, text=True,
                         cwd=SIM, env=ENV, timeout=60)
    assert got.stdout.strip().splitlines()[-1] == "no torch", got.stdout + got.stderr
    assert json.loads(got.stdout.strip().splitlines()[0])["step"] == 1000


# ---- the dynamics ----------------------------------------------------------------------------------------
def test_a_learns_to_the_best_by_diverge_after_then_diverges_and_goes_nan(incident):
    out, tags, stdout = incident
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
    assert "text_loss=nan mel_loss=nan" in stdout  # and it still exits 0 (run() checks)


def test_b_recover_at_a_low_lr(data, diverged, tmp_path):
    out, tags, _ = train(data, tmp_path / "rec", "--base-checkpoint", diverged, "--learning-rate", 1e-6,
                         "--max-steps", 5000, "--log-interval", 20)
    text = tags["train/text_loss"]
    windows = [mean(text, s - 1000, s) for s in range(1000, 5001, 1000)]
    assert windows[0] > 2.0 and 1.0 < windows[-1] < 1.6
    assert all(b < a + 0.03 for a, b in zip(windows, windows[1:]))
    # at 2e-6 for an epoch (20,000 steps) it keeps improving slowly
    _, tags, _ = train(data, tmp_path / "epoch", "--base-checkpoint", out / "model_step5000.pth", "--learning-rate", 2e-6,
                       "--epochs", 1, "--log-interval", 20)
    text = tags["train/text_loss"]
    assert min(text) == 20 and max(text) == 20_000
    assert mean(text, 18_000, 20_000) < mean(text, 0, 2000) - 0.15
    # from the best checkpoint (D = 0) it stays at its level and drifts down, never up
    best = make(tmp_path / "model_step20000.pth", "--step", 20_000)
    out, tags, _ = train(data, tmp_path / "best", "--base-checkpoint", best, "--learning-rate", 1e-6, "--max-steps", 5000,
                         "--log-interval", 20)
    text = tags["train/text_loss"]
    assert all(0.9 < mean(text, s - 1000, s) < 0.98 for s in range(1000, 5001, 1000))
    levels = [level(out / f"model_step{s}.pth")[0] for s in (3000, 4000, 5000)]
    assert levels == sorted(levels, reverse=True) and levels[-1] <= level(best)[0]


def test_c_plateau_rise_and_nan_scenarios(data, diverged, tmp_path):
    runs = {}
    for scenario in ("plateau", "rise", "nan"):  # the env override; the checkpoints then carry it
        out, tags, _ = train(data, tmp_path / scenario, "--base-checkpoint", diverged, "--learning-rate", 1e-6,
                             "--max-steps", 5000, "--log-interval", 20, env={"INDEXTTS_SIM_SCENARIO": scenario})
        runs[scenario] = tags["train/text_loss"]
        assert load(out / "model_step5000.pth")["sim"]["scenario"] == scenario
    plateau = [mean(runs["plateau"], s - 500, s) for s in range(500, 5001, 500)]
    assert all(2.4 * 0.95 < w < 2.4 * 1.05 for w in plateau)
    rise = [mean(runs["rise"], s - 1000, s) for s in range(1000, 5001, 1000)]
    assert all(b > a for a, b in zip(rise, rise[1:])) and rise[-1] > 1.2 * rise[0]
    nan = runs["nan"]
    assert all(math.isfinite(v) for s, v in nan.items() if s < 1000)
    assert all(math.isnan(v) for s, v in nan.items() if s >= 1000)


def test_d_restart_from_base_at_5e6_batch8_warmup_gets_below_0_9_and_never_diverges(data, base, tmp_path):
    _, tags, _ = train(data, tmp_path, "--base-checkpoint", base, "--learning-rate", 5e-6, "--batch-size", 8,
                       "--warmup-steps", 10_000, "--epochs", 2, "--log-interval", 20)
    text, lr = tags["train/text_loss"], tags["train/lr"]
    assert lr[5000] == pytest.approx(2.5e-6, rel=1e-4) and lr[10_000] == pytest.approx(5e-6, rel=1e-4) and lr[40_000] < 1e-12
    windows = [mean(text, s - 2000, s) for s in range(2000, 40_001, 2000)]
    assert all(b < a + 0.02 for a, b in zip(windows, windows[1:]))  # never rises
    assert mean(text, 20_000, 22_000) < 0.92
    assert 0.84 < mean(text, 38_000, 40_000) < 0.9  # floor at batch 8: 0.86


def test_noise_has_rare_spikes(data, base, tmp_path):
    """Seed 0 logs a x2.5 spike at step 72,720 (a pure function of seed and step): --resume keeps the step."""
    make(tmp_path / "c.pth", "--step", 72_000, "--loss", 1.0, "--scenario", "plateau", "--learning-rate", 1e-6)
    _, tags, _ = train(data, tmp_path, "--base-checkpoint", base, "--resume", tmp_path / "c.pth", "--max-steps", 73_000,
                       "--log-interval", 20)
    text = tags["train/text_loss"]
    assert min(text) == 72_020
    assert 2.0 < text[72_720] < 3.2
    assert max(v for s, v in text.items() if s != 72_720) < 1.4


def test_no_sigterm_handler_the_default_action_kills_it_and_nothing_is_saved(data, base, tmp_path):
    """Outside a container SIGTERM's default action ends it at once (as PID 1 in a container it is ignored until
    SIGKILL): no checkpoint at the stop, no "Training complete."; the [Train] lines came out at once."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(SIM / "train_gpt_v2.py"), *map(str, data), "--base-checkpoint", str(base),
                             "--output-dir", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, "INDEXTTS_SIM_SPEED": "2000"}, cwd=SIM)
    try:
        for line in proc.stdout:  # the first [Train] line arrives while it trains (printed at once)
            if line.startswith("[Train]"):
                break
        time.sleep(1.3)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGTERM
    assert "Training complete." not in stdout
    assert all(int(n[10:-4]) % 1000 == 0 for n in ckpts(out)) and ckpts(out)
