"""The where-language of ``events query`` and ``replay``: ``PATH OP VALUE`` or ``PATH exists``
on payload fields. :func:`parse_where` reads one expression into a :class:`WhereClause`, which
matches a parsed payload in Python (:meth:`WhereClause.matches`, the Redis side) and says the
same thing as a jsonpath predicate (:meth:`WhereClause.jsonpath`, the PostgreSQL side).

The language's exact semantics (paths, ``$values`` wrappers, what each operator compares with
what): docs/design/query.md, "The where-language".
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from rich.cells import cell_len

from esctl.errors import UsageError

MAX_PATH_SEGMENTS = 8
"""A path of n keys becomes 2**n jsonpath alternatives in PostgreSQL (``$values`` or not)."""

OPERATORS = ("=", "!=", ">", ">=", "<", "<=", "~", "exists")
_ORDERED = {">", ">=", "<", "<="}
_OPERATOR_TOKENS = (">=", "<=", "!=", "==", "=", ">", "<", "~")
"""As written (``==`` is ``=``), each before any that begins it."""

_NUMBER_RE = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_BARE_KEY_STOP = set('.=!<>~"') | {" ", "\t", "\n", "\r"}


@dataclass(frozen=True)
class Literal:
    """A VALUE of the where-language, with every reading it has (docs/design/query.md)."""

    text: str
    """The string reading (a quoted VALUE has only this one)."""
    number: int | float | None = None
    boolean: bool | None = None
    null: bool = False
    quoted: bool = False

    @property
    def orderable_as_number(self) -> bool:
        return self.number is not None

    def equals(self, value: Any) -> bool:
        t = type(value)
        if t is str:
            return bool(value == self.text)
        if t is int or t is float:
            return self.number is not None and value == self.number
        if t is bool:
            return self.boolean is not None and value is self.boolean
        if value is None:
            return self.null
        return False


@dataclass(frozen=True)
class WhereClause:
    """One parsed ``--where`` expression."""

    source: str
    path: tuple[str, ...]
    op: str
    literal: Literal | None = None

    # -- Python side (Redis) --

    def matches(self, document: Any) -> bool:
        """Does the payload (parsed JSON) satisfy the clause?"""
        reached = reach(document, self.path)
        if self.op == "exists":
            return bool(reached)
        test = self._test
        found = False
        for value in reached:
            if type(value) is list:  # a list's elements are compared one by one
                for element in value:
                    if test(element):
                        found = True
                        break
                if found:
                    break
            elif test(value):
                found = True
                break
        if self.op == "!=":
            return bool(reached) and not found
        return found

    @functools.cached_property
    def _test(self) -> Callable[[Any], bool]:
        """The test one reached value must pass (``!=`` negates ``=``'s over all values)."""
        literal = self.literal
        assert literal is not None
        op = self.op
        if op in ("=", "!="):
            return literal.equals
        if op == "~":
            text = literal.text
            return lambda v: type(v) is str and text in v
        compare = _COMPARE[op]
        if literal.number is not None:
            bound = literal.number
            return lambda v: (type(v) is int or type(v) is float) and compare(v, bound)
        text = literal.text
        return lambda v: type(v) is str and compare(v, text)

    def needles(self) -> list[bytes]:
        """Byte strings that must occur in the payload text for the clause to hold, unless the
        text uses JSON escapes (the caller checks that): every key of the path (quoted), and a
        string VALUE that must match exactly or as a substring."""
        # '"Key' rather than '"Key"': a needle ending in a rarer byte than '"' scans faster.
        out = [b'"' + k.encode("utf-8") for k in self.path if literal_safe(k)]
        literal = self.literal
        if literal is not None and literal_safe(literal.text) and literal.text:
            string_only = literal.number is None and literal.boolean is None and not literal.null
            if self.op == "~" or (self.op == "=" and string_only):
                out.append(literal.text.encode("utf-8"))
        return out

    # -- PostgreSQL side --

    def jsonpath(self, var: str) -> tuple[str, dict[str, Any]]:
        """A jsonpath predicate (for ``jsonb_path_match``) with the same meaning as
        :meth:`matches`, and its variables. ``var`` prefixes the variable names."""
        paths = _path_variants(self.path)
        exists_any = "(" + " || ".join(f"exists({p})" for p in paths) + ")"
        if self.op == "exists":
            return exists_any, {}
        literal = self.literal
        assert literal is not None
        variables: dict[str, Any] = {}
        if self.op in ("=", "!="):
            tests = [f'(@.type() == "string" && @ == ${var}s)']
            variables[f"{var}s"] = literal.text
            if literal.number is not None:
                tests.append(f'(@.type() == "number" && @ == ${var}n)')
                variables[f"{var}n"] = literal.number
            if literal.boolean is not None:
                tests.append(f'(@.type() == "boolean" && @ == ${var}b)')
                variables[f"{var}b"] = literal.boolean
            if literal.null:
                tests.append('(@.type() == "null")')
            condition = " || ".join(tests)
        elif self.op == "~":
            condition = (
                f'@.type() == "string" && @ like_regex {_jsonpath_string(literal.text)} flag "q"'
            )
        elif literal.number is not None:
            condition = f'@.type() == "number" && @ {self.op} ${var}n'
            variables[f"{var}n"] = literal.number
        else:
            condition = f'@.type() == "string" && @ {self.op} ${var}s'
            variables[f"{var}s"] = literal.text
        any_match = "(" + " || ".join(f"exists({p} ? ({condition}))" for p in paths) + ")"
        if self.op == "!=":
            return f"({exists_any} && !{any_match})", variables
        return any_match, variables


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def _member(items: list[Any], key: str) -> list[Any]:
    """``key`` of each item: of an object; of each object element of a list (one level)."""
    out: list[Any] = []
    for item in items:
        t = type(item)
        if t is dict:
            if key in item:
                out.append(item[key])
        elif t is list:
            for element in item:
                if type(element) is dict and key in element:
                    out.append(element[key])
    return out


def reach(document: Any, path: Sequence[str]) -> list[Any]:
    """The values ``path`` reaches in ``document`` (docs/design/query.md): after each key
    the walk continues in the value and in its ``$values`` list."""
    if len(path) == 1 and type(document) is dict:  # the common case, without the lists
        value = document.get(path[0], _MISSING)
        if value is _MISSING:
            return []
        if type(value) is dict:
            return [value, value["$values"]] if "$values" in value else [value]
        if type(value) is not list:
            return [value]
    items = _member([document], path[0])
    for key in path[1:]:
        items = _member(items, key) + _member(_member(items, "$values"), key)
    return items + _member(items, "$values")


_MISSING = object()


def _path_variants(path: Sequence[str]) -> list[str]:
    variants = ["$" + _jsonpath_key(path[0])]
    for key in path[1:]:
        step = _jsonpath_key(key)
        variants = [v + step for v in variants] + [v + '."$values"' + step for v in variants]
    return variants + [v + '."$values"' for v in variants]


def _jsonpath_key(key: str) -> str:
    return "." + _jsonpath_string(key)


def _jsonpath_string(text: str) -> str:
    """A jsonpath string literal (double quotes; ``"``, ``\\`` and control characters escaped)."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def literal_safe(text: str) -> bool:
    """Does ``text`` appear verbatim in JSON that uses no ``\\u``/``\\/`` escapes?"""
    return not any(ch in '"\\' or ord(ch) < 0x20 for ch in text)


class _WhereSyntax(Exception):
    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


def parse_where(text: str) -> WhereClause:
    """Parse one ``--where`` expression. Raises UsageError naming the bad part and its column."""
    try:
        return _parse_where(text)
    except _WhereSyntax as exc:
        # under the bad part on a terminal: as many cells as the text before it takes (a CJK
        # character or an emoji takes two)
        pointer = text + "\n" + " " * cell_len(text[: exc.column]) + "^"
        raise UsageError(
            f"bad --where {text!r}: {exc.message} (column {exc.column + 1})",
            hint="write PATH OP VALUE with OP one of = != > >= < <= ~, or PATH exists; e.g. "
            f"`--where 'Rubric.Name~Essay' --where 'Score>=7'`\n{pointer}",
        ) from None


def parse_path(text: str) -> tuple[str, ...]:
    """A dotted PATH of the where-language on its own (``Rubric.Name``, ``"Some.Key".X``), as
    transforms name fields (docs/design/transforms.md). Raises ValueError naming the bad part."""
    try:
        i = _skip_space(text, 0)
        if i == len(text):
            raise _WhereSyntax("the path is empty", 0)
        path, end = _parse_path(text, i)
        if text[end:].strip():
            raise _WhereSyntax(f"unexpected {text[end:].strip()!r} after the path", end)
    except _WhereSyntax as exc:
        raise ValueError(f"bad path {text!r}: {exc.message} (column {exc.column + 1})") from None
    return path


def _parse_where(text: str) -> WhereClause:
    i = _skip_space(text, 0)
    if i == len(text):
        raise _WhereSyntax("the expression is empty", 0)
    path, after_path = _parse_path(text, i)
    i = _skip_space(text, after_path)
    if i == len(text):
        raise _WhereSyntax("no operator after the path", after_path)
    op = next((op for op in _OPERATOR_TOKENS if text.startswith(op, i)), None)
    if op is None:
        _expect_exists(text, i, after_path)
        return WhereClause(text, path, "exists")
    op_column = i
    i = _skip_space(text, i + len(op))
    op = "=" if op == "==" else op
    raw = text[i:].rstrip()
    literal = _parse_value(text, i, op)
    if op in _ORDERED and literal.number is None and (literal.boolean is not None or literal.null):
        raise _WhereSyntax(f"{raw!r} cannot be ordered with {op!r}", op_column)
    return WhereClause(text, path, op, literal)


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _parse_path(text: str, i: int) -> tuple[tuple[str, ...], int]:
    """The dotted path starting at ``text[i]``: (its keys, where it ends)."""
    n = len(text)
    path: list[str] = []
    while True:
        start = i
        if i < n and text[i] == '"':
            key, i = _quoted(text, i)
        else:
            while i < n and text[i] not in _BARE_KEY_STOP:
                i += 1
            key = text[start:i]
            if not key:
                if not path and i < n and text[i] in "=!<>~":
                    raise _WhereSyntax(f"no path before {text[i]!r}", i)
                raise _WhereSyntax("empty key in the path", i)
        if "\x00" in key:
            raise _WhereSyntax("a key cannot hold the NUL character", start)
        path.append(key)
        if i < n and text[i] == ".":
            i += 1
            continue
        break
    if len(path) > MAX_PATH_SEGMENTS:
        raise _WhereSyntax(f"the path has more than {MAX_PATH_SEGMENTS} keys", 0)
    return tuple(path), i


def _expect_exists(text: str, i: int, after_path: int) -> None:
    """Where no operator follows the path: the word ``exists`` (after a space), and nothing
    after it."""
    word = re.match(r"[A-Za-z_]+", text[i:])
    if word and word.group() == "exists" and i > after_path:
        j = _skip_space(text, i + len("exists"))
        if j != len(text):
            raise _WhereSyntax(f"unexpected {text[j:]!r} after 'exists'", j)
        return
    if word and word.group() == "exists":  # right after a quoted key: '"Some.Key"exists'
        raise _WhereSyntax("'exists' needs a space before it", i)
    raise _WhereSyntax(f"expected an operator (= != > >= < <= ~ or exists), found {text[i:]!r}", i)


def _parse_value(text: str, i: int, op: str) -> Literal:
    """The VALUE starting at ``text[i]``, after the operator ``op``."""
    raw = text[i:].rstrip()
    if not raw:
        raise _WhereSyntax(f"no value after {op!r}", i)
    if raw[0] == '"':
        value, end = _quoted(text, i)
        rest = text[end:]
        if rest.strip():
            column = end + len(rest) - len(rest.lstrip())
            raise _WhereSyntax(f"unexpected {rest.strip()!r} after the quoted value", column)
        literal = Literal(value, quoted=True)
    elif raw[0] in "=<>!~":
        raise _WhereSyntax(f"{raw[0]!r} after the operator {op!r}", i)
    else:
        literal = _bare_literal(raw, i)
    if "\x00" in literal.text:
        raise _WhereSyntax("the value cannot hold the NUL character", i)
    return literal


def _bare_literal(raw: str, column: int) -> Literal:
    if _NUMBER_RE.fullmatch(raw):
        number: int | float = int(raw) if re.fullmatch(r"-?\d+", raw) else float(raw)
        if isinstance(number, float) and number in (float("inf"), float("-inf")):
            raise _WhereSyntax(f"the number {raw} is out of range", column)
        return Literal(raw, number=number)
    if raw in ("true", "false"):
        return Literal(raw, boolean=raw == "true")
    if raw == "null":
        return Literal(raw, null=True)
    return Literal(raw)


def _quoted(text: str, start: int) -> tuple[str, int]:
    """A JSON string literal starting at ``text[start]`` (a double quote): (value, end)."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            try:
                value = orjson.loads(text[start : i + 1])
            except orjson.JSONDecodeError:
                raise _WhereSyntax("not a valid JSON string", start) from None
            return value, i + 1
        i += 1
    raise _WhereSyntax("unterminated quoted string", start)
