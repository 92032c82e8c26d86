"""runner replay FILE --logdir DIR: a spec's guards, criteria and next rules over an existing logdir."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console

from runner.cli import _common
from runner.cli._render import say


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    rp = sub.add_parser("replay", parents=parents, help="run a spec's guards, criteria and next rules over an existing logdir")
    rp.add_argument("file", metavar="FILE", help="the phase spec whose guards, criteria and next rules are replayed")
    rp.add_argument("--logdir", required=True, metavar="DIR", help="the finished run's TensorBoard logdir")
    rp.add_argument("--input", "-i", action="append", default=[], metavar="NAME=VALUE", help="set an input (repeatable)")
    rp.add_argument("--output", "-o", choices=["text", "json"], default="text", help="text, or json for scripts")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.decisions.replay import replay

    report = replay(args.file, args.logdir, _common.parse_inputs(args.input))
    if args.output == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    for p in report["warnings"] + report["problems"]:
        say(console, f"warning: {p}")
    for name, m in report["metrics"].items():
        say(console, f"metric {name}: {m['points']} points, steps {m['first_step']}..{m['last_step']}")
    for g in report["guards"]:
        where = f"trips at step {g['step']}: {g['reason']}" if g["step"] is not None else "would not trip"
        say(console, f"guard {g['guard']}: {where}")
    if report["stopped_at"] is not None:
        say(console, f"the run would have been stopped at step {report['stopped_at']}")
    say(console, f"verdict: {report['verdict']}")
    for line in report["explanation"].splitlines():
        say(console, f"  {line}")
    say(console, f"next: {report['next']}")
    return 0
