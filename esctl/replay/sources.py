"""Which source a replay reads: :func:`open_source` makes the :class:`RedisSource` or
:class:`PgSource` of a run's options."""

from __future__ import annotations

from typing import Any

from esctl import redisio
from esctl.errors import UsageError
from esctl.query import QueryFilters
from esctl.replay.options import ReplayOptions
from esctl.replay.source_pg import PgSource
from esctl.replay.source_redis import RedisSource
from esctl.replay.window import Window

Source = RedisSource | PgSource


def open_source(
    options: ReplayOptions,
    filters: QueryFilters,
    client: redisio.RedisClient | None,
    *,
    after: tuple[Any, ...] | None = None,
    limit: int | None = None,
) -> Source:
    """The source of ``options.source`` over ``filters``, strictly after ``after``, at most
    ``limit`` (UsageError for ``--from redis`` without a client)."""
    window = Window(order=options.order, after=after, limit=limit, shard=options.shard)
    if options.source == "redis":
        if client is None:
            raise UsageError("--from redis needs a Redis connection")
        return RedisSource(
            client,
            options.app,
            filters,
            **vars(window),
            sort_dir=options.sort_dir,
            sort_run_bytes=options.sort_run_bytes,
            unpack_ahead=options.target == "queue",
            transforms=options.transforms,
        )
    return PgSource(
        options.pg_dsn,
        options.pg_schema,
        options.app,
        filters,
        **vars(window),
        # what .NET reads (a queue's subscribers, whatever reads the JSON lines) needs the
        # library's key order; a Python projection gets event_data as jsonb prints it
        metadata_first=options.target in ("queue", "stdout"),
    )
