"""`--detach` keeps guarding (issue 22, FAULTS row 38): a detached phase is handed to a background supervisor, or to
the run store's server, never left alone; one supervisor at a time; `runner stop` says *stopping…* until the phase
has really ended.  Real engine, the reference trainer, the CLI as a user runs it."""
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import TEST_LABEL, stop_server, wait_for

TRAINER = "runner-trainer:latest"


def status(cli, run=None):
    out = cli("status", *([run] if run else []), "-o", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def keep_last_1_spec(tmp_path: Path, test_id: str) -> Path:
    """The C2 case: a trainer saving every 40 steps (about every 2 s) and keeping only its last checkpoint."""
    spec = tmp_path / "c2.yaml"
    spec.write_text(f"""\
apiVersion: runner/v1
kind: Phase
name: c2
labels: {{{TEST_LABEL}: "{test_id}"}}
container:
  image: {TRAINER}
  command: [python3, /app/train.py, --max-steps, 100000, --save-every, 40, --keep-last, 1, --log-every, 10,
            --step-delay, 0.04, --logdir, "${{{{ phase.dir }}}}/tb", --output-dir, "${{{{ phase.dir }}}}/ckpt"]
  stop_grace_period: 20s
  mounts:
    - {{source: "${{{{ run.dir }}}}", target: "${{{{ run.dir }}}}", create: true}}
timeout: 10m
metrics:
  tensorboard: {{logdir: "${{{{ phase.dir }}}}/tb", tags: {{text_loss: train/text_loss}}}}
checkpoints:
  dir: "${{{{ phase.dir }}}}/ckpt"
  pattern: "model_step{{step}}.pth"
  keep: {{by: text_loss, mode: min, best: 1000, latest: 1}}
""")
    return spec


def written_by_the_trainer(log: Path) -> set[int]:
    """Every checkpoint step the trainer wrote: each multiple of 40 up to its last step, and its SIGTERM save."""
    text = log.read_text()
    (last,) = re.findall(r"SIGTERM: saved model_step(\d+)\.pth", text)
    return {s for s in range(40, int(last) + 1, 40)} | {int(last)}


def assert_every_checkpoint_vaulted(cli, run_id: str, tmp_path: Path) -> set[int]:
    log = tmp_path / "runs" / run_id / "c2" / "container.log"
    written = written_by_the_trainer(log)
    assert len(written) >= 5, written
    out = cli("checkpoints", run_id, "--all", "-o", "json")
    assert out.returncode == 0, out.stderr
    rows = {c["step"]: c for c in json.loads(out.stdout)["checkpoints"]}
    missing = sorted(written - set(rows))
    assert not missing, f"written but never vaulted: {missing}"
    for step in written:
        c = rows[step]
        assert c["vault_path"] and "/vault/" in c["vault_path"], c
        assert hashlib.sha256(Path(c["vault_path"]).read_bytes()).hexdigest() == c["sha256"], c
    # the trainer kept only its last one (and its SIGTERM save): everything else exists only in the vault
    left = {int(f.stem.split("step")[1]) for f in (tmp_path / "runs" / run_id / "c2" / "ckpt").glob("model_step*.pth")}
    assert left <= set(sorted(written)[-2:]) and len(written) - len(left) >= 4, (left, written)
    return written


def wait_saves(tmp_path: Path, run_id: str, n: int) -> None:
    log = tmp_path / "runs" / run_id / "c2" / "container.log"

    def saved():
        steps = [int(s) for s in re.findall(r"^step (\d+) ", log.read_text() if log.exists() else "", re.M)]
        return steps and max(steps) >= 40 * n

    wait_for(f"{n} checkpoints written", saved, timeout=120, every=0.3)


def test_c2_detach_without_a_server_is_supervised_in_the_background_and_vaults_every_checkpoint(cli, tmp_path,
                                                                                                 test_id):
    spec = keep_last_1_spec(tmp_path, test_id)
    out = cli("apply", str(spec), "--detach", timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1]
    assert "supervised by background (pid" in out.stderr and "supervisor.log" in out.stderr, out.stderr
    p = status(cli, run_id)["phases"][0]
    assert p["status"] == "running" and p["supervisor"].startswith("background (pid "), p
    table = cli("status", env={"COLUMNS": "120"})
    assert "SUPERVISOR" in table.stdout and "background" in table.stdout, table.stdout
    wait_saves(tmp_path, run_id, 5)
    stop = cli("stop", run_id, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert "stopping…" in stop.stderr and "its supervisor, background" in stop.stderr, stop.stderr
    assert f"run {run_id}: phase c2 cancelled" in stop.stdout, stop.stdout
    doc = status(cli, run_id)
    assert doc["phases"][0]["status"] == "cancelled" and doc["phases"][0]["supervisor"] is None
    assert_every_checkpoint_vaulted(cli, run_id, tmp_path)
    sup_log = (tmp_path / "runs" / run_id / "supervisor.log").read_text()
    assert "attached to phase c2" in sup_log and "runner stop: stopping" in sup_log, sup_log[-2000:]


def test_c2_detach_with_a_server_hands_the_phase_to_the_server(cli, tmp_path, test_id):
    (tmp_path / "runs").mkdir()
    log = tmp_path / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(cli.state), "serve", "--gpus", "none"],
                              stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    try:
        wait_for("the server to start", lambda: (tmp_path / "runs" / "server.json").exists()
                 or "serving" in log.read_text(), timeout=60)
        spec = keep_last_1_spec(tmp_path, test_id)
        out = cli("apply", str(spec), "--local", "--detach", timeout=120)
        assert out.returncode == 0, out.stderr + log.read_text()[-2000:]
        run_id = out.stdout.strip().splitlines()[-1]
        assert f"supervised by server (pid {server.pid})" in out.stderr, out.stderr
        assert not (tmp_path / "runs" / run_id / "supervisor.log").exists()  # no second supervisor was started
        p = status(cli, run_id)["phases"][0]
        assert p["supervisor"] == f"server (pid {server.pid})", p
        wait_saves(tmp_path, run_id, 5)
        stop = cli("stop", run_id, timeout=120)
        assert stop.returncode == 0 and f"run {run_id}: phase c2 cancelled" in stop.stdout, stop.stdout + stop.stderr
        assert "its supervisor, server" in stop.stderr, stop.stderr
        assert_every_checkpoint_vaulted(cli, run_id, tmp_path)
    finally:
        stop_server(server)


def test_attach_takes_over_from_the_background_supervisor_and_a_second_supervisor_is_refused(cli, spec_for):
    out = cli("apply", "--detach", spec_for(["sh", "-c", "for i in $(seq 1 600); do echo step $i; sleep 0.5; done"],
                                            container_extra="stop_grace_period: 2s\n"), timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1]
    first = status(cli, run_id)["phases"][0]["supervisor"]
    bg_pid = int(re.search(r"pid (\d+)", first).group(1))
    attach = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(cli.state), "attach", run_id],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("attach to take over", lambda: cli.peek(run_id)["phases"][0]["supervisor"]
                 == f"terminal (pid {attach.pid})", timeout=90)
        wait_for("the background supervisor to end", lambda: not Path(f"/proc/{bg_pid}").exists()
                 or "Z" in Path(f"/proc/{bg_pid}/stat").read_text().split()[2], timeout=30)
        again = cli("attach", run_id, timeout=60)  # a second terminal: refused, never a second supervisor
        assert again.returncode == 1, again.stdout + again.stderr
        assert f"is supervised by terminal (pid {attach.pid}); one supervisor at a time" in again.stderr, again.stderr
        stop = cli("stop", run_id, timeout=60)
        assert stop.returncode == 0 and "cancelled" in stop.stdout, stop.stdout + stop.stderr
        assert attach.wait(timeout=60) == 130  # the terminal that supervised it ends with the cancel
    finally:
        if attach.poll() is None:
            attach.kill()


