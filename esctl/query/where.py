"""``events query``: find events by type, aggregate, time and payload fields, in Redis or in the
migrated PostgreSQL tables, with one filter language and one answer.

Filters (all optional, combined with AND):

- ``types``: the event type (.NET ``Type.Name`` of ``$type``, as ``esctl.codec`` derives it and
  ``migrate`` stores it in ``event.event_type``) is one of these;
- ``aggregate_type``: the payload's ``AggregateType`` (PostgreSQL: ``aggregate.aggregate_type``);
- ``aggregates``: the aggregate id is one of these (Redis: only those commit lists are read);
- ``since`` (inclusive) / ``until`` (exclusive): the payload ``TimeStamp``, truncated to the
  microsecond as everywhere in esctl (PostgreSQL: ``event.time_stamp``);
- ``where``: clauses of the where-language (:func:`parse_where`), see below.

**The where-language.** ``PATH OP VALUE`` or ``PATH exists``. ``PATH`` is a dotted path of keys
from the payload's root (``Rubric.Criteria.Name``; a key holding a dot or an operator character
is written in double quotes, ``"Some.Key"``). Walking a path:

- a key is looked up in an object; on a list it is looked up in each element that is an object
  (one level of list, as PostgreSQL's lax jsonpath does);
- ``$values`` wrappers (``{"$type": "…List`1[[…]]…", "$values": [...]}``, how Newtonsoft writes
  collections) are looked through: after each key, the path continues both in the value itself
  and in its ``$values`` list, and a path ending on a wrapper also reaches the list's elements;
- a path reaches a *set* of values (possibly empty: a missing path). A comparison holds when
  **any** reached value satisfies it (a list's elements are compared one by one).

Operators and their exact semantics (the same in Redis and PostgreSQL):

- ``exists``: the path reaches at least one value (``null``, an object or an empty list count);
- ``=``: some value equals VALUE. A bare VALUE is read every way it can be: ``7`` matches the
  number 7 (also ``7.0``) and the string ``"7"``; ``true``/``false``/``null`` match that JSON
  literal and the string of that text; anything else matches only that string. A quoted VALUE
  (``"7"``, JSON string syntax) matches only strings. Numbers never equal strings otherwise,
  and objects and lists never equal anything;
- ``!=``: the path exists and **no** value equals VALUE (as ``=`` defines it): a missing path
  does not match; use ``exists`` to test presence;
- ``>``, ``>=``, ``<``, ``<=``: a numeric VALUE compares with JSON numbers only; any other VALUE
  (bare or quoted) compares with JSON strings only, by Unicode code point (PostgreSQL compares
  jsonpath strings by UTF-8 bytes: the same order). ``true``/``false``/``null`` cannot be
  ordered (usage error);
- ``~``: some string value contains VALUE's text (case-sensitive substring); numbers, booleans
  and null never match.

Numbers compare by value; Redis-side values are parsed as IEEE doubles (PostgreSQL's numeric is
exact), so numbers that differ only beyond ~15 significant digits may compare differently.

**Results** carry ``aggregate_id, version, event_type, aggregate_type, timestamp, commit_id,
data``. ``timestamp`` is the payload's ``TimeStamp`` text as written (seven digits and offset),
on both sides. ``commit_id`` is null for PostgreSQL results: the library's tables have no commit
id column and esctl's ``migrated_stream`` keeps only each aggregate's last one, so a commit id
cannot be given exactly. ``data`` is the payload (Redis: the exact stored text; PostgreSQL:
``event_data``, whose key order jsonb normalises).

Redis results are the readable events of every commit list, including those of aggregates
``migrate`` quarantines (a version gap, say); PostgreSQL holds only the migrated aggregates.
Events that cannot be read (no payload, undecodable, no envelope fields) are counted as
``unreadable`` and skipped.
"""

from __future__ import annotations

import base64
import functools
import operator
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg import sql

from esctl import codec, layout, pg, readahead, redisio
from esctl.durations import parse_time
from esctl.errors import UsageError

MAX_PATH_SEGMENTS = 8
"""A path of n keys becomes 2**n jsonpath alternatives in PostgreSQL (``$values`` or not)."""

OPERATORS = ("=", "!=", ">", ">=", "<", "<=", "~", "exists")
_ORDERED = {">", ">=", "<", "<="}

# --- the where-language --------------------------------------------------------------------

