"""The container's output: copied to container.log, to the reporter and to the stdout metric parser, in a thread
of its own while the phase is followed."""
from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import Iterator

from runner.engine.ports import ENGINE_RETRY_S, Core
from runner.engine.session import PhaseSession
from runner.errors import ContainerNotFound, EngineUnavailable, RunnerError
from runner.logfile import ContainerLog, LineSplitter


class LogPump:
    """Reads one container's output from its start (``fresh``: container.log rewritten, as on re-attach: nothing
    missed while away) or appends to the log.

    A stream that breaks while the container still runs (the engine restarted with live-restore) is opened again
    from a little before the last line read; the lines sent again are recognised against the recent ones and
    skipped, so nothing is lost and nothing is doubled."""

    def __init__(self, core: Core, container_id: str, log_path: Path, sup: PhaseSession | None, fresh: bool = False):
        self.core = core
        self.container_id = container_id
        self.log_path = log_path
        self.sup = sup
        self.fresh = fresh
        self.pumped = time.monotonic()  # when the pump last passed lines on
        self.writable = True  # until a write to container.log fails (a full disk)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> LogPump:
        self.thread.start()
        return self

    def join(self, quiet_s: float = 10.0) -> bool:
        """Wait for the pump to read the ended container's output to its end: as long as it makes progress
        (a flood still being read), and at most ``quiet_s`` seconds without any.  True when it read to the end."""
        self.pumped = time.monotonic()
        while self.thread.is_alive():
            self.thread.join(timeout=1.0)
            if time.monotonic() - self.pumped > quiet_s:
                return False
        return True

    def run(self) -> None:
        recent: collections.deque[bytes] = collections.deque(maxlen=500)
        overlap: list[bytes] | None = None  # after a reconnect: recent lines the new stream may repeat
        since: int | None = None
        last_line_at = time.time()
        reporter, backend = self.core.reporter, self.core.backend
        emit_all = self._emit_all
        try:
            with ContainerLog(self.log_path, fresh=self.fresh) as out:
                while True:
                    splitter = LineSplitter()  # \n, \r\n or \r end a record; a record is cut at 1 MiB
                    received = 0
                    for chunk in backend.logs(self.container_id, follow=True, since=since):
                        received += len(chunk)
                        batch = []
                        for line in splitter.feed(chunk):
                            if overlap is not None:
                                if line in overlap:  # sent again after the reconnect
                                    overlap = overlap[overlap.index(line) + 1:] or None
                                    continue
                                overlap = None
                            recent.append(line)
                            batch.append(line)
                        if batch:
                            last_line_at = time.time()
                            emit_all(batch, out)
                    if not self._still_running():
                        if since is None:
                            # Output without a newline reaches the engine's log only when the container ends, and
                            # a follow stream can end first: the whole log once more, past what was received.
                            for rest in self._log_rest(received):
                                emit_all(splitter.feed(rest), out)
                        emit_all(splitter.flush(), out)
                        return
                    # The stream ended but the container runs on (an engine restart, or its end not
                    # visible yet): read again from just before the last line.
                    time.sleep(self.core.poll_s * 2)
                    if self._still_running():
                        reporter.info("the container's log stream broke (engine restart?); reading it again")
                    since, overlap = int(last_line_at) - 2, list(recent)
        except RunnerError as exc:
            reporter.info(f"log stream ended: {exc}")

    def _emit_all(self, lines: list[bytes], out: ContainerLog) -> None:
        """One write for a chunk's lines (a flood is written at disk speed), then each line to the parsers."""
        if not lines:
            return
        if self.writable:
            try:
                out.write(b"\n".join(lines) + b"\n")
            except OSError as exc:  # a full disk: the log file stops, the metrics and the view go on
                self.writable = False
                self.core.reporter.info(f"cannot write {self.log_path} ({exc}); the container's output is still "
                                        "read (`docker logs` has all of it)")
        for line in lines:
            text = line.decode("utf-8", "replace")
            self.core.reporter.log_line(text)
            if self.sup is not None:
                self.sup.feed_line(text)
        self.pumped = time.monotonic()

    def _log_rest(self, skip: int) -> Iterator[bytes]:
        """An ended container's output after its first ``skip`` bytes, as chunks (none when it cannot be read)."""
        try:
            for chunk in self.core.backend.logs(self.container_id, follow=False):
                if skip >= len(chunk):
                    skip -= len(chunk)
                    continue
                yield chunk[skip:]
                skip = 0
        except RunnerError:
            return

    def _still_running(self) -> bool:
        """After a log stream ends: does the container still run (waiting out an engine that restarts)?"""
        deadline = time.monotonic() + ENGINE_RETRY_S
        while True:
            try:
                return not self.core.backend.inspect(self.container_id).ended
            except ContainerNotFound:
                return False
            except EngineUnavailable:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.5)
