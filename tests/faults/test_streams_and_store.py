"""Rows 50-54, 57 and the smaller cases of issue 19 against the real engine: carriage-return progress, a log
flood with a 30 MB line, a store locked or damaged, an undecodable inbox name, hostile metric names, run-id
prefixes taken literally."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time

from tests.integration.conftest import keep_containers
from tests.faults.conftest import check_invariants, only_run, serve, first_phase, status, wait_for
from tests.faults.test_inbox import drop
from tests.integration.conftest import stop_server

def _serve_inbox(cli, tmp_path):
    """`runner serve` on the store's inbox with an empty spec library, once its inbox is ready: (server, inbox, log)."""
    inbox, library, log = cli.state.parent / "inbox", tmp_path / "library", tmp_path / "serve.log"
    library.mkdir(exist_ok=True)
    server = serve(cli, inbox, library, log)
    wait_for("the inbox", lambda: (inbox / "accepted").is_dir(), timeout=30)
    return server, inbox, log


CR_TRAINER = r"""
import math, sys, time
for step in range(10, 610, 10):
    loss = float('nan') if step >= 300 else 2.0 - step / 1000
    sys.stdout.write(f'\rstep={step}, loss={loss}')
    sys.stdout.flush()
    time.sleep(0.02)
time.sleep(1)
"""
STDOUT_METRICS = r"""
metrics:
  stdout: {step: 'step=(\d+)', patterns: {loss: 'loss=([-+.\deE]+|nan|inf)'}}
  poll_interval: 0.2s
guards:
  - {metric: loss, non_finite: true}
"""


def test_row50_carriage_return_progress_is_parsed_record_by_record_and_nan_trips(cli, spec_for, docker_client):
    spec = spec_for(["python3", "-c", CR_TRAINER], extra=STDOUT_METRICS)
    out = cli("apply", spec, timeout=120)
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
    run = only_run(cli)
    doc = check_invariants(cli, run, docker_client)
    (p,) = doc["phases"]
    assert p["status"] == "failed" and "loss is nan at step 300" in p["reason"], p["reason"]
    con = sqlite3.connect(cli.state)
    steps = [r[0] for r in con.execute("SELECT step FROM metric_points WHERE name = 'loss' ORDER BY step")]
    con.close()
    assert steps[:3] == [10, 20, 30] and len(steps) >= 29  # every \r record, not one point


FLOOD = r"""
import sys
out = sys.stdout.buffer
for i in range(200000):
    out.write(b'flood line %06d ........................................\n' % i)
out.write(b'x' * (30 * 1024 * 1024))
out.write(b'\nstep=1 loss=1.0\n')
out.flush()
"""


