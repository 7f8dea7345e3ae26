"""Migrated events read back from PostgreSQL: the rows (or per-aggregate columns) of some
aggregates, and what esctl recorded as migrated (commits, whether any, with which transforms).
Shared by ``migrate``, ``migrate verify``, ``migrate prune`` and doctor
(docs/design/performance.md, section 7); and which apps have aggregates at all (the note on
a mistyped ``--app`` of the commands that read PostgreSQL)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg.types.numeric import Int8BinaryLoader
from psycopg.types.string import ByteaBinaryLoader

from esctl import pg
from esctl.pg import text_array


class PageScope(Protocol):
    """Whose events a page holds: what :func:`pg_page` and :func:`pg_stream_page` read of their
    options (verify's and prune's)."""

    @property
    def app(self) -> str: ...

    @property
    def pg_schema(self) -> str: ...


class PgEvent(NamedTuple):
    """One PostgreSQL row as verify reads it (a tuple: psycopg builds it, no per-row Python
    call; a frozen dataclass cost ~2x more per row)."""

    aggregate_id: str
    aggregate_type: str
    version: int
    event_type: str
    time_stamp: datetime
    event_data: bytes
    """The jsonb's text, UTF-8."""


def pg_events(
    conn: psycopg.Connection, schema: str, app: str, ids: Sequence[str]
) -> dict[str, list[PgEvent]]:
    """The PostgreSQL rows of the given aggregates, by aggregate id (in no particular order:
    sorting in SQL spilled to disk and cost more than the rest of the query)."""
    query = sql.SQL(
        "SELECT a.aggregate_id, a.aggregate_type, e.version, e.event_type, e.time_stamp,"
        "       convert_to(e.event_data::text, 'UTF8')"
        "  FROM {s}.aggregate a JOIN {s}.event e ON e.aggregate_key = a.aggregate_key"
        " WHERE a.application_name = %s AND a.aggregate_id = ANY(%s)"
    ).format(s=sql.Identifier(schema))
    out: dict[str, list[PgEvent]] = {}
    # Binary results: the time stamps as they are stored, the JSON text as bytes (no str).
    with conn.cursor(row_factory=_pg_event_row) as cur:
        for row in cur.execute(query, (app, list(ids)), binary=True):
            rows = out.get(row.aggregate_id)
            if rows is None:
                out[row.aggregate_id] = [row]
            else:
                rows.append(row)
    conn.commit()
    return out


def _pg_event_row(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], PgEvent]:
    return PgEvent._make


class PgStream(NamedTuple):
    """One aggregate's PostgreSQL events as verify reads them: a column each, in version order
    (psycopg builds the lists in C from PostgreSQL arrays: no Python call per event, where a
    row per event cost ~2 µs of the client's time per event more)."""

    aggregate_type: str
    versions: list[int]
    event_types: list[str]
    time_stamps: list[int]
    """Each ``time_stamp`` as PostgreSQL sends it in binary: microseconds since 2000-01-01 UTC
    (:func:`pg_time`; no datetime made per event, nor a time zone looked up for it)."""
    event_data: list[bytes]
    """Each jsonb as PostgreSQL sends it in binary: a version byte (1), then its text in UTF-8
    (:func:`jsonb_text`)."""

    def rows(self, aggregate_id: str) -> list[PgEvent]:
        return [
            PgEvent(aggregate_id, self.aggregate_type, v, t, pg_time(s), jsonb_text(d))
            for v, t, s, d in zip(
                self.versions, self.event_types, self.time_stamps, self.event_data, strict=True
            )
        ]


PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
"""Where PostgreSQL's binary timestamptz counts microseconds from."""
MICROSECOND = timedelta(microseconds=1)
"""``(moment - PG_EPOCH) // MICROSECOND``: a datetime as binary timestamptz (an exact int, one C
call)."""
_LATEST = datetime.max.replace(tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def pg_time(micros: int) -> datetime:
    """A binary timestamptz (microseconds since 2000-01-01 UTC) as a datetime in UTC; a time
    beyond datetime's years (``infinity`` is the largest int8) as its last or first moment."""
    try:
        return PG_EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        return _LATEST if micros > 0 else _EARLIEST


def binary_column_loaders(cur: psycopg.Cursor[Any]) -> None:
    """jsonb as its bytes, unparsed, and timestamptz as its int8 (both in binary): psycopg's
    own loader classes, which it swaps for their C versions (a subclass of ours would run
    ``load`` in Python once per value)."""
    cur.adapters.register_loader("jsonb", ByteaBinaryLoader)
    cur.adapters.register_loader("timestamptz", Int8BinaryLoader)


NO_EVENTS = PgStream("", [], [], [], [])


_JSONB_V1 = b"\x01"


def jsonb_text(raw: bytes) -> bytes:
    """The text of a jsonb value in PostgreSQL's binary format (version 1: the text after one
    version byte; what ``::text`` gives, without a cast and a copy on the server)."""
    if raw[:1] != _JSONB_V1:
        raise ValueError(f"unknown jsonb binary format version {raw[:1]!r}")
    return raw[1:]


# The events of each aggregate come in version order from a subquery that the index on
# (aggregate_key, version) answers in order: PostgreSQL keeps a subquery with ORDER BY apart and
# aggregates its rows as they come, where array_agg(... ORDER BY version) sorted each aggregate's
# rows once per column (15% of the query's CPU, measured: docs/design/performance.md, round 16).
# Were the order ever not kept, verify's fast comparison would see versions out of order and the
# general one, which matches rows by version, would decide: slower, the same result.
_STREAMS_SQL = (
    "SELECT a.aggregate_id, a.aggregate_type, x.* FROM {s}.aggregate a CROSS JOIN LATERAL ("
    "  SELECT array_agg(e.version), array_agg(e.event_type), array_agg(e.time_stamp),"
    "         array_agg(e.event_data)"
    "    FROM (SELECT * FROM {s}.event WHERE aggregate_key = a.aggregate_key ORDER BY version) e"
    ") x"
    " WHERE a.application_name = %s AND a.aggregate_id = ANY(%s)"
)


def pg_streams(
    conn: psycopg.Connection, schema: str, app: str, ids: Sequence[str]
) -> dict[str, PgStream]:
    """The PostgreSQL events of the given aggregates by aggregate id, one :class:`PgStream` each
    (an aggregate row without events has empty lists; one not in PostgreSQL is absent)."""
    out: dict[str, PgStream] = {}
    with conn.cursor(row_factory=tuple_row) as cur:
        binary_column_loaders(cur)
        query = sql.SQL(_STREAMS_SQL).format(s=sql.Identifier(schema))
        for aggregate_id, aggregate_type, *columns in cur.execute(
            query, (app, list(ids)), binary=True
        ):
            out[aggregate_id] = (
                PgStream(aggregate_type, *columns)
                if columns[0] is not None
                else NO_EVENTS._replace(aggregate_type=aggregate_type)
            )
    conn.commit()
    return out


def pg_page(
    conn: psycopg.Connection, opts: PageScope, ids: Sequence[str], bookkeeping: bool
) -> tuple[dict[str, list[PgEvent]], dict[str, int]]:
    rows = pg_events(conn, opts.pg_schema, opts.app, ids)
    migrated = migrated_commits(conn, opts.pg_schema, opts.app, ids) if bookkeeping else {}
    return rows, migrated


_STREAMS_AND_MIGRATED_SQL = (  # (the events in version order: see _STREAMS_SQL)
    "SELECT u.id, a.aggregate_type, x.*, m.commits FROM unnest(%s::text[]) AS u(id)"
    "  LEFT JOIN {s}.aggregate a ON a.application_name = %s AND a.aggregate_id = u.id"
    "  LEFT JOIN LATERAL ("
    "    SELECT array_agg(e.version), array_agg(e.event_type), array_agg(e.time_stamp),"
    "           array_agg(e.event_data)"
    "      FROM (SELECT * FROM {s}.event WHERE aggregate_key = a.aggregate_key ORDER BY version)"
    "      e) x ON true"
    # OFFSET 0: one index lookup per id (see esctl.migrate.Reader.migrated)
    "  LEFT JOIN LATERAL (SELECT commits FROM esctl.migrated_stream WHERE target_schema = %s"
    "    AND application_name = %s AND aggregate_id = u.id OFFSET 0) m ON true"
)


def pg_stream_page(
    conn: psycopg.Connection, opts: PageScope, ids: Sequence[str], bookkeeping: bool
) -> tuple[dict[str, PgStream], dict[str, int]]:
    """:func:`pg_streams` and (with ``bookkeeping``) :func:`migrated_commits` of one page, in
    one query: one round trip (psycopg's pipeline mode took three)."""
    if not bookkeeping:
        return pg_streams(conn, opts.pg_schema, opts.app, ids), {}
    schema, app = opts.pg_schema, opts.app
    query = sql.SQL(_STREAMS_AND_MIGRATED_SQL).format(s=sql.Identifier(schema))
    streams: dict[str, PgStream] = {}
    migrated: dict[str, int] = {}
    with conn.cursor(row_factory=tuple_row) as cur:
        binary_column_loaders(cur)
        cur.execute(query, (list(ids), app, schema, app), binary=True)
        for aggregate_id, aggregate_type, *columns, commits in cur:
            if commits is not None:
                migrated[aggregate_id] = commits
            if aggregate_type is None:  # not in PostgreSQL
                continue
            streams[aggregate_id] = (
                PgStream(aggregate_type, *columns)
                if columns[0] is not None
                else NO_EVENTS._replace(aggregate_type=aggregate_type)
            )
    conn.commit()
    return streams, migrated


def migrated_commits(
    conn: psycopg.Connection, schema: str, app: str, ids: Sequence[str]
) -> dict[str, int]:
    """How many commits of each aggregate esctl recorded as migrated (esctl.migrated_stream)."""
    rows = pg.read_ended(
        conn,
        # LATERAL + OFFSET 0: one index lookup per id (see esctl.migrate.Reader.migrated).
        "SELECT u.id, m.commits FROM unnest(%s::text[]) AS u(id) CROSS JOIN LATERAL ("
        "  SELECT commits FROM esctl.migrated_stream WHERE target_schema = %s"
        "   AND application_name = %s AND aggregate_id = u.id OFFSET 0) m",
        (list(ids), schema, app),
    )
    return dict(rows)


def any_migrated(conn: psycopg.Connection, schema: str, app: str) -> bool:
    """Whether esctl.migrated_stream records any aggregate of ``app`` migrated into ``schema``.
    Ends the transaction."""
    [(found,)] = pg.read_ended(
        conn,
        "SELECT EXISTS (SELECT 1 FROM esctl.migrated_stream"
        " WHERE target_schema = %s AND application_name = %s)",
        (schema, app),
    )
    return bool(found)


def other_transforms(
    conn: psycopg.Connection, schema: str, app: str, mine: str | None, *, most: int
) -> list[str | None] | None:
    """Up to ``most`` transforms fingerprints other than ``mine`` that esctl.migrated_stream
    records for ``app``'s aggregates (None in the list: migrated without transforms); None when
    that bookkeeping is from before transforms (no such column). Ends the transaction."""
    try:
        rows = conn.execute(
            "SELECT DISTINCT transforms FROM esctl.migrated_stream WHERE target_schema = %s"
            " AND application_name = %s AND transforms IS DISTINCT FROM %s LIMIT %s",
            (schema, app, mine, most),
        ).fetchall()
    except psycopg.errors.UndefinedColumn:
        conn.rollback()
        return None
    conn.commit()
    return [r[0] for r in rows]


def transforms_words(fingerprint: str | None, path: str | None = None) -> str:
    """How messages name the rules events were (or are to be) migrated with: "without
    --transforms", or "with transforms" and the fingerprint's first 16 digits (and the file)."""
    if fingerprint is None:
        return "without --transforms"
    words = f"with transforms {fingerprint[:16]}"
    return words if path is None else f"{words} (from {path})"


_STILL_QUARANTINED = """
WITH latest AS (
  SELECT DISTINCT ON (shard) run_id FROM esctl.migration_run
   WHERE target_schema = %(schema)s AND application_name = %(app)s
   ORDER BY shard, started_at DESC),
held AS (
  SELECT q.aggregate_id, q.run_id, q.recorded_at FROM esctl.quarantine q
    JOIN latest l ON l.run_id = q.run_id {only}),
last AS (
  SELECT aggregate_id, max(recorded_at) AS recorded_at, array_agg(DISTINCT run_id) AS runs
    FROM held GROUP BY aggregate_id),
still AS (
  SELECT q.aggregate_id, q.runs FROM last q
    LEFT JOIN esctl.migrated_stream m
      ON m.target_schema = %(schema)s AND m.application_name = %(app)s
     AND m.aggregate_id = q.aggregate_id
   WHERE m.updated_at IS NULL OR m.updated_at < q.recorded_at)
SELECT aggregate_id, count(*) OVER (),
       (SELECT array_agg(DISTINCT r ORDER BY r) FROM still, unnest(still.runs) AS r)
  FROM still
 ORDER BY aggregate_id
 LIMIT %(limit)s
"""
"""Aggregates quarantined by the latest run of some shard and not migrated since (a follower,
or a run of another shard, that migrated one after it was fixed moved esctl.migrated_stream's
``updated_at`` past the quarantine): ``(aggregate id, how many there are, the runs that
quarantined them)`` each row, the first ``limit`` by id. ``{only}`` narrows to some ids."""


@dataclass(frozen=True)
class StillQuarantined:
    """The aggregates of :data:`_STILL_QUARANTINED`: how many, the first ids, and the runs."""

    aggregates: int
    ids: list[str]
    run_ids: list[str]


def still_quarantined(
    conn: psycopg.Connection,
    schema: str,
    app: str,
    *,
    ids: Sequence[str] | None = None,
    limit: int | None = None,
) -> StillQuarantined:
    """Aggregates still quarantined (all of them, or those of ``ids``, given as esctl.quarantine
    stores them: :func:`esctl.redisio.printable`), the first ``limit`` ids of them (all without
    a limit)."""
    only = "" if ids is None else "WHERE q.aggregate_id = ANY(%(ids)s::text[])"
    rows = conn.execute(
        _STILL_QUARANTINED.format(only=only),
        {
            "schema": schema,
            "app": app,
            "ids": text_array(list(ids or [])),
            "limit": limit,
        },
    ).fetchall()
    if not rows:
        return StillQuarantined(0, [], [])
    return StillQuarantined(int(rows[0][1]), [r[0] for r in rows], list(rows[0][2] or []))


# --- which apps have aggregates ----------------------------------------------------------------

APPS_SAMPLE_ROWS = 10_000
"""Rows of ``aggregate`` :func:`apps_with_aggregates` samples at most (milliseconds)."""
APPS_NEAREST = 5
"""Names an index leading with ``application_name`` gives on each side of the app's."""


@dataclass(frozen=True)
class AppsWithAggregates:
    """The ApplicationNames with rows in a schema's ``aggregate`` table, from a bounded read:
    whether the app asked about has one, and others found."""

    has_app: bool
    names: dict[str, int]
    """Apps found -> their rows in the sample (0: read from an index, not counted)."""
    sampled: int
    """Rows sampled (0: the names came from an index)."""
    total: int | None
    """The table's rows as PostgreSQL estimates them (None: not estimated yet)."""
    complete: bool
    """``names`` holds every app of the table."""


_TABLE_FACTS_SQL = """
SELECT c.reltuples::bigint, EXISTS (
  SELECT 1 FROM pg_index i
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_am am ON am.oid = ic.relam
    JOIN pg_opclass oc ON oc.oid = i.indclass[0]
   WHERE i.indrelid = c.oid AND a.attname = 'application_name' AND am.amname = 'btree'
     AND oc.opcdefault AND i.indcollation[0] = a.attcollation
     AND i.indisvalid AND i.indpred IS NULL)
  FROM pg_class c WHERE c.oid = to_regclass(%s)
"""
"""The ``aggregate`` table's estimated rows, and whether a B-tree index that comparisons of
``application_name`` can use leads with it (None: no such table)."""

_NEAREST_SQL = """
WITH RECURSIVE above(name, n) AS (
    SELECT min(application_name), 1 FROM {t} WHERE application_name > %(app)s
  UNION ALL
    SELECT (SELECT min(application_name) FROM {t} WHERE application_name > above.name), n + 1
      FROM above WHERE above.name IS NOT NULL AND n < %(most)s
), below(name, n) AS (
    SELECT max(application_name), 1 FROM {t} WHERE application_name < %(app)s
  UNION ALL
    SELECT (SELECT max(application_name) FROM {t} WHERE application_name < below.name), n + 1
      FROM below WHERE below.name IS NOT NULL AND n < %(most)s
)
SELECT 'above', name FROM above WHERE name IS NOT NULL
UNION ALL SELECT 'below', name FROM below WHERE name IS NOT NULL
"""
"""The ``most`` names on each side of ``app`` in the index's order, one index probe each (a
loose index scan: no more rows read however many aggregates each app has)."""


def apps_with_aggregates(
    dsn: str,
    schema: str,
    app: str,
    *,
    max_seconds: float,
    sample_rows: int = APPS_SAMPLE_ROWS,
    nearest: int = APPS_NEAREST,
) -> AppsWithAggregates | None:
    """Whether ``app`` has a row in ``schema.aggregate``, and the apps that do, in a few
    milliseconds however large the table: with an index leading with ``application_name``,
    the ``nearest`` names on each side of ``app``'s (:data:`_NEAREST_SQL`); otherwise those of
    a sample of about ``sample_rows`` rows (TABLESAMPLE SYSTEM) and, unless the sample
    settles it, one EXISTS, a sequential scan (~60 ms a million rows). None when the tables
    are missing or ``max_seconds`` ran out (statement_timeout): nothing is known."""
    conn = pg.connect(dsn, application_name="esctl (apps with aggregates)")
    try:
        with pg.translate_errors(dsn):
            timeout = f"{max(1, round(max_seconds * 1000))}ms"  # 0 would be none
            try:
                conn.execute("SELECT set_config('statement_timeout', %s, true)", (timeout,))
                table = sql.Identifier(schema, "aggregate")
                facts = conn.execute(_TABLE_FACTS_SQL, (table.as_string(conn),)).fetchone()
                if facts is None:
                    return None
                estimate, indexed = facts
                total = int(estimate) if estimate >= 0 else None
                if indexed:
                    return _apps_by_index(conn, table, app, total, nearest)
                return _apps_by_sample(conn, table, app, total, sample_rows)
            except psycopg.errors.QueryCanceled:  # max_seconds ran out
                return None
    finally:
        conn.close()


def _has_app(conn: psycopg.Connection, table: sql.Identifier, app: str) -> bool:
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE application_name = %s)").format(table)
    row = conn.execute(query, (app,)).fetchone()
    return bool(row and row[0])


