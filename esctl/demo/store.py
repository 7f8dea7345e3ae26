"""The demo event store: a small but complete Learning.EventStore data set, written into Redis
exactly as a live service writes it (``docs/layout.md``).

:func:`write_demo_store` writes a few hundred events of four aggregate types (a scoring
service's ``ItemScore``, ``Assessment``, ``Order`` and ``Gradebook``) in both storage layouts,
with compressed and plain payloads, snapshots, subscriber sets, queued / stuck / dead-lettered
messages and one of each kind of defect operators meet in real stores. It returns a
:class:`DemoSummary` that says exactly what it wrote, so tests use it as ground truth.

:func:`demo_environment` starts throwaway Redis and PostgreSQL servers, writes the demo store
into that Redis and stops the servers again (``esctl demo``).
"""

from __future__ import annotations

import base64
import random
import shlex
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import redis.exceptions

from esctl import codec, layout, redisio
from esctl.defaults import DEMO_SEED as DEFAULT_SEED
from esctl.errors import Refused

if TYPE_CHECKING:
    from esctl.servers import LocalPostgres, LocalRedis

DEMO_APP = "Learning.ScoringService.Web-Demo"
DEMO_ENV = "demo"
DEFAULT_AGGREGATES = 60
MIN_AGGREGATES = 20
"""The demo needs this many aggregates to hold every special case."""

DEFAULT_NOW = datetime(2025, 1, 15, 9, 30, tzinfo=UTC)
"""The demo's "present" unless the caller gives one: recent events and queued messages are
timestamped relative to it (``esctl demo`` passes the real clock)."""
HISTORY_START = datetime(2017, 2, 1, tzinfo=UTC)
HISTORY_END = datetime(2024, 12, 20, tzinfo=UTC)
"""Events that are not "recent" lie in [HISTORY_START, HISTORY_END]; ``now`` must be later."""
LEGACY_CUTOFF = datetime(2017, 10, 1, tzinfo=UTC)
"""Events saved before this instant are in the legacy layout (the library changed in October
2017); every later event is in the partitioned layout."""
STUCK_AFTER = timedelta(minutes=5)
"""The library's retry job treats a ProcessingEvents message older than this as stuck."""

DEFECT_KINDS = (
    "orphan",
    "missing_payload",
    "invalid_compressed",
    "version_gap",
    "shared_commit_list",
)

# --- the domain ----------------------------------------------------------------------------

_ASM = "Learning.ScoringService.Domain"
_EVENTS_NS = f"{_ASM}.Events"
_MODELS_NS = f"{_ASM}.Models"
_SNAPSHOTS_NS = f"{_ASM}.Snapshots"


def _event_type_name(cls: str) -> str:
    return f"{_EVENTS_NS}.{cls}, {_ASM}"


def _model(cls: str) -> str:
    return f"{_MODELS_NS}.{cls}, {_ASM}"


def _list_of(item_type_name: str) -> str:
    return f"System.Collections.Generic.List`1[[{item_type_name}]], mscorlib"


_STRING_LIST = _list_of("System.String, mscorlib")

# Short event type (what docs/layout.md calls TYPE) -> the assembly-qualified $type.
EVENT_TYPES: dict[str, str] = {
    "ItemScoreCreated": _event_type_name("ItemScoreCreated"),
    "ItemScoreUpdated": _event_type_name("ItemScoreUpdated"),
    "ItemScoreCommentAdded": _event_type_name("ItemScoreCommentAdded"),
    "ItemScoreFinalized": _event_type_name("ItemScoreFinalized"),
    "AssessmentStarted": _event_type_name("AssessmentStarted"),
    # A nested class: Type.Name is the inner name.
    "ResponseRecorded": f"{_EVENTS_NS}.AssessmentEvents+ResponseRecorded, {_ASM}",
    "AssessmentSubmitted": _event_type_name("AssessmentSubmitted"),
    "OrderPlaced": _event_type_name("OrderPlaced"),
    "OrderLineAdded": _event_type_name("OrderLineAdded"),
    "OrderShipped": _event_type_name("OrderShipped"),
    "OrderCancelled": _event_type_name("OrderCancelled"),
    "GradebookOpened": _event_type_name("GradebookOpened"),
    # A generic class: Type.Name keeps the arity, the type arguments are in [[…]].
    "Envelope`1": (
        f"Learning.Messaging.Envelope`1[[{_EVENTS_NS}.GradePublished, {_ASM}]], Learning.Messaging"
    ),
}

AGGREGATE_TYPES = ("ItemScore", "Assessment", "Order", "Gradebook")
_INTEGER_ID_TYPES = {"Order": 1001, "Gradebook": 500_001}  # first id of each integer-id type

REPORTING = "Learning.ReportingService.Worker-Demo"
NOTIFICATION = "Learning.NotificationService.Web-Demo"
SEARCH = "Learning.SearchIndexer.Worker-Demo"
BILLING = "Learning.BillingService.Worker-Demo"
ANALYTICS = "Learning.AnalyticsService.Worker-Demo"

SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "ItemScoreCreated": (REPORTING, NOTIFICATION, SEARCH),
    "ItemScoreUpdated": (REPORTING, SEARCH),
    "OrderPlaced": (BILLING, NOTIFICATION),
    "ResponseRecorded": (REPORTING, ANALYTICS),
    "Envelope`1": (REPORTING, NOTIFICATION),
}
"""Event type -> the services subscribed to it (``Subscribers:{ENV:TYPE}``)."""

_NAMES = (
    "Zoë Ångström",
    "José Núñez",
    "田中 太郎",
    "Søren Kierkegård",
    "Łukasz Wróblewski",
    "Αλέξανδρος Παπαδόπουλος",
    "Amélie Poulain",
    "Nguyễn Thị Minh",
    "Björk Guðmundsdóttir",
    "李小龍",
    "Ольга Смирнова",
    "Chloé O'Brien",
)
_SENTENCES = (
    "L'argumentation est claire, mais la conclusion manque de nuance.",
    "Die Gliederung überzeugt; an der Rechtschreibung (ß/ss) muss noch gearbeitet werden.",
    "解答は正しいですが、途中の計算をもう少し丁寧に書きましょう。",
    "答案结构清晰，论据充分，但引用格式需要统一。",  # noqa: RUF001 (Chinese punctuation)
    "Excellent use of evidence 👍 — keep going! 🎉",
    "La tesis es sólida; revisa la concordancia de los tiempos verbales.",
    "Ответ верный, но не хватает обоснования второго шага.",
    "Bom trabalho! A introdução poderia ser mais concisa. 🙂",
    "정답입니다. 풀이 과정을 조금 더 자세히 적어 주세요.",
    "Ciò che conta è il ragionamento: ottimo lavoro ✨",
    'The rubric criterion "coherence" was met; "citations" was not.',
    "Punkte:\n1. Einleitung ✔\n2. Hauptteil ✔\n3. Schluss ✘",
    "Saved under C:\\Scores\\2019 — see the attached file.",
    "Ἡ ἀπάντησις ὀρθή ἐστιν. 📐",
)
_COURSES = ("Français avancé", "数学 — 期末", "Physik für Anfänger", "Історія України", "Música 🎵")
_PRODUCTS = (
    ("BK-1042", "Workbook « Grammaire progressive »"),
    ("BK-2210", "漢字練習帳 (3級)"),
    ("PN-0007", "Füller mit Ersatzpatronen"),
    ("CL-3300", "Calculatrice scientifique — modèle ÉCOLE"),
    ("EB-9001", "E-book: Ελληνική Μυθολογία"),
    ("KT-5150", "Kit de química 🧪"),
)


# --- the summary ---------------------------------------------------------------------------


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


# --- planning ------------------------------------------------------------------------------

