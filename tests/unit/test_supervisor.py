"""One supervisor per run (runner.supervisor): the lock, who holds it, and the engine refusing a second one."""
import os
import subprocess
import sys

import pytest

from runner.backends.fake import FakeBackend, Script
from runner.engine import Engine, QuietReporter
from runner.errors import Refused
from runner.store import Store
from runner.supervisor import Role, SupervisorLock, holder
from tests.conftest import MINIMAL


def test_the_holder_is_named_and_the_lock_goes_with_the_process(tmp_path):
    assert holder(tmp_path, "r1") is None  # never supervised: no file, nobody
    lock = SupervisorLock(tmp_path, "r1", Role.BACKGROUND)
    assert lock.acquire() is None
    h = holder(tmp_path, "r1")
    assert (h.role, h.pid) == ("background", os.getpid())
    other = SupervisorLock(tmp_path, "r1", Role.TERMINAL).acquire()  # a second supervisor, same or other process
    assert other is not None and other.role == "background"
    lock.release()
    assert holder(tmp_path, "r1") is None
    # held by a process that is killed: the kernel releases it, nothing stale is left to clean up
    code = ("import sys, time; from runner.supervisor import SupervisorLock; "
            f"SupervisorLock({str(tmp_path)!r}, 'r2', 'server').acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert holder(tmp_path, "r2").pid == proc.pid
    finally:
        proc.kill()
        proc.wait()
    assert holder(tmp_path, "r2") is None


def test_a_symlinked_lock_file_is_never_followed(tmp_path):
    (tmp_path / "r3").mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    (tmp_path / "r3" / "supervisor.lock").symlink_to(target)
    with pytest.raises(OSError):
        SupervisorLock(tmp_path, "r3", Role.TERMINAL).acquire()
    assert target.read_text() == "keep me"


def test_the_engine_refuses_to_drive_a_run_another_process_supervises(tmp_path, write_spec):
    store = Store(tmp_path / "runs" / "runner.db")
    backend = FakeBackend(script={"p1": Script(lines=["step 1"], exit_code=0)})
    engine = Engine(store, backend, tmp_path / "runs", QuietReporter(), poll_s=0.001)
    run_id = engine.submit(write_spec(MINIMAL), {}, source="apply", state="started")
    other = SupervisorLock(tmp_path / "runs", run_id, Role.SERVER)
    assert other.acquire() is None
    try:
        with pytest.raises(Refused, match=f"run {run_id} is supervised by server .*one supervisor at a time"):
            engine.drive(run_id)
        assert [p["status"] for p in store.phases(run_id)] in ([], ["pending"])  # nothing launched
    finally:
        other.release()
    assert engine.drive(run_id).last.status == "succeeded"
    assert holder(tmp_path / "runs", run_id) is None  # released when the drive ends


def test_a_fifo_or_link_put_in_the_run_folder_never_blocks_or_reads_as_nobody(tmp_path):
    """The run folder is mounted into containers: a FIFO or a symlink at the lock's path never blocks `runner status`
    and is never taken for "nobody supervises" (which would let status judge a phase under a live supervisor)."""
    (tmp_path / "r4").mkdir()
    os.mkfifo(tmp_path / "r4" / "supervisor.lock")
    assert holder(tmp_path, "r4").role == "unknown"  # returned at once, not blocked on the FIFO
    with pytest.raises(OSError, match="not a regular file"):
        SupervisorLock(tmp_path, "r4", Role.TERMINAL).acquire()
    (tmp_path / "r5").mkdir()
    (tmp_path / "r5" / "supervisor.lock").symlink_to(tmp_path / "nowhere")
    assert holder(tmp_path, "r5").role == "unknown"


def test_the_background_supervisors_log_is_never_a_link_put_there(tmp_path):
    from runner.handover import spawn

    target = tmp_path / "precious"
    target.write_text("keep me")
    (tmp_path / "RUN").mkdir()
    (tmp_path / "RUN" / "supervisor.log").symlink_to(target)
    with pytest.raises(OSError):
        spawn(tmp_path / "runner.db", ["status"], tmp_path / "RUN" / "supervisor.log")
    assert target.read_text() == "keep me"


def test_attach_never_signals_a_pid_a_container_wrote_into_the_lock(tmp_path, write_spec):
    """A container with the run folder mounted can hold the lock itself and name any pid (here: this test's own);
    attach signals only a process that is this run's background supervisor."""
    import fcntl
    import json
    import socket

    from rich.console import Console

    from runner.cli._foreground import take_over

    store = Store(tmp_path / "runs" / "runner.db")
    engine = Engine(store, FakeBackend(), tmp_path / "runs", QuietReporter(), poll_s=0.001)
    lock = tmp_path / "runs" / "r9" / "supervisor.lock"
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"role": "background", "pid": os.getpid(), "host": socket.gethostname(),
                             "since": 0}).encode())
    try:
        assert holder(tmp_path / "runs", "r9").pid == os.getpid()
        assert take_over(engine, "r9", Console(file=open(os.devnull, "w"))) == 0.0  # no SIGTERM sent: we are alive
    finally:
        os.close(fd)
