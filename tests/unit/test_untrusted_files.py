"""The pure parts that keep a container's files from reaching runner: the launch policy on stored plans,
the line splitter (\\r records, capped lines), container.log (no symlink followed, rotation), and the
folder walker (symlinks, FIFOs, hard links, renames) — the last one property-tested."""
from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from runner.checkpoints import vault as vault_mod
from runner.checkpoints.vault import privatize, protect, refresh, remove_temporaries, sha256_of
from runner import logfile
from runner.logfile import ContainerLog, LineSplitter
from runner.plan import BindMount, LaunchPlan
from runner.decisions.policy import MountPolicy, StatePaths, launch_problems
from runner.safefs import Untrusted, open_regular, walk_files


def plan(tmp_path: Path, *mounts: BindMount, labels=None, shm=None) -> LaunchPlan:
    return LaunchPlan(run_id="r1", phase="p", container_name="runner-r1-p", image="img", command=("true",), env={},
                      mounts=tuple(mounts), workdir=None, gpus=0, shm_size=shm, memory=None, cpus=None, user=None,
                      labels=labels or {"runner.run-id": "r1"}, stop_grace=10, timeout=None,
                      phase_dir=str(tmp_path / "runs" / "r1" / "p"))


def test_launch_problems_refuse_runner_state_whatever_the_stored_plan_says(tmp_path):
    runs = tmp_path / "runs"
    (runs / "r1").mkdir(parents=True)
    state = StatePaths.of(runs, tmp_path / "inbox")
    ok = [BindMount(str(runs / "r1"), "/run"), BindMount(str(runs / "vault" / "r1"), "/v", read_only=True),
          BindMount(str(tmp_path / "data"), "/data")]
    assert launch_problems(plan(tmp_path, *ok), state, None) == []
    bad = {"/": "run store", str(tmp_path): "run store", str(runs): "run store", str(runs / "runner.db"): "own state",
           str(runs / "vault" / "r1"): "read-only", str(runs / ".server"): "own state",
           str(tmp_path / "inbox"): "inbox", str(tmp_path / "inbox" / "accepted"): "inbox"}
    for source, word in bad.items():
        (problem,) = launch_problems(plan(tmp_path, BindMount(source, "/x")), state, None)
        assert word in problem and source in problem, (source, problem)
    # a symlink inside an allowed folder that points at the store is judged by where it leads
    os.symlink(runs, runs / "r1" / "sneaky")
    (problem,) = launch_problems(plan(tmp_path, BindMount(str(runs / "r1" / "sneaky"), "/x")), state, None)
    assert "resolves to" in problem
    # the server's roots apply to stored plans too; reserved labels; shm beyond the host's memory
    policy = MountPolicy.of([runs])
    (problem,) = launch_problems(plan(tmp_path, BindMount(str(tmp_path / "data"), "/d")), state, policy)
    assert "outside the folders" in problem
    labels = {"runner.run-id": "r1", "com.docker.compose.project": "x", "runner.evil": "1"}
    (problem,) = launch_problems(plan(tmp_path, labels=labels), state, None)
    assert "com.docker.compose.project" in problem and "runner.evil" in problem
    (problem,) = launch_problems(plan(tmp_path, shm=2 ** 50), state, None, host_memory=2 ** 34)
    assert "shm_size" in problem


def test_the_planned_request_mounts_the_runs_vault_read_only(tmp_path):
    from runner.plan import build_plan
    from runner.spec import load_spec

    spec = tmp_path / "s.yaml"
    spec.write_text("apiVersion: runner/v1\nkind: Phase\nname: p\ncontainer:\n  image: i\n  command: [x]\n")
    p = build_plan(load_spec(spec), {}, "r9", tmp_path / "runs")
    vault = str(tmp_path / "runs" / "vault" / "r9")
    assert p.mounts == (BindMount(vault, vault, read_only=True, create=True),)


