"""A tiny GPT-2 trained from scratch with the real Hugging Face Trainer (offline, random tokens).

    python3 hf_train.py --out DIR --logdir DIR [--save-steps 10] [--max-steps 100] [--step-delay 0.1]
                        [--save-pause 0] [--abort-save-at STEP] [--diverge-after STEP]

TensorBoard tags: train/loss, eval/loss (eval at every save).  --save-pause sleeps inside the save,
between the weights and the optimizer state (what ZeRO/FSDP gathers do).  --abort-save-at writes the
weights of that step's checkpoint-N/ and removes the folder (a save that fails and cleans up after
itself).  --diverge-after adds noise to the weights after that step, so the best is not the last.
"""
import argparse
import os
import shutil
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--logdir", required=True)
ap.add_argument("--save-steps", type=int, default=10)
ap.add_argument("--max-steps", type=int, default=100)
ap.add_argument("--step-delay", type=float, default=0.1)
ap.add_argument("--save-pause", type=float, default=0.0)
ap.add_argument("--abort-save-at", type=int, default=None)
ap.add_argument("--diverge-after", type=int, default=None)
args = ap.parse_args()

torch.manual_seed(0)
VOCAB, SEQ = 256, 32


class Tokens(torch.utils.data.Dataset):
    """Learnable random sequences: each sequence repeats a short random motif."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        motifs = torch.randint(0, VOCAB, (n, 4), generator=g)
        self.data = motifs.repeat(1, SEQ // 4)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {"input_ids": self.data[i], "labels": self.data[i]}


class Pace(TrainerCallback):
    def on_step_end(self, targs, state, control, model=None, **kw):
        if args.diverge_after is not None and state.global_step > args.diverge_after:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
        time.sleep(args.step_delay)


class SlowSaveTrainer(Trainer):
    def _save_optimizer_and_scheduler(self, output_dir):
        if args.save_pause:
            time.sleep(args.save_pause)  # the weights are on disk; the optimizer state is not yet
        super()._save_optimizer_and_scheduler(output_dir)

    def _save_checkpoint(self, model, trial, metrics=None):
        if self.state.global_step == args.abort_save_at:
            out = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
            self.save_model(out, _internal_call=True)
            time.sleep(0.3)
            shutil.rmtree(out)
            print(f"save of step {self.state.global_step} aborted and removed", flush=True)
            return
        super()._save_checkpoint(model, trial, metrics=metrics)


model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2))
targs = TrainingArguments(
    output_dir=args.out, logging_dir=args.logdir, report_to=["tensorboard"], max_steps=args.max_steps,
    per_device_train_batch_size=8, per_device_eval_batch_size=16, learning_rate=3e-3, logging_steps=1,
    eval_strategy="steps", eval_steps=args.save_steps, save_strategy="steps", save_steps=args.save_steps,
    save_total_limit=1, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0,
)
trainer = SlowSaveTrainer(model=model, args=targs, train_dataset=Tokens(512, 1), eval_dataset=Tokens(32, 2),
                          callbacks=[Pace()])
trainer.train()
print("done", flush=True)
