"""Checkpoints as real trainers write them: HF folders in pieces, completion marks, presets, vanished saves,
per-format loadability, export of folders verified file by file."""
import json
import os
import shutil
import time

import pytest
import torch

from runner.checkpoints.formats import why_not_loadable
from runner.checkpoints.vault import export
from runner.errors import RunnerError
from runner.metrics.series import MetricSet
from runner.preconditions import step_from_name
from runner.spec.watch_models import Checkpoints
from tests.checkpoints.test_guard import make_guard, safetensors_bytes, store, wait_for  # noqa: F401


def hf_save(folder, step, pause_before_optimizer=0.0, mark=True):
    d = folder / f"checkpoint-{step}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (d / "model.safetensors").write_bytes(safetensors_bytes(256))
    time.sleep(pause_before_optimizer)
    torch.save({"state": {}, "step": step}, d / "optimizer.pt")
    torch.save({"rng": 1}, d / "rng_state.pth")
    if mark:
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


def test_patterns_with_more_placeholders_and_wildcards():
    assert step_from_name("epoch=3-step=120.ckpt", "epoch={epoch}-step={step}.ckpt") == 120
    assert step_from_name("epoch=3-step=120-v1.ckpt", "epoch={epoch}-step={step}*.ckpt") == 120
    assert step_from_name("checkpoint-40", "checkpoint-{step}") == 40
    assert step_from_name("checkpoint-40.tmp", "checkpoint-{step}") is None
    assert step_from_name("global_step200", "global_step{step}") == 200


def test_presets_set_pattern_mark_and_format():
    hf = Checkpoints.model_validate({"dir": "x", "preset": "huggingface"})
    assert (hf.pattern, hf.complete_when.file, hf.format) == ("checkpoint-{step}", "trainer_state.json", "huggingface")
    ds = Checkpoints.model_validate({"dir": "x", "preset": "deepspeed"})
    assert (ds.pattern, ds.complete_when.latest) == ("global_step{step}", "latest")
    pl = Checkpoints.model_validate({"dir": "x", "preset": "lightning", "pattern": "last-{step}.ckpt"})
    assert pl.pattern == "last-{step}.ckpt" and pl.complete_when is None
    assert Checkpoints.model_validate({"dir": "x"}).pattern == "model_step{step}.pth"
    with pytest.raises(ValueError):
        Checkpoints.model_validate({"dir": "x", "pattern": "epoch={epoch}.ckpt"})


def test_preset_gives_the_usual_tensorboard_tags():
    from runner.spec.models import Phase

    phase = Phase.model_validate({"apiVersion": "runner/v1", "kind": "Phase", "name": "p",
                                  "container": {"image": "i", "command": ["true"]},
                                  "metrics": {"tensorboard": {"logdir": "tb"}},
                                  "checkpoints": {"dir": "c", "preset": "huggingface"}})
    assert phase.metrics.tensorboard.tags == {"loss": "train/loss", "eval_loss": "eval/loss"}


def test_hf_folder_saved_in_pieces_is_vaulted_only_with_its_mark_and_whole(store, tmp_path):
    """FAULTS 44: a pause between the weights and the optimizer state longer than settle."""
    guard = make_guard(store, tmp_path, preset="huggingface", keep={"by": "loss"}, settle=0.2)
    guard.start()
    try:
        hf_save(tmp_path / "ckpt", 10, pause_before_optimizer=1.0)
        assert wait_for(lambda: any(c["state"] == "kept" for c in store.checkpoints(1)), timeout=10)
        guard.wait_hashed()
        c = store.checkpoints(1)[0]
        assert set(c["files"]) == {"config.json", "model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"}
        assert set(os.listdir(c["vault_path"])) == set(c["files"])
    finally:
        guard.stop()


def test_files_written_after_vaulting_follow_into_the_vault(store, tmp_path):
    guard = make_guard(store, tmp_path, preset="huggingface", keep=None)
    guard.start()
    try:
        d = hf_save(tmp_path / "ckpt", 20)
        assert wait_for(lambda: any(c["state"] == "kept" for c in store.checkpoints(1)), timeout=10)
        torch.save({"late": True}, d / "scaler.pt")  # e.g. what HF writes after trainer_state.json (rng state)
        (d / "trainer_state.json").write_text(json.dumps({"global_step": 20, "rewritten": True}))
        assert wait_for(lambda: "scaler.pt" in (store.checkpoints(1)[0]["files"] or {}), timeout=10)
        vault = tmp_path / "vault" / "checkpoint-20"
        assert json.loads((vault / "trainer_state.json").read_text())["rewritten"] is True
        assert any(e["kind"] == "checkpoint.updated" for e in store.events("r"))
    finally:
        guard.stop()


