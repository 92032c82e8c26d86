"""Hints that a checkpoint folder changed.  The only module that imports watchdog.

Events are hints, never the truth: inotify can overflow, files in a just-created
folder can be missed, network filesystems send nothing, and an exception in a
handler kills the observer thread.  The guard therefore rescans on every tick
anyway; a hint only makes the next rescan happen sooner.
"""
from __future__ import annotations

import threading
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver


class _Hint(FileSystemEventHandler):
    def __init__(self, watcher: "Watcher"):
        self.watcher = watcher

    def on_any_event(self, event) -> None:  # created, modified, deleted: look again soon
        self.watcher.changed.set()

    def on_created(self, event) -> None:  # also a rename into the folder from outside it
        self.watcher.saw(event.src_path, "created")

    def on_opened(self, event) -> None:
        self.watcher.saw(event.src_path, "opened")

    def on_modified(self, event) -> None:
        self.watcher.saw(event.src_path, "modified")

    def on_closed_no_write(self, event) -> None:  # someone only read it (us included)
        self.watcher.saw(event.src_path, "read")

    def on_closed(self, event) -> None:  # a writer closed the file: it may be complete
        self.watcher.finished(event.src_path)

    def on_moved(self, event) -> None:  # write-to-temp-then-rename shows up only as a move to the final name
        self.watcher.finished(event.dest_path)


class Watcher:
    """Watches a folder (recursively) with the native observer, or by polling (network filesystems)."""

    def __init__(self, folder: Path, polling: bool = False, interval: float = 1.0, recursive: bool = True):
        self.folder = folder
        self.changed = threading.Event()
        self.changed.set()  # the first tick always scans
        self._finished: set[str] = set()
        self.last: dict[str, str] = {}
        self._before_open: dict[str, str] = {}
        self._lock = threading.Lock()
        self.polling = polling
        self.recursive = recursive
        self.interval = interval
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        observer = PollingObserver(timeout=self.interval) if self.polling else Observer()
        try:
            observer.schedule(_Hint(self), str(self.folder), recursive=self.recursive)
            observer.start()
        except OSError:
            return  # e.g. inotify watch limit: rescans alone still find every checkpoint
        self._observer = observer

    def finished(self, path: str) -> None:
        with self._lock:
            self._finished.add(path)
            self.last[path] = "closed"
        self.changed.set()

    def saw(self, path: str, kind: str) -> None:
        with self._lock:
            if kind == "read":  # opened and closed without writing: back to what it was before the open
                if self.last.get(path) == "opened":
                    self.last[path] = self._before_open.pop(path, "closed")
            elif kind == "modified" and self.last.get(path) == "closed":
                pass  # an attribute change after the close (cp, shutil.copy set the mode): no writer is back
            else:
                if kind == "opened":
                    self._before_open[path] = self.last.get(path, "closed")
                self.last[path] = kind

    def last_event(self, path: str) -> str | None:
        """The last hint for ``path``: created | opened | modified | closed (closed after writing, or
        renamed into place); None if no event was seen (polling, or it was there before we watched)."""
        with self._lock:
            return self.last.get(path)

    def forget(self, path: str) -> None:
        with self._lock:
            self.last.pop(path, None)

    def take_finished(self) -> set[str]:
        """Paths closed or renamed into place since the last call."""
        with self._lock:
            out, self._finished = self._finished, set()
        return out

    @property
    def started(self) -> bool:
        """Whether an observer was started (start can fail, e.g. at the inotify watch limit)."""
        return self._observer is not None

    def restart(self) -> None:
        """A new observer after the old one died (an exception in a handler ends its thread)."""
        old, self._observer = self._observer, None
        try:
            if old is not None:
                old.stop()
        except Exception:  # it is dead already; nothing to clean up that matters
            pass
        self.start()

    @property
    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: threading.Event):
        self.wake = wake

    def on_any_event(self, event) -> None:  # a flush to an event file, a JSONL append: read now
        if not event.is_directory or event.event_type == "created":
            self.wake.set()


class DataWatch:
    """Wakes a phase's supervisor when its metric files change (a TensorBoard flush, a JSONL append), so guards
    react to the data instead of the next timer tick.  A hint only: the timer poll stays (network filesystems send
    no events, inotify can overflow), and a folder that does not exist yet is watched once it appears (``ensure``,
    called on every timer poll); runner never creates it."""

    def __init__(self, folders: list[Path], wake: threading.Event):
        self.wanted = [Path(f) for f in folders]
        self.wake = wake
        self._observer: BaseObserver | None = None
        self._watched: set[Path] = set()

    def ensure(self) -> None:
        """Start watching the folders that exist now (cheap when all are watched)."""
        missing = [f for f in self.wanted if f not in self._watched and f.is_dir()]
        if not missing:
            return
        try:
            if self._observer is None:
                self._observer = Observer()
                self._observer.daemon = True
                self._observer.start()
            for folder in missing:
                self._observer.schedule(_Wake(self.wake), str(folder), recursive=True)
                self._watched.add(folder)
        except (OSError, RuntimeError):
            self._watched.update(missing)  # e.g. the inotify watch limit: the timer poll alone reads them

    def stop(self) -> None:
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=5)
            except RuntimeError:
                pass
            self._observer = None
