"""The shipped specs/indextts/ chain against the REAL trainer's command line.

`REAL_FLAGS` is the argument parser of the community IndexTTS-2 GPT trainer, `trainers/train_gpt_v2.py` of
JarodMica/index-tts, branch training_v2 (its parse_args, read from the public repository and written down here
as data: flag, type, default, required — no code of it is copied).  Every command line runner plans for the
chain's phases, from each spec's default inputs, must parse with it, and use no flag it lacks.  Our doubles
(images/indextts-sim and images/indextts-tiny) must have exactly that parser too.
"""
import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

from runner.plan import build_plan, merge_inputs, resolve
from runner.spec import load_spec
from tests.conftest import REPO

SPECS = REPO / "specs" / "indextts"
CHAIN = ["finetune.yaml", "phase1.yaml", "phase2.yaml", "restart_from_base.yaml"]

# (flag, type, default, required, action) of the real parser, in its order.  store_true flags have type None.
REAL_FLAGS = [
    ("--train-manifest", Path, None, True, "store"),
    ("--val-manifest", Path, None, True, "store"),
    ("--tokenizer", Path, None, True, "store"),
    ("--config", Path, Path("checkpoints/config.yaml"), False, "store"),
    ("--base-checkpoint", Path, Path("checkpoints/gpt.pth"), False, "store"),
    ("--output-dir", Path, Path("trained_ckpts"), False, "store"),
    ("--batch-size", int, 4, False, "store"),
    ("--grad-accumulation", int, 1, False, "store"),
    ("--epochs", int, 10, False, "store"),
    ("--learning-rate", float, 2e-5, False, "store"),
    ("--weight-decay", float, 0.01, False, "store"),
    ("--warmup-steps", int, 1000, False, "store"),
    ("--max-steps", int, 0, False, "store"),
    ("--log-interval", int, 100, False, "store"),
    ("--val-interval", int, 0, False, "store"),
    ("--num-workers", int, 0, False, "store"),
    ("--grad-clip", float, 1.0, False, "store"),
    ("--text-loss-weight", float, 0.2, False, "store"),
    ("--mel-loss-weight", float, 0.8, False, "store"),
    ("--amp", None, False, False, "store_true"),
    ("--resume", str, "", False, "store"),
    ("--seed", int, 1234, False, "store"),
]
# A later revision of the same script (seen in the public repository after training_v2's head) repeats the manifest
# flags (action="append") and adds these; the chain's command lines must parse there too.
LATER_EXTRA = [("--gradient-checkpointing", None, False, False, "store_true"),
               ("--optim-8bit", None, False, False, "store_true"),
               ("--use-duration-control", None, False, False, "store_true"),
               ("--duration-dropout", float, 0.3, False, "store")]

# Flags the chain's specs once passed, which the real script does not have (it exits 2 on them).
# (--warmup is not among them: argparse's prefix matching, on in the real parser, reads it as --warmup-steps.)
NOT_REAL = ["--save-every", "--keep-last", "--logdir", "--train-steps", "--speed", "--log-every", "--epoch-steps"]


class Rejected(Exception):
    pass


class RealParser(argparse.ArgumentParser):
    def error(self, message):  # no SystemExit: the message is the assertion's
        raise Rejected(message)


def real_parser() -> RealParser:
    p = RealParser(prog="train_gpt_v2.py")
    for flag, type_, default, required, action in REAL_FLAGS:
        if action == "store_true":
            p.add_argument(flag, action="store_true")
        else:
            p.add_argument(flag, type=type_, default=default, required=required)
    return p


def later_parser() -> RealParser:
    p = RealParser(prog="train_gpt_v2.py")
    for flag, type_, default, required, action in REAL_FLAGS + LATER_EXTRA:
        if action == "store_true":
            p.add_argument(flag, action="store_true")
        elif flag in ("--train-manifest", "--val-manifest"):
            p.add_argument(flag, action="append", type=str, required=True)
        else:
            p.add_argument(flag, type=type_, default=default, required=required)
    return p


def planned(spec: str, tmp_path) -> tuple:
    """The (trainer argv, validation argv) runner plans for `spec` from its default inputs."""
    loaded = load_spec(SPECS / spec)
    given = {"start_from": "/runs/vault/run1/indextts-phase1-validate-lr/model_step4000.pth"} if spec == "phase2.yaml" else {}
    plan = build_plan(loaded, given, "run1", tmp_path)
    phase = resolve(loaded, merge_inputs(loaded, given), "run1", tmp_path)
    return list(plan.command), list(phase.checkpoints.validate_.command)


