"""Projections: Python read models fed by ``esctl replay --to projection``.

**The protocol.** ``--projection SPEC`` names the projection: ``MODULE:CALLABLE``
(``mypkg.read_models:ScoreBoard``), ``path/to/file.py:CALLABLE``, or just ``MODULE`` /
``path/to/file.py``, which use the module's ``projection`` attribute. What SPEC names is one of

- a **function** taking one :class:`Event` (``def project(event): ...``): the whole projection;
- an **object** with ``handle(event)`` and, optionally, ``setup(ctx)``, ``flush(ctx)`` and
  ``teardown(ctx)``;
- a **class** of such objects: it is instantiated once per run, without arguments.

The replay calls, in this order:

1. ``setup(ctx)`` once, in a transaction of its own that also creates (or, with ``--reset``,
   resets) the checkpoint: create your tables here; when ``ctx.fresh`` is true the replay starts
   from the beginning of the selection, so a projection that owns its tables empties them.
2. For every batch (``--batch-size`` events, default 1,000): ``handle(event)`` for each event,
   in replay order, then ``flush(ctx)``, then esctl stores the checkpoint position, then
   COMMIT. ``ctx.conn`` is a psycopg connection that is *inside the batch's transaction* the
   whole time (also for an object that kept the ``ctx`` it got in ``setup`` and uses it in
   ``handle``). Do not commit or roll back yourself.
3. ``teardown(ctx)`` once at the end (also after a failure), in a transaction of its own.

So write to PostgreSQL only through ``ctx.conn``, and either write in ``handle`` or keep what
``handle`` gathered in memory and write it in ``flush`` (then forget it). With ``--checkpoint
NAME`` the position is stored in ``esctl.projection_checkpoint`` in the same transaction as the
batch's writes: a run that crashes or is ``kill -9``-ed loses exactly its uncommitted batch, a
rerun with the same name continues after the last committed one, and so every event's effect on
your tables happens exactly once. (Effects outside that transaction, such as HTTP calls or files,
are at-least-once.)

**Shards.** ``--shard I/N`` runs N processes side by side, each feeding the events of its own
aggregates (``CRC-32(id) mod N``; every event of an aggregate goes to one shard, in version
order) through its own instance of the projection, each with its own checkpoint. Their batches
are concurrent transactions on your tables, so: do not TRUNCATE in a sharded ``setup`` (the
other shards' committed work would go) but, when ``ctx.fresh``, remove only what this shard
wrote before (rows of ``ctx.shard.owns(aggregate_id)``, or the shard's own share of a total,
see :mod:`esctl.projections.event_counts`); make counters additive upserts (``ON CONFLICT ...
DO UPDATE SET n = t.n + excluded.n``), never read-modify-write; and write many rows in one
sorted order (by key), so two shards' batches wait for each other instead of deadlocking.

**Failures.** An exception from ``handle`` stops the replay: the batch is rolled back, the
checkpoint stays at the last committed batch, and the error names the aggregate id, version and
your exception. With ``--skip-errors`` each ``handle`` call runs inside a savepoint (two extra
round trips per event): a failing event's database writes are undone, the event is recorded in
``esctl.projection_dead_letter`` (in the batch's transaction) and the replay goes on. Changes
your object made in memory before raising are not undone: raise before changing state. An
exception from ``flush`` stops the replay (it cannot be pinned on one event).

**Events** are :class:`Event` objects: ``aggregate_id``, ``aggregate_type``, ``version``,
``event_type`` (.NET ``Type.Name``), ``timestamp`` (the payload's ``TimeStamp`` text, seven
digits and offset), ``moment`` (that instant as an aware datetime, truncated to the microsecond),
``text`` (the payload JSON: from Redis the exact stored text, decompressed; from PostgreSQL
``event_data`` as PostgreSQL prints it), ``data`` (the parsed payload, a dict), ``commit_id``
(Redis only) and ``position`` (the event's place in the replay order, what a checkpoint stores).

A minimal projection::

    # myprojections.py  --  esctl replay --from pg --all --to projection \\
    #     --projection myprojections.py:ScoreTotals --checkpoint score-totals
    class ScoreTotals:
        def setup(self, ctx):
            ctx.conn.execute("CREATE TABLE IF NOT EXISTS score_totals"
                             " (item text PRIMARY KEY, total bigint NOT NULL)")
            if ctx.fresh:
                ctx.conn.execute("TRUNCATE score_totals")

        def handle(self, event):
            if event.event_type == "ItemScoreUpdated":
                self.ctx.conn.execute(...)  # or gather in memory and write in flush()

:mod:`esctl.projections.event_counts` is a complete, working example.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import psycopg

from esctl.errors import UsageError
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
    _text: str | None = field(default=None, repr=False)
    _payload: bytes | None = field(default=None, repr=False)
    _data: Any = field(default=None, repr=False)

    @property
    def text(self) -> str:
        """The payload JSON text."""
        if self._text is None:
            assert self._payload is not None
            self._text = self._payload.decode("utf-8")
        return self._text

    @property
    def payload(self) -> bytes:
        """The payload JSON text as UTF-8 bytes."""
        if self._payload is None:
            assert self._text is not None
            self._payload = self._text.encode("utf-8")
        return self._payload

    @property
    def data(self) -> dict[str, Any]:
        """The parsed payload (parsed once, on first use)."""
        if self._data is None:
            self._data = orjson.loads(self._payload if self._payload is not None else self.text)
        return self._data

    @property
    def moment(self) -> datetime:
        """``timestamp`` as an aware datetime, the seventh fractional digit truncated."""
        return datetime.fromisoformat(self.timestamp)


class ProjectionContext:
    """What ``setup``, ``flush`` and ``teardown`` receive.

    ``conn``: a psycopg connection (not autocommit) inside the current batch's transaction,
    opened on first use when the replay has no checkpoint. ``fresh``: the replay starts from
    the beginning of its selection (no checkpoint, a new one, or ``--reset``), so tables the
    projection owns should be emptied in ``setup``. ``batch``: number of the current batch
    (0 in ``setup``). ``app``, ``checkpoint`` (the name or None) and ``source`` (``redis`` or
    ``pg``) describe the run; ``state`` is a dict for the projection's own use. ``shard``
    (:class:`esctl.shard.Shard`, ``0/1`` without ``--shard``) is the share of the aggregates
    this run feeds: ``ctx.shard.owns(aggregate_id)``."""

    def __init__(
        self,
        *,
        app: str,
        source: str,
        checkpoint: str | None,
        fresh: bool,
        connect: Callable[[], psycopg.Connection],
        shard: Shard | None = None,
    ) -> None:
        self.app = app
        self.source = source
        self.checkpoint = checkpoint
        self.fresh = fresh
        self.shard = shard or Shard()
        self.batch = 0
        self.state: dict[str, Any] = {}
        self._connect = connect
        self._conn: psycopg.Connection | None = None

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


def _noop(ctx: ProjectionContext) -> None:
    return None


class ProjectionAdapter:
    """Any of the protocol's forms seen as one object with all four methods."""

    def __init__(self, target: Any, name: str) -> None:
        self.name = name
        if isinstance(target, type):
            try:
                target = target()
            except Exception as exc:
                raise UsageError(
                    f"projection {name}: cannot create the {target.__name__} object: "
                    f"{type(exc).__name__}: {exc}",
                    hint="a projection class is instantiated without arguments",
                ) from None
        self.target = target
        handle = getattr(target, "handle", None)
        if callable(handle):
            self.handle: Callable[[Event], Any] = handle
        elif callable(target):
            self.handle = target
        else:
            raise UsageError(
                f"projection {name} is a {type(target).__name__}: neither a function taking an "
                "event nor an object with handle(event)",
                hint="see the protocol in 'esctl replay --help' and esctl.projections",
            )
        self.setup: Callable[[ProjectionContext], Any] = _method(target, "setup")
        self.flush: Callable[[ProjectionContext], Any] = _method(target, "flush")
        self.teardown: Callable[[ProjectionContext], Any] = _method(target, "teardown")