_TICKS_PER_SECOND = 10_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ticks(moment: datetime) -> int:
    """100-ns ticks since the Unix epoch."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 10


def _timestamp_text(ticks: int, offset_minutes: int) -> str:
    """A .NET DateTimeOffset round-trip string: 7 fractional digits, explicit offset."""
    seconds, fraction = divmod(ticks, _TICKS_PER_SECOND)
    t = time.gmtime(seconds + offset_minutes * 60)  # ~2x faster than datetime (bulk stores)
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
        f"{t.tm_sec:02d}.{fraction:07d}{sign}{hours:02d}:{minutes:02d}"
    )


_UUID_VERSION_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)


def _guid(rng: random.Random) -> str:
    """A random (version 4) GUID, lower case, as Guid.NewGuid().ToString() prints it; the same
    as ``str(uuid.UUID(int=rng.getrandbits(128), version=4))``, ~3x faster."""
    h = f"{rng.getrandbits(128) & _UUID_VERSION_CLEAR | _UUID_VERSION_4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _retry_time_text(moment: datetime) -> str:
    """``DateTimeOffset.UtcNow.ToString()`` under en-US, as the library writes LastRetryTime."""
    hour = moment.hour % 12 or 12
    half = "AM" if moment.hour < 12 else "PM"
    return f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment:%M:%S} {half} +00:00"


def _json(document: dict[str, Any]) -> str:
    # Newtonsoft's default output: compact, keys in declaration order, non-ASCII unescaped.
    return orjson.dumps(document).decode("utf-8")


@dataclass
class _Aggregate:
    type: str
    role: str
    offset_minutes: int
    kinds: list[str]
    id: str = ""
    ticks: list[int] = field(default_factory=list)
    events: list[_Event] = field(default_factory=list)


@dataclass
class _Event:
    aggregate: _Aggregate
    index: int
    version: int
    kind: str
    ticks: int
    text: str = ""
    commit_id: str = ""
    legacy: bool = False
    value: bytes | None = None  # None: never stored (the missing payload)
    readable: bool = True


# Special aggregates every demo store has: (aggregate type, role).
_SPECIAL_ROLES: tuple[tuple[str, str], ...] = (
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

# Recent aggregates: (kind, age before now). The queue plan below refers to them by index.
_RECENT_STORIES: dict[str, list[tuple[str, timedelta]]] = {
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

# Where a published message sits for one subscriber, when it is not simply consumed.
# Fresh messages (younger than STUCK_AFTER) are waiting in PublishedEvents for the 1st, 3rd, …
# subscriber and in flight (ProcessingEvents) for the 2nd, 4th, …
_QUEUE_OVERRIDES: dict[tuple[str, int, str], str] = {
    ("recent_a", 0, SEARCH): "published_twice",  # a backlog, replayed once: a duplicate
    ("recent_a", 0, NOTIFICATION): "dead_retried:3",
    ("recent_a", 1, REPORTING): "processing",  # stuck for a day
    ("recent_order", 0, BILLING): "processing",  # stuck
    ("recent_assessment", 1, ANALYTICS): "processing",  # stuck
    ("recent_assessment", 2, REPORTING): "dead",  # moved by the retry job, not retried yet
    ("recent_gradebook", 1, REPORTING): "dead_retried:1",
}

_EXCEPTIONS = (
    "Timeout performing EVAL (5000ms), next: EVAL, inst: 1, qu: 0, qs: 12, "
    "mgr: 9 of 10 available\r\n   at StackExchange.Redis.ConnectionMultiplexer"
    ".ExecuteSyncImpl[T](Message message, ResultProcessor`1 processor, ServerEndPoint server)"
    "\r\n   at {handler}.Handle({event} @event)",
    "Npgsql.PostgresException (0x80004005): 23505: duplicate key value violates unique "
    'constraint "ix_report_item"\r\n   at Npgsql.NpgsqlConnector.ReadMessage()'
    "\r\n   at {handler}.Handle({event} @event)",
)


class _Writer:
    """Builds the demo store in memory (deterministically from ``seed``), then writes it."""

    def __init__(self, app: str, env: str, seed: int, aggregates: int, now: datetime) -> None:
        self.app = app
        self.env = env
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = now
        self.count = aggregates
        self.aggregates: list[_Aggregate] = []
        self.orphan: _Event | None = None
        self.snapshots: list[tuple[_Aggregate, int, str]] = []  # (aggregate, version, json)

    # -- helpers --

    def guid(self) -> str:
        return _guid(self.rng)

    def name(self) -> str:
        return self.rng.choice(_NAMES)

    def sentence(self) -> str:
        return self.rng.choice(_SENTENCES)

    def long_text(self, at_least: int) -> str:
        parts: list[str] = []
        size = 0
        while size < at_least:
            part = self.sentence()
            parts.append(part)
            size += len(part.encode("utf-8")) + 1
        return " ".join(parts)

    def moment(self, start: datetime, end: datetime) -> datetime:
        span = (end - start) // timedelta(seconds=1)
        return start + timedelta(seconds=self.rng.randrange(max(span, 1)))

    # -- plan --

    def plan(self) -> None:
        rng = self.rng
        roster = list(_SPECIAL_ROLES)
        weights = {"ItemScore": 40, "Assessment": 20, "Order": 25, "Gradebook": 15}
        for _ in range(self.count - len(roster)):
            kind = rng.choices(list(weights), weights=list(weights.values()))[0]
            roster.append((kind, "normal"))
        for aggregate_type, role in roster:
            offset = rng.choice((0, 0, 0, 0, -300, -240, 60, 120, 330, 540))
            aggregate = _Aggregate(aggregate_type, role, offset, self.story(aggregate_type, role))
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
        rng = self.rng
        if role in _RECENT_STORIES:
            return [kind for kind, _ in _RECENT_STORIES[role]]
        if role == "invalid_compressed":
            return ["ItemScoreCreated", "ItemScoreUpdated", "ItemScoreCommentAdded"]
        if role == "missing_payload":
            return ["OrderPlaced", "OrderLineAdded", "OrderShipped"]
        if role == "version_gap":
            return ["AssessmentStarted", "ResponseRecorded", "ResponseRecorded",
                    "ResponseRecorded", "AssessmentSubmitted"]  # fmt: skip
        if role == "shared" and aggregate_type == "Order":
            return ["OrderPlaced", "OrderLineAdded", "OrderCancelled"]
        if role == "shared":
            return ["GradebookOpened", "Envelope`1"]
        low = 4 if role.startswith("mixed") else 1
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

    def timeline(self, aggregate: _Aggregate) -> None:
        """Event instants (ticks), increasing; legacy ones before LEGACY_CUTOFF."""
        rng = self.rng
        n = len(aggregate.kinds)
        moments: list[datetime]
        if aggregate.role in _RECENT_STORIES:
            moments = [
                self.now - age + timedelta(milliseconds=rng.randrange(-3000, 3000))
                for _, age in _RECENT_STORIES[aggregate.role]
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
            value = _ticks(moment) + rng.randrange(10)
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
        next_id = dict(_INTEGER_ID_TYPES)
        shared_order: _Aggregate | None = None
        for aggregate in sorted(self.aggregates, key=lambda a: a.ticks[0]):
            if aggregate.type not in _INTEGER_ID_TYPES:
                continue
            if aggregate.role == "shared" and aggregate.type == "Gradebook":
                continue
            aggregate.id = str(next_id[aggregate.type])
            next_id[aggregate.type] += self.rng.choice((1, 1, 1, 2, 3))
            if aggregate.role == "shared":
                shared_order = aggregate
        for aggregate in self.aggregates:
            if aggregate.type not in _INTEGER_ID_TYPES:
                aggregate.id = self.guid()
            elif aggregate.role == "shared" and aggregate.type == "Gradebook":
                assert shared_order is not None
                aggregate.id = shared_order.id  # two types, one id: one commit list

    def build_events(self, aggregate: _Aggregate) -> None:
        gap_at = 2 if aggregate.role == "version_gap" else None  # version 3 is never written
        long_answers = aggregate.role == "recent_assessment"
        for index, (kind, ticks) in enumerate(zip(aggregate.kinds, aggregate.ticks, strict=True)):
            version = index + 1 if gap_at is None or index < gap_at else index + 2
            event = _Event(aggregate, index, version, kind, ticks)
            event.text = self.payload(aggregate, event, long_answers=long_answers)
            aggregate.events.append(event)

    def payload(self, aggregate: _Aggregate, event: _Event, *, long_answers: bool = False) -> str:
        """The event's JSON exactly as Newtonsoft (TypeNameHandling.All) writes it."""
        rng = self.rng
        document: dict[str, Any] = {
            "$type": EVENT_TYPES[event.kind],
            "Id": aggregate.id,
            "TimeStamp": _timestamp_text(event.ticks, aggregate.offset_minutes),
            "Version": event.version,
            "AggregateType": aggregate.type,
        }
        kind = event.kind
        if kind == "ItemScoreCreated":
            criteria = [
                {"$type": _model("Criterion"), "Name": name, "Weight": weight,
                 "Points": rng.randint(0, 4)}
                for name, weight in (("Thèse", 0.4), ("Cohérence", 0.35), ("Références", 0.25))
            ]  # fmt: skip
            document |= {
                "ItemId": self.guid(),
                "LearnerId": rng.randint(10_000, 99_999),
                "LearnerName": self.name(),
                "Score": round(rng.uniform(0, 10), 1),
                "MaxScore": 10.0,
                "Rubric": {
                    "$type": _model("Rubric"),
                    "Name": "Essay — Argumentation (v2)",
                    "Criteria": {"$type": _list_of(_model("Criterion")), "$values": criteria},
                },
            }
        elif kind == "ItemScoreUpdated":
            document |= {
                "Score": round(rng.uniform(0, 10), 1),
                "PreviousScore": round(rng.uniform(0, 10), 1),
                "Reason": self.sentence(),
                "ScoredBy": self.name(),
            }
        elif kind == "ItemScoreCommentAdded":
            document |= {
                "CommentId": self.guid(),
                "Author": self.name(),
                "Comment": self.long_text(rng.randint(1100, 2600)),
                "Tags": {"$type": _STRING_LIST, "$values": ["Feedback", "Écriture", "作文"]},
            }
        elif kind == "ItemScoreFinalized":
            document |= {
                "FinalScore": round(rng.uniform(4, 10), 1),
                "Grade": rng.choice(("A", "A−", "B+", "B", "C")),  # noqa: RUF001
                "FinalizedBy": self.name(),
            }
        elif kind == "AssessmentStarted":
            document |= {
                "LearnerId": rng.randint(10_000, 99_999),
                "AssessmentName": rng.choice(_COURSES) + " — Test",
                "StartedBy": self.name(),
            }
        elif kind == "ResponseRecorded":
            long = long_answers or rng.random() < 0.5
            document |= {
                "QuestionNumber": event.index,
                "Answer": self.long_text(rng.randint(1050, 1800)) if long else self.sentence(),
                "Attachments": {
                    "$type": _list_of(_model("Attachment")),
                    "$values": [
                        {"$type": _model("Attachment"), "FileName": f"schéma_№{i}.png",
                         "Bytes": rng.randint(2_000, 900_000)}
                        for i in range(rng.randint(0, 2))
                    ],
                },
            }  # fmt: skip
        elif kind == "AssessmentSubmitted":
            document |= {
                "ResponseCount": len(aggregate.kinds) - 2,
                "DurationSeconds": rng.randint(300, 5400),
            }
        elif kind == "OrderPlaced":
            document |= {
                "CustomerId": rng.randint(100, 9999),
                "CustomerName": self.name(),
                "Currency": rng.choice(("EUR", "USD", "JPY", "CHF")),
                "ShippingAddress": {
                    "$type": _model("Address"),
                    "Street": rng.choice(("Königstraße 12", "1-2-3 Shibuya", "Rua São Bento 5")),
                    "City": rng.choice(("München", "東京", "São Paulo", "Zürich")),
                    "Country": rng.choice(("DE", "JP", "BR", "CH")),
                },
            }
        elif kind == "OrderLineAdded":
            many = rng.random() < 0.3
            lines = []
            for _ in range(rng.randint(9, 14) if many else rng.randint(1, 3)):
                sku, description = rng.choice(_PRODUCTS)
                lines.append(
                    {"$type": _model("OrderLine"), "Sku": sku, "Description": description,
                     "Quantity": rng.randint(1, 30), "UnitPrice": round(rng.uniform(1, 90), 2)}
                )  # fmt: skip
            document |= {"Lines": {"$type": _list_of(_model("OrderLine")), "$values": lines}}
        elif kind == "OrderShipped":
            document |= {
                "Carrier": rng.choice(("DHL", "ヤマト運輸", "La Poste")),
                "TrackingNumber": f"JD{rng.randrange(10**12):012d}",
            }
        elif kind == "OrderCancelled":
            document |= {"Reason": self.sentence(), "CancelledBy": self.name()}
        elif kind == "GradebookOpened":
            document |= {
                "CourseName": rng.choice(_COURSES),
                "Term": rng.choice(("2018-H1", "2019-H2", "2021-H1", "2024-H2")),
                "TeacherName": self.name(),
            }
        elif kind == "Envelope`1":
            comment = self.long_text(1100) if rng.random() < 0.2 else self.sentence()
            document |= {
                "CorrelationId": self.guid(),
                "Payload": {
                    "$type": f"{_EVENTS_NS}.GradePublished, {_ASM}",
                    "LearnerId": rng.randint(10_000, 99_999),
                    "Grade": rng.choice(("A", "B+", "C", "très bien", "優")),
                    "Comment": comment,
                },
            }
        else:  # pragma: no cover - every kind of EVENT_TYPES is handled above
            raise AssertionError(kind)
        return _json(document)

    def assign_commit_ids(self) -> None:
        """Commit ids in save order: a counter for legacy saves, GUIDs afterwards."""
        legacy_counter = 0
        for event in self.events_in_save_order():
            if event.ticks < _ticks(LEGACY_CUTOFF):
                legacy_counter += 1
                event.commit_id = str(legacy_counter)
                event.legacy = True
            else:
                event.commit_id = self.guid()
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

    def events_in_save_order(self) -> list[_Event]:
        events = [e for a in self.aggregates for e in a.events]
        return sorted(events, key=lambda e: e.ticks)

    def plant_orphan(self) -> None:
        """A save that died between HSET and RPUSH: the aggregate's next event, never listed."""
        aggregate = next(a for a in self.aggregates if a.role == "orphan")
        last = aggregate.events[-1]
        ticks = last.ticks + 3 * 3600 * _TICKS_PER_SECOND + 1_234_567
        orphan = _Event(
            aggregate, len(aggregate.events), last.version + 1, "ItemScoreUpdated", ticks
        )
        orphan.text = self.payload(aggregate, orphan)
        orphan.commit_id = self.guid()
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
            self.snapshots.append((aggregate, upto, self.snapshot(aggregate, upto)))

    def snapshot(self, aggregate: _Aggregate, upto: int) -> str:
        events = [orjson.loads(e.text) for e in aggregate.events[:upto]]
        document: dict[str, Any] = {
            "$type": f"{_SNAPSHOTS_NS}.{aggregate.type}Snapshot, {_ASM}",
            "Id": aggregate.id,
            "Version": events[-1]["Version"],
        }
        if aggregate.type == "ItemScore":
            scores = [e["Score"] for e in events if "Score" in e]
            comments = [e["Comment"] for e in events if "Comment" in e]
            document |= {
                "Score": scores[-1] if scores else None,
                "MaxScore": 10.0,
                "Finalized": any("FinalScore" in e for e in events),
                "Comments": {"$type": _STRING_LIST, "$values": comments},
            }
        elif aggregate.type == "Assessment":
            document |= {
                "Answers": {
                    "$type": _STRING_LIST,
                    "$values": [e["Answer"] for e in events if "Answer" in e],
                },
                "Submitted": any("ResponseCount" in e for e in events),
            }
        elif aggregate.type == "Order":
            lines = sum(len(e["Lines"]["$values"]) for e in events if "Lines" in e)
            status = "Placed"
            for e in events:
                if "TrackingNumber" in e:
                    status = "Shipped"
                elif "CancelledBy" in e:
                    status = "Cancelled"
            document |= {"CustomerId": events[0]["CustomerId"], "LineCount": lines,
                         "Status": status}  # fmt: skip
        else:
            document |= {"CourseName": events[0]["CourseName"], "GradesPublished": upto - 1}
        return _json(document)

    # -- keys --

    def hash_key(self, event: _Event) -> str:
        if event.legacy:
            return layout.legacy_event_hash_key(self.app)
        return layout.event_hash_key(self.app, event.commit_id)

    def list_key(self, aggregate: _Aggregate) -> str:
        return layout.commit_list_key(self.app, aggregate.id)

    # -- commands --

    def commands(self) -> list[tuple[Any, ...]]:
        """Every write, in the order a live system would have made them."""
        timed: list[tuple[int, int, list[tuple[Any, ...]]]] = []
        order = 0
        for event in self.events_in_save_order():
            save: list[tuple[Any, ...]] = []
            if event.value is not None:
                save.append(("HSET", self.hash_key(event), event.commit_id, event.value))
            save.append(("RPUSH", self.list_key(event.aggregate), event.commit_id))
            timed.append((event.ticks, order, save))
            order += 1
        assert self.orphan is not None
        orphan = self.orphan
        timed.append(
            (orphan.ticks, order, [("HSET", self.hash_key(orphan), orphan.commit_id, orphan.value)])
        )
        timed.sort(key=lambda item: (item[0], item[1]))
        commands = [command for _, _, save in timed for command in save]
        for aggregate, _, text in self.snapshots:
            key = layout.snapshot_hash_key(self.app, aggregate.id)
            commands.append(("HSET", key, aggregate.id, codec.encode_value(text)))
        for event_type, subscribers in SUBSCRIPTIONS.items():
            commands.append(("SADD", layout.subscribers_key(self.env, event_type), *subscribers))
        commands += self.queue_commands()
        return commands

    def queue_plan(self) -> list[tuple[_Event, str, str]]:
        """(event, subscriber, state) for every message not simply consumed, oldest first."""
        plan = []
        recent = [a for a in self.aggregates if a.role in _RECENT_STORIES]
        events = sorted((e for a in recent for e in a.events), key=lambda e: e.ticks)
        now_ticks = _ticks(self.now)
        for event in events:
            for position, subscriber in enumerate(SUBSCRIPTIONS.get(event.kind, ())):
                state = _QUEUE_OVERRIDES.get((event.aggregate.role, event.index, subscriber))
                if state is None and now_ticks - event.ticks < _ticks_of(STUCK_AFTER):
                    state = "published" if position % 2 == 0 else "processing"
                if state is not None:
                    plan.append((event, subscriber, state))
        return plan

    def queue_commands(self) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        for event, subscriber, state in self.queue_plan():
            message = event.text.encode("utf-8")  # queues carry the uncompressed JSON
            which = {"published": "published", "published_twice": "published",
                     "processing": "processing"}.get(state, "dead")  # fmt: skip
            key = layout.queue_key(subscriber, self.env, event.kind, which)
            commands.append(("LPUSH", key, message))
            if state == "published_twice":
                commands.append(("LPUSH", key, message))
            if state.startswith("dead_retried:"):
                retries = int(state.split(":")[1])
                handler = (
                    subscriber.split("-")[0]
                    + ".Handlers."
                    + event.kind.replace("`1", "")
                    + "Handler"
                )
                exception = self.rng.choice(_EXCEPTIONS).format(handler=handler, event=event.kind)
                retried_at = self.now - timedelta(minutes=self.rng.randint(6, 50))
                commands.append(
                    ("HSET", layout.retry_data_key(self.env, event.kind, event.aggregate.id),
                     "RetryCount", str(retries), "LastRetryTime", _retry_time_text(retried_at),
                     "LastException", exception)
                )  # fmt: skip
        return commands

    # -- summary --

    def summary(self, commands: Sequence[tuple[Any, ...]]) -> DemoSummary:
        app = self.app
        committed = [e for a in self.aggregates for e in a.events]
        stored = [e for e in committed if e.value is not None]
        readable = [e for e in committed if e.readable]
        list_keys = {self.list_key(a) for a in self.aggregates}
        assert self.orphan is not None
        hash_keys = {self.hash_key(e) for e in stored} | {self.hash_key(self.orphan)}
        legacy_aggregates = [a for a in self.aggregates if any(e.legacy for e in a.events)]
        by_type: dict[str, list[str]] = {t: [] for t in AGGREGATE_TYPES}
        for aggregate in self.aggregates:
            by_type[aggregate.type].append(aggregate.id)

        queues = []
        plan = self.queue_plan()
        now_ticks = _ticks(self.now)
        for event_type, subscribers in SUBSCRIPTIONS.items():
            for subscriber in subscribers:
                mine = [
                    (event, state)
                    for event, sub, state in plan
                    if sub == subscriber and event.kind == event_type
                ]
                published = sum(2 if s == "published_twice" else 1
                                for _, s in mine if s.startswith("published"))  # fmt: skip
                processing = [e for e, s in mine if s == "processing"]
                stuck = [e for e in processing if now_ticks - e.ticks > _ticks_of(STUCK_AFTER)]
                dead = [e for e, s in mine if s.startswith("dead")]
                queues.append(
                    QueueCounts(subscriber, event_type, published, len(processing), len(stuck),
                                len(dead))
                )  # fmt: skip
        retry_data = sum(1 for _, _, s in plan if s.startswith("dead_retried:"))

        written_keys = {str(command[1]) for command in commands}
        compressed = [e for e in readable if e.value is not None and e.value.startswith(b"H4sI")]
        snapshot_values = [codec.encode_value(text) for _, _, text in self.snapshots]
        return DemoSummary(
            app=app,
            env=self.env,
            seed=self.seed,
            now=self.now.isoformat(),
            aggregates=len(self.aggregates),
            commit_lists=len(list_keys),
            commit_ids=len(committed),
            events=len(stored),
            readable_events=len(readable),
            compressed_events=len(compressed),
            legacy_events=sum(1 for e in stored if e.legacy),
            partitioned_events=sum(1 for e in stored if not e.legacy),
            hash_fields=len(stored) + 1,
            event_hashes=len(hash_keys),
            legacy_only_aggregates=sum(
                1 for a in legacy_aggregates if all(e.legacy for e in a.events)
            ),
            mixed_layout_aggregates=sum(
                1 for a in legacy_aggregates if not all(e.legacy for e in a.events)
            ),
            aggregates_by_type={t: len(ids) for t, ids in by_type.items()},
            events_by_aggregate_type=dict(
                sorted(Counter(e.aggregate.type for e in readable).items())
            ),
            events_by_event_type=dict(sorted(Counter(e.kind for e in readable).items())),
            aggregate_ids=by_type,
            snapshots=len(self.snapshots),
            compressed_snapshots=sum(1 for v in snapshot_values if v.startswith(b"H4sI")),
            subscribers={t: sorted(s) for t, s in SUBSCRIPTIONS.items()},
            queues=queues,
            published_messages=sum(q.published for q in queues),
            processing_messages=sum(q.processing for q in queues),
            stuck_messages=sum(q.stuck for q in queues),
            dead_letters=sum(q.dead_letters for q in queues),
            retry_data=retry_data,
            keys=len(written_keys),
            defects=self.defects(),
            samples=self.samples(compressed),
        )

    def defects(self) -> list[PlantedDefect]:
        found: list[PlantedDefect] = []
        assert self.orphan is not None
        orphan = self.orphan
        found.append(
            PlantedDefect(
                "orphan", self.hash_key(orphan), orphan.aggregate.id, (orphan.aggregate.type,),
                orphan.commit_id,
                f"payload of {orphan.aggregate.type} version {orphan.version} that no commit "
                "list names (a save that died between HSET and RPUSH)",
            )
        )  # fmt: skip
        for aggregate in self.aggregates:
            last = aggregate.events[-1]
            if aggregate.role == "missing_payload":
                found.append(
                    PlantedDefect(
                        "missing_payload", self.list_key(aggregate), aggregate.id,
                        (aggregate.type,), last.commit_id,
                        f"version {last.version} has no payload in either hash",
                    )
                )  # fmt: skip
            elif aggregate.role == "invalid_compressed":
                found.append(
                    PlantedDefect(
                        "invalid_compressed", self.hash_key(last), aggregate.id, (aggregate.type,),
                        last.commit_id,
                        f"version {last.version} starts with H4sI but is not valid gzip",
                    )
                )  # fmt: skip
            elif aggregate.role == "version_gap":
                versions = [e.version for e in aggregate.events]
                missing = sorted(set(range(1, versions[-1] + 1)) - set(versions))
                found.append(
                    PlantedDefect(
                        "version_gap", self.list_key(aggregate), aggregate.id, (aggregate.type,),
                        None,
                        f"versions {versions}: {', '.join(map(str, missing))} missing",
                    )
                )  # fmt: skip
        shared = [a for a in self.aggregates if a.role == "shared"]
        found.append(
            PlantedDefect(
                "shared_commit_list", self.list_key(shared[0]), shared[0].id,
                tuple(a.type for a in shared), None,
                f"{' and '.join(a.type for a in shared)} {shared[0].id} both append to one "
                "commit list",
            )
        )  # fmt: skip
        order = {kind: i for i, kind in enumerate(DEFECT_KINDS)}
        return sorted(found, key=lambda d: order[d.kind])

    def samples(self, compressed: list[_Event]) -> dict[str, str]:
        sample = next(e for e in compressed if not e.legacy)
        legacy = next(a for a in self.aggregates if a.role == "mixed")
        recent = next(a for a in self.aggregates if a.role == "recent_a")
        invalid = next(a for a in self.aggregates if a.role == "invalid_compressed").events[-1]
        legacy_event = legacy.events[0]
        return {
            "app": self.app,
            "env": self.env,
            "compressed_hash": self.hash_key(sample),
            "compressed_commit": sample.commit_id,
            "invalid_hash": self.hash_key(invalid),
            "invalid_commit": invalid.commit_id,
            "legacy_hash": self.hash_key(legacy_event),
            "legacy_commit": legacy_event.commit_id,
            "aggregate": recent.id,
            "legacy_aggregate": legacy.id,
            "stuck_subscriber": REPORTING,
            "stuck_event_type": "ItemScoreUpdated",
            "dead_subscriber": NOTIFICATION,
            "dead_event_type": "ItemScoreCreated",
        }


