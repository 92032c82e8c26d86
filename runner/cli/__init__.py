"""Command line: parse arguments, call the core, render, map errors to exit codes. Nothing else lives here.

One module per command (``add_parser`` + ``run``); rendering in ``_render``. What a command does to runs
(export, reconcile, stop, logs, submission) lives below: runner.runs.operations, runner.runs.queries,
runner.runs.export, runner.server.submit, runner.metrics.sources.read_scalars, runner.report.write_report.

Exit codes (README, "Exit codes") — the error's type decides:
  0 ok (or detached); 1 what was asked failed or cannot be done: invalid spec (SpecError), failed / blocked /
  lost phase, something named that does not exist (NotFound), a request that conflicts with what exists
  (Refused); 2 usage (argparse, UsageError); 3 infrastructure (any other RunnerError: engine unreachable, image
  missing, no GPU runtime, the engine refusing a container, nvidia-smi; an OSError such as a full disk);
  4 internal error (a bug in runner); 5 (apply/attach --strict) succeeded only through a failure branch;
  6 (apply/attach) succeeded, degraded: a phase's best checkpoint was lost; 130 cancelled (Ctrl-C, or a phase
  recorded cancelled).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from types import ModuleType
from typing import TYPE_CHECKING, Sequence

from runner import __version__
from runner.errors import RunnerError, SpecError
from runner.paths import DEFAULT_STATE

if TYPE_CHECKING:
    from rich.console import Console

OK, FAILED, USAGE, INFRASTRUCTURE, INTERNAL, CANCELLED = 0, 1, 2, 3, 4, 130

# The order of `runner --help`.  A command's module (runner.cli.NAME) is imported only when it is needed: a run of
# one command imports that command alone (`runner metrics FILE` never loads rich, pydantic or the engine), while
# `runner --help`, a usage error and `runner completion` build the whole parser from every module.
COMMANDS: tuple[str, ...] = (
    "validate", "schema", "apply", "serve", "queue", "status", "logs", "stop", "attach", "checkpoints", "export",
    "metrics", "plan", "report", "replay", "rm", "prune", "tensorboard", "completion",
)


def command_module(name: str) -> ModuleType:
    """The module of command ``name`` (``add_parser`` + ``run``; ``LAZY_CONSOLE = True`` when its ``run`` takes
    ``None`` and makes its console itself, only if it prints through rich)."""
    return importlib.import_module(f"runner.cli.{name}")


def exit_code(exc: BaseException) -> int:
    """The exit code of an error that reached the command line: decided by its type alone."""
    if isinstance(exc, RunnerError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return CANCELLED
    if isinstance(exc, OSError):
        return INFRASTRUCTURE  # a disk, a permission, a socket: the machinery, not the request
    return INTERNAL


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    """--state and --debug, accepted before the command (the main parser) and after it (each subcommand's parent,
    whose defaults are suppressed so they never overwrite a value given before the command)."""
    p = argparse.ArgumentParser(add_help=False)
    sup = {} if defaults else {"default": argparse.SUPPRESS}
    p.add_argument("--state", metavar="PATH", help=f"run store (default $RUNNER_STATE or {DEFAULT_STATE}); runs/ is its folder",
                   **({"default": None} if defaults else sup))
    p.add_argument("--debug", action="store_true", help="show tracebacks", **({"default": False} if defaults else sup))
    return p


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser: every command, or with ``only`` that one command (the same options and help)."""
    p = argparse.ArgumentParser(prog="runner", description="Declarative job-spec runner for long GPU training runs.",
                                parents=[_global_options(True)],
                                epilog="exit codes: 0 ok; 1 invalid spec, failed phase, not found or refused; 2 usage; "
                                       "3 infrastructure (engine, image, GPUs, disk); 4 internal error; 130 cancelled")
    p.add_argument("--version", action="version", version=f"runner {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    common = [_global_options(False)]
    for name in (only,) if only else COMMANDS:
        command_module(name).add_parser(sub, common)
    for name, command in sub.choices.items():  # `runner CMD --help` opens with what the command does
        if not command.description:
            command.description = next((a.help for a in sub._choices_actions if a.dest == name), None)
    return p


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` when it can be told without the full parser: the first word after the global
    options, spelled out (--state PATH, --state=PATH, --debug).  Anything else (--help, --version, an abbreviated or
    unknown option, no command) is left to the full parser, which says what it says today."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--state":
            i += 2
        elif word.startswith("--state=") or word == "--debug":
            i += 1
        elif word.startswith("-"):
            return None
        else:
            return word if word in COMMANDS else None
    return None


def _console() -> Console:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped: $COLUMNS when set (a script sizing its output), else 200 — never squeezed to 80 columns.
        try:
            width = int(os.environ.get("COLUMNS") or 200)
        except ValueError:
            width = 200
        console = Console(highlight=False, width=max(40, width))
    return console


def _say_err(text: str) -> None:
    """One line on stderr, as every command writes its errors (made when there is one: rich loads only then)."""
    from rich.console import Console

    from runner.cli._render import say

    say(Console(stderr=True, highlight=False), text)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(_command_in(argv)).parse_args(argv)  # usage errors: argparse prints them and exits 2
    try:
        module = command_module(args.cmd)
        return int(module.run(args, None if getattr(module, "LAZY_CONSOLE", False) else _console()))
    except SpecError as exc:
        for problem in exc.problems:
            _say_err(str(problem))
        return exit_code(exc)
    except RunnerError as exc:
        if args.debug:
            traceback.print_exc()
        _say_err(f"runner: {exc}")
        return exit_code(exc)
    except KeyboardInterrupt as exc:
        _say_err("runner: interrupted")
        return exit_code(exc)
    except BrokenPipeError:
        return OK
    except Exception as exc:  # a bug, or the machinery (OSError): one line unless --debug, never a bare traceback
        if args.debug:
            traceback.print_exc()
        what = "error" if isinstance(exc, OSError) else "internal error"
        _say_err(f"runner: {what}: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return exit_code(exc)
