"""The server's parts: the GPU/CPU scheduler, the mount policy and refused fields, the inbox
(real files and the real watchdog observer), the server lock."""
import dataclasses
import os
import threading
import time

import pytest

from runner.backends.fake import FakeBackend
from runner.server.lock import ServerLock, find_server
from runner.server.server import Server
from runner.errors import GpuUnavailable, SpecError
from runner.plan import build_plan
from runner.decisions.policy import MountPolicy
from runner.server.scheduler import Scheduler, parse_gpus
from runner.spec import load_spec
from runner.store import Store
from tests.conftest import MINIMAL


def plan_with(write_spec, tmp_path, gpus, run_id="r1", name="p1"):
    path = write_spec(MINIMAL.replace("name: p1", f"name: {name}") + f"  gpus: {gpus}\n", name=f"{name}-{run_id}.yaml")
    return build_plan(load_spec(path), {}, run_id, tmp_path / "runs")


# ---------------------------------------------------------------------- scheduler


def test_gpu_phases_get_distinct_ids_and_wait_in_order(write_spec, tmp_path):
    ranks = {"a": (0, 1), "b": (0, 2), "c": (0, 3)}
    s = Scheduler(["0", "1", "2", "3"], 2, rank=lambda r: ranks[r])
    a = s.acquire(1, plan_with(write_spec, tmp_path, 3, "a"))
    assert a.gpus == ("0", "1", "2")
    got = {}

    def wait(pid, run, n):
        got[run] = s.acquire(pid, plan_with(write_spec, tmp_path, n, run))

    tb = threading.Thread(target=wait, args=(2, "b", 2))
    tb.start()
    time.sleep(0.2)
    tc = threading.Thread(target=wait, args=(3, "c", 1))  # 1 GPU is free, but b (older) waits first
    tc.start()
    time.sleep(0.3)
    assert got == {} and s.snapshot()["waiting"] == [2, 3]
    s.release(1)
    tb.join(2)
    tc.join(2)
    assert got["b"].gpus == ("0", "1") and got["c"].gpus == ("2",)


def test_priority_goes_first_and_cpu_slots_are_separate(write_spec, tmp_path):
    ranks = {"low": (0, 1), "high": (-5, 9), "cpu": (0, 0)}
    s = Scheduler(["0"], 1, rank=lambda r: ranks[r])
    held = s.acquire(9, plan_with(write_spec, tmp_path, 1, "low"))
    order = []

    def wait(pid, run):
        s.acquire(pid, plan_with(write_spec, tmp_path, 1, run))
        order.append(run)
        s.release(pid)

    threads = [threading.Thread(target=wait, args=(pid, run)) for pid, run in ((1, "low"), (2, "high"))]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert s.acquire(5, plan_with(write_spec, tmp_path, 0, "cpu")).gpus == 0  # CPU work does not queue behind GPUs
    s.release(held.gpus and 9)
    for t in threads:
        t.join(3)
    assert order == ["high", "low"]


def test_cpu_slots_limit_concurrency_and_stop_unblocks(write_spec, tmp_path):
    s = Scheduler([], 1, rank=lambda r: (0, 0))
    s.acquire(1, plan_with(write_spec, tmp_path, 0, "a"))
    result = []
    t = threading.Thread(target=lambda: result.append(s.acquire(2, plan_with(write_spec, tmp_path, 0, "b"))))
    t.start()
    time.sleep(0.2)
    assert result == []
    s.stop()
    t.join(3)
    assert result == [None]  # shutting down: the phase stays pending


def test_impossible_requests_are_errors(write_spec, tmp_path):
    s = Scheduler(["0", "1"], 1, rank=lambda r: (0, 0))
    with pytest.raises(GpuUnavailable, match="needs 3 GPU"):
        s.acquire(1, plan_with(write_spec, tmp_path, 3))
    with pytest.raises(GpuUnavailable, match="asks for GPU.* 7"):
        s.acquire(1, plan_with(write_spec, tmp_path, "[7]"))
    assert s.acquire(2, plan_with(write_spec, tmp_path, "all")).gpus == ("0", "1")