def _ticks_of(span: timedelta) -> int:
    return span // timedelta(microseconds=1) * 10


def write_demo_store(
    client: redisio.RedisClient,
    *,
    app: str,
    env: str,
    seed: int = DEFAULT_SEED,
    aggregates: int = DEFAULT_AGGREGATES,
    now: datetime | None = None,
    check_empty: bool = True,
) -> DemoSummary:
    """Write the demo event store of ``app`` / ``env`` into Redis and say what was written.

    Deterministic for a given ``seed``, ``aggregates`` and ``now`` (default DEFAULT_NOW; the
    recent events and queued messages are timestamped relative to it, everything else lies
    between 2017 and HISTORY_END). Writes are made as a live service makes them, in time order:
    HSET of the payload (gzip+base64 above 1000 bytes) into its hash, then RPUSH of the commit
    id; queue messages are LPUSHed uncompressed. Sent in pipelined round trips (not atomic).

    With ``check_empty`` (default) it refuses (``Refused``) to write into a store that already
    has this app's legacy hash or this env's subscriber sets: appending a second demo to the
    same keys would make the summary wrong.
    """
    if aggregates < MIN_AGGREGATES:
        raise ValueError(f"the demo store needs at least {MIN_AGGREGATES} aggregates")
    moment = now or DEFAULT_NOW
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if moment < HISTORY_END + timedelta(days=4):
        raise ValueError(f"now must be after {HISTORY_END + timedelta(days=4):%Y-%m-%d}")
    writer = _Writer(app, env, seed, aggregates, moment.astimezone(UTC))
    if check_empty:
        probe = [layout.legacy_event_hash_key(app)]
        probe += [layout.subscribers_key(env, t) for t in SUBSCRIPTIONS]
        try:
            existing = client.exists(*probe)
        except redis.exceptions.RedisError as exc:
            raise redisio.wrap_errors(client, exc) from exc
        if existing:
            raise Refused(
                f"Redis {redisio.describe(client)} already holds data of app {app!r} or env "
                f"{env!r}; the demo writes only into an empty store",
                hint="use an empty database (or another --app / --env)",
            )
    writer.plan()
    commands = writer.commands()
    redisio.pipelined(client, commands)
    return writer.summary(commands)


