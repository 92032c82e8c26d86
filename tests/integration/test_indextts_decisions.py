"""Decisions beyond the four built-in scenarios, live, on the shipped specs/indextts/ chain and the simulated
trainer (images/indextts-sim): the cases a careful ML engineer raises.

* A fine-tune container killed from outside mid-run (the host's OOM killer, a `docker kill`) is an accident
  of the machine, not evidence about the learning rate: the same phase goes on from its newest vaulted
  checkpoint (`retry:` with --resume), and only the divergence that follows takes the recovery branch."""
import threading
import time

from tests.integration.test_indextts import incident, names, start_of  # noqa: F401  (the fixture)

FINETUNE = "indextts-finetune"


def kill_after_checkpoints(docker_client, runs_dir, phase: str, count: int, done: threading.Event, seen: dict) -> None:
    """Kill the phase's container (SIGKILL from outside runner) once ``count`` of its checkpoints are vaulted."""
    deadline = time.monotonic() + 300
    while not done.is_set() and time.monotonic() < deadline:
        vaulted = list((runs_dir / "vault").glob(f"*/{phase}/model_step*.pth"))
        if len(vaulted) >= count:
            # This test's own run only (its id is the vault folder's name): another test's phase of the same name
            # may be training on the same engine at the same time (the suite runs in parallel).
            run_id = vaulted[0].parent.parent.name
            for c in docker_client.containers.list(ignore_removed=True, filters={"label": [f"runner.phase={phase}", f"runner.run-id={run_id}"]}):
                if not c.name.endswith("-" + phase):
                    continue  # a validation run of a checkpoint (runner-RUN-PHASE-val-STEP): not the trainer
                c.kill()
                seen["killed"] = c.name
                return
        time.sleep(0.1)


def test_a_killed_finetune_goes_on_from_its_newest_checkpoint_and_only_divergence_takes_the_recovery_branch(
        incident, docker_client):  # noqa: F811
    done, seen = threading.Event(), {}
    killer = threading.Thread(target=kill_after_checkpoints,
                              args=(docker_client, incident.folder / "runs", FINETUNE, 3, done, seen), daemon=True)
    killer.start()
    try:
        run = incident.apply("finetune.yaml")
    finally:
        done.set()
        killer.join(5)
    assert seen.get("killed"), "the container was never killed"
    assert names(run)[:3] == [FINETUNE, FINETUNE, "indextts-phase1-validate-lr"], (names(run), run["phases"][0]["reason"], run["phases"][0].get("failure_kind"), run["phases"][0]["decision"], seen)
    first, second, p1 = run["phases"][:3]

    # The kill is recorded as what it is, decided when the container ended: not a divergence.
    assert first["status"] == "failed" and first["failure_kind"] == "killed", (first["reason"], first["failure_kind"])
    assert "exit code 137" in first["reason"] and "killed from outside runner" in first["reason"]
    assert first["decision"].startswith("retry 1 of 3 (killed)"), first["decision"]

    # Attempt 2 resumed the newest checkpoint the vault kept of attempt 1 (--resume: its step, optimizer and
    # LR schedule), read-only from the vault; its expect: checks are off on purpose (unless_input).
    resume = second["inputs"]["resume_from"]
    assert resume == first["outputs"]["last_checkpoint"] and "/vault/" in resume and f"/{FINETUNE}/" in resume
    assert start_of(resume) >= 2000
    log = open(second["log"], encoding="utf-8", errors="replace").read()
    assert f"[Info] Resumed from {resume} at epoch" in log and f"step {start_of(resume)}." in log

    # Then the run diverged as the base model does: that, and only that, rolls back to phase 1.
    assert second["failure_kind"] == "diverged" and second["reason"].startswith("guard tripped (text_loss diverges)")
    assert "failed: [diverged, non_finite, criteria]" in second["decision"] and "apply phase1.yaml" in second["decision"]
    assert p1["inputs"]["start_from"] == second["outputs"]["best_checkpoint"]


def test_a_recovering_phase1_is_judged_on_its_last_checkpoints_validation_with_validate_every_10(incident):  # noqa: F811
    """The 351k checkpoint recovers; validation of every 10th checkpoint (as the README shows) used to leave
    only the first checkpoint's validation (1.93, before the recovery) to decide: a failure, then the
    restart-from-base branch.  The last checkpoint is always validated; the verdict rests on it, and phase 2
    starts from the best *validated* checkpoint, handed over with where it stood."""
    ckpt = incident.make_checkpoint(incident.folder / "ckpt" / "model_step351000.pth", "--step", 351000, "--loss", 1.87,
                                    "--scenario", "recover", "--diverge-after", 40_000)
    run = incident.apply("phase1.yaml", start_from=ckpt, validate_every=10)
    assert names(run)[:2] == ["indextts-phase1-validate-lr", "indextts-phase2-continue"], \
        (names(run), run["phases"][0]["explanation"])
    p1, p2 = run["phases"][:2]
    assert p1["status"] == "succeeded", p1["explanation"]
    queued = [e["message"] for e in run["events"] if e["kind"] == "validation.queued" and e["phase"] == p1["name"]]
    assert any("(the phase's last checkpoint)" in m for m in queued), queued
    assert "< 1.8: measured" in p1["explanation"] and "(validation of the checkpoint at step 5,000)" in p1["explanation"]
    best = p1["outputs"]["best_checkpoint"]
    assert p2["inputs"]["start_from"] == best and start_of(best) > 1000
    assert p1["outputs"]["best"]["step"] == start_of(best)
    assert float(p2["inputs"]["start_val_text_loss"]) == p1["outputs"]["best"]["val_text_loss"]
    assert float(p2["inputs"]["start_text_loss"]) == p1["outputs"]["best"]["text_loss"]
