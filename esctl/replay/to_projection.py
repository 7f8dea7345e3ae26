"""``esctl replay``: push stored events through read models again: republish them to the
subscribers' reliable queues, feed them to an in-process Python projection, or print them.

**Selection** is the filter language of ``events query`` (:class:`esctl.query.QueryFilters`):
event types, aggregate type, aggregate ids, a time window, ``--where`` clauses and a limit. A
replay with no selector at all must say ``--all`` (replaying a whole store is never an
accident). ``--from redis`` reads the commit lists (payloads decoded as the codec does, events
that cannot be read are skipped and reported); ``--from pg`` reads the migrated tables. jsonb
keeps no key order, and the library's subscribers read ``$type`` (and ``$id``, ``$values``)
only first in an object: payloads from PostgreSQL get them first again for ``queue`` and
``stdout`` (:func:`esctl.codec.newtonsoft_metadata_first`); a projection gets ``event_data``
as jsonb prints it.

**Order.** Within an aggregate, events always come by version. Across aggregates:

- ``aggregate`` (the default): one aggregate after another. From PostgreSQL by
  ``aggregate_key`` (the order rows were migrated in), with every filter in SQL and the rows
  streamed through a server-side cursor. From Redis by aggregate id (code-point order): the
  commit lists are found with SCAN first and their ids sorted, so the order is the same on every
  run (SCAN's is not) and an aggregate SCAN returns twice is replayed once. Memory: the selected
  aggregate ids (about 100 bytes each: ~100 MB for a million aggregates), one page of commit
  lists with their payloads, and one aggregate's events.
- ``time``: by the event's time, a stable tie-break after it. The time of an event is its
  ``TimeStamp``, or the latest ``TimeStamp`` of the aggregate's earlier versions when that is
  later (a clock that went backwards must not put version 3 before version 2): in a store whose
  time stamps grow with the versions, plain ``TimeStamp`` order. From PostgreSQL the ordering is
  SQL (a window function and a sort, which PostgreSQL spills to disk for large selections).
  From Redis it is an external merge sort: the whole selection is read first, sorted in runs of
  about ``sort_run_bytes`` (64 MB) of payloads that are written, zstd-compressed, to anonymous
  temporary files (in ``$TMPDIR``; about the selection's compressed size in all), then the runs
  are merged. Memory: one run plus one event per run; the first event is delivered only after
  the whole selection was read.

**Positions** (what ``--checkpoint`` stores; resuming continues strictly after it):

======  ==========  =========================================================================
source  order       position of an event (a total order: every event has its own)
======  ==========  =========================================================================
pg      aggregate   ``(aggregate_key, version)``: keyset on the event table's unique index
pg      time        ``(effective time, aggregate_key, version)``
redis   aggregate   ``(aggregate_id, version, commit_id)``
redis   time        ``(effective time in µs since 1970, aggregate_id, version, commit_id)``
======  ==========  =========================================================================

A checkpoint is a place in one order over one selection: events that later appear *behind* it
(a new version of an aggregate already passed) are not picked up by a resume; feeding live
events is the queues' job. A checkpoint remembers its source, order, selection and projection,
and a run with other ones is refused (``--reset`` or another name). Relative times (``--since
7d``) are taken relative to when the checkpoint was created, so a resume selects the same events.

**Targets** (see :func:`replay`): ``queue`` publishes exactly as the library's publisher does
(:class:`Publisher`); ``projection`` calls a Python projection (protocol in
:mod:`esctl.projections`) in batches, each batch one PostgreSQL transaction with the
checkpoint; ``stdout`` writes JSON lines (the ``events query`` shape). Every target has a dry
run that counts what would be replayed, per type and per subscriber, and writes nothing.

**Shards** (``--shard I/N``, :class:`esctl.shard.Shard`): a replay of only the aggregates
whose id hashes to ``I`` (``CRC-32(UTF-8 id) mod N``, as in ``migrate --shard``), so that N
processes can feed one projection at once. Each shard has its own checkpoint row (the
checkpoint table is keyed by name and shard) and its own lock; all shards of one checkpoint
name must use the same N. From Redis the shard's commit lists are picked by id before any is
read. From PostgreSQL the shard's ``aggregate_key`` values are listed first (one pass over the
application's ``aggregate`` rows, the ids hashed in Python: PostgreSQL has no CRC-32) and the
event query takes only those (``aggregate_key = ANY(...)``), both in one REPEATABLE READ
snapshot; memory: about 36 bytes per key of the shard. With ``--to stdout`` a shard prints its
share; ``--to queue`` refuses ``--shard`` (a replay locks each subscriber queue it publishes
to, so shards of one queue replay could not run at once).

This module never prints and never exits; the CLI renders what it returns.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import itertools
import pickle
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import orjson
import psycopg
import redis
import redis.cluster
import redis.exceptions
import zstandard
from psycopg import sql

from esctl import codec, layout, pg, queues, redisio
from esctl.config import redact
from esctl.defaults import REPLAY_BATCH_SIZE as DEFAULT_BATCH_SIZE
from esctl.defaults import REPLAY_CONFIRM_OVER as DEFAULT_CONFIRM_OVER
from esctl.errors import EsctlError, LockHeld, Refused, ServerError, UsageError
from esctl.locks import AdvisoryLock, RedisLock
from esctl.projections import Event, ProjectionAdapter, ProjectionContext, load_projection
from esctl.query import QueryFilters, QueryResult, QueryStats, RedisQuery, pg_conditions
from esctl.shard import Shard

SOURCES = ("redis", "pg")
TARGETS = ("queue", "stdout", "projection")
ORDERS = ("aggregate", "time")

PUBLISH_BATCH = 500
"""Events whose transactions go to Redis in one round trip."""
SORT_RUN_BYTES = 64 << 20
"""Payload bytes per sorted run of a Redis ``--order time`` replay."""
MAX_LISTED_PROBLEMS = 100
"""Problems listed one by one in a summary (the rest are counted)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


# --- what to replay ------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The selectors as given on the command line (text: relative times are resolved against
    the moment a checkpoint was created, see :meth:`filters`)."""

    types: tuple[str, ...] = ()
    aggregate_type: str | None = None
    aggregates: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    where: tuple[str, ...] = ()
    limit: int | None = None
    all_events: bool = False

    @property
    def has_selector(self) -> bool:
        return bool(
            self.types
            or self.aggregate_type is not None
            or self.aggregates
            or self.since
            or self.until
            or self.where
        )

    def check(self) -> None:
        if not self.has_selector and not self.all_events:
            raise UsageError(
                "say what to replay: --type, --aggregate-type, --aggregate, --since, --until "
                "or --where, or --all for every event",
                hint="replaying a whole store must be asked for with --all; --dry-run first "
                "shows how many events that is",
            )
        if self.limit is not None and self.limit < 0:
            raise UsageError("--limit must be 0 or more")
        self.filters(datetime.now(UTC))  # malformed selectors are usage errors now, not later

    def filters(self, now: datetime) -> QueryFilters:
        """The query filters, relative times counted back from ``now``."""
        return QueryFilters.build(
            types=self.types,
            aggregate_type=self.aggregate_type,
            aggregates=self.aggregates,
            since=self.since,
            until=self.until,
            where=self.where,
            limit=None,
            now=now,
        )

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint remembers of the selection (compared on resume)."""
        return {
            "types": sorted(set(self.types)),
            "aggregate_type": self.aggregate_type,
            "aggregates": sorted(set(self.aggregates)),
            "since": self.since,
            "until": self.until,
            "where": list(self.where),
            "limit": self.limit,
        }


