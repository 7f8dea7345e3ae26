"""``migrate redis-to-pg``: move committed events from Redis into the library's PostgreSQL
schema (docs/layout.md §5).

Promises:

- **Source of truth is the commit lists.** Only committed events move; orphan hash fields do not.
  ``event_data`` is the payload JSON unchanged; type, version and time stamp come from it.
- **All or nothing per aggregate.** An aggregate with any problem (missing or undecodable
  payload, Id mismatch, version gap or duplicate, a row already in PostgreSQL with other
  content, a value PostgreSQL rejects) is skipped whole and recorded in ``esctl.quarantine``.
- **Idempotent.** Rows go in with ``INSERT … ON CONFLICT DO NOTHING`` from a per-connection
  staging table; an identical existing row counts as already present, a different one is a
  ``conflict`` and is never overwritten.
- **Resumable and incremental.** Each batch commits its rows, the aggregates' migrated commit
  counts (``esctl.migrated_stream``) and the SCAN position in one transaction. A rerun after a
  crash continues from the last position all earlier batches reached; a later run reads only
  commit lists longer than what was migrated.

The data flows one way: SCAN + pipelined reads (reader, the calling thread) -> decode and check
(pure) -> COPY batches (writer threads, one connection each).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import asdict, astuple, dataclass, field, fields, replace
from typing import Any

import orjson
import psycopg
from psycopg import sql

from esctl import layout, pg, redisio
from esctl.defaults import MIGRATE_BATCH_SIZE as DEFAULT_BATCH_SIZE
from esctl.errors import ConfigError
from esctl.locks import AdvisoryLock
from esctl.shard import Shard
from esctl.streams import (
    Stream,
    StreamProblem,
    build_stream,
    clean_events,
    postgres_problem,
    validate_stream,
)

MAX_DEADLOCK_RETRIES = 5


@dataclass(frozen=True)
class MigrateOptions:
    app: str
    pg_dsn: str
    pg_schema: str = "public"
    batch_size: int = DEFAULT_BATCH_SIZE
    init_schema: bool = False
    dry_run: bool = False
    shard: Shard = field(default_factory=Shard)
    restart: bool = False
    max_problems: int | None = None
    rate: float | None = None
    max_redis_latency_ms: float | None = None
    writers: int = 2
    toast_compression: str | None = "lz4"
    scan_count: int = 1000


@dataclass
class Progress:
    """Cumulative figures of the running invocation (reported after each batch)."""

    aggregates: int = 0
    events_read: int = 0
    events_migrated: int = 0
    events_already_present: int = 0
    aggregates_quarantined: int = 0
    events_quarantined: int = 0
    commits_seen: int = 0
    """Commit-list entries looked at, including unchanged aggregates (for progress bars)."""


@dataclass(frozen=True)
class Invocation:
    """What one invocation of a run did (a resumed run's summary also holds the whole run's)."""

    aggregates: int
    aggregates_unchanged: int
    events_migrated: int
    events_already_present: int
    aggregates_quarantined: int
    events_quarantined: int

    def __add__(self, other: Invocation) -> Invocation:
        return Invocation(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


@dataclass
class MigrationSummary:
    """The outcome of a migration. The event and quarantine counts and ``problems`` cover the
    whole run: for a resumed run they include the interrupted invocations, and
    ``this_invocation`` says what this invocation did (``aggregates`` and
    ``aggregates_unchanged`` are this invocation's: a resume rereads part of a SCAN page, so
    they cannot be summed over invocations)."""

    run_id: str
    dry_run: bool
    resumed: bool
    aggregates: int
    aggregates_unchanged: int
    events_migrated: int
    events_already_present: int
    aggregates_quarantined: int
    events_quarantined: int
    problems: list[dict[str, str]]
    elapsed_s: float
    events_per_s: float
    stopped_early: str | None = None
    toast_compression: str | None = None
    this_invocation: Invocation | None = None
    """Set when the run was resumed."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "aggregates": self.aggregates,
            "aggregates_unchanged": self.aggregates_unchanged,
            "events_migrated": self.events_migrated,
            "events_already_present": self.events_already_present,
            "aggregates_quarantined": self.aggregates_quarantined,
            "events_quarantined": self.events_quarantined,
            "problems": self.problems,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s, 1),
            "resumed": self.resumed,
            "this_invocation": asdict(self.this_invocation) if self.this_invocation else None,
            "stopped_early": self.stopped_early,
        }

    def invocation(self) -> Invocation:
        """What this invocation did (the whole summary when the run was not resumed)."""
        if self.this_invocation is not None:
            return self.this_invocation
        return Invocation(
            self.aggregates,
            self.aggregates_unchanged,
            self.events_migrated,
            self.events_already_present,
            self.aggregates_quarantined,
            self.events_quarantined,
        )


# --- batches -------------------------------------------------------------------------------


@dataclass
class Quarantined:
    aggregate_id: str
    key: str
    events: int
    problems: list[StreamProblem]


@dataclass
class AggregateRows:
    """The new events of one clean aggregate, ready for COPY."""

    aggregate_type: str
    rows: list[str]
    """``time_stamp \t version \t event_type \t event_data`` lines in version order."""
    commits: int
    """Commit-list entries migrated once these rows are in (for esctl.migrated_stream)."""
    last_commit_id: str


@dataclass
class Batch:
    """Work for one transaction: whole aggregates only, plus the SCAN position reached."""

    seq: int
    position: str
    aggregates: int = 0
    events: int = 0
    clean: dict[str, AggregateRows] = field(default_factory=dict)
    quarantined: list[Quarantined] = field(default_factory=list)


@dataclass
class BatchResult:
    seq: int
    aggregates: int
    inserted: int
    already_present: int
    quarantined: list[Quarantined]


def copy_escape(text: str) -> str:
    """Escape a value for COPY's text format. (str.translate with a mapping is ~20x slower on
    payload-sized strings than these C-level scans.)"""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text:
        text = text.replace("\t", "\\t")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    return text


