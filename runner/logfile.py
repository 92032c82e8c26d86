"""A container's output, turned into lines and kept in container.log, trusting none of it.

* Records end at ``\\n``, ``\\r\\n`` or a lone ``\\r``: a tqdm-style trainer that rewrites one terminal line
  with ``\\r`` reports every step, and each becomes a line (a metric point, a guard's input).
* A record with no end is cut at ``MAX_LINE`` bytes and passed on in pieces: memory stays bounded and the
  work linear whatever the container prints (a 30 MB line without a newline is 30 lines).
* container.log is opened without following a symlink (the phase folder may be mounted into the container;
  a link planted there is replaced, never written through) and rotated at ``RUNNER_LOG_MAX_BYTES`` (256 MiB
  by default): container.log holds the newest output, container.log.1 the previous part; older parts are
  dropped (Docker's own copy is bounded too: two files of 100 MB).
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

MAX_LINE = 1 << 20
LOG_MAX_BYTES = 256 * 1024 * 1024
_SPLIT = re.compile(rb"\r\n|\r|\n")


class LineSplitter:
    """Bytes in, complete records out (see the module's docstring).

    Linear in what is fed: only the new chunk is searched for an end of record, and the record being received
    is held as a list of pieces (joined once, when it ends or reaches ``max_line``) — a 30 MB record arriving
    in the engine's 16 KiB frames is not copied and searched again at every frame."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self._parts: list[bytes] = []  # the record being received: no end of record in it, at most max_line bytes
        self._size = 0
        self._cr = False  # the last chunk ended with \r: held back, as a \n first in the next one makes it \r\n

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._cr:
            chunk, self._cr = b"\r" + chunk, False
        if chunk.endswith(b"\r"):
            chunk, self._cr = chunk[:-1], True
        pieces = _SPLIT.split(chunk)
        rest = pieces.pop()
        out: list[bytes] = []
        if pieces:  # the held record ends in this chunk, and so does every piece but the last
            self._parts.append(pieces[0])
            pieces[0] = b"".join(self._parts)
            self._parts, self._size = [], 0
            for line in pieces:
                out.extend(self._cut(line) if len(line) > self.max_line else (line,))
        if rest:
            self._parts.append(rest)
            self._size += len(rest)
            if self._size > self.max_line:  # a record with no end yet: passed on in pieces of max_line bytes
                *full, tail = self._cut(b"".join(self._parts))
                out.extend(full)
                self._parts, self._size = [tail], len(tail)  # held even when full: its end may come next
        return out

    def _cut(self, data: bytes) -> list[bytes]:
        return [data[i:i + self.max_line] for i in range(0, len(data), self.max_line)]

    def flush(self) -> list[bytes]:
        """What is left at the end of the stream (an unterminated last record)."""
        rest, ended = b"".join(self._parts), self._cr  # a held \r ends a record, an empty one too
        self._parts, self._size, self._cr = [], 0, False
        return [rest] if rest or ended else []


def _max_bytes() -> int:
    try:
        return int(os.environ.get("RUNNER_LOG_MAX_BYTES") or LOG_MAX_BYTES)
    except ValueError:
        return LOG_MAX_BYTES


class ContainerLog:
    """container.log, append-only from runner's side, rotated at a cap; ``write`` raises OSError (a full disk)."""

    def __init__(self, path: Path, fresh: bool = False, max_bytes: int | None = None):
        self.path = Path(path)
        self.max_bytes = max_bytes or _max_bytes()
        self._fd = self._open(truncate=fresh)
        self.size = os.fstat(self._fd).st_size

    def _open(self, truncate: bool) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if truncate else os.O_APPEND)
        try:
            fd = os.open(self.path, flags | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno != 40:  # ELOOP: a symlink planted where runner's log goes: removed, never followed
                raise
            os.unlink(self.path)
            fd = os.open(self.path, flags | os.O_NONBLOCK, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device planted there: moved aside
            os.close(fd)
            os.rename(self.path, self.path.with_name(self.path.name + ".untrusted"))
            fd = os.open(self.path, flags | os.O_NONBLOCK, 0o644)
        os.set_blocking(fd, True)
        return fd

    def write(self, data: bytes) -> None:
        if self.size + len(data) > self.max_bytes and self.size > 0:
            os.close(self._fd)
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._fd = self._open(truncate=True)
            self.size = 0
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.size += len(data)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> "ContainerLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
