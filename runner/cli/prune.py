"""runner prune --older-than 7d: remove finished runs older than a duration (see runner rm)."""
from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from runner.cli import _common
from runner.cli._render import say
from runner.errors import UsageError


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("prune", parents=parents,
                       help="remove finished runs that ended more than --older-than ago (never a running one)")
    p.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 7d, 12h, 90m")
    p.add_argument("--dry-run", "-n", action="store_true", help="say what would be removed, remove nothing")
    p.add_argument("--keep-best", action="store_true",
                   help="keep each phase's best vaulted checkpoint and the run's records (export --best still works)")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.cli.rm import remove
    from runner.runs.operations import prunable
    from runner.units import parse_duration

    try:
        older = parse_duration(args.older_than)
    except ValueError as exc:
        raise UsageError(f"--older-than {args.older_than!r}: {exc}") from None
    engine = _common.engine(args, existing=True)
    runs = prunable(engine, older)
    if not runs:
        say(console, f"nothing to prune: no finished run ended more than {args.older_than} ago")
        return 0
    return remove(engine, runs, args.dry_run, args.keep_best, console)