def stream_rows(stream: Stream) -> list[str] | StreamProblem:
    """The COPY lines of a checked stream's events, in version order, or the problem that
    keeps PostgreSQL from storing them."""
    problem = postgres_problem(stream)
    if problem is not None:
        return problem
    rows: list[str] = []
    for e in stream.by_version():
        ev = e.event
        assert ev is not None and ev.timestamp is not None
        rows.append(
            f"{ev.timestamp.isoformat()}\t{ev.version}\t{copy_escape(ev.event_type or '')}\t"
            f"{copy_escape(ev.text)}\n"
        )
    return rows


def clean_rows(
    aggregate_id: str,
    values: Sequence[bytes | None],
    *,
    first_version: int = 1,
    known_type: str | None = None,
) -> tuple[str, list[str]] | None:
    """The hot path of a migration: the aggregate type and COPY lines of a stream with nothing
    wrong at all (see :func:`esctl.streams.clean_events`), or None for the general path."""
    clean = clean_events(aggregate_id, values, first_version=first_version, known_type=known_type)
    if clean is None:
        return None
    aggregate_type, events = clean
    return aggregate_type, [
        f"{e.moment.isoformat()}\t{e.version}\t{copy_escape(e.event_type)}\t{copy_escape(e.text)}\n"
        for e in events
    ]


# --- writer --------------------------------------------------------------------------------

STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS esctl_stage (
    aggregate_id text NOT NULL,
    aggregate_type text NOT NULL,
    time_stamp timestamptz NOT NULL,
    version int NOT NULL,
    event_type text NOT NULL,
    event_data jsonb NOT NULL
) ON COMMIT DELETE ROWS
"""

COPY_CHUNK_CHARS = 4_000_000


def _copy(cur: psycopg.Cursor[Any], statement: Any, lines: Iterator[str]) -> None:
    """COPY text lines in large buffers (per-row writes measured 15-30% slower)."""
    with cur.copy(statement) as copy:
        buffer: list[str] = []
        size = 0
        for line in lines:
            buffer.append(line)
            size += len(line)
            if size > COPY_CHUNK_CHARS:
                copy.write("".join(buffer))
                buffer, size = [], 0
        if buffer:
            copy.write("".join(buffer))


class BatchWriter:
    """One PostgreSQL connection; writes batches, one transaction each.

    Fast path (new events, the bulk of a first run): upsert the batch's aggregate rows,
    read back their keys, COPY the events straight into ``event``. If any event row already
    exists COPY fails on the unique constraint, and the batch is redone through the staging
    table with ``INSERT … ON CONFLICT DO NOTHING``, which also compares existing rows' content.
    Dry runs always take the staging path and roll back.
    """

    def __init__(self, opts: MigrateOptions, run_id: str, *, target_exists: bool = True) -> None:
        self.opts = opts
        self.run_id = run_id
        self.target_exists = target_exists
        """False in a dry run before --init-schema created anything: nothing can be present."""
        self.conn = pg.connect(opts.pg_dsn, application_name="esctl migrate writer")
        self.toast_compression: str | None = None
        with pg.translate_errors(opts.pg_dsn):
            if opts.toast_compression:
                try:
                    self.conn.execute(
                        sql.SQL("SET default_toast_compression = {}").format(
                            sql.Literal(opts.toast_compression)
                        )
                    )
                    self.conn.commit()
                    self.toast_compression = opts.toast_compression
                except psycopg.Error:
                    # PostgreSQL < 14 or built without lz4: keep the server default.
                    self.conn.rollback()
            self.conn.execute(STAGE_DDL)
            self.conn.commit()
        s = sql.Identifier(opts.pg_schema)
        self.sql_upsert_aggregates = sql.SQL(
            "INSERT INTO {s}.aggregate (aggregate_id, aggregate_type, application_name)"
            " SELECT u.id, u.type, %(app)s FROM unnest(%(ids)s::text[], %(types)s::text[])"
            "   AS u(id, type)"
            " ON CONFLICT DO NOTHING"
        ).format(s=s)
        # LATERAL + OFFSET 0: an index lookup per id, never a hash of the whole (growing) table.
        self.sql_aggregate_keys = sql.SQL(
            "SELECT u.id, a.aggregate_type, a.aggregate_key"
            "  FROM unnest(%(ids)s::text[]) AS u(id) CROSS JOIN LATERAL ("
            "    SELECT aggregate_type, aggregate_key FROM {s}.aggregate"
            "     WHERE aggregate_id = u.id AND application_name = %(app)s OFFSET 0) a"
        ).format(s=s)
        self.sql_copy_events = sql.SQL(
            "COPY {s}.event (aggregate_key, time_stamp, version, event_type, event_data) FROM STDIN"
        ).format(s=s)
        self.sql_insert_staged = sql.SQL(
            "INSERT INTO {s}.event (aggregate_key, time_stamp, version, event_type, event_data)"
            " SELECT a.aggregate_key, st.time_stamp, st.version, st.event_type, st.event_data"
            "   FROM esctl_stage st JOIN {s}.aggregate a"
            "     ON a.aggregate_id = st.aggregate_id AND a.application_name = %(app)s"
            "    AND a.aggregate_type = st.aggregate_type"
            " ON CONFLICT DO NOTHING"
        ).format(s=s)
        # Staged rows whose version already exists with other content.
        self.sql_conflicts = sql.SQL(
            "SELECT st.aggregate_id, st.version,"
            "       e.event_type <> st.event_type, e.time_stamp <> st.time_stamp,"
            "       e.event_data <> st.event_data"
            "  FROM esctl_stage st"
            "  JOIN {s}.aggregate a ON a.aggregate_id = st.aggregate_id"
            "   AND a.application_name = %(app)s AND a.aggregate_type = st.aggregate_type"
            "  JOIN {s}.event e ON e.aggregate_key = a.aggregate_key AND e.version = st.version"
            " WHERE e.event_type <> st.event_type OR e.time_stamp <> st.time_stamp"
            "    OR e.event_data <> st.event_data"
        ).format(s=s)
        self.sql_present = sql.SQL(
            "SELECT count(*) FROM esctl_stage st"
            "  JOIN {s}.aggregate a ON a.aggregate_id = st.aggregate_id"
            "   AND a.application_name = %(app)s AND a.aggregate_type = st.aggregate_type"
            "  JOIN {s}.event e ON e.aggregate_key = a.aggregate_key AND e.version = st.version"
        ).format(s=s)

    def close(self) -> None:
        self.conn.close()

    def write(self, batch: Batch) -> BatchResult:
        """Write one batch in one transaction (retrying deadlocks). A value PostgreSQL rejects
        quarantines only the aggregate holding it."""
        for attempt in range(MAX_DEADLOCK_RETRIES + 1):
            try:
                return self._write_batch(batch, batch.clean)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                self.conn.rollback()
                if attempt == MAX_DEADLOCK_RETRIES:
                    raise
                time.sleep(0.05 * (attempt + 1))
            except psycopg.errors.DataError:
                self.conn.rollback()
                return self._write_isolating(batch)
        raise AssertionError("unreachable")

    def _write_batch(self, batch: Batch, clean: dict[str, AggregateRows]) -> BatchResult:
        quarantined = list(batch.quarantined)
        with self.conn.cursor() as cur:
            inserted, present, rejected = self.write_groups(cur, clean)
            for aggregate_id, (kind, details) in rejected.items():
                quarantined.append(self._quarantine(clean, aggregate_id, kind, details))
            self._finish(cur, batch, clean, quarantined, inserted, present)
        return BatchResult(batch.seq, batch.aggregates, inserted, present, quarantined)

    def write_groups(
        self, cur: psycopg.Cursor[Any], clean: dict[str, AggregateRows]
    ) -> tuple[int, int, dict[str, tuple[str, list[str]]]]:
        """Insert the aggregates' events. Returns (inserted, already present, rejected
        aggregates: id -> (kind, details)). Rejected ones are removed from ``clean``'s
        effect: nothing of theirs stays written."""
        rejected: dict[str, tuple[str, list[str]]] = {}
        if not clean:
            return 0, 0, rejected
        if not self.target_exists:
            return sum(len(g.rows) for g in clean.values()), 0, rejected
        params: dict[str, Any] = {"app": self.opts.app}
        cur.execute("SAVEPOINT esctl_batch")
        keys, clashes = self._aggregate_keys(cur, clean, params)
        if clashes:
            # Undo the aggregate rows just added for them and try again without them.
            cur.execute("ROLLBACK TO SAVEPOINT esctl_batch")
            rejected.update({a: ("conflict", d) for a, d in clashes.items()})
            remaining = {a: g for a, g in clean.items() if a not in clashes}
            inserted, present, more = self.write_groups(cur, remaining)
            rejected.update(more)
            return inserted, present, rejected
        if not self.opts.dry_run:
            events = sum(len(g.rows) for g in clean.values())
            try:
                cur.execute("SAVEPOINT esctl_copy")
                _copy(
                    cur,
                    self.sql_copy_events,
                    (f"{keys[a]}\t{row}" for a, g in clean.items() for row in g.rows),
                )
                return events, 0, rejected
            except psycopg.errors.UniqueViolation:
                # Some rows exist already: compare them through the staging table.
                cur.execute("ROLLBACK TO SAVEPOINT esctl_copy")
        inserted, present, conflicts = self._write_staged(cur, clean, params)
        if conflicts:
            if not self.opts.dry_run:
                cur.execute("ROLLBACK TO SAVEPOINT esctl_batch")
            cur.execute("TRUNCATE esctl_stage")
            rejected.update({a: ("conflict", d) for a, d in conflicts.items()})
            remaining = {a: g for a, g in clean.items() if a not in conflicts}
            inserted, present, more = self.write_groups(cur, remaining)
            rejected.update(more)
        return inserted, present, rejected

    def _aggregate_keys(
        self, cur: psycopg.Cursor[Any], clean: dict[str, AggregateRows], params: dict[str, Any]
    ) -> tuple[dict[str, int], dict[str, list[str]]]:
        """Add missing aggregate rows (not in a dry run); return their keys and the ids
        PostgreSQL already holds under another aggregate type (the library's read function
        would mix both streams)."""
        ids = list(clean)
        params = params | {"ids": ids, "types": [clean[a].aggregate_type for a in ids]}
        if not self.opts.dry_run:
            cur.execute(self.sql_upsert_aggregates, params)
        keys: dict[str, int] = {}
        clashes: dict[str, list[str]] = {}
        for aggregate_id, aggregate_type, key in cur.execute(self.sql_aggregate_keys, params):
            if aggregate_type == clean[aggregate_id].aggregate_type:
                keys[aggregate_id] = key
            else:
                clashes.setdefault(aggregate_id, []).append(
                    f"PostgreSQL already holds aggregate {aggregate_id!r} of {self.opts.app} "
                    f"as type {aggregate_type!r}"
                )
        return keys, clashes

    def _write_staged(
        self, cur: psycopg.Cursor[Any], clean: dict[str, AggregateRows], params: dict[str, Any]
    ) -> tuple[int, int, dict[str, list[str]]]:
        """COPY into the staging table, then insert what is missing. Returns (inserted, already
        present, conflicting aggregates). In a dry run only counts."""
        _copy(
            cur,
            "COPY esctl_stage (aggregate_id, aggregate_type, time_stamp, version, event_type,"
            " event_data) FROM STDIN",
            (
                f"{copy_escape(a)}\t{copy_escape(g.aggregate_type)}\t{row}"
                for a, g in clean.items()
                for row in g.rows
            ),
        )
        # Fresh statistics so the joins below stay index lookups as the tables grow.
        cur.execute("ANALYZE esctl_stage (aggregate_id, aggregate_type, version)")
        staged = sum(len(g.rows) for g in clean.values())
        conflicts: dict[str, list[str]] = {}
        if self.opts.dry_run:
            present = _count(cur, self.sql_present, params)
            inserted = staged - present
        else:
            cur.execute(self.sql_insert_staged, params)
            inserted = cur.rowcount
            present = staged - inserted
        if present:
            for aggregate_id, version, t, ts, d in cur.execute(self.sql_conflicts, params):
                conflicts.setdefault(aggregate_id, []).append(_conflict_detail(version, t, ts, d))
        return inserted, present, conflicts

    def _quarantine(
        self, clean: dict[str, AggregateRows], aggregate_id: str, kind: str, details: list[str]
    ) -> Quarantined:
        group = clean.get(aggregate_id)
        return Quarantined(
            aggregate_id,
            layout.commit_list_key(self.opts.app, aggregate_id),
            len(group.rows) if group else 0,
            [StreamProblem(kind, d) for d in details[:20]],
        )

    def _finish(
        self,
        cur: psycopg.Cursor[Any],
        batch: Batch,
        clean: dict[str, AggregateRows],
        quarantined: list[Quarantined],
        inserted: int,
        present: int,
    ) -> None:
        """Bookkeeping in the batch's transaction, then commit (a dry run rolls back)."""
        if self.opts.dry_run:
            self.conn.rollback()
            return
        done = {q.aggregate_id for q in quarantined}
        ids = [a for a in clean if a not in done]
        if ids:
            cur.execute(
                "INSERT INTO esctl.migrated_stream AS m (target_schema, application_name,"
                " aggregate_id, aggregate_type, commits, last_commit_id)"
                " SELECT %s, %s, u.id, u.type, u.commits, u.last"
                "   FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[])"
                "     AS u(id, type, commits, last)"
                " ON CONFLICT (target_schema, application_name, aggregate_id) DO UPDATE"
                "   SET commits = excluded.commits, last_commit_id = excluded.last_commit_id,"
                "       aggregate_type = excluded.aggregate_type, updated_at = now()"
                " WHERE m.commits < excluded.commits",
                (
                    self.opts.pg_schema,
                    self.opts.app,
                    ids,
                    [clean[a].aggregate_type for a in ids],
                    [clean[a].commits for a in ids],
                    [clean[a].last_commit_id for a in ids],
                ),
            )
        records = [
            (
                self.run_id,
                self.opts.pg_schema,
                self.opts.app,
                q.aggregate_id,
                p.commit_id if p.commit_id is None else redisio.printable(p.commit_id),
                p.kind,
                redisio.printable(p.detail),
                p.stored,
                q.events,
            )
            for q in quarantined
            for p in q.problems
        ]
        if records:
            cur.executemany(
                "INSERT INTO esctl.quarantine (run_id, target_schema, application_name,"
                " aggregate_id, commit_id, kind, detail, stored_value, events)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                records,
            )
        cur.execute(
            "INSERT INTO esctl.migration_batch (run_id, seq, scan_position, aggregates,"
            " events_migrated, events_already_present, aggregates_quarantined,"
            " events_quarantined) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                self.run_id,
                batch.seq,
                batch.position,
                batch.aggregates,
                inserted,
                present,
                len(quarantined),
                sum(q.events for q in quarantined),
            ),
        )
        self.conn.commit()

    def _write_isolating(self, batch: Batch) -> BatchResult:
        """Slow path after PostgreSQL rejected a value: one savepoint per aggregate, so only
        the aggregate holding the value is quarantined."""
        quarantined = list(batch.quarantined)
        inserted = present = 0
        with self.conn.cursor() as cur:
            for aggregate_id, group in batch.clean.items():
                cur.execute("SAVEPOINT esctl_one")
                try:
                    i, p, rejected = self.write_groups(cur, {aggregate_id: group})
                except psycopg.errors.DataError as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT esctl_one")
                    detail = f"PostgreSQL rejected a value: {str(exc).strip()}"
                    rejected = {aggregate_id: ("rejected_by_postgres", [detail])}
                    i = p = 0
                for rejected_id, (kind, details) in rejected.items():
                    quarantined.append(self._quarantine(batch.clean, rejected_id, kind, details))
                inserted += i
                present += p
                cur.execute("TRUNCATE esctl_stage")
                cur.execute("RELEASE SAVEPOINT esctl_one")
            self._finish(cur, batch, batch.clean, quarantined, inserted, present)
        return BatchResult(batch.seq, batch.aggregates, inserted, present, quarantined)


