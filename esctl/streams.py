"""Reading aggregates' event streams from Redis and checking them as the library would load
them. Shared by migrate, verify, inspect and query.

The commit list is the source of truth: its commit ids, in order, name the events; payloads are
looked up partitioned-hash-then-legacy. The library sorts an aggregate's events by Version and
requires 1, 2, 3, … without gaps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from esctl import codec, layout, redisio, storereads
from esctl.codec import ParsedEvent, Problem

PAYLOAD_KINDS = (
    "invalid_compressed",
    "invalid_utf8",
    "invalid_json",
    "missing_field",
    "wrong_type",
    "bad_timestamp",
    "bad_version",
)
"""The problems of a stored payload that cannot be read as an event (``codec``'s), in the order
reports list them."""
FATAL_EVENT_KINDS = frozenset({"missing_payload", *PAYLOAD_KINDS})
"""Problems that make an aggregate unloadable (quarantined by migrate)."""
DECODING_KINDS = frozenset(PAYLOAD_KINDS[:3])
"""Problems of a value that cannot be read as JSON: the value's other problems follow from them
and are not listed again (an invalid gzip value is not also invalid JSON)."""


@dataclass(slots=True)
class StreamEvent:
    """One committed event: where it is stored and what it says."""

    commit_id: str
    position: int  # index in the commit list
    hash_key: str | None
    stored: bytes | None
    decoded: codec.Decoded | None
    event: ParsedEvent | None
    wrong_type: str | None = None
    """The Redis type of ``hash_key`` when it is not a hash (the library fails reading the
    payload there: WRONGTYPE); no value then."""


@dataclass(frozen=True, slots=True)
class StreamProblem:
    kind: str
    detail: str
    commit_id: str | None = None
    stored: bytes | None = None


@dataclass(slots=True)
class Stream:
    """An aggregate's committed events (commit order) and what is wrong with them.

    ``problems`` make the stream unloadable by the library; ``warnings`` do not (events stored
    in an order other than their versions: the library sorts them)."""

    aggregate_id: str
    key: str
    events: list[StreamEvent]
    problems: list[StreamProblem] = field(default_factory=list)
    warnings: list[StreamProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def aggregate_type(self) -> str | None:
        for e in self.events:
            if e.event is not None and e.event.aggregate_type is not None:
                return e.event.aggregate_type
        return None

    def by_version(self) -> list[StreamEvent]:
        """Events sorted by Version (how the library loads them); only for ok streams."""
        return sorted(self.events, key=lambda e: (e.event.version or 0) if e.event else 0)


def read_streams(
    client: redisio.RedisClient,
    app: str,
    aggregate_ids: Sequence[str],
    *,
    starts: Sequence[int] | None = None,
    wrong_types: dict[str, str] | None = None,
) -> list[Stream]:
    """Read the commit lists (from ``starts[i]``, default 0) and their payloads of many
    aggregates in pipelined round trips, decode and parse each payload. Not validated yet.
    With ``wrong_types``, an event hash of another Redis type is recorded there (key -> its
    type) and the events the library would fail to read in it have no payload
    (:func:`esctl.storereads.fetch_values`); without, it raises ServerError."""
    keys = [layout.commit_list_key(app, a) for a in aggregate_ids]
    lists = storereads.commit_lists(client, keys, starts)
    values, where = storereads.fetch_values(
        client, app, [c for ids in lists for c in ids], wrong_types=wrong_types
    )
    streams: list[Stream] = []
    offset = 0
    for i, (aggregate_id, key, commit_ids) in enumerate(
        zip(aggregate_ids, keys, lists, strict=True)
    ):
        end = offset + len(commit_ids)
        streams.append(
            build_stream(
                aggregate_id,
                key,
                commit_ids,
                values[offset:end],
                where[offset:end],
                first_position=starts[i] if starts else 0,
                wrong_types=wrong_types,
            )
        )
        offset = end
    return streams


def build_stream(
    aggregate_id: str,
    key: str,
    commit_ids: Sequence[str],
    values: Sequence[bytes | None],
    hash_keys: Sequence[str | None],
    *,
    first_position: int = 0,
    wrong_types: dict[str, str] | None = None,
) -> Stream:
    """A stream from already-fetched values: each decoded and parsed, not validated yet. A
    value None with a hash key: that hash is of another Redis type, ``wrong_types`` says
    which."""
    events: list[StreamEvent] = []
    for j, (commit_id, value, hash_key) in enumerate(
        zip(commit_ids, values, hash_keys, strict=True)
    ):
        if value is None:
            wrong = None if hash_key is None or wrong_types is None else wrong_types.get(hash_key)
            events.append(
                StreamEvent(
                    commit_id, first_position + j, hash_key, None, None, None, wrong_type=wrong
                )
            )
        else:
            decoded, event = codec.decode_event(value)
            events.append(
                StreamEvent(commit_id, first_position + j, hash_key, value, decoded, event)
            )
    return Stream(aggregate_id, key, events)


def envelope(data: dict[str, Any]) -> tuple[str, int, str, str] | None:
    """A parsed payload's ``$type``, ``Version``, ``AggregateType`` and ``TimeStamp`` text when
    each is there with its JSON type and the version is 1 or more, else None: the check
    ``events query`` and :func:`clean_payloads` make before trusting a payload."""
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
        return None
    return type_name, version, aggregate_type, timestamp


class CleanPayload(NamedTuple):
    """One event of a clean stream as :func:`clean_payloads` gives it: the payload's UTF-8
    bytes (the stored value, or what it decompresses to) and what was read from them."""

    version: int
    type_name: str
    timestamp: str
    """The ``TimeStamp`` text, checked (:data:`esctl.codec.TIMESTAMP_RE`)."""
    moment: datetime
    payload: bytes
    data: dict[str, Any] | None
    """The parsed payload; None where the compiled path (:mod:`esctl.fastpath`) checked it
    without parsing it (:func:`parsed` parses it then)."""


def parsed(event: CleanPayload) -> dict[str, Any]:
    """A checked event's parsed payload (parsed now where the compiled path left it unparsed:
    a JSON object, as the check found)."""
    data = event.data
    return orjson.loads(event.payload) if data is None else data


_GZIP_PREFIX = codec.GZIP_BASE64_PREFIX
_ZSTD_MAGIC = codec.ZSTD_MAGIC
_DECODE_ERRORS = (*codec.GUNZIP_ERRORS, orjson.JSONDecodeError)
_NUL_ESCAPE = b"\\u0000"


def clean_payloads(
    aggregate_id: str,
    values: Sequence[bytes | None],
    *,
    first_version: int = 1,
    known_type: str | None = None,
) -> tuple[str, list[CleanPayload]] | None:
    """The hot path of migrate and verify: the aggregate type and the events, in version order,
    of a stream that has nothing wrong at all, or None, and the general path
    (:func:`build_stream` + :func:`validate_stream`) then finds what is wrong.

    It accepts exactly what the codec and :func:`validate_stream` accept without any problem
    (payloads that decode, every envelope field present and typed, Ids equal to the aggregate
    id, one aggregate type, versions ``first_version…`` without gap or repeat, no ``\\u0000``
    that PostgreSQL's jsonb cannot hold; a test holds the two paths together), but builds no
    per-event objects beyond a tuple, and never turns a payload into a Python string: JSON is
    parsed from the bytes (orjson checks their UTF-8 itself, ~2x faster than from a str).
    """
    aggregate_type = known_type
    events: list[CleanPayload] = []
    append = events.append
    loads = orjson.loads
    match_timestamp = codec.TIMESTAMP_RE.match
    fromisoformat = datetime.fromisoformat
    for value in values:
        if value is None:
            return None
        try:
            if value.startswith(_GZIP_PREFIX):
                payload = codec.gunzip_base64(value)
            elif value.startswith(_ZSTD_MAGIC):
                return None
            else:
                payload = value
            data = loads(payload)
        except _DECODE_ERRORS:  # orjson refuses bytes that are not UTF-8
            return None
        if type(data) is not dict or (fields := envelope(data)) is None:
            return None
        type_name, version, this_type, timestamp = fields
        if (
            data.get("Id") != aggregate_id
            or not match_timestamp(timestamp)
            # one byte first: memchr, where the six-byte search costs ~10x more
            or (
                b"\\" in payload
                and _NUL_ESCAPE in payload
                and codec.has_nul_escape(payload.decode("utf-8"))
            )
        ):
            return None
        if aggregate_type is None:
            aggregate_type = this_type
        elif this_type != aggregate_type:
            return None
        try:
            moment = fromisoformat(timestamp)
        except ValueError:
            return None
        append(CleanPayload(version, type_name, timestamp, moment, payload, data))
    if not events or aggregate_type is None or not _in_version_order(events, first_version):
        return None
    return aggregate_type, events


def _in_version_order(events: list[CleanPayload], first_version: int) -> bool:
    """Sort ``events`` by version (in place, when they are not in order yet); whether their
    versions then run ``first_version…`` without gap or repeat."""
    expected = list(range(first_version, first_version + len(events)))
    if [e.version for e in events] == expected:  # compared in C, not a generator per event
        return True
    events.sort(key=lambda e: e.version)
    return [e.version for e in events] == expected


def postgres_problem(stream: Stream) -> StreamProblem | None:
    """What keeps PostgreSQL from storing a stream the library loads fine: a NUL in the
    aggregate id (text) or a ``\\u0000`` escape in a payload (jsonb). Migrate quarantines such
    streams as ``unsupported_by_postgres``."""
    if "\x00" in stream.aggregate_id:
        return StreamProblem("unsupported_by_postgres", "the aggregate id holds a NUL character")
    for e in stream.events:
        if e.event is not None and codec.has_nul_escape(e.event.text):
            return StreamProblem(
                "unsupported_by_postgres",
                f"commit {e.commit_id}: PostgreSQL jsonb cannot hold the NUL character (\\u0000)",
                e.commit_id,
                e.stored,
            )
    return None


def validate_stream(
    stream: Stream,
    *,
    first_version: int = 1,
    known_type: str | None = None,
    skip: int = 0,
) -> Stream:
    """Check the stream as the library would load it; fills ``problems`` and ``warnings``.

    ``skip`` leading events are context only (already migrated); ``first_version`` is the
    version the first checked event must start at; ``known_type`` the aggregate type already
    recorded for this id. Returns the same stream.
    """
    checked = stream.events[skip:]
    problems = stream.problems
    _check_events(stream, checked)
    if any(p.kind in FATAL_EVENT_KINDS for p in problems):
        return stream

    parsed = [e.event for e in checked if e.event is not None]
    types = [p.aggregate_type for p in parsed]
    versions = [p.version for p in parsed if p.version is not None]
    distinct_types = list(dict.fromkeys(t for t in types if t is not None))
    if known_type is not None and distinct_types and distinct_types[0] != known_type:
        distinct_types.insert(0, known_type)
    repeated = len(versions) != len(set(versions))
    if len(distinct_types) > 1 and repeated:
        problems.append(
            StreamProblem(
                "shared_commit_list",
                f"aggregate types {', '.join(distinct_types)} write into one commit list "
                "(same id), with repeating versions",
            )
        )
        return stream
    if len(distinct_types) > 1:
        problems.append(
            StreamProblem(
                "aggregate_type_changed",
                f"AggregateType changes within the stream: {' -> '.join(distinct_types)}",
            )
        )
    if repeated:
        counts = Counter(versions)
        dups = sorted(v for v, n in counts.items() if n > 1)
        problems.append(
            StreamProblem(
                "duplicate_version",
                f"{versions_phrase(dups)} {'appears' if len(dups) == 1 else 'appear'} "
                "more than once",
            )
        )
    else:
        expected = list(range(first_version, first_version + len(versions)))
        ordered = sorted(versions)
        if ordered != expected:
            missing, more = _missing_versions(ordered, first_version)
            detail = (
                (
                    f"version {missing[0]} is missing"
                    if len(missing) == 1 and not more
                    else f"versions {short_list(missing)}{more} are missing"
                )
                if missing
                else f"versions should be {first_version}..{first_version + len(versions) - 1}, "
                f"found {short_list(ordered)}"
            )
            problems.append(StreamProblem("version_gap", detail))
        elif versions != ordered:
            stream.warnings.append(
                StreamProblem(
                    "version_order",
                    "commit order differs from version order (the library sorts by Version)",
                )
            )
    return stream


def _check_events(stream: Stream, checked: Sequence[StreamEvent]) -> None:
    """Each of the ``checked`` events on its own: a payload that is missing, that the library
    cannot load, or whose Id is not the stream's aggregate id; appended to ``stream.problems``."""
    problems = stream.problems
    for e in checked:
        if e.event is None:
            detail = (
                f"commit {e.commit_id} (position {e.position}) has no payload in the "
                "partitioned or the legacy hash"
                if e.wrong_type is None or e.hash_key is None
                else f"commit {e.commit_id} (position {e.position}): its payload is looked up "
                f"in {e.hash_key}, a {e.wrong_type}, not a hash: the library fails (WRONGTYPE) "
                "loading this aggregate"
            )
            problems.append(StreamProblem("missing_payload", detail, e.commit_id))
            continue
        for p in e.event.problems:
            if p.kind in FATAL_EVENT_KINDS:
                problems.append(
                    StreamProblem(
                        p.kind, f"commit {e.commit_id}: {p.detail}", e.commit_id, e.stored
                    )
                )
                if p.kind in DECODING_KINDS:
                    break  # what else is wrong with a value that cannot be read follows from it
        if e.event.aggregate_id is not None and e.event.aggregate_id != stream.aggregate_id:
            problems.append(
                StreamProblem(
                    "id_mismatch",
                    f"commit {e.commit_id}: payload Id {e.event.aggregate_id!r} is not the "
                    f"aggregate id {stream.aggregate_id!r}",
                    e.commit_id,
                    e.stored,
                )
            )


def hash_type_problems(stream: Stream, app: str) -> Stream:
    """In a validated stream read with ``wrong_types`` (:func:`read_streams`): one
    ``wrong_key_type`` problem per event hash of another Redis type in place of the
    ``missing_payload`` problems of the events the library would look up there (and fail on,
    WRONGTYPE), naming the key, its type, the commits it keeps unreadable and what to do.
    migrate quarantines such an aggregate (and verify and plan report it) as that kind: the key
    is what to fix, not the events. ``inspect integrity`` keeps them ``missing_payload`` (it
    reports the key itself once). Returns the same stream."""
    wrong = {
        e.commit_id: e
        for e in stream.events
        if e.event is None and e.hash_key is not None and e.wrong_type not in _NOT_WRONG
    }
    if not wrong:
        return stream
    legacy = layout.legacy_event_hash_key(app)
    unreadable: dict[str, list[StreamEvent]] = {}
    kept: list[StreamProblem] = []
    for p in stream.problems:
        e = wrong.get(p.commit_id or "") if p.kind == "missing_payload" else None
        if e is None or e.hash_key is None:
            kept.append(p)
        else:
            unreadable.setdefault(e.hash_key, []).append(e)
    found: list[StreamProblem] = []
    for key, events in unreadable.items():
        first = events[0]
        assert first.wrong_type is not None
        family = layout.LEGACY_HASH if key == legacy else layout.EVENT_HASH
        commits = (
            f"commit {first.commit_id} (position {first.position}) of this aggregate is"
            if len(events) == 1
            else f"{len(events)} commits of this aggregate (first: {first.commit_id}, position "
            f"{first.position}) are"
        )
        found.append(
            StreamProblem(
                "wrong_key_type",
                f"{storereads.wrong_type_text(key, first.wrong_type, family)}; {commits} "
                f"looked up there, so the library cannot load it; {storereads.WRONG_TYPE_ACTION}",
                first.commit_id,
            )
        )
    stream.problems = found + kept
    return stream


_NOT_WRONG = frozenset({None, "hash", "none"})
"""What :attr:`StreamEvent.wrong_type` holds when the hash is not of another type now (no type
met; a hash again, or gone, by the time its type was asked)."""


def checked_as_migrate(
    stream: Stream,
    app: str,
    *,
    first_version: int = 1,
    known_type: str | None = None,
    skip: int = 0,
) -> Stream:
    """The stream's problems as migrate quarantines it (and verify, plan and prune judge it):
    :func:`validate_stream`'s checks, then an event hash of another Redis type as
    ``wrong_key_type`` (:func:`hash_type_problems`). Returns the same stream."""
    validate_stream(stream, first_version=first_version, known_type=known_type, skip=skip)
    return hash_type_problems(stream, app)


def _missing_versions(ordered: Sequence[int], first: int, limit: int = 8) -> tuple[list[int], str]:
    """The first ``limit`` versions missing from sorted, distinct ``ordered`` (from ``first``),
    walking the gaps so that a corrupt Version such as 2147483647 costs nothing; and a note
    on how many more are missing."""
    missing: list[int] = []
    total = 0
    expected = first
    for version in ordered:
        if version > expected:
            gap = version - expected
            total += gap
            missing.extend(range(expected, expected + min(gap, limit - len(missing))))
        expected = max(expected, version + 1)
    more = f", … ({total:,} in all)" if total > len(missing) else ""
    return missing, more


def short_list(values: Sequence[int], limit: int = 8) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", … ({len(values)} in all)" if len(values) > limit else "")


def versions_phrase(values: Sequence[int]) -> str:
    """``version 3`` or ``versions 3, 5`` (the first few of a long list)."""
    return f"version {values[0]}" if len(values) == 1 else f"versions {short_list(values)}"


__all__ = [
    "FATAL_EVENT_KINDS",
    "PAYLOAD_KINDS",
    "Problem",
    "Stream",
    "StreamEvent",
    "StreamProblem",
    "read_streams",
    "validate_stream",
]
