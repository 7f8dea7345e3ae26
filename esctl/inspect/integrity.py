"""``inspect``: read-only looks into a Redis event store — one aggregate, one event, the whole
store's integrity, and where the memory goes.

Everything here is safe against a production primary: keys are found with SCAN (never KEYS),
reads are pipelined in bounded round trips (``redisio.PIPELINE_CHUNK`` commands), nothing
blocks or writes. Streams are read and checked with :mod:`esctl.streams`, so a problem has the
same kind here as in ``migrate``'s quarantine.

**Integrity's memory.** Finding orphans (hash fields no commit list names) needs, for every
hash field, "does some commit list name it?" — a question about the whole keyspace. Instead of
a Python set of every commit id, :func:`check_integrity` spills the commit ids it reads to an
SQLite file in a temporary directory (deleted afterwards) and asks it page by page:

1. commit lists, one SCAN page at a time: read and validate the page's streams
   (:func:`esctl.streams.read_streams`), count problems, keep the first examples, write the
   page's commit ids to SQLite;
2. event hashes, one SCAN page (or HSCAN page of the legacy hash) at a time: read the field
   names only, flag fields whose commit id maps to another partition (``misplaced_payload``)
   and look the rest up in SQLite (``orphan``);
3. orphan candidates are checked once more against Redis (a live service may have committed
   them since step 1 read their list), and described from their payload.

Python holds one page at a time (by default ~250 commit lists with their payloads, or ~250
hashes' field names), a fixed number of examples per kind, and SQLite's page cache
(capped at 8 MiB): the same whatever the store's size. The temporary file grows with the store
(~100 bytes per event for its commit id, aggregate id and the keys already seen: ~100 MB on disk
for a million events); it is only ever read through that cache. One aggregate with a very long commit list is still read whole (as ``inspect
aggregate`` does), so that aggregate's payloads are the largest item held.

**Shards** (``--shard I/N``, :class:`esctl.shard.Shard`): N runs that together report exactly
what one run reports, each finding in exactly one of them.

- Findings about an aggregate (from its commit list and the payloads it names) belong to the
  shard of the aggregate id, ``CRC-32(id) mod N``, as in ``migrate --shard``.
- Findings about a hash field (orphans, misplaced payloads) belong to the shard of the
  partition hash that holds the field: partition ``P`` is shard ``P mod N``; a field of the
  legacy hash belongs to ``partition(commit id) mod N``. So a shard reads (HKEYS/HSCAN) only its
  own partition hashes, a ``1/N`` share of the field names, not every field of the store.
- A field stored where it belongs (the only kind that can be an orphan) has
  ``partition(commit id) = P``, so the shard's SQLite file needs only the commit ids of its own
  partitions: every shard still reads every commit list (LRANGE of the other shards' lists, no
  payloads), but spills ``1/N`` of the commit ids.
- A misplaced field's commit id may be of another shard's partition: whether a commit list
  names it (the finding's detail says) is then settled by one more pass over the commit lists
  (LRANGE only), made only when there is such a field.
"""

from __future__ import annotations

import base64
import os
import random
import sqlite3
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from esctl import codec, layout, redisio
from esctl.errors import NotFound, ServerError
from esctl.shard import Shard
from esctl.streams import (
    FATAL_EVENT_KINDS,
    Stream,
    StreamProblem,
    build_stream,
    read_streams,
    validate_stream,
)

DECODING_KINDS = frozenset({"invalid_compressed", "invalid_utf8", "invalid_json"})
"""Problems that make a payload's other problems mere consequences (not listed again)."""

INTEGRITY_KINDS = (
    "orphan",
    "missing_payload",
    "misplaced_payload",
    "invalid_compressed",
    "invalid_utf8",
    "invalid_json",
    "missing_field",
    "wrong_type",
    "bad_timestamp",
    "bad_version",
    "id_mismatch",
    "version_gap",
    "duplicate_version",
    "version_order",
    "aggregate_type_changed",
    "shared_commit_list",
)
"""Every kind ``inspect integrity`` reports, in the order it lists them."""


# --- shared helpers ------------------------------------------------------------------------


def stream_problems(stream: Stream) -> list[StreamProblem]:
    """A validated stream's problems and warnings, without the consequences of a payload that
    could not be decoded (an invalid gzip value is not also reported as invalid JSON)."""
    undecodable: set[str] = set()
    out: list[StreamProblem] = []
    for problem in [*stream.problems, *stream.warnings]:
        if problem.commit_id is not None and problem.commit_id in undecodable:
            continue
        if problem.kind in DECODING_KINDS and problem.commit_id is not None:
            undecodable.add(problem.commit_id)
        out.append(problem)
    return out


PAYLOAD_KINDS = FATAL_EVENT_KINDS - {"missing_payload"}
"""Problems of one stored value: reported on the hash holding it (others on the commit list)."""


def problem_key(stream: Stream, problem: StreamProblem) -> str:
    """The Redis key a problem is about: the event hash for a value that cannot be read or
    parsed, the commit list for everything else (missing payloads, versions, types)."""
    if problem.kind in PAYLOAD_KINDS and problem.commit_id is not None:
        for e in stream.events:
            if e.commit_id == problem.commit_id and e.hash_key is not None:
                return e.hash_key
    return stream.key


def _where_stored(app: str, hash_key: str | None) -> tuple[int | None, str | None]:
    """(partition number, ``"partitioned"``/``"legacy"``) of the hash a payload was found in."""
    if hash_key is None:
        return None, None
    part = layout.event_hash_partition(app, hash_key)
    return part, "legacy" if part is None else "partitioned"


