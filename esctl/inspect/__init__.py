"""``inspect``: read-only looks into a Redis event store — one aggregate
(:mod:`~esctl.inspect.aggregate`), one event (:mod:`~esctl.inspect.event`), the whole store's
integrity (:mod:`~esctl.inspect.integrity`), and where the memory goes
(:mod:`~esctl.inspect.stats`).

Everything here is safe against a production primary: keys are found with SCAN (never KEYS),
reads are pipelined in bounded round trips (``redisio.PIPELINE_CHUNK`` commands), nothing
blocks or writes. Streams are read and checked with :mod:`esctl.streams`, so a problem has the
same kind here as in ``migrate``'s quarantine.
"""

from esctl.inspect.aggregate import AggregateReport, EventRow, SnapshotInfo, inspect_aggregate
from esctl.inspect.aggregate import _text_or_none as _text_or_none  # read by esctl/cli/inspect.py
from esctl.inspect.commit_index import CommitIndex
from esctl.inspect.event import EventReport, inspect_event
from esctl.inspect.integrity import (
    HKEYS_LIMIT,
    INTEGRITY_KINDS,
    IntegrityProgress,
    IntegrityReport,
    check_integrity,
    finding,
    owns_commit_id,
    owns_partition,
)
from esctl.inspect.problems import DECODING_KINDS, PAYLOAD_KINDS, problem_key, stream_problems
from esctl.inspect.stats import FamilyMemory, StatsReport, TypeStats, WrongTypes, inspect_stats
from esctl.streams import FATAL_EVENT_KINDS

__all__ = [
    "DECODING_KINDS",
    "FATAL_EVENT_KINDS",
    "HKEYS_LIMIT",
    "INTEGRITY_KINDS",
    "PAYLOAD_KINDS",
    "AggregateReport",
    "CommitIndex",
    "EventReport",
    "EventRow",
    "FamilyMemory",
    "IntegrityProgress",
    "IntegrityReport",
    "SnapshotInfo",
    "StatsReport",
    "TypeStats",
    "WrongTypes",
    "check_integrity",
    "finding",
    "inspect_aggregate",
    "inspect_event",
    "inspect_stats",
    "owns_commit_id",
    "owns_partition",
    "problem_key",
    "stream_problems",
]
