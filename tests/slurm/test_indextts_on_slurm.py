"""The incident's chain, the shipped specs/indextts/ unchanged, on the two-node Slurm cluster: every phase
and every validation run is a Slurm job (tests/integration/test_indextts.py runs the same on one Docker
engine; the inputs and the simulated trainer are the same)."""
import hashlib
import json
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "images" / "indextts-sim"))
import sim  # noqa: E402  (the simulator's own model: where its noiseless curve passes +5%)

SIM_IMAGE = "indextts-sim:latest"
T = 40_000  # the simulated base model's diverge_after


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_the_incident_chain_on_slurm_trips_rolls_back_to_the_vaults_best_and_continues(store, docker_client):
    folder = store.runs.parent
    (folder / "data").mkdir()
    for name in ("train.jsonl", "val.jsonl", "bpe.model"):  # the trainer requires them to exist (it reads none)
        (folder / "data" / name).write_text("")
    base = folder / "models" / "gpt.pth"
    base.parent.mkdir()
    docker_client.containers.run(SIM_IMAGE, ["python", "make_checkpoint.py", "--out", str(base), "--step", "0",
                                             "--diverge-after", str(T)],
                                 volumes={str(folder): {"bind": str(folder), "mode": "rw"}}, remove=True)
    given = {"image": SIM_IMAGE, "gpus": 0, "data_dir": folder / "data", "base_model": base,
             "train_manifest": "/data/train.jsonl", "val_manifest": "/data/val.jsonl", "tokenizer": "/data/bpe.model",
             "validate_script": REPO / "images" / "indextts-sim" / "validate.py",
             "min_checkpoint_size": "1k", "disk_needed": "1GiB", "validate_every": 5}
    args = [a for k, v in given.items() for a in ("--input", f"{k}={v}")]
    out = store("apply", str(REPO / "specs" / "indextts" / "finetune.yaml"), *args, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = store.status()["runs"]
    detail = store.status(run["id"])
    ft, p1, p2 = detail["phases"]
    assert [p["name"] for p in detail["phases"]] == ["indextts-finetune", "indextts-phase1-validate-lr", "indextts-phase2-continue"]
    assert all(p["container_id"].startswith("slurm:") for p in detail["phases"])

    # The guard tripped within 5,000 steps of the noiseless curve passing 5% above its best, and stopped the job.
    assert ft["status"] == "failed" and ft["reason"].startswith("guard tripped (text_loss diverges)"), ft["reason"]
    trip = next(e for e in detail["events"] if e["kind"] == "guard.tripped" and e["phase"] == "indextts-finetune")
    best_level = sim.trajectory(T, T).level
    passes = next(s for s in range(T, 2 * T, 20) if sim.trajectory(s, T).level >= 1.05 * best_level)
    assert T < trip["data"]["step"] <= passes + 5000, (trip, passes)
    assert store.job_state(ft["container_name"]) == "CANCELLED"

    # Validation runs were Slurm jobs of their own, and scored the checkpoints.
    validations = [e for e in detail["events"] if e["kind"] == "validation.done" and e["phase"] == "indextts-finetune"]
    assert len(validations) >= 5, validations
    # Every checkpoint the trainer wrote (and rotated away within 1.5 s) was vaulted: none missed.
    assert not [e for e in detail["events"] if e["kind"] == "checkpoint.missed"]
    step = validations[0]["data"]["step"]
    (vjob,) = store.jobs(f"{ft['container_name']}-val-{step}")
    assert (vjob["state"]["current"] if isinstance(vjob["state"], dict) else vjob["state"]) == "COMPLETED"

    # Phase 1 started from the vault's best (by validation loss), which the trainer's keep-last-3 deleted.
    best = ft["outputs"]["best_checkpoint"]
    assert "vault" in best and "/indextts-finetune/" in best and p1["inputs"]["start_from"] == best
    assert not (store.runs / run["id"] / "indextts-finetune" / "out" / best.rsplit("/", 1)[1]).exists()
    records = json.loads(store("checkpoints", run["id"], "indextts-finetune", "--output", "json").stdout)["checkpoints"]
    assert sha256(best) == next(r for r in records if r["vault_path"] == best)["sha256"]
    assert p1["status"] == "succeeded", p1["explanation"]
    assert p2["status"] == "succeeded", p2["explanation"]
    assert p2["inputs"]["start_from"] == p1["outputs"]["best_checkpoint"]