def _count(cur: psycopg.Cursor[Any], query: Any, params: Any = None) -> int:
    row = cur.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def _conflict_detail(version: int, type_differs: bool, ts_differs: bool, data_differs: bool) -> str:
    what = [
        name
        for name, differs in (
            ("event_type", type_differs),
            ("time_stamp", ts_differs),
            ("event_data", data_differs),
        )
        if differs
    ]
    return f"version {version}: PostgreSQL already holds it with another {', '.join(what)}"


# --- reader --------------------------------------------------------------------------------


class Reader:
    """Turns SCAN pages of commit lists into batches of checked, whole aggregates."""

    def __init__(
        self,
        client: redisio.RedisClient,
        opts: MigrateOptions,
        conn: psycopg.Connection,
        state_present: bool,
    ) -> None:
        self.client = client
        self.opts = opts
        self.conn = conn
        self.state_present = state_present
        self.pacer = redisio.LatencyPacer(client, opts.rate, opts.max_redis_latency_ms)
        self.unchanged = 0
        self.commits_seen = 0
        # On a first run nothing is migrated yet: skip the per-page lookup (it competes with
        # the writers for PostgreSQL's CPU; measured 30% of a first run's wall time). An
        # aggregate SCAN returns twice is still safe: the writer finds its rows present.
        self.lookups = state_present and self._any_migrated()

    def _any_migrated(self) -> bool:
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM esctl.migrated_stream"
            " WHERE target_schema = %s AND application_name = %s)",
            (self.opts.pg_schema, self.opts.app),
        ).fetchone()
        self.conn.commit()
        return bool(row and row[0])

    def migrated(self, ids: Sequence[str]) -> dict[str, tuple[int, str, str]]:
        """aggregate id -> (commits migrated, last commit id, aggregate type)."""
        if not self.lookups or not ids:
            return {}
        rows = self.conn.execute(
            # LATERAL with OFFSET 0 (which the planner may not flatten) keeps the plan one index
            # lookup per id whatever the table's statistics say: ``= ANY`` degraded to a filter over all the app's rows (500 ms a page at 30k
            # aggregates) and a plain join to a hash of them (O(store) per page).
            "SELECT u.id, m.commits, m.last_commit_id, m.aggregate_type"
            "  FROM unnest(%s::text[]) AS u(id) CROSS JOIN LATERAL ("
            "    SELECT commits, last_commit_id, aggregate_type FROM esctl.migrated_stream"
            "     WHERE target_schema = %s AND application_name = %s AND aggregate_id = u.id"
            "    OFFSET 0) m",
            (list(ids), self.opts.pg_schema, self.opts.app),
        ).fetchall()
        self.conn.commit()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def batches(self, start: redisio.ScanPosition, first_seq: int) -> Iterator[Batch]:
        """Batches of whole aggregates holding about ``batch_size`` events each. A batch that
        ends inside a SCAN page carries the position before that page (a resume rereads the
        page; its aggregates already migrated are skipped); the one that ends the page carries
        the position after it."""
        self._seq = first_seq
        self._batch = Batch(self._seq, start.encode())
        pages = redisio.scan_pages(
            self.client,
            layout.commit_list_pattern(self.opts.app),
            type_="list",
            count=self.opts.scan_count,
            start=start,
        )
        before = start.encode()
        for position, keys in pages:
            yield from self._add_page(keys, before)
            before = replace(position, epoch=start.epoch).encode()
            self._batch.position = before
            if self._full():
                yield self._seal(before)
        if self._batch.aggregates or self._batch.position != start.encode():
            yield self._batch

    def _full(self) -> bool:
        size = self.opts.batch_size
        return self._batch.events >= size or self._batch.aggregates >= size

    def _seal(self, position: str) -> Batch:
        """Hand out the current batch (at ``position``) and start the next one."""
        sealed = self._batch
        sealed.position = position
        self._seq += 1
        self._batch = Batch(self._seq, position)
        return sealed

    def _add_page(self, keys: list[str], page_start: str) -> Iterator[Batch]:
        app = self.opts.app
        ids = [layout.aggregate_id_from_commit_list_key(app, k) for k in keys]
        ids = [a for a in ids if self.opts.shard.owns(a)]
        for aggregate_id in [a for a in ids if not redisio.is_utf8(a)]:
            ids.remove(aggregate_id)
            self._batch.aggregates += 1
            self._batch.quarantined.append(
                Quarantined(
                    redisio.printable(aggregate_id),
                    redisio.printable(layout.commit_list_key(app, aggregate_id)),
                    0,
                    [
                        StreamProblem(
                            "unsupported_by_postgres",
                            "the commit list key is not UTF-8: PostgreSQL text cannot hold "
                            "its aggregate id",
                        )
                    ],
                )
            )
        if not ids:
            return
        known = self.migrated(ids)
        # Only aggregates migrated before need their length first (to skip unchanged ones);
        # the others are read whole straight away.
        known_ids = [a for a in ids if a in known]
        lengths = dict(
            zip(
                known_ids,
                redisio.list_lengths(
                    self.client, [layout.commit_list_key(app, a) for a in known_ids]
                ),
                strict=True,
            )
        )
        todo: list[str] = []
        starts: list[int] = []
        for aggregate_id in ids:
            if aggregate_id not in known:
                todo.append(aggregate_id)
                starts.append(0)
                continue
            done, length = known[aggregate_id][0], lengths[aggregate_id]
            if length == done:
                self.unchanged += 1
                self.commits_seen += length
            elif length < done:
                self._batch.aggregates += 1
                self._batch.quarantined.append(
                    Quarantined(
                        aggregate_id,
                        layout.commit_list_key(app, aggregate_id),
                        0,
                        [
                            StreamProblem(
                                "commit_list_shrunk",
                                f"the commit list has {length} entries but {done} were migrated",
                            )
                        ],
                    )
                )
            else:
                todo.append(aggregate_id)
                starts.append(done - 1)  # the last migrated commit, to check continuity
        if not todo:
            return
        keys_todo = [layout.commit_list_key(app, a) for a in todo]
        lists = redisio.commit_lists(self.client, keys_todo, starts)
        self.commits_seen += sum(starts)
        # Payloads are fetched in chunks of about a batch, so memory stays bounded by the batch
        # size (or the largest aggregate) rather than by what one SCAN page names.
        chunk: list[int] = []
        chunk_events = 0
        for index, commit_ids in enumerate(lists):
            chunk.append(index)
            chunk_events += len(commit_ids)
            if chunk_events >= self.opts.batch_size or index == len(lists) - 1:
                yield from self._add_chunk(
                    [todo[i] for i in chunk],
                    [keys_todo[i] for i in chunk],
                    [starts[i] for i in chunk],
                    [lists[i] for i in chunk],
                    known,
                    page_start,
                )
                chunk, chunk_events = [], 0

    def _add_chunk(
        self,
        ids: list[str],
        keys: list[str],
        starts: list[int],
        lists: list[list[str]],
        known: dict[str, tuple[int, str, str]],
        page_start: str,
    ) -> Iterator[Batch]:
        flat = [c for commit_ids in lists for c in commit_ids]
        self.commits_seen += len(flat)
        self.pacer.wait(len(flat))
        values, where = redisio.fetch_values(self.client, self.opts.app, flat)
        offset = 0
        for aggregate_id, key, start, commit_ids in zip(ids, keys, starts, lists, strict=True):
            end = offset + len(commit_ids)
            self._batch.aggregates += 1
            self._add_aggregate(
                self._batch,
                aggregate_id,
                key,
                start,
                commit_ids,
                values[offset:end],
                where[offset:end],
                known.get(aggregate_id),
            )
            offset = end
            if self._full():
                yield self._seal(page_start)

    def _add_aggregate(
        self,
        batch: Batch,
        aggregate_id: str,
        key: str,
        start: int,
        commit_ids: list[str],
        values: list[bytes | None],
        where: list[str | None],
        known: tuple[int, str, str] | None,
    ) -> None:
        done, last_commit, known_type = known if known else (0, "", None)
        skip = 1 if done else 0
        continuous = not done or (bool(commit_ids) and commit_ids[0] == last_commit)
        if continuous:
            fast = clean_rows(
                aggregate_id, values[skip:], first_version=done + 1, known_type=known_type
            )
            if fast is not None:
                aggregate_type, fast_rows = fast
                batch.events += len(fast_rows)
                batch.clean[aggregate_id] = AggregateRows(
                    aggregate_type, fast_rows, done + len(fast_rows), commit_ids[-1]
                )
                return
        # The general path finds and describes whatever kept the fast path from taking it.
        stream = build_stream(aggregate_id, key, commit_ids, values, where, first_position=start)
        if not continuous:
            stream.problems.append(
                StreamProblem(
                    "commit_list_changed",
                    f"entry {start} of the commit list is not the last migrated commit "
                    f"{last_commit}: the list was rewritten",
                )
            )
        else:
            validate_stream(stream, first_version=done + 1, known_type=known_type, skip=skip)
        new_events = len(stream.events) - skip
        if stream.ok:
            stream.events = stream.events[skip:]
            rows = stream_rows(stream)
            if isinstance(rows, StreamProblem):
                stream.problems.append(rows)
            else:
                batch.events += len(rows)
                stream_type = stream.aggregate_type
                if stream_type is None:
                    stream_type = known_type or ""
                batch.clean[aggregate_id] = AggregateRows(
                    stream_type, rows, done + new_events, commit_ids[-1]
                )
                return
        batch.quarantined.append(Quarantined(aggregate_id, key, new_events, stream.problems))