def test_claim_reserves_devices_of_readopted_phases(write_spec, tmp_path):
    s = Scheduler(["0", "1"], 1, rank=lambda r: (0, 0))
    running = dataclasses.replace(plan_with(write_spec, tmp_path, 1), gpus=("1",))
    s.claim(7, running)
    assert s.acquire(8, plan_with(write_spec, tmp_path, 1, "b")).gpus == ("0",)


def test_parse_gpus():
    assert parse_gpus("0, 2") == (["0", "2"], "configured: GPUs 0,2")
    assert parse_gpus("none")[0] == []
    assert parse_gpus("auto") is None and parse_gpus(None) is None


# ---------------------------------------------------------------------- policy


def test_docker_socket_and_outside_mounts_are_located_errors(write_spec, tmp_path):
    allowed = tmp_path / "runs"
    (allowed / "data").mkdir(parents=True)
    os.symlink("/etc", allowed / "escape")
    policy = MountPolicy.of([allowed])
    spec = write_spec(MINIMAL + f"""\
  mounts:
    - {{source: {allowed}/data, target: /data}}
    - {{source: /var/run/docker.sock, target: /var/run/docker.sock}}
    - {{source: /var/run, target: /host-run}}
    - {{source: {allowed}/../.., target: /up}}
    - {{source: {allowed}/escape, target: /etc2}}
""")
    loaded = load_spec(spec)
    problems = policy.problems(loaded, build_plan(loaded, {}, "r", allowed))
    text = [str(p) for p in problems]
    assert len(problems) == 4, text
    assert text[0].startswith(f"{spec}:9:16: container.mounts[1].source: /var/run/docker.sock")
    assert "is the Docker socket" in text[0] or "contains the Docker socket" in text[0]
    assert "contains the Docker socket" in text[1]
    assert "is outside the folders this server mounts from" in text[2]
    assert "resolves to /etc" in text[3]


