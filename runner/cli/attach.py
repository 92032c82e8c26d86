"""runner attach RUN: re-adopt a detached phase in the foreground."""
from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from runner.cli._foreground import foreground


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    at = sub.add_parser("attach", parents=parents,
                        help="re-adopt a detached phase: guards, verdict and chain continue where they were")
    at.add_argument("--strict", action="store_true",
                    help="exit 5 when the chain succeeded only through a failure branch (an earlier phase failed)")
    at.add_argument("run", metavar="RUN", help="run id or unique prefix")


def run(args: argparse.Namespace, console: Console) -> int:
    return foreground(args, console, lambda engine: engine.attach(engine.store.resolve_run(args.run)), existing=True)
