"""`runner plan`: every spec reachable through `next:`, validated before anything runs, as a graph."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.paths import spec_relative
from runner.errors import Problem, SpecError
from runner.spec import LoadedSpec, load_spec
from runner.spec.loader import dotted

if TYPE_CHECKING:
    from runner.spec.criteria_models import Criterion, Group, WhenFailed


@dataclass
class Edge:
    source: str
    rule: int
    when: str
    target: str
    inputs: list[str]
    max_iterations: int | None


@dataclass
class Graph:
    root: str
    specs: dict[str, LoadedSpec] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)


def _when_text(when: str | WhenFailed | Criterion | Group) -> str:
    if isinstance(when, str):
        return when
    from runner.decisions.criteria import describe
    from runner.spec.criteria_models import Criterion, WhenFailed

    if isinstance(when, WhenFailed):
        return "failed: " + ", ".join(when.failed)
    if isinstance(when, Criterion):
        return describe(when)
    items = when.all if when.all is not None else when.any
    assert items is not None  # a Group's validator requires exactly one of all: and any:
    joiner = " and " if when.all is not None else " or "
    return joiner.join(_when_text(i) for i in items)


def check(path: str | Path, inputs: dict[str, str] | None = None, root: LoadedSpec | None = None) -> list[Problem]:
    """Every problem of the chain that starts at ``path``, before anything runs (`runner plan`, `runner apply`,
    an inbox drop, a submission to the server): each spec its `next:` rules reach exists and loads (one that
    does not is named at the rule: ``FILE:LINE:COL: next[i].apply: ...``), each rule passes only inputs its
    target declares and every input the target requires, `retry.with` sets only the spec's own inputs, and a
    rule that loops back sets max_iterations.  ``inputs``: the run's ``--input`` values when known (apply,
    `plan --input`): then the first spec's required inputs must be among them (a later spec's may be too:
    an ``--input`` reaches every spec of the chain that declares it), and each must be declared by some spec
    of the chain.  ``root``: the spec at ``path`` already loaded (e.g. an inbox file not yet moved there)."""
    return analyse(path, inputs, root)[1]


def build(path: str | Path, root: LoadedSpec | None = None, inputs: dict[str, str] | None = None) -> Graph:
    """The chain as a graph; SpecError lists every problem ``check`` finds, in every file."""
    graph, problems = analyse(path, inputs, root)
    if problems:
        raise SpecError(problems)
    return graph


def analyse(path: str | Path, inputs: dict[str, str] | None = None,
            root: LoadedSpec | None = None) -> tuple[Graph, list[Problem]]:
    """The graph of every spec that loads, and every problem of the chain (see ``check``)."""
    preloaded = root
    graph = Graph(str(Path(path).resolve()))
    problems: list[Problem] = []
    failed: dict[str, list[Problem]] = {}  # a reached spec that does not load: its own problems
    queue = [graph.root]
    while queue:
        current = queue.pop(0)
        if current in graph.specs or current in failed:
            continue
        try:
            if preloaded is not None and current == graph.root:
                loaded = preloaded
            else:  # the first spec's own errors name it as it was given
                loaded = load_spec(path if current == graph.root else current)
        except SpecError as exc:
            failed[current] = exc.problems
            continue
        graph.specs[current] = loaded
        for i, rule in enumerate(loaded.phase.next):
            target = str(spec_relative(loaded.folder, rule.apply))
            graph.edges.append(Edge(current, i, _when_text(rule.when), target, sorted(rule.with_), rule.max_iterations))
            if target not in graph.specs:
                queue.append(target)
    problems += failed.pop(graph.root, [])
    for e in graph.edges:
        src = graph.specs[e.source]
        tgt = graph.specs.get(e.target)
        if tgt is None:  # said at the rule: the file the person edits to fix it, or to see where it is used
            own = failed.get(e.target, [])
            unreadable = [p.message for p in own if p.line == 0]
            line, col = src.doc.position(("next", e.rule, "apply"))
            why = (f"{unreadable[0]} ({e.target})" if unreadable
                   else f"{Path(e.target).name} is not a valid spec ({len(own)} problem(s), listed under {e.target})")
            problems.append(Problem(e.source, line, col, f"next[{e.rule}].apply", f"{src.phase.next[e.rule].apply}: {why}"))
            continue
        declared = _declared(tgt)
        for name in e.inputs:
            if name not in declared:
                line, col = src.doc.position(("next", e.rule, "with", name), key=True)
                problems.append(Problem(e.source, line, col, dotted(("next", e.rule, "with", name)),
                                        f"{Path(e.target).name} declares no input {name!r} (declared: {', '.join(declared) or 'none'})"))
        for name, default in declared.items():
            if default is None and name not in e.inputs and (inputs is None or name not in inputs):
                line, col = src.doc.position(("next", e.rule, "with"))
                problems.append(Problem(e.source, line, col, dotted(("next", e.rule)),
                                        f"{Path(e.target).name} requires input {name!r}; pass it in with:"))
    for own in failed.values():  # a broken spec's own located problems, after the rule's
        problems += [p for p in own if p.line != 0]
    problems += _retry_problems(graph)
    if inputs is not None:
        problems += _input_problems(graph, inputs, complete=not failed)
    problems += _loops(graph)
    return graph, sorted(set(problems), key=lambda p: (p.file, p.line, p.col, p.path, p.message))


def _retry_problems(graph: Graph) -> list[Problem]:
    """``retry.with`` naming an input its own spec does not declare (a retry runs the same spec)."""
    problems = []
    for file, spec in graph.specs.items():
        retry = spec.phase.retry
        declared = _declared(spec)
        for name in retry.with_ if retry is not None else {}:
            if name not in declared:
                line, col = spec.doc.position(("retry", "with", name), key=True)
                problems.append(Problem(file, line, col, f"retry.with.{name}",
                                        f"this spec declares no input {name!r} (declared: {', '.join(declared) or 'none'}); "
                                        "a retry runs the same spec, so retry.with sets its own inputs"))
    return problems


def _declared(spec: LoadedSpec) -> dict[str, Any]:
    return (spec.doc.data or {}).get("inputs") or {}


def _input_problems(graph: Graph, inputs: dict[str, str], complete: bool) -> list[Problem]:
    """``--input`` values against the chain: the first spec's required inputs given, and each name declared by
    some spec of the chain (judged only on a ``complete`` chain: a spec that did not load declares nothing)."""
    first = graph.specs.get(graph.root)
    if first is None:
        return []
    out = []
    file = str(first.path)
    for name, default in _declared(first).items():
        if default is None and name not in inputs:
            line, col = first.doc.position(("inputs", name), key=True)
            out.append(Problem(file, line, col, f"inputs.{name}", f"required input not given; pass --input {name}=VALUE"))
    chain = set().union(*(_declared(s) for s in graph.specs.values()))
    unknown = sorted(k for k in inputs if k not in chain)
    if unknown and complete:
        line, col = first.doc.position(("inputs",))
        known = ", ".join(sorted(chain)) or "none"
        out += [Problem(file, line, col, "inputs",
                        f"--input {name}: no spec of this chain declares such an input (declared: {known})") for name in unknown]
    return out


def _loops(graph: Graph) -> list[Problem]:
    """A rule that leads back to a spec already on its path must set max_iterations."""
    out = []
    adjacency: dict[str, list[Edge]] = {}
    for e in graph.edges:
        adjacency.setdefault(e.source, []).append(e)

    def walk(node: str, path: list[str]) -> None:
        for e in adjacency.get(node, []):
            if e.target in path or e.target == node:
                if e.max_iterations is None:
                    src = graph.specs[e.source]
                    line, col = src.doc.position(("next", e.rule, "apply"))
                    out.append(Problem(e.source, line, col, f"next[{e.rule}].apply",
                                       "this rule loops back to an earlier phase; set max_iterations"))
            elif e.target in graph.specs:
                walk(e.target, path + [e.target])

    walk(graph.root, [graph.root])
    return out


def render_tree(graph: Graph, cwd: Path | None = None) -> str:
    cwd = cwd or Path.cwd()

    def name(path: str) -> str:
        spec = graph.specs[path]
        try:
            shown = os.path.relpath(path, cwd)
        except ValueError:
            shown = path
        return f"{shown} (phase {spec.phase.name})"

    lines = [name(graph.root)]

    def walk(node: str, prefix: str, seen: list[str]) -> None:
        edges = [e for e in graph.edges if e.source == node]
        if not edges:
            return
        for k, e in enumerate(edges):
            last = k == len(edges) - 1
            branch = "└─ " if last else "├─ "
            loop = f" (max_iterations {e.max_iterations})" if e.max_iterations else ""
            with_ = f" with {', '.join(e.inputs)}" if e.inputs else ""
            if e.target in seen:
                lines.append(f"{prefix}{branch}when {e.when} → {name(e.target)}{with_}{loop} ↺")
                continue
            lines.append(f"{prefix}{branch}when {e.when} → {name(e.target)}{with_}{loop}")
            walk(e.target, prefix + ("   " if last else "│  "), seen + [e.target])

    walk(graph.root, "", [graph.root])
    return "\n".join(lines)


def render_mermaid(graph: Graph) -> str:
    ids = {path: f"p{i}" for i, path in enumerate(graph.specs)}
    lines = ["flowchart TD"]
    for path, spec in graph.specs.items():
        lines.append(f'  {ids[path]}["{spec.phase.name}<br/>{Path(path).name}"]')
    for e in graph.edges:
        label = e.when.replace('"', "'").replace("|", "/")
        lines.append(f'  {ids[e.source]} -->|"{label}"| {ids[e.target]}')
    return "\n".join(lines)
