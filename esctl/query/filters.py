"""What ``events query`` asks (:class:`QueryFilters`, built from the command line's text, the
:class:`Selectors`) and what it answers: one :class:`QueryResult` per matching event, and
:class:`QueryStats` on how much it looked at. Redis and PostgreSQL answer with the same results
(docs/design/query.md, "Results")."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from esctl import codec
from esctl.documents import document
from esctl.durations import parse_time
from esctl.errors import UsageError
from esctl.where import WhereClause, parse_where


@dataclass(frozen=True)
class QueryFilters:
    """What to find; every filter is optional and all must hold (docs/design/query.md,
    "Filters"). ``since`` is inclusive, ``until`` exclusive."""

    types: tuple[str, ...] = ()
    aggregate_type: str | None = None
    aggregates: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    where: tuple[WhereClause, ...] = ()
    limit: int | None = None


@dataclass(frozen=True)
class Selectors:
    """The selectors as given on a command line, as text: what :class:`QueryFilters` are built
    from, and what a replay checkpoint remembers (relative times still relative)."""

    types: tuple[str, ...] = ()
    aggregate_type: str | None = None
    aggregates: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    where: tuple[str, ...] = ()

    @property
    def has_selector(self) -> bool:
        return bool(
            self.types
            or self.aggregate_type is not None
            or self.aggregates
            or self.since
            or self.until
            or self.where
        )

    def filters(self, now: datetime | None = None, *, limit: int | None = None) -> QueryFilters:
        """The query filters, relative times counted back from ``now`` (default: now); raises
        UsageError on anything malformed."""
        moment = now or datetime.now(UTC)
        if limit is not None and limit < 0:
            raise UsageError("--limit must be 0 or more")
        _check_exact_names("--type", self.types)
        _check_exact_names("--aggregate-type", (self.aggregate_type or "",))
        _check_class_names(self.types)
        return QueryFilters(
            types=tuple(dict.fromkeys(self.types)),
            aggregate_type=self.aggregate_type,
            aggregates=tuple(dict.fromkeys(self.aggregates)),
            since=parse_time(self.since, option="--since", now=moment) if self.since else None,
            until=parse_time(self.until, option="--until", now=moment) if self.until else None,
            where=tuple(parse_where(w) for w in self.where),
            limit=limit,
        )


def _check_exact_names(option: str, names: Sequence[str]) -> None:
    """A .NET type name holds no ``*`` or ``?``: one that does was meant as a pattern, which
    these options do not take; UsageError rather than a selection that matches nothing."""
    for name in names:
        if "*" in name or "?" in name:
            raise UsageError(
                f"{option} {name}: takes a type's exact name, not a pattern",
                hint="`esctl inspect stats` lists the event types the store holds (--type takes "
                "a class name, e.g. ItemScoreCreated, and repeats for several; "
                "--aggregate-type the AggregateType, e.g. ItemScore)",
            )


def _check_class_names(names: Sequence[str]) -> None:
    """An event type is the class name alone (.NET ``Type.Name``: no namespace, assembly,
    enclosing class or generic arguments), so a ``--type`` with a ``.``, ``,``, ``+`` or ``[``
    (a ``$type`` or a full name, as transforms rules write them) matches nothing: UsageError
    naming the class name to give instead."""
    for name in names:
        short = codec.event_type_from_type_name(name)
        if short != name:
            raise UsageError(
                f"--type {name!r}: takes the event type's class name alone, without namespace, "
                "assembly or generic arguments",
                hint=f"`--type {shlex.quote(short)}`; `esctl inspect stats` lists the event "
                "types the store holds",
            )


@dataclass(slots=True)
class QueryResult:
    """One matching event. ``payload`` is the payload JSON as UTF-8 bytes, as stored (Redis) or
    as jsonb prints it (PostgreSQL); ``data`` parses it on demand."""

    aggregate_id: str
    version: int
    event_type: str
    aggregate_type: str
    timestamp: str
    commit_id: str | None
    payload: bytes
    _data: Any = field(default=None, repr=False)

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    @property
    def data(self) -> Any:
        if self._data is None:
            self._data = orjson.loads(self.payload)
        return self._data

    def _envelope(self) -> dict[str, Any]:
        """Every field of a result but ``data``."""
        return document(self, "aggregate_id version event_type aggregate_type timestamp commit_id")

    def as_dict(self) -> dict[str, Any]:
        return {**self._envelope(), "data": self.data}

    def json_line(self) -> bytes:
        """The result as one JSON object (bytes, no newline) with ``data`` spliced in as the
        payload text itself, so a Redis payload keeps its exact key order and spelling."""
        return orjson.dumps(self._envelope())[:-1] + b',"data":' + self.payload + b"}"


@dataclass
class QueryStats:
    """How much a query looked at. ``events`` counts commit-list entries (Redis) or rows
    returned (PostgreSQL)."""

    aggregates: int = 0
    events: int = 0
    matched: int = 0
    unreadable: int = 0
