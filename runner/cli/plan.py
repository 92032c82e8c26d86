"""runner plan FILE: validate a spec and every spec its next: rules reach; print the graph."""
from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from runner.cli._render import say


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    pl = sub.add_parser("plan", parents=parents, help="validate a spec and every spec its next: rules reach; print the graph")
    pl.add_argument("file", metavar="FILE")
    pl.add_argument("--format", choices=["text", "mermaid"], default="text")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner import graph

    g = graph.build(args.file)
    if args.format == "mermaid":
        say(console, graph.render_mermaid(g))
    else:
        say(console, graph.render_tree(g))
        say(console, f"{len(g.specs)} spec(s), {len(g.edges)} rule(s): all valid")
    return 0
