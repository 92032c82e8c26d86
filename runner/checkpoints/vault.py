"""Protect a checkpoint: a hard link into the phase's vault (no extra space; survives the trainer
deleting its own file), or, across filesystems, a copy written to a temporary name, fsynced, renamed."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

from runner.errors import Permanent, Temporary


class DiskFull(Permanent):
    """No space to vault; runner never deletes anything to make room."""


def _copy_file(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".vaulting")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 16 * 1024 * 1024)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, dst)


def _link_or_copy(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst)
        return "link"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    _copy_file(src, dst)
    return "copy"


def protect(src: Path, vault: Path) -> tuple[Path, str]:
    """Put ``src`` (a file or a folder of files) into ``vault``; returns (vault path, "link" | "copy").

    Idempotent: an existing vault entry is kept.  DiskFull when the disk is full (nothing deleted);
    Temporary when the source vanished before it could be linked."""
    vault.mkdir(parents=True, exist_ok=True)
    dst = vault / src.name
    if dst.exists():
        return dst, "existing"
    try:
        if src.is_dir():
            tmp = vault / (src.name + ".vaulting")
            shutil.rmtree(tmp, ignore_errors=True)
            how = "link"
            for root, _dirs, files in os.walk(src):
                rel = Path(root).relative_to(src)
                (tmp / rel).mkdir(parents=True, exist_ok=True)
                for f in files:
                    how = _link_or_copy(Path(root) / f, tmp / rel / f) if how == "link" else (_copy_file(Path(root) / f, tmp / rel / f) or "copy")
            os.replace(tmp, dst)
            return dst, how
        return dst, _link_or_copy(src, dst)
    except FileNotFoundError:
        raise Temporary(f"{src} vanished before it could be vaulted") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"disk full while vaulting {src.name}: vaulting stops; no checkpoint is deleted to make room") from None
        raise


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative path and content, in sorted order)."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0")
            _feed(h, f)
        return h.hexdigest()
    _feed(h, path)
    return h.hexdigest()


def _feed(h, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            h.update(chunk)


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