_NUMBER_RE = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_BARE_KEY_STOP = set('.=!<>~"') | {" ", "\t", "\n", "\r"}


@dataclass(frozen=True)
class Literal:
    """A VALUE of the where-language, with every reading it has (see the module docstring)."""

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
        out = [b'"' + k.encode("utf-8") for k in self.path if _literal_safe(k)]
        literal = self.literal
        if literal is not None and _literal_safe(literal.text) and literal.text:
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
    """The values ``path`` reaches in ``document`` (see the module docstring): after each key
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


def _literal_safe(text: str) -> bool:
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
        pointer = text + "\n" + " " * exc.column + "^"
        raise UsageError(
            f"bad --where {text!r}: {exc.message} (column {exc.column + 1})",
            hint="write PATH OP VALUE with OP one of = != > >= < <= ~, or PATH exists; e.g. "
            f"--where 'Rubric.Name~Essay' --where 'Score>=7'\n{pointer}",
        ) from None


def _parse_where(text: str) -> WhereClause:
    n = len(text)
    i = 0

    def skip_space(j: int) -> int:
        while j < n and text[j].isspace():
            j += 1
        return j

    i = skip_space(i)
    if i == n:
        raise _WhereSyntax("the expression is empty", 0)
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
    after_path = i
    i = skip_space(i)
    if i == n:
        raise _WhereSyntax("no operator after the path", after_path)
    for op in (">=", "<=", "!=", "==", "=", ">", "<", "~"):
        if text.startswith(op, i):
            break
    else:
        word = re.match(r"[A-Za-z_]+", text[i:])
        if word and word.group() == "exists" and i > after_path:
            j = skip_space(i + len("exists"))
            if j != n:
                raise _WhereSyntax(f"unexpected {text[j:]!r} after 'exists'", j)
            return WhereClause(text, tuple(path), "exists")
        raise _WhereSyntax(
            f"expected an operator (= != > >= < <= ~ or exists), found {text[i:]!r}", i
        )
    op_column = i
    i += len(op)
    op = "=" if op == "==" else op
    i = skip_space(i)
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
    if op in _ORDERED and literal.number is None and (literal.boolean is not None or literal.null):
        raise _WhereSyntax(f"{raw!r} cannot be ordered with {op!r}", op_column)
    return WhereClause(text, tuple(path), op, literal)


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


# --- filters and results -------------------------------------------------------------------


@dataclass(frozen=True)
class QueryFilters:
    types: tuple[str, ...] = ()
    aggregate_type: str | None = None
    aggregates: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    where: tuple[WhereClause, ...] = ()
    limit: int | None = None

    @classmethod
    def build(
        cls,
        *,
        types: Sequence[str] = (),
        aggregate_type: str | None = None,
        aggregates: Sequence[str] = (),
        since: str | None = None,
        until: str | None = None,
        where: Sequence[str] = (),
        limit: int | None = None,
        now: datetime | None = None,
    ) -> QueryFilters:
        """Filters from command-line text; raises UsageError on anything malformed."""
        moment = now or datetime.now(UTC)
        if limit is not None and limit < 0:
            raise UsageError("--limit must be 0 or more")
        return cls(
            types=tuple(dict.fromkeys(types)),
            aggregate_type=aggregate_type,
            aggregates=tuple(dict.fromkeys(aggregates)),
            since=parse_time(since, option="--since", now=moment) if since else None,
            until=parse_time(until, option="--until", now=moment) if until else None,
            where=tuple(parse_where(w) for w in where),
            limit=limit,
        )


@dataclass(slots=True)
class QueryResult:
    """One matching event. ``payload`` is the payload JSON as UTF-8 bytes, as stored (Redis) or
    as jsonb prints it (PostgreSQL); ``data`` parses it on demand."""

    aggregate_id: str
    version: int
    event_type: str
    aggregate_type: str
    timestamp: str
    commit_id: str | None
    payload: bytes
    _data: Any = field(default=None, repr=False)

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    @property
    def data(self) -> Any:
        if self._data is None:
            self._data = orjson.loads(self.payload)
        return self._data

    def _envelope(self) -> dict[str, Any]:
        """Every field of a result but ``data``."""
        return {
            "aggregate_id": self.aggregate_id,
            "version": self.version,
            "event_type": self.event_type,
            "aggregate_type": self.aggregate_type,
            "timestamp": self.timestamp,
            "commit_id": self.commit_id,
        }

    def as_dict(self) -> dict[str, Any]:
        return {**self._envelope(), "data": self.data}

    def json_line(self) -> bytes:
        """The result as one JSON object (bytes, no newline) with ``data`` spliced in as the
        payload text itself, so a Redis payload keeps its exact key order and spelling."""
        return orjson.dumps(self._envelope())[:-1] + b',"data":' + self.payload + b"}"


@dataclass
class QueryStats:
    """How much a query looked at. ``events`` counts commit-list entries (Redis) or rows
    returned (PostgreSQL)."""

    aggregates: int = 0
    events: int = 0
    matched: int = 0
    unreadable: int = 0


# --- Redis ---------------------------------------------------------------------------------


def _needle_groups(filters: QueryFilters) -> list[tuple[bytes, ...]]:
    """Groups of byte strings; for an event to match, each group needs one of its members in
    the payload text (unless the text uses ``\\u`` or ``\\/`` escapes)."""
    groups: list[tuple[bytes, ...]] = []
    if filters.types and all(_literal_safe(t) for t in filters.types):
        groups.append(tuple(t.encode("utf-8") for t in filters.types))
    if filters.aggregate_type and _literal_safe(filters.aggregate_type):
        groups.append((filters.aggregate_type.encode("utf-8"),))
    for clause in filters.where:
        groups.extend((n,) for n in clause.needles())
    return groups


HEAD_BASE64_CHARS = 512
"""How much of a gzip+base64 value :func:`head_envelope` decodes (384 compressed bytes)."""
HEAD_PLAIN_BYTES = 400
_HEAD_TYPE_RE = re.compile(rb'\s*\{\s*"\$type"\s*:\s*"([^"\\]*)"')
_HEAD_TIMESTAMP_RE = re.compile(rb'\{"\$type":"[^"\\]*","Id":"[^"\\]*","TimeStamp":"([^"\\]*)"')
"""The envelope exactly as the library writes it (docs/layout.md §2): a TimeStamp matched here is
the top-level one (the members before it are whole strings)."""


def head_envelope(value: bytes) -> tuple[str | None, str | None]:
    """(``$type``, ``TimeStamp``) of a gzip+base64 payload, read from its first few hundred bytes
    only, each None when the head does not say: Newtonsoft writes ``$type`` first, and the
    library's envelope puts ``Id`` and ``TimeStamp`` right after it. A ``--type`` or
    ``--since``/``--until`` query rules events out on this without decompressing them whole
    (~4 µs instead of ~13 µs for a 1.4 KB value); whatever it cannot rule out is decoded in
    full. Assumes a key is never repeated (Newtonsoft never does). Never raises."""
    try:
        head = zlib.decompressobj(31).decompress(
            base64.b64decode(value[:HEAD_BASE64_CHARS], validate=True), HEAD_PLAIN_BYTES
        )
        stamp = _HEAD_TIMESTAMP_RE.match(head)
        if stamp is not None:
            type_end = head.index(b'"', 10)  # the value of $type ends before ',"Id"'
            return head[10:type_end].decode("utf-8"), stamp.group(1).decode("utf-8")
        match = _HEAD_TYPE_RE.match(head)
        return (match.group(1).decode("utf-8") if match else None), None
    except (*codec.GUNZIP_ERRORS, UnicodeDecodeError):
        return None, None


def head_event_type(value: bytes) -> str | None:
    """The event type (``Type.Name``) a gzip+base64 payload's head names, or None."""
    type_name = head_envelope(value)[0]
    return codec.event_type_from_type_name(type_name) if type_name is not None else None


