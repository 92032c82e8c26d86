"""Protect a checkpoint: a hard link into the phase's vault at once (no copy on the vaulting path: the
trainer's rotation can no longer delete it), then a private copy that replaces the link (so a trainer that
writes the same name again, in place, can never change the vaulted bytes).  Across filesystems, a copy
written to a temporary name, fsynced, renamed.

Nothing in the trainer's folder is trusted (runner.safefs): a symlink is never followed nor vaulted, only
regular files and real folders are; a FIFO, socket or device is never opened."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import stat
from pathlib import Path

from runner.errors import Permanent, Temporary
from runner.safefs import Untrusted, kind_of, open_regular, walk_files

FICLONE = 0x40049409  # linux/fs.h: share the blocks copy-on-write (btrfs, xfs); refused elsewhere


class DiskFull(Permanent):
    """No space to vault; runner never deletes anything to make room."""


def copy_file(src: Path, dst: Path, tmp: Path | None = None) -> None:
    """A private copy of the regular file ``src`` at ``dst`` (a reflink where the filesystem shares blocks
    copy-on-write, else the bytes), via a temporary name (``tmp``, on ``dst``'s filesystem; by default beside
    ``dst``), fsynced, renamed."""
    tmp = tmp if tmp is not None else dst.with_name(dst.name + ".vaulting")
    try:
        with open_regular(src) as fin, open(tmp, "wb") as fout:
            try:
                fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            except OSError:
                shutil.copyfileobj(fin, fout, 16 * 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
            st = os.fstat(fin.fileno())
        # The trainer's mtime travels with the bytes: (size, mtime) tells a later rewrite from the vaulted version.
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a partial copy (a full disk) is never left behind
        raise


def _link_or_copy(src: Path, dst: Path) -> str:
    """Link the regular file ``src`` (never what a symlink points to) to ``dst``; a copy across filesystems."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        copy_file(src, dst)
        return "copy"
    # The lstat before the link can be raced (a file swapped for a symlink or a FIFO in between): what was
    # linked is checked after, and removed when it is not a regular file.
    mode = os.lstat(dst).st_mode
    if not stat.S_ISREG(mode):
        os.unlink(dst)
        raise Untrusted(src, kind_of(mode))
    return "link"


def what_is(path: Path) -> str:
    """'file', 'folder', or what else ``path`` is (never following a symlink)."""
    return kind_of(os.lstat(path).st_mode)


def protect(src: Path, vault: Path) -> tuple[Path, str]:
    """Put ``src`` (a regular file, or a real folder of regular files) into ``vault``; returns (vault path,
    "link" | "copy" | "existing").

    Idempotent: an existing vault entry is kept.  Untrusted when ``src`` is a symlink or a special file
    (nothing is vaulted; inside a folder such entries are left out); DiskFull when the disk is full (nothing
    deleted); Temporary when the source vanished before it could be linked."""
    vault.mkdir(parents=True, exist_ok=True)
    dst = vault / src.name
    if os.path.lexists(dst):
        return dst, "existing"
    try:
        kind = what_is(src)
        if kind == "folder":
            tmp = vault / (src.name + ".vaulting")
            shutil.rmtree(tmp, ignore_errors=True)
            how = "link"
            try:
                files, _skipped = walk_files(src)
                tmp.mkdir()
                for rel, _st in files:
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    if how == "link":
                        how = _link_or_copy(src / rel, tmp / rel)
                    else:
                        copy_file(src / rel, tmp / rel)
                os.replace(tmp, dst)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # no half folder left in the vault
                raise
            return dst, how
        if kind != "file":
            raise Untrusted(src, kind)
        return dst, _link_or_copy(src, dst)
    except FileNotFoundError:
        raise Temporary(f"{src} vanished before it could be vaulted") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"disk full while vaulting {src.name}: vaulting stops; no checkpoint is deleted to make room") from None
        raise


