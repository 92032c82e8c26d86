"""The inbox: spec files dropped into a folder become queued runs.

Every file that lands in the inbox ends in exactly one recorded state (the
`intake` table, and a folder beside it):

  accepted/RUNID-NAME       queued as run RUNID
  rejected/NAME + NAME.error.txt   invalid spec (every located error), or refused
                            (a symlink, a folder, not a .yaml/.yml file)
  duplicates/NAME + NAME.duplicate.txt   same content and inputs as a queued or running run

A file is read only once it is complete: after its writer closed it or it was
renamed into the inbox (and it has not changed for ``settle`` seconds), or, with
no filesystem events (polling, or present before the server started), when it
has not changed for ``quiet`` seconds.  Names starting with '.' or ending in
.tmp/.part/.swp/~ are skipped: write to such a name, then rename.
The outcome is recorded before the file is moved, and a move interrupted by a
crash is finished on the next start.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runner.errors import SpecError
from runner.store import Store

SUBFOLDERS = ("accepted", "rejected", "duplicates")
SKIP_SUFFIXES = (".tmp", ".part", ".swp", "~", ".crdownload")
SPEC_SUFFIXES = (".yaml", ".yml")
MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Outcome:
    name: str
    state: str  # accepted | rejected | duplicate | refused
    reason: str
    run_id: str | None = None
    moved_to: str = ""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Inbox:
    """Finds complete files in ``folder`` and settles each one with ``accept``.

    ``accept(name, data, sha, path)`` returns (state, reason, run_id) after recording a
    submission for an accepted file; it raises SpecError for an invalid one."""

    def __init__(self, folder: Path, store: Store, settle: float = 0.5, quiet: float = 10.0, stale: float = 300.0,
                 polling: bool = False):
        from runner.checkpoints.watch import Watcher

        self.folder = Path(folder)
        self.store = store
        self.settle, self.quiet, self.stale = settle, quiet, stale
        for sub in SUBFOLDERS:
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self.watcher = Watcher(self.folder, polling=polling, recursive=False)
        self._seen: dict[str, tuple[int, int, float]] = {}  # name → (size, mtime_ns, since)
        self.waiting: dict[str, str] = {}  # name → why it is not read yet (for status)

    def start(self) -> None:
        self.recover()
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()

    # ------------------------------------------------------------------ recovery

    def recover(self) -> None:
        """Finish moves that a crash interrupted (the outcome was recorded first)."""
        for row in self.store.intake(unmoved=True, limit=10_000):
            src = self.folder / row["name"]
            dest = Path(row["moved_to"])
            if not dest.exists() and os.path.lexists(src):
                self._write_note(row["state"], dest, row["reason"])
                os.replace(src, dest)
            self.store.intake_moved(row["id"])

    # ------------------------------------------------------------------ scanning

    def scan(self, accept: Callable[[str, bytes, str, Path], tuple[str, str, str | None]]) -> list[Outcome]:
        """One pass over the inbox: settle every complete file; return what was settled."""
        self.watcher.changed.clear()
        out = []
        names = set()
        with os.scandir(self.folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = entry.name
            if name in SUBFOLDERS or name.startswith(".") or name.endswith(SKIP_SUFFIXES):
                continue
            names.add(name)
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:  # not valid UTF-8: no record can name it; moved aside under a name that can
                out.append(self._undecodable(name))
                continue
            try:
                outcome = self._one(entry, accept)
            except OSError as exc:  # one file (vanished, unreadable) never stalls the others
                self._seen.pop(name, None)
                self.waiting[name] = f"could not read it ({exc}); trying again"
                continue
            if outcome is not None:
                out.append(outcome)
        for gone in set(self._seen) - names:
            self._seen.pop(gone, None)
            self.waiting.pop(gone, None)
        return out

    def _undecodable(self, name: str) -> Outcome:
        """A file whose name is not valid UTF-8: moved to rejected/ under an escaped name, with a note."""
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        shown = shown.replace("/", "_")
        dest = self.target("rejected", shown)
        os.replace(self.folder / name, dest)
        reason = f"the file name {shown!r} is not valid UTF-8; rename it and drop it again"
        Path(str(dest) + ".error.txt").write_text(reason + "\n")
        return Outcome(shown, "rejected", reason, None)

    def _one(self, entry: os.DirEntry, accept) -> Outcome | None:
        name = entry.name
        path = self.folder / name
        if entry.is_symlink():
            target = os.readlink(path)
            return self._settle(name, None, "refused", f"symlinks are refused (this one points to {target}); "
                                "copy the file into the inbox, or use `runner apply FILE`")
        if entry.is_dir():
            return self._settle(name, None, "refused", "a folder is not a spec; drop the .yaml file itself")
        if not entry.is_file():
            return self._settle(name, None, "refused", "not a regular file")
        if not name.endswith(SPEC_SUFFIXES):
            return self._settle(name, None, "refused", f"not a spec file: the inbox takes {' and '.join(SPEC_SUFFIXES)} files")
        st = entry.stat()
        if not self._complete(name, str(path), st):
            return None
        if st.st_size > MAX_BYTES:
            return self._settle(name, None, "rejected", f"file is {st.st_size} bytes; a spec may be at most {MAX_BYTES}")
        data = path.read_bytes()
        if len(data) != st.st_size:  # changed under us: look again next pass
            self._seen.pop(name, None)
            return None
        sha = sha256_bytes(data)
        try:
            state, reason, run_id = accept(name, data, sha, path)
        except SpecError as exc:
            return self._settle(name, sha, "rejected", "\n".join(str(p) for p in exc.problems))
        except Exception as exc:  # a bug must not leave the file in limbo (or crash the server on every pass)
            return self._settle(name, sha, "rejected", f"internal error while reading it: {type(exc).__name__}: {exc}")
        if state == "accepted":  # the submission and intake row were recorded together, and the file moved
            self._forget(name)
            return Outcome(name, state, reason, run_id)
        return self._settle(name, sha, state, reason, run_id)

    def _complete(self, name: str, path: str, st: os.stat_result) -> bool:
        """Whether a file is done being written (see the module docstring for the rule)."""
        now = time.time()
        key = (st.st_size, st.st_mtime_ns)
        prev = self._seen.get(name)
        if prev is None or prev[:2] != key:
            self._seen[name] = (*key, now)
            stable_for = 0.0
        else:
            stable_for = now - prev[2]
        age = now - st.st_mtime
        last = self.watcher.last_event(path) if self.watcher.alive else None
        if last == "closed":
            ready, why = stable_for >= self.settle, "closed; settling"
        elif last == "created":  # a rename from outside the inbox: complete unless a writer opens it
            ready, why = stable_for >= max(self.settle, 1.0), "appeared; settling"
        elif last in ("opened", "modified"):
            ready, why = age >= self.stale and stable_for >= self.settle, "being written (waiting for its writer to close it)"
        else:
            ready, why = age >= self.quiet and stable_for >= self.settle, f"waiting until unchanged for {self.quiet:g}s"
        if not ready:
            self.waiting[name] = why
        return ready

    # ------------------------------------------------------------------ outcomes

    def target(self, state: str, name: str, run_id: str | None = None) -> Path:
        """Where a settled file goes; never over an earlier file of the same name."""
        if state == "accepted":
            return self.folder / "accepted" / f"{run_id}-{name}"
        dest = self.folder / ("duplicates" if state == "duplicate" else "rejected") / name
        if os.path.lexists(dest):
            dest = dest.with_name(time.strftime("%Y%m%d-%H%M%S-") + f"{time.time_ns() % 1_000_000:06d}-" + name)
        return dest

    def move_accepted(self, intake_id: int, name: str, dest: Path) -> None:
        os.replace(self.folder / name, dest)
        self.store.intake_moved(intake_id)

    def _settle(self, name: str, sha: str | None, state: str, reason: str, run_id: str | None = None) -> Outcome:
        dest = self.target(state, name)
        intake_id = self.store.record_intake(name=name, state=state, reason=reason, moved_to=str(dest), source="inbox",
                                             sha256=sha, run_id=run_id)
        self._write_note(state, dest, reason)
        os.replace(self.folder / name, dest)  # a symlink is moved as the link itself, never followed
        self.store.intake_moved(intake_id)
        self._forget(name)
        return Outcome(name, state, reason, run_id, str(dest))

    def _forget(self, name: str) -> None:
        """A settled file leaves the inbox: drop what was tracked about it."""
        self.watcher.forget(str(self.folder / name))
        self._seen.pop(name, None)
        self.waiting.pop(name, None)

    @staticmethod
    def _write_note(state: str, dest: Path, reason: str) -> None:
        if state == "accepted":
            return
        suffix = ".duplicate.txt" if state == "duplicate" else ".error.txt"
        note = dest.with_name(dest.name + suffix)
        tmp = note.with_name(note.name + ".tmp")
        tmp.write_text(f"{state}: {reason}\n" if "\n" not in reason else f"{state}:\n{reason}\n")
        os.replace(tmp, note)