_ESCAPE_RE = re.compile(rb"\\[u/]")
"""JSON escapes that could spell a needle differently (``\\u00e9``, ``\\/``)."""


class RedisQuery:
    """Iterate the events of ``app`` matching ``filters``, streaming over the commit lists
    (SCAN pages, pipelined LRANGE and HGET, one page in memory at a time). Each aggregate's
    events come in commit order. ``stats`` grows as the iteration goes.

    SCAN may return a commit list twice while Redis resizes its keyspace table; its events are
    then listed twice."""

    def __init__(
        self,
        client: redisio.RedisClient,
        app: str,
        filters: QueryFilters,
        *,
        scan_count: int = 1000,
        on_progress: Callable[[QueryStats], None] | None = None,
        read_ahead: bool | None = None,
        unpack_ahead: bool = False,
    ) -> None:
        self.client = client
        self.app = app
        self.filters = filters
        self.scan_count = scan_count
        self.on_progress = on_progress
        if read_ahead is None:
            read_ahead = readahead.available() and (
                not filters.aggregates or len(filters.aggregates) > scan_count
            )
        self.read_ahead = read_ahead
        """Read in a second process while this one matches: on by default with two CPUs or
        more, unless only a page of ``--aggregate`` ids is to be read."""
        self.unpack_ahead = unpack_ahead
        """With :attr:`read_ahead`, gunzip there too: for a consumer that has more to do per
        event than matching (replay publishing or projecting), which balances the two."""
        self.stats = QueryStats()
        self._rejects = self._head_rejects()

    def _pages(self) -> Iterator[list[str]]:
        app = self.app
        if self.filters.aggregates:
            ids = list(self.filters.aggregates)
            for start in range(0, len(ids), self.scan_count):
                yield ids[start : start + self.scan_count]
            return
        for _, keys in redisio.scan_pages(
            self.client, layout.commit_list_pattern(app), type_="list", count=self.scan_count
        ):
            if keys:
                yield [layout.aggregate_id_from_commit_list_key(app, k) for k in keys]

    def _head_rejects(self) -> Callable[[bytes], bool] | None:
        """A test that rules a gzip+base64 value out on its head alone (:func:`head_envelope`),
        or None when no filter can use the head (no --type, --since or --until)."""
        types = frozenset(self.filters.types)
        since, until = self.filters.since, self.filters.until
        if not types and since is None and until is None:
            return None
        type_of = codec.event_type_from_type_name
        timestamp_match = codec.TIMESTAMP_RE.match

        def rejects(value: bytes) -> bool:
            type_name, stamp = head_envelope(value)
            if types and type_name is not None and type_of(type_name) not in types:
                return True
            if stamp is None or (since is None and until is None) or not timestamp_match(stamp):
                return False
            moment = datetime.fromisoformat(stamp)
            return (since is not None and moment < since) or (until is not None and moment >= until)

        return rejects

    def _unpack(self, values: list[bytes | None]) -> list[bytes | bool | None]:
        """Each stored value as payload JSON bytes (gzip+base64 and zstd undone); None when it
        cannot be read (no payload, undecodable), False when the head of a compressed value
        already rules it out (:meth:`_head_rejects`)."""
        rejects = self._rejects
        out: list[bytes | bool | None] = []
        append = out.append
        gzip_prefix = codec.GZIP_BASE64_PREFIX
        gunzip = codec.gunzip_base64
        gunzip_errors = codec.GUNZIP_ERRORS
        for value in values:
            if value is None:
                append(None)
            elif value.startswith(gzip_prefix):
                if rejects is not None and rejects(value):
                    append(False)
                    continue
                try:
                    append(gunzip(value))
                except gunzip_errors:
                    append(None)
            elif value.startswith(codec.ZSTD_MAGIC):
                decoded = codec.decode_value(value)
                append(None if decoded.problem is not None else decoded.text.encode("utf-8"))
            else:
                append(value)
        return out

    def _read_pages(self) -> Iterator[tuple[list[str], list[list[str]], list[bytes | bool | None]]]:
        """(aggregate ids, their commit lists, the payloads in commit order as :meth:`_unpack`
        gives them) per page: pipelined LRANGE, then HGET (the reads ``migrate`` makes).

        With :attr:`read_ahead` the pages are read in a forked process (:mod:`esctl.readahead`)
        while this one unpacks and matches the previous page (for a query, gunzip here rather
        than there balances the two processes, measured; :attr:`unpack_ahead` moves it there
        for heavier consumers). Not a thread: a reader thread measured no faster. The read is
        mostly Python work (packing commands, parsing replies) that holds the GIL, and a thread
        that gives the GIL up for a socket wait or a gunzip waits up to the 5 ms switch interval
        to get it back while the other thread decodes (a convoy)."""
        if self.read_ahead and self.unpack_ahead:
            yield from readahead.read_ahead(self._read_unpacked)
            return
        pages = readahead.read_ahead(self._read_stored) if self.read_ahead else self._read_stored()
        unpack = self._unpack
        for ids, lists, values in pages:
            yield ids, lists, unpack(values)

    def _read_unpacked(
        self,
    ) -> Iterator[tuple[list[str], list[list[str]], list[bytes | bool | None]]]:
        for ids, lists, values in self._read_stored():
            yield ids, lists, self._unpack(values)

    def _read_stored(self) -> Iterator[tuple[list[str], list[list[str]], list[bytes | None]]]:
        """(aggregate ids, their commit lists, the stored values in commit order) per page."""
        client, app = self.client, self.app
        for ids in self._pages():
            lists = redisio.commit_lists(client, [layout.commit_list_key(app, a) for a in ids])
            flat = [c for commit_ids in lists for c in commit_ids]
            values, _ = redisio.fetch_values(client, app, flat)
            yield ids, lists, values

    def __iter__(self) -> Iterator[QueryResult]:
        filters = self.filters
        limit = filters.limit
        if limit == 0:
            return
        stats = self.stats
        groups = _needle_groups(filters)
        all_of = [g[0] for g in groups if len(g) == 1]
        any_of = [g for g in groups if len(g) > 1]
        prefilter = bool(groups)
        types = frozenset(filters.types)
        aggregate_type_wanted = filters.aggregate_type
        since, until = filters.since, filters.until
        timed = since is not None or until is not None
        where = filters.where
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        type_of = codec.event_type_from_type_name
        timestamp_match = codec.TIMESTAMP_RE.match
        from_iso = datetime.fromisoformat
        escaped = _ESCAPE_RE.search
        for ids, lists, values in self._read_pages():
            stats.aggregates += len(ids)
            stats.events += len(values)
            index = 0
            for aggregate_id, commit_ids in zip(ids, lists, strict=True):
                for commit_id in commit_ids:
                    raw = values[index]
                    index += 1
                    if type(raw) is not bytes:  # None: unreadable; False: not of --type
                        if raw is None:
                            stats.unreadable += 1
                        continue
                    if prefilter:
                        # Cheap substring tests first: most events of a selective query stop
                        # here, unparsed. Only JSON escapes could hide a needle.
                        missing = False
                        for needle in all_of:
                            if needle not in raw:
                                missing = True
                                break
                        if not missing:
                            for group in any_of:
                                if not any(n in raw for n in group):
                                    missing = True
                                    break
                        if missing and (b"\\" not in raw or not escaped(raw)):
                            continue
                    try:
                        data = loads(raw)
                    except decode_error:
                        stats.unreadable += 1
                        continue
                    if type(data) is not dict:
                        stats.unreadable += 1
                        continue
                    type_name = data.get("$type")
                    version = data.get("Version")
                    aggregate_type = data.get("AggregateType")
                    timestamp = data.get("TimeStamp")
                    if (
                        type(type_name) is not str
                        or type(version) is not int
                        or version < 1
                        or type(aggregate_type) is not str
                        or type(timestamp) is not str
                    ):
                        stats.unreadable += 1
                        continue
                    event_type = type_of(type_name)
                    if types and event_type not in types:
                        continue
                    if (
                        aggregate_type_wanted is not None
                        and aggregate_type != aggregate_type_wanted
                    ):
                        continue
                    if not timestamp_match(timestamp):
                        stats.unreadable += 1
                        continue
                    if timed:
                        moment = from_iso(timestamp)
                        if (since is not None and moment < since) or (
                            until is not None and moment >= until
                        ):
                            continue
                    if where and not all(clause.matches(data) for clause in where):
                        continue
                    stats.matched += 1
                    yield QueryResult(
                        aggregate_id,
                        version,
                        event_type,
                        aggregate_type,
                        timestamp,
                        commit_id,
                        raw,
                        data,
                    )
                    if limit is not None and stats.matched >= limit:
                        return
            if self.on_progress is not None:
                self.on_progress(stats)


