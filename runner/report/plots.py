"""The report's plots (the only matplotlib import): one figure per metric of a phase, as SVG text
(inline in the HTML) and optionally PNG.  Rendered with the Agg backend: no display, no network."""
from __future__ import annotations

import io
import math

import numpy as np
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from runner.report.model import MetricPlot  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                     "path.simplify": True})

STATE_STYLE = {  # checkpoint markers: vault state → (marker, colour, size)
    "best": ("*", "#d4a017", 140),
    "kept": ("o", "#2a7ab9", 40),
    "pruned": ("x", "#888888", 36),
}


def _thin(steps, values, limit: int = 2500):
    """At most ``limit`` points per line (every k-th; the plot is a picture, the store keeps them all)."""
    if len(steps) <= limit:
        return steps, values
    k = math.ceil(len(steps) / limit)
    return steps[::k], values[::k]


def figure(plot: MetricPlot):
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    steps, raw = _thin(plot.steps, plot.raw)
    ax.plot(steps, raw, color="#9ecae1", linewidth=0.8, label="raw")
    if plot.smoothed is not None:
        s, v = _thin(plot.steps, plot.smoothed)
        ax.plot(s, v, color="#08519c", linewidth=1.6, label=f"smoothed ({plot.smoothing})")
    for t in plot.thresholds:
        s, v = _thin(t.steps, t.values)
        ax.plot(s, v, color="#d62728", linewidth=1.1, linestyle="--", label=f"{t.guard}: trips beyond".replace("$", "\\$"))
        if t.trip_step is not None:
            ax.axvline(t.trip_step, color="#d62728", linewidth=1.4)
            ax.annotate(f"tripped at step {t.trip_step:,}", (t.trip_step, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(-4, -12), textcoords="offset points", color="#d62728", fontsize=8, ha="right")
    for w in plot.windows:
        colour = {True: "#2ca02c", False: "#d62728", None: "#7f7f7f"}[w.passed]
        ax.axvspan(w.start, w.end, color=colour, alpha=0.10)
        if w.threshold is not None:
            ax.hlines(w.threshold, w.start, w.end, colors=colour, linestyles=":", linewidth=1.2)
        if w.measured is not None and w.show_measured:
            ax.hlines(w.measured, w.start, w.end, colors=colour, linewidth=2.0)
        ax.annotate(w.short, (w.start, 0.02), xycoords=("data", "axes fraction"), xytext=(-2, 2 + 11 * w.row),
                    textcoords="offset points", color=colour, fontsize=8, ha="right")
    seen = set()
    for c in plot.checkpoints:
        marker, colour, size = STATE_STYLE.get(c.state, STATE_STYLE["kept"])
        label = None if c.state in seen else f"checkpoint ({c.state})"
        seen.add(c.state)
        ax.scatter([c.step], [c.value], marker=marker, color=colour, s=size, zorder=5, label=label)
    ax.set_xlabel("step")
    ax.grid(alpha=0.25)
    ax.legend(loc="upper left", fontsize=7, frameon=False, ncols=2)
    lo, hi, note = _y_range(plot)
    if lo is not None:
        ax.set_ylim(lo, hi)
    # usetex/mathtext off for names that come from specs and trainers: `$\\foo$` is text, not a formula
    ax.set_title(plot.title + note, loc="left", fontsize=10, parse_math=False)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.88, bottom=0.15)
    return fig


def _y_range(plot: MetricPlot) -> tuple[float | None, float | None, str]:
    """The y range people need: the curve, its guard's threshold and the criteria's values.  A
    blow-up to 1e6 would flatten the curve they came to see: the axis is cut, and the title says so."""
    raw = np.asarray(plot.raw, dtype=np.float64)
    finite = raw[np.isfinite(raw)]
    if not finite.size:
        return None, None, ""
    marks = [float(np.nanmax(t.values)) for t in plot.thresholds if np.isfinite(t.values).any()]
    marks += [w.threshold for w in plot.windows if w.threshold is not None]
    top = float(np.quantile(finite, 0.75 if plot.thresholds else 0.99))
    hi = max([top] + marks)
    lo = min([float(finite.min())] + marks)
    pad = (hi - lo) * 0.12 or 1.0
    if float(finite.max()) > hi + pad * 2:
        return lo - pad, hi + pad * 2, f"  (axis cut: the raw value reaches {float(finite.max()):.4g})"
    return lo - pad, float(finite.max()) + pad, ""


def svg(plot: MetricPlot) -> str:
    fig = figure(plot)
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def png(plot: MetricPlot, path: Path) -> None:
    fig = figure(plot)
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
