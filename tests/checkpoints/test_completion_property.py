"""Property (issue 24): for any interleaving of file writes (whole or half), renames, deletions and the passing of
time in a checkpoint folder, what the guard records complete equals what was complete on disk at that moment.

Real files in a temporary folder, a real store and the real guard, scanned after every step (its thread not
started: the scans are the ones a tick or an event would make) with a clock the test drives.  The oracle is
the rule table of checkpoints.layouts written out again for this vocabulary, over what the test knows it wrote
(which files are whole), not over the guard's format checks:

* a Hugging Face Trainer folder (training_args.bin or trainer_state.json, or optimizer.pt beside the weights):
  trainer_state.json, config.json, model.safetensors and every torch file whole;
* a Hugging Face model folder (model.safetensors, no Trainer file): config.json and the weights whole, and the
  listing unchanged for settle;
* a DeepSpeed folder: ``latest`` names it or a later step, its model states and every torch file whole;
* anything else: the listing unchanged for settle, every weight file whole, at least one file.
"""
import io
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from runner.checkpoints.guard import CheckpointGuard
from runner.spec.watch_models import Checkpoints
from runner.store import Store
from tests.checkpoints.test_guard import safetensors_bytes

SETTLE = 2.0
KINDS = {
    "hf": ("config.json", "model.safetensors", "training_args.bin", "optimizer.pt", "trainer_state.json"),
    "ds": ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"),
    "unknown": ("a.dat", "b.dat", "model.pt"),
}
CHECKED = (".pt", ".bin", ".safetensors")  # whole-ness a format check can see
VAULTED = ("kept", "best")


def content(name: str, n: int) -> bytes:
    """The whole bytes of version ``n`` of a file."""
    if name.endswith(".json"):
        return json.dumps({"global_step": n, "pad": "x" * (n % 7)}).encode()
    if name.endswith(".safetensors"):
        return safetensors_bytes(4 + n % 5)
    if name.endswith((".pt", ".bin")):
        buf = io.BytesIO()
        torch.save({"v": n}, buf)
        return buf.getvalue()
    return b"d" * (10 + n)


op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 2), st.integers(0, 4), st.booleans()),  # folder, file, whole?
    st.tuples(st.just("atomic"), st.integers(0, 2), st.integers(0, 4)),  # temp name, then rename into place
    st.tuples(st.just("delete"), st.integers(0, 2), st.integers(0, 4)),
    st.tuples(st.just("rmtree"), st.integers(0, 2)),
    st.tuples(st.just("publish"), st.integers(0, 2)),  # a whole folder renamed into place
    st.tuples(st.just("latest"), st.integers(0, 2)),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 1.0, 1.5, 2.5])),
)


