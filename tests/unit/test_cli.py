"""The CLI as a subprocess, without a Docker engine: each command's exit code decided by the error's type (the
README's table), global options before or after the command, defaults, and export destinations.

The run store is built through Store's own API: run `ab12` has phase `train` (succeeded, two vaulted checkpoints,
one best) then phase `finetune` (succeeded, no checkpoints, a saved log); run `cd34` has one phase and no checkpoints.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runner.checkpoints.vault import file_hashes, sha256_of
from runner.errors import (ContainerNotFound, EngineUnavailable, GpuUnavailable, ImageMissing, InvalidTransition,
                           LaunchError, NotFound, Refused, RunnerError, SpecError, UsageError)
from runner.store import Store
from tests.conftest import REPO

GOOD = str(REPO / "specs/demo/train.yaml")


def finish(store, phase_id, status, reason):
    """pending → launching → running → STATUS, as the engine records a phase (the store enforces the table)."""
    store.transition(phase_id, "launching")
    store.transition(phase_id, "running", container_id="c" * 64)
    store.transition(phase_id, status, reason, exit_code=0 if status == "succeeded" else 1, container_id=None)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    state = root / "runs" / "runner.db"
    state.parent.mkdir()
    store = Store(state)
    store.create_run("ab12", GOOD)
    train = store.add_phase("ab12", "train", GOOD, "0" * 64, {},
                            phase_json=json.dumps({"checkpoints": {"keep": {"mode": "min"}}}))
    vault = root / "runs" / "ab12" / "train" / "vault"
    vault.mkdir(parents=True)
    for step, score, st in ((10, 2.5, "kept"), (20, 1.5, "best")):
        f = vault / f"model_step{step}.pth"
        f.write_bytes(f"weights {step}".encode())
        store.checkpoint_intent(train, step, f.name, str(f), str(f))
        store.checkpoint_update(train, f.name, state=st, score=score, sha256=sha256_of(f), size=f.stat().st_size,
                                files_json=json.dumps(file_hashes(f)), ever_best=1)
    finish(store, train, "succeeded", "exit code 0")
    log = root / "runs" / "ab12" / "finetune" / "container.log"
    log.parent.mkdir(parents=True)
    log.write_text("finetune output\n")
    fine = store.add_phase("ab12", "finetune", GOOD, "0" * 64, {}, log_path=str(log))
    finish(store, fine, "succeeded", "exit code 0")
    store.create_run("cd34", GOOD)
    only = store.add_phase("cd34", "train", GOOD, "0" * 64, {})
    finish(store, only, "failed", "exit code 1")
    store.close()
    bad = root / "bad.yaml"
    bad.write_text("apiVersion: runner/v1\nkind: Phase\nname: x\ncontainer:\n  image: i\n  command: python train.py\n")
    (root / "dest-exists.pth").write_bytes(b"x")
    return root


def runner(site, *args, state=True, env=None):
    cmd = [sys.executable, "-m", "runner.cli", *(["--state", str(site / "runs" / "runner.db")] if state else []), *args]
    # a wide pipe whatever the runner of the tests set (pytest-xdist workers): tables are not cut unless a test asks
    environ = {**os.environ, "DOCKER_HOST": f"unix://{site}/no-engine.sock", "RUNNER_STATE": "", "COLUMNS": "250",
               **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=site, env=environ, timeout=120)


# (command line, exit code, a piece of stderr or stdout); {site} is the fixture's folder
CASES = [
    # 0: done
    (["schema"], 0, '"$schema"'),
    (["validate", GOOD], 0, "ok (phase demo-train)"),
    (["status"], 0, "ab12"),
    (["status", "ab12", "-o", "json"], 0, '"finetune"'),
    (["stop", "ab12"], 0, "nothing running"),
    (["logs", "ab12"], 0, "finetune output"),
    (["checkpoints", "ab12", "finetune"], 0, "phase finetune"),
    # 1: what was asked failed, does not exist, or conflicts with what exists
    (["validate", "{site}/bad.yaml"], 1, "bad.yaml:6:"),
    (["apply", "{site}/missing.yaml"], 1, "missing.yaml"),
    (["status", "zz99"], 1, "no run 'zz99'"),
    (["--state", "{site}/none/runner.db", "status"], 1, "no run store at"),
    (["--state", "{site}/none/runner.db", "queue"], 1, "no run store at"),
    (["--state", "{site}/none/runner.db", "logs", "ab12"], 1, "no run store at"),
    (["logs", "ab12", "nosuchphase"], 1, "has no phase 'nosuchphase'"),
    (["logs", "cd34"], 1, "no logs for phase train"),
    (["checkpoints", "ab12", "nosuchphase"], 1, "has no phase 'nosuchphase'"),
    (["checkpoints", "cd34"], 1, "run cd34 has no recorded checkpoints"),
    (["export", "cd34", "--best", "{site}/out"], 1, "run cd34 has no recorded checkpoints"),
    (["export", "ab12", "nosuchphase", "--best", "{site}/out"], 1, "has no phase 'nosuchphase'"),
    (["export", "ab12", "--best", "{site}/dest-exists.pth"], 1, "exists; runner does not overwrite"),
    (["attach", "ab12"], 1, "no running or detached phase to attach to"),
    (["metrics", "/nonexistent"], 1, "/nonexistent does not exist"),
    (["plan", "{site}/missing.yaml"], 1, "missing.yaml"),
    (["report", "zz99"], 1, "no run 'zz99'"),
    # 2: usage
    (["apply", GOOD, "--input", "max_steps"], 2, "--input 'max_steps': expected NAME=VALUE"),
    (["replay", GOOD, "--logdir", "{site}", "-i", "=3"], 2, "expected NAME=VALUE"),
    (["status", "--output", "yaml"], 2, "invalid choice"),
    (["frobnicate"], 2, "invalid choice"),
    (["export", "ab12"], 2, "--best"),
    (["serve", "--cpu-slots", "0"], 2, "--cpu-slots must be at least 1"),
    (["serve", "--http", "localhost:http"], 2, "expected HOST:PORT"),
    # 3: infrastructure
    (["apply", GOOD, "--input", "max_steps=5"], 3, "Docker engine not reachable"),
]


@pytest.mark.parametrize("argv,code,text", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_exit_code_per_command(site, argv, code, text):
    out = runner(site, *[a.replace("{site}", str(site)) for a in argv])
    assert out.returncode == code, out.stdout + out.stderr
    assert text in out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_global_options_before_or_after_the_command(site):
    state = str(site / "runs" / "runner.db")
    before = runner(site, "--state", state, "--debug", "status", "-o", "json", state=False)
    after = runner(site, "status", "-o", "json", "--state", state, "--debug", state=False)
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout)
    # given twice, the one after the command wins (the closer one)
    both = runner(site, "--state", str(site / "none.db"), "status", "--state", state, state=False)
    assert both.returncode == 0, both.stderr


def test_error_types_decide_exit_codes():
    from runner.cli import exit_code

    assert [exit_code(e) for e in (SpecError([]), NotFound("x"), Refused("x"))] == [1, 1, 1]
    assert exit_code(UsageError("x")) == 2
    assert {exit_code(e("x")) for e in (RunnerError, EngineUnavailable, ImageMissing, GpuUnavailable, LaunchError,
                                        ContainerNotFound)} == {3}
    assert exit_code(OSError(28, "No space left on device")) == 3
    assert exit_code(ValueError("a bug")) == 4
    assert exit_code(InvalidTransition("x")) == 4
    assert exit_code(KeyboardInterrupt()) == 130


def test_checkpoints_without_phase_lists_every_phase_that_has_checkpoints(site):
    out = runner(site, "checkpoints", "ab12", "-o", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [p["phase"] for p in doc["phases"]] == ["train"]  # not the run's last phase (finetune has none)
    assert [c["step"] for c in doc["checkpoints"]] == [10, 20] and doc["phase"] == "train"
    table = runner(site, "checkpoints", "ab12")
    assert "run ab12, phase train" in table.stdout and "best" in table.stdout


def test_logs_default_is_stated_in_help(site):
    out = runner(site, "logs", "--help")
    assert "default: the run's last phase" in out.stdout


@pytest.mark.parametrize("dest,expect", [
    ("new-folder/", "new-folder/model_step20.pth"),        # a folder that does not exist: created, name kept
    ("deep/er/folder/", "deep/er/folder/model_step20.pth"),
    ("file-parent/best.pth", "file-parent/best.pth"),       # a file path: its folder is created
])
def test_export_destination(site, dest, expect):
    target = f"{site}/exports/{dest}"  # as typed: a trailing / kept (Path drops it)
    out = runner(site, "export", "ab12", "--best", target)
    assert out.returncode == 0, out.stderr
    got = site / "exports" / expect
    assert got.is_file() and got.read_bytes() == b"weights 20"
    assert "step 20" in out.stdout and "verified" in out.stdout
    if dest.endswith("/"):
        assert (site / "exports" / dest.rstrip("/")).is_dir()  # never a file named like the folder
    again = runner(site, "export", "ab12", "--best", target)
    assert again.returncode == 1 and "does not overwrite" in again.stderr


def test_export_into_an_existing_folder(site):
    folder = site / "existing"
    folder.mkdir()
    out = runner(site, "export", "ab12", "train", "--best", str(folder))
    assert out.returncode == 0, out.stderr
    assert (folder / "model_step20.pth").read_bytes() == b"weights 20"


def test_a_second_server_is_refused(tmp_path):
    from runner.server.lock import ServerLock

    lock = ServerLock(tmp_path / "runs")
    assert lock.acquire()
    try:
        out = runner(tmp_path, "--state", str(tmp_path / "runs" / "runner.db"), "serve", "--gpus", "none", state=False)
    finally:
        lock.release()
    assert out.returncode == 1, out.stderr
    assert "a server already serves" in out.stderr and "Traceback" not in out.stderr


def test_status_is_one_line_per_phase_at_any_width_and_says_the_rest_in_full_elsewhere(tmp_path):
    """A guard's reason is long; piped output honours $COLUMNS; `--wide` and `status RUN` give it in full."""
    state = tmp_path / "runs" / "runner.db"
    state.parent.mkdir()
    store = Store(state)
    store.create_run("ef56", GOOD)
    reason = "guard tripped (text_loss diverges): " + "smoothed text_loss has stayed above its best " * 6
    names = ["indextts-finetune", "indextts-phase1-validate-lr", "indextts-phase2-continue", "indextts-restart-from-base"]
    for name in names:
        finish(store, store.add_phase("ef56", name, GOOD, "0" * 64, {}), "failed", reason)
    store.close()
    site = tmp_path
    for columns in (80, 100, 120, 200):
        out = runner(site, "status", env={"COLUMNS": str(columns)})
        lines = out.stdout.splitlines()
        assert out.returncode == 0 and len(lines) == 1 + len(names), out.stdout
        assert all(len(line.rstrip()) <= columns for line in lines), (columns, out.stdout)
        assert all(line.rstrip().endswith("…") for line in lines[1:]) and "REASON" in lines[0], out.stdout
    wide = runner(site, "status", "--wide", env={"COLUMNS": "80"}).stdout.splitlines()
    assert len(wide) == 1 + len(names) and all(reason.strip() in line for line in wide[1:])
    detail = runner(site, "status", "ef56", env={"COLUMNS": "80"}).stdout
    assert f"reason: {reason.strip()}" in detail


