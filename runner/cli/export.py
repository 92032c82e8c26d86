"""runner export RUN [PHASE] --best DEST: the best checkpoint out of the vault, sha256 verified."""
from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from runner.cli import _common
from runner.cli._render import say


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    ex = sub.add_parser("export", parents=parents,
                        help="copy a phase's best checkpoint out of the vault and verify its sha256")
    ex.add_argument("run", metavar="RUN", help="run id or unique prefix")
    ex.add_argument("phase", nargs="?", metavar="PHASE",
                    help="phase name (default: the run's last phase that has checkpoints)")
    ex.add_argument("--best", required=True, metavar="DEST",
                    help="an existing folder, or a path ending in / (a folder, created if missing): the checkpoint "
                         "keeps its name inside it; otherwise the new file's path (its folder is created if missing). "
                         "An existing target is never overwritten")
    ex.add_argument("--force", action="store_true",
                    help="export the best checkpoint even when its vaulted copy is incomplete for its layout (e.g. a "
                         "Hugging Face Trainer folder without trainer_state.json, vaulted by an older runner); says "
                         "what it lacks")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.runs.export import export_best
    from runner.store import Store

    store = Store(_common.existing_state(args))
    run_id = store.resolve_run(args.run)
    done = export_best(store, run_id, args.phase, args.best, force=args.force)
    c = done.checkpoint
    say(console, f"exported {c['name']} (step {c['step']}, score {c['score']:.5g}) to {done.dest}; sha256 {done.sha256} "
                 "verified" + (f" ({done.files} files, each checked)" if done.files else ""))
    if done.incomplete:
        say(console, f"WARNING: exported incomplete on purpose (--force): {done.incomplete}")
    if done.pending:
        say(console, f"note: {', '.join(done.pending[:4])} still being written (incomplete): the best of the complete "
                     "checkpoints was exported")
    return 0