class World:
    """The trainer's folder as the test wrote it, and the oracle."""

    def __init__(self, root: Path, kinds: list[str]):
        self.root = root
        self.kinds = kinds
        self.generation = [0, 0, 0]  # a removed folder's name is never used again: the next one gets a new step
        self.whole: dict[str, dict[str, bool]] = {}  # folder name → file → written whole?
        self.written: dict[tuple[str, str], set[bytes]] = {}  # every whole version ever written
        self.listing: dict[str, tuple] = {}
        self.changed_at: dict[str, float] = {}
        self.n = 0
        self.clock = 1000.0

    def name(self, i: int) -> str:
        return f"ckpt-{(self.generation[i] * 3 + i + 1) * 10}"

    def step(self, name: str) -> int:
        return int(name.split("-")[1])

    def file(self, i: int, j: int) -> str:
        files = KINDS[self.kinds[i]]
        return files[j % len(files)]

    def put(self, path: Path, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)

    def apply(self, o: tuple) -> None:
        self.n += 1
        kind = o[0]
        if kind == "tick":
            self.clock += o[1]
            return
        if kind == "latest":
            self.put(self.root / "latest", self.name(o[1]).encode())
            return
        i = o[1]
        name = self.name(i)
        d = self.root / name
        if kind == "rmtree":
            if d.exists():
                shutil.rmtree(d)
                self.whole.pop(name, None)
                self.generation[i] += 1
            return
        if kind == "publish":
            if d.exists():
                return
            stage = self.root / f".stage-{name}"
            stage.mkdir()
            for f in KINDS[self.kinds[i]]:
                data = content(f, self.n)
                self.put(stage / f, data)
                self.written.setdefault((name, f), set()).add(data)
            os.rename(stage, d)
            self.whole[name] = {f: True for f in KINDS[self.kinds[i]]}
            return
        f = self.file(i, o[2])
        if kind == "delete":
            if (d / f).exists():
                (d / f).unlink()
                self.whole[name].pop(f, None)
            return
        d.mkdir(exist_ok=True)
        self.whole.setdefault(name, {})
        data = content(f, self.n)
        self.written.setdefault((name, f), set()).add(data)
        if kind == "atomic":
            tmp = self.root / ".tmp"
            self.put(tmp, data)
            os.rename(tmp, d / f)
            self.whole[name][f] = True
        else:
            whole = o[3]
            self.put(d / f, data if whole else data[: len(data) // 2])
            self.whole[name][f] = whole

    def observe(self) -> None:
        """What changed since the last step: a folder's listing (names, sizes, mtimes), as stat sees it."""
        for name in self.whole:
            d = self.root / name
            now = tuple(sorted((f, (d / f).stat().st_size, (d / f).stat().st_mtime_ns) for f in os.listdir(d)))
            if self.listing.get(name) != now:
                self.listing[name] = now
                self.changed_at[name] = self.clock

    def complete(self, name: str) -> bool:
        files = self.whole[name]
        names = set(files)

        def whole(f: str) -> bool:
            return files.get(f, False)

        torch_whole = all(whole(f) for f in names if f.endswith(CHECKED))
        stable = self.clock - self.changed_at[name] >= SETTLE
        trainer = bool(names & {"training_args.bin", "trainer_state.json"}) or {"optimizer.pt", "model.safetensors"} <= names
        if trainer:
            return whole("trainer_state.json") and whole("config.json") and whole("model.safetensors") and torch_whole
        if any(f.endswith("_states.pt") for f in names):
            try:
                latest = (self.root / "latest").read_text()
            except FileNotFoundError:
                return False
            return (self.step(latest) >= self.step(name) and whole("mp_rank_00_model_states.pt") and torch_whole)
        if "model.safetensors" in names:
            return stable and whole("config.json") and torch_whole
        return stable and torch_whole and bool(names)  # an empty folder is no checkpoint, however long it stays


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kinds=st.lists(st.sampled_from(sorted(KINDS)), min_size=3, max_size=3),
       ops=st.lists(op, min_size=1, max_size=30))
def test_recorded_complete_equals_complete_on_disk(kinds, ops):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "ckpt"
        root.mkdir()
        world = World(root, kinds)
        store = Store(tmp / "runner.db")
        store.create_run("r", "spec")
        store.add_phase("r", "p", "spec", "x", {})
        spec = Checkpoints.model_validate({"dir": str(root), "pattern": "ckpt-{step}", "settle": SETTLE})
        guard = CheckpointGuard(store, "r", 1, spec, root, tmp / "vault", clock=lambda: world.clock)
        gone: set[str] = set()
        for o in ops:
            before = {c["name"]: c["state"] for c in store.checkpoints(1)}
            names_before = set(world.whole)
            world.apply(o)
            world.observe()
            gone |= names_before - set(world.whole)
            guard.scan()
            guard.wait_hashed()
            rows = {c["name"]: c for c in store.checkpoints(1)}
            for name in world.whole:
                state = rows[name]["state"] if name in rows else None
                was = before.get(name)
                if world.complete(name):
                    assert state in VAULTED, (o, name, state, world.whole[name])
                elif was not in VAULTED:  # never vaulted: recorded incomplete, nothing in the vault
                    assert state == "incomplete", (o, name, state, world.whole[name])
                    assert not os.path.lexists(tmp / "vault" / name)
                if state in VAULTED and was not in VAULTED:  # vaulted now: exactly what was on disk, complete
                    assert world.complete(name), (o, name, world.whole[name])
                    vaulted = tmp / "vault" / name
                    assert sorted(os.listdir(vaulted)) == sorted(os.listdir(root / name))
                    for f in os.listdir(vaulted):
                        assert (vaulted / f).read_bytes() == (root / name / f).read_bytes()
            for name, c in rows.items():
                vaulted = tmp / "vault" / name
                if c["state"] in VAULTED:  # never a half file of a checkable format in the vault, refreshes included
                    for f in os.listdir(vaulted):
                        assert stat.S_ISREG(os.lstat(vaulted / f).st_mode)
                        if f.endswith(CHECKED):
                            assert (vaulted / f).read_bytes() in world.written[(name, f)], (o, name, f)
                if name in gone and c["state"] not in VAULTED:
                    assert c["state"] == "missed", (o, name, c["state"])