@dataclass(frozen=True)
class ReplayOptions:
    source: str
    """``redis`` or ``pg``."""
    target: str
    """``queue``, ``stdout`` or ``projection``."""
    app: str
    selection: Selection
    order: str = "aggregate"
    env: str | None = None
    pg_dsn: str = "postgresql://localhost/postgres"
    pg_schema: str = "public"
    subscribers: tuple[str, ...] = ()
    """--to queue: only these subscribers."""
    force: bool = False
    """--to queue: publish to named subscribers even where they are not members."""
    max_queue_length: int | None = None
    rate: float | None = None
    """At most this many events per second (every target)."""
    confirm_over: int = DEFAULT_CONFIRM_OVER
    projection: str | None = None
    checkpoint: str | None = None
    reset: bool = False
    skip_errors: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    dry_run: bool = False
    sort_dir: str | None = None
    sort_run_bytes: int = SORT_RUN_BYTES
    now: datetime | None = None
    """The moment relative selectors count back from (default: now, or the checkpoint's)."""
    shard: Shard = field(default_factory=Shard)
    """Only the aggregates of this shard (see the module docstring)."""

    def check(self) -> None:
        """Raise UsageError for options that do not go together."""
        if self.source not in SOURCES:
            raise UsageError(f"--from must be one of {', '.join(SOURCES)}, not {self.source!r}")
        if self.target not in TARGETS:
            raise UsageError(f"--to must be one of {', '.join(TARGETS)}, not {self.target!r}")
        if self.order not in ORDERS:
            raise UsageError(f"--order must be one of {', '.join(ORDERS)}, not {self.order!r}")
        self.selection.check()
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise UsageError("--rate must be more than 0")
        queue_only = {
            "--subscriber": bool(self.subscribers),
            "--force": self.force,
            "--max-queue-length": self.max_queue_length is not None,
        }
        projection_only = {
            "--projection": self.projection is not None,
            "--checkpoint": self.checkpoint is not None,
            "--reset": self.reset,
            "--skip-errors": self.skip_errors,
        }
        for flags, target in ((queue_only, "queue"), (projection_only, "projection")):
            used = [flag for flag, given in flags.items() if given]
            if used and self.target != target:
                raise UsageError(
                    f"{', '.join(used)}: only with --to {target} (this replay is --to "
                    f"{self.target})"
                )
        if self.target == "queue" and not self.env:
            raise UsageError(
                "--to queue needs --env: queue keys are Subscribers:{ENV:TYPE} and "
                "SUB:{ENV:TYPE}:PublishedEvents",
                hint="pass --env or set ESCTL_ENV",
            )
        if self.force and not self.subscribers:
            raise UsageError("--force needs --subscriber (it publishes to named subscribers)")
        if self.max_queue_length is not None and self.max_queue_length < 1:
            raise UsageError("--max-queue-length must be at least 1")
        if self.target == "projection" and not self.projection:
            raise UsageError(
                "--to projection needs --projection MODULE:CALLABLE or path/to/file.py:CALLABLE"
            )
        if self.reset and not self.checkpoint:
            raise UsageError("--reset starts a checkpoint over: it needs --checkpoint NAME")
        if self.shard.count > 1 and self.target == "queue":
            raise UsageError(
                f"--shard {self.shard}: not with --to queue; a queue replay locks every "
                "subscriber queue it publishes to, so shards of it could not run side by side",
                hint="replay to the queues in one run (--rate and --max-queue-length pace it); "
                "--shard works with --to projection and --to stdout",
            )


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishPlan:
    """What a ``--to queue`` replay is about to publish (the confirmation question)."""

    env: str
    events: int
    """Events that will be published (to at least one subscriber)."""
    messages: int
    """LPUSHes: events times their subscribers."""
    published: dict[str, dict[str, int]]
    """subscriber -> event type -> messages."""
    unpublished: dict[str, int]
    """event type -> selected events no chosen subscriber takes (not published)."""


Confirm = Callable[[PublishPlan], bool]


@dataclass
class ReplayProgress:
    events: int = 0
    """Events replayed (published, printed, or committed by the projection)."""
    messages: int = 0
    total: int | None = None
    """Events the run will replay, when a planning pass counted them."""


@dataclass
class ReplaySummary:
    dry_run: bool
    source: str
    target: str
    order: str
    events: int = 0
    """Events replayed (for a dry run: that would be). Projection: in committed batches."""
    by_type: dict[str, int] = field(default_factory=dict)
    published: dict[str, dict[str, int]] = field(default_factory=dict)
    """--to queue: subscriber -> event type -> messages LPUSHed (dry run: that would be)."""
    messages: int = 0
    notifications: int = 0
    unpublished: dict[str, int] = field(default_factory=dict)
    """--to queue: event type -> events no chosen subscriber takes (not published)."""
    checkpoint: dict[str, Any] | None = None
    dead_lettered: int = 0
    waited_s: float = 0.0
    """Time spent waiting for --max-queue-length."""
    stopped: dict[str, Any] | None = None
    """Set when the replay stopped on an error before the end: what failed, where."""
    problems: list[dict[str, str]] = field(default_factory=list)
    problems_not_listed: int = 0
    elapsed_s: float = 0.0
    events_per_s: float = 0.0
    shard: Shard = field(default_factory=Shard)

    @property
    def found_problems(self) -> bool:
        return bool(self.problems) or self.problems_not_listed > 0

    def add_problem(self, kind: str, key: str, detail: str) -> None:
        if len(self.problems) < MAX_LISTED_PROBLEMS:
            self.problems.append({"kind": kind, "key": key, "detail": detail})
        else:
            self.problems_not_listed += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "source": self.source,
            "target": self.target,
            "order": self.order,
            "shard": str(self.shard),
            "events": self.events,
            "by_type": dict(sorted(self.by_type.items())),
            "published": {s: dict(sorted(t.items())) for s, t in sorted(self.published.items())},
            "messages": self.messages,
            "notifications": self.notifications,
            "unpublished": dict(sorted(self.unpublished.items())),
            "checkpoint": self.checkpoint,
            "dead_lettered": self.dead_lettered,
            "waited_s": round(self.waited_s, 3),
            "stopped": self.stopped,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s, 1),
            "problems": self.problems,
            "problems_not_listed": self.problems_not_listed,
        }


# --- positions -----------------------------------------------------------------------------


def encode_position(source: str, order: str, event: Event) -> dict[str, Any]:
    """The JSON a checkpoint stores for ``event``'s position (see the module docstring)."""
    p = event.position
    if source == "pg" and order == "aggregate":
        return {"aggregate_key": p[0], "version": p[1], "aggregate_id": event.aggregate_id}
    if source == "pg":
        return {
            "time": p[0].isoformat(),
            "aggregate_key": p[1],
            "version": p[2],
            "aggregate_id": event.aggregate_id,
        }
    if order == "aggregate":
        return {"aggregate_id": p[0], "version": p[1], "commit_id": p[2]}
    return {
        "time": (_EPOCH + p[0] * _MICROSECOND).isoformat(),
        "time_us": p[0],
        "aggregate_id": p[1],
        "version": p[2],
        "commit_id": p[3],
    }


def decode_position(source: str, order: str, stored: dict[str, Any]) -> tuple[Any, ...]:
    if source == "pg" and order == "aggregate":
        return (int(stored["aggregate_key"]), int(stored["version"]))
    if source == "pg":
        return (
            datetime.fromisoformat(stored["time"]),
            int(stored["aggregate_key"]),
            int(stored["version"]),
        )
    if order == "aggregate":
        return (str(stored["aggregate_id"]), int(stored["version"]), str(stored["commit_id"]))
    return (
        int(stored["time_us"]),
        str(stored["aggregate_id"]),
        int(stored["version"]),
        str(stored["commit_id"]),
    )


def _epoch_us(timestamp: str) -> int:
    return (datetime.fromisoformat(timestamp) - _EPOCH) // _MICROSECOND


# --- reading: Redis ------------------------------------------------------------------------