def _text_or_none(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


# --- inspect aggregate ---------------------------------------------------------------------


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
        raise ServerError(
            f"cannot read commit list {key}: {listed}",
            hint="the key is expected to be a Redis list (docs/layout.md §1)",
        )
    if not listed:
        raise NotFound(
            f"aggregate {aggregate_id!r} of {app} does not exist: there is no commit list {key}",
            hint="check the aggregate id and --app (ApplicationName); ids are case-sensitive",
        )
    commit_ids = [redisio.key_str(c) for c in listed]
    values, where = redisio.fetch_values(client, app, commit_ids)
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
        partition, where_kind = _where_stored(app, e.hash_key)
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


# --- inspect event -------------------------------------------------------------------------


@dataclass
class EventReport:
    """One stored payload found by commit id, and whether a commit list names it."""

    app: str
    commit_id: str
    hash_key: str
    partition: int | None
    layout: str
    stored_bytes: int
    compressed: str | None
    event_type: str | None
    type_name: str | None
    aggregate_id: str | None
    aggregate_type: str | None
    version: int | None
    timestamp: str | None
    commit_list_key: str | None
    committed: bool | None
    """True when the payload's aggregate's commit list names this commit id, False when it does
    not (an orphan), None when that could not be asked (no Id in the payload)."""
    position: int | None
    problems: list[dict[str, str]]
    text: str
    data: Any

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "commit_id": self.commit_id,
            "hash_key": self.hash_key,
            "partition": self.partition,
            "layout": self.layout,
            "stored_bytes": self.stored_bytes,
            "compressed": self.compressed,
            "event_type": self.event_type,
            "type_name": self.type_name,
            "aggregate_id": self.aggregate_id,
            "aggregate_type": self.aggregate_type,
            "version": self.version,
            "timestamp": self.timestamp,
            "commit_list_key": self.commit_list_key,
            "committed": self.committed,
            "position": self.position,
            "ok": self.ok,
            "problems": self.problems,
            "text": self.text,
            "data": self.data,
        }


def _list_position(client: redisio.RedisClient, key: str, commit_id: str) -> int | None:
    """Index of ``commit_id`` in the list ``key`` (LPOS; LRANGE on servers before 6.0.6)."""
    (reply,) = redisio.pipelined(client, [("LPOS", key, commit_id)])
    if not isinstance(reply, Exception):
        return None if reply is None else int(reply)
    (listed,) = redisio.pipelined(client, [("LRANGE", key, 0, -1)])
    if isinstance(listed, Exception):
        raise ServerError(f"cannot read commit list {key}: {listed}")
    wanted = redisio.key_bytes(commit_id)
    for index, item in enumerate(listed):
        if item == wanted:
            return index
    return None


def inspect_event(client: redisio.RedisClient, app: str, commit_id: str) -> EventReport:
    """Find a commit id's payload as the library does (partitioned hash, then legacy), decode
    it, and ask the commit list of the aggregate it names whether it is committed. An event no
    commit list names is an orphan (problem kind ``orphan``). Raises NotFound when neither hash
    holds the commit id."""
    values, where = redisio.fetch_values(client, app, [commit_id])
    value, hash_key = values[0], where[0]
    if value is None or hash_key is None:
        raise NotFound(
            f"commit {commit_id!r} of {app} is in neither {layout.event_hash_key(app, commit_id)} "
            f"nor the legacy hash {layout.legacy_event_hash_key(app)}",
            hint="check the commit id and --app; `esctl inspect integrity` finds payloads stored "
            "in the wrong partition",
        )
    decoded, event = codec.decode_event(value)
    partition, where_kind = _where_stored(app, hash_key)
    problems: list[dict[str, str]] = []
    skip_rest = False
    for p in event.problems:
        if skip_rest:
            break
        problems.append({"kind": p.kind, "key": hash_key, "detail": p.detail})
        skip_rest = p.kind in DECODING_KINDS
    list_key = committed = position = None
    if event.aggregate_id is not None:
        list_key = layout.commit_list_key(app, event.aggregate_id)
        position = _list_position(client, list_key, commit_id)
        committed = position is not None
        if not committed:
            problems.append(
                {
                    "kind": "orphan",
                    "key": hash_key,
                    "detail": f"commit list {list_key} does not name commit {commit_id}: the "
                    "payload was never committed (a save that died between HSET and RPUSH)",
                }
            )
    return EventReport(
        app=app,
        commit_id=commit_id,
        hash_key=hash_key,
        partition=partition,
        layout=where_kind or "legacy",
        stored_bytes=decoded.stored_size,
        compressed=decoded.compressed,
        event_type=event.event_type,
        type_name=event.type_name,
        aggregate_id=event.aggregate_id,
        aggregate_type=event.aggregate_type,
        version=event.version,
        timestamp=event.timestamp_text,
        commit_list_key=list_key,
        committed=committed,
        position=position,
        problems=problems,
        text=decoded.text,
        data=event.data,
    )


# --- inspect integrity ---------------------------------------------------------------------


@dataclass
class IntegrityProgress:
    phase: str
    """``commit lists``, ``event hashes`` or ``recheck``."""
    commit_lists: int = 0
    """Commit lists checked (with ``--shard``: the shard's)."""
    commits: int = 0
    lists_read: int = 0
    """Commit lists read so far, the other shards' included (their commit ids only)."""
    event_hashes: int = 0
    hash_fields: int = 0


