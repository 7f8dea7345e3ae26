"""The demo store planned in memory, deterministically from a seed: which aggregates (the special
ones every store has, then random ones), their stories and timelines, their ids and commit ids,
the defects planted in them, and their snapshots."""

from __future__ import annotations

import base64
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from esctl import codec, layout
from esctl.demo import dotnet
from esctl.demo.domain import HISTORY_END, HISTORY_START, INTEGER_ID_TYPES, LEGACY_CUTOFF
from esctl.demo.payloads import Payloads
from esctl.demo.records import Aggregate, Event

# Special aggregates every demo store has: (aggregate type, role).
SPECIAL_ROLES: tuple[tuple[str, str], ...] = (
    ("ItemScore", "recent_a"),
    ("ItemScore", "recent_b"),
    ("Order", "recent_order"),
    ("Assessment", "recent_assessment"),
    ("Gradebook", "recent_gradebook"),
    ("ItemScore", "legacy_only"),
    ("Order", "legacy_only"),
    ("ItemScore", "mixed"),
    ("ItemScore", "mixed"),
    ("Order", "mixed"),
    ("Order", "mixed_snapshot"),
    ("Assessment", "mixed"),
    ("ItemScore", "orphan"),
    ("Order", "missing_payload"),
    ("ItemScore", "invalid_compressed"),
    ("Assessment", "version_gap"),
    ("Order", "shared"),
    ("Gradebook", "shared"),
)

# Recent aggregates: (kind, age before now). The queue plan (queues.py) refers to them by index.
RECENT_STORIES: dict[str, list[tuple[str, timedelta]]] = {
    "recent_a": [
        ("ItemScoreCreated", timedelta(days=2, minutes=13)),
        ("ItemScoreUpdated", timedelta(hours=26)),
        ("ItemScoreCommentAdded", timedelta(hours=5)),
        ("ItemScoreUpdated", timedelta(seconds=45)),
    ],
    "recent_b": [("ItemScoreCreated", timedelta(seconds=20))],
    "recent_order": [
        ("OrderPlaced", timedelta(hours=31)),
        ("OrderLineAdded", timedelta(hours=30, minutes=58)),
        ("OrderShipped", timedelta(hours=7)),
    ],
    "recent_assessment": [
        ("AssessmentStarted", timedelta(minutes=50)),
        ("ResponseRecorded", timedelta(minutes=40)),
        ("ResponseRecorded", timedelta(minutes=35)),
        ("AssessmentSubmitted", timedelta(minutes=30)),
    ],
    "recent_gradebook": [
        ("GradebookOpened", timedelta(days=3)),
        ("Envelope`1", timedelta(hours=2)),
        ("Envelope`1", timedelta(seconds=15)),
    ],
}

# The aggregates holding a planted defect: (role, aggregate type) -> the kinds of their events.
_DEFECT_STORIES: dict[tuple[str, str], tuple[str, ...]] = {
    ("invalid_compressed", "ItemScore"): (
        "ItemScoreCreated", "ItemScoreUpdated", "ItemScoreCommentAdded"),
    ("missing_payload", "Order"): ("OrderPlaced", "OrderLineAdded", "OrderShipped"),
    ("version_gap", "Assessment"): ("AssessmentStarted", "ResponseRecorded", "ResponseRecorded",
                                    "ResponseRecorded", "AssessmentSubmitted"),
    ("shared", "Order"): ("OrderPlaced", "OrderLineAdded", "OrderCancelled"),
    ("shared", "Gradebook"): ("GradebookOpened", "Envelope`1"),
}  # fmt: skip


