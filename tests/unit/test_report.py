"""`runner report`: one self-contained HTML file from the run store (no Docker: the FakeBackend ran it)."""
import re

import pytest

from runner.cli import main
from runner.report import render_run
from runner.report.model import run_report
from runner.store import Store
from tests.report_run import make_run


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("report"))


def test_what_the_report_plots(finished):
    state, run_id = finished
    rep = run_report(Store(state), run_id)
    p1, p2 = rep.phases
    (plot,) = [p for p in p1.plots if p.metric == "text_loss"]
    (threshold,) = plot.thresholds
    # the guard's trip step is the one recorded, and its threshold is the smoothed best + 50% before it
    assert threshold.trip_step == 185 and plot.smoothed is not None and "the guard's" in plot.smoothing
    i = list(plot.steps).index(150)
    assert threshold.values[i] == pytest.approx(plot.smoothed[i] * 1.5)
    assert [(c.step, c.state) for c in plot.checkpoints] == [(20, "pruned"), (50, "kept"), (100, "best")]
    (window,) = plot.windows
    assert window.passed is False and window.threshold == 3.2 and window.end == 200 and "measured" in window.label
    # the chain: rule 2 (failure) of p1 was taken, rule 1 (success) was not
    assert rep.chain.taken and [(e.when, e.taken) for e in rep.chain.edges] == [("success", False), ("failure", True)]
    assert rep.chain.edges[1].target.taken


def test_html_is_self_contained_and_escaped(finished):
    state, run_id = finished
    text = render_run(Store(state), run_id)
    assert text.count("<svg") == 1 and 'data-metric="text_loss"' in text and "tripped at step 185" in text
    # nothing fetched at view time
    assert not re.search(r"<(script|link|img|iframe)\b", text)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    # text from the store is shown, never interpreted
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "capabilities: [[gpu]]" in text
    assert "verdict" in text.lower() and "Timeline" in text and "rule 2 fired" in text


def test_cli_writes_html_and_pngs(finished, tmp_path, capsys):
    state, run_id = finished
    out, pngs = tmp_path / "r.html", tmp_path / "png"
    assert main(["--state", str(state), "report", run_id[:10], "-o", str(out), "--png", str(pngs)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    names = sorted(p.name for p in pngs.iterdir())
    assert "01-p1-diverge-text_loss.png" in names and all((pngs / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    assert f"report of run {run_id}" in capsys.readouterr().out
    assert main(["--state", str(state), "report", "nope"]) == 1


def test_the_live_view_of_a_phase_without_metrics_says_how_to_get_progress(tmp_path):
    """No metrics: block: no empty metric table, a one-line hint that the trainer's own lines can give progress,
    guards and criteria."""
    from rich.console import Console

    from runner.cli._render import render_view
    from runner.spec.models import Phase
    from runner.supervision import Supervision

    bare = Phase.model_validate({"apiVersion": "runner/v1", "kind": "Phase", "name": "p1",
                                 "container": {"image": "x", "command": ["train"]}})
    view = Supervision(bare, tmp_path).view()
    console = Console(width=200, record=True)
    console.print(render_view("p1", {**view, "state": "running"}))
    text = console.export_text()
    assert "no metrics: block" in text and "metric" not in text.split("no metrics")[0]
    with_metrics = Phase.model_validate({**bare.model_dump(by_alias=True, exclude_none=True),
                                         "metrics": {"stdout": {"step": r"step (\d+)", "patterns": {}}}})
    assert Supervision(with_metrics, tmp_path).view()["hint"] == ""