@pytest.mark.parametrize("spec", CHAIN)
def test_every_planned_command_line_parses_with_the_real_trainers_flags(spec, tmp_path):
    argv, _ = planned(spec, tmp_path)
    assert argv[:2] == ["python", "trainers/train_gpt_v2.py"], argv
    known = {f for f, *_ in REAL_FLAGS}
    unknown = [a for a in argv[2:] if a.startswith("--") and a not in known]
    assert not unknown, f"{spec}: flags the real trainer lacks: {unknown}"
    args = real_parser().parse_args(argv[2:])  # raises Rejected (what would be exit 2) otherwise
    later = later_parser().parse_args(argv[2:])
    assert later.train_manifest == [str(args.train_manifest)] and later.learning_rate == args.learning_rate
    # Base and lower-LR phases start through --base-checkpoint (weights only, a fresh optimizer and schedule
    # at --learning-rate); --resume would restore the checkpoint's scheduler and ignore the LR.  A long phase
    # passes `--resume ""` (the real parser's own default: no resume) unless a crash retry sets resume_from.
    assert args.resume == ""
    assert "--resume" not in argv or argv[argv.index("--resume") + 1] == ""
    assert "--base-checkpoint" in argv and "--learning-rate" in argv
    assert str(args.output_dir).endswith("/out") and "--output-dir" in argv


def test_the_chain_lowers_the_lr_through_fresh_schedules(tmp_path):
    lrs = {spec: real_parser().parse_args(planned(spec, tmp_path)[0][2:]).learning_rate for spec in CHAIN}
    assert lrs == {"finetune.yaml": 2e-5, "phase1.yaml": 1e-6, "phase2.yaml": 2e-6, "restart_from_base.yaml": 5e-6}
    p1 = real_parser().parse_args(planned("phase1.yaml", tmp_path)[0][2:])
    assert p1.max_steps == 5000  # the phase's planned end: steps count from 0 on a --base-checkpoint start
    p2 = real_parser().parse_args(planned("phase2.yaml", tmp_path)[0][2:])
    assert p2.epochs == 1 and p2.max_steps == 0 and str(p2.base_checkpoint).endswith("model_step4000.pth")


def test_the_old_flags_are_rejected_by_the_real_parser():
    base = ["--train-manifest", "t.jsonl", "--val-manifest", "v.jsonl", "--tokenizer", "bpe.model"]
    real_parser().parse_args(base)
    with pytest.raises(Rejected, match="required: --train-manifest, --val-manifest, --tokenizer"):
        real_parser().parse_args([])
    for flag in NOT_REAL:
        with pytest.raises(Rejected, match="unrecognized arguments"):
            real_parser().parse_args([*base, flag, "1"])
    assert real_parser().parse_args([*base, "--warmup", "7"]).warmup_steps == 7  # an abbreviation; the specs spell flags out


@pytest.mark.parametrize("spec", CHAIN)
def test_validation_runs_our_script_with_the_trainers_inputs(spec, tmp_path):
    argv, validate = planned(spec, tmp_path)
    assert validate[:2] == ["python", "/opt/runner/validate.py"]
    real = real_parser().parse_args(argv[2:])
    v = dict(zip(validate[2::2], validate[3::2]))
    assert v["--checkpoint"] == "${{ checkpoint.path }}"
    assert (v["--val-manifest"], v["--tokenizer"], v["--config"]) == (str(real.val_manifest), str(real.tokenizer), str(real.config))


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    return mod


@pytest.mark.parametrize("image", ["indextts-sim", "indextts-tiny"])
def test_our_trainers_have_exactly_the_real_parser(image):
    path = REPO / "images" / image / "train_gpt_v2.py"
    parser = load_module(path, f"_{image.replace('-', '_')}_trainer").build_parser()
    ours = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    got = [(a.option_strings[0], a.type, a.default, a.required,
            "store_true" if isinstance(a, argparse._StoreTrueAction) else "store") for a in ours]
    assert got == REAL_FLAGS


@pytest.mark.parametrize("spec", ["finetune.yaml", "phase2.yaml", "restart_from_base.yaml"])
def test_a_crash_retry_resumes_the_newest_checkpoint_through_the_real_flag_and_turns_expect_off(spec, tmp_path):
    """The long phases' `retry:` passes the failed attempt's newest vaulted checkpoint as resume_from: the real
    parser reads it as --resume (step, optimizer and LR schedule restored: the run goes on where it was), so
    the phase's expect: checks (LR asked, steps from 0), right for a fresh start, are off for that attempt."""
    ckpt = "/runs/vault/RUN/indextts-finetune/model_step81000.pth"
    loaded = load_spec(SPECS / spec)
    assert loaded.phase.retry is not None and "crashed" in loaded.phase.retry.on
    assert loaded.phase.retry.with_ == {"resume_from": "${{ phase.last_checkpoint }}"}
    start = {"start_from": "/runs/vault/run1/indextts-phase1-validate-lr/model_step4000.pth"} if spec == "phase2.yaml" else {}
    given = {**start, "resume_from": ckpt}
    args = real_parser().parse_args(list(build_plan(loaded, given, "run1", tmp_path).command)[2:])
    assert args.resume == ckpt
    assert resolve(loaded, merge_inputs(loaded, given), "run1", tmp_path).expect is None
    assert resolve(loaded, merge_inputs(loaded, start), "run1", tmp_path).expect is not None
