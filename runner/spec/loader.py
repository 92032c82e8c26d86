"""Load a phase spec: YAML → plain data with positions → pydantic model.

This is the one boundary where spec input is validated.  Every problem found
is reported at once as ``FILE:LINE:COL: field.path: message`` in one SpecError.

YAML is read safely and strictly:
* only plain data (mappings, lists, str/int/float/bool/null); no custom tags;
* duplicate keys are errors (PyYAML silently keeps the last one);
* numbers are read as a user means them (YAML 1.2 core schema: ``1e-6`` is a
  float, ``on``/``yes`` are strings); the text as written is kept so argv
  lists pass ``1e-6`` through unchanged;
* files over MAX_BYTES and documents expanding to over MAX_NODES nodes
  (alias bombs) are refused.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from runner.errors import Problem, SpecError
from runner.spec import interpolate
from runner.spec.models import Phase

MAX_BYTES = 1024 * 1024
MAX_NODES = 100_000

Loc = tuple  # a path into the data: str keys and int indexes


class SourceInt(int):
    """An int that remembers how it was written."""

    source: str


class SourceFloat(float):
    """A float that remembers how it was written (``1e-6`` stays ``1e-6`` in argv)."""

    source: str


class _Resolver(yaml.resolver.Resolver):
    """YAML 1.2 core schema resolution for plain scalars."""


_Resolver.yaml_implicit_resolvers = {}
_Resolver.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), list("~nN") + [""])
_Resolver.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


class _Composer(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer, _Resolver):
    def __init__(self, stream: str):
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Resolver.__init__(self)


@dataclass
class Document:
    """Plain data from a YAML file and where each value and key was written (1-based line, col)."""

    data: Any
    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def position(self, loc: Loc, key: bool = False) -> tuple[int, int]:
        table = self.keys if key and loc in self.keys else self.values
        while loc not in table and loc:
            loc = loc[:-1]
        return table.get(loc, (1, 1))


MAX_DEPTH = 64  # a spec is a few levels deep; deeper nesting is a mistake or an attack (RecursionError)


def _too_deep_at(text: str) -> tuple[int, int]:
    """Line and column where flow brackets first nest deeper than MAX_DEPTH (quotes and comments
    skipped; 1:1 when the depth comes from indentation instead)."""
    depth, quote = 0, ""
    for n, line in enumerate(text.splitlines(), 1):
        for c, ch in enumerate(line, 1):
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "'\"":
                quote = ch
            elif ch == "#":
                break
            elif ch in "[{":
                depth += 1
                if depth > MAX_DEPTH:
                    return n, c
            elif ch in "]}":
                depth -= 1
    return 1, 1


class _TooDeep(Exception):
    def __init__(self, node: yaml.Node):
        super().__init__("too deep")
        self.node = node


class _Builder:
    def __init__(self, file: str):
        self.file = file
        self.doc = Document(None)
        self.problems: list[Problem] = []
        self.count = 0

    def problem(self, node: yaml.Node, path: Loc, message: str) -> None:
        self.problems.append(Problem(self.file, node.start_mark.line + 1, node.start_mark.column + 1, dotted(path), message))

    def build(self, node: yaml.Node, path: Loc) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig()
        self.doc.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if len(path) > MAX_DEPTH:
            raise _TooDeep(node)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and \
                node.tag not in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
            # `!!python/object/apply:os.system [...]`, `!!python/tuple`, `!!set`: refused like a scalar's tag
            self.problem(node, path, f"unsupported YAML tag {node.tag!r}: specs hold plain data only")
            return None
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    self.problem(key_node, path, "only plain keys are allowed (no merge keys '<<' or complex keys)")
                    continue
                key = key_node.value
                if key in out:
                    first = self.doc.keys[path + (key,)]
                    self.problem(key_node, path + (key,), f"duplicate key {key!r} (first set at line {first[0]})")
                    continue
                self.doc.keys[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out[key] = self.build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)  # the composer's nodes: mappings, sequences and scalars
        return self.scalar(node, path)

    def scalar(self, node: yaml.ScalarNode, path: Loc) -> Any:
        tag, text = node.tag, node.value
        if tag == "tag:yaml.org,2002:str":
            return text
        if tag == "tag:yaml.org,2002:null":
            return None
        if tag == "tag:yaml.org,2002:bool":
            return text.lower() == "true"
        if tag == "tag:yaml.org,2002:int":
            value = SourceInt(int(text, 0) if text[:2] in ("0x", "0o") else int(text))
            value.source = text
            return value
        if tag == "tag:yaml.org,2002:float":
            real = SourceFloat(text.replace(".inf", "inf").replace(".Inf", "inf").replace(".INF", "inf").lower().replace(".nan", "nan"))
            real.source = text
            return real
        self.problem(node, path, f"unsupported YAML tag {tag!r}: specs hold plain data only")
        return text


class _TooBig(Exception):
    pass


def dotted(path: Loc) -> str:
    """``("container", "mounts", 0, "target")`` → ``container.mounts[0].target``."""
    out = ""
    for seg in path:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out


def parse_yaml(text: str, file: str) -> tuple[Document, list[Problem]]:
    """Plain data and positions from YAML text, with every structural problem found."""
    builder = _Builder(file)
    try:
        node = _Composer(text).get_single_node()
    except RecursionError:
        line, col = _too_deep_at(text)
        return builder.doc, [Problem(file, line, col, "", f"the document is nested too deeply (a spec needs at most {MAX_DEPTH} levels)")]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = exc.problem or exc.context or "invalid YAML"
        return builder.doc, [Problem(file, line, col, "", f"invalid YAML: {reason}")]
    except yaml.YAMLError as exc:
        return builder.doc, [Problem(file, 1, 1, "", f"invalid YAML: {exc}")]
    if node is None:
        return builder.doc, [Problem(file, 1, 1, "", "the file is empty; a spec starts with apiVersion: runner/v1")]
    try:
        builder.doc.data = builder.build(node, ())
    except _TooBig:
        return builder.doc, [Problem(file, 1, 1, "", f"the document expands to over {MAX_NODES} values (alias bomb?)")]
    except _TooDeep as exc:
        mark = exc.node.start_mark
        return builder.doc, [Problem(file, mark.line + 1, mark.column + 1, "",
                                     f"nested deeper than {MAX_DEPTH} levels; a spec needs far fewer")]
    if not isinstance(builder.doc.data, dict):
        builder.problems.append(Problem(file, 1, 1, "", "a spec must be a mapping of fields (apiVersion, kind, name, ...)"))
    return builder.doc, builder.problems


# ---------------------------------------------------------------- pydantic errors → problems


def _model_in(tp: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``list[Mount] | None``, if any."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _model_in(arg)
        if found:
            return found
    return None


def _fields_at(root: type[BaseModel], loc: Loc) -> list[str]:
    """Field names (as written in YAML) of the model found at ``loc``."""
    model: type[BaseModel] | None = root
    for seg in loc:
        if model is None:
            return []
        if isinstance(seg, int):
            continue
        match = next((f for n, f in model.model_fields.items() if seg in (n, f.alias)), None)
        if match is None:
            continue  # a dict key (e.g. an input name): stay on the element type below
        model = _model_in(match.annotation)
    return [f.alias or n for n, f in model.model_fields.items()] if model else []


def _data_path(data: Any, loc: Loc) -> tuple[Loc, Loc]:
    """Split a pydantic error location into the part that exists in ``data`` and the rest
    (union member tags, a missing key)."""
    here: Loc = ()
    for i, seg in enumerate(loc):
        if isinstance(data, dict) and isinstance(seg, str) and seg in data:
            data = data[seg]
        elif isinstance(data, list) and isinstance(seg, int) and 0 <= seg < len(data):
            data = data[seg]
        else:
            return here, tuple(loc[i:])
        here += (seg,)
    return here, ()


# Docker options a spec can never ask for: runner holds the Docker socket (root on the
# host), so it creates containers from an allow-list of fields.  These would otherwise be
# reported as merely "unknown"; say why instead.
_ISOLATION = "runner never weakens a container's isolation (it holds the Docker socket, which is root on the host)"
REFUSED_FIELDS = {
    "privileged": _ISOLATION,
    "cap_add": _ISOLATION,
    "capabilities": _ISOLATION,
    "security_opt": _ISOLATION,
    "devices": "GPUs are requested with container.gpus; other host devices are not passed through",
    "network_mode": "host networking is not available to specs",
    "network": "host networking is not available to specs",
    "pid": "the host PID namespace is not available to specs",
    "pid_mode": "the host PID namespace is not available to specs",
    "ipc_mode": "the host IPC namespace is not available to specs",
    "userns_mode": _ISOLATION,
    "volumes": "use container.mounts (bind mounts under the allowed roots)",
}


# pydantic's wording, said the README's way (the one boundary where validation errors become spec errors)
_PATTERNS = {
    r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$": "lower-case letters, digits, '.', '_' or '-' (at most 63, starting and "
                                               "ending with a letter or digit), e.g. indextts-phase1",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "a name of letters, digits and '_' (not starting with a digit)",
}
_KINDS = {"dict_type": "a mapping (KEY: value)", "list_type": "a list", "string_type": "text", "float_type": "a number",
          "float_parsing": "a number", "int_type": "a whole number", "int_parsing": "a whole number", "bool_type": "true or false"}
_GENERIC = ("dict_type", "list_type", "string_type", "float_type", "float_parsing", "int_type", "int_parsing", "bool_type",
            "string_pattern_mismatch", "literal_error", "model_type", "model_attributes_type")


def _what(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false", type(None): "nothing"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _plain(err: typing.Mapping[str, Any], path: Loc) -> str:
    """A validation error in words: what is allowed, and what was given."""
    kind, given = err["type"], err.get("input")
    if kind == "string_pattern_mismatch":
        pattern = (err.get("ctx") or {}).get("pattern", "")
        if pattern in _PATTERNS:
            return f"{_PATTERNS[pattern]}; got {given!r}"
        if "${{" in pattern or "\\$\\{" in pattern:
            return f"a value or a ${{{{ inputs.NAME }}}} reference; got {given!r}"
        return f"does not have the allowed form ({pattern}); got {given!r}"
    if kind == "dict_type" and path and path[-1] == "env" and isinstance(given, list):
        return "a mapping NAME: value (e.g. env: {PYTHONUNBUFFERED: 1}), not a list of NAME=value"
    bounds = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
              "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}
    if kind in bounds:
        word, key = bounds[kind]
        return f"should be {word} {(err.get('ctx') or {}).get(key)}, got {given!r}"
    if kind in _KINDS:
        return f"should be {_KINDS[kind]}, got {_what(given)}" + (f" {given!r}" if isinstance(given, (str, int, float)) else "")
    return str(err["msg"]).removeprefix("Value error, ")


def problems_from_validation(exc: ValidationError, doc: Document, file: str, model: type[BaseModel]) -> list[Problem]:
    out: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    errors = exc.errors(include_url=False)
    # A union (a number, or a ${{ }} reference; a mapping, or a shorthand) reports one error per member: where a
    # field has a specific error, the members' generic "should be text/a number" lines are noise.
    specific = {_data_path(doc.data, tuple(e["loc"]))[0] for e in errors if e["type"] not in _GENERIC}
    for err in errors:
        loc = tuple(err["loc"])
        kind = err["type"]
        found, rest = _data_path(doc.data, loc)
        if kind in _GENERIC and found in specific:
            continue
        message = _plain(err, found)
        if kind == "extra_forbidden":
            name = str(loc[-1])
            message = f"unknown field {name!r}"
            if name in REFUSED_FIELDS:
                message = f"{name!r} is not allowed: {REFUSED_FIELDS[name]}"
            close = [] if name in REFUSED_FIELDS else difflib.get_close_matches(name, _fields_at(model, loc[:-1]), n=1, cutoff=0.6)
            if close:
                message += f"; did you mean {close[0]!r}?"
            line, col = doc.position(found, key=True)
            path = found
        elif kind == "missing":
            path = found + rest[:1]
            message = f"missing required field {str(rest[0]) if rest else ''!r}".replace(" ''", "")
            line, col = doc.position(found)
        else:
            path = found
            line, col = doc.position(found)
            if kind == "literal_error" and isinstance(err.get("input"), str):
                message = f"{message}, got {err['input']!r}"
        if any(p.file == file and p.path == dotted(path) for p in out) and kind in _GENERIC:
            continue  # one line per field: the first union member's complaint says it
        key = (dotted(path), message)
        if key in seen:
            continue
        seen.add(key)
        out.append(Problem(file, line, col, dotted(path), message))
    return out


def reference_problems(doc: Document, file: str) -> list[Problem]:
    """``${{ }}`` references that can never resolve."""
    data = doc.data if isinstance(doc.data, dict) else {}
    declared = set(data.get("inputs") or {}) if isinstance(data.get("inputs"), dict) else set()
    out: list[Problem] = []

    def check(text: str, path: Loc) -> str:
        for ns, key in interpolate.references(text):
            msg = interpolate.check_reference(ns, key, declared, in_next=bool(path) and (path[0] == "next" or path[:2] == ("retry", "with")))
            if ns == "checkpoint" and tuple(path[:3]) != ("checkpoints", "validate", "command"):
                msg = f"${{{{ checkpoint.{key} }}}} is only known in checkpoints.validate.command"
            if msg:
                line, col = doc.position(path)
                out.append(Problem(file, line, col, dotted(path), msg))
        return text

    interpolate.walk_strings(data, check)
    expect = data.get("expect")
    name = expect.get("unless_input") if isinstance(expect, dict) else None
    if isinstance(name, str) and name not in declared:
        line, col = doc.position(("expect", "unless_input"))
        out.append(Problem(file, line, col, "expect.unless_input", f"{name!r} is not an input of this spec (declare it under inputs:)"))
    return out


@dataclass
class LoadedSpec:
    """A validated spec and what is needed to locate errors found later (at resolve time)."""

    path: Path
    text: str
    sha256: str
    doc: Document
    phase: Phase

    @property
    def folder(self) -> Path:
        return self.path.parent


def load_spec_text(text: str, path: Path | str) -> LoadedSpec:
    path = Path(path)
    file = str(path)
    if len(text.encode()) > MAX_BYTES:
        raise SpecError([Problem(file, 1, 1, "", f"file is larger than {MAX_BYTES // 1024} KiB; a spec should be small")])
    doc, problems = parse_yaml(text, file)
    if problems and not isinstance(doc.data, dict):
        raise SpecError(problems)
    problems += reference_problems(doc, file)
    phase = None
    try:
        phase = Phase.model_validate(doc.data)
    except ValidationError as exc:
        said = {p.path for p in problems}  # a field whose YAML was refused is not also reported as the wrong type
        problems += [p for p in problems_from_validation(exc, doc, file, Phase) if p.path not in said]
    if problems:
        problems.sort(key=lambda p: (p.line, p.col))
        raise SpecError(problems)
    assert phase is not None
    return LoadedSpec(path.resolve(), text, hashlib.sha256(text.encode()).hexdigest(), doc, phase)


def load_spec(path: str | os.PathLike) -> LoadedSpec:
    """Read and validate a spec file; SpecError lists every problem, located."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise SpecError([Problem(str(p), 1, 1, "", f"file is {size} bytes; a spec may be at most {MAX_BYTES // 1024} KiB")])
        raw = p.read_bytes()
    except SpecError:
        raise
    except OSError as exc:
        raise SpecError([Problem(str(p), 0, 0, "", f"cannot read spec: {exc.strerror or exc}")]) from None
    return load_spec_bytes(raw, p)


def load_spec_bytes(raw: bytes, path: str | os.PathLike) -> LoadedSpec:
    """Validate a spec's bytes as if read from ``path`` (errors and relative paths use it)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(str(path), 1, 1, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    return load_spec_text(text, Path(path))
