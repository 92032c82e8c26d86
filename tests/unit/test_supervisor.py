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
