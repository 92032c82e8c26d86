"""Is a checkpoint whole?  Metadata only: nothing is unpickled or loaded into memory, so a multi-GB file is
not read and no code in it runs, and it works with any torch (or none).

* torch's zip format (every torch.save since 1.6; Lightning's .ckpt, HF's pytorch_model.bin, optimizer.pt):
  the archive's central directory, written last, lists the pickle.
* safetensors: the 8-byte header length, the JSON header, and the file exactly as long as the last tensor's end.
* a Hugging Face folder: config.json, the weights (single file or every shard of an index; shards without
  their index are a save still going), the completion mark, each weight file whole.
* a DeepSpeed folder (global_stepN/): at least one model-states file, each .pt whole.
* any other folder: every .pt/.pth/.bin/.ckpt/.safetensors file in it whole.
"""
from __future__ import annotations

import json
import os
import re
import stat
import struct
import zipfile
from pathlib import Path

from runner.safefs import open_regular, read_bytes, walk_files

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
WEIGHT_SUFFIXES = TORCH_SUFFIXES + (".safetensors",)
HF_SHARD = re.compile(r"^(model|pytorch_model|adapter_model)-\d+-of-\d+\.(safetensors|bin)$")


def torch_zip_whole(path: Path) -> bool | None:
    """True/False for torch's zip format; None when the file is not a zip (a legacy pickle)."""
    try:
        with open_regular(path) as f:
            if not zipfile.is_zipfile(f):
                return None
            with zipfile.ZipFile(f) as archive:
                return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def safetensors_whole(path: Path) -> bool:
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 * 1024 * 1024):
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return False
    if not isinstance(header, dict):
        return False
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
               and "data_offsets" in t), default=0)
    return size == 8 + n + end


def legacy_pickle_whole(path: Path) -> bool:
    try:
        import torch
    except ImportError:
        return True  # cannot check: size stability and close/rename events decide
    try:
        with open_regular(path) as f:
            torch.load(f, map_location="cpu", weights_only=True)
        return True
    except Exception:  # a half-written or foreign file; looked at again on the next scan
        return False


def file_whole(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return safetensors_whole(path)
    if path.suffix in TORCH_SUFFIXES:
        ok = torch_zip_whole(path)
        return legacy_pickle_whole(path) if ok is None else ok
    return True


def _json_ok(path: Path) -> bool:
    try:
        json.loads(read_bytes(path, 64 * 1024 * 1024))
        return True
    except (OSError, ValueError):
        return False


def why_not_loadable(path: Path, fmt: str | None = None, mark: str | None = None) -> str | None:
    """None when ``path`` (a file or a folder) is whole in its format, else the reason."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            if fmt in ("lightning", "torch") or path.suffix in WEIGHT_SUFFIXES:
                return None if file_whole(path) else f"{path.name} is not a whole {path.suffix or 'torch'} file"
            return None
        names = {rel for rel, _st in walk_files(path)[0]}  # regular files only: no symlink, no FIFO
        for rel in sorted(names):
            if Path(rel).suffix in WEIGHT_SUFFIXES and not file_whole(path / rel):
                return f"{rel} is not whole yet"
        if fmt == "huggingface":
            if "config.json" not in names or not _json_ok(path / "config.json"):
                return "no readable config.json"
            for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
                if index in names:
                    try:
                        shards = set(json.loads(read_bytes(path / index, 64 * 1024 * 1024))["weight_map"].values())
                    except (OSError, ValueError, KeyError, AttributeError):
                        return f"{index} is not readable"
                    missing = sorted(shards - names)
                    if missing:
                        return f"shards missing: {', '.join(missing[:3])}"
                    break
            else:
                loose = sorted(n for n in names if HF_SHARD.match(n))
                if loose:  # save_pretrained writes the index after the shards
                    return f"shards without their index yet ({loose[0]}, ...)"
                if not names & {"model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin"}:
                    return "no weights (model.safetensors, pytorch_model.bin or a sharded index)"
        if fmt == "deepspeed" and not any("model_states" in n and n.endswith(".pt") for n in names):
            return "no *model_states.pt"
        if mark and mark.endswith(".json") and mark in names and not _json_ok(path / mark):
            return f"{mark} is not readable JSON yet"
        return None
    except FileNotFoundError:
        return f"{path.name} vanished"
