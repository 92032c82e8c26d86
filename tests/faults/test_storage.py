"""Rows 14, 15 and 38: full disks under the checkpoints and the store; a phase that ended unwatched."""
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.faults.conftest import TRAINER_IMAGE, check_invariants, only_run, run_containers, status, wait_for


@pytest.fixture
def small_fs(tmp_path):
    """Mount a small tmpfs (a full disk on demand); unmounted afterwards.  Needs root, as CI has."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> None:
    """Write zeros until the file system is full."""
    with open(path / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def checkpoints(cli, run, phase):
    out = cli("checkpoints", run, phase, "--output", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["checkpoints"]


def test_row14_checkpoint_volume_full_fails_loudly_and_keeps_the_best(cli, spec_for, docker_client, tmp_path, small_fs):
    """The trainer's checkpoint folder is a 3 MB tmpfs: saves fail once it is full.  runner deletes nothing of the
    trainer's to make room, the phase fails with the trainer's error, and the best vaulted checkpoint is intact."""
    ckpt = small_fs(tmp_path / "ckptfs", "3m")
    spec = spec_for(["python3", "/app/train.py", "--max-steps", "400", "--save-every", "20", "--step-delay", "0.01",
                     "--logdir", "${{ phase.dir }}/tb", "--output-dir", str(ckpt)],
                    name="ckfull", image=TRAINER_IMAGE,
                    container_extra=('stop_grace_period: 2s\nmounts:\n'
                                     '  - {source: "${{ phase.dir }}", target: "${{ phase.dir }}", create: true}\n'
                                     f'  - {{source: "{ckpt}", target: "{ckpt}"}}\n'),
                    extra=("timeout: 3m\nmetrics:\n  tensorboard: {logdir: \"${{ phase.dir }}/tb\", tags: {text_loss: train/text_loss}}\n"
                           f"checkpoints:\n  dir: {ckpt}\n  pattern: \"model_step{{step}}.pth\"\n"
                           "  keep: {by: text_loss, mode: min, best: 1, latest: 1}\n"))
    out = cli("apply", spec, timeout=240)
    run = only_run(cli)
    doc = check_invariants(cli, run, docker_client)
    (p,) = doc["phases"]
    assert out.returncode != 0 and p["status"] == "failed" and p["exit_code"] not in (0, None), p  # loudly
    written = sorted(ckpt.glob("model_step*.pth"))
    assert written, "the trainer saved nothing before the disk filled"
    cks = checkpoints(cli, run, "ckfull")
    vaulted = {c["step"]: c for c in cks if c["vault_path"]}
    for f in written:  # runner deleted none of the trainer's files to make room, and vaulted the complete ones
        step = int(f.stem.split("step")[1])
        if step in vaulted:
            assert hashlib.sha256(f.read_bytes()).hexdigest() == vaulted[step]["sha256"]
    (best,) = [c for c in cks if c["state"] == "best"]
    assert hashlib.sha256(Path(best["vault_path"]).read_bytes()).hexdigest() == best["sha256"]
    assert p["outputs"]["best_checkpoint"] == best["vault_path"]
    assert not list((cli.state.parent / run).rglob("*.vaulting"))


def test_row15_state_db_volume_full_is_a_clear_error_and_status_still_reads(cli, spec_for, docker_client, tmp_path,
                                                                           small_fs):
    small_fs(cli.state.parent, "2m")
    spec = spec_for(["sh", "-c", "echo hi"])
    out = cli("apply", spec, timeout=60)
    assert out.returncode == 0, out.stderr
    run = only_run(cli)
    fill(cli.state.parent)
    out = cli("apply", spec, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert any(w in out.stderr.lower() for w in ("full", "no space")), out.stderr
    read = cli("status", "--output", "json")
    assert read.returncode == 0, read.stderr  # degraded read-only: what was recorded still reads
    assert run in [r["id"] for r in json.loads(read.stdout)["runs"]]
    (cli.state.parent / "filler").unlink()
    check_invariants(cli, run, docker_client)


def test_row38_status_after_an_unwatched_end_vaults_what_the_trainer_left(cli, tmp_path, docker_client):
    """`apply --detach`; the keep-last-2 trainer runs to its end while nobody watches; `runner status` judges the
    phase, and every checkpoint the trainer left is vaulted (complete = loads), the best a vault path."""
    spec = REPO / "specs/demo/checkpoint-guard.yaml"
    out = cli("apply", str(spec), "--detach", "--unsupervised", "--input", "max_steps=100")
    assert out.returncode == 0, out.stderr
    run = only_run(cli)
    (container,) = run_containers(docker_client, run)

    def ended():
        container.reload()
        return container.status == "exited"

    wait_for("the trainer to finish unwatched", ended, timeout=120)
    doc = status(cli, run)  # the first status after the end judges it
    p = doc["phases"][0]
    assert p["status"] == "succeeded", p
    try:
        left = sorted((tmp_path / "runs" / run / "demo-keep-best" / "ckpt").glob("model_step*.pth"))
        assert left
        cks = {c["step"]: c for c in checkpoints(cli, run, "demo-keep-best")}
        for f in left:
            c = cks[int(f.stem.split("step")[1])]
            assert "/vault/" in c["vault_path"] and c["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        best = min((c for c in cks.values() if c["score"] is not None), key=lambda c: (c["score"], c["step"]))
        assert best["state"] == "best"
        assert p["outputs"]["best_checkpoint"] == best["vault_path"] and "/vault/" in best["vault_path"]
        assert hashlib.sha256(Path(best["vault_path"]).read_bytes()).hexdigest() == best["sha256"]
        check_invariants(cli, run, docker_client)
    finally:
        for c in run_containers(docker_client, run):  # not labelled for the test fixture: the demo spec
            c.remove(force=True)


def test_row14_vault_disk_full_names_the_true_best_with_a_warning_and_leaves_no_partial(cli, tmp_path, small_fs,
                                                                                     docker_client, test_id):
    """The vault is a tmpfs with room for about two checkpoints (so vaulting copies, and stops with the disk
    full); the trainer keeps every checkpoint and its loss falls, so the true best is its last one."""
    ckpt = tmp_path / "ckpt"
    spec = tmp_path / "vfull.yaml"
    spec.write_text(f"""\
