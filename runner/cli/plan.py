"""runner plan FILE: validate a spec and every spec its next: rules reach; print the graph."""
from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from runner.cli import _common
from runner.cli._render import say


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    pl = sub.add_parser("plan", parents=parents, help="validate a spec and every spec its next: rules reach; print the graph")
    pl.add_argument("file", metavar="FILE", help="the first phase spec of the chain (YAML)")
    pl.add_argument("--input", "-i", action="append", default=[], metavar="NAME=VALUE",
                    help="an input as `runner apply` would get it (repeatable); with any, required inputs are checked")
    pl.add_argument("--format", choices=["text", "mermaid"], default="text",
                    help="text (a tree) or mermaid (a flowchart to paste into Markdown)")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.decisions import graph
    from runner.errors import SpecError
    from runner.decisions.policy import source_findings

    inputs = _common.parse_inputs(args.input) if args.input else None
    g, problems = graph.analyse(args.file, inputs)
    warnings = []
    for path, spec in g.specs.items():  # mount sources: what exists on this machine now
        bad, maybe = source_findings(spec, inputs, first=path == g.root)
        problems += bad
        warnings += maybe
    err = Console(stderr=True, highlight=False)
    for w in warnings:
        say(err, str(w))
    if problems:
        raise SpecError(problems)
    if args.format == "mermaid":
        say(console, graph.render_mermaid(g))
    else:
        say(console, graph.render_tree(g))
        say(console, f"{len(g.specs)} spec(s), {len(g.edges)} rule(s): all valid"
                     + (f", {len(warnings)} warning(s)" if warnings else ""))
        first = g.specs[g.root]
        required = [k for k, v in ((first.doc.data or {}).get("inputs") or {}).items() if v is None]
        if inputs is None and required:
            say(console, "required at apply: " + ", ".join(f"--input {k}=VALUE" for k in required)
                + " (plan --input checks them)")
    return 0