def test_checkpoints_name_the_handed_over_best_once_and_hide_pruned_rows(tmp_path):
    """keep: {best: 2} keeps two as best: the table marks the one handed over as `best (handed over)`, the other
    `top-k`; a pruned row has no vault path and is listed only with --all."""
    state = tmp_path / "runs" / "runner.db"
    state.parent.mkdir()
    store = Store(state)
    store.create_run("gh78", GOOD)
    pid = store.add_phase("gh78", "train", GOOD, "0" * 64, {},
                          phase_json=json.dumps({"checkpoints": {"keep": {"mode": "min", "best": 2}}}))
    vault = tmp_path / "runs" / "vault" / "gh78" / "train"
    vault.mkdir(parents=True)
    for step, score, st in ((10, 2.5, "pruned"), (20, 1.5, "best"), (30, 1.2, "best"), (40, 1.9, "kept")):
        f = vault / f"model_step{step}.pth"
        f.write_bytes(b"w")
        store.checkpoint_intent(pid, step, f.name, str(f), str(f))
        store.checkpoint_update(pid, f.name, state=st, score=score, ever_best=int(st == "best"))
    finish(store, pid, "succeeded", "exit code 0")
    store.update(pid, outputs_json=json.dumps({"best_checkpoint": str(vault / "model_step30.pth")}))
    store.close()
    out = runner(tmp_path, "checkpoints", "gh78").stdout
    rows = {line.split()[0]: line for line in out.splitlines() if line[:1].isdigit()}
    assert set(rows) == {"20", "30", "40"} and "1 pruned checkpoint(s) not shown" in out, out
    assert "best (handed over)" in rows["30"] and "top-k" in rows["20"] and "best" not in rows["40"]
    everything = runner(tmp_path, "checkpoints", "gh78", "--all").stdout
    pruned = next(line for line in everything.splitlines() if line.startswith("10 "))
    assert "pruned" in pruned and "model_step10" not in pruned
    doc = json.loads(runner(tmp_path, "checkpoints", "gh78", "-o", "json").stdout)
    assert [c["step"] for c in doc["checkpoints"] if c["handed_over"]] == [30]


