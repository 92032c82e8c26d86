"""Rows 46-49: a container (a hostile trainer, or one a dropped spec started) attacks runner's own state and its
vault, against the real engine: a stored plan rewritten to mount the host's `/`, symlinks and special files in
the checkpoint folder, a vaulted checkpoint written again in place."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.faults.conftest import check_invariants, only_run, run_containers, first_phase, status, wait_for
from tests.integration.conftest import keep_containers


def _db(cli):
    con = sqlite3.connect(cli.state, timeout=30)
    con.row_factory = sqlite3.Row
    return con


def test_row46_a_stored_plan_that_mounts_the_host_root_is_refused_where_the_container_is_created(cli, spec_for,
                                                                                                 docker_client):
    # While phase 1 runs, a *pending* phase is added to runner.db (as a container that could write the store
    # would) whose stored plan mounts `/` at /host and the run store itself: when phase 1 ends, the run's
    # driver must refuse to create it.
    keep_containers(cli.state.parent)  # every container created is looked at after the end: none mounts the host
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "--state", str(cli.state), "apply",
                             spec_for(["sh", "-c", "sleep 6; echo first"])], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for("phase 1 running", lambda: first_phase(cli).get("status") == "running", timeout=60)
        run = only_run(cli)
        con = _db(cli)
        with con:
            row = dict(con.execute("SELECT * FROM phases WHERE run_id = ?", (run,)).fetchone())
            plan = json.loads(row["plan_json"])
            plan.update(phase="evil", container_name=f"runner-{run}-evil",
                        mounts=[{"source": "/", "target": "/host", "read_only": False, "create": False},
                                {"source": str(cli.state.parent), "target": "/state", "read_only": False, "create": False}])
            plan["labels"] = {**plan["labels"], "runner.phase": "evil"}
            con.execute("INSERT INTO phases (run_id, seq, name, spec_path, spec_sha256, inputs_json, plan_json, phase_json,"
                        " container_name, status, created_at) VALUES (?, 2, 'evil', ?, ?, '{}', ?, ?, ?, 'pending', ?)",
                        (run, row["spec_path"], row["spec_sha256"], json.dumps(plan), row["phase_json"],
                         plan["container_name"], time.time()))
        con.close()
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    evil = [p for p in status(cli, run)["phases"] if p["name"] == "evil"]
    assert evil and evil[0]["status"] == "error", evil
    assert "refused" in evil[0]["reason"] and "/host" in evil[0]["reason"] and "run store" in evil[0]["reason"]
    assert run_containers(docker_client, run, "evil") == []  # nothing created
    for c in run_containers(docker_client, run):
        assert all(m["Source"] not in ("/", str(cli.state.parent)) for m in c.attrs["Mounts"]), c.attrs["Mounts"]
    doc = status(cli, run)
    assert any(e["kind"] == "policy.refused" for e in doc["events"])


def test_row46_a_spec_that_mounts_the_run_store_or_the_vault_writable_is_a_located_spec_error(cli, spec_for, tmp_path):
    runs = cli.state.parent
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "vault").mkdir(exist_ok=True)
    for source, word in ((str(runs), "run store"), (str(tmp_path), "run store"), (str(runs / "vault"), "vault")):
        spec = spec_for(["true"], container_extra=f"mounts: [{{source: {source}, target: /x}}]\n")
        out = cli("apply", spec, timeout=60)
        assert out.returncode == 1, out.stderr
        assert "container.mounts[0].source" in out.stderr and word in out.stderr, out.stderr
        assert ":7:" in out.stderr or ":8:" in out.stderr, out.stderr  # located at the mount's line
    # read-only, the vault is fine (a checkpoint handed over from another run)
    spec = spec_for(["true"], container_extra=f"mounts: [{{source: {runs / 'vault'}, target: /x, read_only: true}}]\n")
    out = cli("apply", spec, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


CKPT_SPEC = """\
checkpoints:
  dir: "${{{{ phase.dir }}}}/ckpt"
  pattern: "model_step{{step}}.dat"
  settle: 1s