# --- the demo environment ------------------------------------------------------------------


@dataclass
class DemoRun:
    """A demo store in throwaway servers. ``kept``: the servers outlive this process."""

    summary: DemoSummary
    redis: LocalRedis
    postgres: LocalPostgres
    kept: bool

    def exports(self) -> dict[str, str]:
        """The environment variables that point esctl at the demo."""
        return {
            "ESCTL_REDIS_URL": self.redis.url,
            "ESCTL_PG_DSN": self.postgres.dsn,
            "ESCTL_APP": self.summary.app,
            "ESCTL_ENV": self.summary.env,
        }

    def export_line(self) -> str:
        return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in self.exports().items())

    def tools(self) -> dict[str, str]:
        """How the tour runs ``psql`` and ``redis-cli``: from PATH, else the ones bundled beside
        the servers (a machine with only the ``local`` extra has no others)."""
        from esctl import servers

        return {
            "psql": servers.client_command("psql", self.postgres.bin_dir),
            "redis_cli": servers.client_command("redis-cli", self.redis.bin_dir),
        }

    def stop_commands(self) -> list[str]:
        """Shell commands that stop kept servers (PostgreSQL: SIGINT, its fast shutdown) and
        remove their data folders."""
        return [
            f"kill {self.redis.pid}; kill -INT {self.postgres.pid}",
            f"rm -rf {shlex.quote(str(self.redis.workdir))} "
            f"{shlex.quote(str(self.postgres.workdir))}",
        ]


