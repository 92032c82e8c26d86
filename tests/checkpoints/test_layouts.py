"""Checkpoint folders without a preset (issue 24): the layout recognised from the files decides when a checkpoint
is complete; until then it is recorded 'incomplete' and never vaulted, best, handed over or exported."""
import json
import os
import shutil
import time

import pytest
import torch

from runner.checkpoints.layouts import detect, folder_layout, why_incomplete
from runner.metrics.series import MetricSet
from tests.checkpoints.test_guard import make_guard, safetensors_bytes, store, wait_for  # noqa: F401

HF_TRAINER = {"config.json", "generation_config.json", "model.safetensors", "training_args.bin", "optimizer.pt",
              "scheduler.pt", "rng_state.pth", "trainer_state.json"}


@pytest.mark.parametrize("names, layout", [
    (HF_TRAINER, "huggingface"),
    ({"config.json", "model.safetensors", "training_args.bin"}, "huggingface"),  # the weights, before the optimizer
    ({"training_args.bin"}, "huggingface"),
    ({"config.json", "global_step40/mp_rank_00_model_states.pt", "trainer_state.json", "training_args.bin"}, "huggingface"),
    ({"config.json", "model.safetensors"}, "huggingface-model"),  # save_pretrained: no Trainer file
    ({"adapter_config.json", "adapter_model.safetensors"}, "huggingface-model"),
    ({"model-00001-of-00002.safetensors"}, "huggingface-model"),
    ({"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"}, "deepspeed"),
    ({"checkpoint/mp_rank_00_model_states.pt", "latest", "zero_to_fp32.py"}, "deepspeed"),  # Lightning's DeepSpeed
    ({"__0_0.distcp", ".metadata"}, "torch-distributed"),
    ({"config.json", "weights.dat"}, "unknown"),  # config.json alone says little
    ({"model.pt", "optimizer.pt"}, "unknown"),  # a plain torch folder
    (set(), "unknown"),
])
def test_layout_is_recognised_from_the_files(names, layout):
    assert folder_layout(set(names)).name == layout


def test_file_layouts_and_a_symlink_is_never_walked(tmp_path):
    for name, layout in (("epoch=1-step=10.ckpt", "lightning"), ("model_step10.pth", "torch"),
                         ("m.safetensors", "safetensors"), ("weights.dat", "file")):
        (tmp_path / name).write_bytes(b"x")
        assert detect(tmp_path / name)[0].name == layout
    d = tmp_path / "checkpoint-1"
    d.mkdir()
    os.symlink("/etc/passwd", d / "trainer_state.json")  # named like the mark: never counts
    (d / "training_args.bin").write_bytes(b"x")
    layout, names = detect(d)
    assert layout.name == "huggingface" and names == {"training_args.bin"}


def test_why_incomplete_names_what_a_half_vaulted_hf_folder_lacks(tmp_path):
    d = tmp_path / "checkpoint-50"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(safetensors_bytes(16))
    torch.save({"a": 1}, d / "training_args.bin")
    layout, why = why_incomplete(d)
    assert layout.name == "huggingface" and "no trainer_state.json" in why and "optimizer.pt" in why
    torch.save({"state": {}}, d / "optimizer.pt")
    torch.save({}, d / "scheduler.pt")
    (d / "trainer_state.json").write_text(json.dumps({"global_step": 50}))
    assert why_incomplete(d) == (layout, None)
    (d / "trainer_state.json").write_text('{"global_st')  # the mark itself half-written
    assert "not readable JSON" in why_incomplete(d)[1]


def hf_in_pieces(folder, step, pause, done=True):
    """The HF Trainer's order: config + weights + training_args.bin, a pause (a sharded or ZeRO save), then the
    optimizer, scheduler, RNG state and trainer_state.json last."""
    d = folder / f"checkpoint-{step}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (d / "model.safetensors").write_bytes(safetensors_bytes(256))
    torch.save({"args": 1}, d / "training_args.bin")
    time.sleep(pause)
    if done:
        torch.save({"state": {}, "step": step}, d / "optimizer.pt")
        torch.save({"lr": 1}, d / "scheduler.pt")
        torch.save({"rng": 1}, d / "rng_state.pth")
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


