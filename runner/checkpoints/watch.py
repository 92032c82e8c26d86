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
from watchdog.observers.polling import PollingObserver


class _Hint(FileSystemEventHandler):
    def __init__(self, watcher: "Watcher"):
        self.watcher = watcher

    def on_any_event(self, event) -> None:  # created, modified, deleted: look again soon
        self.watcher.changed.set()

    def on_closed(self, event) -> None:  # a writer closed the file: it may be complete
        self.watcher.finished(event.src_path)

    def on_moved(self, event) -> None:  # write-to-temp-then-rename shows up only as a move to the final name
        self.watcher.finished(event.dest_path)


class Watcher:
    """Watches a folder (recursively) with the native observer, or by polling (network filesystems)."""

    def __init__(self, folder: Path, polling: bool = False, interval: float = 1.0):
        self.folder = folder
        self.changed = threading.Event()
        self.changed.set()  # the first tick always scans
        self._finished: set[str] = set()
        self._lock = threading.Lock()
        self.polling = polling
        self.interval = interval
        self._observer = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        observer = PollingObserver(timeout=self.interval) if self.polling else Observer()
        try:
            observer.schedule(_Hint(self), str(self.folder), recursive=True)
            observer.start()
        except OSError:
            return  # e.g. inotify watch limit: rescans alone still find every checkpoint
        self._observer = observer

    def finished(self, path: str) -> None:
        with self._lock:
            self._finished.add(path)
        self.changed.set()

    def take_finished(self) -> set[str]:
        """Paths closed or renamed into place since the last call."""
        with self._lock:
            out, self._finished = self._finished, set()
        return out

    @property
    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