# --- the operation -------------------------------------------------------------------------


def _resume_point(
    conn: psycopg.Connection, run_id: str, epoch: str
) -> tuple[redisio.ScanPosition, int]:
    """The position reached by the gap-free prefix of committed batches, and the next seq.
    A SCAN cursor means nothing to a restarted server (or another primary after a failover):
    when Redis is not the one the position was taken on (``epoch``), the scan starts over;
    aggregates already migrated are then skipped by their bookkeeping."""
    rows = conn.execute(
        "SELECT seq, scan_position FROM esctl.migration_batch WHERE run_id = %s ORDER BY seq",
        (run_id,),
    ).fetchall()
    position = redisio.ScanPosition()
    expected = 1
    for seq, scan_position in rows:
        if seq != expected:
            break
        position = redisio.ScanPosition.decode(scan_position)
        expected += 1
    if position.epoch != epoch:
        position = redisio.ScanPosition()
    next_seq = (rows[-1][0] + 1) if rows else 1
    return position, next_seq


def migrate_redis_to_pg(
    client: redisio.RedisClient,
    opts: MigrateOptions,
    *,
    on_progress: Callable[[Progress], None] | None = None,
) -> MigrationSummary:
    """Run (or resume) a migration; see the module docstring for what it promises.

    Raises LockHeld when another run holds this app/schema/shard's lock, ConnectionFailed when
    a server goes away (the committed batches stay; rerunning continues), KeyboardInterrupt
    after the in-flight batches were committed or rolled back.
    """
    if opts.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    started = time.monotonic()
    dsn = opts.pg_dsn
    lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if not opts.dry_run:
        lock = AdvisoryLock(
            dsn,
            f"esctl:migrate:{opts.pg_schema}:{opts.app}:{opts.shard}",
            held=f"another migration of {opts.app} into schema {opts.pg_schema} "
            f"(shard {opts.shard}) is running",
        )
    with lock:
        control = pg.connect(dsn, application_name="esctl migrate")
        try:
            with pg.translate_errors(dsn):
                if opts.dry_run:
                    # A dry run creates nothing: with --init-schema and no tables yet, every
                    # event counts as one that would be migrated.
                    target_exists = pg.check_event_store_schema(
                        control, opts.pg_schema
                    ).tables_present
                    if not target_exists and not opts.init_schema:
                        pg.ensure_event_store_schema(control, opts.pg_schema, create=False)
                else:
                    pg.ensure_event_store_schema(control, opts.pg_schema, create=opts.init_schema)
                    pg.ensure_state_schema(control)
                    target_exists = True
                control.commit()
                state_present = pg.state_schema_present(control)
                epoch = redisio.scan_epoch(client)
                run_id, start, first_seq, resumed = _open_run(control, opts, epoch)
                start = replace(start, epoch=epoch)
            return _run(
                client,
                opts,
                control,
                run_id,
                start,
                first_seq,
                resumed,
                state_present,
                target_exists,
                started,
                on_progress,
            )
        finally:
            control.close()