def query_redis(
    client: redisio.RedisClient,
    app: str,
    filters: QueryFilters,
    *,
    on_progress: Callable[[QueryStats], None] | None = None,
) -> RedisQuery:
    """See :class:`RedisQuery`."""
    return RedisQuery(client, app, filters, on_progress=on_progress)


# --- PostgreSQL ----------------------------------------------------------------------------


def pg_conditions(app: str, filters: QueryFilters) -> tuple[list[sql.Composable], dict[str, Any]]:
    """The WHERE conditions of ``filters`` over ``event e JOIN aggregate a`` (``--where`` as
    jsonpath predicates on ``event_data``), and their parameters. Shared by query and replay,
    so the same question selects the same events."""
    conditions: list[sql.Composable] = [sql.SQL("a.application_name = %(app)s")]
    params: dict[str, Any] = {"app": app}
    if filters.types:
        conditions.append(sql.SQL("e.event_type = ANY(%(types)s::text[])"))
        params["types"] = list(filters.types)
    if filters.aggregate_type is not None:
        conditions.append(sql.SQL("a.aggregate_type = %(aggregate_type)s"))
        params["aggregate_type"] = filters.aggregate_type
    if filters.aggregates:
        conditions.append(sql.SQL("a.aggregate_id = ANY(%(aggregates)s::text[])"))
        params["aggregates"] = list(filters.aggregates)
    if filters.since is not None:
        conditions.append(sql.SQL("e.time_stamp >= %(since)s"))
        params["since"] = filters.since
    if filters.until is not None:
        conditions.append(sql.SQL("e.time_stamp < %(until)s"))
        params["until"] = filters.until
    for index, clause in enumerate(filters.where):
        path, variables = clause.jsonpath("v")
        conditions.append(
            sql.SQL("jsonb_path_match(e.event_data, {path}::jsonpath, {vars}::jsonb, true)").format(
                path=sql.Placeholder(f"where{index}"), vars=sql.Placeholder(f"vars{index}")
            )
        )
        params[f"where{index}"] = path
        params[f"vars{index}"] = orjson.dumps(variables).decode("utf-8")
    return conditions, params


