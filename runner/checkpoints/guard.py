"""The checkpoint guard of one phase: scan, vault, score, retain.

A background thread vaults: it wakes on a watchdog hint (a file closed or
renamed into place) or every ``rescan_s`` regardless, lists the folder (the
truth), and links each complete checkpoint into the vault at once.  Scoring
and retention run on the engine's tick, where the metrics live.

Store before side effect: a checkpoint row is written ('vaulting') before the
link, updated after; ``recover`` repairs whatever a crash left between the two.
Pruning is two-phase: moved to vault/.trash, deleted when the phase ends; a
checkpoint that is or has ever been among the best K is never pruned.

Complete is decided by a rule (checkpoints.layouts): the spec's mark or preset
when it gives one, else the rule of the layout recognised from the files (a
Hugging Face Trainer folder is complete once trainer_state.json is there; a
folder of unknown layout once stable for settle and a second scan agrees).
Until its rule says complete a checkpoint is recorded 'incomplete': never
vaulted, scored, best, handed over or exported, and never counted by retention.
A vaulted folder the trainer writes again is brought into the vault only when
its rule says it is complete again.
"""
from __future__ import annotations

import os
import queue
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable


from runner.checkpoints.formats import why_not_loadable
from runner.checkpoints.hashing import Hashing
from runner.checkpoints.keeping import Keeping
from runner.checkpoints.rewrites import Rewrites
from runner.checkpoints.layouts import Layout, detect, inner_latest_names_a_folder, latest_names, mark_present
from runner.checkpoints.vault import DiskFull, protect, refresh, remove_temporaries, sha256_of, size_of
from runner.checkpoints.watch import Watcher
from runner.errors import Temporary
from runner.paths import step_from_name
from runner.safefs import Untrusted, kind_of, walk_files
from runner.spec.watch_models import Checkpoints
from runner.store import Store

if TYPE_CHECKING:
    from runner.checkpoints.validation import Validator

RESCAN_S = 1.0


