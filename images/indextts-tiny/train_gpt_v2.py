"""Tiny IndexTTS-2 GPT trainer (ours): real training of IndexTTS-2's GPT (`UnifiedVoice`), tiny, on CPU, with
the command line and the behaviours of the community script `trainers/train_gpt_v2.py` (JarodMica/index-tts,
branch training_v2).  Written for runner's tests from what that script does, not from its code.

    python trainers/train_gpt_v2.py --train-manifest data/train.jsonl --val-manifest data/val.jsonl \
        --tokenizer checkpoints/bpe.model [--config checkpoints/config.yaml] [--base-checkpoint checkpoints/gpt.pth]
        [--resume PATH|auto] [--learning-rate 2e-5] [--max-steps 0] [--epochs 10] [--warmup-steps 1000] ...

* the model from --config, its text vocabulary sized to --tokenizer, weights from --base-checkpoint;
* --base-checkpoint alone: step 0, a fresh AdamW and cosine-with-warmup schedule at --learning-rate;
  --resume PATH|auto (OUTPUT_DIR/latest.pth): model, optimizer AND scheduler, epoch, step and the list of recent
  checkpoints from the file, so the LR in effect is the checkpoint's (--learning-rate is ignored);
* loss 0.2 x text + 0.8 x mel (--text-loss-weight, --mel-loss-weight), masked cross-entropy; grad clip 1.0;
* every --log-interval steps: train/text_loss, train/mel_loss, train/mel_top1, train/lr to OUTPUT_DIR/logs and a
  `[Train] epoch=E step=N text_loss=... mel_loss=... mel_top1=... lr=...` line at once; val/* and `[Val]` at
  an epoch's end;
* model_step{N}.pth every 1,000 steps and at the end, latest.pth beside it (torch.save in place); after each
  save, the stored list of saved paths is cut to its last 3 and the others deleted;
* ends at --max-steps or after --epochs; NaN losses: it goes on and exits 0; no signal handler.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

SAVE_EVERY = 1000
KEEP = 3


def build_parser() -> argparse.ArgumentParser:
    """The real script's parser: the same flags, types, defaults and required arguments."""
    p = argparse.ArgumentParser(prog="train_gpt_v2.py",
                                description="Tiny IndexTTS-2 GPT trainer (ours; the command line of trainers/train_gpt_v2.py).")
    p.add_argument("--train-manifest", type=Path, required=True, help="Training manifest JSONL.")
    p.add_argument("--val-manifest", type=Path, required=True, help="Validation manifest JSONL.")
    p.add_argument("--tokenizer", type=Path, required=True, help="SentencePiece model path.")
    p.add_argument("--config", type=Path, default=Path("checkpoints/config.yaml"), help="Model config YAML.")
    p.add_argument("--base-checkpoint", type=Path, default=Path("checkpoints/gpt.pth"), help="Base GPT checkpoint.")
    p.add_argument("--output-dir", type=Path, default=Path("trained_ckpts"), help="Directory for checkpoints/logs.")
    p.add_argument("--batch-size", type=int, default=4, help="Mini-batch size per optimisation step.")
    p.add_argument("--grad-accumulation", type=int, default=1, help="Gradient accumulation steps.")
    p.add_argument("--epochs", type=int, default=10, help="Number of epochs.")
    p.add_argument("--learning-rate", type=float, default=2e-5, help="Initial learning rate.")
    p.add_argument("--weight-decay", type=float, default=0.01, help="Weight decay.")
    p.add_argument("--warmup-steps", type=int, default=1000, help="LR warmup steps.")
    p.add_argument("--max-steps", type=int, default=0, help="Optional max optimiser steps (0 = unlimited).")
    p.add_argument("--log-interval", type=int, default=100, help="Steps between training log entries.")
    p.add_argument("--val-interval", type=int, default=0, help="At an epoch's end, validate if 0 or the step is a multiple.")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers.")
    p.add_argument("--grad-clip", type=float, default=1.0, help="Gradient norm clipping value.")
    p.add_argument("--text-loss-weight", type=float, default=0.2, help="Weight for text CE loss.")
    p.add_argument("--mel-loss-weight", type=float, default=0.8, help="Weight for semantic CE loss.")
    p.add_argument("--amp", action="store_true", help="Enable CUDA AMP (CPU here: no effect).")
    p.add_argument("--resume", type=str, default="", help="Path to checkpoint to resume from, or 'auto'.")
    p.add_argument("--seed", type=int, default=1234, help="Random seed.")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def cosine_with_warmup(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return factor


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    import validate as tinylib  # the model, data and loss code (validate.py is self-contained)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    tinylib.threads()
    from torch.utils.tensorboard import SummaryWriter

    output_dir = args.output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(output_dir / "logs"))

    vocab = tinylib.vocab_size(args.tokenizer) if args.tokenizer.exists() else None
    if vocab is None:
        raise FileNotFoundError(f"tokenizer not found: {args.tokenizer}")
    model = tinylib.build_model(args.config, vocab)
    missing, unexpected = tinylib.load_weights(model, args.base_checkpoint)
    if missing:
        print(f"[Warn] Missing keys during load: {missing}", flush=True)
    if unexpected:
        print(f"[Warn] Unexpected keys during load: {unexpected}", flush=True)
    train_set, val_set = tinylib.Manifest(args.train_manifest), tinylib.Manifest(args.val_manifest)
    print(f"[Info] {len(train_set)} training / {len(val_set)} validation utterances; "
          f"{sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                               num_workers=args.num_workers, collate_fn=tinylib.collate)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch_size, shuffle=False,
                                             num_workers=args.num_workers, collate_fn=tinylib.collate)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    if args.max_steps > 0:
        total = args.max_steps
    else:
        total = args.epochs * max(1, len(train_loader)) // max(1, args.grad_accumulation)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(args.warmup_steps, max(1, total)))

    step, first_epoch, recent, last_saved = 0, 0, [], None
    resume = args.resume
    if resume == "auto":
        resume = str(output_dir / "latest.pth") if (output_dir / "latest.pth").exists() else ""
    if resume:
        ckpt = torch.load(resume, map_location="cpu")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
        first_epoch, step = int(ckpt.get("epoch", 0)), int(ckpt.get("step", 0))
        recent, last_saved = list(ckpt.get("recent_checkpoints", [])), ckpt.get("step")
        print(f"[Info] Resumed from {resume} at epoch {first_epoch}, step {step}.", flush=True)

    def state(epoch: int, kind: str) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": None, "epoch": epoch, "step": step, "recent_checkpoints": recent, "extra": {"type": kind}}

    def save(epoch: int, kind: str) -> None:
        path = output_dir / f"model_step{step}.pth"
        recent.append(str(path))
        torch.save(state(epoch, kind), path)
        torch.save(state(epoch, "latest"), output_dir / "latest.pth")
        while len(recent) > KEEP:
            try:
                os.remove(recent.pop(0))
            except OSError:
                pass

    def done() -> bool:
        return bool(args.max_steps) and step >= args.max_steps

    model.train()
    optimizer.zero_grad(set_to_none=True)
    epoch = first_epoch
    for epoch in range(first_epoch, args.epochs):
        for i, batch in enumerate(train_loader):
            text_loss, mel_loss, top1 = tinylib.losses(model, batch)
            loss = args.text_loss_weight * text_loss + args.mel_loss_weight * mel_loss
            (loss / args.grad_accumulation).backward()
            if (i + 1) % args.grad_accumulation:
                continue
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % args.log_interval == 0:
                lr = scheduler.get_last_lr()[0]
                t, m = float(text_loss), float(mel_loss)
                for tag, value in (("text_loss", t), ("mel_loss", m), ("mel_top1", top1), ("lr", lr)):
                    writer.add_scalar(f"train/{tag}", value, step)
                print(f"[Train] epoch={epoch + 1} step={step} text_loss={t:.4f} mel_loss={m:.4f} "
                      f"mel_top1={top1:.4f} lr={lr:.2e}", flush=True)
            if step % SAVE_EVERY == 0:
                save(epoch, "step")
                last_saved = step
            if done():
                break
        if done():
            break
        if args.val_interval == 0 or step % args.val_interval == 0:
            v = tinylib.evaluate(model, val_loader)
            for tag, value in v.items():
                writer.add_scalar(f"val/{tag}", value, step)
            print(f"[Val] epoch={epoch + 1} step={step} text_loss={v['text_loss']:.4f} "
                  f"mel_loss={v['mel_loss']:.4f} mel_top1={v['mel_top1']:.4f}", flush=True)
    if step > 0 and last_saved != step:
        save(epoch, "step-final")
    writer.close()
    print("Training complete.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