@contextmanager
def demo_environment(
    *,
    keep: bool = False,
    seed: int = DEFAULT_SEED,
    now: datetime | None = None,
    workdir: Path | None = None,
) -> Iterator[DemoRun]:
    """Start a throwaway Redis and PostgreSQL, write the demo store (app DEMO_APP, env
    DEMO_ENV) into that Redis, and yield the run.

    The servers are stopped when the block ends, on success or error (Ctrl-C included), unless
    ``keep`` is set and the block succeeded: then they are detached and keep running after this
    process exits, to be stopped by pid (:meth:`DemoRun.stop_commands`). ``now`` defaults to the
    real clock, so the queued messages look fresh or stuck as they would in production.
    ``workdir``: a parent folder for the servers' data (default: new temporary folders).
    """
    from esctl import servers  # starts processes: imported only when a demo is asked for

    redis_server: LocalRedis | None = None
    postgres_server: LocalPostgres | None = None
    succeeded = False
    try:
        redis_server = servers.start_redis(
            workdir=workdir / "redis" if workdir else None,
            # A setting esctl doctor flags (events can be evicted), to show a finding and its
            # fix in the tour; without maxmemory nothing is ever evicted here.
            extra_args=["--maxmemory-policy", "allkeys-lru"],
            detach=keep,
        )
        postgres_server = servers.start_postgres(
            workdir=workdir / "postgres" if workdir else None, fast=True, detach=keep
        )
        client = redisio.connect(redis_server.url)
        try:
            summary = write_demo_store(
                client, app=DEMO_APP, env=DEMO_ENV, seed=seed, now=now or datetime.now(UTC)
            )
        finally:
            client.close()
        yield DemoRun(summary, redis_server, postgres_server, kept=keep)
        succeeded = True
    finally:
        if not (keep and succeeded):
            for server in (postgres_server, redis_server):
                if server is not None:
                    with suppress(Exception):
                        server.stop()
