"""Simulated IndexTTS-2 GPT trainer: a TEST DOUBLE of the community `trainers/train_gpt_v2.py`
(JarodMica/index-tts, branch training_v2), not IndexTTS.  It trains nothing.

Its command line is the real script's, flag for flag (the same names, types, defaults and required
arguments; anything else is rejected with exit 2), and it behaves as the real script does where
runner can see it; only the losses come from the arithmetic in sim.py.  See README.md beside it.

    python train_gpt_v2.py --train-manifest M --val-manifest M --tokenizer bpe.model
        [--base-checkpoint checkpoints/gpt.pth] [--resume PATH|auto] [--learning-rate 2e-5]
        [--max-steps 0] [--epochs 10] [--warmup-steps 1000] [--log-interval 100] [--output-dir trained_ckpts] ...

* the manifests, the tokenizer and the base checkpoint must exist (--config is not read);
* --base-checkpoint: weights only, from step 0, a fresh optimizer and LR schedule at --learning-rate;
* --resume PATH (a full trainer checkpoint) or `auto` (OUTPUT_DIR/latest.pth if there): the step,
  epoch, optimizer AND scheduler come from the checkpoint, so the LR in effect is the checkpoint's
  own (--learning-rate is ignored), and the list of its last checkpoints too;
* LR: cosine schedule with --warmup-steps of linear warmup over --max-steps (or --epochs x the
  epoch's steps) steps; the simulated dynamics see the schedule's peak (warmup included, the
  cosine decay not: the incident's dynamics are calibrated on the peak LR);
* every --log-interval steps: TensorBoard scalars train/text_loss, train/mel_loss, train/mel_top1,
  train/lr in OUTPUT_DIR/logs (SummaryWriter's defaults: written out every 120 s, or when its
  buffer fills) and `[Train] epoch=E step=N text_loss=... mel_loss=... mel_top1=... lr=...` on stdout
  at once; val/text_loss, val/mel_loss, val/mel_top1 and a `[Val]` line at the end of each epoch only;
* model_step{N}.pth every 1,000 steps (hard-coded) and at the end, latest.pth rewritten at each
  save, both written in place (not atomically); after each save all but the last 3 of the paths
  listed in the checkpoint (recent_checkpoints, absolute paths, carried over by --resume) are deleted;
* ends at --max-steps (if > 0) or after --epochs epochs, whichever comes first; NaN losses are
  logged as nan and it still exits 0; no signal handler (as PID 1 in a container it ignores
  SIGTERM, so a stop waits for the grace period and SIGKILL).

Simulator knobs (environment, never flags): INDEXTTS_SIM_SPEED (steps/s, default 2000, 0 = as fast
as possible), INDEXTTS_SIM_EPOCH_STEPS (optimiser steps per epoch, default 20000),
INDEXTTS_SIM_SCENARIO (overrides the checkpoint's), INDEXTTS_SIM_SEED (noise seed, overrides the
checkpoint's), INDEXTTS_SIM_FLUSH_SECS (TensorBoard flush interval, default 120 as the real writer).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import sim  # noqa: E402

SAVE_EVERY = 1000  # hard-coded in the real script
KEEP = 3           # its rotation keeps the last 3 paths of recent_checkpoints


def build_parser() -> argparse.ArgumentParser:
    """The real script's parser: the same flags, types, defaults and required arguments."""
    p = argparse.ArgumentParser(prog="train_gpt_v2.py",
                                description="Simulated IndexTTS-2 GPT trainer (a test double of trainers/train_gpt_v2.py).")
    p.add_argument("--train-manifest", type=Path, required=True, help="Training manifest JSONL.")
    p.add_argument("--val-manifest", type=Path, required=True, help="Validation manifest JSONL.")
    p.add_argument("--tokenizer", type=Path, required=True, help="SentencePiece model path.")
    p.add_argument("--config", type=Path, default=Path("checkpoints/config.yaml"), help="Model config YAML (not read by the simulator).")
    p.add_argument("--base-checkpoint", type=Path, default=Path("checkpoints/gpt.pth"), help="Base GPT checkpoint.")
    p.add_argument("--output-dir", type=Path, default=Path("trained_ckpts"), help="Directory for checkpoints/logs.")
    p.add_argument("--batch-size", type=int, default=4, help="Mini-batch size per optimisation step.")
    p.add_argument("--grad-accumulation", type=int, default=1, help="Gradient accumulation steps.")
    p.add_argument("--epochs", type=int, default=10, help="Number of epochs.")
    p.add_argument("--learning-rate", type=float, default=2e-5, help="Initial learning rate.")
    p.add_argument("--weight-decay", type=float, default=0.01, help="Weight decay (no effect in the simulator).")
    p.add_argument("--warmup-steps", type=int, default=1000, help="LR warmup steps.")
    p.add_argument("--max-steps", type=int, default=0, help="Optional max optimiser steps (0 = unlimited).")
    p.add_argument("--log-interval", type=int, default=100, help="Steps between training log entries.")
    p.add_argument("--val-interval", type=int, default=0, help="At an epoch's end, validate if 0 or the step is a multiple.")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (no effect).")
    p.add_argument("--grad-clip", type=float, default=1.0, help="Gradient norm clipping value (no effect).")
    p.add_argument("--text-loss-weight", type=float, default=0.2, help="Weight for text CE loss (no effect).")
    p.add_argument("--mel-loss-weight", type=float, default=0.8, help="Weight for semantic CE loss (no effect).")
    p.add_argument("--amp", action="store_true", help="Enable CUDA AMP (no effect).")
    p.add_argument("--resume", type=str, default="", help="Path to checkpoint to resume from, or 'auto'.")
    p.add_argument("--seed", type=int, default=1234, help="Random seed (the simulator's noise seed is INDEXTTS_SIM_SEED).")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    speed = _env_float("INDEXTTS_SIM_SPEED", 2000.0)
    epoch_steps = int(_env_float("INDEXTTS_SIM_EPOCH_STEPS", 20000))
    flush_secs = _env_float("INDEXTTS_SIM_FLUSH_SECS", 120.0)
    scenario = os.environ.get("INDEXTTS_SIM_SCENARIO") or None
    seed_env = os.environ.get("INDEXTTS_SIM_SEED") or None
    if scenario and scenario not in sim.SCENARIOS:
        print(f"INDEXTTS_SIM_SCENARIO={scenario!r}: not one of {', '.join(sim.SCENARIOS)}", file=sys.stderr)
        return 2

    output_dir = args.output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    from torch.utils.tensorboard import SummaryWriter  # the real script opens its writer first, too

    writer = SummaryWriter(log_dir=str(output_dir / "logs"), flush_secs=flush_secs)

    _require(args.tokenizer, "tokenizer")
    # Weights (the simulated state) from the base checkpoint, always: --resume then replaces them.
    st, params, _ = sim.load(str(args.base_checkpoint))
    st.step = 0
    for m in (args.train_manifest, args.val_manifest):
        _require(m, "Manifest")
    print(f"[Info] Loaded base checkpoint {args.base_checkpoint} (simulated).", flush=True)

    batches_per_epoch = max(1, epoch_steps)
    total_steps = args.max_steps if args.max_steps > 0 else args.epochs * batches_per_epoch // max(1, args.grad_accumulation)
    total_steps = max(total_steps, 1)
    base_lr = args.learning_rate

    global_step = 0
    start_epoch = 0
    recent: list[str] = []
    last_saved: int | None = None
    resume_path = None
    if args.resume:
        if args.resume == "auto":
            candidate = output_dir / "latest.pth"
            if candidate.exists():
                resume_path = str(candidate)
        else:
            resume_path = args.resume
    if resume_path:
        ckpt = sim.load_raw(resume_path)
        st, params = sim.from_checkpoint({"model": ckpt["model"], "sim": ckpt.get("sim", {}), "step": 0})
        optimizer = ckpt["optimizer"]  # a weights-only file (gpt.pth) has none: KeyError, as in the real script
        groups = optimizer.get("param_groups") or [{}]
        base_lr = float(groups[0].get("initial_lr", groups[0].get("lr", base_lr)))
        if ckpt.get("scheduler"):
            base_lr = float(ckpt["scheduler"]["base_lrs"][0])
        start_epoch = int(ckpt.get("epoch", 0))
        global_step = int(ckpt.get("step", 0))
        recent = list(ckpt.get("recent_checkpoints", []))
        last_saved = ckpt.get("step")
        print(f"[Info] Resumed from {resume_path} at epoch {start_epoch}, step {global_step}.", flush=True)
    st.step = global_step
    if scenario:
        params.scenario = scenario
    if seed_env:
        params.seed = int(seed_env)
    if params.scenario == "nan" and st.nan_countdown < 0 and not st.is_nan:
        st.nan_countdown = params.nan_after

    def lr_at(step: int) -> float:
        return base_lr * sim.lr_lambda(step, args.warmup_steps, total_steps)

    def save(epoch: int, kind: str) -> None:
        path = output_dir / f"model_step{global_step}.pth"
        recent.append(str(path))
        common = dict(base_lr=base_lr, warmup=args.warmup_steps, total=total_steps, epoch=epoch, recent=recent)
        sim.write(str(path), sim.trainer_checkpoint(st, params, kind=kind, **common))
        sim.write(str(output_dir / "latest.pth"), sim.trainer_checkpoint(st, params, kind="latest", **common))
        while len(recent) > KEEP:
            obsolete = recent.pop(0)
            try:
                os.remove(obsolete)
            except OSError:
                pass

    t0 = time.monotonic()
    done = 0
    epoch = start_epoch
    for epoch in range(start_epoch, args.epochs):
        for batch_idx in range(batches_per_epoch):
            if (batch_idx + 1) % args.grad_accumulation != 0:
                continue
            # The step trains at the scheduler's current LR (warmup included; see the module docstring).
            peak = base_lr * (min(1.0, global_step / args.warmup_steps) if args.warmup_steps > 0 else 1.0)
            sim.advance(st, params, peak, args.batch_size)
            global_step += 1
            st.step = global_step
            done += 1
            if global_step % args.log_interval == 0:
                text, mel = sim.observe(st, params, args.batch_size)
                top1 = math.exp(-2.0 * mel) if not math.isnan(mel) else float("nan")
                lr = lr_at(global_step)
                writer.add_scalar("train/text_loss", text, global_step)
                writer.add_scalar("train/mel_loss", mel, global_step)
                writer.add_scalar("train/mel_top1", top1, global_step)
                writer.add_scalar("train/lr", lr, global_step)
                print(f"[Train] epoch={epoch + 1} step={global_step} text_loss={text:.4f} mel_loss={mel:.4f} "
                      f"mel_top1={top1:.4f} lr={lr:.2e}", flush=True)
            if global_step % SAVE_EVERY == 0:
                save(epoch, "step")
                last_saved = global_step
            if args.max_steps and global_step >= args.max_steps:
                break
            if speed > 0:
                ahead = t0 + done / speed - time.monotonic()
                if ahead > 0.002:
                    time.sleep(ahead)
        if args.max_steps and global_step >= args.max_steps:
            break
        if args.val_interval == 0 or global_step % args.val_interval == 0:
            vt, vm = sim.validation(st)
            vtop = math.exp(-2.0 * vm) if not math.isnan(vm) else float("nan")
            writer.add_scalar("val/text_loss", vt, global_step)
            writer.add_scalar("val/mel_loss", vm, global_step)
            writer.add_scalar("val/mel_top1", vtop, global_step)
            print(f"[Val] epoch={epoch + 1} step={global_step} text_loss={vt:.4f} mel_loss={vm:.4f} "
                  f"mel_top1={vtop:.4f}", flush=True)

    if global_step > 0 and last_saved != global_step:
        save(epoch, "step-final")
    writer.close()
    print("Training complete.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