def test_every_command_and_option_has_help_text():
    import argparse

    from runner.cli import parser

    missing = []

    def walk(p, name):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for n, sp in a.choices.items():
                    if not sp.description:
                        missing.append(f"{n}: no description")
                    walk(sp, n)
            elif not isinstance(a, argparse._HelpAction) and (not a.help or a.help == argparse.SUPPRESS):
                missing.append(f"{name}: {a.option_strings or a.dest}")

    walk(parser(), "runner")
    assert not missing, missing


def test_tensorboard_prints_the_command_for_a_runs_phases(tmp_path):
    state = tmp_path / "runs" / "runner.db"
    state.parent.mkdir()
    store = Store(state)
    store.create_run("ij90", GOOD)
    store.add_phase("ij90", "train", GOOD, "0" * 64, {},
                    phase_json=json.dumps({"metrics": {"tensorboard": {"logdir": "/data/runs/ij90/train/tb"}}}))
    store.add_phase("ij90", "tune", GOOD, "0" * 64, {}, phase_json=json.dumps({"metrics": {"stdout": {"step": "s"}}}))
    store.close()
    out = runner(tmp_path, "tensorboard", "ij90")
    assert out.returncode == 0, out.stderr
    assert "tensorboard --logdir_spec ij90/train:/data/runs/ij90/train/tb --port 6006" in out.stdout
    assert "# ij90/tune: metrics from stdout/JSONL, not TensorBoard files" in out.stdout


@pytest.mark.parametrize("words, expect", [
    (["runner", "ap"], {"apply"}),
    (["runner", "apply", "--de"], {"--debug", "--detach"}),
    (["runner", "--state", "x.db", "status", "--w"], {"--wide"}),
    (["runner", "checkpoints", "--a"], {"--all"}),
])
def test_bash_completion_completes_commands_and_their_options(tmp_path, words, expect):
    out = runner(tmp_path, "completion", "bash", state=False)
    assert out.returncode == 0, out.stderr
    (tmp_path / "comp.sh").write_text(out.stdout)
    words_text = " ".join(f"'{w}'" for w in words)
    probe = (f"source {tmp_path / 'comp.sh'}; COMP_WORDS=({words_text}); COMP_CWORD={len(words) - 1}; "
             '_runner_complete; printf "%s\\n" "${COMPREPLY[@]}"')
    got = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert set(got) == expect, got