def test_unsupervised_is_said_loudly_and_attach_background_supervises_it(cli, spec_for):
    out = cli("apply", "--detach", "--unsupervised", spec_for(["sleep", "300"], container_extra="stop_grace_period: 2s\n"),
              timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1]
    assert "UNSUPERVISED" in out.stderr and "checkpoints the trainer deletes meanwhile are lost" in out.stderr
    assert status(cli, run_id)["phases"][0]["supervisor"] == "nobody"
    shown = cli("status", run_id)
    assert "supervised by nobody" in shown.stdout and f"runner attach {run_id}" in shown.stdout, shown.stdout
    bg = cli("attach", "--background", run_id, timeout=60)
    assert bg.returncode == 0 and "supervised by background (pid" in bg.stdout, bg.stdout + bg.stderr
    assert status(cli, run_id)["phases"][0]["supervisor"].startswith("background")
    assert cli("stop", run_id, timeout=60).returncode == 0
    assert status(cli, run_id)["phases"][0]["status"] == "cancelled"


@pytest.mark.parametrize("wait", [True, False])
def test_a_stop_right_after_the_start_says_so_and_waits_for_the_end(cli, spec_for, wait):
    """A trainer that has not installed a SIGTERM handler yet (as the container's PID 1 it ignores SIGTERM): the stop
    waits out the grace period, says *stopping…* meanwhile, and the recorded reason says why it took that long."""
    spec = spec_for(["python3", "-c", "import time; time.sleep(300)"], container_extra="stop_grace_period: 3s\n")
    out = cli("apply", "--detach", spec, timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1]
    began = time.monotonic()
    stop = cli("stop", run_id, *([] if wait else ["--no-wait"]), timeout=120)
    took = time.monotonic() - began
    assert stop.returncode == 0, stop.stderr
    assert "phase p1 stopping…" in stop.stderr and "SIGKILL after 3s grace" in stop.stderr, stop.stderr
    if wait:
        assert took >= 3 and "phase p1 cancelled" in stop.stdout, stop.stdout
        assert status(cli, run_id)["phases"][0]["status"] == "cancelled"  # not said before it is true
    else:
        assert "stopping; `runner status" in stop.stdout and took < 3, (took, stop.stdout)
        wait_for("the phase to be cancelled", lambda: status(cli, run_id)["phases"][0]["status"] == "cancelled",
                 timeout=60)
    reason = status(cli, run_id)["phases"][0]["reason"]
    assert "no exit within 3s of SIGTERM, killed (exit 137)" in reason, reason
    assert "before the trainer installed its SIGTERM handler" in reason, reason
