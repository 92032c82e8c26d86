"""Simulated IndexTTS-2 GPT trainer: a TEST DOUBLE of a real trainer, not IndexTTS.

It has the real script's name, flags, TensorBoard tags, checkpoint names and bad habits
(keep-last-N rotation, no validation loss), but trains nothing: the losses come from the
arithmetic in sim.py, which reproduces the incident (learn, best, slow divergence, NaN) and
the recovery plan's possible outcomes (scenarios recover / plateau / rise / nan), quickly
and deterministically.  See README.md beside it.

    python train_gpt_v2.py --resume CKPT [--learning-rate 2e-5] [--max-steps N | --train-steps N
        | --epochs N] [--batch-size 4] [--warmup 0] [--save-every 1000] [--keep-last 0]
        [--log-every 20] [--logdir runs/tb] [--output-dir runs/ckpt] [--speed 2000] [--seed S]

* logs train/text_loss, train/mel_loss and train/lr to TensorBoard every --log-every steps
  (flushed every second) and never any validation loss;
* saves model_step{N}.pth every --save-every steps (atomically), deletes all but the newest
  --keep-last N of them, and saves a final one at the planned end;
* on SIGTERM (or SIGINT) it finishes the current step, saves a checkpoint at that step and
  exits 0.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sim  # noqa: E402

CKPT_RE = re.compile(r"^model_step(\d+)\.pth$")
PROGRESS_EVERY = 500  # steps between progress lines on stdout


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="train_gpt_v2.py",
                                description="Simulated IndexTTS-2 GPT trainer (a test double; see README.md).")
    p.add_argument("--resume", required=True, help="checkpoint to start from; the run starts at its step")
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--train-steps", type=int, default=None, help="steps to train in this invocation")
    p.add_argument("--max-steps", type=int, default=None, help="absolute last step")
    p.add_argument("--epochs", type=float, default=None, help="epochs to train (an epoch is --epoch-steps steps)")
    p.add_argument("--epoch-steps", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--warmup", type=int, default=0, help="linear LR warmup steps from this invocation's start")
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--keep-last", type=int, default=0, help="delete all but the newest N checkpoints (0 keeps all)")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--logdir", default="runs/tb")
    p.add_argument("--output-dir", default="runs/ckpt")
    p.add_argument("--speed", type=float, default=None,
                   help="steps per second (default: $INDEXTTS_SIM_SPEED, else 2000; 0 = as fast as possible)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: the checkpoint's)")
    args = p.parse_args(argv)
    if args.speed is None:
        args.speed = float(os.environ.get("INDEXTTS_SIM_SPEED") or 2000)
    for name in ("batch_size", "save_every", "log_every", "epoch_steps"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.keep_last < 0 or args.warmup < 0 or args.speed < 0 or args.learning_rate < 0:
        p.error("--keep-last, --warmup, --speed and --learning-rate must not be negative")
    return args


def end_step(start: int, args) -> int | None:
    """The last step of this invocation: the earliest of the ends given (None: run until stopped)."""
    ends = []
    if args.train_steps is not None:
        ends.append(start + args.train_steps)
    if args.max_steps is not None:
        ends.append(args.max_steps)
    if args.epochs is not None:
        ends.append(start + int(round(args.epochs * args.epoch_steps)))
    return min(ends) if ends else None


def list_checkpoints(out_dir: str):
    found = []
    for name in os.listdir(out_dir):
        m = CKPT_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(out_dir, name)))
    return sorted(found)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Installed first, so a stop that comes while torch loads is still a clean one (it is
    # honoured after the first step).
    stop = {"requested": False, "name": "SIGTERM"}

    def on_signal(signum, _frame):
        stop["requested"] = True
        stop["name"] = signal.Signals(signum).name
        print(f"{signal.Signals(signum).name} received at {time.time():.3f}", flush=True)  # benchmarks read this

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    st, params, _ = sim.load(args.resume)
    override = os.environ.get("INDEXTTS_SIM_SCENARIO")
    if override:
        if override not in sim.SCENARIOS:
            print(f"INDEXTTS_SIM_SCENARIO={override!r}: not one of {', '.join(sim.SCENARIOS)}", file=sys.stderr)
            return 2
        params.scenario = override
    if args.seed is not None:
        params.seed = args.seed
    if params.scenario == "nan" and st.nan_countdown < 0 and not st.is_nan:
        st.nan_countdown = params.nan_after
    start = st.step
    end = end_step(start, args)
    print(f"resumed from {args.resume} at step {start}", flush=True)
    if end is not None and end <= start:
        print(f"nothing to train: the end (step {end}) is not after step {start}", flush=True)
        return 0

    os.makedirs(args.output_dir, exist_ok=True)
    os.makedirs(args.logdir, exist_ok=True)
    from torch.utils.tensorboard import SummaryWriter  # after the cheap checks: the import is slow

    def save(step_lr: float) -> str:
        path = os.path.join(args.output_dir, f"model_step{st.step}.pth")
        sim.save(path, st, params, {"lr": step_lr, "initial_lr": args.learning_rate,
                                    "batch_size": args.batch_size, "warmup": args.warmup})
        if args.keep_last > 0:
            for _, old in list_checkpoints(args.output_dir)[: -args.keep_last]:
                try:
                    os.remove(old)
                except FileNotFoundError:
                    pass
        return path

    writer = SummaryWriter(log_dir=args.logdir, flush_secs=1)
    print(f"training steps {start + 1}..{end if end is not None else 'forever'} at lr {args.learning_rate:g}, "
          f"batch {args.batch_size}, warmup {args.warmup}, scenario {params.scenario}, "
          f"diverge_after {params.diverge_after} (simulated; {args.speed:g} steps/s)", flush=True)
    t0 = time.monotonic()
    last_print = start
    lr = 0.0
    text = float("nan")
    saved_at = None
    while end is None or st.step < end:
        i = st.step - start + 1
        lr = args.learning_rate * (min(1.0, i / args.warmup) if args.warmup else 1.0)
        sim.advance(st, params, lr, args.batch_size)
        step = st.step
        last = step == end
        if step % args.log_every == 0 or last:
            text, mel = sim.observe(st, params, args.batch_size)
            writer.add_scalar("train/text_loss", text, step)
            writer.add_scalar("train/mel_loss", mel, step)
            writer.add_scalar("train/lr", lr, step)
            if step - last_print >= PROGRESS_EVERY or last:
                last_print = step
                rate = (step - start) / max(1e-9, time.monotonic() - t0)
                print(f"step {step} text_loss {text:.4f} mel_loss {mel:.4f} lr {lr:.3g} ({rate:.0f} steps/s)", flush=True)
        if step % args.save_every == 0 or last:
            save(lr)
            saved_at = step
        if stop["requested"]:
            if saved_at != step:
                save(lr)
            writer.close()
            print(f"{stop['name']}: saved model_step{step}.pth and stopped", flush=True)
            return 0
        if args.speed > 0:
            ahead = t0 + i / args.speed - time.monotonic()
            if ahead > 0.002:
                time.sleep(ahead)
    writer.close()
    final = "nan" if math.isnan(text) else f"{text:.4f}"
    print(f"done at step {st.step}: text_loss {final}; saved model_step{st.step}.pth", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