class RedisSource:
    """The selected events of ``app`` in Redis, in ``order`` (see the module docstring),
    strictly after ``after`` when given, at most ``limit``. Reads through
    :class:`esctl.query.RedisQuery` (one page of commit lists in memory, read a page ahead)."""

    def __init__(
        self,
        client: redisio.RedisClient,
        app: str,
        filters: QueryFilters,
        *,
        order: str = "aggregate",
        after: tuple[Any, ...] | None = None,
        limit: int | None = None,
        sort_dir: str | None = None,
        sort_run_bytes: int = SORT_RUN_BYTES,
        shard: Shard = Shard(),
        unpack_ahead: bool = False,
    ) -> None:
        self.client = client
        self.app = app
        self.unpack_ahead = unpack_ahead
        """Gunzip in the read-ahead process (:class:`esctl.query.RedisQuery`): for a consumer
        with much to do per event (publishing), measured 1.2-1.3x for ``--to queue``; a light one
        (a projection that counts) is faster with gunzip on its side."""
        self.filters = filters
        self.order = order
        self.after = after
        self.limit = limit
        self.sort_dir = sort_dir
        self.sort_run_bytes = sort_run_bytes
        self.shard = shard
        self.stats = QueryStats()
        self.duplicate_versions: list[str] = []
        self.runs = 0
        """Sorted runs spilled to disk (``--order time``)."""

    def problems(self) -> list[tuple[str, str, str]]:
        found = []
        if self.stats.unreadable:
            found.append(
                (
                    "unreadable",
                    layout.commit_list_pattern(self.app),
                    f"{self.stats.unreadable} event(s) could not be read (no payload, "
                    "undecodable, or no envelope fields) and were not replayed; "
                    "'esctl inspect integrity' lists them",
                )
            )
        for aggregate_id in self.duplicate_versions:
            found.append(
                (
                    "duplicate_version",
                    layout.commit_list_key(self.app, aggregate_id),
                    "versions repeat in this commit list (two aggregate types sharing an id, or "
                    "a duplicate save): replayed in (version, commit id) order",
                )
            )
        return found

    def aggregate_ids(self) -> list[str]:
        """The aggregates to read, sorted: the --aggregate ids, or every commit list; only the
        shard's."""
        owns = self.shard.owns
        if self.filters.aggregates:
            return sorted({a for a in self.filters.aggregates if owns(a)})
        ids: set[str] = set()
        for _, keys in redisio.scan_pages(
            self.client, layout.commit_list_pattern(self.app), type_="list"
        ):
            for key in keys:
                aggregate_id = layout.aggregate_id_from_commit_list_key(self.app, key)
                if owns(aggregate_id):
                    ids.add(aggregate_id)
        return sorted(ids)

    def _groups(self, ids: Sequence[str]) -> Iterator[list[Event]]:
        """Each aggregate's selected events in version order (positions of aggregate order)."""
        query = RedisQuery(
            self.client,
            self.app,
            replace(self.filters, aggregates=tuple(ids), limit=None),
            unpack_ahead=self.unpack_ahead,
        )
        self.stats = query.stats
        group: list[QueryResult] = []
        for result in query:
            if group and result.aggregate_id != group[0].aggregate_id:
                yield self._ordered(group)
                group = []
            group.append(result)
        if group:
            yield self._ordered(group)

    def _ordered(self, group: list[QueryResult]) -> list[Event]:
        aggregate_id = group[0].aggregate_id
        events = [
            Event(
                r.aggregate_id,
                r.aggregate_type,
                r.version,
                r.event_type,
                r.timestamp,
                r.commit_id,
                (aggregate_id, r.version, r.commit_id or ""),
                None,
                r.payload,
                r._data,
            )
            for r in group
        ]
        events.sort(key=_position_key)
        for before, after in itertools.pairwise(events):
            if before.version == after.version:
                self.duplicate_versions.append(aggregate_id)
                break
        return events

    def __iter__(self) -> Iterator[Event]:
        """Each iteration reads the store again (and counts its problems anew)."""
        self.duplicate_versions = []
        if self.limit == 0:
            return
        ids = self.aggregate_ids()
        if self.order == "time":
            yield from self._time_ordered(ids)
            return
        after = self.after
        if after is not None:
            ids = ids[bisect.bisect_left(ids, after[0]) :]
        count = 0
        limit = self.limit
        for group in self._groups(ids):
            for event in group:
                if after is not None and event.position <= after:
                    continue
                yield event
                count += 1
                if limit is not None and count >= limit:
                    return

    def _time_ordered(self, ids: Sequence[str]) -> Iterator[Event]:
        after = self.after
        run: list[tuple[Any, ...]] = []
        run_bytes = 0
        spills: list[IO[bytes]] = []
        try:
            for group in self._groups(ids):
                effective = None
                for event in group:
                    moment = _epoch_us(event.timestamp)
                    if effective is None or moment > effective:
                        effective = moment
                    key = (effective, event.aggregate_id, event.version, event.commit_id or "")
                    if after is not None and key <= after:
                        continue
                    payload = event.payload
                    run.append(
                        (*key, event.aggregate_type, event.event_type, event.timestamp, payload)
                    )
                    run_bytes += len(payload) + 200
                if run_bytes >= self.sort_run_bytes:
                    run.sort()
                    spills.append(self._spill(run))
                    run, run_bytes = [], 0
            run.sort()
            records: Iterator[tuple[Any, ...]]
            if spills:
                if run:
                    spills.append(self._spill(run))
                    run = []
                records = heapq.merge(*(self._unspill(f) for f in spills))
            else:
                records = iter(run)
            self.runs = len(spills)
            limit = self.limit
            for count, r in enumerate(records, start=1):
                yield Event(r[1], r[4], r[2], r[5], r[6], r[3] or None, r[:4], None, r[7])
                if limit is not None and count >= limit:
                    return
        finally:
            for spill in spills:
                spill.close()

    def _spill(self, run: list[tuple[Any, ...]]) -> IO[bytes]:
        """Write a sorted run to an anonymous temporary file (gone when closed or on a crash):
        frames of a length and a zstd-compressed pickle of up to 2,000 records."""
        spill = tempfile.TemporaryFile(prefix="esctl-replay-sort-", dir=self.sort_dir)  # noqa: SIM115
        compressor = zstandard.ZstdCompressor(level=1)
        for start in range(0, len(run), 2000):
            frame = compressor.compress(pickle.dumps(run[start : start + 2000], protocol=5))
            spill.write(len(frame).to_bytes(8, "little"))
            spill.write(frame)
        spill.flush()
        return spill

    @staticmethod
    def _unspill(spill: IO[bytes]) -> Iterator[tuple[Any, ...]]:
        spill.seek(0)
        decompressor = zstandard.ZstdDecompressor()
        while True:
            head = spill.read(8)
            if not head:
                return
            frame = spill.read(int.from_bytes(head, "little"))
            # Our own file, written above by this process: unpickling it is safe.
            yield from pickle.loads(decompressor.decompress(frame))

    def count_by_type(self) -> Counter[str]:
        """Events per type this source would yield (reads the selection once)."""
        counts: Counter[str] = Counter()
        source = self
        if self.order == "time" and self.after is None and self.limit is None:
            # The same events in either order: skip the sort.
            source = RedisSource(
                self.client, self.app, self.filters, order="aggregate", shard=self.shard
            )
        for event in source:
            counts[event.event_type] += 1
        self.stats = source.stats
        self.duplicate_versions = source.duplicate_versions
        return counts


def _position_key(event: Event) -> tuple[Any, ...]:
    return event.position


# --- reading: PostgreSQL -------------------------------------------------------------------


def pg_replay_sql(
    schema: str,
    app: str,
    filters: QueryFilters,
    *,
    order: str = "aggregate",
    after: tuple[Any, ...] | None = None,
    limit: int | None = None,
    aggregate_keys: Sequence[int] | None = None,
) -> tuple[sql.Composed, dict[str, Any]]:
    """The SELECT of a replay from PostgreSQL. Rows: aggregate id, version, event type,
    aggregate type, TimeStamp text, event_data's text as UTF-8 (bytea: the payload bytes
    without a decode and an encode in Python), aggregate_key (and, for ``time``, the effective
    time), in the order's position order, strictly after ``after``; only events of
    ``aggregate_keys`` when given (a shard's, :func:`shard_aggregate_keys`)."""
    conditions, params = pg_conditions(app, filters)
    if aggregate_keys is not None:
        conditions.append(sql.SQL("e.aggregate_key = ANY(%(shard_keys)s::bigint[])"))
        params["shard_keys"] = list(aggregate_keys)
    s = sql.Identifier(schema)
    columns = sql.SQL(
        "a.aggregate_id, e.version, e.event_type, a.aggregate_type,"
        " e.event_data ->> 'TimeStamp' AS time_stamp_text,"
        " convert_to(e.event_data::text, 'UTF8') AS event_json,"
        " e.aggregate_key"
    )
    source = sql.SQL(
        "{s}.event e JOIN {s}.aggregate a ON a.aggregate_key = e.aggregate_key"
    ).format(s=s)
    if order == "aggregate":
        if after is not None:
            conditions.append(
                sql.SQL("(e.aggregate_key, e.version) > (%(after_key)s, %(after_v)s)")
            )
            params.update(after_key=after[0], after_v=after[1])
        query = sql.SQL(
            "SELECT {columns} FROM {source} WHERE {conditions} ORDER BY e.aggregate_key, e.version"
        ).format(columns=columns, source=source, conditions=sql.SQL(" AND ").join(conditions))
    else:
        outer: sql.Composable = sql.SQL("")
        if after is not None:
            outer = sql.SQL(
                " WHERE (s.effective, s.aggregate_key, s.version)"
                " > (%(after_t)s::timestamptz, %(after_key)s, %(after_v)s)"
            )
            params.update(after_t=after[0], after_key=after[1], after_v=after[2])
        query = sql.SQL(
            "SELECT * FROM (SELECT {columns},"
            " max(e.time_stamp) OVER (PARTITION BY e.aggregate_key ORDER BY e.version) AS effective"
            " FROM {source} WHERE {conditions}) s{outer}"
            " ORDER BY s.effective, s.aggregate_key, s.version"
        ).format(
            columns=columns,
            source=source,
            conditions=sql.SQL(" AND ").join(conditions),
            outer=outer,
        )
    if limit is not None:
        query = sql.Composed([query, sql.SQL(" LIMIT {}").format(sql.Literal(limit))])
    return query, params


