"""``--from pg``: the selected events of an app read from the migrated tables, every filter in
SQL, streamed through a server-side cursor; payloads get Newtonsoft's metadata first again for
readers that are .NET (docs/design/replay.md, "Selection")."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import psycopg
from psycopg import sql

from esctl import codec, pg
from esctl.projections import Event
from esctl.query import QueryFilters, pg_conditions
from esctl.replay.window import Window
from esctl.shard import Shard


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


@dataclass
class PgSource(Window):
    """The selected migrated events of ``app`` in ``schema``, in ``order``, strictly after
    ``after``, at most ``limit``; every filter in SQL, rows streamed through a server-side
    cursor on a connection of its own. With a ``shard``, the shard's aggregate keys are listed
    first, in the same REPEATABLE READ snapshot as the events.

    ``metadata_first``: each payload's text gets Newtonsoft's metadata properties back in
    front of every object (:func:`esctl.codec.newtonsoft_metadata_first`), as the library's
    queue subscribers need them; otherwise it is ``event_data`` as jsonb prints it."""

    dsn: str
    schema: str
    app: str
    filters: QueryFilters
    _: KW_ONLY
    metadata_first: bool = False

    def problems(self) -> list[tuple[str, str, str]]:
        return []

    def unlisted(self) -> dict[str, int]:
        return {}

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
                pg.require_event_tables(conn, self.schema, self.app)
                conn.commit()
                query, params = self._query(conn)
                # binary: the payload column (bytea) comes as the bytes themselves
                with conn.cursor(name="esctl_replay", binary=True) as cur:
                    cur.execute(query, params)
                    reorder = codec.newtonsoft_metadata_first if self.metadata_first else _unchanged
                    for page in pg.pages_ahead(cur):
                        if self.order == "aggregate":
                            for (
                                aggregate_id,
                                version,
                                event_type,
                                aggregate_type,
                                ts,
                                data,
                                key,
                            ) in page:
                                yield Event(
                                    aggregate_id,
                                    aggregate_type,
                                    version,
                                    event_type,
                                    ts,
                                    None,
                                    (key, version),
                                    reorder(data),
                                )
                        else:
                            for row in page:
                                yield Event(
                                    row[0], row[3], row[1], row[2], row[4], None,
                                    (row[7], row[6], row[1]), reorder(row[5]),
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
                pg.require_event_tables(conn, self.schema, self.app)
                query, params = self._query(conn)
                counting = sql.SQL("SELECT q.event_type, count(*) FROM ({}) q GROUP BY 1").format(
                    query
                )
                rows = conn.execute(counting, params).fetchall()
                conn.rollback()
        finally:
            conn.close()
        return Counter({str(t): int(n) for t, n in rows})


def _unchanged(payload: bytes) -> bytes:
    return payload
