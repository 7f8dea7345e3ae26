"""``esctl events query``: find events by type, aggregate, time and payload fields, in Redis or
in the migrated PostgreSQL tables, with one filter language and one answer.

The filters and results are in :mod:`.filters`, the where-language in :mod:`esctl.where` (below the operations: transforms name fields with its paths), the two
sources in :mod:`.redis_query` (:class:`RedisQuery`) and :mod:`.pg_query` (:class:`PgQuery`).
What each filter and operator means, exactly and the same on both sides, and what a result
holds: docs/design/query.md.

The package never prints and never exits; the CLI renders what it returns.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from esctl.query.filters import QueryFilters, QueryResult, QueryStats, Selectors
from esctl.where import (
    MAX_PATH_SEGMENTS,
    OPERATORS,
    Literal,
    WhereClause,
    parse_where,
    reach,
)

if TYPE_CHECKING:
    from esctl.query.pg_query import PgQuery, pg_conditions, pg_query_sql, query_pg
    from esctl.query.redis_query import (
        HEAD_BASE64_CHARS,
        HEAD_PLAIN_BYTES,
        RedisQuery,
        head_envelope,
        head_event_type,
        query_redis,
    )
    from esctl.query.transformed import TransformedQuery

_SOURCES = {
    "esctl.query.pg_query": ("PgQuery", "pg_conditions", "pg_query_sql", "query_pg"),
    "esctl.query.redis_query": (
        "HEAD_BASE64_CHARS",
        "HEAD_PLAIN_BYTES",
        "RedisQuery",
        "head_envelope",
        "head_event_type",
        "query_redis",
    ),
    "esctl.query.transformed": ("TransformedQuery",),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}


def __getattr__(name: str) -> Any:
    """A source's names, its module imported on first use: a query of Redis never imports
    psycopg, nor one without --transforms the transforms (about 0.15 s of every such run)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "HEAD_BASE64_CHARS",
    "HEAD_PLAIN_BYTES",
    "MAX_PATH_SEGMENTS",
    "OPERATORS",
    "Literal",
    "PgQuery",
    "QueryFilters",
    "QueryResult",
    "QueryStats",
    "RedisQuery",
    "Selectors",
    "TransformedQuery",
    "WhereClause",
    "head_envelope",
    "head_event_type",
    "parse_where",
    "pg_conditions",
    "pg_query_sql",
    "query_pg",
    "query_redis",
    "reach",
]
