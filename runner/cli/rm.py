"""runner rm RUN... and runner prune: remove finished runs (containers, folders, vault copies, records)."""
from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from runner.cli import _common
from runner.cli._render import say


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("rm", parents=parents,
                       help="remove finished runs: their containers, run folders, vault copies and records")
    r.add_argument("runs", nargs="+", metavar="RUN", help="run ids or unique prefixes")
    r.add_argument("--dry-run", "-n", action="store_true", help="say what would be removed, remove nothing")
    r.add_argument("--keep-best", action="store_true",
                   help="keep each phase's best vaulted checkpoint and the run's records (export --best still works)")


def run(args: argparse.Namespace, console: Console) -> int:
    engine = _common.engine(args, existing=True)
    return remove(engine, [engine.store.resolve_run(r) for r in args.runs], args.dry_run, args.keep_best, console)


def remove(engine: Any, run_ids: list[str], dry_run: bool, keep_best: bool, console: Console) -> int:
    from runner.runs.operations import remove_run

    code = 0
    for run_id in run_ids:
        r = remove_run(engine, run_id, dry_run=dry_run, keep_best=keep_best)
        if r.refused:
            say(console, f"refused: {r.refused}")
            code = 1
            continue
        verb = "would remove" if dry_run else "removed"
        say(console, f"run {run_id}: {verb} {len(r.containers)} container(s), {len(r.folders)} folder(s)/file(s)"
                     + (f"; kept {len(r.kept)} best checkpoint(s): {', '.join(r.kept)}" if r.kept else "")
                     + ("" if keep_best else "; records forgotten" if not dry_run else ""))
        if dry_run:
            for f in r.folders:
                say(console, f"  {f}")
    return code
