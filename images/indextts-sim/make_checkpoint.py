"""Write a starting checkpoint for the simulated IndexTTS-2 GPT trainer (a test double).

    python make_checkpoint.py --out base/gpt.pth --step 0                       # the base model (weights only)
    python make_checkpoint.py --out ckpt/model_step351000.pth --step 351000     # the incident run there
    python make_checkpoint.py --out c.pth --step 351000 --loss 2.4 --scenario plateau

At --step 0 it writes a weights-only file like the released gpt.pth ({"model": ...}: usable with
--base-checkpoint, refused by --resume); past 0 (or with --full) a full trainer checkpoint as the real
script saves one (model, optimizer, scheduler at --learning-rate, epoch, step, recent_checkpoints).

Without --loss the state is the incident run's at --step (base model at LR 2e-5, batch 4: it
learns to 0.94 by --diverge-after, then diverges, NaN past 1.466 x --diverge-after).  With
--loss X the smoothed text_loss is X (past --diverge-after, a loss above the best is read as
divergence damage, partly permanent).  --scenario, --diverge-after, --noise and --seed are the
run's simulation parameters: every checkpoint trained from this one inherits them.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import sim  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="make_checkpoint.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--step", type=int, default=0)
    p.add_argument("--scenario", choices=sim.SCENARIOS, default="recover")
    p.add_argument("--loss", type=float, default=None, help="smoothed text_loss of the checkpoint (default: the incident run's)")
    p.add_argument("--diverge-after", type=int, default=sim.DEFAULT_DIVERGE_AFTER)
    p.add_argument("--noise", type=float, default=sim.DEFAULT_NOISE, help="sd of the multiplicative noise at batch 4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--learning-rate", type=float, default=2e-5,
                   help="the LR of a full checkpoint's optimizer and scheduler (what --resume restores)")
    p.add_argument("--warmup-steps", type=int, default=1000, help="the schedule's warmup stored in a full checkpoint")
    p.add_argument("--total-steps", type=int, default=500000, help="the schedule's length stored in a full checkpoint")
    p.add_argument("--full", action="store_true", help="a full trainer checkpoint even at step 0")
    p.add_argument("--pad-mb", type=float, default=0.0,
                   help="add this many MB of zeros to the file (for size preconditions such as min_size: 100m)")
    args = p.parse_args(argv)
    if args.step < 0 or args.diverge_after <= 0 or args.noise < 0:
        p.error("--step and --noise must not be negative, --diverge-after must be positive")
    params = sim.Params(scenario=args.scenario, diverge_after=args.diverge_after, noise=args.noise, seed=args.seed)
    if args.loss is None:
        st = sim.trajectory(args.step, args.diverge_after)
    else:
        st = sim.crafted(args.step, args.loss, args.diverge_after)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    pad = int(args.pad_mb * 1e6)
    if args.step > 0 or args.full:
        ckpt = sim.trainer_checkpoint(st, params, base_lr=args.learning_rate, warmup=args.warmup_steps,
                                      total=args.total_steps, epoch=0, recent=[os.path.abspath(args.out)], pad_bytes=pad)
    else:
        ckpt = sim.weights_checkpoint(st, params, pad_bytes=pad)
    sim.write(args.out, ckpt)
    print(f"wrote {args.out}: step {st.step}, text_loss {st.level:.4f} (L {st.L:.4f} + D {st.D:.4f}), "
          f"scenario {params.scenario}, diverge_after {params.diverge_after}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
