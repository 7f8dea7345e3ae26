"""What :func:`~esctl.demo.write_demo_store` wrote, exactly: the counts, the planted defects and
the queues (``DemoSummary``), which the tests take as ground truth."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DEFECT_KINDS = (
    "orphan",
    "missing_payload",
    "invalid_compressed",
    "version_gap",
    "shared_commit_list",
)
"""The defects every demo store has, one of each, in the order the summary lists them."""


@dataclass(frozen=True)
class PlantedDefect:
    """A defect the demo planted on purpose.

    ``key`` is the Redis key holding it: the event hash for ``orphan`` and
    ``invalid_compressed``, the commit list for ``missing_payload``, ``version_gap`` and
    ``shared_commit_list``. ``commit_id`` names the field / list entry (None for the last two).
    """

    kind: str
    key: str
    aggregate_id: str
    aggregate_types: tuple[str, ...]
    commit_id: str | None
    detail: str


@dataclass(frozen=True)
class QueueCounts:
    """One subscriber's reliable queue for one event type (LLEN of its three lists)."""

    subscriber: str
    event_type: str
    published: int
    processing: int
    stuck: int
    """Processing messages whose TimeStamp is more than STUCK_AFTER before ``now``."""
    dead_letters: int


@dataclass
class DemoSummary:
    """Exactly what :func:`write_demo_store` wrote.

    Counting rules: ``commit_ids`` counts commit-list entries; ``events`` those whose payload
    is stored (all but the ``missing_payload`` one); ``hash_fields`` every field of the event
    hashes (``events`` plus the orphan). The per-type counts and ``compressed_events`` count
    *readable* events only (``events`` minus the ``invalid_compressed`` one), so they equal
    what a decoder finds. ``aggregates`` counts (type, id) pairs: the two aggregates of the
    ``shared_commit_list`` defect share one commit list.
    """

    app: str
    env: str
    seed: int
    now: str
    aggregates: int
    commit_lists: int
    commit_ids: int
    events: int
    readable_events: int
    compressed_events: int
    legacy_events: int
    partitioned_events: int
    hash_fields: int
    event_hashes: int
    """Distinct event hash keys: the legacy hash plus the partition hashes in use."""
    legacy_only_aggregates: int
    mixed_layout_aggregates: int
    aggregates_by_type: dict[str, int]
    events_by_aggregate_type: dict[str, int]
    events_by_event_type: dict[str, int]
    aggregate_ids: dict[str, list[str]]
    snapshots: int
    compressed_snapshots: int
    subscribers: dict[str, list[str]]
    queues: list[QueueCounts]
    published_messages: int
    processing_messages: int
    stuck_messages: int
    dead_letters: int
    retry_data: int
    """``RetryData:{ENV:TYPE}:AGG`` hashes written (one dead letter has none yet)."""
    keys: int
    """Distinct Redis keys written (DBSIZE of an otherwise empty database)."""
    defects: list[PlantedDefect]
    samples: dict[str, str]
    """Handy names for a tour: a compressed event's hash and commit id, a legacy commit, ..."""

    def defect(self, kind: str) -> PlantedDefect:
        """The planted defect of ``kind`` (each kind is planted once)."""
        for defect in self.defects:
            if defect.kind == kind:
                return defect
        raise KeyError(kind)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