@dataclass
class IntegrityReport:
    app: str
    commit_lists: int
    commits: int
    event_hashes: int
    """Partition hashes scanned (the legacy hash is counted in ``legacy_fields``)."""
    hash_fields: int
    legacy_fields: int
    counts: dict[str, int]
    """Problems found per kind (kinds with none are left out)."""
    aggregates_with_problems: int
    examples: dict[str, list[dict[str, Any]]]
    """The first examples of each kind: ``{"kind", "key", "aggregate_id", "commit_id",
    "detail"}`` (:func:`finding`)."""
    elapsed_s: float
    shard: Shard = field(default_factory=Shard)
    """The share of the store covered (counts above are the shard's; see the module docstring)."""

    @property
    def ok(self) -> bool:
        return not self.counts

    @property
    def problems(self) -> list[dict[str, Any]]:
        return [p for kind in INTEGRITY_KINDS for p in self.examples.get(kind, [])]

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "shard": str(self.shard),
            "ok": self.ok,
            "commit_lists": self.commit_lists,
            "commits": self.commits,
            "event_hashes": self.event_hashes,
            "hash_fields": self.hash_fields,
            "legacy_fields": self.legacy_fields,
            "aggregates_with_problems": self.aggregates_with_problems,
            "counts": self.counts,
            "problems": self.problems,
            "elapsed_s": round(self.elapsed_s, 3),
        }


_SQL_CHUNK = 500
"""Host parameters per SQLite statement (well under every SQLite build's limit)."""


def _db(text: str) -> str:
    """A name read from Redis as SQLite can store it. Names that are not valid UTF-8 are kept
    as surrogate escapes (``redisio.key_str``), which SQLite refuses: those are stored with
    their raw bytes as Latin-1 (and :func:`_py` undoes it), so every name maps to one stored
    text and back. ASCII, nearly every name, is stored as it is."""
    return text if text.isascii() else text.encode("utf-8", "surrogateescape").decode("latin-1")


def _py(text: str) -> str:
    return text if text.isascii() else text.encode("latin-1").decode("utf-8", "surrogateescape")


def _rows(rows: list[Any]) -> list[tuple[int, str, str]]:
    return [(rowid, _py(key), _py(commit_id)) for rowid, key, commit_id in rows]


