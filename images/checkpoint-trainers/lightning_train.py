"""A tiny model trained with PyTorch Lightning; ModelCheckpoint(save_top_k=1) deletes checkpoints that
drop out of its top-k.

    python3 lightning_train.py --out DIR --logdir DIR [--every 10] [--max-steps 100] [--step-delay 0.05]

Files: epoch={epoch}-step={step}.ckpt; TensorBoard tags: train_loss, val_loss (validation at every
checkpoint).  The validation loss falls, then rises (noise added after --diverge-after).
"""
import argparse
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--logdir", required=True)
ap.add_argument("--every", type=int, default=10)
ap.add_argument("--max-steps", type=int, default=100)
ap.add_argument("--step-delay", type=float, default=0.05)
ap.add_argument("--diverge-after", type=int, default=None)
args = ap.parse_args()
pl.seed_everything(0)

g = torch.Generator().manual_seed(1)
X = torch.randn(1024, 16, generator=g)
Y = X @ torch.randn(16, 1, generator=g)


class Net(pl.LightningModule):
    def _register_sharded_tensor_state_dict_hooks_if_available(self):
        pass  # torch 1.13 on Python 3.11 cannot weak-reference the proxy Lightning passes; no sharded tensors here

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

    def training_step(self, batch, i):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def on_train_batch_end(self, *a):
        if args.diverge_after is not None and self.global_step > args.diverge_after:
            with torch.no_grad():
                for p in self.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
        time.sleep(args.step_delay)

    def validation_step(self, batch, i):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


data = torch.utils.data.TensorDataset(X, Y)
train = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
val = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(256)), batch_size=256)
ckpt = ModelCheckpoint(dirpath=args.out, monitor="val_loss", mode="min", save_top_k=1)
trainer = pl.Trainer(max_steps=args.max_steps, val_check_interval=args.every, check_val_every_n_epoch=None,
                     callbacks=[ckpt], logger=TensorBoardLogger(args.logdir, name="", version=""),
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", log_every_n_steps=1)
trainer.fit(Net(), train, val)
print("done; best", ckpt.best_model_path, flush=True)
