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

from esctl import codec, layout, redisio
from esctl.codec import ParsedEvent, Problem

# Problems that make an aggregate unloadable (quarantined by migrate).
FATAL_EVENT_KINDS = frozenset(
    {
        "missing_payload",
        "invalid_compressed",
        "invalid_utf8",
        "invalid_json",
        "missing_field",
        "wrong_type",
        "bad_timestamp",
        "bad_version",
    }
)


@dataclass(slots=True)
class StreamEvent:
    """One committed event: where it is stored and what it says."""

    commit_id: str
    position: int  # index in the commit list
    hash_key: str | None
    stored: bytes | None
    decoded: codec.Decoded | None
    event: ParsedEvent | None


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
            if e.event is not None and e.event.aggregate_type:
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
) -> list[Stream]:
    """Read the commit lists (from ``starts[i]``, default 0) and their payloads of many
    aggregates in pipelined round trips, decode and parse each payload. Not validated yet."""
    keys = [layout.commit_list_key(app, a) for a in aggregate_ids]
    lists = redisio.commit_lists(client, keys, starts)
    values, where = redisio.fetch_values(client, app, [c for ids in lists for c in ids])
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
) -> Stream:
    """A stream from already-fetched values: each decoded and parsed, not validated yet."""
    events: list[StreamEvent] = []
    for j, (commit_id, value, hash_key) in enumerate(
        zip(commit_ids, values, hash_keys, strict=True)
    ):
        if value is None:
            events.append(StreamEvent(commit_id, first_position + j, None, None, None, None))
        else:
            decoded, event = codec.decode_event(value)
            events.append(
                StreamEvent(commit_id, first_position + j, hash_key, value, decoded, event)
            )
    return Stream(aggregate_id, key, events)


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
    for e in checked:
        if e.event is None:
            problems.append(
                StreamProblem(
                    "missing_payload",
                    f"commit {e.commit_id} (position {e.position}) has no payload in the "
                    "partitioned or the legacy hash",
                    e.commit_id,
                )
            )
            continue
        for p in e.event.problems:
            if p.kind in FATAL_EVENT_KINDS:
                problems.append(
                    StreamProblem(
                        p.kind, f"commit {e.commit_id}: {p.detail}", e.commit_id, e.stored
                    )
                )
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
    if any(p.kind in FATAL_EVENT_KINDS for p in problems):
        return stream

    parsed = [e.event for e in checked if e.event is not None]
    types = [p.aggregate_type for p in parsed]
    versions = [p.version for p in parsed if p.version is not None]
    distinct_types = list(dict.fromkeys(t for t in types if t))
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
            StreamProblem("duplicate_version", f"version(s) {_short(dups)} appear more than once")
        )
    else:
        expected = list(range(first_version, first_version + len(versions)))
        ordered = sorted(versions)
        if ordered != expected:
            missing = sorted(set(range(first_version, max(ordered, default=0) + 1)) - set(ordered))
            detail = (
                f"versions {_short(missing)} are missing"
                if missing
                else f"versions should be {first_version}..{first_version + len(versions) - 1}, "
                f"found {_short(ordered)}"
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


def _short(values: Sequence[int], limit: int = 8) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", … ({len(values)} in all)" if len(values) > limit else "")


def problem_as_dict(stream: Stream, problem: StreamProblem) -> dict[str, str]:
    """The ``{"kind", "key", "detail"}`` shape of CLI.md summaries."""
    return {"kind": problem.kind, "key": stream.key, "detail": problem.detail}


__all__ = [
    "FATAL_EVENT_KINDS",
    "Problem",
    "Stream",
    "StreamEvent",
    "StreamProblem",
    "read_streams",
    "validate_stream",
]
