"""A built-in example projection: how many events of each type happened on each day.

    esctl replay --from pg --all --to projection --projection esctl.projections.event_counts \\
        --checkpoint event-counts

fills ``projections.event_counts (event_type, day, events)``; shard-safe with ``--shard I/N``.
How it counts exactly once and shares the table between shards: docs/projections.md.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime

from esctl.projections import Event, ProjectionContext

TABLE = "projections.event_counts"
SHARES = "projections.event_counts_by_shard"
"""Each shard's part of the counts (``0/1`` for unsharded runs)."""

DDL = """
CREATE SCHEMA IF NOT EXISTS projections;
CREATE TABLE IF NOT EXISTS projections.event_counts (
    event_type text NOT NULL,
    day date NOT NULL,
    events bigint NOT NULL,
    PRIMARY KEY (event_type, day)
);
CREATE TABLE IF NOT EXISTS projections.event_counts_by_shard (
    shard text NOT NULL,
    event_type text NOT NULL,
    day date NOT NULL,
    events bigint NOT NULL,
    PRIMARY KEY (shard, event_type, day)
);
"""

_STALE = "(s.shard = %(shard)s OR split_part(s.shard, '/', 2) <> %(count)s)"
"""The shares a fresh run of a shard takes back: its own, and those of other shard counts."""


class EventCounts:
    """Counts per event type per UTC day into ``projections.event_counts``."""

    def __init__(self) -> None:
        self.pending: Counter[tuple[str, date]] = Counter()
        self.shard = "0/1"

    def setup(self, ctx: ProjectionContext) -> None:
        # Runs (shards) starting at once: CREATE ... IF NOT EXISTS can still race, and two
        # fresh shards must not take back shares at the same time; serialise them.
        ctx.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (TABLE,))
        row = ctx.conn.execute("SELECT to_regclass(%s) IS NULL", (SHARES,)).fetchone()
        shares_are_new = bool(row and row[0])
        ctx.conn.execute(DDL)
        if shares_are_new:
            # Counts of an earlier release, which had no shares: an unsharded run's.
            ctx.conn.execute(
                f"INSERT INTO {SHARES} SELECT '0/1', event_type, day, events FROM {TABLE}"
            )
        self.shard = str(ctx.shard)
        if not ctx.fresh:
            return
        if ctx.fresh_all:  # no other shard of the checkpoint has started: nothing to keep
            ctx.conn.execute(f"TRUNCATE {TABLE}, {SHARES}")
            return
        stale = {"shard": self.shard, "count": str(ctx.shard.count)}
        # Lock the totals in key order first, as flush does: no deadlock with running shards.
        ctx.conn.execute(
            f"SELECT 1 FROM {TABLE} t WHERE (t.event_type, t.day) IN"
            f" (SELECT s.event_type, s.day FROM {SHARES} s WHERE {_STALE})"
            " ORDER BY t.event_type, t.day FOR UPDATE",
            stale,
        )
        ctx.conn.execute(
            f"UPDATE {TABLE} t SET events = t.events - g.events"
            f" FROM (SELECT s.event_type, s.day, sum(s.events) AS events FROM {SHARES} s"
            f" WHERE {_STALE} GROUP BY 1, 2) g"
            " WHERE t.event_type = g.event_type AND t.day = g.day",
            stale,
        )
        ctx.conn.execute(f"DELETE FROM {TABLE} WHERE events = 0")
        ctx.conn.execute(f"DELETE FROM {SHARES} s WHERE {_STALE}", stale)

    def handle(self, event: Event) -> None:
        day = datetime.fromisoformat(event.timestamp).astimezone(UTC).date()
        self.pending[(event.event_type, day)] += 1

    def flush(self, ctx: ProjectionContext) -> None:
        if not self.pending:
            return
        keys = sorted(self.pending)  # one lock order for every shard's batches
        types, days, counts = (
            [k[0] for k in keys],
            [k[1] for k in keys],
            [self.pending[k] for k in keys],
        )
        ctx.conn.execute(
            f"INSERT INTO {TABLE} AS t (event_type, day, events)"
            " SELECT * FROM unnest(%s::text[], %s::date[], %s::bigint[])"
            " ON CONFLICT (event_type, day) DO UPDATE SET events = t.events + excluded.events",
            (types, days, counts),
        )
        ctx.conn.execute(
            f"INSERT INTO {SHARES} AS t (shard, event_type, day, events)"
            " SELECT %s, * FROM unnest(%s::text[], %s::date[], %s::bigint[])"
            " ON CONFLICT (shard, event_type, day)"
            " DO UPDATE SET events = t.events + excluded.events",
            (self.shard, types, days, counts),
        )
        self.pending.clear()


projection = EventCounts
"""What ``--projection esctl.projections.event_counts`` (without ``:CALLABLE``) uses."""
