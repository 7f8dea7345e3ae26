"""The rules file (``--transforms FILE``, TOML): its tables, read into :class:`Rule` objects in
the order they are written, and its fingerprint. Every mistake is a :class:`UsageError` (exit 2)
naming the file, the table and its number, and the key. The file's shape:
docs/design/transforms.md and the README's "Transforms"."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esctl.errors import UsageError
from esctl.where import parse_path

KINDS = ("leave_out", "rename_type", "rename_namespace", "rename_assembly", "upcast", "python")
_KEYS: dict[str, tuple[set[str], set[str]]] = {  # kind -> (required keys, optional keys)
    "leave_out": (set(), {"event_type", "aggregate_type"}),
    "rename_type": ({"from", "to"}, set()),
    "rename_namespace": ({"from", "to"}, set()),
    "rename_assembly": ({"from", "to"}, set()),
    "upcast": ({"event_type"}, {"rename", "remove", "default"}),
    "python": ({"callable"}, set()),
}
_HEADER_RE = re.compile(r"^[ \t]*\[\[[ \t]*([A-Za-z0-9_\-\"']+)[ \t]*\]\]", re.M)
_DOTNET_NAME_RE = re.compile(r"[^\s\[\],]+")


@dataclass(frozen=True)
class Rule:
    """One table of the rules file. ``label`` names it in errors and problems:
    ``[[upcast]] #2 (line 14)``: the second ``upcast`` table, on line 14."""

    kind: str
    label: str
    event_type: str | None = None
    aggregate_type: str | None = None
    source: str = ""
    target: str = ""
    rename: tuple[tuple[tuple[str, ...], str], ...] = ()
    remove: tuple[tuple[str, ...], ...] = ()
    default: tuple[tuple[tuple[str, ...], Any], ...] = ()
    function: Callable[..., Any] | None = field(default=None, compare=False)
    module_file: str | None = None


@dataclass(frozen=True)
class Rules:
    """A rules file read: its rules in the written order and its fingerprint."""

    path: str
    rules: tuple[Rule, ...]
    fingerprint: str


def load_rules(path: str | Path) -> Rules:
    """Read and check a rules file; import the callables of its ``[[python]]`` tables (the
    file's own directory is searched first). Raises UsageError on anything malformed."""
    file = Path(path)
    try:
        content = file.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read the transforms file {str(file)!r}: {exc.strerror}",
            hint="give --transforms the path of a TOML rules file",
        ) from None
    try:
        text = content.decode("utf-8")
        document = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _error(file, f"is not valid TOML: {exc}") from None
    order = _written_order(file, text, document)
    counts: dict[str, int] = {}
    rules: list[Rule] = []
    for kind, line in order:
        index = counts.get(kind, 0)
        counts[kind] = index + 1
        label = f"[[{kind}]] #{index + 1} (line {line})"
        rules.append(_rule(file, kind, label, document[kind][index]))
    return Rules(str(file), tuple(rules), fingerprint(content, rules))


def fingerprint(content: bytes, rules: list[Rule] | tuple[Rule, ...]) -> str:
    """sha256 (hex) of the rules file's bytes and of the source of each callable's module, in
    the order of the rules: what a run records to know its transforms."""
    digest = hashlib.sha256(content)
    for rule in rules:
        if rule.kind == "python":
            digest.update(b"\0" + rule.source.encode("utf-8") + b"\0")
            if rule.module_file is not None:
                digest.update(Path(rule.module_file).read_bytes())
    return digest.hexdigest()


def _error(file: Path, message: str, hint: str | None = None) -> UsageError:
    return UsageError(
        f"transforms file {str(file)!r}: {message}",
        hint=hint or "see the README's Transforms section for the tables and their keys",
    )


def _written_order(file: Path, text: str, document: dict[str, Any]) -> list[tuple[str, int]]:
    """(kind, line) of each rule table in the order written: TOML itself keeps the order only
    within one kind, so the ``[[kind]]`` headers are read from the text."""
    for key, value in document.items():
        if key not in KINDS:
            raise _error(file, f"unknown table [[{key}]]; the tables are {', '.join(KINDS)}")
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise _error(file, f"{key!r} must be written as [[{key}]] tables")
    order = [
        (m.group(1).strip("\"'"), text.count("\n", 0, m.start()) + 1)
        for m in _HEADER_RE.finditer(text)
    ]
    for kind in KINDS:
        written = sum(1 for k, _ in order if k == kind)
        if written != len(document.get(kind, ())):
            raise _error(
                file,
                f"write each {kind} rule as its own [[{kind}]] table at the start of a line "
                "(the order of the tables is the order the rules apply in)",
            )
    return order