class DemoPlan:
    """The demo store of ``app`` / ``env`` in memory, before anything is written: built by
    :meth:`build`, deterministically from ``seed`` and ``now``."""

    def __init__(self, app: str, env: str, seed: int, aggregates: int, now: datetime) -> None:
        self.app = app
        self.env = env
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = now
        self.count = aggregates
        self.payloads = Payloads(self.rng)
        self.aggregates: list[Aggregate] = []
        self.orphan: Event | None = None
        self.snapshots: list[tuple[Aggregate, int, str]] = []  # (aggregate, version, json)

    def moment(self, start: datetime, end: datetime) -> datetime:
        span = (end - start) // timedelta(seconds=1)
        return start + timedelta(seconds=self.rng.randrange(max(span, 1)))

    def build(self) -> None:
        """Plan every aggregate, event, defect and snapshot (in this order: the draws from
        ``rng`` follow it)."""
        rng = self.rng
        roster = list(SPECIAL_ROLES)
        weights = {"ItemScore": 40, "Assessment": 20, "Order": 25, "Gradebook": 15}
        for _ in range(self.count - len(roster)):
            kind = rng.choices(list(weights), weights=list(weights.values()))[0]
            roster.append((kind, "normal"))
        for aggregate_type, role in roster:
            offset = rng.choice((0, 0, 0, 0, -300, -240, 60, 120, 330, 540))
            aggregate = Aggregate(aggregate_type, role, offset, self.story(aggregate_type, role))
            self.timeline(aggregate)
            self.aggregates.append(aggregate)
        self.assign_ids()
        shared = [n for n in Counter(a.id for a in self.aggregates).values() if n > 1]
        assert shared == [2], "exactly one commit list is shared (the planted defect)"
        for aggregate in self.aggregates:
            self.build_events(aggregate)
        self.assign_commit_ids()
        self.plant_orphan()
        self.plan_snapshots()

    def story(self, aggregate_type: str, role: str) -> list[str]:
        """The kinds of an aggregate's events, in order: set for the special roles, drawn at
        random for the others."""
        if role in RECENT_STORIES:
            return [kind for kind, _ in RECENT_STORIES[role]]
        if (role, aggregate_type) in _DEFECT_STORIES:
            return list(_DEFECT_STORIES[role, aggregate_type])
        return self.random_story(aggregate_type, low=4 if role.startswith("mixed") else 1)

    def random_story(self, aggregate_type: str, *, low: int) -> list[str]:
        """A random story of at least ``low`` events (the mixed-layout aggregates need 4)."""
        rng = self.rng
        if aggregate_type == "ItemScore":
            n = max(low, rng.choice((1, 2, 3, 3, 4, 5, 6, 8)))
            kinds = ["ItemScoreCreated"]
            kinds += [
                "ItemScoreCommentAdded" if rng.random() < 0.3 else "ItemScoreUpdated"
                for _ in range(n - 1)
            ]
            if n >= 4 and rng.random() < 0.4:
                kinds[-1] = "ItemScoreFinalized"
            return kinds
        if aggregate_type == "Order":
            n = max(low, rng.randint(1, 6))
            kinds = ["OrderPlaced"] + ["OrderLineAdded"] * (n - 1)
            if n >= 3:
                kinds[-1] = rng.choice(("OrderShipped", "OrderShipped", "OrderCancelled"))
            return kinds
        if aggregate_type == "Assessment":
            n = max(low, rng.randint(2, 7))
            kinds = ["AssessmentStarted"] + ["ResponseRecorded"] * (n - 1)
            if n >= 3:
                kinds[-1] = "AssessmentSubmitted"
            return kinds
        n = max(low, rng.randint(1, 5))
        return ["GradebookOpened"] + ["Envelope`1"] * (n - 1)

    def timeline(self, aggregate: Aggregate) -> None:
        """Event instants (ticks), increasing; legacy ones before LEGACY_CUTOFF."""
        rng = self.rng
        n = len(aggregate.kinds)
        moments: list[datetime]
        if aggregate.role in RECENT_STORIES:
            moments = [
                self.now - age + timedelta(milliseconds=rng.randrange(-3000, 3000))
                for _, age in RECENT_STORIES[aggregate.role]
            ]
        elif aggregate.role == "legacy_only":
            start = self.moment(HISTORY_START, datetime(2017, 6, 1, tzinfo=UTC))
            moments = self.spread(start, n, LEGACY_CUTOFF - timedelta(days=2), mean_days=4)
        elif aggregate.role.startswith("mixed"):
            legacy = max(1, n // 2)
            start = self.moment(datetime(2017, 3, 1, tzinfo=UTC), datetime(2017, 8, 1, tzinfo=UTC))
            moments = self.spread(start, legacy, LEGACY_CUTOFF - timedelta(days=2), mean_days=6)
            later = self.moment(datetime(2017, 10, 5, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC))
            moments += self.spread(later, n - legacy, HISTORY_END, mean_days=40)
        else:
            start = self.moment(datetime(2017, 10, 5, tzinfo=UTC), datetime(2024, 9, 1, tzinfo=UTC))
            moments = self.spread(start, n, HISTORY_END, mean_days=3)
        ticks = []
        for moment in moments:
            value = dotnet.ticks(moment) + rng.randrange(10)
            if value % 10 == 0:
                value += 1  # Newtonsoft trims trailing zeros: keep all seven digits
            ticks.append(value)
        aggregate.ticks = ticks

    def spread(self, start: datetime, n: int, end: datetime, *, mean_days: float) -> list[datetime]:
        gaps = [
            min(self.rng.expovariate(1 / (mean_days * 86400)), 60 * 86400) + 30
            for _ in range(n - 1)
        ]
        room = (end - start).total_seconds()
        total = sum(gaps)
        if total > room:
            gaps = [g * room / total for g in gaps]
        moments = [start]
        for gap in gaps:
            moments.append(moments[-1] + timedelta(seconds=gap))
        return [m.replace(microsecond=self.rng.randrange(1_000_000)) for m in moments]

    def assign_ids(self) -> None:
        # Integer ids come from a database sequence: older aggregates have smaller ids.
        next_id = dict(INTEGER_ID_TYPES)
        shared_order: Aggregate | None = None
        for aggregate in sorted(self.aggregates, key=lambda a: a.ticks[0]):
            if aggregate.type not in INTEGER_ID_TYPES:
                continue
            if aggregate.role == "shared" and aggregate.type == "Gradebook":
                continue
            aggregate.id = str(next_id[aggregate.type])
            next_id[aggregate.type] += self.rng.choice((1, 1, 1, 2, 3))
            if aggregate.role == "shared":
                shared_order = aggregate
        for aggregate in self.aggregates:
            if aggregate.type not in INTEGER_ID_TYPES:
                aggregate.id = dotnet.guid(self.rng)
            elif aggregate.role == "shared" and aggregate.type == "Gradebook":
                assert shared_order is not None
                aggregate.id = shared_order.id  # two types, one id: one commit list

    def build_events(self, aggregate: Aggregate) -> None:
        gap_at = 2 if aggregate.role == "version_gap" else None  # version 3 is never written
        long_answers = aggregate.role == "recent_assessment"
        for index, (kind, ticks) in enumerate(zip(aggregate.kinds, aggregate.ticks, strict=True)):
            version = index + 1 if gap_at is None or index < gap_at else index + 2
            event = Event(aggregate, index, version, kind, ticks)
            event.text = self.payloads.event(aggregate, event, long_answers=long_answers)
            aggregate.events.append(event)

    def assign_commit_ids(self) -> None:
        """Commit ids in save order: a counter for legacy saves, GUIDs afterwards."""
        legacy_counter = 0
        for event in self.events_in_save_order():
            if event.ticks < dotnet.ticks(LEGACY_CUTOFF):
                legacy_counter += 1
                event.commit_id = str(legacy_counter)
                event.legacy = True
            else:
                event.commit_id = dotnet.guid(self.rng)
            event.value = codec.encode_value(event.text)
        for aggregate in self.aggregates:
            last = aggregate.events[-1]
            if aggregate.role == "missing_payload":
                last.value = None
                last.readable = False
            elif aggregate.role == "invalid_compressed":
                # A gzip header followed by a deflate block of the reserved type 3: both
                # zlib and .NET's GZipStream reject it; the library then uses it as text.
                gz = (
                    b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x0a"
                    + b"\xff"
                    + bytes(self.rng.randrange(256) for _ in range(45))
                )
                last.value = base64.b64encode(gz)
                last.readable = False

    def events_in_save_order(self) -> list[Event]:
        events = [e for a in self.aggregates for e in a.events]
        return sorted(events, key=lambda e: e.ticks)

    def plant_orphan(self) -> None:
        """A save that died between HSET and RPUSH: the aggregate's next event, never listed."""
        aggregate = next(a for a in self.aggregates if a.role == "orphan")
        last = aggregate.events[-1]
        ticks = last.ticks + 3 * 3600 * dotnet.TICKS_PER_SECOND + 1_234_567
        orphan = Event(
            aggregate, len(aggregate.events), last.version + 1, "ItemScoreUpdated", ticks
        )
        orphan.text = self.payloads.event(aggregate, orphan)
        orphan.commit_id = dotnet.guid(self.rng)
        orphan.value = codec.encode_value(orphan.text)
        self.orphan = orphan

    def plan_snapshots(self) -> None:
        rng = self.rng
        for aggregate in self.aggregates:
            n = len(aggregate.events)
            forced = aggregate.role in ("recent_assessment", "mixed_snapshot")
            eligible = aggregate.role in ("normal", "legacy_only", "mixed") and n >= 4
            if not forced and not (eligible and rng.random() < 0.5):
                continue
            upto = n if forced else rng.randint(n - 2, n)
            self.snapshots.append((aggregate, upto, self.payloads.snapshot(aggregate, upto)))

    def hash_key(self, event: Event) -> str:
        if event.legacy:
            return layout.legacy_event_hash_key(self.app)
        return layout.event_hash_key(self.app, event.commit_id)

    def list_key(self, aggregate: Aggregate) -> str:
        return layout.commit_list_key(self.app, aggregate.id)
