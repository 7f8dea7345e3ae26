"""``events query --source redis``: :class:`RedisQuery` streams over the commit lists of an app
and yields the events matching the filters, one SCAN page in memory at a time.

What makes it fast (an envelope read from a compressed value's head, substring needles before
any JSON is parsed, a second process reading ahead): docs/design/query.md, "Redis".
"""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime

import orjson

from esctl import codec, inflight, layout, readahead, redisio, storereads
from esctl.query.filters import QueryFilters, QueryResult, QueryStats
from esctl.streams import envelope
from esctl.where import literal_safe

Page = tuple[list[str], list[list[str]], list[bytes | bool | None]]
"""(aggregate ids, their commit lists, the payloads in commit order as
:meth:`RedisQuery._unpack` gives them)."""

HEAD_BASE64_CHARS = 512
"""How much of a gzip+base64 value :func:`head_envelope` decodes (384 compressed bytes)."""
HEAD_PLAIN_BYTES = 400
_HEAD_TYPE_RE = re.compile(rb'\s*\{\s*"\$type"\s*:\s*"([^"\\]*)"')
_HEAD_TIMESTAMP_RE = re.compile(rb'\{"\$type":"[^"\\]*","Id":"[^"\\]*","TimeStamp":"([^"\\]*)"')
"""The envelope exactly as the library writes it (docs/layout.md §2): a TimeStamp matched here is
the top-level one (the members before it are whole strings)."""


def head_envelope(value: bytes) -> tuple[str | None, str | None]:
    """(``$type``, ``TimeStamp``) of a gzip+base64 payload, read from its first few hundred bytes
    only, each None when the head does not say. Lets ``--type`` and ``--since``/``--until`` rule
    events out without decompressing them whole (docs/design/query.md); whatever it cannot rule
    out is decoded in full. Never raises."""
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


def _needle_groups(filters: QueryFilters) -> list[tuple[bytes, ...]]:
    """Groups of byte strings; for an event to match, each group needs one of its members in
    the payload text (unless the text uses ``\\u`` or ``\\/`` escapes)."""
    groups: list[tuple[bytes, ...]] = []
    if filters.types and all(literal_safe(t) for t in filters.types):
        groups.append(tuple(t.encode("utf-8") for t in filters.types))
    if filters.aggregate_type and literal_safe(filters.aggregate_type):
        groups.append((filters.aggregate_type.encode("utf-8"),))
    for clause in filters.where:
        groups.extend((n,) for n in clause.needles())
    return groups


_ESCAPE_RE = re.compile(rb"\\[u/]")
"""JSON escapes that could spell a needle differently (``\\u00e9``, ``\\/``)."""


@dataclass(eq=False)
class RedisQuery:
    """Iterate the events of ``app`` matching ``filters``, streaming over the commit lists
    (SCAN pages, pipelined LRANGE and HGET, one page in memory at a time). Each aggregate's
    events come in commit order. ``stats`` grows as the iteration goes.

    SCAN may return a commit list twice while Redis resizes its keyspace table; its events are
    then listed twice."""

    client: redisio.RedisClient
    app: str
    filters: QueryFilters
    _: KW_ONLY
    scan_count: int = 1000
    on_progress: Callable[[QueryStats], None] | None = None
    read_ahead: bool | None = None
    """Read in a second process while this one matches: by default (None) on with two CPUs or
    more, unless only a page of ``--aggregate`` ids is to be read."""
    unpack_ahead: bool = False
    """With :attr:`read_ahead`, gunzip there too: for a consumer that has more to do per
    event than matching (replay publishing or projecting), which balances the two."""
    stats: QueryStats = field(default_factory=QueryStats, init=False)
    _rejects: Callable[[bytes], bool] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.read_ahead is None:
            self.read_ahead = readahead.available() and (
                not self.filters.aggregates or len(self.filters.aggregates) > self.scan_count
            )
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

    def _read_pages(self) -> Iterator[Page]:
        """The pages, payloads unpacked: pipelined LRANGE, then HGET (the reads ``migrate``
        makes). With :attr:`read_ahead` the pages are read in a forked process
        (:mod:`esctl.readahead`) while this one unpacks and matches the previous page; with
        :attr:`unpack_ahead` that process unpacks too. Why a process and not a thread, and who
        gunzips: docs/design/query.md, "Reading ahead"."""
        if self.read_ahead and self.unpack_ahead:
            yield from readahead.read_ahead(self._read_unpacked)
            return
        pages = readahead.read_ahead(self._read_stored) if self.read_ahead else self._read_stored()
        unpack = self._unpack
        for ids, lists, values in pages:
            yield ids, lists, unpack(values)

    def _read_unpacked(self) -> Iterator[Page]:
        for ids, lists, values in self._read_stored():
            yield ids, lists, self._unpack(values)

    def _read_stored(self) -> Iterator[tuple[list[str], list[list[str]], list[bytes | None]]]:
        """(aggregate ids, their commit lists, the stored values in commit order) per page.
        Several pages are read at once, as many as the round trips call for
        (:func:`esctl.inflight.ordered_map`), the next SCAN page asked for meanwhile."""
        return inflight.ordered_map(self._read_page, inflight.prefetched(self._pages()))

    def _read_page(self, ids: list[str]) -> tuple[list[str], list[list[str]], list[bytes | None]]:
        client, app = self.client, self.app
        lists = storereads.commit_lists(client, [layout.commit_list_key(app, a) for a in ids])
        flat = [c for commit_ids in lists for c in commit_ids]
        values, _ = storereads.fetch_values(client, app, flat)
        return ids, lists, values

    def __iter__(self) -> Iterator[QueryResult]:
        limit = self.filters.limit
        if limit == 0:
            return
        stats = self.stats
        matcher = _Matcher(self.filters, stats)
        lacks_needles = matcher.lacks_needles if matcher.prefilter else None
        match = matcher.match
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
                    if lacks_needles is not None and lacks_needles(raw):
                        continue
                    result = match(aggregate_id, commit_id, raw)
                    if result is None:
                        continue
                    stats.matched += 1
                    yield result
                    if limit is not None and stats.matched >= limit:
                        return
            if self.on_progress is not None:
                self.on_progress(stats)


