"""Validation for the reference trainer: load a checkpoint, measure loss on held-out batches.

    python3 /app/validate.py --checkpoint PATH [--batches 8]

Prints one JSON line, e.g. {"step": 300, "val_loss": 2.41, "val_mel_loss": 0.31}: runner reads the
last JSON object a validation prints.  Held-out batches use a seed the training never uses.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, "/app")
from train import VOCAB, TinyGPT, batch_for_step  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    state = torch.load(args.checkpoint, map_location="cpu")
    weights = state["model"]
    d_model = weights["tok.weight"].shape[1]
    seq_len = weights["pos"].shape[1]
    layers = len({k.split(".")[2] for k in weights if k.startswith("blocks.layers.")})
    model = TinyGPT(d_model, layers, seq_len)
    model.load_state_dict(weights)
    model.eval()
    text, mel = 0.0, 0.0
    with torch.no_grad():
        for b in range(args.batches):
            inp, target, mel_t = batch_for_step(b, args.batch_size, seq_len, seed=999_983)
            logits, mel_pred = model(inp)
            text += F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1)).item()
            mel += F.mse_loss(mel_pred, mel_t).item()
    print(json.dumps({"step": int(state["step"]), "val_loss": text / args.batches, "val_mel_loss": mel / args.batches}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