def _real_dir(path: Path) -> bool:
    """A folder, not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def loadable(path: Path, fmt: str | None = None, mark: str | None = None) -> bool:
    """Whole in its format (metadata only: see checkpoints.formats)."""
    return why_not_loadable(path, fmt, mark) is None


class CheckpointGuard(Keeping, Hashing, Rewrites):
    def __init__(self, store: Store, run_id: str, phase_id: int, spec: Checkpoints, folder: Path, vault: Path,
                 say: Callable[[str], None] = lambda m: None, rescan_s: float = RESCAN_S,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.run_id = run_id
        self.phase_id = phase_id
        self.spec = spec
        self.folder = folder
        self.vault = vault
        self.trash = vault / ".trash"
        self.say = say
        self.rescan_s = rescan_s
        self.clock = clock  # what "stable for settle" is measured with (tests drive it)
        # inotify where it works; the rescans every rescan_s are the polling that finds what no event announced
        # (a trainer on another host writing to a network filesystem: inotify sees only this host's writes).
        # A polling observer would add nothing to them, and lose the close events that mark a file complete
        # at once where they do arrive.
        self.watcher = Watcher(folder, polling=spec.polling, interval=rescan_s)
        self.pending: dict[str, tuple[tuple, float]] = {}  # name → (files' sizes and mtimes, stable since)
        self.disk_full = False
        self.validator: Validator | None = None  # when the spec has validate:
        self.unloadable: set[str] = set()
        self.seen: dict[str, int] = {}  # name → step of checkpoints seen in the folder and not vaulted yet
        self.signatures: dict[str, tuple] = {}  # vaulted folder → its files' (path, size, mtime) when last vaulted
        self.missed: list[dict] = []
        self.untrusted: set[str] = set()  # names reported once as symlinks or special files (never followed)
        self.rewrites: dict[str, int] = {}  # name → versions of a vaulted file the trainer wrote again
        self.rewriting: dict[str, tuple[tuple, float]] = {}  # name → (new signature, stable since) of a rewrite
        self.refreshing: dict[str, tuple[tuple, float]] = {}  # vaulted folder → (changed signature, stable since)
        self.first_seen: dict[str, float] = {}  # name → when it was first seen incomplete
        self.waiting: dict[str, str] = {}  # name → why it is incomplete (said once in an event when the wait is long)
        self.why: dict[str, str] = {}  # name → why it was incomplete at the last scan
        self._paths: dict[str, Path] = {}  # name → its path in the folder (built once, looked up every rescan)
        self.unscored: dict[str, dict] = {}  # name → the metrics snapshot recorded for it while it has no score
        self._hashes: queue.Queue = queue.Queue()
        self._hasher: threading.Thread | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.recover()
        self.watcher.start()
        self._thread = threading.Thread(target=self._run, name="checkpoint-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.watcher.changed.set()
        if self._thread:
            self._thread.join(timeout=30)
        self.watcher.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.watcher.changed.wait(self.rescan_s)
            self.watcher.changed.clear()
            try:
                if self.watcher.started and not self.watcher.alive and not self._stop.is_set():
                    # An exception in a watchdog handler ends the observer's thread: start a new one (the
                    # rescans below never stopped, so nothing was missed meanwhile, only delayed).
                    self.watcher.restart()
                    self._event("checkpoint.watcher-restarted", "the folder watcher had died; started a new one")
                self.scan()
            except Exception as exc:  # the guard thread must survive anything a folder can do
                self._event("checkpoint.error", f"checkpoint scan failed: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ scan and vault

    @property
    def _pattern(self) -> str:
        """The checkpoints' name pattern (the spec model's validator fills it in: the preset's, else the default)."""
        assert self.spec.pattern is not None
        return self.spec.pattern

    def entries(self) -> dict[str, tuple[int, Path]]:
        """name → (step, path) for every checkpoint in the folder (files, or folders per step)."""
        out = {}
        try:
            with os.scandir(self.folder) as it:
                for e in it:
                    step = step_from_name(e.name, self._pattern)
                    if step is None:
                        continue
                    # The entry's type as the kernel listed it (no stat call per file: a folder of 10,000
                    # checkpoints is listed every rescan); a symlink is neither a file nor a folder here.
                    if e.is_file(follow_symlinks=False) or e.is_dir(follow_symlinks=False):
                        path = self._paths.get(e.name)
                        if path is None:  # a Path is built once per name: pathlib's parsing was most of a rescan
                            path = self._paths[e.name] = self.folder / e.name
                        out[e.name] = (step, path)
                    elif e.name not in self.untrusted:
                        try:
                            mode = e.stat(follow_symlinks=False).st_mode
                        except FileNotFoundError:
                            continue
                        self._untrusted(e.name, kind_of(mode))
        except FileNotFoundError:
            pass
        return out

    def _untrusted(self, name: str, kind: str) -> None:
        """A symlink or special file named like a checkpoint: never followed, opened or vaulted; said once."""
        self.untrusted.add(name)
        self._event("checkpoint.untrusted", f"{name} is {kind}: runner never follows, opens or vaults it "
                    "(only regular files and real folders are checkpoints)", {"name": name, "kind": kind})
        self.say(f"WARNING: {name} in the checkpoint folder is {kind}; not vaulted")

    def _touched(self) -> set[str]:
        """Names of the checkpoints (files or folders) a close or move event was seen for: an event of any file
        inside a checkpoint's folder counts for the folder."""
        out = set()
        for p in self.watcher.take_finished():
            try:
                rel = Path(p).relative_to(self.folder)
            except ValueError:
                continue
            if rel.parts:
                out.add(rel.parts[0])
        return out

    def layout(self, path: Path) -> Layout:
        """The rule that decides when ``path`` is complete: the spec's mark (complete_when, or its preset's),
        a preset's own rule, else the layout recognised from its files (checkpoints.layouts)."""
        detected, _names = detect(path)
        cw, preset = self.spec.complete_when, self.spec.preset
        if cw is not None:
            what = f"complete_when: {cw.file}" if cw.file else f"complete_when: `{cw.latest}` names it"
            return Layout(preset or "complete_when", self.spec.format or detected.fmt,
                          what + (f" ({preset} preset)" if preset else " (spec)"), mark=cw.file, latest=cw.latest is not None)
        if preset:
            return Layout(preset, self.spec.format, f"{preset} preset: closed or renamed into place, or stable for settle",
                          settle=True)
        return detected

    def _completion(self, name: str, step: int, path: Path, sig: tuple, stable_for: float, closed: bool,
                    final: bool) -> tuple[bool, Layout, str]:
        """(complete by its rule, the rule, why not or how it was decided).  ``final``: the container has ended,
        nothing writes any more, so only a rule's mark (never time) can still say no."""
        layout = self.layout(path)
        if not sig:  # a folder made before its first file (a ZeRO gather can take seconds): nothing yet
            return False, layout, "no file in it yet"
        if layout.mark is not None and not mark_present(path, layout.mark):
            return False, layout, f"{layout.mark} not written yet"
        if layout.latest:
            latest = self.spec.complete_when.latest if self.spec.complete_when and self.spec.complete_when.latest else "latest"
            if latest_names(self.folder, latest, name, step, lambda t: step_from_name(t, self._pattern)) or \
                    (self.spec.complete_when is None and _real_dir(path) and inner_latest_names_a_folder(path)):
                return True, layout, layout.rule
            if not (final and self.spec.complete_when is None and not _lexists(self.folder / latest)
                    and not _lexists(path / "latest")):
                return False, layout, f"`{latest}` does not name it yet"
            # A DeepSpeed layout recognised, no `latest` anywhere, and the trainer has ended: as complete as it gets.
        if final:
            return True, layout, layout.rule + " (decided after the container ended: nothing was writing it)"
        if not layout.settle and (layout.mark is not None or layout.latest):
            return True, layout, layout.rule
        if closed and not _real_dir(path):
            return True, layout, layout.rule + " (closed or renamed into place)"
        if stable_for < self.spec.settle:
            return False, layout, f"still being written (stable for {stable_for:.1f}s of {self.spec.settle:g}s)"
        # A second scan must agree: a listing taken now, after the settle time, is the one that is vaulted.
        try:
            again = self._signature(path)
        except FileNotFoundError:
            return False, layout, "vanished"
        if again != sig:
            return False, layout, "changed on a second scan"
        return True, layout, layout.rule

    def _incomplete(self, name: str, step: int, path: Path, state: str | None, why: str, layout: Layout, now: float) -> None:
        """Recorded 'incomplete' (never vaulted, best, handed over or exported until its rule says complete); a
        wait longer than settle (a sharded save's pause, a save cut short) is said once in an event."""
        if not self.spec.vault:
            return
        if state != "incomplete":
            self.store.checkpoint_intent(self.phase_id, step, name, str(path), str(self.vault / name))
            self.store.checkpoint_update(self.phase_id, name, state="incomplete")
        self.why[name] = f"{why} [{layout.rule}]"
        since = self.first_seen.setdefault(name, now)
        if name not in self.waiting and now - since > max(self.spec.settle, 1.0):
            self.waiting[name] = why
            self._event("checkpoint.waiting", f"{name} (step {step}) is incomplete: {why} [{layout.rule}]; it is not "
                        "vaulted, listed, handed over or exported until it is complete",
                        {"name": name, "step": step, "why": why, "layout": layout.name, "rule": layout.rule})

    def scan(self, final: bool = False) -> list[str]:
        """Vault every checkpoint complete by its rule and not vaulted yet (the others recorded 'incomplete'),
        bring vaulted folders the trainer still writes up to date once complete again, and report checkpoints
        that vanished before they could be vaulted; returns the names vaulted now."""
        with self._lock:
            touched = self._touched()
            known = {c["name"]: c for c in self.store.checkpoints(self.phase_id)}
            now = self.clock()
            done = []
            entries = self.entries()
            for name, c in known.items():  # recorded incomplete (before a restart too): gone now means missed
                if c["state"] == "incomplete" and name not in entries:
                    self.seen.setdefault(name, c["step"])
            for name, step in list(self.seen.items()):
                if name not in entries and (name not in known or known[name]["state"] in ("vaulting", "incomplete")):
                    self._missed(name, step)
            for name, (step, path) in sorted(entries.items(), key=lambda kv: kv[1][0]):
                state = known[name]["state"] if name in known else None
                if state is not None and state not in ("vaulting", "missed", "incomplete"):
                    if _real_dir(path) and self.spec.vault and state in ("kept", "best"):
                        self._refresh(name, step, path, Path(known[name]["vault_path"]), touched, now, final)
                    elif self.spec.vault and state in ("kept", "best", "trash"):
                        self._rewritten(name, path, Path(known[name]["vault_path"]), touched, now)
                    continue
                self.seen[name] = step
                if not self.spec.vault:
                    continue  # nothing is vaulted or recorded incomplete: whether it is complete decides nothing
                try:
                    sig = self._signature(path)
                    prev = self.pending.get(name)
                    stable_since = prev[1] if prev and prev[0] == sig and name not in touched else now
                    self.pending[name] = (sig, stable_since)
                    complete, layout, why = self._completion(name, step, path, sig, now - stable_since, name in touched, final)
                except FileNotFoundError:
                    continue
                if not complete:
                    self._incomplete(name, step, path, state, why, layout, now)
                    continue
                if self.disk_full or not self.spec.vault:
                    continue
                unloadable = why_not_loadable(path, layout.fmt, layout.mark)
                if unloadable is not None:
                    if name not in self.unloadable:
                        self.unloadable.add(name)
                        self._event("checkpoint.unloadable", f"{name} does not load yet ({unloadable}); waiting")
                    self._incomplete(name, step, path, state, unloadable, layout, now)
                    continue
                if self._vault(name, step, path, sig, layout, why):
                    done.append(name)
                    self.pending.pop(name, None)
                    self.seen.pop(name, None)
                    self.first_seen.pop(name, None)
            return done

    @staticmethod
    def _signature(path: Path) -> tuple:
        """(relative path, size, mtime) of each regular file (symlinks and special files left out)."""
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            return tuple((rel, f.st_size, f.st_mtime_ns) for rel, f in walk_files(path)[0])
        return ((path.name, st.st_size, st.st_mtime_ns),)

    def _missed(self, name: str, step: int) -> None:
        """Seen in the folder, gone before it was complete and vaulted: loud, never silent."""
        self.seen.pop(name, None)
        self.pending.pop(name, None)
        self.first_seen.pop(name, None)
        self.store.checkpoint_intent(self.phase_id, step, name, str(self.folder / name), str(self.vault / name))
        self.store.checkpoint_update(self.phase_id, name, state="missed")
        self.missed.append({"name": name, "step": step})
        self._event("checkpoint.missed", f"MISSED {name} (step {step}): it was deleted before it was complete, so it was "
                    "never vaulted (the trainer removed it, or its save was cut short)", {"name": name, "step": step})
        self.say(f"WARNING: checkpoint {name} (step {step}) was deleted before it could be vaulted")

    def _vault(self, name: str, step: int, path: Path, sig: tuple = (), layout: Layout | None = None, rule: str = "") -> bool:
        dst = self.vault / name
        self.store.checkpoint_intent(self.phase_id, step, name, str(path), str(dst))
        self.store.checkpoint_update(self.phase_id, name, state="vaulting")  # a row recorded 'incomplete' before
        t0 = time.perf_counter()
        try:
            dst, how = protect(path, self.vault)
            if how == "existing" and _real_dir(path):
                refresh(path, dst)  # left by a crash mid-vault, or vaulted before a restart: complete it
        except DiskFull as exc:
            self.disk_full = True
            self._event("checkpoint.disk-full", str(exc))
            self.say(f"ERROR: {exc}")
            return False
        except Untrusted as exc:  # swapped for a symlink or special file between the listing and the link
            self.store.checkpoint_update(self.phase_id, name, state="missed")
            self.seen.pop(name, None)
            if name not in self.untrusted:
                self._untrusted(name, exc.kind)
            return False
        except Temporary as exc:
            self._event("checkpoint.missed", f"MISSED {name} (step {step}): {exc} (the trainer deleted it first)",
                        {"name": name, "step": step})
            self.store.checkpoint_update(self.phase_id, name, state="missed")
            self.missed.append({"name": name, "step": step})
            self.seen.pop(name, None)
            return False
        took = time.perf_counter() - t0
        if sig:
            self.signatures[name] = sig  # what was vaulted: a later write under the same name is a rewrite
        # Queued before the row says "kept": whoever sees it kept and calls wait_hashed (another thread) finds the
        # hash waiting, never an empty queue.
        self._hash_later(name, dst)
        self.store.checkpoint_update(self.phase_id, name, state="kept", how=how, vaulted_at=time.time())
        self._event("checkpoint.vaulted", f"vaulted {name} (step {step}) by {how} in {took * 1000:.1f} ms"
                    + (f"; complete by: {rule}" if rule else ""),
                    {"name": name, "step": step, "ms": took * 1000, "layout": layout.name if layout else None, "rule": rule})
        if self.validator is not None:
            self.validator.offer(step, str(dst))
        return True

    def recover(self) -> None:
        """Repair what a crash left: rows still 'vaulting', vault entries without rows."""
        rows = {c["name"]: c for c in self.store.checkpoints(self.phase_id)}
        for name, c in rows.items():
            if c["state"] != "vaulting":
                continue
            dst = Path(c["vault_path"])
            if dst.exists() and not (self.vault / (name + ".vaulting")).exists():
                self.store.checkpoint_update(self.phase_id, name, state="kept", how="recovered", vaulted_at=time.time(),
                                             sha256=sha256_of(dst), size=size_of(dst))
                self._event("checkpoint.recovered", f"{name}: vaulted before a restart; recorded now")
        for leftover in remove_temporaries(self.vault):
            self._event("checkpoint.recovered", f"removed {leftover}: a copy into the vault cut short by a restart")
        if self.vault.is_dir():
            for entry in self.vault.iterdir():
                step = step_from_name(entry.name, self._pattern)
                if step is not None and entry.name not in rows:
                    self.store.checkpoint_intent(self.phase_id, step, entry.name, str(self.folder / entry.name), str(entry))
                    self.store.checkpoint_update(self.phase_id, entry.name, state="kept", how="recovered",
                                                 vaulted_at=time.time(), sha256=sha256_of(entry), size=size_of(entry))
                    self._event("checkpoint.recovered", f"{entry.name}: found in the vault after a restart; recorded")

    def _event(self, kind: str, message: str, data: dict | None = None) -> None:
        self.store.event(self.run_id, self.phase_id, kind, message, data)