def _open_run(
    conn: psycopg.Connection, opts: MigrateOptions, epoch: str
) -> tuple[str, redisio.ScanPosition, int, bool]:
    job = (opts.pg_schema, opts.app, str(opts.shard))
    if opts.dry_run:
        return "dry-run-" + uuid.uuid4().hex[:12], redisio.ScanPosition(), 1, False
    if opts.restart:
        conn.execute(
            "UPDATE esctl.migration_run SET status = 'abandoned', finished_at = now()"
            " WHERE target_schema = %s AND application_name = %s AND shard = %s"
            "   AND status <> 'finished'",
            job,
        )
    row = conn.execute(
        "SELECT run_id FROM esctl.migration_run"
        " WHERE target_schema = %s AND application_name = %s AND shard = %s"
        "   AND status NOT IN ('finished', 'abandoned')"
        " ORDER BY started_at DESC LIMIT 1",
        job,
    ).fetchone()
    if row is not None:
        run_id = row[0]
        position, next_seq = _resume_point(conn, run_id, epoch)
        conn.execute(
            "UPDATE esctl.migration_run SET status = 'running' WHERE run_id = %s", (run_id,)
        )
        conn.commit()
        return run_id, position, next_seq, True
    run_id = uuid.uuid4().hex
    conn.execute(
        "INSERT INTO esctl.migration_run (run_id, target_schema, application_name, shard,"
        " status, options) VALUES (%s, %s, %s, %s, 'running', %s)",
        (
            run_id,
            *job,
            orjson.dumps({"batch_size": opts.batch_size, "writers": opts.writers}).decode(),
        ),
    )
    conn.commit()
    return run_id, redisio.ScanPosition(), 1, False