def shard_aggregate_keys(
    conn: psycopg.Connection, schema: str, app: str, filters: QueryFilters, shard: Shard
) -> list[int]:
    """The ``aggregate_key`` of every ``aggregate`` row of ``app`` (of the ``--aggregate`` ids,
    when given) whose id is ``shard``'s, by :meth:`Shard.owns` itself: PostgreSQL has no CRC-32,
    and hashing in Python picks exactly the aggregates ``migrate`` and a Redis replay pick. One
    pass over (key, id) pairs through a server-side cursor, in the caller's transaction."""
    conditions: list[sql.Composable] = [sql.SQL("application_name = %(app)s")]
    params: dict[str, Any] = {"app": app}
    if filters.aggregates:
        conditions.append(sql.SQL("aggregate_id = ANY(%(ids)s::text[])"))
        params["ids"] = list(filters.aggregates)
    query = sql.SQL("SELECT aggregate_key, aggregate_id FROM {}.aggregate WHERE {}").format(
        sql.Identifier(schema), sql.SQL(" AND ").join(conditions)
    )
    owns = shard.owns
    with conn.cursor(name="esctl_replay_shard") as cur:
        cur.itersize = 10_000
        cur.execute(query, params)
        return [key for key, aggregate_id in cur if owns(aggregate_id)]


class PgSource:
    """The selected migrated events of ``app`` in ``schema``, in ``order``, strictly after
    ``after``, at most ``limit``; every filter in SQL, rows streamed through a server-side
    cursor on a connection of its own. With a ``shard``, the shard's aggregate keys are listed
    first, in the same REPEATABLE READ snapshot as the events.

    ``metadata_first``: each payload's text gets Newtonsoft's metadata properties back in
    front of every object (:func:`esctl.codec.newtonsoft_metadata_first`), as the library's
    queue subscribers need them; otherwise it is ``event_data`` as jsonb prints it."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        app: str,
        filters: QueryFilters,
        *,
        order: str = "aggregate",
        after: tuple[Any, ...] | None = None,
        limit: int | None = None,
        shard: Shard = Shard(),
        metadata_first: bool = False,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.app = app
        self.filters = filters
        self.order = order
        self.after = after
        self.limit = limit
        self.shard = shard
        self.metadata_first = metadata_first

    def problems(self) -> list[tuple[str, str, str]]:
        return []

    def _query(self, conn: psycopg.Connection) -> tuple[sql.Composed, dict[str, Any]]:
        """The replay's SELECT; for a shard, the shard's keys are read first in ``conn``'s
        transaction (the caller makes it REPEATABLE READ, so both see one snapshot)."""
        keys = None
        if self.shard.count > 1:
            keys = shard_aggregate_keys(conn, self.schema, self.app, self.filters, self.shard)
        return pg_replay_sql(
            self.schema,
            self.app,
            self.filters,
            order=self.order,
            after=self.after,
            limit=self.limit,
            aggregate_keys=keys,
        )

    def _connect(self, purpose: str) -> psycopg.Connection:
        conn = pg.connect(self.dsn, application_name=f"esctl replay ({purpose})")
        if self.shard.count > 1:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        return conn

    def __iter__(self) -> Iterator[Event]:
        if self.limit == 0:
            return
        conn = self._connect("read")
        try:
            with pg.translate_errors(self.dsn):
                pg.ensure_event_store_schema(conn, self.schema, create=False)
                conn.commit()
                query, params = self._query(conn)
                # binary: the payload column (bytea) comes as the bytes themselves
                with conn.cursor(name="esctl_replay", binary=True) as cur:
                    cur.itersize = 2000
                    cur.execute(query, params)
                    reorder = codec.newtonsoft_metadata_first if self.metadata_first else _unchanged
                    if self.order == "aggregate":
                        for aggregate_id, version, event_type, aggregate_type, ts, data, key in cur:
                            yield Event(
                                aggregate_id,
                                aggregate_type,
                                version,
                                event_type,
                                ts,
                                None,
                                (key, version),
                                None,
                                reorder(data),
                            )
                    else:
                        for row in cur:
                            yield Event(
                                row[0], row[3], row[1], row[2], row[4], None,
                                (row[7], row[6], row[1]), None, reorder(row[5]),
                            )  # fmt: skip
                conn.rollback()
        finally:
            conn.close()

    def count_by_type(self) -> Counter[str]:
        """Events per type (one GROUP BY in PostgreSQL)."""
        if self.limit == 0:
            return Counter()
        conn = self._connect("count")
        try:
            with pg.translate_errors(self.dsn):
                pg.ensure_event_store_schema(conn, self.schema, create=False)
                query, params = self._query(conn)
                counting = sql.SQL("SELECT q.event_type, count(*) FROM ({}) q GROUP BY 1").format(
                    query
                )
                rows = conn.execute(counting, params).fetchall()
                conn.rollback()
        finally:
            conn.close()
        return Counter({str(t): int(n) for t, n in rows})


Source = RedisSource | PgSource


def _open_source(
    options: ReplayOptions,
    filters: QueryFilters,
    client: redisio.RedisClient | None,
    *,
    after: tuple[Any, ...] | None = None,
    limit: int | None = None,
) -> Source:
    if options.source == "redis":
        if client is None:
            raise UsageError("--from redis needs a Redis connection")
        return RedisSource(
            client,
            options.app,
            filters,
            order=options.order,
            after=after,
            limit=limit,
            sort_dir=options.sort_dir,
            sort_run_bytes=options.sort_run_bytes,
            shard=options.shard,
            unpack_ahead=options.target == "queue",
        )
    return PgSource(
        options.pg_dsn,
        options.pg_schema,
        options.app,
        filters,
        order=options.order,
        after=after,
        limit=limit,
        shard=options.shard,
        # what .NET reads (a queue's subscribers, whatever reads the JSON lines) needs the
        # library's key order; a Python projection gets event_data as jsonb prints it
        metadata_first=options.target in ("queue", "stdout"),
    )


def _unchanged(payload: bytes) -> bytes:
    return payload


def _source_problems(source: Source, summary: ReplaySummary) -> None:
    for kind, key, detail in source.problems():
        summary.add_problem(kind, key, detail)


# --- pacing --------------------------------------------------------------------------------


class Pacer:
    """At most ``rate`` events per second; ``wait(n)`` before n events."""

    def __init__(
        self,
        rate: float | None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.sleep = sleep
        self.clock = clock
        self.next_at = clock()

    def wait(self, events: int) -> None:
        if not self.rate:
            return
        now = self.clock()
        if self.next_at > now:
            self.sleep(self.next_at - now)
        self.next_at = max(self.next_at, now) + events / self.rate

    def batch(self, default: int) -> int:
        """A batch size that keeps bursts to a tenth of a second's worth."""
        if not self.rate:
            return default
        return max(1, min(default, int(self.rate / 10)))


# --- the entry point -----------------------------------------------------------------------


