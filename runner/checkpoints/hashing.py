"""The vault's private copies, off the vaulting path: once a checkpoint is linked into the vault (what protects it),
a thread of its own gives the vault its own inodes (so the trainer can no longer change the vaulted bytes) and
records the sha256 of the whole and of each file.

``Hashing`` is a base of checkpoints.guard.CheckpointGuard (its store, phase and signatures)."""
from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING


from runner.checkpoints.vault import file_hashes, privatize, sha256_of, size_of

if TYPE_CHECKING:
    from runner.store import Store


class Hashing:
    # What it uses of the guard it is a base of (checkpoints.guard.CheckpointGuard sets and defines them).
    store: Store
    phase_id: int
    signatures: dict[str, tuple]
    _hashes: queue.Queue[tuple[str, Path]]
    _hasher: threading.Thread | None

    if TYPE_CHECKING:  # not at run time: the guard's own method must not be shadowed
        def _event(self, kind: str, message: str, data: dict | None = None) -> None: ...

    # ------------------------------------------------------------------ hashing, off the vaulting path

    def _hash_later(self, name: str, dst: Path) -> None:
        """sha256 (whole and per file) on a thread of its own: hashing a large checkpoint takes a while and
        must not delay vaulting the next one (the link is what protects it)."""
        self._hashes.put((name, dst))
        if self._hasher is None or not self._hasher.is_alive():
            self._hasher = threading.Thread(target=self._hash_loop, name="checkpoint-hasher", daemon=True)
            self._hasher.start()

    def _hash_loop(self) -> None:
        while True:
            try:
                name, dst = self._hashes.get(timeout=2.0)
            except queue.Empty:
                return
            try:
                self._record_hashes(name, dst)
            except Exception as exc:  # vanished from the vault (pruned), disk error: recorded, never fatal
                self._event("checkpoint.error", f"hashing {name} failed: {type(exc).__name__}: {exc}")
            finally:
                self._hashes.task_done()

    def _record_hashes(self, name: str, dst: Path) -> None:
        sig = self.signatures.get(name, ())
        expect = {(rel if dst.is_dir() else dst.name): (size, mtime) for rel, size, mtime in sig}
        overwritten = privatize(dst, expect)  # the vault's own inode: the trainer can no longer change it
        if overwritten:
            self._event("checkpoint.rewritten", f"{name}: the trainer wrote {', '.join(overwritten[:4])} again before the "
                        "vault's private copy was made; the vault holds the newer bytes", {"files": overwritten})
        files = file_hashes(dst)
        self.store.checkpoint_update(self.phase_id, name, sha256=sha256_of(dst), size=size_of(dst),
                                     files_json=json.dumps(files))

    def wait_hashed(self) -> None:
        """Every vaulted checkpoint's sha256 recorded (the phase's end, before its outputs are handed on)."""
        if self._hasher is not None and self._hasher.is_alive():
            self._hashes.join()
        while not self._hashes.empty():  # the thread had ended: hash what is left here
            name, dst = self._hashes.get()
            try:
                self._record_hashes(name, dst)
            except Exception as exc:
                self._event("checkpoint.error", f"hashing {name} failed: {type(exc).__name__}: {exc}")
            self._hashes.task_done()
