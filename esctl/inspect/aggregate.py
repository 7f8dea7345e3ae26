"""``inspect aggregate``: one aggregate's commit list, every payload it names (decoded), its
snapshot, and the problems the library would meet loading it."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from esctl import codec, layout, redisio, storereads
from esctl.errors import NotFound
from esctl.inspect.locate import where_stored
from esctl.inspect.problems import problem_key, stream_problems
from esctl.streams import build_stream, validate_stream


def _text_or_none(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass
class EventRow:
    """One entry of a commit list, as ``inspect aggregate`` shows it."""

    position: int
    commit_id: str
    version: int | None
    event_type: str | None
    aggregate_type: str | None
    timestamp: str | None
    hash_key: str | None
    partition: int | None
    layout: str | None
    """``partitioned``, ``legacy``, or None when the payload is missing."""
    stored_bytes: int | None
    compressed: str | None
    problems: list[str]
    text: str | None
    data: Any
    stored: bytes | None = field(default=None, repr=False)

    def as_dict(self, *, raw: bool = False) -> dict[str, Any]:
        document = {
            "position": self.position,
            "commit_id": self.commit_id,
            "version": self.version,
            "event_type": self.event_type,
            "aggregate_type": self.aggregate_type,
            "timestamp": self.timestamp,
            "hash_key": self.hash_key,
            "partition": self.partition,
            "layout": self.layout,
            "stored_bytes": self.stored_bytes,
            "compressed": self.compressed,
            "problems": self.problems,
            "text": self.text,
            "data": self.data,
        }
        if raw:
            document["stored"] = _text_or_none(self.stored)
            if self.stored is not None and document["stored"] is None:
                document["stored_base64"] = base64.b64encode(self.stored).decode("ascii")
        return document


@dataclass
class SnapshotInfo:
    key: str
    version: int | None
    stored_bytes: int
    compressed: str | None
    problem: str | None = None


@dataclass
class AggregateReport:
    """Everything ``inspect aggregate`` knows about one aggregate (one commit list)."""

    app: str
    aggregate_id: str
    key: str
    commits: int
    aggregate_types: list[str]
    first_timestamp: str | None
    last_timestamp: str | None
    snapshot: SnapshotInfo | None
    stored_bytes: int
    compressed_events: int
    events: list[EventRow]
    """In commit order; only versions >= ``from_version`` when that is set."""
    problems: list[dict[str, Any]]
    from_version: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self, *, raw: bool = False) -> dict[str, Any]:
        return {
            "app": self.app,
            "aggregate_id": self.aggregate_id,
            "key": self.key,
            "commits": self.commits,
            "aggregate_types": self.aggregate_types,
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "snapshot": None
            if self.snapshot is None
            else {
                "key": self.snapshot.key,
                "version": self.snapshot.version,
                "stored_bytes": self.snapshot.stored_bytes,
                "compressed": self.snapshot.compressed,
                "problem": self.snapshot.problem,
            },
            "stored_bytes": self.stored_bytes,
            "compressed_events": self.compressed_events,
            "from_version": self.from_version,
            "ok": self.ok,
            "problems": self.problems,
            "events": [e.as_dict(raw=raw) for e in self.events],
        }


def _snapshot(key: str, value: bytes | None) -> SnapshotInfo | None:
    if value is None:
        return None
    decoded = codec.decode_value(value)
    if decoded.problem is not None:
        return SnapshotInfo(key, None, decoded.stored_size, None, decoded.problem.detail)
    try:
        document = orjson.loads(decoded.text)
    except orjson.JSONDecodeError as exc:
        return SnapshotInfo(key, None, decoded.stored_size, decoded.compressed, str(exc))
    version = document.get("Version") if isinstance(document, dict) else None
    if type(version) is not int:
        return SnapshotInfo(
            key, None, decoded.stored_size, decoded.compressed, "no integer Version"
        )
    return SnapshotInfo(key, version, decoded.stored_size, decoded.compressed)


def inspect_aggregate(
    client: redisio.RedisClient,
    app: str,
    aggregate_id: str,
    *,
    from_version: int | None = None,
) -> AggregateReport:
    """Read one aggregate's commit list and every payload it names, and check the stream as the
    library would load it.

    Round trips: one for the commit list and the snapshot, then ``ceil(n / 1000)`` for the
    payloads (plus as many again only for commit ids not in their first-choice hash). Problems
    (kinds as in :mod:`esctl.streams`, and ``version_order``) are listed with the key and commit
    they concern; ``blocks_migration`` says whether ``migrate`` would quarantine the aggregate
    for it. ``from_version`` limits the events listed (the checks cover the whole stream).
    Raises NotFound when the aggregate has no commit list.
    """
    key = layout.commit_list_key(app, aggregate_id)
    snapshot_key = layout.snapshot_hash_key(app, aggregate_id)
    listed, snapshot_value = redisio.pipelined(
        client, [("LRANGE", key, 0, -1), ("HGET", snapshot_key, aggregate_id)]
    )
    if isinstance(listed, Exception):
        raise storereads.commit_list_error(client, key, listed)
    if not listed:
        raise NotFound(
            f"aggregate {aggregate_id!r} of {app} does not exist: there is no commit list {key}",
            hint="check the aggregate id and --app (ApplicationName); ids are case-sensitive",
        )
    commit_ids = [redisio.key_str(c) for c in listed]
    values, where = storereads.fetch_values(client, app, commit_ids)
    stream = validate_stream(build_stream(aggregate_id, key, commit_ids, values, where))
    problems = stream_problems(stream)
    blocking = {id(p) for p in stream.problems}
    by_commit: dict[str, list[str]] = {}
    for p in problems:
        if p.commit_id is not None:
            by_commit.setdefault(p.commit_id, []).append(p.kind)

    rows: list[EventRow] = []
    moments: list[tuple[datetime, str]] = []
    types: list[str] = []
    stored_bytes = compressed = 0
    for e in stream.events:
        partition, where_kind = where_stored(app, e.hash_key)
        ev = e.event
        if e.stored is not None:
            stored_bytes += len(e.stored)
        if e.decoded is not None and e.decoded.compressed is not None:
            compressed += 1
        if ev is not None:
            if ev.aggregate_type:
                types.append(ev.aggregate_type)
            if ev.timestamp is not None and ev.timestamp_text is not None:
                moments.append((ev.timestamp, ev.timestamp_text))
        row = EventRow(
            position=e.position,
            commit_id=e.commit_id,
            version=ev.version if ev else None,
            event_type=ev.event_type if ev else None,
            aggregate_type=ev.aggregate_type if ev else None,
            timestamp=ev.timestamp_text if ev else None,
            hash_key=e.hash_key,
            partition=partition,
            layout=where_kind,
            stored_bytes=len(e.stored) if e.stored is not None else None,
            compressed=e.decoded.compressed if e.decoded else None,
            problems=by_commit.get(e.commit_id, []),
            text=e.decoded.text if e.decoded and ev is not None and ev.data is not None else None,
            data=ev.data if ev else None,
            stored=e.stored,
        )
        if from_version is not None and row.version is not None and row.version < from_version:
            continue
        rows.append(row)
    moments.sort(key=lambda m: m[0])
    return AggregateReport(
        app=app,
        aggregate_id=aggregate_id,
        key=key,
        commits=len(commit_ids),
        aggregate_types=list(dict.fromkeys(types)),
        first_timestamp=moments[0][1] if moments else None,
        last_timestamp=moments[-1][1] if moments else None,
        snapshot=_snapshot(snapshot_key, snapshot_value)
        if not isinstance(snapshot_value, Exception)
        else SnapshotInfo(snapshot_key, None, 0, None, str(snapshot_value)),
        stored_bytes=stored_bytes,
        compressed_events=compressed,
        events=rows,
        problems=[
            {
                "kind": p.kind,
                "key": problem_key(stream, p),
                "detail": p.detail,
                "commit_id": p.commit_id,
                "blocks_migration": id(p) in blocking,
            }
            for p in problems
        ],
        from_version=from_version,
    )