TMP_PREFIX = ".runner-tmp-"  # a copy being made inside the vault: hidden, never a checkpoint's name, removed by recover()


def _tmp_beside(folder: Path) -> Path:
    """A temporary name for a file copied into the vaulted ``folder``: next to the folder, not inside it, so a
    person (or a tool) looking into a vaulted folder never finds a half-written file among its files."""
    return folder.parent / f"{TMP_PREFIX}{folder.name}-{secrets.token_hex(6)}"


def remove_temporaries(vault: Path) -> list[str]:
    """Remove the temporary copies a crash left in ``vault`` (never anything else); their names."""
    gone = []
    if vault.is_dir():
        for entry in vault.iterdir():
            if entry.name.startswith(TMP_PREFIX) and stat.S_ISREG(os.lstat(entry).st_mode):
                entry.unlink(missing_ok=True)
                gone.append(entry.name)
    return gone


def privatize(dst: Path, expect: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Give every vaulted file of ``dst`` (a file or a folder) an inode of its own: a file still hard-linked
    with the trainer's (link count > 1) is copied and the copy renamed over it.  Returns the relative paths
    whose bytes had changed since they were vaulted (``expect``: relative path → (size, mtime_ns) at vault
    time), i.e. rewritten in place by the trainer before the copy was made."""
    changed = []
    folder = dst.is_dir() and not dst.is_symlink()
    entries = walk_files(dst)[0] if folder else [(dst.name, os.lstat(dst))]
    for rel, st in entries:
        path = dst / rel if folder else dst
        if expect and rel in expect and expect[rel] != (st.st_size, st.st_mtime_ns):
            changed.append(rel)
        if st.st_nlink > 1:
            try:
                copy_file(path, path, _tmp_beside(dst) if folder else None)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DiskFull(f"disk full while copying {path.name} in the vault: it stays hard-linked to the "
                                   "trainer's file") from None
                raise
    return changed


def refresh(src: Path, dst: Path) -> list[str]:
    """Bring the vaulted folder ``dst`` up to date with ``src`` (files the trainer added or rewrote after it was
    vaulted); returns the relative paths updated.  Files gone from ``src`` stay in the vault; every updated
    file is a private copy (a link would let the trainer change it again)."""
    changed = []
    try:
        files, _skipped = walk_files(src)
        for rel, st in files:
            s, d = src / rel, dst / rel
            try:
                if os.path.lexists(d):
                    dt = os.lstat(d)
                    if dt.st_size == st.st_size and dt.st_mtime_ns >= st.st_mtime_ns:
                        continue
                d.parent.mkdir(parents=True, exist_ok=True)
                copy_file(s, d, _tmp_beside(dst))
                changed.append(rel)
            except (FileNotFoundError, Untrusted):
                continue  # the trainer removed it meanwhile, or swapped it for something never followed
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"disk full while updating {dst.name} in the vault: no checkpoint is deleted to make room") from None
        raise
    return changed


def file_hashes(path: Path) -> dict[str, dict]:
    """relative path → {size, sha256} for every regular file of a folder (or the one file)."""
    if not path.is_dir() or path.is_symlink():
        return {path.name: {"size": os.lstat(path).st_size, "sha256": sha256_of(path)}}
    out = {}
    for rel, st in walk_files(path)[0]:
        out[rel] = {"size": st.st_size, "sha256": sha256_of(path / rel)}
    return out


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder's regular files (relative path and content, in sorted order)."""
    h = hashlib.sha256()
    if path.is_dir() and not path.is_symlink():
        for rel, _st in walk_files(path)[0]:
            h.update(rel.encode() + b"\0")
            _feed(h, path / rel)
        return h.hexdigest()
    _feed(h, path)
    return h.hexdigest()


def _feed(h, path: Path) -> None:
    with open_regular(path) as f:
        while chunk := f.read(8 * 1024 * 1024):
            h.update(chunk)


def size_of(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(st.st_size for _rel, st in walk_files(path)[0])
    return os.lstat(path).st_size


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
