"""JSONL and stdout metric sources; chain decisions; preconditions."""
from pathlib import Path

import pytest

from runner import preconditions
from runner.decisions import chain
from runner.metrics.series import MetricSet
from runner.metrics.sources import JsonlReader, StdoutParser
from runner.spec.criteria_models import NextRule
from runner.spec.watch_models import Precondition


def test_jsonl_incremental_and_partial_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "val_loss": 2.5, "note": "x"}\n{"step": 2, "val_loss": NaN}\n{"step": 3, "val_')
    r = JsonlReader(path)
    first = r.poll()
    assert first["val_loss"][0].tolist() == [1, 2]
    with open(path, "a") as f:
        f.write('loss": 1.5}\nnot json\n')
    second = r.poll()
    assert second["val_loss"][0].tolist() == [3] and second["val_loss"][1].tolist() == [1.5]
    assert len(r.problems) == 1 and ":4:" in r.problems[0]


def test_stdout_regexes():
    p = StdoutParser(r"step (\d+)", {"text_loss": r"text_loss ([-+.\deE]+|nan|inf)"})
    for line in ["booting", "step 10 text_loss 2.5 lr 1e-3", "step 20 text_loss nan"]:
        p.feed(line)
    out = p.poll()
    steps, values, _ = out["text_loss"]
    assert steps.tolist() == [10, 20] and values[0] == 2.5 and values[1] != values[1]
    assert p.poll() == {}


def test_chain_decision_substitutes_outputs():
    rules = [NextRule.model_validate({"when": "success", "apply": "p2.yaml",
                                      "with": {"resume_from": "${{ phase.best_checkpoint }}", "base": "${{ metrics.loss.mean }}"}}),
             NextRule.model_validate({"when": "failure", "apply": "restart.yaml"})]
    outputs = {"best_checkpoint": "/r/ckpt/model_step300.pth", "metrics": {"loss": {"mean": 2.5}}, "dir": "/r", "verdict": "success"}
    d = chain.decide(rules, "success", MetricSet(), outputs, {}, {"id": "r", "dir": "/r"}, Path("/specs"), {})
    assert d.rule == 0 and d.spec == "/specs/p2.yaml"
    assert d.inputs == {"resume_from": "/r/ckpt/model_step300.pth", "base": "2.5"}
    d = chain.decide(rules, "failure", MetricSet(), outputs, {}, {}, Path("/specs"), {})
    assert d.spec == "/specs/restart.yaml"
    d = chain.decide(rules, "success", MetricSet(), outputs, {}, {}, Path("/specs"), {0: 1})
    assert d.spec is None and "max_iterations" in d.reason


def test_preconditions(tmp_path):
    ck = tmp_path / "model_step351000.pth"
    ck.write_bytes(b"x" * 2048)
    res = preconditions.resolver(tmp_path)

    def check(d, **kw):
        return preconditions.check(Precondition.model_validate(d), res, **kw)

    assert check({"file_exists": "model_step351000.pth"})[0]
    ok, why = check({"file_exists": {"path": "model_step351000.pth", "min_size": "1m"}})
    assert not ok and "smaller than 1.0 MiB" in why
    assert check({"checkpoint_step": {"path": str(ck), "at_least": 351000}})[0]
    ok, why = check({"checkpoint_step": {"path": str(ck), "at_least": 400000}})
    assert not ok and "below 400000" in why
    assert check({"disk_free": {"path": "nested/not/yet", "at_least": "1k"}})[0]
    assert not check({"disk_free": {"path": ".", "at_least": "1000000TiB"}})[0]
    assert check({"gpu_memory_free": {"at_least": "1g"}}, gpus=0)[0]
    prev = {"p1": {"verdict": "success", "outputs": {"metrics": {"loss": {"last": 1.2}}}}}
    assert check({"phase": {"name": "p1", "verdict": "success", "metric": "loss", "below": 1.5}}, previous=prev.get)[0]
    ok, why = check({"phase": {"name": "p1", "verdict": "failure"}}, previous=prev.get)
    assert not ok and "verdict is success" in why


def test_gpu_precondition_on_a_cpu_host_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    ok, why = preconditions.check(Precondition.model_validate({"gpu_memory_free": {"at_least": "1g"}}),
                                  preconditions.resolver(tmp_path), gpus=1)
    assert not ok and "no NVIDIA GPU visible on this host" in why


def test_precondition_sets_exactly_one_check():
    with pytest.raises(ValueError, match="exactly one"):
        Precondition.model_validate({"file_exists": "a", "image_present": True})
