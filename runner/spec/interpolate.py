"""``${{ namespace.key }}`` references in spec strings.

Namespaces known when a phase is planned:
  inputs.NAME   the phase's inputs (spec defaults, overridden by --input / a chain's `with:`)
  run.id        the run id;  run.dir  the run's folder under runs/
  phase.name    the phase name;  phase.dir  the phase's folder runs/RUN/PHASE (created by runner)
Known only when the phase has ended, so only in `next:` rules:
  phase.verdict, phase.best_checkpoint, phase.last_checkpoint
  metrics.NAME.STAT   a metric summary: last, last_step, min, max, mean, count
  best.step, best.NAME   the phase's best vaulted checkpoint: its step, and each metric there — a validation
                      metric the checkpoint's own validation, a training metric its smoothed value at that
                      step (where the checkpoint was, not a noisy point); empty when unknown

Substitution is plain text replacement into a string; nothing is ever evaluated
or handed to a shell.
"""
from __future__ import annotations

import re
from typing import Any, Callable

REF_RE = re.compile(r"\$\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
NAMESPACES: dict[str, set[str] | None] = {
    "inputs": None,
    "run": {"id", "dir"},
    "phase": {"name", "dir", "verdict", "best_checkpoint", "last_checkpoint"},
    "metrics": None,
    "checkpoint": {"path", "step"},
    "best": None,
}
OUTPUTS = {("phase", "verdict"), ("phase", "best_checkpoint"), ("phase", "last_checkpoint")}
STATS = {"last", "last_step", "min", "max", "mean", "count", "smoothed"}


def references(text: str) -> list[tuple[str, str]]:
    """Every (namespace, key) referenced in ``text``."""
    return [(m.group(1), m.group(2)) for m in REF_RE.finditer(text)]


def check_reference(namespace: str, key: str, declared_inputs: set[str], in_next: bool = False) -> str | None:
    """A message if the reference can never resolve, else None.  ``in_next``: inside a `next:` rule,
    where the ended phase's outputs are known."""
    if namespace not in NAMESPACES:
        return f"unknown namespace in ${{{{ {namespace}.{key} }}}}; known: {', '.join(sorted(NAMESPACES))}"
    if namespace == "checkpoint":
        return None  # placement is checked by the loader (only in checkpoints.validate.command)
    if (namespace, key) in OUTPUTS or namespace in ("metrics", "best"):
        if not in_next:
            return f"${{{{ {namespace}.{key} }}}} is known only when the phase has ended: use it in next: rules or retry.with"
        if namespace == "metrics" and key.rsplit(".", 1)[-1] not in STATS:
            return f"${{{{ metrics.{key} }}}}: write metrics.NAME.STAT with STAT one of {', '.join(sorted(STATS))}"
        return None
    if namespace == "inputs" and key not in declared_inputs:
        known = ", ".join(sorted(declared_inputs)) or "none declared"
        return f"${{{{ inputs.{key} }}}} is not declared under inputs: ({known})"
    allowed = NAMESPACES[namespace]
    if allowed is not None and key not in allowed:
        return f"unknown reference ${{{{ {namespace}.{key} }}}}; {namespace} has {', '.join(sorted(allowed))}"
    return None


def substitute(text: str, context: dict[str, dict[str, Any]], keep: frozenset[str] = frozenset()) -> str:
    """Replace every reference in ``text`` from ``context``; KeyError names a missing one.
    References in a ``keep`` namespace are left as they are (filled in later)."""

    def repl(m: re.Match) -> str:
        ns, key = m.group(1), m.group(2)
        if ns in keep:
            return m.group(0)
        try:
            value = context[ns][key]
        except KeyError:
            raise KeyError(f"{ns}.{key}") from None
        if value is None:
            raise KeyError(f"{ns}.{key}")
        return as_text(value)

    return REF_RE.sub(repl, text)


def as_text(value: Any) -> str:
    """A value as it is substituted into a string (numbers as the user wrote them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return getattr(value, "source", str(value))
    return str(value)


def walk_strings(data: Any, fn: Callable[[str, tuple], str], path: tuple = ()) -> Any:
    """A copy of ``data`` (dicts, lists, scalars) with ``fn(string, path)`` applied to every string value."""
    if isinstance(data, dict):
        return {k: walk_strings(v, fn, path + (k,)) for k, v in data.items()}
    if isinstance(data, list):
        return [walk_strings(v, fn, path + (i,)) for i, v in enumerate(data)]
    if isinstance(data, str):
        return fn(data, path)
    return data