def pg_query_sql(
    schema: str, app: str, filters: QueryFilters
) -> tuple[sql.Composed, dict[str, Any]]:
    """The SELECT that answers ``filters`` in PostgreSQL, every filter in its WHERE clause
    (``--where`` as jsonpath predicates on ``event_data``), and its parameters. Rows:
    aggregate id, version, event type, aggregate type, TimeStamp text, event_data text; in
    (aggregate, version) order."""
    conditions, params = pg_conditions(app, filters)
    query = sql.SQL(
        "SELECT a.aggregate_id, e.version, e.event_type, a.aggregate_type,"
        "       e.event_data ->> 'TimeStamp', e.event_data::text"
        "  FROM {s}.event e JOIN {s}.aggregate a ON a.aggregate_key = e.aggregate_key"
        " WHERE {conditions}"
        " ORDER BY e.aggregate_key, e.version"
    ).format(s=sql.Identifier(schema), conditions=sql.SQL(" AND ").join(conditions))
    if filters.limit is not None:
        query = sql.Composed([query, sql.SQL(" LIMIT {}").format(sql.Literal(filters.limit))])
    return query, params


class PgQuery:
    """Iterate the migrated events of ``app`` in ``schema`` matching ``filters``; PostgreSQL
    does all the filtering, rows stream through a server-side cursor."""

    def __init__(self, dsn: str, schema: str, app: str, filters: QueryFilters) -> None:
        self.dsn = dsn
        self.schema = schema
        self.app = app
        self.filters = filters
        self.stats = QueryStats()

    def __iter__(self) -> Iterator[QueryResult]:
        if self.filters.limit == 0:
            return
        query, params = pg_query_sql(self.schema, self.app, self.filters)
        conn = pg.connect(self.dsn, application_name="esctl events query")
        try:
            with pg.translate_errors(self.dsn):
                pg.ensure_event_store_schema(conn, self.schema, create=False)
                conn.commit()
                # A cursor is planned for its first 10% of rows by default: ordered index
                # scans and nested loops that took minutes on a 200k-event table where a hash
                # join and a sort take a second. Plan for all rows.
                conn.execute("SET LOCAL cursor_tuple_fraction = 1.0")
                with conn.cursor(name="esctl_query") as cur:
                    cur.itersize = 2000
                    cur.execute(query, params)
                    for row in cur:
                        self.stats.events += 1
                        self.stats.matched += 1
                        yield QueryResult(
                            row[0], row[1], row[2], row[3], row[4], None, row[5].encode("utf-8")
                        )
                conn.rollback()
        finally:
            conn.close()


def query_pg(dsn: str, schema: str, app: str, filters: QueryFilters) -> PgQuery:
    """See :class:`PgQuery`."""
    return PgQuery(dsn, schema, app, filters)
