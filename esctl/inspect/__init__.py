"""``inspect``: read-only looks into a Redis event store (being split into modules)."""

from esctl.inspect.integrity import (
    FATAL_EVENT_KINDS,
    HKEYS_LIMIT,
    INTEGRITY_KINDS,
    AggregateReport,
    CommitIndex,
    EventReport,
    EventRow,
    IntegrityProgress,
    IntegrityReport,
    StatsReport,
    _text_or_none,
    check_integrity,
    inspect_aggregate,
    inspect_event,
    inspect_stats,
    owns_commit_id,
)

__all__ = [
    "FATAL_EVENT_KINDS",
    "HKEYS_LIMIT",
    "INTEGRITY_KINDS",
    "AggregateReport",
    "CommitIndex",
    "EventReport",
    "EventRow",
    "IntegrityProgress",
    "IntegrityReport",
    "StatsReport",
    "_text_or_none",
    "check_integrity",
    "inspect_aggregate",
    "inspect_event",
    "inspect_stats",
    "owns_commit_id",
]