class _Matcher:
    """Tests payloads against the filters: :meth:`lacks_needles`, cheap substring tests (most
    events of a selective query stop there, unparsed), then :meth:`match`: the parsed envelope,
    then ``--where``. Counts the payloads it cannot read in ``stats.unreadable``."""

    __slots__ = (
        "aggregate_type",
        "all_of",
        "any_of",
        "prefilter",
        "since",
        "stats",
        "timed",
        "types",
        "until",
        "where",
    )

    def __init__(self, filters: QueryFilters, stats: QueryStats) -> None:
        groups = _needle_groups(filters)
        self.all_of = [g[0] for g in groups if len(g) == 1]
        self.any_of = [g for g in groups if len(g) > 1]
        self.prefilter = bool(groups)
        self.types = frozenset(filters.types)
        self.aggregate_type = filters.aggregate_type
        self.since, self.until = filters.since, filters.until
        self.timed = filters.since is not None or filters.until is not None
        self.where = filters.where
        self.stats = stats

    def match(self, aggregate_id: str, commit_id: str, raw: bytes) -> QueryResult | None:
        """The result for this payload (one :meth:`lacks_needles` let through), or None when it
        does not match or cannot be read."""
        try:
            data = _loads(raw)
        except orjson.JSONDecodeError:
            self.stats.unreadable += 1
            return None
        fields = envelope(data) if type(data) is dict else None
        if fields is None:
            self.stats.unreadable += 1
            return None
        type_name, version, aggregate_type, timestamp = fields
        event_type = _event_type_of(type_name)
        if self.types and event_type not in self.types:
            return None
        if self.aggregate_type is not None and aggregate_type != self.aggregate_type:
            return None
        if not _timestamp_match(timestamp):
            self.stats.unreadable += 1
            return None
        if self.timed and self._outside_window(timestamp):
            return None
        if self.where and not all(clause.matches(data) for clause in self.where):
            return None
        return QueryResult(
            aggregate_id, version, event_type, aggregate_type, timestamp, commit_id, raw, data
        )

    def lacks_needles(self, raw: bytes) -> bool:
        """Does the payload text lack a byte string the filters need? Only JSON escapes could
        hide one (then the payload is parsed after all)."""
        for needle in self.all_of:
            if needle not in raw:
                break
        else:
            for group in self.any_of:
                if not any(n in raw for n in group):
                    break
            else:
                return False
        return b"\\" not in raw or not _escaped(raw)

    def _outside_window(self, timestamp: str) -> bool:
        moment = _from_iso(timestamp)
        since, until = self.since, self.until
        return (since is not None and moment < since) or (until is not None and moment >= until)


# Plain module globals: looked up once per event on the hot path, cheaper than attributes.
_loads = orjson.loads
_event_type_of = codec.event_type_from_type_name
_timestamp_match = codec.TIMESTAMP_RE.match
_from_iso = datetime.fromisoformat
_escaped = _ESCAPE_RE.search


def query_redis(
    client: redisio.RedisClient,
    app: str,
    filters: QueryFilters,
    *,
    on_progress: Callable[[QueryStats], None] | None = None,
) -> RedisQuery:
    """See :class:`RedisQuery`."""
    return RedisQuery(client, app, filters, on_progress=on_progress)