def _apps_by_index(
    conn: psycopg.Connection, table: sql.Identifier, app: str, total: int | None, nearest: int
) -> AppsWithAggregates:
    if _has_app(conn, table, app):
        return AppsWithAggregates(True, {}, 0, total, False)
    rows = conn.execute(
        sql.SQL(_NEAREST_SQL).format(t=table), {"app": app, "most": nearest}
    ).fetchall()
    sides = Counter(side for side, _ in rows)
    complete = sides["above"] < nearest and sides["below"] < nearest
    return AppsWithAggregates(False, {name: 0 for _, name in rows}, 0, total, complete)


def _apps_by_sample(
    conn: psycopg.Connection, table: sql.Identifier, app: str, total: int | None, rows: int
) -> AppsWithAggregates:
    # SYSTEM: whole pages at random, as many as hold about `rows` rows (all of a small table,
    # or of one never analyzed: then the LIMIT bounds the read).
    percent = min(100.0, 100.0 * rows / total) if total else 100.0
    counts: dict[str, int] = dict(
        conn.execute(
            sql.SQL(
                "SELECT application_name, count(*)::int FROM (SELECT application_name FROM {}"
                " TABLESAMPLE SYSTEM (%s) LIMIT %s) s GROUP BY 1"
            ).format(table),
            (percent, rows),
        ).fetchall()
    )
    sampled = sum(counts.values())
    complete = percent >= 100.0 and sampled < rows
    has_app = app in counts or (not complete and _has_app(conn, table, app))
    return AppsWithAggregates(has_app, counts, sampled, total, complete)