def test_a_paused_hf_save_without_a_preset_is_incomplete_until_trainer_state_json(store, tmp_path):
    """The issue's first case, in process: a pause 4x the settle time between the weights and the optimizer."""
    guard = make_guard(store, tmp_path, pattern="checkpoint-{step}", keep={"by": "loss"}, settle=0.3)
    guard.start()
    try:
        metrics = MetricSet()
        for step, loss in ((10, 1.0), (20, 0.5)):
            metrics.add("loss", [step], [loss], [time.time()])
            d = hf_in_pieces(tmp_path / "ckpt", step, pause=0, done=False)
            assert wait_for(lambda: any(c["name"] == d.name and c["state"] == "incomplete" for c in store.checkpoints(1)))
            time.sleep(1.2)  # stable far longer than settle: still incomplete, nothing in the vault
            guard.retain(metrics)
            row = next(c for c in store.checkpoints(1) if c["name"] == d.name)
            assert row["state"] == "incomplete" and not (tmp_path / "vault" / d.name).exists()
            assert guard.outputs().get("best_checkpoint", "") in ("", str(tmp_path / "vault" / "checkpoint-10"))
            hf_in_pieces(tmp_path / "ckpt", step, pause=0)
            assert wait_for(lambda: any(c["name"] == d.name and c["state"] == "kept" for c in store.checkpoints(1)))
            guard.wait_hashed()
            row = next(c for c in store.checkpoints(1) if c["name"] == d.name)
            assert set(row["files"]) == HF_TRAINER - {"generation_config.json"}, row["files"]
            if step == 10:
                shutil.rmtree(d)  # the trainer's save_total_limit=1
    finally:
        guard.stop()
    guard.finish(metrics)
    events = store.events("r")
    assert not [e for e in events if e["kind"] == "checkpoint.updated"]  # nothing arrived after it was vaulted
    waiting = [e for e in events if e["kind"] == "checkpoint.waiting"]
    assert {e["data"]["name"] for e in waiting} == {"checkpoint-10", "checkpoint-20"}
    assert all("trainer_state.json" in e["message"] for e in waiting)
    vaulted = [e for e in events if e["kind"] == "checkpoint.vaulted"]
    assert [e["data"]["layout"] for e in vaulted] == ["huggingface", "huggingface"]
    assert {c["name"]: c["state"] for c in store.checkpoints(1)} == {"checkpoint-10": "kept", "checkpoint-20": "best"}


def test_an_incomplete_checkpoint_is_never_best_never_handed_over_and_never_gets_a_complete_one_pruned(store, tmp_path):
    """checkpoint-40 complete and vaulted; checkpoint-50 half, with a better loss: 40 stays best and kept (the
    retention of latest: 1 must not count the half 50), the outputs name 40, and when the trainer dies mid-save
    the phase ends with 40 handed over and 50 'incomplete'."""
    guard = make_guard(store, tmp_path, pattern="checkpoint-{step}", keep={"by": "loss", "best": 1, "latest": 1})
    metrics = MetricSet()
    metrics.add("loss", [30, 40, 50], [0.9, 0.8, 0.1], [0.0] * 3)
    hf_in_pieces(tmp_path / "ckpt", 30, pause=0)
    hf_in_pieces(tmp_path / "ckpt", 40, pause=0)
    guard.scan()
    guard.retain(metrics)
    shutil.rmtree(tmp_path / "ckpt" / "checkpoint-30")
    hf_in_pieces(tmp_path / "ckpt", 50, pause=0, done=False)
    for _ in range(3):
        guard.scan()
        guard.retain(metrics)
    rows = {c["name"]: c for c in store.checkpoints(1)}
    assert rows["checkpoint-50"]["state"] == "incomplete" and rows["checkpoint-50"]["score"] is None
    assert rows["checkpoint-40"]["state"] == "best" and (tmp_path / "vault" / "checkpoint-40").is_dir()
    outputs = guard.finish(metrics)  # the trainer died mid-save: the final scan still does not take the half 50
    rows = {c["name"]: c for c in store.checkpoints(1)}
    assert rows["checkpoint-50"]["state"] == "incomplete" and not (tmp_path / "vault" / "checkpoint-50").exists()
    assert outputs == {"best_checkpoint": str(tmp_path / "vault" / "checkpoint-40"),
                       "last_checkpoint": str(tmp_path / "vault" / "checkpoint-40")}
    assert rows["checkpoint-40"]["state"] == "best" and rows["checkpoint-30"]["state"] == "pruned"
    (event,) = [e for e in store.events("r") if e["kind"] == "checkpoint.incomplete"]
    assert "trainer_state.json not written yet" in event["message"]
    assert "still incomplete when the phase ended" in guard.missed_explanation(metrics)


def test_only_half_folders_hand_over_nothing(store, tmp_path):
    """Not the trainer's own (half) folder either, which is what the outputs named without a vaulted one."""
    guard = make_guard(store, tmp_path, pattern="checkpoint-{step}")
    hf_in_pieces(tmp_path / "ckpt", 10, pause=0, done=False)
    assert guard.finish(MetricSet()) == {"best_checkpoint": "", "last_checkpoint": ""}


def test_an_incomplete_folder_deleted_is_missed_also_after_a_restart(store, tmp_path):
    guard = make_guard(store, tmp_path, pattern="checkpoint-{step}")
    d = hf_in_pieces(tmp_path / "ckpt", 10, pause=0, done=False)
    guard.scan()
    assert [c["state"] for c in store.checkpoints(1)] == ["incomplete"]
    shutil.rmtree(d)
    again = make_guard(store, tmp_path, pattern="checkpoint-{step}")  # a restarted runner: nothing in memory
    again.recover()
    again.scan()
    assert [c["state"] for c in store.checkpoints(1)] == ["missed"]
    assert [e["kind"] for e in store.events("r")].count("checkpoint.missed") == 1


