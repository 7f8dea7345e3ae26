"""Newtonsoft ``$type`` values and the payload text they stand in, edited without touching
anything else: the type and assembly names inside one ``$type`` value (generic arguments
included), every ``$type`` member of a payload, and a top-level member's value.

Works on the JSON text itself, so whatever a rule does not change keeps its exact spelling.
In valid JSON every ``"`` outside a string opens one, so scanning string tokens from the start
finds exactly the strings; a ``"$type"`` string followed by ``:`` is a key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import orjson

_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
COLON_RE = re.compile(r"\s*:\s*")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")

Span = tuple[str, int, int]
"""(``"type"`` or ``"assembly"``, start, end) of a name inside a ``$type`` value."""


def name_spans(type_name: str) -> list[Span] | None:
    """Where the type names and assembly names are in an assembly-qualified ``$type`` value,
    outer type first, generic arguments in order: ``System.Collections.Generic.List`1[[Ns.T,
    Asm]], mscorlib`` gives the type ``System.Collections.Generic.List`1``, the type ``Ns.T``,
    the assembly ``Asm``, the assembly ``mscorlib``. None when the value does not read as a
    .NET type name (such a value is left as it is)."""
    spans: list[Span] = []
    try:
        end = _qualified(type_name, 0, spans, inside=False)
    except (IndexError, ValueError):
        return None
    return spans if end == len(type_name) else None


def _qualified(text: str, i: int, spans: list[Span], *, inside: bool) -> int:
    """Read one (possibly assembly-qualified) type name from ``text[i]``; where it ends."""
    start = i
    while i < len(text) and text[i] not in "[],":
        i += 1
    if i == start:
        raise ValueError("no type name")
    spans.append(("type", start, i))
    while i < len(text) and text[i] == "[":
        i = _arguments(text, i, spans) if text[i + 1] == "[" else _rank(text, i)
    if i < len(text) and text[i] == ",":
        i = _assembly(text, i + 1, spans)
    if not inside and i < len(text) and text[i] == "]":
        raise ValueError("unbalanced ']'")
    return i


def _arguments(text: str, i: int, spans: list[Span]) -> int:
    """Generic arguments ``[[A, Asm],[B, Asm]]`` from the first ``[``; where they end."""
    i += 1
    while True:
        if text[i] != "[":
            raise ValueError("expected '['")
        i = _qualified(text, i + 1, spans, inside=True)
        if text[i] != "]":
            raise ValueError("expected ']'")
        i += 1
        if text[i] == ",":
            i += 1
        elif text[i] == "]":
            return i + 1
        else:
            raise ValueError("expected ']'")


def _rank(text: str, i: int) -> int:
    """An array rank: ``[]``, ``[,]``, ``[*]``."""
    close = text.index("]", i)
    if text[i + 1 : close].strip(",*"):
        raise ValueError("bad array rank")
    return close + 1


def _assembly(text: str, i: int, spans: list[Span]) -> int:
    """The assembly name after a type name's comma, and its ``Version=…`` attributes."""
    while i < len(text) and text[i] == " ":
        i += 1
    start = i
    while i < len(text) and text[i] not in ",]":
        i += 1
    if i == start:
        raise ValueError("no assembly name")
    spans.append(("assembly", start, len(text[:i].rstrip())))
    while i < len(text) and text[i] == ",":  # Version=…, Culture=…, PublicKeyToken=…
        i += 1
        while i < len(text) and text[i] not in ",]":
            i += 1
    return i


def rename_names(
    type_name: str, rename: Callable[[str, str], str | None], *, outer_only: bool = False
) -> str:
    """``type_name`` with each type or assembly name replaced by ``rename(kind, name)`` where
    that is not None (``outer_only``: only the outer type name is offered)."""
    spans = name_spans(type_name)
    if spans is None:
        return type_name
    if outer_only:
        spans = spans[:1]
    parts: list[str] = []
    done = 0
    for kind, start, end in spans:
        new = rename(kind, type_name[start:end])
        if new is not None:
            parts.append(type_name[done:start])
            parts.append(new)
            done = end
    if not parts:
        return type_name
    parts.append(type_name[done:])
    return "".join(parts)


def _strings(text: str) -> Iterator[tuple[re.Match[str], int]]:
    """Every JSON string token of ``text`` with the object/array depth it stands at."""
    depth = 0
    done = 0
    for match in _STRING_RE.finditer(text):
        gap = text[done : match.start()]
        if gap:
            depth += gap.count("{") + gap.count("[") - gap.count("}") - gap.count("]")
        done = match.end()
        yield match, depth


def _string_value(token: str) -> str:
    return token[1:-1] if "\\" not in token else str(orjson.loads(token))


def _string_token(value: str) -> str:
    return orjson.dumps(value).decode("utf-8")


def escaped(text: str, at: int) -> bool:
    """Whether ``text[at]`` follows an odd run of backslashes."""
    run = 0
    while at > run and text[at - run - 1] == "\\":
        run += 1
    return run % 2 == 1


def rewrite_token(token: str, rewrite: Callable[[str], str]) -> str:
    """The JSON string ``token`` with its value replaced by ``rewrite(value)``; ``token``
    itself (the same object) when the value stays."""
    old = _string_value(token)
    new = rewrite(old)
    return token if new == old else _string_token(new)


def _replaced(text: str, span: tuple[int, int], rewrite: Callable[[str], str]) -> str:
    """``text`` with the JSON string token at ``span`` rewritten (:func:`rewrite_token`);
    ``text`` itself when the value stays."""
    start, end = span
    token = text[start:end]
    new = rewrite_token(token, rewrite)
    return text if new is token else text[:start] + new + text[end:]


def rewrite_type_members(text: str, rewrite: Callable[[str], str]) -> str:
    """``text`` with the value of every ``"$type"`` member (any depth) replaced by
    ``rewrite(value)``; the rest of the text is kept as it is."""

    def token(old: str) -> str | None:
        new = rewrite_token(old, rewrite)
        return None if new is old else new

    return rewrite_type_tokens(text, token)


_TYPE_KEY = '"$type"'


def type_members(text: str) -> list[tuple[int, int, str]]:
    """The ``"$type"`` members of a JSON text, at any depth: (where the key starts, where its
    value's string token starts, the token as written) of each, in order.

    A ``"`` that no backslash escapes, followed by ``$type"``, opens the string ``"$type"``
    (after a closing quote only ``:``, ``,``, ``}``, ``]`` or space may come), and a string
    followed by ``:`` is a key: so every member is found by looking for ``"$type"`` alone, no
    scan of the other strings. One whose opening quote is escaped lies inside a string and is
    skipped (the value token it reaches holds no unescaped quote, so no member is missed).
    The matches are those of ``"$type"``, a colon (space around it allowed) and a string
    token, leftmost first, each search going on after the previous match (plain ``str.find``
    does the scanning: a regular expression's character classes cost ~40 instructions a
    character)."""
    found: list[tuple[int, int, str]] = []
    find = text.find
    at = find(_TYPE_KEY)
    while at != -1:
        start = at + 7
        if text[start : start + 2] == ':"':
            start += 1
        else:
            colon = COLON_RE.match(text, start)
            if colon is None or text[colon.end() : colon.end() + 1] != '"':
                at = find(_TYPE_KEY, at + 1)
                continue
            start = colon.end()
        end = find('"', start + 1) + 1
        if not end:
            break  # no string ends: no later "$type" either
        token = text[start:end]
        if "\\" in token:
            match = _STRING_RE.match(text, start)
            if match is None:
                at = find(_TYPE_KEY, at + 1)
                continue
            end = match.end()
            token = text[start:end]
        if not (at and text[at - 1] == "\\" and escaped(text, at)):
            found.append((at, start, token))
        at = find(_TYPE_KEY, end)
    return found


def rewrite_type_tokens(text: str, rewrite: Callable[[str], str | None]) -> str:
    """As :func:`rewrite_type_members`, with ``rewrite`` given each value's JSON string token
    as written and returning the token to put there, or None when it stays: the caller can
    cache per token, and nothing is decoded or encoded again. ``text`` itself (the same
    object) when nothing changed. The members: :func:`type_members`."""
    parts: list[str] = []
    done = 0
    for _, start, token in type_members(text):
        new = rewrite(token)
        if new is not None:
            parts.append(text[done:start])
            parts.append(new)
            done = start + len(token)
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


OWN_TYPE_RE = re.compile(r'\s*\{\s*"\$type"\s*:\s*("[^"\\]*(?:\\.[^"\\]*)*")', re.S)


def rewrite_own_type(text: str, rewrite: Callable[[str], str]) -> str:
    """``text`` with the value of the payload's own (top-level) ``$type`` replaced by
    ``rewrite(value)``. Newtonsoft writes it first, found at once; elsewhere (jsonb's key
    order) the strings are scanned for the one at depth 1."""
    first = OWN_TYPE_RE.match(text)
    if first is not None:
        return _replaced(text, first.span(1), rewrite)
    key_end = -1
    for match, depth in _strings(text):
        if key_end != -1:
            colon = COLON_RE.match(text, key_end)
            if colon is not None and colon.end() == match.start():
                return _replaced(text, match.span(), rewrite)
            key_end = -1
        elif depth == 1 and match.group() == '"$type"':
            key_end = match.end()
    return text


def set_top_level_number(text: str, key: str, value: int) -> str:
    """``text`` with the number value of its top-level member ``key`` replaced by ``value``.
    Raises ValueError when there is no such member holding a number."""
    token = _string_token(key)
    for match, depth in _strings(text):
        if depth == 1 and match.group() == token:
            colon = COLON_RE.match(text, match.end())
            if colon is None:
                continue  # a string value equal to the key's name
            number = _NUMBER_RE.match(text, colon.end())
            if number is None:
                raise ValueError(f"the top-level {key!r} is not a number")
            return text[: number.start()] + str(value) + text[number.end() :]
    raise ValueError(f"no top-level {key!r}")
