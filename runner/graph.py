"""`runner plan`: every spec reachable through `next:`, validated before anything runs, as a graph."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import Problem, SpecError
from runner.spec import LoadedSpec, load_spec
from runner.spec.loader import dotted


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


def _when_text(when) -> str:
    if isinstance(when, str):
        return when
    from runner.criteria import describe
    from runner.spec.criteria_models import Criterion

    if isinstance(when, Criterion):
        return describe(when)
    items = when.all if when.all is not None else when.any
    joiner = " and " if when.all is not None else " or "
    return joiner.join(_when_text(i) for i in items)


def build(path: str | Path, root: LoadedSpec | None = None) -> Graph:
    """Load the spec and every spec its rules reach; SpecError lists every problem in every file.
    ``root``: the spec at ``path`` already loaded (e.g. an inbox file not yet moved there)."""
    preloaded = root
    root = str(Path(path).resolve())
    graph = Graph(root)
    problems: list[Problem] = []
    queue = [root]
    while queue:
        current = queue.pop(0)
        if current in graph.specs:
            continue
        try:
            loaded = preloaded if preloaded is not None and current == graph.root else load_spec(current)
        except SpecError as exc:
            problems += exc.problems
            continue
        graph.specs[current] = loaded
        for i, rule in enumerate(loaded.phase.next):
            target = os.path.normpath(os.path.join(loaded.folder, rule.apply))
            graph.edges.append(Edge(current, i, _when_text(rule.when), target, sorted(rule.with_), rule.max_iterations))
            if target not in graph.specs:
                queue.append(target)
    for e in graph.edges:
        src = graph.specs[e.source]
        tgt = graph.specs.get(e.target)
        if tgt is None:
            continue  # its own problems are listed already
        declared = (tgt.doc.data or {}).get("inputs") or {}
        for name in e.inputs:
            if name not in declared:
                line, col = src.doc.position(("next", e.rule, "with", name), key=True)
                problems.append(Problem(e.source, line, col, dotted(("next", e.rule, "with", name)),
                                        f"{Path(e.target).name} declares no input {name!r} (declared: {', '.join(declared) or 'none'})"))
        for name, default in declared.items():
            if default is None and name not in e.inputs:
                line, col = src.doc.position(("next", e.rule, "with"))
                problems.append(Problem(e.source, line, col, dotted(("next", e.rule)),
                                        f"{Path(e.target).name} requires input {name!r}; pass it in with:"))
    problems += _loops(graph)
    if problems:
        raise SpecError(sorted(set(problems), key=lambda p: (p.file, p.line, p.col)))
    return graph


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
