"""What kind of checkpoint a file or folder is, from its files alone, and the rule that says when it is complete.

A checkpoints block as a user writes it first has a ``dir`` and a ``pattern`` and no ``preset``; the trainer's
own layout still says when a save is over, and guessing it from stability alone fails both ways: a sharded or
ZeRO save that pauses between the weights and the optimizer state looks finished, and a trainer that saves and
rotates faster than the settle time is never seen finished.  So the layout is recognised and its own rule used:

=====================  ============================================================  ==============================
layout                 recognised by                                                 complete when
=====================  ============================================================  ==============================
huggingface            a Trainer's files: trainer_state.json, training_args.bin,     trainer_state.json is there
                       optimizer.pt, scheduler.pt, scaler.pt, rng_state*.pth         (the Trainer writes it last)
huggingface-model      HF weight names (model.safetensors, pytorch_model.bin,        config + every weight whole,
                       adapter_model.*, shards, an index), no Trainer file           stable for settle, rescanned
                       (save_pretrained)
deepspeed              *model_states.pt / *optim_states.pt (a ZeRO save)             ``latest`` beside it names it
                                                                                     (or a later step), or a
                                                                                     ``latest`` inside names a
                                                                                     subfolder (Lightning's
                                                                                     DeepSpeed strategy)
torch-distributed      *.distcp (torch.distributed.checkpoint, Lightning FSDP)       .metadata there (written after
                                                                                     every shard), stable, rescanned
unknown (folder)       anything else                                                 file list and sizes stable for
                                                                                     settle and a second scan agrees
lightning / torch /    a .ckpt / .pt .pth .bin / .safetensors file                   closed or renamed into place,
safetensors / file                                                                   or stable for settle
=====================  ============================================================  ==============================

Every rule is followed by the format's metadata check (checkpoints.formats): a mark never makes a half file
whole.  A folder of a Trainer layout is recognised from its first Trainer file; the HF Trainer writes
training_args.bin with the weights, before the optimizer, so the pause of a sharded save is covered.

Nothing here trusts the folder: files are listed with ``safefs.walk_files`` (no symlink followed, no special
file returned) and marks are read with ``safefs.read_bytes``.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from runner.checkpoints.formats import HF_SHARD, TORCH_SUFFIXES, why_not_loadable
from runner.safefs import read_bytes, walk_files

HF_WEIGHTS = frozenset({"model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin"})
HF_INDEXES = frozenset({"model.safetensors.index.json", "pytorch_model.bin.index.json"})
TRAINER_FILES = frozenset({"trainer_state.json", "training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt"})
TRAINER_MARK = "trainer_state.json"
DS_STATES = re.compile(r"(model_states|optim_states)\.pt$")


@dataclass(frozen=True)
class Layout:
    """A recognised checkpoint layout and its completion rule.

    ``mark``: a file inside the folder the trainer writes last (its presence decides); ``latest``: a
    ``latest`` file names the complete checkpoint; ``settle``: stability for the settle time decides (checked
    with a second scan).  ``fmt`` is the format of the metadata check; ``rule`` says it in words."""

    name: str
    fmt: str | None
    rule: str
    mark: str | None = None
    latest: bool = False
    settle: bool = False


UNKNOWN_FOLDER = Layout("unknown", None, "unknown layout: files and sizes stable for settle, a second scan agrees",
                        settle=True)


def folder_layout(names: set[str]) -> Layout:
    """The layout of a folder from the relative paths of its regular files."""
    top = {n for n in names if "/" not in n}
    base = {n.rsplit("/", 1)[-1] for n in names}
    trainer = top & TRAINER_FILES or any(n.startswith("rng_state") and n.endswith(".pth") for n in top)
    # config.json alone says little (many trainers write one): Hugging Face's weight names, index or shards do.
    hf_model = top & (HF_WEIGHTS | HF_INDEXES | {"adapter_config.json"}) or any(HF_SHARD.match(n) for n in top)
    if trainer and (hf_model or TRAINER_MARK in top or "training_args.bin" in top):
        # A Trainer's folder (ZeRO states inside it too): the Trainer writes trainer_state.json after the
        # weights, optimizer, scheduler and RNG state.
        return Layout("huggingface", "huggingface", "huggingface Trainer: trainer_state.json (written last)",
                      mark=TRAINER_MARK)
    if any(DS_STATES.search(n) for n in base):
        return Layout("deepspeed", "deepspeed", "deepspeed: `latest` names it", latest=True)
    if hf_model:
        return Layout("huggingface-model", "huggingface",
                      "huggingface model: config and weights whole, stable for settle, a second scan agrees", settle=True)
    if any(n.endswith(".distcp") for n in base):
        return Layout("torch-distributed", None,
                      "torch.distributed.checkpoint: .metadata (written after every shard), stable for settle",
                      mark=".metadata", settle=True)
    return UNKNOWN_FOLDER


def file_layout(name: str) -> Layout:
    """The layout of a single-file checkpoint, from its suffix."""
    suffix = os.path.splitext(name)[1]
    if suffix == ".ckpt":
        return Layout("lightning", "lightning", "lightning .ckpt: closed or renamed into place or stable, zip whole")
    if suffix in TORCH_SUFFIXES:
        return Layout("torch", "torch", "torch file: closed or renamed into place or stable, zip whole")
    if suffix == ".safetensors":
        return Layout("safetensors", None, "safetensors: closed or renamed into place or stable, header and length whole")
    return Layout("file", None, "file: closed or renamed into place, or stable for settle")


def detect(path: Path) -> tuple[Layout, set[str]]:
    """(layout, relative paths of its regular files) of a checkpoint file or real folder (never a symlink)."""
    if stat.S_ISDIR(os.lstat(path).st_mode):
        names = {rel for rel, _st in walk_files(path)[0]}
        return folder_layout(names), names
    return file_layout(path.name), {path.name}


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def latest_names(folder: Path, latest: str, name: str, step: int, step_of) -> bool:
    """Whether the file ``folder/latest`` (read without following a symlink) names checkpoint ``name`` or a
    later step (``step_of`` reads a step from a name)."""
    try:
        text = read_bytes(folder / latest, 4096).decode().strip()
    except (OSError, UnicodeDecodeError):
        return False
    named = step_of(text)
    return text == name or (named is not None and named >= step)


def inner_latest_names_a_folder(path: Path) -> bool:
    """A ``latest`` file inside ``path`` naming a real subfolder of it (Lightning's DeepSpeed strategy writes
    ``X.ckpt/latest`` = ``checkpoint`` after the states in ``X.ckpt/checkpoint/``)."""
    try:
        text = read_bytes(path / "latest", 4096).decode().strip()
    except (OSError, UnicodeDecodeError):
        return False
    if not text or "/" in text or text in (".", ".."):
        return False
    try:
        return stat.S_ISDIR(os.lstat(path / text).st_mode)
    except OSError:
        return False


def why_incomplete(path: Path) -> tuple[Layout, str | None]:
    """For a checkpoint at rest (a vaulted copy): its layout, and why it is not a whole checkpoint of that layout
    (None when it is).  What only time can tell (stability) or what lies beside it (DeepSpeed's ``latest``) is
    not judged here: only the mark inside and each file's metadata."""
    try:
        layout, names = detect(path)
    except FileNotFoundError:
        return file_layout(path.name), f"{path.name} is gone"
    if layout.mark and layout.mark not in names:
        missing = sorted(({"optimizer.pt", "scheduler.pt"} if layout.name == "huggingface" else set()) - names)
        return layout, (f"no {layout.mark} ({layout.rule})" + (f"; also missing: {', '.join(missing)}" if missing else ""))
    return layout, why_not_loadable(path, layout.fmt, layout.mark)


def mark_present(path: Path, mark: str) -> bool:
    """The mark file is a regular file inside ``path`` (a symlink named like it does not count)."""
    return _regular(path / mark)