def _method(target: Any, name: str) -> Callable[[ProjectionContext], Any]:
    method = getattr(target, name, None)
    if method is None:
        return _noop
    if not callable(method):
        raise UsageError(f"the projection's {name} is not callable")
    return method


def load_projection(spec: str) -> ProjectionAdapter:
    """The projection ``spec`` names: ``MODULE[:ATTR]`` or ``path/to/file.py[:ATTR]`` (ATTR
    defaults to ``projection``; dotted ATTRs reach into classes or objects). Raises UsageError
    naming what could not be found or imported."""
    location, colon, attribute = spec.rpartition(":")
    if not colon:
        location, attribute = spec, ""
    attribute = attribute or "projection"
    if location.endswith(".py") or "/" in location:
        module = _load_file(location, spec)
    else:
        try:
            module = importlib.import_module(location)
        except ModuleNotFoundError as exc:
            raise UsageError(
                f"cannot import the projection module {location!r}: {exc}",
                hint="give MODULE:CALLABLE of an importable module (PYTHONPATH), or "
                "path/to/file.py:CALLABLE",
            ) from None
        except Exception as exc:
            raise UsageError(
                f"the projection module {location!r} failed to import: {type(exc).__name__}: {exc}"
            ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UsageError(
                f"{location} has no {attribute!r}",
                hint="name the projection as MODULE:CALLABLE (a module without :CALLABLE must "
                "define 'projection')",
            )
        target = getattr(target, part)
    return ProjectionAdapter(target, spec)


def _load_file(location: str, spec: str) -> Any:
    path = Path(location).expanduser()
    if not path.is_file():
        raise UsageError(f"projection file {location} does not exist")
    name = f"esctl_projection_{abs(hash(str(path.resolve()))):x}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise UsageError(f"cannot load {location} as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise UsageError(
            f"the projection file {location} failed to load: {type(exc).__name__}: {exc}"
        ) from None
    return module