apiVersion: runner/v1
kind: Phase
name: vfull
labels: {{runner-test.id: "{test_id}"}}
container:
  image: {TRAINER_IMAGE}
  command: [python3, /app/train.py, --max-steps, 300, --save-every, 20, --step-delay, 0.03,
            --logdir, "${{{{ phase.dir }}}}/tb", --output-dir, {ckpt}]
  mounts:
    - {{source: "${{{{ phase.dir }}}}", target: "${{{{ phase.dir }}}}", create: true}}
    - {{source: {ckpt}, target: {ckpt}, create: true}}
timeout: 3m
metrics:
  tensorboard: {{logdir: "${{{{ phase.dir }}}}/tb", tags: {{text_loss: train/text_loss}}}}
checkpoints:
  dir: {ckpt}
  pattern: "model_step{{step}}.pth"
  keep: {{by: text_loss, mode: min, best: 100, latest: 1}}
""")
    out = cli("apply", str(spec), "--detach", "--unsupervised")
    assert out.returncode == 0, out.stderr
    run = only_run(cli)
    first = wait_for("the first checkpoint", lambda: sorted(ckpt.glob("model_step*.pth")), timeout=60, every=0.1)[0]
    vault = cli.state.parent / "vault" / run / "vfull"  # outside the run folder the container mounts
    assert not vault.exists() or not any(vault.iterdir())
    small_fs(vault, str(int(first.stat().st_size * 2.5)))
    (container,) = run_containers(docker_client, run)

    def ended():
        container.reload()
        return container.status == "exited"

    wait_for("the trainer to finish", ended, timeout=120)
    out = cli("attach", run, timeout=120)  # judges it: the final scan vaults until the disk is full
    doc = check_invariants(cli, run, docker_client)
    (p,) = doc["phases"]
    written = sorted(ckpt.glob("model_step*.pth"), key=lambda f: int(f.stem.split("step")[1]))
    assert len(written) == 15
    assert not list(vault.rglob("*.vaulting"))  # no partial file left behind
    # The true best: the written checkpoint at the lowest logged text_loss (vaulted or not).
    out = cli("metrics", str(cli.state.parent / run / "vfull" / "tb"), "--tag", "train/text_loss", "--format", "json")
    assert out.returncode == 0, out.stderr
    (series,) = json.loads(out.stdout).values()
    loss = dict(zip(series["steps"], series["values"]))
    true_best = min((int(f.stem.split("step")[1]) for f in written), key=lambda step: (loss[step], step))
    best = p["outputs"]["best_checkpoint"]
    assert best.endswith(f"model_step{true_best}.pth"), (best, true_best)
    assert any(w in p["explanation"].lower() for w in ("disk full", "vaulting stopped")), p["explanation"]
