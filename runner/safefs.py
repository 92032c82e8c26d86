"""Reading what a container wrote, trusting none of it.

A trainer's folder (checkpoints, event files, logs) is written by code runner does not control.  A
symlink there may point at any host file, a FIFO blocks whoever opens it, a device node is not data.
Everything runner opens or walks in such a folder goes through here: symlinks are never followed
(``O_NOFOLLOW``, ``lstat``), only regular files are opened (``O_NONBLOCK`` so that a FIFO swapped in after
the check cannot block the open, then ``fstat`` says what was really opened), only real folders walked.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator


class Untrusted(OSError):
    """What was to be opened or walked is not a regular file (or a real folder): a symlink, a FIFO, a socket,
    a device.  ``kind`` names it."""

    def __init__(self, path: str | Path, kind: str):
        super().__init__(f"{path} is {kind}; runner never follows or opens it")
        self.path = str(path)
        self.kind = kind


def kind_of(mode: int) -> str:
    """'file', 'folder', 'symlink', 'FIFO', 'socket', 'device' or 'special file' for an lstat mode."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    return "a special file"


def open_regular(path: str | Path) -> BinaryIO:
    """``open(path, "rb")`` for a regular file only (Untrusted otherwise); never follows a symlink at the
    last component, never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a symlink at the last component; a socket
            try:
                kind = kind_of(os.lstat(path).st_mode)
            except OSError:
                kind = "a symlink" if exc.errno == errno.ELOOP else "a special file"
            raise Untrusted(path, kind) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Untrusted(path, kind_of(mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | Path, limit: int | None = None) -> bytes:
    with open_regular(path) as f:
        return f.read() if limit is None else f.read(limit)


@dataclass(frozen=True)
class Skipped:
    """An entry a walk did not enter or return, and why."""

    rel: str
    kind: str


def walk_files(root: str | Path) -> tuple[list[tuple[str, os.stat_result]], list[Skipped]]:
    """Every regular file under the real folder ``root`` as (relative path, lstat), sorted; and what was
    skipped (symlinks, special files).  Folders are entered only when they are real folders (not symlinks).
    A file that vanishes meanwhile is left out."""
    files: list[tuple[str, os.stat_result]] = []
    skipped: list[Skipped] = []

    def walk(folder: Path, rel: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            r = f"{rel}{e.name}"
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                walk(Path(e.path), r + "/")
            elif stat.S_ISREG(st.st_mode):
                files.append((r, st))
            else:
                skipped.append(Skipped(r, kind_of(st.st_mode)))

    walk(Path(root), "")
    files.sort()
    return files, skipped


def iter_regular(root: str | Path) -> Iterator[Path]:
    """The regular files under ``root`` (see walk_files), as paths."""
    for rel, _st in walk_files(root)[0]:
        yield Path(root) / rel