def test_a_folder_deleted_before_it_was_complete_is_a_missed_event(store, tmp_path):
    """FAULTS 45: seen, then gone before vaulting: loud, in the verdict's explanation when it would have been best."""
    guard = make_guard(store, tmp_path, preset="huggingface", keep={"by": "loss"})
    guard.start()
    try:
        d = hf_save(tmp_path / "ckpt", 30, mark=False)
        assert wait_for(lambda: "checkpoint-30" in guard.seen, timeout=5)
        shutil.rmtree(d)
        assert wait_for(lambda: any(e["kind"] == "checkpoint.missed" for e in store.events("r")), timeout=5)
        hf_save(tmp_path / "ckpt", 40)
        assert wait_for(lambda: any(c["state"] == "kept" for c in store.checkpoints(1)), timeout=10)
    finally:
        guard.stop()
    m = MetricSet()
    m.add("loss", [30, 40], [0.5, 0.9], [0.0, 0.0])
    guard.finish(m)
    states = {c["name"]: c["state"] for c in store.checkpoints(1)}
    assert states == {"checkpoint-30": "missed", "checkpoint-40": "best"}
    text = guard.missed_explanation(m)
    assert "the best checkpoint was lost: checkpoint-30" in text and "would have been the best" in text


def test_deepspeed_folder_completes_when_latest_names_it(store, tmp_path):
    guard = make_guard(store, tmp_path, preset="deepspeed", keep=None, settle=0.1)
    guard.start()
    try:
        d = tmp_path / "ckpt" / "global_step100"
        d.mkdir(parents=True)
        torch.save({"module": {}}, d / "mp_rank_00_model_states.pt")
        time.sleep(0.6)
        # stable, loadable, but no `latest` yet: recorded incomplete, nothing in the vault
        assert [c["state"] for c in store.checkpoints(1)] == ["incomplete"]
        assert not (tmp_path / "vault" / "global_step100").exists()
        (tmp_path / "ckpt" / "latest").write_text("global_step100")
        assert wait_for(lambda: any(c["state"] == "kept" for c in store.checkpoints(1)), timeout=5)
    finally:
        guard.stop()


def test_loadability_per_format_reads_metadata_only(tmp_path):
    st = tmp_path / "w.safetensors"
    st.write_bytes(safetensors_bytes(64))
    assert why_not_loadable(st) is None
    st.write_bytes(safetensors_bytes(64)[:-10])
    assert why_not_loadable(st) is not None
    ck = tmp_path / "epoch=0-step=10.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, ck)
    assert why_not_loadable(ck, "lightning") is None
    ck.write_bytes(ck.read_bytes()[:-30])
    assert why_not_loadable(ck, "lightning") is not None
    d = tmp_path / "checkpoint-1"
    d.mkdir()
    (d / "trainer_state.json").write_text("{}")
    assert "config.json" in why_not_loadable(d, "huggingface", "trainer_state.json")
    (d / "config.json").write_text("{}")
    assert "weights" in why_not_loadable(d, "huggingface", "trainer_state.json")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    assert "shards missing" in why_not_loadable(d, "huggingface", "trainer_state.json")
    (d / "model-00001-of-00002.safetensors").write_bytes(safetensors_bytes(8))
    assert why_not_loadable(d, "huggingface", "trainer_state.json") is None


def test_export_of_a_folder_checks_every_file(tmp_path):
    from runner.checkpoints.vault import file_hashes, sha256_of

    src = hf_save(tmp_path / "vault", 50)
    files, whole = file_hashes(src), sha256_of(src)
    got = export(src, tmp_path / "out", whole, files)
    assert got == whole and set(os.listdir(tmp_path / "out")) == set(files)
    assert torch.load(tmp_path / "out" / "optimizer.pt")["step"] == 50
    bad = dict(files, **{"optimizer.pt": {"size": 1, "sha256": "0" * 64}})
    with pytest.raises(RunnerError, match="optimizer.pt"):
        export(src, tmp_path / "out2", whole, bad)
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out2.exporting").exists()