def test_unknown_layout_needs_settle_and_a_second_scan(store, tmp_path):
    now = [1000.0]
    guard = make_guard(store, tmp_path, pattern="step-{step}", settle=2.0, clock=lambda: now[0])
    d = tmp_path / "ckpt" / "step-5"
    d.mkdir(parents=True)
    (d / "weights.dat").write_bytes(b"w" * 100)
    guard.scan()
    now[0] += 1.9
    guard.scan()
    assert [c["state"] for c in store.checkpoints(1)] == ["incomplete"]
    (d / "more.dat").write_bytes(b"m")  # a change resets the clock
    guard.scan()
    now[0] += 2.5
    real = guard._signature
    calls = []

    def changing(path):  # the second scan, right before vaulting, sees another file arrive
        calls.append(path)
        if len(calls) == 2:
            (d / "late.dat").write_bytes(b"l")
        return real(path)

    guard._signature = changing
    guard.scan()
    assert [c["state"] for c in store.checkpoints(1)] == ["incomplete"]  # the second scan disagreed
    guard._signature = real
    guard.scan()
    now[0] += 2.0
    assert guard.scan() == ["step-5"]
    guard.wait_hashed()
    assert sorted(os.listdir(tmp_path / "vault" / "step-5")) == ["late.dat", "more.dat", "weights.dat"]
    (event,) = [e for e in store.events("r") if e["kind"] == "checkpoint.vaulted"]
    assert event["data"]["layout"] == "unknown" and "second scan" in event["data"]["rule"]


def test_a_vaulted_folder_rewritten_half_way_is_not_brought_into_the_vault_until_complete(store, tmp_path):
    guard = make_guard(store, tmp_path, pattern="checkpoint-{step}")
    d = hf_in_pieces(tmp_path / "ckpt", 10, pause=0)
    assert guard.scan() == ["checkpoint-10"]
    guard.wait_hashed()
    whole = (tmp_path / "vault" / "checkpoint-10" / "optimizer.pt").read_bytes()
    (d / "optimizer.pt").write_bytes(whole[: len(whole) // 2])  # rewritten in place, half-way
    for _ in range(3):
        guard.scan()
    assert (tmp_path / "vault" / "checkpoint-10" / "optimizer.pt").read_bytes() == whole
    torch.save({"state": {"new": 1}}, d / "optimizer.pt")
    guard.scan()
    assert torch.load(tmp_path / "vault" / "checkpoint-10" / "optimizer.pt")["state"] == {"new": 1}
    assert any(e["kind"] == "checkpoint.updated" for e in store.events("r"))


def test_a_preset_or_a_mark_in_the_spec_still_wins(store, tmp_path):
    guard = make_guard(store, tmp_path, pattern="checkpoint-{step}", complete_when={"file": "DONE"})
    d = hf_in_pieces(tmp_path / "ckpt", 10, pause=0)  # complete as a HF folder, but the spec waits for DONE
    assert guard.scan() == []
    (d / "DONE").write_text("")
    assert guard.scan() == ["checkpoint-10"]
    (event,) = [e for e in store.events("r") if e["kind"] == "checkpoint.vaulted"]
    assert event["data"]["rule"] == "complete_when: DONE (spec)"


def test_deepspeed_without_a_preset_waits_for_latest(store, tmp_path):
    guard = make_guard(store, tmp_path, pattern="global_step{step}", keep=None)
    d = tmp_path / "ckpt" / "global_step100"
    d.mkdir(parents=True)
    torch.save({"module": {}}, d / "mp_rank_00_model_states.pt")
    (tmp_path / "ckpt" / "latest").write_text("global_step50")  # an older save's
    guard.scan()
    assert [c["state"] for c in store.checkpoints(1)] == ["incomplete"]
    (tmp_path / "ckpt" / "latest").write_text("global_step100")
    assert guard.scan() == ["global_step100"]


def test_lightning_deepspeed_folder_completes_with_its_inner_latest(store, tmp_path):
    guard = make_guard(store, tmp_path, pattern="epoch={epoch}-step={step}.ckpt", keep=None)
    d = tmp_path / "ckpt" / "epoch=0-step=10.ckpt"
    (d / "checkpoint").mkdir(parents=True)
    torch.save({"module": {}}, d / "checkpoint" / "mp_rank_00_model_states.pt")
    guard.scan()
    assert [c["state"] for c in store.checkpoints(1)] == ["incomplete"]
    (d / "latest").write_text("checkpoint")
    assert guard.scan() == ["epoch=0-step=10.ckpt"]
