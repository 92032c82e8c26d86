"""The tiny model's pretrained base, made at image build time (ours): random weights (seed 0), trained by
train_gpt_v2.py for --steps steps at --learning-rate, saved weights-only as checkpoints/gpt.pth ({"model": ...},
like the released gpt.pth: for --base-checkpoint, refused by --resume).

    python make_base.py --steps 400 --learning-rate 1e-3 --out checkpoints/gpt.pth
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="checkpoints/gpt.pth")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--learning-rate", default="1e-3")
    p.add_argument("--batch-size", default="8")
    p.add_argument("--data", default="data")
    p.add_argument("--tokenizer", default="checkpoints/bpe.model")
    p.add_argument("--config", default="checkpoints/config.yaml")
    args = p.parse_args()
    import torch

    import train_gpt_v2
    import validate

    torch.manual_seed(0)
    model = validate.build_model(args.config, validate.vocab_size(args.tokenizer))
    work = tempfile.mkdtemp()
    try:
        init = os.path.join(work, "init.pth")
        torch.save({"model": model.state_dict()}, init)
        rc = train_gpt_v2.main(["--train-manifest", f"{args.data}/train.jsonl", "--val-manifest", f"{args.data}/val.jsonl",
                                "--tokenizer", args.tokenizer, "--config", args.config, "--base-checkpoint", init,
                                "--learning-rate", args.learning_rate, "--batch-size", args.batch_size,
                                "--warmup-steps", "50", "--max-steps", str(args.steps), "--log-interval", "50",
                                "--output-dir", os.path.join(work, "out"), "--seed", "0"])
        if rc:
            return rc
        final = torch.load(os.path.join(work, "out", f"model_step{args.steps}.pth"), map_location="cpu")
        torch.save({"model": final["model"]}, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes): {args.steps} steps at {args.learning_rate}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