class CommitIndex:
    """The commit ids seen in commit lists, the keys already scanned, and hash-side findings,
    in an SQLite file of a temporary directory; memory is SQLite's page cache (8 MiB). Text goes
    in through :func:`_db` and comes out through :func:`_py`, so names that are not UTF-8 work."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="esctl-integrity-")
        self.db = sqlite3.connect(
            os.path.join(self._dir.name, "index.sqlite"), isolation_level=None
        )
        for pragma in (
            "journal_mode = OFF",
            "synchronous = OFF",
            "cache_size = -8192",
            "temp_store = FILE",
            "locking_mode = EXCLUSIVE",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(
            """
            CREATE TABLE seen_key (key TEXT PRIMARY KEY) WITHOUT ROWID;
            CREATE TABLE committed (commit_id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL)
                WITHOUT ROWID;
            CREATE TABLE finding (kind TEXT NOT NULL, key TEXT NOT NULL, commit_id TEXT NOT NULL,
                detail TEXT NOT NULL, UNIQUE (key, commit_id));
            CREATE INDEX finding_commit ON finding (commit_id);
            """
        )

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()

    def __enter__(self) -> CommitIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _chunks(self, items: Sequence[str]) -> Iterator[Sequence[str]]:
        for start in range(0, len(items), _SQL_CHUNK):
            yield items[start : start + _SQL_CHUNK]

    def new_keys(self, keys: Sequence[str]) -> list[str]:
        """The keys not seen before (SCAN may return a key twice), now marked as seen."""
        stored = [_db(k) for k in keys]
        seen: set[str] = set()
        for chunk in self._chunks(stored):
            marks = ",".join("?" * len(chunk))
            seen.update(
                r[0]
                for r in self.db.execute(f"SELECT key FROM seen_key WHERE key IN ({marks})", chunk)
            )
        fresh = {d: k for d, k in zip(stored, keys, strict=True) if d not in seen}
        self.db.executemany("INSERT INTO seen_key VALUES (?)", ((d,) for d in fresh))
        return list(fresh.values())

    def add_commits(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR IGNORE INTO committed VALUES (?, ?)", ((_db(c), _db(a)) for c, a in pairs)
        )
        self.db.execute("COMMIT")

    def committed(self, commit_ids: Sequence[str]) -> dict[str, str]:
        """commit id -> aggregate id, for the given ids some commit list names."""
        out: dict[str, str] = {}
        for chunk in self._chunks([_db(c) for c in commit_ids]):
            marks = ",".join("?" * len(chunk))
            out.update(
                (_py(commit_id), _py(aggregate_id))
                for commit_id, aggregate_id in self.db.execute(
                    f"SELECT commit_id, aggregate_id FROM committed WHERE commit_id IN ({marks})",
                    chunk,
                )
            )
        return out

    def add_finding(self, kind: str, key: str, commit_id: str, detail: str) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO finding (kind, key, commit_id, detail) VALUES (?, ?, ?, ?)",
            (kind, _db(key), _db(commit_id), _db(detail)),
        )

    def findings(self, kind: str, batch: int = 1000) -> Iterator[list[tuple[int, str, str]]]:
        """(rowid, key, commit id) of the findings of ``kind``, in batches, oldest first."""
        last = 0
        while True:
            rows = self.db.execute(
                "SELECT rowid, key, commit_id FROM finding WHERE kind = ? AND rowid > ?"
                " ORDER BY rowid LIMIT ?",
                (kind, last, batch),
            ).fetchall()
            if not rows:
                return
            yield _rows(rows)
            last = rows[-1][0]

    def drop_finding(self, rowid: int) -> None:
        self.db.execute("DELETE FROM finding WHERE rowid = ?", (rowid,))

    def describe_finding(self, rowid: int, detail: str) -> None:
        self.db.execute("UPDATE finding SET detail = ? WHERE rowid = ?", (_db(detail), rowid))

    def undescribed(self, kind: str, commit_ids: Sequence[str]) -> list[tuple[int, str, str]]:
        """(rowid, key, commit id) of the findings of ``kind`` about ``commit_ids`` that have no
        detail yet."""
        out: list[tuple[int, str, str]] = []
        for chunk in self._chunks([_db(c) for c in commit_ids]):
            marks = ",".join("?" * len(chunk))
            out.extend(
                _rows(
                    self.db.execute(
                        "SELECT rowid, key, commit_id FROM finding WHERE kind = ? AND detail = ''"
                        f" AND commit_id IN ({marks})",
                        (kind, *chunk),
                    ).fetchall()
                )
            )
        return out

    def undescribed_batch(self, kind: str, batch: int = 1000) -> list[tuple[int, str, str]]:
        """Up to ``batch`` findings of ``kind`` with no detail yet (describe them to move on)."""
        return _rows(
            self.db.execute(
                "SELECT rowid, key, commit_id FROM finding WHERE kind = ? AND detail = '' LIMIT ?",
                (kind, batch),
            ).fetchall()
        )

    def count_undescribed(self, kind: str) -> int:
        row = self.db.execute(
            "SELECT count(*) FROM finding WHERE kind = ? AND detail = ''", (kind,)
        ).fetchone()
        return int(row[0])

    def finding_counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT kind, count(*) FROM finding GROUP BY kind").fetchall())

    def finding_examples(self, kind: str, limit: int) -> list[tuple[str, str, str]]:
        return [
            (_py(key), _py(commit_id), _py(detail))
            for key, commit_id, detail in self.db.execute(
                "SELECT key, commit_id, detail FROM finding WHERE kind = ? ORDER BY rowid LIMIT ?",
                (kind, limit),
            )
        ]


class _Tally:
    """Counts per kind and the first ``limit`` examples of each (fixed memory)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, Any]]] = {}

    def add(
        self, kind: str, key: str, detail: str, commit_id: str | None, aggregate_id: str | None
    ) -> None:
        self.counts[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < self.limit:
            examples.append(finding(kind, key, detail, commit_id, aggregate_id))


def finding(
    kind: str, key: str, detail: str, commit_id: str | None, aggregate_id: str | None
) -> dict[str, Any]:
    """One reported problem. ``aggregate_id`` names the aggregate whose commit list the problem
    is about or points at the value (None for an orphan: no list names it). Names that are not
    UTF-8 are printed with ``\\xNN``."""
    printable = redisio.printable
    return {
        "kind": kind,
        "key": printable(key),
        "aggregate_id": None if aggregate_id is None else printable(aggregate_id),
        "commit_id": None if commit_id is None else printable(commit_id),
        "detail": printable(detail),
    }


HKEYS_LIMIT = 5000
"""Partition hashes up to this many fields are read with one HKEYS, bigger ones with HSCAN."""


def _hscan_fields(client: redisio.RedisClient, key: str, count: int = 1000) -> Iterator[list[str]]:
    """The field names of hash ``key``, one HSCAN page at a time (values are dropped at once)."""
    cursor: Any = 0
    while True:
        (reply,) = redisio.pipelined(client, [("HSCAN", key, cursor, "COUNT", count)])
        if isinstance(reply, Exception):
            raise ServerError(f"HSCAN {key} failed: {reply}")
        cursor, flat = reply
        yield [redisio.key_str(f) for f in flat[0::2]]
        if int(cursor) == 0:
            return


def owns_partition(shard: Shard, part: int) -> bool:
    """Whether partition ``part``'s hash fields are ``shard``'s (``part mod N``)."""
    return shard.count == 1 or part % shard.count == shard.index


def owns_commit_id(shard: Shard, commit_id: str) -> bool:
    """Whether a field named ``commit_id`` of the legacy hash, or of the partition hash it
    belongs in, is ``shard``'s: the shard of the commit id's partition. A name that is not
    UTF-8 is hashed as its bytes (no error)."""
    if shard.count == 1:
        return True
    crc = zlib.crc32(commit_id.encode("utf-8", "surrogateescape"))
    return owns_partition(shard, crc % layout.PARTITION_COUNT)


def _hash_pages(
    client: redisio.RedisClient, app: str, index: CommitIndex, scan_count: int, shard: Shard
) -> Iterator[list[tuple[str, int | None, list[str]]]]:
    """(hash key, partition or None for legacy, field names) per page, of ``shard``'s fields:
    the legacy hash first (HSCAN pages, the shard's fields kept), then the shard's partition
    hashes (SCAN pages, HKEYS per hash; the other shards' hashes are not read)."""
    legacy = layout.legacy_event_hash_key(app)
    (kind,) = redisio.pipelined(client, [("TYPE", legacy)])
    if redisio.key_str(kind) == "hash":
        for fields in _hscan_fields(client, legacy, scan_count):
            yield [(legacy, None, [f for f in fields if owns_commit_id(shard, f)])]
    for _, keys in redisio.scan_pages(
        client, layout.event_hash_pattern(app), type_="hash", count=scan_count
    ):
        parts: list[tuple[str, int]] = []
        for key in keys:
            try:
                part = layout.event_hash_partition(app, key)
            except ValueError:  # another app's key ("App:Sub:123" under "App")
                continue
            if part is not None and owns_partition(shard, part):
                parts.append((key, part))
        fresh = set(index.new_keys([k for k, _ in parts]))
        parts = [(k, p) for k, p in parts if k in fresh]
        if not parts:
            continue
        lengths = redisio.pipelined(client, [("HLEN", k) for k, _ in parts])
        small = [
            (k, p)
            for (k, p), n in zip(parts, lengths, strict=True)
            if not isinstance(n, Exception) and int(n) <= HKEYS_LIMIT
        ]
        large = [
            (k, p)
            for (k, p), n in zip(parts, lengths, strict=True)
            if isinstance(n, Exception) or int(n) > HKEYS_LIMIT
        ]
        replies = redisio.pipelined(client, [("HKEYS", k) for k, _ in small])
        page: list[tuple[str, int | None, list[str]]] = []
        for (key, part), reply in zip(small, replies, strict=True):
            if isinstance(reply, Exception):
                raise ServerError(f"HKEYS {key} failed: {reply}")
            page.append((key, part, [redisio.key_str(f) for f in reply]))
        yield page
        for key, part in large:
            for fields in _hscan_fields(client, key, scan_count):
                yield [(key, part, fields)]


def _misplaced_detail(app: str, key: str, commit_id: str, aggregate_id: str | None) -> str:
    right = layout.event_hash_key(app, commit_id)
    whose = (
        f"commit list {layout.commit_list_key(app, aggregate_id)} names it, "
        "but the library looks for it only there"
        if aggregate_id is not None
        else "no commit list names it"
    )
    return f"commit {commit_id} is stored in {key}, but it maps to {right}; " + whose


def check_integrity(
    client: redisio.RedisClient,
    app: str,
    *,
    examples: int = 10,
    scan_count: int = 250,
    shard: Shard | None = None,
    on_progress: Callable[[IntegrityProgress], None] | None = None,
) -> IntegrityReport:
    """Scan the whole event store of ``app`` and report what is wrong with it: orphan hash
    fields, commit ids with no payload, payloads in another partition than their commit id's,
    undecodable payloads, and aggregates whose versions or types the library would reject
    (kinds: INTEGRITY_KINDS). Counts are exact; the first ``examples`` of each kind are listed.
    Memory does not grow with the store (see the module docstring). Read-only.

    With ``shard``, only that shard's findings and counts (how findings are split is in the
    module docstring): the reports of shards 0..N-1 add up to the unsharded report."""
    shard = shard or Shard()
    started = time.monotonic()
    tally = _Tally(examples)
    progress = IntegrityProgress("commit lists")
    aggregates_with_problems = 0
    hash_fields = legacy_fields = 0

    def report() -> None:
        if on_progress is not None:
            on_progress(progress)

    with CommitIndex() as index:
        # 1. Commit lists: the shard's aggregates read and checked page by page; the commit
        #    ids of the shard's partitions (of every aggregate) spilled to the index.
        for _, keys in redisio.scan_pages(
            client, layout.commit_list_pattern(app), type_="list", count=scan_count
        ):
            keys = index.new_keys(keys)
            if not keys:
                continue
            ids = [layout.aggregate_id_from_commit_list_key(app, k) for k in keys]
            owned = [a for a in ids if shard.owns(a)]
            for stream in read_streams(client, app, owned):
                validate_stream(stream)
                problems = stream_problems(stream)
                if problems:
                    aggregates_with_problems += 1
                for p in problems:
                    tally.add(
                        p.kind, problem_key(stream, p), p.detail, p.commit_id, stream.aggregate_id
                    )
                progress.commit_lists += 1
                progress.commits += len(stream.events)
                index.add_commits(
                    (e.commit_id, stream.aggregate_id)
                    for e in stream.events
                    if owns_commit_id(shard, e.commit_id)
                )
            others = [(k, a) for k, a in zip(keys, ids, strict=True) if not shard.owns(a)]
            if others:
                listed = redisio.commit_lists(client, [k for k, _ in others])
                index.add_commits(
                    (c, a)
                    for (_, a), commit_ids in zip(others, listed, strict=True)
                    for c in commit_ids
                    if owns_commit_id(shard, c)
                )
            progress.lists_read += len(keys)
            report()

        # 2. Event hashes: field names against the commit ids of step 1.
        progress.phase = "event hashes"
        report()
        for page in _hash_pages(client, app, index, scan_count, shard):
            fields_of_page = [f for _, _, fields in page for f in fields]
            named = index.committed(fields_of_page)
            index.db.execute("BEGIN")
            for key, part, fields in page:
                if part is None:
                    legacy_fields += len(fields)
                else:
                    hash_fields += len(fields)
                    progress.event_hashes += 1
                for commit_id in fields:
                    aggregate_id = named.get(commit_id)
                    if part is not None and layout.partition(commit_id) != part:
                        # The index knows only the shard's commit ids: another shard's one is
                        # described after a pass over the commit lists (_name_misplaced).
                        detail = (
                            _misplaced_detail(app, key, commit_id, aggregate_id)
                            if owns_commit_id(shard, commit_id)
                            else ""
                        )
                        index.add_finding("misplaced_payload", key, commit_id, detail)
                    elif aggregate_id is None:
                        index.add_finding("orphan", key, commit_id, "")
            index.db.execute("COMMIT")
            progress.hash_fields = hash_fields + legacy_fields
            report()

        # 3. Orphan candidates again: a live service may have committed them meanwhile.
        progress.phase = "recheck"
        report()
        for rows in index.findings("orphan"):
            _recheck_orphans(client, app, index, rows)
        if index.count_undescribed("misplaced_payload"):
            _name_misplaced(client, app, index, scan_count)

        for kind, count in index.finding_counts().items():
            tally.counts[kind] += count
            found = index.finding_examples(kind, examples)
            owners = index.committed([commit_id for _, commit_id, _ in found])
            tally.examples[kind] = [
                finding(kind, key, detail, commit_id, owners.get(commit_id))
                for key, commit_id, detail in found
            ]
    counts = {k: tally.counts[k] for k in INTEGRITY_KINDS if tally.counts.get(k)}
    counts.update({k: n for k, n in tally.counts.items() if k not in counts and n})
    return IntegrityReport(
        app=app,
        commit_lists=progress.commit_lists,
        commits=progress.commits,
        event_hashes=progress.event_hashes,
        hash_fields=hash_fields,
        legacy_fields=legacy_fields,
        counts=counts,
        aggregates_with_problems=aggregates_with_problems,
        examples={k: v for k, v in tally.examples.items() if v},
        elapsed_s=time.monotonic() - started,
        shard=shard,
    )


def _name_misplaced(
    client: redisio.RedisClient, app: str, index: CommitIndex, scan_count: int
) -> None:
    """Describe the misplaced fields whose commit ids are of another shard's partitions (not in
    the index): one more pass over the commit lists, LRANGE only, asks which of them a list
    names. Only a sharded run that found such a field makes it."""
    for _, keys in redisio.scan_pages(
        client, layout.commit_list_pattern(app), type_="list", count=scan_count
    ):
        if not keys:
            continue
        listed = redisio.commit_lists(client, keys)
        owner = {
            c: layout.aggregate_id_from_commit_list_key(app, k)
            for k, commit_ids in zip(keys, listed, strict=True)
            for c in commit_ids
        }
        for rowid, key, commit_id in index.undescribed("misplaced_payload", list(owner)):
            index.describe_finding(rowid, _misplaced_detail(app, key, commit_id, owner[commit_id]))
    while True:
        rows = index.undescribed_batch("misplaced_payload")
        if not rows:
            return
        for rowid, key, commit_id in rows:
            index.describe_finding(rowid, _misplaced_detail(app, key, commit_id, None))


def _recheck_orphans(
    client: redisio.RedisClient, app: str, index: CommitIndex, rows: list[tuple[int, str, str]]
) -> None:
    """Drop orphan candidates that are committed by now (or gone), describe the others from
    their payload (aggregate, version, TimeStamp)."""
    values = redisio.pipelined(client, [("HGET", key, commit_id) for _, key, commit_id in rows])
    parsed: list[tuple[int, str, codec.ParsedEvent]] = []
    lookups: list[tuple[Any, ...]] = []
    for (rowid, _key, commit_id), value in zip(rows, values, strict=True):
        if value is None:  # deleted since (a failed save cleans up after itself)
            index.drop_finding(rowid)
            continue
        if isinstance(value, Exception):
            raise ServerError(f"HGET of {commit_id} failed: {value}")
        _, event = codec.decode_event(value)
        parsed.append((rowid, commit_id, event))
        if event.aggregate_id is not None:
            lookups.append(("LPOS", layout.commit_list_key(app, event.aggregate_id), commit_id))
    positions = iter(redisio.pipelined(client, lookups))
    for rowid, commit_id, event in parsed:
        if event.aggregate_id is None:
            index.describe_finding(
                rowid,
                f"payload of commit {commit_id} that no commit list names (its payload has no "
                "aggregate Id)",
            )
            continue
        list_key = layout.commit_list_key(app, event.aggregate_id)
        position = next(positions)
        if isinstance(position, Exception):
            position = _list_position(client, list_key, commit_id)
        if position is not None:
            index.drop_finding(rowid)
            continue
        what = " ".join(
            x
            for x in (
                event.aggregate_type or "aggregate",
                event.aggregate_id,
                f"version {event.version}" if event.version is not None else None,
                f"({event.event_type}, TimeStamp {event.timestamp_text})"
                if event.event_type
                else None,
            )
            if x
        )
        index.describe_finding(
            rowid,
            f"payload of {what} that commit list {list_key} does not name (never committed: a "
            "save that died between HSET and RPUSH)",
        )


# --- inspect stats -------------------------------------------------------------------------


class _Reservoir:
    """A uniform random sample of at most ``size`` items of a stream (fixed memory)."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.rng = rng
        self.items: list[str] = []
        self.seen = 0

    def offer(self, items: Iterable[str]) -> None:
        for item in items:
            self.seen += 1
            if len(self.items) < self.size:
                self.items.append(item)
            else:
                j = self.rng.randrange(self.seen)
                if j < self.size:
                    self.items[j] = item


@dataclass
class FamilyMemory:
    """``MEMORY USAGE`` of one key family: sampled and extrapolated to all its keys."""

    family: str
    keys: int
    sampled: int
    sampled_bytes: int
    estimated_bytes: int
    share_of_used_memory: float | None


@dataclass
class TypeStats:
    """Committed events of one event type (estimated from the sample unless ``--full``)."""

    event_type: str
    events: int
    stored_bytes: int
    compressed: int

    def as_dict(self, total_events: int, total_bytes: int) -> dict[str, Any]:
        return {
            "event_type": self.event_type,
            "events": self.events,
            "stored_bytes": self.stored_bytes,
            "compressed": self.compressed,
            "share_of_events": round(self.events / total_events, 4) if total_events else 0.0,
            "share_of_bytes": round(self.stored_bytes / total_bytes, 4) if total_bytes else 0.0,
        }


@dataclass
class StatsReport:
    app: str
    env: str | None
    full: bool
    sample: int
    commit_lists: int
    commit_ids: int
    partitioned_hashes: int
    partitioned_fields: int
    legacy_fields: int
    snapshot_hashes: int
    snapshots: int
    queue_lists: dict[str, int]
    queue_messages: dict[str, int]
    events_examined: int
    """Committed events whose payloads were read (the sampled lists', or all with full)."""
    legacy_events_examined: int
    compressed_examined: int
    stored_bytes_examined: int
    compressed_stored_bytes: int
    compressed_plain_bytes: int
    payload_bytes: int
    payload_bytes_exact: bool
    used_memory: int | None
    memory: list[FamilyMemory]
    event_types: list[TypeStats]
    """By stored bytes, largest first; scaled from the sample to all commit ids unless full."""
    elapsed_s: float

    @property
    def event_store_bytes(self) -> int:
        """Estimated memory of the event storage (event hashes + legacy hash + commit lists):
        roughly what moving events out of Redis frees."""
        return sum(
            m.estimated_bytes
            for m in self.memory
            if m.family in ("event_hashes", "legacy_hash", "commit_lists")
        )

    def as_dict(self) -> dict[str, Any]:
        total_events = sum(t.events for t in self.event_types)
        total_bytes = sum(t.stored_bytes for t in self.event_types)
        examined = self.events_examined
        return {
            "app": self.app,
            "env": self.env,
            "full": self.full,
            "sample": self.sample,
            "aggregates": self.commit_lists,
            "events": {
                "commit_ids": self.commit_ids,
                "hash_fields": self.partitioned_fields + self.legacy_fields,
                "partitioned_fields": self.partitioned_fields,
                "legacy_fields": self.legacy_fields,
                "partition_hashes": self.partitioned_hashes,
                "legacy_share_examined": round(self.legacy_events_examined / examined, 4)
                if examined
                else None,
            },
            "snapshots": {"hashes": self.snapshot_hashes, "snapshots": self.snapshots},
            "queues": {"lists": self.queue_lists, "messages": self.queue_messages},
            "payloads": {
                "examined": examined,
                "compressed_share": round(self.compressed_examined / examined, 4)
                if examined
                else None,
                "compression_ratio": round(
                    self.compressed_plain_bytes / self.compressed_stored_bytes, 3
                )
                if self.compressed_stored_bytes
                else None,
                "average_stored_bytes": round(self.stored_bytes_examined / examined, 1)
                if examined
                else None,
                "payload_bytes": self.payload_bytes,
                "payload_bytes_exact": self.payload_bytes_exact,
            },
            "memory": {
                "used_memory": self.used_memory,
                "families": [
                    {
                        "family": m.family,
                        "keys": m.keys,
                        "sampled": m.sampled,
                        "sampled_bytes": m.sampled_bytes,
                        "estimated_bytes": m.estimated_bytes,
                        "share_of_used_memory": m.share_of_used_memory,
                    }
                    for m in self.memory
                ],
                "event_store_bytes": self.event_store_bytes,
                "event_store_share": round(self.event_store_bytes / self.used_memory, 4)
                if self.used_memory
                else None,
            },
            "event_types": [t.as_dict(total_events, total_bytes) for t in self.event_types],
            "event_types_exact": self.full or self.events_examined == self.commit_ids,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def _lengths(client: redisio.RedisClient, command: str, keys: Sequence[str]) -> int:
    total = 0
    for key, reply in zip(
        keys, redisio.pipelined(client, [(command, k) for k in keys]), strict=True
    ):
        if isinstance(reply, Exception):
            raise ServerError(f"{command} {key} failed: {reply}")
        total += int(reply)
    return total


def _memory_usage(client: redisio.RedisClient, keys: Sequence[str]) -> int:
    total = 0
    for reply in redisio.pipelined(client, [("MEMORY", "USAGE", k) for k in keys]):
        if isinstance(reply, Exception):
            raise ServerError(
                f"MEMORY USAGE failed: {reply}",
                hint="the server or its ACL may not allow MEMORY USAGE",
            )
        total += int(reply or 0)
    return total


class _EventTally:
    def __init__(self) -> None:
        self.by_type: dict[str, TypeStats] = {}
        self.events = self.legacy = self.compressed = 0
        self.stored = self.compressed_stored = self.compressed_plain = 0

    def add(self, commit_ids: Sequence[str], values: Sequence[bytes | None]) -> None:
        for commit_id, value in zip(commit_ids, values, strict=True):
            if value is None:
                continue
            decoded, event = codec.decode_event(value)
            event_type = event.event_type or "(unreadable)"
            stats = self.by_type.get(event_type)
            if stats is None:
                stats = self.by_type[event_type] = TypeStats(event_type, 0, 0, 0)
            size = len(value)
            stats.events += 1
            stats.stored_bytes += size
            self.events += 1
            self.stored += size
            if commit_id.isdigit():
                self.legacy += 1
            if decoded.compressed is not None:
                stats.compressed += 1
                self.compressed += 1
                self.compressed_stored += size
                self.compressed_plain += len(decoded.text.encode("utf-8"))


def inspect_stats(
    client: redisio.RedisClient,
    app: str,
    *,
    env: str | None = None,
    sample: int = 1000,
    full: bool = False,
    seed: int | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> StatsReport:
    """Counts, payload sizes, memory per key family and events per type of ``app``'s store.

    Keys are counted with SCAN and pipelined LLEN/HLEN (exact). ``MEMORY USAGE`` is asked of a
    uniform random sample of ``sample`` keys per family (event hashes, commit lists, snapshots,
    queues; the legacy hash is one key, asked once) and scaled to the family's key count.
    Payloads are read for the events of ``sample`` random commit lists (scaled to all commit ids)
    or, with ``full``, for every commit list (exact). Queue lists of ``env``, or of every
    environment when None. Read-only; memory bounded by ``sample``.
    """
    started = time.monotonic()
    rng = random.Random(seed)
    tally = _EventTally()

    def progress(phase: str, keys: int) -> None:
        if on_progress is not None:
            on_progress(phase, keys)

    # Commit lists (and, with full, every payload).
    lists = _Reservoir(sample, rng)
    commit_ids = 0
    for _, keys in redisio.scan_pages(client, layout.commit_list_pattern(app), type_="list"):
        if not keys:
            continue
        lists.offer(keys)
        if full:
            listed = redisio.commit_lists(client, keys)
            flat = [c for ids in listed for c in ids]
            commit_ids += len(flat)
            values, _ = redisio.fetch_values(client, app, flat)
            tally.add(flat, values)
        else:
            commit_ids += _lengths(client, "LLEN", keys)
        progress("commit lists", lists.seen)
    if not full and lists.items:
        listed = redisio.commit_lists(client, lists.items)
        flat = [c for ids in listed for c in ids]
        for start in range(0, len(flat), 10_000):
            chunk = flat[start : start + 10_000]
            values, _ = redisio.fetch_values(client, app, chunk)
            tally.add(chunk, values)

    # Event hashes.
    partitions = _Reservoir(sample, rng)
    partitioned_fields = 0
    for _, keys in redisio.scan_pages(client, layout.event_hash_pattern(app), type_="hash"):
        mine = [k for k in keys if k[len(layout.legacy_event_hash_key(app)) + 1 :].isdigit()]
        if not mine:
            continue
        partitions.offer(mine)
        partitioned_fields += _lengths(client, "HLEN", mine)
        progress("event hashes", partitions.seen)
    legacy_key = layout.legacy_event_hash_key(app)
    (legacy_type,) = redisio.pipelined(client, [("TYPE", legacy_key)])
    has_legacy = redisio.key_str(legacy_type) == "hash"
    legacy_fields = _lengths(client, "HLEN", [legacy_key]) if has_legacy else 0

    # Snapshots.
    snapshots = _Reservoir(sample, rng)
    snapshot_count = 0
    prefix = f"Snapshots:{app}:"
    for _, keys in redisio.scan_pages(client, layout.snapshot_hash_pattern(app), type_="hash"):
        mine = [k for k in keys if k[len(prefix) :].isdigit()]
        if mine:
            snapshots.offer(mine)
            snapshot_count += _lengths(client, "HLEN", mine)
        progress("snapshots", snapshots.seen)

    # Queues.
    queues = _Reservoir(sample, rng)
    queue_lists = dict.fromkeys(layout.QUEUE_LISTS, 0)
    queue_messages = dict.fromkeys(layout.QUEUE_LISTS, 0)
    pattern = layout.queue_pattern(env) if env else "*:{*:*}:*"
    for _, keys in redisio.scan_pages(client, pattern, type_="list"):
        parsed = [(k, layout.parse_queue_key(k)) for k in keys]
        found = [(k, p) for k, p in parsed if p is not None and (env is None or p[1] == env)]
        if not found:
            continue
        queues.offer([k for k, _ in found])
        replies = redisio.pipelined(client, [("LLEN", k) for k, _ in found])
        for (key, parts), reply in zip(found, replies, strict=True):
            if isinstance(reply, Exception):
                raise ServerError(f"LLEN {key} failed: {reply}")
            assert parts is not None
            queue_lists[parts[3]] += 1
            queue_messages[parts[3]] += int(reply)
        progress("queues", queues.seen)

    # Memory.
    used = redisio.used_memory_or_none(client)
    memory: list[FamilyMemory] = []
    families: list[tuple[str, _Reservoir | None, int]] = [
        ("event_hashes", partitions, partitions.seen),
        ("legacy_hash", None, 1 if has_legacy else 0),
        ("commit_lists", lists, lists.seen),
        ("snapshots", snapshots, snapshots.seen),
        ("queues", queues, queues.seen),
    ]
    for name, reservoir, count in families:
        sampled_keys = reservoir.items if reservoir is not None else ([legacy_key] if count else [])
        sampled_bytes = _memory_usage(client, sampled_keys) if sampled_keys else 0
        estimated = round(sampled_bytes / len(sampled_keys) * count) if sampled_keys else 0
        memory.append(
            FamilyMemory(
                name,
                count,
                len(sampled_keys),
                sampled_bytes,
                estimated,
                round(estimated / used, 4) if used else None,
            )
        )

    # Events per type, scaled from the examined events to every commit id.
    scale = commit_ids / tally.events if tally.events and not full else 1.0
    types = sorted(
        (
            TypeStats(
                t.event_type,
                round(t.events * scale),
                round(t.stored_bytes * scale),
                round(t.compressed * scale),
            )
            for t in tally.by_type.values()
        ),
        key=lambda t: (-t.stored_bytes, t.event_type),
    )
    if full:
        payload_bytes, exact = tally.stored, True
    else:
        fields = partitioned_fields + legacy_fields
        payload_bytes = round(tally.stored / tally.events * fields) if tally.events else 0
        exact = False
    return StatsReport(
        app=app,
        env=env,
        full=full,
        sample=sample,
        commit_lists=lists.seen,
        commit_ids=commit_ids,
        partitioned_hashes=partitions.seen,
        partitioned_fields=partitioned_fields,
        legacy_fields=legacy_fields,
        snapshot_hashes=snapshots.seen,
        snapshots=snapshot_count,
        queue_lists=queue_lists,
        queue_messages=queue_messages,
        events_examined=tally.events,
        legacy_events_examined=tally.legacy,
        compressed_examined=tally.compressed,
        stored_bytes_examined=tally.stored,
        compressed_stored_bytes=tally.compressed_stored,
        compressed_plain_bytes=tally.compressed_plain,
        payload_bytes=payload_bytes,
        payload_bytes_exact=exact,
        used_memory=used,
        memory=memory,
        event_types=types,
        elapsed_s=time.monotonic() - started,
    )


__all__ = [
    "FATAL_EVENT_KINDS",
    "INTEGRITY_KINDS",
    "AggregateReport",
    "EventReport",
    "IntegrityReport",
    "StatsReport",
    "check_integrity",
    "inspect_aggregate",
    "inspect_event",
    "inspect_stats",
]
