"""The demo store as planned in memory before it is written: aggregates and their events."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Aggregate:
    """One aggregate: its type, its part in the demo (``role``), its events' kinds and instants."""

    type: str
    role: str
    offset_minutes: int
    kinds: list[str]
    id: str = ""
    ticks: list[int] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


@dataclass
class Event:
    """One event of an aggregate: what it is, when, its JSON and how it is stored."""

    aggregate: Aggregate
    index: int
    version: int
    kind: str
    ticks: int
    text: str = ""
    commit_id: str = ""
    legacy: bool = False
    value: bytes | None = None  # None: never stored (the missing payload)
    readable: bool = True
