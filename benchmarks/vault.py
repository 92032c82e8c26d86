"""Checkpoint vaulting: time from a checkpoint being renamed into place to its hard link in the vault;
for Hugging Face-style checkpoint folders, time from the completion mark (trainer_state.json, written
last) to the folder vaulted; and the cost of one rescan of a folder of 10,000 files.

    .venv/bin/python benchmarks/vault.py [--checkpoints 20] [--files 10000] [--folders 10] [--folder-files 8]

Target (issue 4): vaulting under 100 ms after close (hard-link case).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.checkpoints.guard import CheckpointGuard  # noqa: E402
from runner.spec.watch_models import Checkpoints  # noqa: E402
from runner.store import Store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoints", type=int, default=20)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--size-mb", type=int, default=64)
    ap.add_argument("--folders", type=int, default=10, help="Hugging Face-style checkpoint folders to vault")
    ap.add_argument("--folder-files", type=int, default=8, help="files per folder (weights, optimizer, ... , mark)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        tmp = Path(tmp)
        store = Store(tmp / "runner.db")
        store.create_run("r", "spec")
        store.add_phase("r", "p", "spec", "x", {})
        ckpt = tmp / "ckpt"
        ckpt.mkdir()
        guard = CheckpointGuard(store, "r", 1, Checkpoints(dir=str(ckpt)), ckpt, tmp / "vault")
        guard.start()
        time.sleep(0.5)
        blob = os.urandom(args.size_mb * 1024 * 1024)
        latencies = []
        for i in range(args.checkpoints):
            step = (i + 1) * 100
            # torch-style writes are checked for loadability; use a .dat so the figure is the vaulting itself.
            guard.spec = guard.spec.model_copy(update={"pattern": "model_step{step}.dat"})
            part = ckpt / f"model_step{step}.dat.tmp"
            with open(part, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            t0 = time.time()
            os.replace(part, ckpt / f"model_step{step}.dat")
            deadline = time.time() + 10
            while time.time() < deadline:
                rows = [c for c in store.checkpoints(1) if c["step"] == step and c["vaulted_at"]]
                if rows:
                    latencies.append(rows[0]["vaulted_at"] - t0)
                    break
                time.sleep(0.001)
        guard.stop()
        print(f"vaulting {args.checkpoints} checkpoints of {args.size_mb} MB by hard link: "
              f"median {statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms after rename "
              f"(target < 100 ms); sha256 is computed after the link, off this path")
        folder_latencies(tmp, store, args)
        big = tmp / "big"
        big.mkdir()
        for i in range(args.files):
            (big / f"model_step{i}.dat").write_bytes(b"x")
        g2 = CheckpointGuard(store, "r", 1, Checkpoints(dir=str(big), pattern="model_step{step}.dat", vault=False), big, tmp / "v2")
        g2.scan()  # first look records sizes
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            g2.entries()
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        g2.scan()
        full = time.perf_counter() - t0
        print(f"rescan of a folder of {args.files:,} checkpoint files: list+match median {statistics.median(times) * 1000:.1f} ms; "
              f"full scan pass (stat of each candidate) {full * 1000:.1f} ms")


def safetensors_bytes(n_bytes: int) -> bytes:
    import json
    import struct

    n = n_bytes // 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    return struct.pack("<Q", len(header)) + header + os.urandom(4 * n)


def folder_latencies(tmp: Path, store: Store, args) -> None:
    """checkpoint-{step}/ folders written file by file in place, as the HF Trainer does, trainer_state.json last."""
    import json

    import torch

    store.add_phase("r", "folders", "spec", "x", {})
    phase_id = max(p["id"] for p in store.phases("r"))
    out = tmp / "hf"
    out.mkdir()
    guard = CheckpointGuard(store, "r", phase_id, Checkpoints(dir=str(out), preset="huggingface"), out, tmp / "vault-hf")
    guard.start()
    time.sleep(0.5)
    weights = safetensors_bytes(args.size_mb * 1024 * 1024)
    extra = max(0, args.folder_files - 4)  # config, weights, optimizer.pt and the mark, plus this many small files
    latencies = []
    for i in range(args.folders):
        step = (i + 1) * 500
        d = out / f"checkpoint-{step}"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
        (d / "model.safetensors").write_bytes(weights)
        torch.save({"state": {}, "step": step}, d / "optimizer.pt")
        for k in range(extra):
            (d / f"extra_{k}.json").write_text(json.dumps({"k": k}))
        t0 = time.time()
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        deadline = time.time() + 10
        while time.time() < deadline:
            rows = [c for c in store.checkpoints(phase_id) if c["step"] == step and c["vaulted_at"]]
            if rows:
                latencies.append(rows[0]["vaulted_at"] - t0)
                break
            time.sleep(0.001)
    guard.stop()
    if latencies:
        print(f"vaulting {len(latencies)} of {args.folders} checkpoint folders ({args.folder_files} files, {args.size_mb} MB "
              f"of weights each) by hard links: median {statistics.median(latencies) * 1000:.1f} ms, max "
              f"{max(latencies) * 1000:.1f} ms after the completion mark (trainer_state.json) was written")
    else:
        print("checkpoint folders: none vaulted within 10 s (see the guard's events)")


if __name__ == "__main__":
    main()