def _rule(file: Path, kind: str, label: str, table: dict[str, Any]) -> Rule:
    required, optional = _KEYS[kind]
    unknown = sorted(set(table) - required - optional)
    if unknown:
        keys = ", ".join(sorted(required | optional))
        raise _error(file, f"{label}: unknown key {unknown[0]!r} (its keys: {keys})")
    missing = sorted(required - set(table))
    if missing:
        raise _error(file, f"{label}: the key {missing[0]!r} is missing")
    if kind == "leave_out":
        if not table:
            raise _error(file, f"{label}: give event_type or aggregate_type (a glob)")
        return Rule(
            kind,
            label,
            event_type=_glob(file, label, table, "event_type"),
            aggregate_type=_glob(file, label, table, "aggregate_type"),
        )
    if kind == "upcast":
        return _upcast(file, label, table)
    if kind == "python":
        return _python(file, label, table)
    source, target = (_text(file, label, table, key) for key in ("from", "to"))
    for key, value in (("from", source), ("to", target)):
        if not _DOTNET_NAME_RE.fullmatch(value):
            raise _error(
                file,
                f"{label}: {key} = {value!r} is not a .NET name (no spaces, commas or brackets; "
                "a type's full name without its assembly, a namespace, or an assembly name)",
            )
    return Rule(kind, label, source=source, target=target)


def _text(file: Path, label: str, table: dict[str, Any], key: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not value:
        raise _error(file, f"{label}: {key} must be a non-empty string, not {value!r}")
    return value


def _glob(file: Path, label: str, table: dict[str, Any], key: str) -> str | None:
    if key not in table:
        return None
    value = _text(file, label, table, key)
    depth = 0
    for char in value:  # fnmatch would read an unclosed '[' as a plain character
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
    if depth:
        raise _error(file, f"{label}: {key} = {value!r} is not a glob: '[' is never closed")
    return value


def _path(file: Path, label: str, key: str, text: str) -> tuple[str, ...]:
    try:
        return parse_path(text)
    except ValueError as exc:
        raise _error(
            file, f"{label}: {key}: {exc}", hint="paths are written as in `events query --where`"
        ) from None


def _flat(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A TOML table whose dotted keys nested it (``{ Rubric.Name = "Title" }``), flat: each
    key a where-path (``"Rubric.Name"`` is the same path; a key holding a dot is quoted the
    where-language's way, ``'"Some.Key"'``)."""
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        name = prefix + key
        if isinstance(value, dict):
            out.extend(_flat(value, name + "."))
        else:
            out.append((name, value))
    return out


def _upcast(file: Path, label: str, table: dict[str, Any]) -> Rule:
    event_type = _glob(file, label, table, "event_type")
    rename = table.get("rename", {})
    remove = table.get("remove", [])
    default = table.get("default", {})
    if not isinstance(rename, dict) or not isinstance(default, dict):
        raise _error(file, f"{label}: rename and default are tables ({{ Path = ... }})")
    if not isinstance(remove, list) or not all(isinstance(p, str) for p in remove):
        raise _error(file, f'{label}: remove is a list of paths (["Path", ...])')
    if not (rename or remove or default):
        raise _error(file, f"{label}: give rename, remove or default")
    renames = []
    for key, new in _flat(rename):
        if not isinstance(new, str) or not new:
            raise _error(file, f"{label}: rename: {key} must map to the field's new name")
        renames.append((_path(file, label, "rename", key), new))
    defaults = []
    for key, value in default.items():  # a table value is an object: the key is the path
        _check_json(file, label, key, value)
        defaults.append((_path(file, label, "default", key), value))
    return Rule(
        "upcast",
        label,
        event_type=event_type,
        rename=tuple(renames),
        remove=tuple(_path(file, label, "remove", p) for p in remove),
        default=tuple(defaults),
    )


def _check_json(file: Path, label: str, key: str, value: Any) -> None:
    if isinstance(value, dict):
        for inner in value.values():
            _check_json(file, label, key, inner)
    elif isinstance(value, list):
        for inner in value:
            _check_json(file, label, key, inner)
    elif not isinstance(value, str | int | float | bool):
        raise _error(file, f"{label}: default: {key}: a {type(value).__name__} is not JSON")


def _python(file: Path, label: str, table: dict[str, Any]) -> Rule:
    source = _text(file, label, table, "callable")
    module_name, _, name = source.partition(":")
    if not module_name or not name:
        raise _error(file, f"{label}: callable = {source!r}: write it as 'module:function'")
    directory = str(file.resolve().parent)
    sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any failure: the operator's to fix
        raise _error(
            file,
            f"{label}: callable = {source!r}: cannot import {module_name!r}: "
            f"{type(exc).__name__}: {exc}",
            hint=f"put {module_name}.py beside the rules file ({directory}) or on PYTHONPATH",
        ) from None
    finally:
        sys.path.remove(directory)
    function = getattr(module, name, None)
    if not callable(function):
        raise _error(
            file, f"{label}: callable = {source!r}: {module_name} has no function {name!r}"
        )
    spec = module.__spec__
    origin = spec.origin if spec is not None else None
    module_file = origin if origin and Path(origin).is_file() else None
    return Rule("python", label, source=source, function=function, module_file=module_file)
