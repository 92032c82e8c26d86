"""`runner report` and the web page's run page: one self-contained HTML file per run.

Plots (matplotlib, SVG inline), the verdict's explanation, the chain graph with the path taken, and
the event timeline; nothing is fetched at view time.  Every text from the store is escaped."""
from __future__ import annotations

import datetime as dt
import html
import time
from pathlib import Path

from runner.lifecycle import S
from runner.report.model import ChainNode, PhaseReport, RunReport, run_report
from runner.store import Store

__all__ = ["render_run", "write_pngs", "run_report", "CSS", "e", "when"]

CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:1.5em auto;max-width:1000px;color:#222;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
pre{background:#f6f8fa;padding:.6em;white-space:pre-wrap;font-size:.88em}.muted{color:#777}
.status{display:inline-block;padding:0 .5em;border-radius:3px;background:#eee}.succeeded,.success{background:#d8f0d8}
.failed,.failure,.lost,.error{background:#f8d7d7}.running,.detached,.pending,.launching{background:#dbe9f8}.inconclusive,.blocked,.cancelled{background:#f5ecd0}
.chain ul{list-style:none;padding-left:1.4em;margin:.2em 0}.chain li{margin:.2em 0}.taken{font-weight:bold;color:#0a5}.nottaken{color:#999}
.plot svg{max-width:100%;height:auto}.note{background:#fff6d6;padding:.4em .6em}
"""


def e(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def _status(s: str | None) -> str:
    return f'<span class="status {e(s)}">{e(s or "-")}</span>'


def _chain(node: ChainNode) -> str:
    cls = "taken" if node.taken else "nottaken"
    out = [f'<li><span class="{cls}">{e(Path(node.path).name)} (phase {e(node.phase)})</span>']
    if node.edges:
        out.append("<ul>")
        for edge in node.edges:
            cls = "taken" if edge.taken else "nottaken"
            arrow = "⇒" if edge.taken else "→"
            if edge.target is None:
                out.append(f'<li><span class="{cls}">when {e(edge.when)} {arrow} {e(edge.target_name)} ↺</span></li>')
            else:
                out.append(f'<li><span class="{cls}">when {e(edge.when)} {arrow}</span><ul>{_chain(edge.target)}</ul></li>')
        out.append("</ul>")
    out.append("</li>")
    return "".join(out)


def _phase(p: PhaseReport, with_plots: bool) -> str:
    from runner.report import plots as render

    r = p.row
    out = [f'<section class="phase" id="phase-{e(r["name"])}"><h2>Phase {e(r["name"])} {_status(r["status"])}</h2>',
           f'<p>spec <code>{e(r["spec_path"])}</code>; started {e(when(r["started_at"]))}, '
           f'{"finished " + e(when(r["finished_at"])) if r["finished_at"] else "not finished"}'
           + (f'; exit code {e(r["exit_code"])}' if r["exit_code"] is not None else "") + "</p>"]
    if r["reason"]:
        out.append(f"<p>{e(r['reason'])}</p>")
    for t in p.trips:
        if t["message"].split(": ", 1)[-1] not in (r["reason"] or ""):  # not said once already
            out.append(f'<p class="note">{e(t["message"])}</p>')
    if with_plots:
        for plot in p.plots:
            caption = "".join(f"<li>{e(w.label)}</li>" for w in plot.windows)
            caption += "".join(f"<li>guard {e(t.guard)}: the dashed line is its smoothed best plus its margin"
                               + (f"; it tripped at step {t.trip_step:,}" if t.trip_step is not None else "") + "</li>"
                               for t in plot.thresholds)
            out.append(f'<figure class="plot" data-metric="{e(plot.metric)}">{render.svg(plot)}'
                       + (f"<figcaption><ul>{caption}</ul></figcaption>" if caption else "") + "</figure>")
        if not p.plots:
            out.append('<p class="muted">no metrics recorded</p>')
    if p.checkpoints:
        out.append("<h3>Checkpoints</h3><table><tr><th>step</th><th>state</th><th>score</th><th>sha256</th><th>vault</th></tr>")
        for c in p.checkpoints:
            state = c["state"] + (" (was best)" if c["ever_best"] and c["state"] != "best" else "")
            score = "" if c["score"] is None else f"{c['score']:.5g}"
            out.append(f"<tr><td>{c['step']:,}</td><td>{e(state)}</td><td>{e(score)}</td>"
                       f"<td><code>{e((c['sha256'] or '')[:16])}</code></td><td><code>{e(c['vault_path'])}</code></td></tr>")
        out.append("</table>")
    if r["verdict"] or r["explanation"]:
        kind = f" ({e(r['failure_kind'])})" if r.get("failure_kind") else ""
        out.append(f"<h3>Verdict: {_status(r['verdict'])}{kind}</h3><pre>{e(r['explanation'])}</pre>")
    if r["decision"]:
        out.append(f"<p><b>next:</b> {e(r['decision'])}</p>")
    out.append("</section>")
    return "".join(out)


def render_body(rep: RunReport, with_plots: bool = True) -> str:
    run = rep.run
    after = " after a failure branch" if rep.outcome == "recovered" else ""
    out = [f"<h1>Run {e(run['id'])} {_status(rep.status)}{after}</h1>",
           f"<p>spec <code>{e(run['spec_path'])}</code>, created {e(when(run['created_at']))}; "
           f"{len(rep.phases)} phase(s)</p>"]
    if any(p.row["status"] in (S.PENDING, S.LAUNCHING, S.RUNNING, S.DETACHED) for p in rep.phases):
        out.append(f'<p class="note">The run is still going: this report shows what was known at {e(when(time.time()))}.</p>')
    out += [_phase(p, with_plots) for p in rep.phases]
    out.append('<h2>Chain</h2><div class="chain">')
    if rep.chain is not None:
        out.append(f"<ul>{_chain(rep.chain)}</ul><p class=\"muted\">bold green: the path this run took</p>")
    else:
        out.append(f"<p class=\"muted\">{e(rep.chain_problem)}</p><ol>"
                   + "".join(f"<li>{e(p.row['name'])}: {e(p.row['decision'])}</li>" for p in rep.phases) + "</ol>")
    out.append("</div><h2>Timeline</h2><table class=\"events\"><tr><th>at</th><th>event</th><th>what happened</th></tr>")
    for ev in rep.events:
        out.append(f"<tr><td>{e(when(ev['at']))}</td><td>{e(ev['kind'])}</td><td>{e(ev['message'])}</td></tr>")
    out.append("</table>")
    return "".join(out)


def page(title: str, body: str, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{meta}<title>{e(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>")


def render_run(store: Store, run_id: str) -> str:
    """The whole report as one self-contained HTML document."""
    rep = run_report(store, run_id)
    return page(f"runner report: run {run_id}", render_body(rep) +
                f'<p class="muted">made by runner report at {e(when(time.time()))}</p>')


def write_pngs(store: Store, run_id: str, folder: Path) -> list[Path]:
    from runner.report import plots as render

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for p in run_report(store, run_id).phases:
        for plot in p.plots:
            path = folder / f"{p.row['seq']:02d}-{p.row['name']}-{plot.metric.replace('/', '_')}.png"
            render.png(plot, path)
            written.append(path)
    return written


def write_report(store: Store, run_id: str, out: Path) -> int:
    """Write the report of a run to ``out`` atomically (a .part file renamed into place); returns its size in bytes."""
    import os

    text = render_run(store, run_id)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return len(text)