def _run_totals(
    conn: psycopg.Connection, app: str, run_id: str
) -> tuple[int, int, int, int, list[dict[str, str]]]:
    """Events migrated and already present, aggregates and events quarantined, and the problems
    of a whole run, from what its batches committed. An aggregate quarantined again after a
    resume (its batch lay past the resume point) counts once."""
    row = conn.execute(
        "SELECT coalesce(sum(events_migrated), 0), coalesce(sum(events_already_present), 0)"
        "  FROM esctl.migration_batch WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    migrated, present = (int(row[0]), int(row[1])) if row else (0, 0)
    rows = conn.execute(
        "SELECT DISTINCT ON (aggregate_id, kind, detail) aggregate_id, kind, detail, events"
        "  FROM esctl.quarantine WHERE run_id = %s"
        " ORDER BY aggregate_id, kind, detail, quarantine_id",
        (run_id,),
    ).fetchall()
    conn.commit()
    events_by_aggregate: dict[str, int] = {}
    problems = []
    for aggregate_id, kind, detail, events in rows:
        events_by_aggregate[aggregate_id] = max(events, events_by_aggregate.get(aggregate_id, 0))
        problems.append(
            {"kind": kind, "key": layout.commit_list_key(app, aggregate_id), "detail": detail}
        )
    return (
        migrated,
        present,
        len(events_by_aggregate),
        sum(events_by_aggregate.values()),
        problems,
    )


def _set_status(conn: psycopg.Connection, run_id: str, status: str) -> None:
    try:
        conn.rollback()
        conn.execute(
            "UPDATE esctl.migration_run SET status = %s,"
            " finished_at = CASE WHEN %s = 'finished' THEN now() END WHERE run_id = %s",
            (status, status, run_id),
        )
        conn.commit()
    except psycopg.Error:
        pass  # the connection is gone; the run stays resumable as it is


def _run(
    client: redisio.RedisClient,
    opts: MigrateOptions,
    control: psycopg.Connection,
    run_id: str,
    start: redisio.ScanPosition,
    first_seq: int,
    resumed: bool,
    state_present: bool,
    target_exists: bool,
    started: float,
    on_progress: Callable[[Progress], None] | None,
) -> MigrationSummary:
    dsn = opts.pg_dsn
    writers_n = 1 if opts.dry_run else max(1, opts.writers)
    work: queue.Queue[Batch | None] = queue.Queue(maxsize=writers_n)
    results: list[BatchResult] = []
    results_lock = threading.Lock()
    failure: list[BaseException] = []
    stop = threading.Event()
    writers = [BatchWriter(opts, run_id, target_exists=target_exists) for _ in range(writers_n)]
    toast = writers[0].toast_compression

    def write_loop(writer: BatchWriter) -> None:
        try:
            while True:
                batch = work.get()
                if batch is None or stop.is_set():
                    return
                with pg.translate_errors(dsn):
                    result = writer.write(batch)
                with results_lock:
                    results.append(result)
        except BaseException as exc:  # handed to the reader thread, which re-raises it
            failure.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=write_loop, args=(w,), name=f"esctl-writer-{i}", daemon=True)
        for i, w in enumerate(writers)
    ]
    for t in threads:
        t.start()

    reader = Reader(client, opts, control, state_present)
    progress = Progress()
    stopped_early: str | None = None
    redis_problems_seen = 0
    events_read = 0
    aggregates = 0

    def report() -> None:
        if on_progress is None:
            return
        with results_lock:
            done = list(results)
        progress.aggregates = aggregates
        progress.events_read = events_read
        progress.commits_seen = reader.commits_seen
        progress.events_migrated = sum(r.inserted for r in done)
        progress.events_already_present = sum(r.already_present for r in done)
        progress.aggregates_quarantined = sum(len(r.quarantined) for r in done)
        progress.events_quarantined = sum(q.events for r in done for q in r.quarantined)
        on_progress(progress)

    def put(item: Batch | None) -> None:
        # Once a writer failed nobody may drain the queue: give up instead of blocking.
        while True:
            if stop.is_set():
                with contextlib.suppress(queue.Full):
                    work.put_nowait(item)
                return
            try:
                work.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    try:
        try:
            with pg.translate_errors(dsn):
                for batch in reader.batches(start, first_seq):
                    if stop.is_set():
                        break
                    aggregates += batch.aggregates
                    events_read += batch.events
                    redis_problems_seen += len(batch.quarantined)
                    put(batch)
                    report()
                    if opts.max_problems is not None and redis_problems_seen > opts.max_problems:
                        stopped_early = (
                            f"more than {opts.max_problems} aggregates with problems "
                            "(--max-problems)"
                        )
                        break
        finally:
            for _ in threads:
                put(None)
            for t in threads:
                t.join()
            for w in writers:
                w.close()
        if failure:
            raise failure[0]
    except KeyboardInterrupt:
        stop.set()
        if not opts.dry_run:
            _set_status(control, run_id, "interrupted")
        raise
    except Exception:
        if not opts.dry_run:
            _set_status(control, run_id, "failed")
        raise

    if not opts.dry_run:
        _set_status(control, run_id, "finished" if stopped_early is None else "stopped")
    report()
    elapsed = time.monotonic() - started
    migrated = sum(r.inserted for r in results)
    quarantined = [q for r in results for q in r.quarantined]
    problems = [
        {"kind": p.kind, "key": q.key, "detail": p.detail} for q in quarantined for p in q.problems
    ]
    already_present = sum(r.already_present for r in results)
    aggregates_quarantined = len(quarantined)
    events_quarantined = sum(q.events for q in quarantined)
    invocation = Invocation(
        aggregates + reader.unchanged,
        reader.unchanged,
        migrated,
        already_present,
        aggregates_quarantined,
        events_quarantined,
    )
    if resumed:
        # The summary of a resumed run covers the whole run, interrupted invocations included.
        with pg.translate_errors(dsn):
            (
                migrated_total,
                already_present,
                aggregates_quarantined,
                events_quarantined,
                problems,
            ) = _run_totals(control, opts.app, run_id)
    else:
        migrated_total = migrated
    return MigrationSummary(
        run_id=run_id,
        dry_run=opts.dry_run,
        resumed=resumed,
        aggregates=aggregates + reader.unchanged,
        aggregates_unchanged=reader.unchanged,
        events_migrated=migrated_total,
        events_already_present=already_present,
        aggregates_quarantined=aggregates_quarantined,
        events_quarantined=events_quarantined,
        problems=problems,
        elapsed_s=elapsed,
        events_per_s=(migrated / elapsed) if elapsed > 0 else 0.0,
        stopped_early=stopped_early,
        toast_compression=toast,
        this_invocation=invocation if resumed else None,
    )


