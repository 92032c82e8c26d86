"""runner metrics PATH: the scalars runner reads from a logdir, event file or JSONL file."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from runner.cli._render import add_row, say


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    m = sub.add_parser("metrics", parents=parents,
                       help="print the scalars runner reads from a logdir, event file or JSONL file")
    m.add_argument("path", metavar="PATH", help="a TensorBoard event file, a logdir, or a JSONL metrics file")
    m.add_argument("--tag", action="append", default=[], help="only these tags (repeatable)")
    m.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="table (a summary per tag), csv or json (every point)")


def run(args: argparse.Namespace, console: Console) -> int:
    import numpy as np

    from runner.metrics.sources import read_scalars

    metrics, problems = read_scalars(args.path, args.tag)
    err = Console(stderr=True)
    for p in problems:
        say(err, f"warning: {p}")
    names = sorted(metrics.series)
    if args.format == "csv":
        out = ["tag,step,value"]
        for name in names:
            s = metrics.series[name]
            out += [f"{name},{st},{v!r}" for st, v in zip(s.steps.tolist(), s.values.tolist())]
        sys.stdout.write("\n".join(out) + "\n")
    elif args.format == "json":
        doc = {name: {"steps": metrics.series[name].steps.tolist(),
                      "values": [v if v == v and abs(v) != float("inf") else str(v) for v in metrics.series[name].values.tolist()]}
               for name in names}
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("TAG", "POINTS", "FIRST STEP", "LAST STEP", "LAST", "MIN", "MAX"):
            table.add_column(col, no_wrap=True)
        for name in names:
            s = metrics.series[name]
            fin = s.values[np.isfinite(s.values)]
            add_row(table, name, str(len(s)), str(int(s.steps[0])), str(int(s.steps[-1])), f"{s.values[-1]:.6g}",
                    f"{fin.min():.6g}" if fin.size else "-", f"{fin.max():.6g}" if fin.size else "-")
        console.print(table)
        if not names:
            say(console, f"no scalars found under {args.path}")
    return 0
