"""runner schema: the JSON Schema of a phase spec."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.console import Console


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    sub.add_parser("schema", parents=parents, help="print the JSON Schema of a phase spec (Draft 2020-12)")


def run(args: argparse.Namespace, console: Console) -> int:
    from runner.spec.schema import schema_text

    sys.stdout.write(schema_text())
    return 0
