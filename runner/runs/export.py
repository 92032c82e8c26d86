"""The best checkpoint of a phase and its export out of the vault: what `runner export` (and any other caller) does.

Only a complete checkpoint is exported: the best is chosen among the vaulted ones (a checkpoint recorded
'incomplete' is never best), and a vaulted folder is checked against its layout's rule before it is copied (one
vaulted half by an older runner, or found in the vault after a crash: a Hugging Face Trainer folder without
trainer_state.json, shards without their index, a half weight file).  A single file is not checked again: it was
vaulted only once whole in its format, and the vault's copy is private.  An incomplete folder is refused with
the reason; ``force`` copies it anyway and says what it lacks."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.checkpoints.layouts import why_incomplete
from runner.checkpoints.vault import export as copy_verified
from runner.errors import NotFound, Refused
from runner.runs.queries import checkpoint_phases
from runner.store import Store


@dataclass(frozen=True)
class Exported:
    phase: str
    checkpoint: dict[str, Any]
    dest: Path
    sha256: str
    files: int  # files checked one by one (a folder checkpoint); 0 for one file
    incomplete: str | None = None  # what the copy lacks, when it was exported incomplete on purpose (force)
    pending: tuple[str, ...] = ()  # later checkpoints still incomplete (being written): not candidates yet


def best_checkpoint(store: Store, run_id: str, phase: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(phase row, checkpoint row) of the best scored checkpoint: of the named phase, or — without one — of the run's
    last phase that has checkpoints. Ties go to the earlier step."""
    row, cks = checkpoint_phases(store, run_id, phase)[-1]
    best = [c for c in cks if c["state"] == "best" and c["score"] is not None]
    if not best:
        waiting = [c["name"] for c in cks if c["state"] == "incomplete"]
        raise NotFound(f"phase {row['name']} of run {run_id} has no scored best checkpoint"
                       + (f" ({', '.join(waiting[:4])} incomplete: never a candidate until complete and vaulted)"
                          if waiting else ""))
    mode = json.loads(row["phase_json"] or "{}").get("checkpoints", {}).get("keep", {}).get("mode", "min")
    sign = 1 if mode == "min" else -1
    return row, min(best, key=lambda c: (sign * c["score"], c["step"]))


def destination(dest: str | os.PathLike[str], name: str) -> Path:
    """Where an export goes. DEST is a folder when it is one, or when it is written with a trailing `/` (created,
    with its parents, if missing): the checkpoint keeps its name inside it. Otherwise DEST is the new file's (or
    folder checkpoint's) own path; its parent folder is created if missing. An existing target is refused."""
    text = os.fspath(dest)
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)):
        if path.exists() and not path.is_dir():
            raise Refused(f"{path} exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        path = path / name
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise Refused(f"{path} exists; runner does not overwrite")
    return path


def export_best(store: Store, run_id: str, phase: str | None, dest: str | os.PathLike[str], force: bool = False) -> Exported:
    """Copy the best checkpoint out of the vault to ``dest`` (see ``destination``) and verify every file's sha256.
    Refused when the vaulted copy is not a whole checkpoint of its layout, unless ``force``."""
    row, c = best_checkpoint(store, run_id, phase)
    src = Path(c["vault_path"])
    if not src.exists():
        raise NotFound(f"{src} is not in the vault any more")
    why = why_incomplete(src)[1] if src.is_dir() and not src.is_symlink() else None
    if why is not None and not force:
        raise Refused(f"{c['name']} (step {c['step']}), the best checkpoint of phase {row['name']}, is incomplete in the "
                      f"vault: {why}; not exported (runner export --force copies it anyway)")
    target = destination(dest, src.name)
    got = copy_verified(src, target, c["sha256"], c["files"])
    pending = tuple(x["name"] for x in checkpoint_phases(store, run_id, row["name"])[-1][1]
                    if x["state"] == "incomplete" and x["step"] > c["step"])
    return Exported(row["name"], c, target, got, len(c["files"]) if c["files"] and src.is_dir() else 0, why, pending)