def test_line_splitter_ends_records_at_cr_and_caps_unterminated_lines(monkeypatch):
    s = LineSplitter(max_line=20)
    assert s.feed(b"step=1 loss=2\rstep=2 loss=3\r") == [b"step=1 loss=2"]
    assert s.feed(b"\nstep=3\r\nx") == [b"step=2 loss=3", b"step=3"]
    assert s.feed(b"y" * 45) == [b"x" + b"y" * 19, b"y" * 20]
    assert s.flush() == [b"y" * 6]
    # A 30 MB record in the engine's 16 KiB frames, then its end and one more line: cut into pieces of at most
    # 1 MiB, nothing lost, and linear: only the new bytes are searched for an end of record (searching the held
    # record again at every frame made one such record 9 CPU-seconds of `runner apply`).
    searched = []

    me = threading.get_ident()

    class Counting:  # this test's splitter only (a log pump of an earlier test may still be reading elsewhere)
        def split(self, data):
            if threading.get_ident() == me:
                searched.append(len(data))
            return logfile._SPLIT_RE.split(data)
    monkeypatch.setattr(logfile, "_SPLIT_RE", logfile._SPLIT, raising=False)
    monkeypatch.setattr(logfile, "_SPLIT", Counting())
    s = LineSplitter()
    out = []
    for _ in range(1920):
        out += s.feed(b"z" * 16384)
    out += s.feed(b"z\r")
    out += s.feed(b"\nstep=1 loss=1.0\n")
    out += s.flush()
    assert out[-1] == b"step=1 loss=1.0" and b"".join(out[:-1]) == b"z" * (1920 * 16384 + 1)
    assert max(map(len, out)) <= 1 << 20 and len(out) == 32
    assert sum(searched) <= 1920 * 16384 + 1 + 19 + 1  # every byte fed searched once (and a held \r once more)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"bb", b"\r", b"\n", b"\r\n", b"c" * 7]), max_size=40),
       st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=20), st.integers(min_value=1, max_value=6))
def test_line_splitter_gives_the_records_of_the_whole_stream_however_it_is_cut_into_chunks(tokens, cuts, max_line):
    """Whatever the chunk boundaries (a \r\n split across two chunks included), the records are those of the
    whole stream split at \r\n, \r or \n, each passed on in pieces of at most max_line bytes."""
    data = b"".join(tokens)
    records = re.split(rb"\r\n|\r|\n", data)
    if records and records[-1] == b"":
        records.pop()  # the stream ended with an end of record
    expected = [r[i:i + max_line] for r in records for i in range(0, max(len(r), 1), max_line)]
    s = LineSplitter(max_line=max_line)
    out, at, k = [], 0, 0
    while at < len(data):
        size = cuts[k % len(cuts)]
        out += s.feed(data[at:at + size])
        at, k = at + size, k + 1
    out += s.flush()
    assert out == expected


def test_container_log_never_writes_through_a_planted_symlink_and_rotates(tmp_path):
    target = tmp_path / "host-file"
    target.write_text("keep")
    log = tmp_path / "container.log"
    os.symlink(target, log)
    with ContainerLog(log, max_bytes=100) as out:
        for i in range(30):
            out.write(b"line %02d\n" % i)
    assert target.read_text() == "keep" and not log.is_symlink()
    assert log.stat().st_size <= 100 and (tmp_path / "container.log.1").stat().st_size <= 100
    full = b"".join(b"line %02d\n" % i for i in range(30))
    kept = (tmp_path / "container.log.1").read_bytes() + log.read_bytes()
    assert full.endswith(kept) and kept.endswith(b"line 29\n") and len(kept) > 100  # the newest output, in order