def replay(
    options: ReplayOptions,
    *,
    redis_client: redisio.RedisClient | None = None,
    confirm: Confirm | None = None,
    out: IO[bytes] | None = None,
    projection: ProjectionAdapter | Any | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplaySummary:
    """Replay the selected events to the target; see the module docstring and
    :func:`replay_to_queue`, :func:`replay_to_projection`, :func:`replay_to_stdout` for what
    each target promises.

    ``redis_client`` is needed for ``--from redis`` and ``--to queue``; ``out`` (a binary
    stream) for ``--to stdout``; ``projection`` overrides ``options.projection`` with an
    object or function. ``confirm`` is asked before publishing more than
    ``options.confirm_over`` events (None: do not ask). Raises UsageError, LockHeld (nothing
    was done), Refused (not confirmed: nothing was done), ConnectionFailed / ServerError."""
    if projection is not None and options.projection is None:
        name = getattr(projection, "name", None) or getattr(projection, "__name__", None)
        options = replace(options, projection=name or type(projection).__name__)
    options.check()
    if options.target == "queue":
        if redis_client is None:
            raise UsageError("--to queue needs a Redis connection")
        return replay_to_queue(
            options, redis_client, confirm=confirm, on_progress=on_progress, sleep=sleep
        )
    if options.target == "projection":
        if isinstance(projection, ProjectionAdapter):
            adapter = projection
        elif projection is not None:
            adapter = ProjectionAdapter(projection, options.projection or "")
        else:
            adapter = load_projection(options.projection or "")
        return replay_to_projection(
            options, adapter, redis_client=redis_client, on_progress=on_progress, sleep=sleep
        )
    if out is None:
        raise UsageError("--to stdout needs an output stream")
    return replay_to_stdout(
        options, out, redis_client=redis_client, on_progress=on_progress, sleep=sleep
    )


def _new_summary(options: ReplayOptions) -> ReplaySummary:
    return ReplaySummary(
        dry_run=options.dry_run,
        source=options.source,
        target=options.target,
        order=options.order,
        shard=options.shard,
    )


def _finish(summary: ReplaySummary, started: float) -> ReplaySummary:
    summary.elapsed_s = time.monotonic() - started
    summary.events_per_s = summary.events / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    return summary


# --- --to stdout ---------------------------------------------------------------------------


def event_json_line(event: Event) -> bytes:
    """The ``events query`` JSON object of an event (no newline), with ``data`` spliced in as
    the payload text itself."""
    head = orjson.dumps(
        {
            "aggregate_id": event.aggregate_id,
            "version": event.version,
            "event_type": event.event_type,
            "aggregate_type": event.aggregate_type,
            "timestamp": event.timestamp,
            "commit_id": event.commit_id,
        }
    )
    return head[:-1] + b',"data":' + event.payload + b"}"


def replay_to_stdout(
    options: ReplayOptions,
    out: IO[bytes],
    *,
    redis_client: redisio.RedisClient | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplaySummary:
    """Write each selected event as one JSON line to ``out`` (dry run: only count them)."""
    started = time.monotonic()
    summary = _new_summary(options)
    filters = options.selection.filters(options.now or datetime.now(UTC))
    source = _open_source(options, filters, redis_client, limit=options.selection.limit)
    if options.dry_run:
        counts = source.count_by_type()
        summary.by_type = dict(counts)
        summary.events = sum(counts.values())
        _source_problems(source, summary)
        return _finish(summary, started)
    pacer = Pacer(options.rate, sleep)
    progress = ReplayProgress()
    by_type: Counter[str] = Counter()
    step = pacer.batch(1000)
    pending = 0
    for event in source:
        if pending == 0:
            pacer.wait(step)
        out.write(event_json_line(event) + b"\n")
        by_type[event.event_type] += 1
        summary.events += 1
        pending += 1
        if pending >= step:
            pending = 0
            if on_progress is not None:
                progress.events = summary.events
                on_progress(progress)
    out.flush()
    summary.by_type = dict(by_type)
    _source_problems(source, summary)
    return _finish(summary, started)


# --- --to queue ----------------------------------------------------------------------------


def replay_lock(client: redisio.RedisClient, refs: Sequence[queues.QueueRef]) -> RedisLock:
    """The lock a replay holds on the subscribers' queues it publishes to
    (:func:`esctl.layout.replay_lock_key`, in each queue's slot; LockHeld when one is held)."""
    return RedisLock(
        client,
        (layout.replay_lock_key(r.subscriber, r.env, r.event_type) for r in refs),
        name="replay lock",
        stopped="stopped (every event published so far was published whole, with its notification)",
        hint="make sure no other esctl replay publishes to this queue, then rerun",
    )


def discover_types(client: redisio.RedisClient, env: str) -> list[str]:
    """Event types of ``env`` that have a ``Subscribers:{ENV:TYPE}`` set (SCAN)."""
    prefix, suffix = f"Subscribers:{{{env}:", "}"
    found: set[str] = set()
    for _, keys in redisio.scan_pages(client, layout.subscribers_pattern(env)):
        for key in keys:
            if key.startswith(prefix) and key.endswith(suffix):
                found.add(key[len(prefix) : -len(suffix)])
    return sorted(found)


def resolve_routes(
    client: redisio.RedisClient,
    env: str,
    event_types: Sequence[str],
    subscribers: Sequence[str] = (),
    *,
    force: bool = False,
) -> dict[str, tuple[str, ...]]:
    """Event type -> the subscribers its events go to: the members of
    ``Subscribers:{ENV:TYPE}``, limited to ``subscribers`` when given. A named subscriber that
    is a member for none of ``event_types`` is a UsageError (a typo, usually), unless ``force``:
    then the named subscribers get every type, members or not."""
    types = sorted(set(event_types))
    replies = redisio.pipelined(
        client, [("SMEMBERS", layout.subscribers_key(env, t)) for t in types]
    )
    members: dict[str, set[str]] = {}
    for event_type, reply in zip(types, replies, strict=True):
        if isinstance(reply, Exception):
            raise ServerError(
                f"SMEMBERS {layout.subscribers_key(env, event_type)} failed: {reply}",
                hint="the key is expected to be a set of subscriber names (docs/layout.md §4)",
            )
        members[event_type] = {redisio.key_str(m) for m in reply}
    if not subscribers:
        return {t: tuple(sorted(m)) for t, m in members.items() if m}
    named = sorted(set(subscribers))
    if force:
        return {t: tuple(named) for t in types}
    if not types:  # the selection holds no event: nothing to route, no name to doubt
        return {}
    strangers = [s for s in named if not any(s in m for m in members.values())]
    if strangers:
        shown = ", ".join(types[:5]) + (f" … ({len(types)} types)" if len(types) > 5 else "")
        raise UsageError(
            f"{', '.join(strangers)} is not a member of Subscribers:{{{env}:TYPE}} for any "
            f"selected event type ({shown})",
            hint=f"check the name ('esctl queue list --env {env}' shows the subscribers), or "
            "pass --force to publish to it anyway",
        )
    routes = {t: tuple(s for s in named if s in m) for t, m in members.items()}
    return {t: subs for t, subs in routes.items() if subs}


def plan_publish(env: str, counts: Counter[str], routes: dict[str, tuple[str, ...]]) -> PublishPlan:
    published: dict[str, dict[str, int]] = {}
    unpublished: dict[str, int] = {}
    events = messages = 0
    for event_type, n in sorted(counts.items()):
        subs = routes.get(event_type, ())
        if not subs:
            unpublished[event_type] = n
            continue
        events += n
        for sub in subs:
            published.setdefault(sub, {})[event_type] = n
            messages += n
    return PublishPlan(env, events, messages, published, unpublished)


PUBLISH_SCRIPT = """
-- KEYS: the subscribers' PublishedEvents lists (one {ENV:TYPE} slot); ARGV[1] channel,
-- ARGV[2] the message. The library's publish, atomic: LPUSH to each, then one notification.
for i = 1, #KEYS do redis.call('LPUSH', KEYS[i], ARGV[2]) end
redis.call('PUBLISH', ARGV[1], '1')
return #KEYS
"""


_MULTI = (b"MULTI",)
_EXEC = (b"EXEC",)
_MULTI_RESP = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC_RESP = b"*1\r\n$4\r\nEXEC\r\n"


class _PublishFailed(Exception):
    def __init__(self, event: Event, key: str, detail: str) -> None:
        super().__init__(detail)
        self.event = event
        self.key = key
        self.detail = detail


class Publisher:
    """Publishes events as the library's publisher does: per event, LPUSH the uncompressed
    JSON onto ``SUB:{ENV:TYPE}:PublishedEvents`` of each subscriber, then PUBLISH ``1`` on
    ``ENV:TYPE``, in one MULTI/EXEC transaction (every key in the ``{ENV:TYPE}`` slot). Many
    events' transactions travel in one pipelined round trip. On a Redis Cluster the same
    commands run as one Lua script per event (atomic like MULTI/EXEC; redis-py's cluster
    pipeline cannot carry MULTI).

    ``max_queue_length``: before each round trip, LLEN of the lists it will push to; events
    are sent only as far as no list would grow past the cap; while a list is at the cap it
    waits (polling, up to 1 s apart).

    (A sender thread overlapping round trips with reading was measured: no faster, the work
    is the interpreter's, so publishing stays in the caller's thread.)"""

    def __init__(
        self,
        client: redisio.RedisClient,
        env: str,
        routes: dict[str, tuple[str, ...]],
        summary: ReplaySummary,
        *,
        max_queue_length: int | None = None,
        batch: int = PUBLISH_BATCH,
        pacer: Pacer | None = None,
        lock: RedisLock | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.env = env
        self.routes = routes
        self.summary = summary
        self.max_queue_length = max_queue_length
        self.batch = batch
        self.pacer = pacer or Pacer(None, sleep)
        self.lock = lock
        self.sleep = sleep
        self.cluster = isinstance(client, redis.cluster.RedisCluster)
        self.pending: list[Event] = []
        self.keys = {
            t: [layout.queue_key(s, env, t, "published") for s in subs]
            for t, subs in routes.items()
        }
        self.channels = {t: layout.notification_channel(env, t) for t in routes}
        # the commands pre-encoded: packing them is most of the publisher's own CPU time
        self.lpush = {
            t: [(b"LPUSH", redisio.key_bytes(k)) for k in keys] for t, keys in self.keys.items()
        }
        self.publish = {
            t: (b"PUBLISH", redisio.key_bytes(channel), b"1")
            for t, channel in self.channels.items()
        }
        # The same, as RESP, for the single-server path: per event only the payload's length
        # is encoded (packing argument by argument was a sixth of a queue replay's time).
        self.resp_head = {
            t: [
                b"*3\r\n$5\r\nLPUSH\r\n" + redisio.resp_bulk(key) + key + b"\r\n"
                for _, key in lpushes
            ]
            for t, lpushes in self.lpush.items()
        }
        self.resp_tail = {
            t: redisio.resp_command(*publish) + _EXEC_RESP for t, publish in self.publish.items()
        }

    def add(self, event: Event) -> bool:
        """Queue ``event`` for publishing; False when no chosen subscriber takes its type."""
        if event.event_type not in self.keys:
            unpublished = self.summary.unpublished
            unpublished[event.event_type] = unpublished.get(event.event_type, 0) + 1
            return False
        self.pending.append(event)
        if len(self.pending) >= self.batch:
            self.flush()
        return True

    def flush(self) -> None:
        """Publish every event added so far."""
        chunk, self.pending = self.pending, []
        self._publish(chunk)

    def _publish(self, chunk: list[Event]) -> None:
        waited = 0.05
        while chunk:
            if self.lock is not None:
                self.lock.check()
            part = chunk
            if self.max_queue_length is not None:
                part = chunk[: self._room(chunk)]
                if not part:
                    self.sleep(waited)
                    self.summary.waited_s += waited
                    waited = min(1.0, waited * 2)
                    continue
                waited = 0.05
            self.pacer.wait(len(part))
            self._send(part)
            chunk = chunk[len(part) :]

    def _room(self, chunk: Sequence[Event]) -> int:
        """How many of ``chunk``'s events fit before some list reaches the cap."""
        assert self.max_queue_length is not None
        keys = sorted({k for e in chunk for k in self.keys[e.event_type]})
        room = {
            k: self.max_queue_length - n
            for k, n in zip(keys, redisio.list_lengths(self.client, keys), strict=True)
        }
        for index, event in enumerate(chunk):
            targets = self.keys[event.event_type]
            if any(room[k] <= 0 for k in targets):
                return index
            for k in targets:
                room[k] -= 1
        return len(chunk)

    def _send(self, chunk: Sequence[Event]) -> None:
        if self.cluster:
            replies = redisio.eval_pipelined(
                self.client,
                PUBLISH_SCRIPT,
                [
                    (len(self.keys[e.event_type]), *self.keys[e.event_type],
                     self.channels[e.event_type], e.payload)
                    for e in chunk
                ],
            )  # fmt: skip
            for number, (event, reply) in enumerate(zip(chunk, replies, strict=True)):
                if isinstance(reply, Exception):
                    self._count(chunk[:number])
                    raise _PublishFailed(event, self.channels[event.event_type], str(reply))
            self._count(chunk)
            return
        sent = self._send_resp(chunk)
        if sent is not None:
            replies = sent
        else:  # TLS: redis-py's pipeline
            commands: list[tuple[Any, ...]] = []
            append = commands.append
            for event in chunk:
                payload = event.payload
                append(_MULTI)
                for lpush in self.lpush[event.event_type]:
                    append((*lpush, payload))
                append(self.publish[event.event_type])
                append(_EXEC)
            replies = redisio.pipelined(self.client, commands, chunk=len(commands))
        # EXEC answers a list of the LPUSH and PUBLISH results (integers) when the transaction
        # ran; an error (EXECABORT after a refused command, "EXEC without MULTI") otherwise.
        index = -1
        for number, event in enumerate(chunk):
            index += len(self.lpush[event.event_type]) + 3
            executed = replies[index]
            if type(executed) is not list or not all(type(r) is int for r in executed):
                self._count(chunk[:number])
                answered = replies[index - len(self.lpush[event.event_type]) - 2 : index + 1]
                failed = next((r for r in answered if isinstance(r, Exception)), executed)
                raise _PublishFailed(event, self.keys[event.event_type][0], str(failed))
        self._count(chunk)

    def _send_resp(self, chunk: Sequence[Event]) -> list[Any] | None:
        """MULTI, LPUSH per subscriber, PUBLISH, EXEC for each event, encoded here and sent
        in one buffer (None where the raw single-server path does not apply)."""
        parts: list[bytes] = []
        append = parts.append
        count = 0
        for event in chunk:
            payload = event.payload
            header = redisio.resp_bulk(payload)
            append(_MULTI_RESP)
            heads = self.resp_head[event.event_type]
            for head in heads:
                append(head)
                append(header)
                append(payload)
                append(b"\r\n")
            append(self.resp_tail[event.event_type])
            count += len(heads) + 3
        return redisio.pipelined_resp(self.client, b"".join(parts), count)

    def _count(self, events: Sequence[Event]) -> None:
        summary = self.summary
        for event_type, n in Counter(e.event_type for e in events).items():
            subscribers = self.routes[event_type]
            for sub in subscribers:
                per_type = summary.published.setdefault(sub, {})
                per_type[event_type] = per_type.get(event_type, 0) + n
            summary.messages += n * len(subscribers)
            summary.notifications += n


def _check_lists(client: redisio.RedisClient, keys: Sequence[str]) -> None:
    """Every target must be a list or absent: MULTI/EXEC does not roll back, so a WRONGTYPE
    half-way through a transaction would leave an event published to some subscribers only."""
    kinds = redisio.pipelined(client, [("TYPE", k) for k in keys])
    for key, kind in zip(keys, kinds, strict=True):
        if isinstance(kind, Exception):
            raise ServerError(f"TYPE {key} failed: {kind}")
        name = redisio.key_str(kind)
        if name not in ("list", "none"):
            raise ServerError(
                f"{key} is a {name}, not a list: cannot publish to it; nothing was published",
                hint="the key is expected to be a subscriber's PublishedEvents list (docs/layout.md §4)",
            )


def replay_to_queue(
    options: ReplayOptions,
    client: redisio.RedisClient,
    *,
    confirm: Confirm | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplaySummary:
    """Publish the selected events to the subscribers' queues, in replay order (the first is
    taken first), one transaction and one notification per event (:class:`Publisher`).

    Subscribers are the members of ``Subscribers:{ENV:TYPE}`` when the run starts (limited to
    ``options.subscribers``); events of a type none of them takes are counted in
    ``unpublished``. A planning pass counts the selection per subscriber and type first when
    it is needed: for a dry run, for ``confirm`` (asked when more than ``confirm_over`` events
    would be published) and for ``--force`` without ``--type``; the publishing pass reads the
    selection again (events saved in between are included). Holds a :func:`replay_lock` on
    every subscriber-and-type it may publish to (LockHeld when another replay has one)."""
    started = time.monotonic()
    summary = _new_summary(options)
    env = options.env
    assert env is not None
    filters = options.selection.filters(options.now or datetime.now(UTC))
    source = _open_source(options, filters, client, limit=options.selection.limit)
    needs_plan = options.dry_run or confirm is not None or (options.force and not filters.types)
    counts: Counter[str] | None = source.count_by_type() if needs_plan else None
    if counts is not None:
        event_types: Sequence[str] = sorted(counts)
    elif filters.types:
        event_types = filters.types
    else:
        event_types = discover_types(client, env)
    routes = resolve_routes(client, env, event_types, options.subscribers, force=options.force)
    progress = ReplayProgress()
    if counts is not None:
        plan = plan_publish(env, counts, routes)
        progress.total = sum(counts.values())
        if options.dry_run:
            summary.events = sum(counts.values())
            summary.by_type = dict(counts)
            summary.published = plan.published
            summary.messages = plan.messages
            summary.notifications = plan.events
            summary.unpublished = plan.unpublished
            _source_problems(source, summary)
            return _finish(summary, started)
        if confirm is not None and plan.events > options.confirm_over and not confirm(plan):
            raise Refused("replay not confirmed; nothing was published")
    refs = [queues.QueueRef(s, env, t) for t, subs in sorted(routes.items()) for s in subs]
    _check_lists(client, [r.key("published") for r in refs])
    by_type: Counter[str] = Counter()
    pacer = Pacer(options.rate, sleep)
    with replay_lock(client, refs) as lock:
        publisher = Publisher(
            client,
            env,
            routes,
            summary,
            max_queue_length=options.max_queue_length,
            batch=pacer.batch(PUBLISH_BATCH),
            pacer=pacer,
            lock=lock,
            sleep=sleep,
        )
        try:
            for event in source:  # a second pass when the plan read it once
                by_type[event.event_type] += 1
                summary.events += 1
                publisher.add(event)
                if on_progress is not None and summary.events % PUBLISH_BATCH == 0:
                    progress.events, progress.messages = summary.events, summary.messages
                    on_progress(progress)
            publisher.flush()
        except _PublishFailed as exc:
            event = exc.event
            # replayed: the events published and those no subscriber takes; not the rest
            summary.events = summary.notifications + sum(summary.unpublished.values())
            summary.stopped = {
                "kind": "publish_failed",
                "aggregate_id": event.aggregate_id,
                "version": event.version,
                "event_type": event.event_type,
                "error": redact(exc.detail),
            }
            summary.add_problem(
                "publish_failed",
                exc.key,
                f"publishing {event.event_type} {event.aggregate_id} version {event.version} "
                f"failed: {redact(exc.detail)}; it and the events after it were not published",
            )
        except redis.exceptions.RedisError as exc:
            raise redisio.wrap_errors(client, exc) from exc
    summary.by_type = dict(by_type)
    _source_problems(source, summary)
    return _finish(summary, started)


# --- --to projection -----------------------------------------------------------------------


class ProjectionFailed(EsctlError):
    """A projection raised; the replay stopped (its summary says where)."""


@dataclass
class _CheckpointState:
    name: str
    after: tuple[Any, ...] | None
    after_document: dict[str, Any] | None
    events_before: int
    selection_now: datetime
    resumed: bool
    shard: str = "0/1"


def _checkpoint_identity(options: ReplayOptions, projection_name: str) -> dict[str, Any]:
    source = "redis" if options.source == "redis" else f"pg:{options.pg_schema}"
    return {
        "projection": projection_name,
        "application_name": options.app,
        "source": source,
        "replay_order": options.order,
        "selection": options.selection.fingerprint(),
    }


def checkpoint_lock_name(name: str, shard: Shard) -> str:
    """The advisory lock of one checkpoint's run: one per shard, so the shards of a checkpoint
    run side by side; an unsharded run keeps the name earlier releases used."""
    if shard.count == 1:
        return f"esctl:replay:{name}"
    return f"esctl:replay:{name}:shard {shard}"


_CHECKPOINT_COLUMNS = (
    "shard, projection, application_name, source, replay_order, selection, position, events,"
    " selection_now"
)


def _shard_count(spec: str) -> int:
    return Shard.parse(spec).count


def _open_checkpoint(
    conn: psycopg.Connection, options: ReplayOptions, projection_name: str
) -> _CheckpointState:
    """Read (create, or with --reset start over) the checkpoint row of ``options.shard``,
    inside the caller's transaction. A checkpoint made by another source, order, selection or
    projection is refused: resuming it would skip or repeat events. So is one whose other rows
    were written with another shard count (another N, or sharded against unsharded): their
    positions cover other sets of aggregates. ``--reset`` deletes those rows too (refused while
    one of their runs holds its lock: LockHeld)."""
    name = options.checkpoint
    assert name is not None
    shard = str(options.shard)
    identity = _checkpoint_identity(options, projection_name)
    now = options.now or datetime.now(UTC)
    if options.dry_run:
        if not _has_table(conn, "esctl.projection_checkpoint"):
            return _CheckpointState(name, None, None, 0, now, False, shard)
        columns = _CHECKPOINT_COLUMNS
        if not _has_shard_column(conn):  # made by an earlier release; a dry run does no DDL
            columns = columns.replace("shard,", "'0/1',", 1)
        rows = conn.execute(
            f"SELECT {columns} FROM esctl.projection_checkpoint WHERE name = %s", (name,)
        ).fetchall()
    else:
        # The shards of one checkpoint start at once: one at a time checks and creates rows.
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"esctl:replay-checkpoint:{name}",),
        )
        if options.reset:
            _reset_checkpoint(conn, name, options.shard)
        # No FOR UPDATE: this run's own row is its lock's, and locking the other shards' rows
        # would stall their batches behind this setup (or deadlock with a projection's setup
        # that waits for their rows).
        rows = conn.execute(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM esctl.projection_checkpoint WHERE name = %s",
            (name,),
        ).fetchall()
    if options.reset:  # (a dry run's reset: as if done)
        rows = [r for r in rows if _shard_count(r[0]) == options.shard.count and r[0] != shard]
    strangers = sorted(r[0] for r in rows if _shard_count(r[0]) != options.shard.count)
    if strangers:
        made_by = (
            "runs without --shard"
            if strangers == ["0/1"]
            else "runs with --shard " + ", ".join(strangers)
        )
        now_run = f"--shard {shard}" if options.shard.count > 1 else "no --shard"
        raise UsageError(
            f"checkpoint {name!r} was written by {made_by}, and this run has {now_run}: their "
            "positions are in other sets of aggregates, resuming from them would skip or "
            "repeat events",
            hint="run it as it was made (with --shard: one process per shard), or start it "
            "over with --reset"
            + (f" (on every shard I/{options.shard.count})" if options.shard.count > 1 else "")
            + ", or use another --checkpoint name",
        )
    row = next((r for r in rows if r[0] == shard), None)
    if row is None:
        if not options.dry_run:
            conn.execute(
                "INSERT INTO esctl.projection_checkpoint (name, shard, projection,"
                " application_name, source, replay_order, selection, selection_now)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    name,
                    shard,
                    identity["projection"],
                    identity["application_name"],
                    identity["source"],
                    identity["replay_order"],
                    orjson.dumps(identity["selection"]).decode(),
                    now,
                ),
            )
        return _CheckpointState(name, None, None, 0, now, False, shard)
    stored = {
        "projection": row[1],
        "application_name": row[2],
        "source": row[3],
        "replay_order": row[4],
        "selection": row[5],
    }
    differs = [k for k in identity if identity[k] != stored[k]]
    if differs:
        detail = "; ".join(f"{k}: checkpoint {stored[k]!r}, now {identity[k]!r}" for k in differs)
        which = f"checkpoint {name!r}" + (f" (shard {shard})" if options.shard.count > 1 else "")
        raise UsageError(
            f"{which} belongs to another replay ({detail})",
            hint="resuming it would skip or repeat events: rerun with the same options, "
            "or start over with --reset, or use another --checkpoint name",
        )
    position = row[6]
    after = decode_position(options.source, options.order, position) if position else None
    return _CheckpointState(name, after, position, int(row[7]), row[8], after is not None, shard)


def _reset_checkpoint(conn: psycopg.Connection, name: str, shard: Shard) -> None:
    """--reset: delete this shard's row and the rows of other shard counts, whose runs must
    not be running (their locks are tried for the rest of the transaction)."""
    rows = conn.execute(
        "SELECT shard FROM esctl.projection_checkpoint WHERE name = %s", (name,)
    ).fetchall()
    doomed = [s for (s,) in rows if s == str(shard) or _shard_count(s) != shard.count]
    for spec in doomed:
        if spec == str(shard):
            continue  # this run holds that lock already
        lock = checkpoint_lock_name(name, Shard.parse(spec))
        row = conn.execute(
            "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", (lock,)
        ).fetchone()
        if not row or not row[0]:
            raise LockHeld(
                f"--reset of checkpoint {name!r} would delete the row of shard {spec}, and a "
                "run of that shard is going on; nothing was done",
                hint="wait for it to finish (or stop it), then rerun with --reset",
            )
    conn.execute(
        "DELETE FROM esctl.projection_checkpoint WHERE name = %s AND shard = ANY(%s)",
        (name, doomed),
    )


def _has_shard_column(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid ="
        " 'esctl.projection_checkpoint'::regclass AND attname = 'shard' AND NOT attisdropped)"
    ).fetchone()
    return bool(row and row[0])


def _has_table(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


def _checkpoint_document(
    state: _CheckpointState | None, position: dict[str, Any] | None, events: int
) -> dict[str, Any] | None:
    if state is None:
        return None
    return {
        "name": state.name,
        "shard": state.shard,
        "resumed": state.resumed,
        "resumed_from": state.after_document,
        "position": position if position is not None else state.after_document,
        "events_total": state.events_before + events,
    }


def replay_to_projection(
    options: ReplayOptions,
    adapter: ProjectionAdapter,
    *,
    redis_client: redisio.RedisClient | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplaySummary:
    """Feed the selected events to a projection (protocol: :mod:`esctl.projections`) in
    batches of ``batch_size``, each batch one PostgreSQL transaction holding the projection's
    writes and, with a checkpoint, the position of its last event (so a crash loses only the
    batch in flight and a rerun continues after the last committed batch: exactly-once for
    what the projection writes through ``ctx.conn``).

    A checkpoint is locked for the run (PostgreSQL advisory lock ``esctl:replay:NAME``, with
    a shard ``esctl:replay:NAME:shard I/N``; freed when the process dies): LockHeld when
    another run has it. Each shard has its own checkpoint row and lock. An exception from ``handle``
    rolls the batch back and stops the run (``summary.stopped``) unless ``skip_errors``:
    then the event goes to ``esctl.projection_dead_letter`` and the run goes on. A dry run
    counts what would be replayed (from the checkpoint's position) and calls nothing."""
    started = time.monotonic()
    summary = _new_summary(options)
    dsn = options.pg_dsn
    name = options.checkpoint
    lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if name is not None and not options.dry_run:
        which = f" (shard {options.shard})" if options.shard.count > 1 else ""
        lock = AdvisoryLock(
            dsn,
            checkpoint_lock_name(name, options.shard),
            held=f"another replay holds checkpoint {name!r}{which}; nothing was done",
            hint="wait for it to finish; from cron, exit code 75 means the previous run "
            "is still going",
        )
    with lock:
        ctx = ProjectionContext(
            app=options.app,
            source=options.source,
            checkpoint=name,
            fresh=True,
            connect=lambda: pg.connect(dsn, application_name="esctl replay"),
            shard=options.shard,
        )
        try:
            with pg.translate_errors(dsn):
                return _run_projection(
                    options, adapter, ctx, summary, started, redis_client, on_progress, sleep
                )
        finally:
            ctx.close()


def _run_projection(
    options: ReplayOptions,
    adapter: ProjectionAdapter,
    ctx: ProjectionContext,
    summary: ReplaySummary,
    started: float,
    redis_client: redisio.RedisClient | None,
    on_progress: Callable[[ReplayProgress], None] | None,
    sleep: Callable[[float], None],
) -> ReplaySummary:
    state: _CheckpointState | None = None
    if options.checkpoint is not None:
        if not options.dry_run:
            pg.ensure_state_schema(ctx.conn)
        state = _open_checkpoint(ctx.conn, options, adapter.name)
    elif options.skip_errors and not options.dry_run:
        pg.ensure_state_schema(ctx.conn)
    selection_now = state.selection_now if state is not None else options.now or datetime.now(UTC)
    filters = options.selection.filters(selection_now)
    limit = options.selection.limit
    if limit is not None and state is not None:
        limit = max(0, limit - state.events_before)
    after = state.after if state is not None else None
    source = _open_source(options, filters, redis_client, after=after, limit=limit)
    summary.checkpoint = _checkpoint_document(state, None, 0)
    if options.dry_run:
        counts = source.count_by_type()
        summary.by_type = dict(counts)
        summary.events = sum(counts.values())
        _source_problems(source, summary)
        if ctx.connected:
            ctx.conn.rollback()
        return _finish(summary, started)

    ctx.fresh = after is None
    try:
        adapter.setup(ctx)
    except Exception as exc:
        raise ProjectionFailed(
            f"the projection's setup failed: {type(exc).__name__}: {redact(str(exc))}; "
            "nothing was replayed",
            hint="fix the projection and rerun",
        ) from exc
    if ctx.connected:
        ctx.conn.commit()
    runner = _BatchRunner(options, adapter, ctx, summary, state, on_progress)
    pacer = Pacer(options.rate, sleep)
    try:
        batch: list[Event] = []
        for event in source:
            batch.append(event)
            if len(batch) >= options.batch_size:
                pacer.wait(len(batch))
                if not runner.run(batch):
                    break
                batch = []
        else:
            if batch:
                pacer.wait(len(batch))
                runner.run(batch)
        if summary.stopped is None and state is not None:
            ctx.conn.execute(
                "UPDATE esctl.projection_checkpoint SET finished_at = now(), updated_at = now()"
                " WHERE name = %s AND shard = %s",
                (state.name, str(options.shard)),
            )
            ctx.conn.commit()
    finally:
        _teardown(adapter, ctx, summary)
    summary.by_type = dict(runner.by_type)
    summary.checkpoint = _checkpoint_document(state, runner.position, summary.events)
    _source_problems(source, summary)
    return _finish(summary, started)


def _teardown(adapter: ProjectionAdapter, ctx: ProjectionContext, summary: ReplaySummary) -> None:
    try:
        if ctx.connected:
            ctx.conn.rollback()
        adapter.teardown(ctx)
        if ctx.connected:
            ctx.conn.commit()
    except Exception as exc:
        summary.add_problem(
            "teardown_failed", adapter.name, f"{type(exc).__name__}: {redact(str(exc))}"
        )


class _BatchRunner:
    """One batch = handle each event, flush, store the checkpoint, COMMIT."""

    def __init__(
        self,
        options: ReplayOptions,
        adapter: ProjectionAdapter,
        ctx: ProjectionContext,
        summary: ReplaySummary,
        state: _CheckpointState | None,
        on_progress: Callable[[ReplayProgress], None] | None,
    ) -> None:
        self.options = options
        self.adapter = adapter
        self.ctx = ctx
        self.summary = summary
        self.state = state
        self.on_progress = on_progress
        self.by_type: Counter[str] = Counter()
        self.position: dict[str, Any] | None = None
        self.progress = ReplayProgress()

    def run(self, batch: list[Event]) -> bool:
        """False when the replay must stop (``summary.stopped`` says why)."""
        ctx, adapter, options = self.ctx, self.adapter, self.options
        ctx.batch += 1
        handle = adapter.handle
        dead: list[tuple[Event, str]] = []
        if options.skip_errors:
            conn = ctx.conn
            for event in batch:
                conn.execute("SAVEPOINT esctl_event")
                try:
                    handle(event)
                except Exception as exc:
                    conn.execute("ROLLBACK TO SAVEPOINT esctl_event")
                    dead.append((event, f"{type(exc).__name__}: {exc}"))
                else:
                    conn.execute("RELEASE SAVEPOINT esctl_event")
        else:
            for event in batch:
                try:
                    handle(event)
                except Exception as exc:
                    self._stop(event, "handle", exc)
                    return False
        try:
            adapter.flush(ctx)
        except Exception as exc:
            self._stop(batch[-1], "flush", exc)
            return False
        if dead:
            self._dead_letter(dead)
        position = encode_position(options.source, options.order, batch[-1])
        if self.state is not None:
            ctx.conn.execute(
                "UPDATE esctl.projection_checkpoint SET position = %s, events = events + %s,"
                " dead_lettered = dead_lettered + %s, batches = batches + 1,"
                " updated_at = now(), finished_at = NULL WHERE name = %s AND shard = %s",
                (
                    orjson.dumps(position).decode(),
                    len(batch),
                    len(dead),
                    self.state.name,
                    str(options.shard),
                ),
            )
        if ctx.connected:
            ctx.conn.commit()
        self.position = position
        summary = self.summary
        summary.events += len(batch)
        summary.dead_lettered += len(dead)
        for event in batch:
            self.by_type[event.event_type] += 1
        if self.on_progress is not None:
            self.progress.events = summary.events
            self.on_progress(self.progress)
        return True

    def _stop(self, event: Event, where: str, exc: Exception) -> None:
        ctx = self.ctx
        if ctx.connected:
            ctx.conn.rollback()
        error = f"{type(exc).__name__}: {redact(str(exc))}"
        self.summary.stopped = {
            "kind": "projection_failed",
            "in": where,
            "aggregate_id": event.aggregate_id,
            "aggregate_type": event.aggregate_type,
            "version": event.version,
            "event_type": event.event_type,
            "error": error,
            "batch": ctx.batch,
        }
        what = (
            f"{event.event_type} {event.aggregate_id} version {event.version}"
            if where == "handle"
            else f"flush of batch {ctx.batch} (ending at {event.aggregate_id} version "
            f"{event.version})"
        )
        self.summary.add_problem(
            "projection_failed",
            self.adapter.name,
            f"the projection failed on {what}: {error}; the batch was rolled back",
        )

    def _dead_letter(self, dead: list[tuple[Event, str]]) -> None:
        options = self.options
        self.ctx.conn.cursor().executemany(
            "INSERT INTO esctl.projection_dead_letter (checkpoint_name, projection,"
            " application_name, source, aggregate_id, aggregate_type, version, event_type,"
            " commit_id, position, error, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s)",
            [
                (
                    options.checkpoint,
                    self.adapter.name,
                    options.app,
                    options.source,
                    e.aggregate_id,
                    e.aggregate_type,
                    e.version,
                    e.event_type,
                    e.commit_id,
                    orjson.dumps(encode_position(options.source, options.order, e)).decode(),
                    redact(error),
                    e.text,
                )
                for e, error in dead
            ],
        )
        for event, error in dead:
            self.summary.add_problem(
                "dead_lettered",
                f"{event.aggregate_id} version {event.version}",
                f"{event.event_type}: {redact(error)} (in esctl.projection_dead_letter)",
            )