"""
MOUNT = 'mounts: [{source: "${{ run.dir }}", target: /run, create: true}]\n'


def _phase_dir(cli, run):
    (p,) = status(cli, run)["phases"]
    return p


def _ckpts(cli, run):
    con = _db(cli)
    try:
        return {r["name"]: dict(r) for r in con.execute(
            "SELECT c.* FROM checkpoints c JOIN phases p ON p.id = c.phase_id WHERE p.run_id = ?", (run,))}
    finally:
        con.close()


def test_row47_48_symlinks_and_special_files_in_the_checkpoint_folder_are_never_followed_or_opened(
        cli, spec_for, tmp_path, docker_client):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "shadow").write_bytes(b"root-only secret")
    os.chmod(secret / "shadow", 0o600)
    # The trainer: a symlinked checkpoint folder and file to a host path, a FIFO and a socket named like checkpoints,
    # then a real checkpoint; it exits 0.
    script = (f"d=/run/p1/ckpt; mkdir -p $d; ln -s {secret} $d/checkpoint-100 2>/dev/null; "
              f"ln -s {secret}/shadow $d/model_step100.dat; mkfifo $d/model_step200.dat; "
              "python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.bind('/run/p1/ckpt/model_step250.dat')\"; "
              "sleep 1; printf real > $d/model_step300.dat.tmp; mv $d/model_step300.dat.tmp $d/model_step300.dat; sleep 3")
    spec = spec_for(["sh", "-c", script], container_extra=MOUNT, extra=CKPT_SPEC.format())
    started = time.monotonic()
    out = cli("apply", spec, timeout=90)
    took = time.monotonic() - started
    assert out.returncode in (0, 1), (out.returncode, out.stderr[-3000:])  # ended: never hung on the FIFO
    assert took < 80
    run = only_run(cli)
    rows = _ckpts(cli, run)
    assert rows["model_step300.dat"]["state"] in ("kept", "best")  # the real one, written after the FIFO
    vault = Path(rows["model_step300.dat"]["vault_path"])
    assert vault.read_bytes() == b"real" and not vault.is_symlink()
    assert vault.is_relative_to(cli.state.parent / "vault") and not vault.is_relative_to(cli.state.parent / run)
    for name in ("model_step100.dat", "model_step200.dat", "model_step250.dat"):
        assert name not in rows or rows[name]["state"] == "missed", rows.get(name)
        assert not os.path.lexists(vault.parent / name)
    doc = check_invariants(cli, run, docker_client)
    untrusted = {e["data"]["name"]: e["data"]["kind"] for e in doc["events"] if e["kind"] == "checkpoint.untrusted"}
    assert untrusted == {"model_step100.dat": "a symlink", "model_step200.dat": "a FIFO",
                         "model_step250.dat": "a socket"}, untrusted
    st = os.stat(secret / "shadow")
    assert st.st_nlink == 1 and (secret / "shadow").read_bytes() == b"root-only secret"
    # `status` of the whole store never blocks either (the FIFO is still there)
    out = cli("status", timeout=30)
    assert out.returncode == 0


def test_row47_a_symlinked_checkpoint_folder_is_never_vaulted(cli, spec_for, tmp_path, docker_client):
    secret = tmp_path / "hostdir"
    secret.mkdir()
    (secret / "model.safetensors").write_bytes(b"host file")
    os.chmod(secret / "model.safetensors", 0o600)
    script = (f"d=/run/p1/ckpt; mkdir -p $d; ln -s {secret} $d/checkpoint-100; mkdir $d/checkpoint-200; "
              f"ln -s {secret}/model.safetensors $d/checkpoint-200/model.safetensors; echo '{{}}' > $d/checkpoint-200/config.json;"
              " printf w > $d/checkpoint-200/pytorch_model.bin.part; mv $d/checkpoint-200/pytorch_model.bin.part "
              "$d/checkpoint-200/weights.dat; sleep 3")
    extra = 'checkpoints:\n  dir: "${{ phase.dir }}/ckpt"\n  pattern: "checkpoint-{step}"\n  settle: 1s\n'
    spec = spec_for(["sh", "-c", script], container_extra=MOUNT, extra=extra)
    out = cli("apply", spec, timeout=90)
    assert out.returncode in (0, 1), out.stderr[-3000:]
    run = only_run(cli)
    rows = _ckpts(cli, run)
    assert "checkpoint-100" not in rows or rows["checkpoint-100"]["state"] == "missed"
    folder = Path(rows["checkpoint-200"]["vault_path"])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.dat"]  # the symlink left out
    assert os.stat(secret / "model.safetensors").st_nlink == 1
    check_invariants(cli, run, docker_client)


def test_row49_a_vaulted_checkpoint_written_again_in_place_keeps_its_bytes_and_both_versions(cli, spec_for,
                                                                                             docker_client):
    # torch.save-style: open(path, "wb") on the same name again, 3 s after the first save (well after vaulting).
    script = ("d=/run/p1/ckpt; mkdir -p $d; printf first-version > $d/model_step100.dat; sleep 3; "
              "printf second > $d/model_step100.dat; sleep 3")
    spec = spec_for(["sh", "-c", script], container_extra=MOUNT, extra=CKPT_SPEC.format())
    out = cli("apply", spec, timeout=90)
    assert out.returncode == 0, out.stderr[-3000:]
    run = only_run(cli)
    row = _ckpts(cli, run)["model_step100.dat"]
    vault = Path(row["vault_path"])
    assert vault.read_bytes() == b"first-version"
    assert row["sha256"] == hashlib.sha256(b"first-version").hexdigest() and row["size"] == len(b"first-version")
    assert os.stat(vault).st_nlink == 1  # its own inode: the trainer's file is another
    doc = check_invariants(cli, run, docker_client)
    (ev,) = [e for e in doc["events"] if e["kind"] == "checkpoint.rewritten"]
    assert Path(ev["data"]["rewrite_path"]).read_bytes() == b"second"
