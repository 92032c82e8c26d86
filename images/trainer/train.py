"""Reference trainer for runner: a tiny GPT on synthetic tokens.

Read it, copy it, break it.  It behaves like the fine-tuning scripts runner is
meant to supervise, including their bad habits:

* logs ``train/text_loss``, ``train/mel_loss`` and ``train/lr`` to TensorBoard
  through ``torch.utils.tensorboard`` (flushed every second so a watcher sees
  them live);
* saves ``model_step{N}.pth`` (step, model, optimizer, RNG state) every
  ``--save-every`` steps and, with ``--keep-last N``, deletes older ones just
  as keep-last-N rotation does in real scripts;
* resumes exactly from ``--resume CKPT``: batches are a pure function of the
  step, and RNG state is restored, so a resumed run logs the same values;
* ``--diverge-after STEP`` multiplies the learning rate so the loss blows up,
  to exercise runner's guards;
* on SIGTERM (runner's stop, a guard) it finishes the current step, saves a
  checkpoint and exits 0 — the behaviour the stop grace period is for.  (As
  PID 1 in a container, a process without a handler would ignore SIGTERM
  and be SIGKILLed when the grace period ends.)

Runs on torch 1.13 and 2.x, on CPU or one CUDA device.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter

VOCAB = 64
CKPT_RE = re.compile(r"^model_step(\d+)\.pth$")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--resume", default=None, help="checkpoint to resume from")
    p.add_argument("--warmup", type=int, default=50, help="linear warmup steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--keep-last", type=int, default=0, help="delete all but the newest N checkpoints (0 keeps all)")
    p.add_argument("--logdir", default="runs/tb")
    p.add_argument("--output-dir", default="runs/ckpt")
    p.add_argument("--diverge-after", type=int, default=None, help="from this step on, multiply the LR so training diverges")
    p.add_argument("--diverge-factor", type=float, default=300.0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-delay", type=float, default=0.0, help="sleep per step (seconds), to pace demos")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


class TinyGPT(nn.Module):
    """A causal transformer with a token head (text) and a regression head (mel)."""

    def __init__(self, d_model: int, layers: int, seq_len: int):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Parameter(torch.zeros(1, seq_len, d_model))
        block = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=4 * d_model, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(block, num_layers=layers)
        self.text_head = nn.Linear(d_model, VOCAB)
        self.mel_head = nn.Linear(d_model, 1)
        self.register_buffer("mask", torch.triu(torch.full((seq_len, seq_len), float("-inf")), diagonal=1))

    def forward(self, tokens):
        h = self.tok(tokens) + self.pos[:, : tokens.shape[1]]
        h = self.blocks(h, mask=self.mask[: tokens.shape[1], : tokens.shape[1]])
        return self.text_head(h), self.mel_head(h).squeeze(-1)


def batch_for_step(step: int, batch_size: int, seq_len: int, seed: int):
    """Synthetic data that a model can learn: each sequence follows x[t+1] = (a*x[t] + b) % VOCAB
    with a little noise.  A pure function of the step, so resuming replays the same batches."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    a = torch.randint(1, 8, (batch_size, 1), generator=g)
    b = torch.randint(0, VOCAB, (batch_size, 1), generator=g)
    x = torch.empty(batch_size, seq_len + 1, dtype=torch.long)
    x[:, :1] = torch.randint(0, VOCAB, (batch_size, 1), generator=g)
    for t in range(seq_len):
        x[:, t + 1 : t + 2] = (a * x[:, t : t + 1] + b) % VOCAB
    noise = torch.rand(batch_size, seq_len + 1, generator=g) < 0.05
    x = torch.where(noise, torch.randint(0, VOCAB, x.shape, generator=g), x)
    mel = torch.sin(x[:, 1:].float() / 5.0)  # a smooth "acoustic" target per token
    return x[:, :-1], x[:, 1:], mel


def lr_at(step: int, args) -> float:
    lr = args.learning_rate * min(1.0, (step + 1) / max(1, args.warmup))
    if args.diverge_after is not None and step >= args.diverge_after:
        lr *= args.diverge_factor
    return lr


def list_checkpoints(out_dir: str):
    found = []
    for name in os.listdir(out_dir):
        m = CKPT_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(out_dir, name)))
    return sorted(found)


def save_checkpoint(path: str, step: int, model, opt):
    tmp = path + ".tmp"
    torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)  # a reader never sees a half-written model_step*.pth


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    os.makedirs(args.logdir, exist_ok=True)
    device = torch.device(args.device)
    model = TinyGPT(args.d_model, args.layers, args.seq_len).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    start = 0
    if args.resume:
        state = torch.load(args.resume, map_location="cpu")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = int(state["step"])
        print(f"resumed from {args.resume} at step {start}", flush=True)

    stop = {"requested": False}

    def on_sigterm(*_):
        stop["requested"] = True
        print(f"SIGTERM received at {time.time():.3f}", flush=True)  # benchmarks/guard_reaction.py reads this

    signal.signal(signal.SIGTERM, on_sigterm)
    writer = SummaryWriter(log_dir=args.logdir, flush_secs=1)
    print(f"training steps {start + 1}..{args.max_steps} on {device} (torch {torch.__version__})", flush=True)
    t0 = time.time()
    for step in range(start + 1, args.max_steps + 1):
        lr = lr_at(step, args)
        for group in opt.param_groups:
            group["lr"] = lr
        inp, target, mel = (t.to(device) for t in batch_for_step(step, args.batch_size, args.seq_len, args.seed))
        logits, mel_pred = model(inp)
        text_loss = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))
        mel_loss = F.mse_loss(mel_pred, mel)
        opt.zero_grad()
        (text_loss + mel_loss).backward()
        opt.step()

        if step % args.log_every == 0 or step == args.max_steps:
            tl, ml = text_loss.item(), mel_loss.item()
            writer.add_scalar("train/text_loss", tl, step)
            writer.add_scalar("train/mel_loss", ml, step)
            writer.add_scalar("train/lr", lr, step)
            rate = (step - start) / max(1e-9, time.time() - t0)
            print(f"step {step} text_loss {tl:.4f} mel_loss {ml:.4f} lr {lr:.3g} ({rate:.1f} steps/s)", flush=True)
        if step % args.save_every == 0 or step == args.max_steps:
            save_checkpoint(os.path.join(args.output_dir, f"model_step{step}.pth"), step, model, opt)
            if args.keep_last > 0:
                for _, old in list_checkpoints(args.output_dir)[: -args.keep_last]:
                    os.remove(old)
        if stop["requested"]:
            save_checkpoint(os.path.join(args.output_dir, f"model_step{step}.pth"), step, model, opt)
            print(f"SIGTERM: saved model_step{step}.pth and stopped", flush=True)
            writer.close()
            return 0
        if args.step_delay:
            time.sleep(args.step_delay)
    writer.close()
    final = text_loss.item()
    print(f"done at step {args.max_steps}: text_loss {final:.4f}", flush=True)
    return 0 if math.isfinite(final) or args.diverge_after is not None else 1


if __name__ == "__main__":
    sys.exit(main())