def count_commits(client: redisio.RedisClient, app: str, shard: Shard) -> tuple[int, int]:
    """A quick count for progress bars: (commit lists, commit-list entries) of ``app`` in
    ``shard``. SCAN plus pipelined LLEN; reads no payloads."""
    lists = entries = 0
    for _, keys in redisio.scan_pages(client, layout.commit_list_pattern(app), type_="list"):
        keys = [k for k in keys if shard.owns(layout.aggregate_id_from_commit_list_key(app, k))]
        lists += len(keys)
        entries += sum(redisio.list_lengths(client, keys))
    return lists, entries


# --- several processes ---------------------------------------------------------------------


def _migrate_in_process(
    redis_url: str,
    connect: dict[str, bool],
    opts: MigrateOptions,
    index: int,
    progress: Any,
) -> MigrationSummary:
    client = redisio.connect(redis_url, **connect)
    try:
        report = None if progress is None else lambda p: progress.put((index, p))
        return migrate_redis_to_pg(client, opts, on_progress=report)
    finally:
        client.close()


def migrate_parallel(
    redis_url: str,
    opts: MigrateOptions,
    *,
    workers: int,
    cluster: bool = False,
    read_from_replicas: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> MigrationSummary:
    """:func:`migrate_redis_to_pg` in ``workers`` local processes, one sub-shard of
    ``opts.shard`` each (``Shard.split``): each has its own lock, checkpoint and resume, so a
    rerun with the same ``workers`` continues every part. Together they own exactly the
    aggregates of ``opts.shard``. Counts add up, problems are concatenated; ``on_progress``
    gets the sum of every worker's latest figures. The first worker error is raised after the
    others have finished (their committed batches stay)."""
    if workers <= 1:
        client = redisio.connect(redis_url, cluster=cluster, read_from_replicas=read_from_replicas)
        try:
            return migrate_redis_to_pg(client, opts, on_progress=on_progress)
        finally:
            client.close()
    started = time.monotonic()
    parts = [replace(opts, shard=shard) for shard in opts.shard.split(workers)]
    connect = {"cluster": cluster, "read_from_replicas": read_from_replicas}
    # fork starts in milliseconds. Each worker opens its own connections and uses nothing
    # the parent's threads (a progress count) may hold.
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with contextlib.ExitStack() as stack:
        progress = None
        if on_progress is not None:
            progress = stack.enter_context(context.Manager()).Queue()
        pool = stack.enter_context(ProcessPoolExecutor(len(parts), mp_context=context))
        futures = [
            pool.submit(_migrate_in_process, redis_url, connect, part, index, progress)
            for index, part in enumerate(parts)
        ]
        latest: dict[int, Progress] = {}
        while progress is not None and on_progress is not None:
            running = not all(f.done() for f in futures)
            try:
                index, figures = progress.get(timeout=0.2 if running else 0)
            except queue.Empty:
                if running:
                    continue
                break
            latest[index] = figures
            total = Progress()
            for f in fields(Progress):
                setattr(total, f.name, sum(getattr(p, f.name) for p in latest.values()))
            on_progress(total)
        wait(futures)
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error
    results = [f.result() for f in futures]
    elapsed = time.monotonic() - started
    migrated = sum(r.events_migrated for r in results)
    resumed = any(r.resumed for r in results)
    invocation = sum((r.invocation() for r in results), start=Invocation(0, 0, 0, 0, 0, 0))
    return MigrationSummary(
        run_id=",".join(r.run_id for r in results),
        dry_run=opts.dry_run,
        resumed=resumed,
        aggregates=sum(r.aggregates for r in results),
        aggregates_unchanged=sum(r.aggregates_unchanged for r in results),
        events_migrated=migrated,
        events_already_present=sum(r.events_already_present for r in results),
        aggregates_quarantined=sum(r.aggregates_quarantined for r in results),
        events_quarantined=sum(r.events_quarantined for r in results),
        problems=[p for r in results for p in r.problems],
        elapsed_s=elapsed,
        events_per_s=invocation.events_migrated / elapsed if elapsed > 0 else 0.0,
        stopped_early="; ".join(
            f"shard {part.shard}: {r.stopped_early}"
            for part, r in zip(parts, results, strict=True)
            if r.stopped_early
        )
        or None,
        toast_compression=results[0].toast_compression,
        this_invocation=invocation if resumed else None,
    )
