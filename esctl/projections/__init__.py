"""Projections: Python read models fed by ``esctl replay --to projection``.

``--projection SPEC`` (``MODULE:CALLABLE``, ``path/to/file.py:CALLABLE``, or a module/file with a
``projection`` attribute) names a function taking one :class:`Event`, an object with
``handle(event)`` and optional ``setup(ctx)``, ``flush(ctx)``, ``teardown(ctx)``, or a class of
such objects (instantiated once, without arguments). ``setup`` runs once in its own transaction;
each batch is ``handle`` per event, ``flush``, the checkpoint, COMMIT, all in one transaction
reached through ``ctx.conn`` (a :class:`ProjectionContext`; never commit yourself); ``teardown``
runs once at the end, also after a failure. With ``--checkpoint`` every event's effect on your
tables happens exactly once. Empty your tables whole (TRUNCATE) in ``setup`` only when
``ctx.fresh_all``: with ``--shard``, other shards' rows may be there.

The whole contract (order of calls, shards, failures, the fields of an event, an example):
docs/projections.md. A complete example: :mod:`esctl.projections.event_counts`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson
import psycopg

from esctl.projections.loading import ProjectionAdapter, load_projection
from esctl.shard import Shard

__all__ = [
    "Event",
    "Projection",
    "ProjectionAdapter",
    "ProjectionContext",
    "load_projection",
]


@dataclass(slots=True)
class Event:
    """One event handed to a projection (and published or printed by a replay)."""

    aggregate_id: str
    aggregate_type: str
    version: int
    event_type: str
    timestamp: str
    """The payload's ``TimeStamp`` text as written (seven fractional digits and an offset)."""
    commit_id: str | None
    """The commit id (Redis); None for events read from PostgreSQL."""
    position: tuple[Any, ...] = field(repr=False)
    """The event's place in the replay order: what ``--checkpoint`` stores (esctl.replay.positions;
    docs/design/replay.md, "Positions and checkpoints")."""
    payload: bytes = field(repr=False)
    """The payload JSON text as UTF-8 bytes, as the source holds it."""
    _data: Any = field(default=None, repr=False)
    _text: str | None = field(default=None, init=False, repr=False)

    @property
    def text(self) -> str:
        """The payload JSON text (decoded once, on first use)."""
        if self._text is None:
            self._text = self.payload.decode("utf-8")
        return self._text

    @property
    def data(self) -> dict[str, Any]:
        """The parsed payload (parsed once, on first use)."""
        if self._data is None:
            self._data = orjson.loads(self.payload)
        return self._data

    @property
    def moment(self) -> datetime:
        """``timestamp`` as an aware datetime, the seventh fractional digit truncated."""
        return datetime.fromisoformat(self.timestamp)


@dataclass(eq=False, kw_only=True)
class ProjectionContext:
    """What ``setup``, ``flush`` and ``teardown`` receive.

    ``conn``: a psycopg connection (not autocommit) inside the current batch's transaction,
    opened on first use when the replay has no checkpoint. ``fresh``: the replay starts from
    the beginning of its selection (no checkpoint, a new one, or ``--reset``), so what this
    run wrote before should go in ``setup``. ``fresh_all``: ``fresh``, and no other shard of
    the checkpoint has started (always ``fresh`` without ``--shard``; never with ``--shard``
    and no checkpoint): nothing in the tables is another run's to keep, so they may be emptied
    whole (TRUNCATE); when ``fresh`` but not ``fresh_all``, remove only this shard's part (other
    shards may have written, and may be writing). ``batch``: number of the current batch
    (0 in ``setup``). ``app``, ``checkpoint`` (the name or None) and ``source`` (``redis`` or
    ``pg``) describe the run; ``state`` is a dict for the projection's own use. ``shard``
    (:class:`esctl.shard.Shard`, ``0/1`` without ``--shard``) is the share of the aggregates
    this run feeds: ``ctx.shard.owns(aggregate_id)``."""

    app: str
    source: str
    checkpoint: str | None
    fresh: bool
    connect: InitVar[Callable[[], psycopg.Connection]]
    shard: Shard = field(default_factory=Shard)
    fresh_all: bool = False
    batch: int = field(default=0, init=False)
    state: dict[str, Any] = field(default_factory=dict, init=False)
    _connect: Callable[[], psycopg.Connection] = field(init=False, repr=False)
    _conn: psycopg.Connection | None = field(default=None, init=False, repr=False)

    def __post_init__(self, connect: Callable[[], psycopg.Connection]) -> None:
        self._connect = connect

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        """Close the connection (an open transaction is rolled back)."""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


class Projection(Protocol):
    """The object form of the protocol; every method but ``handle`` is optional."""

    def handle(self, event: Event) -> None: ...
