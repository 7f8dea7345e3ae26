"""``events query --source pg``: the same question asked of the migrated tables.
:func:`pg_conditions` turns the filters into SQL conditions (``--where`` as jsonpath
predicates, shared with ``replay --from pg``), :func:`pg_query_sql` into the whole SELECT, and
:class:`PgQuery` streams its rows as results (docs/design/query.md, "PostgreSQL")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from psycopg import sql

from esctl import pg
from esctl.query.filters import QueryFilters, QueryResult, QueryStats


def pg_conditions(app: str, filters: QueryFilters) -> tuple[list[sql.Composable], dict[str, Any]]:
    """The WHERE conditions of ``filters`` over ``event e JOIN aggregate a`` (``--where`` as
    jsonpath predicates on ``event_data``), and their parameters. Shared by query and replay,
    so the same question selects the same events."""
    conditions: list[sql.Composable] = [sql.SQL("a.application_name = %(app)s")]
    params: dict[str, Any] = {"app": app}
    for condition, name, value in (
        ("e.event_type = ANY(%(types)s::text[])", "types", list(filters.types) or None),
        ("a.aggregate_type = %(aggregate_type)s", "aggregate_type", filters.aggregate_type),
        (
            "a.aggregate_id = ANY(%(aggregates)s::text[])",
            "aggregates",
            list(filters.aggregates) or None,
        ),
        ("e.time_stamp >= %(since)s", "since", filters.since),
        ("e.time_stamp < %(until)s", "until", filters.until),
    ):
        if value is not None:  # a filter not given
            conditions.append(sql.SQL(condition))
            params[name] = value
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
                pg.require_event_tables(conn, self.schema, self.app)
                conn.commit()
                # A cursor is planned for its first 10% of rows by default: ordered index
                # scans and nested loops that took minutes on a 200k-event table where a hash
                # join and a sort take a second. Plan for all rows.
                conn.execute("SET LOCAL cursor_tuple_fraction = 1.0")
                with conn.cursor(name="esctl_query") as cur:
                    cur.execute(query, params)
                    for page in pg.pages_ahead(cur):
                        for row in page:
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
