"""Loss is part of the verdict (issue 24): checkpoints.lost.judge_missed, pure."""
import math

import pytest

from runner.checkpoints.lost import judge_missed
from runner.spec.watch_models import Checkpoints


def row(name, step, state, score=None):
    return {"name": name, "step": step, "state": state, "score": score}


def test_a_missed_checkpoint_better_than_every_vaulted_one_is_the_best_lost():
    rows = [row("c10", 10, "pruned", 3.0), row("c20", 20, "missed"), row("c30", 30, "best", 2.0),
            row("c40", 40, "missed"), row("c50", 50, "kept", 2.5)]
    d = judge_missed(rows, "eval_loss", "min", "warn", {"c20": 1.5, "c40": 1.9})
    assert d.best_lost and d.degrades and not d.fails
    assert [m.name for m in d.lost] == ["c20", "c40"] and d.best_kept.name == "c30"
    text = "\n".join(d.lines())
    assert "the best checkpoint was lost: c20 (step 20, eval_loss 1.5)" in text and "best kept: c30 (eval_loss 2)" in text
    assert "also better than every kept checkpoint and missed: c40" in text
    assert "on_missed_best: warn — the verdict is degraded" in text
    assert d.summary() == "best checkpoint lost: c20 (eval_loss 1.5) was missed"
    assert d.as_dict()["lost"][0] == {"name": "c20", "step": 20, "value": 1.5}


def test_missed_but_worse_or_equal_is_reported_and_does_not_change_the_verdict():
    rows = [row("c10", 10, "best", 1.0), row("c20", 20, "missed", 1.0), row("c30", 30, "missed", 4.0)]
    d = judge_missed(rows, "loss", "min", "fail")
    assert not d.best_lost and not d.fails and not d.degrades and d.summary() == ""
    assert d.lines() == ["note: 2 checkpoint(s) missed in all (deleted before they were complete and vaulted): c20, c30"]


def test_mode_max_and_no_vaulted_checkpoint_at_all():
    rows = [row("c10", 10, "missed", 0.7), row("c20", 20, "missed", 0.9)]
    d = judge_missed(rows, "accuracy", "max", "fail")
    assert d.fails and [m.name for m in d.lost] == ["c20", "c10"] and d.best_kept is None
    assert "best kept: none" in d.lines()[0] and "the phase fails" in d.lines()[0]


def test_a_missed_checkpoint_without_a_value_cannot_be_judged():
    """keep.by a metric only validation produces: a checkpoint never vaulted was never validated."""
    rows = [row("c10", 10, "best", 1.0), row("c20", 20, "missed"), row("c30", 30, "missed", math.nan)]
    d = judge_missed(rows, "val_loss", "min", "warn")
    assert not d.best_lost
    assert any("no val_loss at their step" in line and "c20, c30" in line for line in d.lines())


def test_incomplete_at_the_end_is_named_and_nothing_missed_is_none():
    assert judge_missed([row("c10", 10, "best", 1.0)], "loss") is None
    assert judge_missed([row("c10", 10, "missed", 0.1)], None) is None  # no keep metric: nothing says which is best
    d = judge_missed([row("c10", 10, "best", 1.0), row("c20", 20, "incomplete")], "loss")
    assert not d.best_lost and "still incomplete when the phase ended" in d.lines()[-1]


def test_bad_effect_or_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="on_missed_best must be one of warn, fail"):
        judge_missed([], "loss", "min", "ignore")
    with pytest.raises(ValueError, match="mode must be min or max"):
        judge_missed([], "loss", "lowest")


def test_the_spec_field_defaults_to_warn_and_refuses_anything_else():
    assert Checkpoints.model_validate({"dir": "c"}).on_missed_best == "warn"
    assert Checkpoints.model_validate({"dir": "c", "on_missed_best": "fail"}).on_missed_best == "fail"
    with pytest.raises(ValueError):
        Checkpoints.model_validate({"dir": "c", "on_missed_best": "ignore"})
