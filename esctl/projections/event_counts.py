"""A built-in example projection: how many events of each type happened on each day.

    esctl replay --from pg --all --to projection --projection esctl.projections.event_counts \\
        --checkpoint event-counts

fills ``projections.event_counts (event_type, day, events)``, ``day`` being the UTC date of the
event's ``TimeStamp``. The table (and the ``projections`` schema) is created in ``setup``; a
replay that starts from the beginning (no checkpoint, a new one, or ``--reset``) empties it first,
so rerunning rebuilds it. ``handle`` only counts in memory; ``flush`` adds the batch's counts to
the table inside the batch's transaction, so with ``--checkpoint`` every event is counted exactly
once even if the run is killed and resumed.

Then, for instance::

    SELECT day, events FROM projections.event_counts
     WHERE event_type = 'ItemScoreCreated' ORDER BY day DESC LIMIT 7;
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime

from esctl.projections import Event, ProjectionContext

TABLE = "projections.event_counts"

DDL = """
CREATE SCHEMA IF NOT EXISTS projections;
CREATE TABLE IF NOT EXISTS projections.event_counts (
    event_type text NOT NULL,
    day date NOT NULL,
    events bigint NOT NULL,
    PRIMARY KEY (event_type, day)
);
"""


class EventCounts:
    """Counts per event type per UTC day into ``projections.event_counts``."""

    def __init__(self) -> None:
        self.pending: Counter[tuple[str, date]] = Counter()

    def setup(self, ctx: ProjectionContext) -> None:
        # Two first runs at once: CREATE ... IF NOT EXISTS can still race; serialise them.
        ctx.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (TABLE,))
        ctx.conn.execute(DDL)
        if ctx.fresh:
            ctx.conn.execute(f"TRUNCATE {TABLE}")

    def handle(self, event: Event) -> None:
        day = datetime.fromisoformat(event.timestamp).astimezone(UTC).date()
        self.pending[(event.event_type, day)] += 1

    def flush(self, ctx: ProjectionContext) -> None:
        if not self.pending:
            return
        keys = list(self.pending)
        ctx.conn.execute(
            f"INSERT INTO {TABLE} AS t (event_type, day, events)"
            " SELECT * FROM unnest(%s::text[], %s::date[], %s::bigint[])"
            " ON CONFLICT (event_type, day) DO UPDATE SET events = t.events + excluded.events",
            ([k[0] for k in keys], [k[1] for k in keys], [self.pending[k] for k in keys]),
        )
        self.pending.clear()


projection = EventCounts
"""What ``--projection esctl.projections.event_counts`` (without ``:CALLABLE``) uses."""