def test_open_regular_refuses_symlinks_fifos_and_sockets_without_blocking(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    os.symlink(tmp_path / "f", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    assert open_regular(tmp_path / "f").read() == b"x"
    for name, kind in (("link", "a symlink"), ("fifo", "a FIFO"), ("sock", "a socket")):
        with pytest.raises(Untrusted) as info:
            open_regular(tmp_path / name)
        assert info.value.kind == kind
    sock.close()


def test_protect_refuses_a_symlink_and_privatize_breaks_the_shared_inode(tmp_path):
    ckpt, vault = tmp_path / "ckpt", tmp_path / "vault"
    ckpt.mkdir()
    (tmp_path / "secret").write_bytes(b"s")
    os.symlink(tmp_path / "secret", ckpt / "model_step1.pth")
    with pytest.raises(Untrusted):
        protect(ckpt / "model_step1.pth", vault)
    assert not os.path.lexists(vault / "model_step1.pth")
    (ckpt / "model_step2.pth").write_bytes(b"v1")
    dst, how = protect(ckpt / "model_step2.pth", vault)
    assert how == "link" and os.stat(dst).st_nlink == 2
    st = os.stat(ckpt / "model_step2.pth")
    assert privatize(dst, {"model_step2.pth": (st.st_size, st.st_mtime_ns)}) == []
    assert os.stat(dst).st_nlink == 1 and os.stat(dst).st_mtime_ns == st.st_mtime_ns
    with open(ckpt / "model_step2.pth", "wb") as f:  # torch.save's open(path, "wb") after vaulting
        f.write(b"v2-rewritten")
    assert dst.read_bytes() == b"v1"


def test_a_vaulted_folder_never_holds_a_half_written_file_while_it_is_privatized_or_refreshed(tmp_path, monkeypatch):
    """A person listing a vaulted folder (kept, best) sees its files and nothing else, even while runner replaces
    the hard links by private copies or brings in a file the trainer wrote later: the copies are written beside
    the folder, hidden, and renamed in; one a crash left is removed by remove_temporaries, nothing else is."""
    ckpt, vault = tmp_path / "ckpt" / "checkpoint-50", tmp_path / "vault"
    ckpt.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.pt"):
        (ckpt / name).write_bytes(name.encode() * 1000)
    dst, how = protect(ckpt, vault)
    assert how == "link"
    seen = []
    real_replace = os.replace

    def replace(src, target):  # every copy renamed into the vault: what the folder held at that moment
        seen.append((Path(src).parent, sorted(os.listdir(dst))))
        return real_replace(src, target)
    monkeypatch.setattr(vault_mod.os, "replace", replace)
    assert privatize(dst) == []
    (ckpt / "trainer_state.json").write_text("{}")  # written last, after the folder was vaulted
    assert refresh(ckpt, dst) == ["trainer_state.json"]
    assert len(seen) == 3
    assert all(parent == vault for parent, _ in seen), seen  # never a temporary inside the folder
    assert all(set(names) <= {"model.safetensors", "optimizer.pt", "trainer_state.json"} for _, names in seen), seen
    assert sorted(os.listdir(dst)) == ["model.safetensors", "optimizer.pt", "trainer_state.json"]
    assert all(os.stat(dst / n).st_nlink == 1 for n in os.listdir(dst))
    assert sorted(os.listdir(vault)) == ["checkpoint-50"]
    # A crash between the copy and its rename leaves a hidden temporary: removed, and only it.
    (vault / f"{vault_mod.TMP_PREFIX}checkpoint-50-0123").write_bytes(b"half")
    (vault / ".keep-me").write_bytes(b"a user's file")
    assert remove_temporaries(vault) == [f"{vault_mod.TMP_PREFIX}checkpoint-50-0123"]
    assert sorted(os.listdir(vault)) == [".keep-me", "checkpoint-50"]


NAMES = st.sampled_from(["a", "b", "c", "d"])
OPS = st.lists(st.tuples(st.sampled_from(["file", "dir", "symlink_out", "symlink_in", "fifo", "hardlink", "rename",
                                          "rmfile"]), NAMES, NAMES), max_size=25)


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_walker_and_vault_never_leave_the_folder_nor_open_special_files(tmp_path_factory, ops):
    base = tmp_path_factory.mktemp("walk")
    root, outside, vault = base / "ckpt", base / "outside", base / "vault"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    cur = root
    for op, a, b in ops:
        p = cur / a
        if op in ("file", "dir", "symlink_out", "symlink_in", "fifo", "hardlink") and os.path.lexists(p):
            continue  # (the test itself must not open a FIFO it made)
        try:
            if op == "file":
                p.write_bytes(a.encode() * 3)
            elif op == "dir":
                p.mkdir()
                cur = p
            elif op == "symlink_out":
                os.symlink(outside, p)
            elif op == "symlink_in":
                os.symlink(root, p)
            elif op == "fifo":
                os.mkfifo(p)
            elif op == "hardlink":
                os.link(outside / "secret", p)  # a hard link is a regular file: its bytes are the trainer's to give
            elif op == "rename":
                os.rename(p, cur / b)
            elif op == "rmfile":
                p.unlink()
        except OSError:
            continue
    files, skipped = walk_files(root)
    for rel, info in files:
        assert not os.path.islink(root / rel) and os.path.isfile(root / rel)
        assert not any(os.path.islink(root.joinpath(*Path(rel).parts[:i])) for i in range(1, len(Path(rel).parts)))
    for s in skipped:
        assert s.kind in ("a symlink", "a FIFO")
    wrapper = base / "model"
    os.rename(root, wrapper)
    dst, _how = protect(wrapper, vault)
    sha256_of(dst)  # never blocks, never follows
    privatize(dst)
    for rel, info in walk_files(dst)[0]:
        assert info.st_nlink == 1  # nothing in the vault shares an inode with the trainer's folder or the host
    for dirpath, dirnames, filenames in os.walk(dst):
        for n in dirnames + filenames:
            assert not os.path.islink(os.path.join(dirpath, n))
    assert (outside / "secret").read_bytes() == b"secret"