def test_row51_a_flood_and_a_30mb_line_without_newline_reach_container_log_bounded(cli, spec_for, docker_client):
    keep_containers(cli.state.parent)  # the ended container is looked at after the phase
    spec = spec_for(["python3", "-c", FLOOD])
    out = cli("apply", spec, timeout=300, env={"RUNNER_LOG_MAX_BYTES": str(24 * 1024 * 1024)})
    assert out.returncode == 0, out.stderr[-2000:]
    run = only_run(cli)
    (p,) = status(cli, run)["phases"]
    log = cli.state.parent / run / "p1" / "container.log"
    older = log.with_name("container.log.1")
    assert log.stat().st_size <= 24 * 1024 * 1024 and older.stat().st_size <= 24 * 1024 * 1024  # rotated at the cap
    tail = log.read_bytes()
    assert tail.endswith(b"step=1 loss=1.0\n")  # complete to the end
    pieces = tail.split(b"\n")
    assert max(len(x) for x in pieces) <= 1024 * 1024  # the 30 MB record cut into 1 MiB lines
    assert sum(len(x) for x in pieces if set(x) == {ord("x")}) + older.read_bytes().count(b"x") >= 30 * 1024 * 1024 - 2 ** 21
    (c,) = docker_client.containers.list(all=True, ignore_removed=True, filters={"label": f"runner.run-id={run}"})
    assert c.attrs["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "2", "max-size": "100m"}}


def test_row52_a_store_locked_for_45s_is_waited_out_and_the_phase_judged(cli, spec_for, docker_client):
    spec = spec_for(["sh", "-c", "sleep 10; echo done"])
    cli.state.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(cli.state), "apply", spec],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for("the phase to run", lambda: first_phase(cli).get("status") == "running", timeout=60)
    locked = threading.Event()

    def hold():
        con = sqlite3.connect(cli.state, timeout=60, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(45)
        con.execute("COMMIT")
        con.close()

    t = threading.Thread(target=hold)
    t.start()
    locked.wait(30)
    try:
        _out, err = proc.communicate(timeout=240)
    finally:
        t.join()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "locked by another process; waiting" in err
    doc = check_invariants(cli, only_run(cli), docker_client)
    assert doc["phases"][0]["status"] == "succeeded"


def test_row53_a_damaged_store_is_refused_for_writes_and_status_still_reads(cli, spec_for):
    out = cli("apply", spec_for(["true"]), timeout=120)
    assert out.returncode == 0, out.stderr
    size = cli.state.stat().st_size
    with open(cli.state, "r+b") as f:  # 8 KiB of random bytes into the middle of the file
        f.seek(max(4096, size // 2))
        f.write(os.urandom(8192))
    before = cli.state.read_bytes()
    out = cli("apply", spec_for(["true"], name="p2"), timeout=60)
    assert out.returncode != 0 and "damaged" in out.stderr and "quick_check" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert cli.state.read_bytes() == before  # nothing written into it
    out = cli("status", timeout=60)
    assert "Traceback" not in out.stderr


def test_row54_an_undecodable_inbox_name_is_rejected_and_the_others_run(cli, tmp_path, spec_for, docker_client):
    server, inbox, log = _serve_inbox(cli, tmp_path)
    try:
        bad = os.path.join(os.fsencode(inbox), b"bad-\xff\xfe.yaml")
        with open(bad, "wb") as f:
            f.write(open(spec_for(["true"], name="bad"), "rb").read())
        drop(inbox, "good.yaml", open(spec_for(["true"], name="good")).read())
        wait_for("the good drop accepted", lambda: any((inbox / "accepted").iterdir()), timeout=60)
        rejected = sorted(os.listdir(inbox / "rejected"))
        assert any(n.startswith("bad-") and n.endswith(".yaml") for n in rejected), rejected
        assert any(n.endswith(".error.txt") and "not valid UTF-8" in (inbox / "rejected" / n).read_text() for n in rejected)
        run = only_run(cli)
        wait_for("the good run to end", lambda: first_phase(cli, run).get("status") == "succeeded", timeout=120)
        assert server.poll() is None, log.read_text()[-2000:]
    finally:
        stop_server(server)


def test_row57_hostile_metric_names_render_literally(cli, spec_for, tmp_path):
    trainer = "import sys\nfor s in range(1, 30):\n    print(f'step {s} v {1.0/s}', flush=True)\n"
    extra = ("metrics:\n  stdout: {step: 'step (\\d+)', patterns: {'$\\foo$': 'v ([-+.\\deE]+)', "
             "'<script>alert(1)</script>': 'v ([-+.\\deE]+)'}}\n")
    out = cli("apply", spec_for(["python3", "-c", trainer], extra=extra), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    run = only_run(cli)
    report = tmp_path / "report.html"
    out = cli("report", run, "--output", str(report), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    html = report.read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


def test_run_id_prefixes_are_literal_not_like_patterns(cli, spec_for):
    out = cli("apply", spec_for(["true"]), timeout=120)
    assert out.returncode == 0, out.stderr
    run = only_run(cli)
    wild = run[:-2] + "_" + run[-1]
    out = cli("status", wild)
    assert out.returncode == 1 and "no run" in out.stderr, (out.returncode, out.stderr)
    out = cli("status", run[:-1])
    assert out.returncode == 0


def test_row52_a_restarted_server_drives_every_owned_active_phase_whatever_its_submission_says(cli, tmp_path, spec_for,
                                                                                             docker_client):
    # The server's thread for a run ended on an error (the store locked too long) and marked it done while its
    # phase ran on: a restarted server must still re-adopt and judge the phase.
    server, inbox, log = _serve_inbox(cli, tmp_path)
    try:
        drop(inbox, "a.yaml", open(spec_for(["sh", "-c", "sleep 12; echo done"])).read())
        wait_for("the phase running", lambda: first_phase(cli).get("status") == "running", timeout=60)
    finally:
        server.kill()  # as SIGKILL: no goodbye
        server.wait()
    run = only_run(cli)
    con = sqlite3.connect(cli.state, timeout=30)
    with con:
        con.execute("UPDATE submissions SET state = 'done' WHERE run_id = ?",
                    (run,))
    con.close()
    server = serve(cli, inbox, tmp_path / "library", log)
    try:
        wait_for("the phase judged", lambda: first_phase(cli, run).get("status") == "succeeded", timeout=120)
    finally:
        stop_server(server)
    check_invariants(cli, run, docker_client)


def test_row53_serve_on_a_damaged_store_stays_up_and_says_why_instead_of_crash_looping(cli, spec_for, tmp_path):
    out = cli("apply", spec_for(["true"]), timeout=120)
    assert out.returncode == 0, out.stderr
    size = cli.state.stat().st_size
    with open(cli.state, "r+b") as f:
        f.seek(max(4096, size // 2))
        f.write(os.urandom(8192))
    before = cli.state.read_bytes()
    log = tmp_path / "serve.log"
    server = serve(cli, cli.state.parent / "inbox", tmp_path, log)
    try:
        wait_for("the server's message", lambda: "damaged" in log.read_text(errors="replace"), timeout=30)
        time.sleep(2)
        assert server.poll() is None  # up, not exited (no crash loop under a restart policy)
    finally:
        stop_server(server)
    assert server.returncode == 0
    assert cli.state.read_bytes() == before and "Traceback" not in log.read_text(errors="replace")


def test_a_second_server_of_another_store_refuses_an_inbox_already_served(cli, tmp_path):
    inbox = tmp_path / "shared-inbox"
    log = tmp_path / "serve1.log"
    first = serve(cli, inbox, tmp_path, log)
    try:
        wait_for("the first server's inbox", lambda: (inbox / "accepted").is_dir(), timeout=30)
        other = subprocess.run([sys.executable, "-m", "runner.cli", "--state", str(tmp_path / "other" / "runner.db"),
                                "serve", "--inbox", str(inbox), "--specs", str(tmp_path), "--gpus", "none"],
                               capture_output=True, text=True, timeout=60)
        assert other.returncode == 1 and "served by another" in other.stderr, (other.returncode, other.stderr)
        assert first.poll() is None
    finally:
        stop_server(first)


RESTARTING_WRITER = r"""
import time
from torch.utils.tensorboard import SummaryWriter
w = SummaryWriter('/run/p1/tb')
for s in range(1, 201):
    w.add_scalar('train/text_loss', 1.49, s)
w.close()
time.sleep(1.2)  # event file names carry their creation second
w = SummaryWriter('/run/p1/tb')   # a new writer in the same logdir starts again at step 1
for s in range(1, 51):
    w.add_scalar('train/text_loss', 3.5, s)
w.close()
time.sleep(2)
"""
TB_JUDGED = """
metrics:
  tensorboard: {logdir: "${{ phase.dir }}/tb", tags: {text_loss: train/text_loss}}
  poll_interval: 0.5s
success:
  all:
    - {metric: text_loss, window: last 20 steps, reduce: mean, below: 2.0}
"""
MOUNT_RUN = 'mounts: [{source: "${{ run.dir }}", target: /run, create: true}]\n'


def test_row55_an_event_file_restarted_by_a_new_writer_is_judged_on_the_newest_writers_steps(cli, spec_for,
                                                                                            docker_client):
    spec = spec_for(["python3", "-c", RESTARTING_WRITER], container_extra=MOUNT_RUN, extra=TB_JUDGED)
    out = cli("apply", spec, timeout=180)
    run = only_run(cli)
    doc = check_invariants(cli, run, docker_client)
    (p,) = doc["phases"]
    # The abandoned run's last steps (151-200, 1.49) would pass; the live run (3.5) does not.
    assert p["status"] == "failed" and out.returncode == 1, (p["status"], p["explanation"])
    assert "3.5" in p["explanation"], p["explanation"]
    assert any(e["kind"] == "metrics.restarted" for e in doc["events"])


SPARSE_TRAINER = r"""
import os, time
from torch.utils.tensorboard import SummaryWriter
w = SummaryWriter('/run/p1/tb')
for s in range(1, 51):
    w.add_scalar('train/text_loss', 1.0, s)
w.flush()
with open('/run/p1/tb/events.out.tfevents.9999999999.host.1.0', 'wb') as f:
    f.truncate(1024 ** 3)   # a 1 GiB sparse event file
time.sleep(3)
w.close()
"""


def test_row56_a_huge_sparse_event_file_is_read_with_bounded_memory(cli, spec_for, docker_client):
    spec = spec_for(["python3", "-c", SPARSE_TRAINER], container_extra=MOUNT_RUN, extra=TB_JUDGED)
    # `runner apply` as the only child of a fresh process, which then reports its child's peak RSS
    measure = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "runner.cli", "--state", str(cli.state),
                          "apply", spec], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    peak_mb = int(out.stdout.strip().splitlines()[-1])
    assert peak_mb < 400, peak_mb  # the runner process whole (Python, numpy, the engine) — not the 1 GiB file
    run = only_run(cli)
    doc = check_invariants(cli, run, docker_client)
    assert any(e["kind"] == "metrics.problem" and "corrupt record header" in e["message"] for e in doc["events"])
