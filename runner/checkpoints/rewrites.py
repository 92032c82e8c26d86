"""What a trainer writes under a checkpoint's name after it was vaulted: the ``Rewrites`` part of the checkpoint guard
(checkpoints.guard.CheckpointGuard).

A vaulted *folder* the trainer still writes (a file added after the mark, a sharded save finishing) follows it into
the vault once the folder is complete by its rule again.  A vaulted *file* written again (a run resumed from an
older step into the same folder) never changes the vaulted bytes: the new version is kept beside them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from runner.checkpoints.formats import why_not_loadable
from runner.checkpoints.vault import DiskFull, copy_file, refresh
from runner.safefs import Untrusted

if TYPE_CHECKING:
    from runner.checkpoints.layouts import Layout
    from runner.spec.watch_models import Checkpoints


class Rewrites:
    # What it uses of the guard it is a base of (checkpoints.guard.CheckpointGuard sets and defines them).
    spec: Checkpoints
    vault: Path
    disk_full: bool
    say: Callable[[str], None]
    signatures: dict[str, tuple]
    refreshing: dict[str, tuple[tuple, float]]
    rewriting: dict[str, tuple[tuple, float]]
    rewrites: dict[str, int]

    if TYPE_CHECKING:  # not at run time: the guard's own methods must not be shadowed
        def _event(self, kind: str, message: str, data: dict | None = None) -> None: ...
        def _hash_later(self, name: str, dst: Path) -> None: ...
        def layout(self, path: Path) -> Layout: ...
        @staticmethod
        def _signature(path: Path) -> tuple: ...
        def _completion(self, name: str, step: int, path: Path, sig: tuple, stable_for: float, closed: bool,
                        final: bool) -> tuple[bool, Layout, str]: ...

    def _refresh(self, name: str, step: int, path: Path, dst: Path, touched: set[str], now: float, final: bool) -> None:
        """A vaulted folder the trainer still writes: new or rewritten files follow it into the vault, but only
        once the folder is complete by its rule again and loads (a half-rewritten file never enters the vault)."""
        try:
            sig = self._signature(path)
        except FileNotFoundError:
            return
        if self.signatures.get(name) == sig or not dst.is_dir():
            self.refreshing.pop(name, None)
            return
        prev = self.refreshing.get(name)
        stable_since = prev[1] if prev and prev[0] == sig and name not in touched else now
        self.refreshing[name] = (sig, stable_since)
        try:
            complete, layout, _why = self._completion(name, step, path, sig, now - stable_since, name in touched, final)
        except FileNotFoundError:
            return
        if not complete or why_not_loadable(path, layout.fmt, layout.mark) is not None:
            return
        try:
            changed = refresh(path, dst)
        except DiskFull as exc:
            self.disk_full = True
            self._event("checkpoint.disk-full", str(exc))
            self.say(f"ERROR: {exc}")
            return
        self.signatures[name] = sig
        self.refreshing.pop(name, None)
        if changed:
            self._event("checkpoint.updated", f"{name}: {len(changed)} file(s) written after it was vaulted brought into the vault "
                        f"({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''})", {"files": changed})
            self._hash_later(name, dst)

    def _rewritten(self, name: str, path: Path, dst: Path, touched: set[str], now: float) -> None:
        """A vaulted file the trainer wrote again under the same name (a run resumed from an older step into
        the same folder): the vaulted bytes stay as they were; once the new version is complete it is kept
        too, beside them in the vault (.rewritten/NAME.N), and the rewrite is recorded."""
        try:
            sig = self._signature(path)
        except FileNotFoundError:
            return
        if name not in self.signatures:
            try:
                vst = os.lstat(dst)  # a restart: the vault copy keeps the trainer's mtime
            except FileNotFoundError:
                return
            self.signatures[name] = ((path.name, vst.st_size, vst.st_mtime_ns),)
        if sig == self.signatures[name]:
            self.rewriting.pop(name, None)
            return
        prev = self.rewriting.get(name)
        stable_since = prev[1] if prev and prev[0] == sig and name not in touched else now
        self.rewriting[name] = (sig, stable_since)
        if name not in touched and now - stable_since < self.spec.settle:
            return
        try:
            layout = self.layout(path)
        except FileNotFoundError:
            return
        if why_not_loadable(path, layout.fmt) is not None:
            return
        n = self.rewrites.get(name, 1) + 1
        keep = self.vault / ".rewritten" / f"{name}.{n}"
        try:
            keep.parent.mkdir(parents=True, exist_ok=True)
            copy_file(path, keep)
        except (FileNotFoundError, Untrusted):
            return
        except OSError as exc:
            self._event("checkpoint.error", f"keeping the rewritten {name}: {exc}")
            return
        self.rewrites[name] = n
        self.signatures[name] = sig
        self.rewriting.pop(name, None)
        self._event("checkpoint.rewritten", f"{name} was written again after it was vaulted: the vaulted version is "
                    f"unchanged ({dst}); the new one is kept beside it as {keep}",
                    {"name": name, "vault_path": str(dst), "rewrite_path": str(keep), "version": n})
        self.say(f"WARNING: the trainer wrote {name} again after it was vaulted; both versions kept")
