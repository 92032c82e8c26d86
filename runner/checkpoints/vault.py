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
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 16 * 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a partial copy (a full disk) is never left behind
        raise


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
            try:
                for root, _dirs, files in os.walk(src):
                    rel = Path(root).relative_to(src)
                    (tmp / rel).mkdir(parents=True, exist_ok=True)
                    for f in files:
                        how = _link_or_copy(Path(root) / f, tmp / rel / f) if how == "link" else (_copy_file(Path(root) / f, tmp / rel / f) or "copy")
                os.replace(tmp, dst)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # no half folder left in the vault
                raise
            return dst, how
        return dst, _link_or_copy(src, dst)
    except FileNotFoundError:
        raise Temporary(f"{src} vanished before it could be vaulted") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"disk full while vaulting {src.name}: vaulting stops; no checkpoint is deleted to make room") from None
        raise


def refresh(src: Path, dst: Path) -> list[str]:
    """Bring the vaulted folder ``dst`` up to date with ``src`` (files the trainer added or rewrote after it was
    vaulted); returns the relative paths updated.  Files gone from ``src`` stay in the vault."""
    changed = []
    try:
        for root, _dirs, files in os.walk(src):
            rel = Path(root).relative_to(src)
            for f in files:
                s, d = Path(root) / f, dst / rel / f
                try:
                    st = s.stat()
                    if d.exists():
                        dt = d.stat()
                        if (dt.st_dev, dt.st_ino) == (st.st_dev, st.st_ino) or (
                                dt.st_size == st.st_size and dt.st_mtime_ns >= st.st_mtime_ns):
                            continue
                    (dst / rel).mkdir(parents=True, exist_ok=True)
                    tmp = d.with_name(d.name + ".linking")
                    tmp.unlink(missing_ok=True)
                    _link_or_copy(s, tmp)
                    os.replace(tmp, d)
                    changed.append(str(rel / f))
                except FileNotFoundError:
                    continue  # the trainer removed it meanwhile
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"disk full while updating {dst.name} in the vault: no checkpoint is deleted to make room") from None
        raise
    return changed


def file_hashes(path: Path) -> dict[str, dict]:
    """relative path → {size, sha256} for every file of a folder (or the one file)."""
    if not path.is_dir():
        return {path.name: {"size": path.stat().st_size, "sha256": sha256_of(path)}}
    out = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        out[str(f.relative_to(path))] = {"size": f.stat().st_size, "sha256": sha256_of(f)}
    return out


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


def export(src: Path, dest: Path, sha256: str | None, files: dict | None) -> str:
    """Copy a vaulted checkpoint (every file of a folder) to ``dest`` via a temporary name; each file's sha256 is
    checked against the vault's record (and the whole's); nothing is left at ``dest`` when a check fails."""
    from runner.errors import RunnerError

    if not src.exists():
        raise RunnerError(f"{src} is not in the vault any more")
    tmp = dest.with_name(dest.name + ".exporting")
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    try:
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copyfile(src, tmp)
        problems = []
        if files:
            got_files = file_hashes(tmp)
            if not tmp.is_dir():
                got_files = {src.name: got_files[tmp.name]}
            for rel, rec in files.items():
                if rel not in got_files:
                    problems.append(f"{rel} missing from the copy")
                elif got_files[rel]["sha256"] != rec["sha256"]:
                    problems.append(f"{rel}: vault record {rec['sha256'][:16]}, copy {got_files[rel]['sha256'][:16]}")
            problems += [f"{rel} not in the vault's record" for rel in sorted(set(got_files) - set(files))]
        got = sha256_of(tmp)
        if sha256 and got != sha256:
            problems.append(f"whole checkpoint: vault record {sha256}, copy {got}")
        if not sha256 and not files:
            problems.append("the vault has no sha256 recorded for it yet")
        if problems:
            raise RunnerError(f"sha256 mismatch exporting {src}: " + "; ".join(problems[:5]))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)
    return got
