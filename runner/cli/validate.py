"""runner validate FILE...: every problem of every spec, located."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from rich.console import Console

from runner.cli._render import say
from runner.errors import SpecError


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("validate", parents=parents, help="check spec files; every problem is listed with file:line:col")
    p.add_argument("files", nargs="+", metavar="FILE", help="phase spec files (YAML)")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.decisions.policy import source_findings
    from runner.spec import load_spec

    bad = 0
    for f in args.files:
        try:
            loaded = load_spec(f)
        except SpecError as exc:
            bad += 1
            for problem in exc.problems:
                say(console, str(problem))
            continue
        missing, warnings = source_findings(loaded)  # mount sources: what exists on this machine now
        bad += bool(missing)
        for problem in sorted(missing + warnings, key=lambda p: (p.line, p.col)):
            say(console, str(dataclasses.replace(problem, file=f)))  # named as given, like the loader's problems
        if not missing:
            say(console, f"{f}: ok (phase {loaded.phase.name})" + (f", {len(warnings)} warning(s)" if warnings else ""))
    return 1 if bad else 0