def test_privileged_and_host_network_are_refused_with_a_reason(write_spec):
    spec = write_spec(MINIMAL + "  privileged: true\n  network_mode: host\n  cap_add: [SYS_ADMIN]\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    text = str(info.value)
    assert f"{spec}:7:3: container.privileged: 'privileged' is not allowed" in text
    assert "container.network_mode: 'network_mode' is not allowed: host networking" in text
    assert "container.cap_add" in text


# ---------------------------------------------------------------------- inbox


@pytest.fixture
def server(tmp_path):
    runs = tmp_path / "runs"
    library = tmp_path / "specs"
    library.mkdir()
    store = Store(runs / "runner.db")
    srv = Server(store, FakeBackend, runs, runs / "inbox", [library], [], "test", 2,
                 policy=MountPolicy.of([runs, library]), quiet=1.0, say=lambda line: None)
    srv.inbox.start()
    yield srv
    srv.inbox.stop()


def settle(srv, seconds=4.0, want=1):
    """Scan until ``want`` files were settled (or time is up); the outcomes."""
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(out) < want:
        out += srv.inbox.scan(srv._accept)
        time.sleep(0.1)
    return out


def test_every_dropped_file_ends_in_one_recorded_state(server, tmp_path):
    inbox = server.inbox.folder
    (inbox / "good.yaml").write_text(MINIMAL)
    (inbox / "bad.yaml").write_text(MINIMAL + "  gpus: many\n")
    os.symlink(tmp_path / "elsewhere.yaml", inbox / "link.yaml")
    (inbox / "notes.txt").write_text("hello")
    (inbox / "folder").mkdir()
    outcomes = {o.name: o for o in settle(server, want=5)}
    assert {n: o.state for n, o in outcomes.items()} == {
        "good.yaml": "accepted", "bad.yaml": "rejected", "link.yaml": "refused", "notes.txt": "refused", "folder": "refused"}
    run_id = outcomes["good.yaml"].run_id
    accepted = inbox / "accepted" / f"{run_id}-good.yaml"
    assert accepted.read_text() == MINIMAL
    sub = server.store.submission(run_id)
    assert (sub["state"], sub["spec_path"], sub["source"]) == ("queued", str(accepted), "inbox:good.yaml")
    error = (inbox / "rejected" / "bad.yaml.error.txt").read_text()
    assert f"{inbox}/rejected/bad.yaml:8:9: container.gpus:" in error
    assert (inbox / "rejected" / "link.yaml").is_symlink()
    assert "symlinks are refused" in (inbox / "rejected" / "link.yaml.error.txt").read_text()
    assert sorted(os.listdir(inbox)) == ["accepted", "duplicates", "rejected"]
    rows = server.store.intake()
    assert len(rows) == 5 and all(r["moved"] for r in rows)


def test_duplicate_content_is_recorded_not_run_twice(server):
    inbox = server.inbox.folder
    (inbox / "a.yaml").write_text(MINIMAL)
    (first,) = settle(server)
    (inbox / "a.yaml").write_text(MINIMAL)
    (second,) = settle(server)
    assert first.state == "accepted" and second.state == "duplicate"
    assert f"same content as run {first.run_id}" in (inbox / "duplicates" / "a.yaml.duplicate.txt").read_text()
    assert len(server.store.submissions()) == 1
    server.store.set_submission(first.run_id, "done")  # once finished, the same file may run again
    (inbox / "a.yaml").write_text(MINIMAL)
    (third,) = settle(server)
    assert third.state == "accepted"


def test_a_half_written_file_is_not_read_until_its_writer_closes_it(server):
    inbox = server.inbox.folder
    half = MINIMAL[: len(MINIMAL) // 2]
    with open(inbox / "slow.yaml", "w") as f:
        f.write(half)
        f.flush()
        assert settle(server, seconds=2.5) == []  # open for writing: never parsed
        assert "being written" in server.inbox.waiting["slow.yaml"]
        f.write(MINIMAL[len(half):])
    (outcome,) = settle(server)
    assert outcome.state == "accepted"


def test_a_copy_is_taken_once_closed_even_if_its_mode_is_set_afterwards(server, tmp_path):
    import shutil

    source = tmp_path / "src.yaml"
    source.write_text(MINIMAL)
    source.chmod(0o600)
    shutil.copy(source, server.inbox.folder / "copied.yaml")  # copy, close, then chmod
    (outcome,) = settle(server, seconds=3)
    assert outcome.state == "accepted"


def test_a_rename_into_the_inbox_is_taken_at_once(server, tmp_path):
    tmp = server.inbox.folder / ".incoming.yaml.part"
    tmp.write_text(MINIMAL)
    assert settle(server, seconds=1.0) == []  # temporary names are skipped
    os.rename(tmp, server.inbox.folder / "p.yaml")
    (outcome,) = settle(server, seconds=3)
    assert outcome.state == "accepted"


def test_a_copy_of_a_library_spec_runs_as_that_file(server, tmp_path):
    library = server.specs[0]
    (library / "two.yaml").write_text(MINIMAL.replace("name: p1", "name: two"))
    text = MINIMAL + "next:\n  - {when: success, apply: two.yaml}\n"
    (library / "one.yaml").write_text(text)
    (server.inbox.folder / "one.yaml").write_text(text)
    (outcome,) = settle(server)
    assert outcome.state == "accepted" and "runs as that file" in outcome.reason
    assert server.store.submission(outcome.run_id)["spec_path"] == str(library / "one.yaml")
    # An edited copy: its next: spec is looked up beside the accepted file, and missing there.
    (server.inbox.folder / "edited.yaml").write_text(text.replace("print('hi')", "print('ho')"))
    (edited,) = settle(server)
    assert edited.state == "rejected"
    assert f"{server.inbox.folder}/rejected/edited.yaml:9:" in edited.reason
    assert "next[0].apply: two.yaml not found beside the accepted copy" in edited.reason


def test_a_chained_spec_mounting_the_socket_rejects_the_drop(server):
    library = server.specs[0]
    (library / "evil.yaml").write_text(MINIMAL.replace("name: p1", "name: evil")
                                       + "  mounts: [{source: /var/run/docker.sock, target: /s}]\n")
    text = MINIMAL + "next:\n  - {when: success, apply: evil.yaml}\n"
    (library / "one.yaml").write_text(text)
    (server.inbox.folder / "one.yaml").write_text(text)
    (outcome,) = settle(server)
    assert outcome.state == "rejected"
    assert f"{library}/evil.yaml:8:" in outcome.reason and "Docker socket" in outcome.reason


def test_an_interrupted_move_is_finished_on_restart(server):
    inbox = server.inbox.folder
    (inbox / "x.yaml").write_text("not: a spec\n")
    dest = inbox / "rejected" / "x.yaml"
    server.store.record_intake(name="x.yaml", state="rejected", reason="boom", moved_to=str(dest), source="inbox")
    server.inbox.recover()  # as on the next start
    assert dest.exists() and not (inbox / "x.yaml").exists()
    assert (inbox / "rejected" / "x.yaml.error.txt").read_text() == "rejected: boom\n"
    assert server.store.intake(unmoved=True) == []


def test_one_server_per_run_store(tmp_path):
    first, second = ServerLock(tmp_path), ServerLock(tmp_path)
    assert find_server(tmp_path) is None
    assert first.acquire()
    assert find_server(tmp_path) is not None
    assert not second.acquire(wait_s=0.3)
    first.release()
    assert second.acquire(wait_s=0.3)
    second.release()


def test_queue_lists_waiting_work_in_start_order(tmp_path, write_spec, capsys):
    import json

    from runner.cli import main
    from runner.engine import Engine

    store = Store(tmp_path / "runs" / "runner.db")
    engine = Engine(store, FakeBackend(), tmp_path / "runs")
    low = engine.submit(write_spec(MINIMAL, name="low.yaml"), {}, source="inbox:low.yaml")
    high = engine.submit(write_spec(MINIMAL, name="high.yaml"), {}, source="apply-server", priority=5)
    mine = engine.submit(write_spec(MINIMAL, name="fg.yaml"), {}, source="apply", state="started")  # a terminal's own run
    waiting = store.add_phase(low, "p1", "low.yaml", "x", {})
    store.update(waiting, reason="queued: waiting for 2 GPU(s), 1 phase(s) ahead")
    assert main(["--state", str(store.path), "queue", "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["server"] is None
    assert [(r["run"], r["priority"], r["waiting_for"]) for r in doc["queue"]] == [
        (high, 5, "its turn (no phase started yet)"), (low, 0, "queued: waiting for 2 GPU(s), 1 phase(s) ahead")]
    assert mine not in [r["run"] for r in doc["queue"]]
    assert main(["--state", str(store.path), "stop", high]) == 0
    assert "cancelled while queued; nothing will start" in capsys.readouterr().out
    assert store.submission(high)["state"] == "cancelled"
    main(["--state", str(store.path), "queue"])
    assert high not in capsys.readouterr().out


def test_a_missed_checkpoint_is_posted_to_the_webhook(server):
    """`checkpoint.missed` (a checkpoint deleted before it could be vaulted) reaches the webhook, over
    real HTTP on loopback, with the checkpoint's name and step."""
    import http.server
    import json as _json
    import threading

    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(_json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        server.notify = f"http://127.0.0.1:{httpd.server_port}/hook"
        store = server.store
        store.create_run("r1", "spec")
        pid = store.add_phase("r1", "p1", "spec", "x", {})
        store.event("r1", pid, "checkpoint.missed", "MISSED checkpoint-40 (step 40): deleted before it was complete",
                    {"name": "checkpoint-40", "step": 40})
        server._post_notifications()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not received:
            time.sleep(0.05)
        (body,) = [b for b in received if b["event"] == "checkpoint.missed"]
        assert body["run"] == "r1" and body["phase"] == "p1" and body["data"] == {"name": "checkpoint-40", "step": 40}
    finally:
        httpd.shutdown()
