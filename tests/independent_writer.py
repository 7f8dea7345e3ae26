"""An independent writer of the Learning.EventStore Redis formats (``docs/layout.md``).

It imports nothing from ``esctl``: partitions (CRC-32 via zlib), gzip+base64 (gzip and base64
modules, with a .NET-like gzip header: mtime 0, OS byte 0x0a) and key strings are its own. The
acceptance tests of migrate / inspect / verify compare esctl's results with the ground truth
this module returns, so a bug shared by esctl's layout or codec and its readers cannot hide.

- :func:`write_store` writes a configurable store the way the library saves (HSET of the
  payload, then RPUSH of the commit id, in time order) and plants defects on request.
- :func:`append_events` adds events to existing aggregates while something else runs (a live
  service writing during a migration): per event HSET, then RPUSH in a transaction conditioned
  on the list's length (WATCH / MULTI), retried when the list changed.

Everything is deterministic for a seed. Payloads are compact JSON with ``$type`` first and
non-ASCII text unescaped, as Newtonsoft.Json writes them.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import redis.cluster

# A single server or a cluster: each command and each WATCH transaction touches one key.
Client = redis.Redis | redis.cluster.RedisCluster

PARTITIONS = 655360
COMPRESSION_THRESHOLD = 1000
LEGACY_CUTOFF = datetime(2017, 10, 1, tzinfo=UTC)

DEFECT_KINDS = (
    "orphan",
    "missing_payload",
    "invalid_compressed",
    "version_gap",
    "duplicate_version",
    "id_mismatch",
    "aggregate_type_changed",
    "shared_commit_list",
)
"""What :func:`write_store` can plant. ``orphan`` leaves its aggregate loadable (an orphan is
not an event); every other kind makes the aggregate(s) it is planted on unloadable."""


# --- formats -------------------------------------------------------------------------------


def partition(identifier: str) -> int:
    return zlib.crc32(identifier.encode("utf-8")) % PARTITIONS


def commit_list_key(app: str, aggregate_id: str) -> str:
    return "{EventStore:" + app + "}:" + aggregate_id


def event_hash_key(app: str, commit_id: str) -> str:
    return "EventStore:" + app + ":" + str(partition(commit_id))


def legacy_hash_key(app: str) -> str:
    return "EventStore:" + app


def snapshot_hash_key(app: str, aggregate_id: str) -> str:
    return "Snapshots:" + app + ":" + str(partition(aggregate_id))


def gzip_base64(text: str) -> bytes:
    """gzip (mtime 0, OS byte 0x0a as .NET's GZipStream writes) + base64."""
    gz = bytearray(gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0))
    gz[9] = 0x0A
    return base64.b64encode(bytes(gz))


def gunzip_base64(value: bytes) -> str:
    """The inverse of :func:`gzip_base64`; raises on anything that is not gzip+base64."""
    return gzip.decompress(base64.b64decode(value, validate=True)).decode("utf-8")


def stored_value(text: str, threshold: int | None = COMPRESSION_THRESHOLD) -> tuple[bytes, bool]:
    """(value the library stores for ``text``, whether it is compressed)."""
    data = text.encode("utf-8")
    if threshold is not None and len(data) > threshold:
        return gzip_base64(text), True
    return data, False


def invalid_gzip_base64(rng: random.Random) -> bytes:
    """Starts with ``H4sI`` (a gzip header) but the deflate data uses the reserved block type:
    base64 decodes, gunzip fails (in .NET too), so the library uses the text as it is."""
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x0a"
    return base64.b64encode(header + b"\x07" + bytes(rng.randrange(256) for _ in range(30)))


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_text(ticks: int, offset_minutes: int, *, trim: bool = False) -> str:
    """A DateTimeOffset as Newtonsoft writes it. ``ticks``: 100 ns since the Unix epoch (UTC).
    Seven fractional digits; with ``trim`` trailing zeros are dropped (Newtonsoft's
    ``FFFFFFF``), and the fraction with them when it is zero."""
    seconds, fraction = divmod(ticks, 10_000_000)
    local = _EPOCH + timedelta(seconds=seconds, minutes=offset_minutes)
    digits = f"{fraction:07d}"
    if trim:
        digits = digits.rstrip("0")
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    frac = f".{digits}" if digits else ""
    return f"{local:%Y-%m-%dT%H:%M:%S}{frac}{sign}{hours:02d}:{minutes:02d}"


def ticks_of(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1) * 10


# --- ground truth --------------------------------------------------------------------------


@dataclass
class TruthEvent:
    """One event as written.

    ``payload`` is the exact JSON text the writer serialised (for an ``invalid_compressed``
    event: the text it would have stored; ``stored`` holds the corrupt value). ``hash_key`` is
    the hash it is (or, for ``missing_payload``, would have been) stored in; ``stored`` the exact
    stored value, None when not stored. ``aggregate_id`` is the commit list's aggregate id; the
    payload's ``Id`` differs only for ``id_mismatch`` (``payload_id``)."""

    aggregate_id: str
    aggregate_type: str
    commit_id: str
    version: int
    event_type: str
    type_name: str
    timestamp: str
    payload: str
    hash_key: str
    legacy: bool
    compressed: bool
    stored: bytes | None
    payload_id: str
    defect: str | None = None

    @property
    def readable(self) -> bool:
        """The stored value decodes to ``payload``."""
        return self.stored is not None and self.defect != "invalid_compressed"


@dataclass
class TruthAggregate:
    aggregate_id: str
    aggregate_type: str
    list_key: str
    events: list[TruthEvent] = field(default_factory=list)
    """This aggregate's committed events in commit-list order (for a shared commit list, only
    its own; :attr:`GroundTruth.commit_lists` has the list as stored)."""
    defects: list[str] = field(default_factory=list)
    """Kinds planted on it that make it unloadable (never ``orphan``)."""

    @property
    def clean(self) -> bool:
        return not self.defects

    @property
    def last_version(self) -> int:
        return max(e.version for e in self.events)


@dataclass(frozen=True)
class TruthDefect:
    """A planted defect. ``key``: the event hash for ``orphan`` / ``invalid_compressed``, the
    commit list otherwise. ``commit_id``: the offending commit (for ``version_gap`` the first
    commit after the gap; None for ``shared_commit_list``)."""

    kind: str
    aggregate_id: str
    aggregate_types: tuple[str, ...]
    commit_id: str | None
    key: str
    detail: str


@dataclass
class GroundTruth:
    app: str
    seed: int
    threshold: int | None
    aggregates: list[TruthAggregate]
    commit_lists: dict[str, list[str]]
    """Every commit list exactly as stored (key -> commit ids, oldest first)."""
    orphans: list[TruthEvent]
    defects: list[TruthDefect]
    legacy_counter: int
    """The last legacy commit id used."""

    def aggregate(self, aggregate_id: str, aggregate_type: str | None = None) -> TruthAggregate:
        matches = [
            a
            for a in self.aggregates
            if a.aggregate_id == aggregate_id
            and (aggregate_type is None or a.aggregate_type == aggregate_type)
        ]
        if len(matches) != 1:
            raise KeyError((aggregate_id, aggregate_type))
        return matches[0]

    def events(self) -> list[TruthEvent]:
        """Every committed event (aggregate by aggregate, commit order)."""
        return [e for a in self.aggregates for e in a.events]

    def clean_aggregates(self) -> list[TruthAggregate]:
        return [a for a in self.aggregates if a.clean]

    def defective_aggregates(self) -> list[TruthAggregate]:
        return [a for a in self.aggregates if not a.clean]

    def defects_of(self, kind: str) -> list[TruthDefect]:
        return [d for d in self.defects if d.kind == kind]


# --- the domain ----------------------------------------------------------------------------

_ASM = "Learning.Enrollment.Domain"
_NS = f"{_ASM}.Events"
_MODELS = f"{_ASM}.Models"


def _typename(cls: str) -> str:
    return f"{_NS}.{cls}, {_ASM}"


def _list_type(item: str) -> str:
    return f"System.Collections.Generic.List`1[[{item}]], mscorlib"


# aggregate type -> (id kind, first event, following events); event = (short name, $type)
_DOMAIN: dict[str, tuple[str, tuple[str, str], tuple[tuple[str, str], ...]]] = {
    "Enrollment": (
        "guid",
        ("EnrollmentCreated", _typename("EnrollmentCreated")),
        (
            ("EnrollmentProgressed", _typename("EnrollmentProgressed")),
            ("EnrollmentNoteAdded", _typename("EnrollmentNoteAdded")),
        ),
    ),
    "Invoice": (
        "int",
        ("InvoiceIssued", _typename("InvoiceIssued")),
        (
            ("InvoiceLineAdded", _typename("InvoiceLineAdded")),
            ("InvoicePaid", _typename("InvoicePaid")),
        ),
    ),
    "Course": (
        "int",
        ("CourseCreated", _typename("CourseCreated")),
        (
            ("ModuleAdded", f"{_NS}.CourseEvents+ModuleAdded, {_ASM}"),
            (
                "Audited`1",
                f"Learning.Audit.Audited`1[[{_NS}.CoursePublished, {_ASM}]], Learning.Audit",
            ),
        ),
    ),
}
_FIRST_INT_ID = {"Invoice": 1, "Course": 500_000}

_TEXTS = (
    "Très bien, continuez ainsi !",
    "Größenordnung: „Äpfel“ und Birnen",
    "学習の進捗は順調です。",
    "进度良好，请继续努力。",  # noqa: RUF001 (Chinese punctuation)
    "진행 상황이 좋습니다 🙂",
    "Ελληνικά: καλή πρόοδος",
    "Прогресс хороший, молодец!",
    "Ação concluída com êxito — parabéns 🎉",
    'Quoted "text" and a back\\slash',
    "Tab\tand\nnewline",
    "emoji outside the BMP: 🦄🧪📚",
    "Þórunn Ævarsdóttir",
)


# --- writing -------------------------------------------------------------------------------


@dataclass
class _Plan:
    aggregate_type: str
    aggregate_id: str
    count: int
    legacy: int  # the first `legacy` events are in the legacy layout
    start: int  # ticks of the first event
    offset: int
    defect: str | None = None


class _Builder:
    def __init__(self, app: str, seed: int, threshold: int | None, compressed_share: float) -> None:
        self.app = app
        self.rng = random.Random(seed)
        self.threshold = threshold
        self.compressed_share = compressed_share

    def guid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def text(self) -> str:
        return self.rng.choice(_TEXTS)

    def long_text(self, at_least: int) -> str:
        parts: list[str] = []
        while len(" ".join(parts).encode("utf-8")) <= at_least:
            parts.append(self.text())
        return " ".join(parts)

    def payload(
        self,
        *,
        aggregate_type: str,
        payload_id: str,
        position: int,
        version: int,
        ticks: int,
        offset: int,
        big: bool,
        trim: bool,
        written_type: str | None = None,
    ) -> tuple[str, str, str, str]:
        """(event type, $type, timestamp text, JSON) of one event. ``written_type``: the
        AggregateType to write, when it differs from ``aggregate_type``."""
        rng = self.rng
        _, first, following = _DOMAIN[aggregate_type]
        event_type, type_name = first if position == 0 else rng.choice(following)
        stamp = timestamp_text(ticks, offset, trim=trim)
        document: dict[str, Any] = {
            "$type": type_name,
            "Id": payload_id,
            "TimeStamp": stamp,
            "Version": version,
            "AggregateType": written_type or aggregate_type,
        }
        if event_type in ("EnrollmentCreated", "CourseCreated", "InvoiceIssued"):
            document["Owner"] = {
                "$type": f"{_MODELS}.Person, {_ASM}",
                "Name": self.text(),
                "Address": {
                    "$type": f"{_MODELS}.Address, {_ASM}",
                    "City": rng.choice(("Zürich", "東京", "São Paulo", "Kraków")),
                },
            }
        elif event_type == "InvoiceLineAdded":
            item = f"{_MODELS}.InvoiceLine, {_ASM}"
            document["Lines"] = {
                "$type": _list_type(item),
                "$values": [
                    {"$type": item, "Text": self.text(), "Amount": round(rng.uniform(1, 500), 2)}
                    for _ in range(rng.randint(1, 3))
                ],
            }
        elif event_type == "Audited`1":
            document["Inner"] = {
                "$type": f"{_NS}.CoursePublished, {_ASM}",
                "Title": self.text(),
                "Tags": {"$type": _list_type("System.String, mscorlib"), "$values": ["a", "β"]},
            }
        else:
            document["Progress"] = rng.randint(0, 100)
            document["Note"] = self.text()
        text = to_json(document)
        size = len(text.encode("utf-8"))
        limit = self.threshold if self.threshold is not None else 1000
        if big and size <= limit:
            document["Comment"] = self.long_text(limit - size + 20)
            text = to_json(document)
        return event_type, type_name, stamp, text


def write_store(
    client: Client,
    *,
    app: str,
    aggregates: int = 50,
    events_per_aggregate: int | tuple[int, int] = (1, 8),
    compressed_share: float = 0.3,
    legacy_share: float = 0.1,
    defects: Iterable[str] = (),
    seed: int = 0,
    threshold: int | None = COMPRESSION_THRESHOLD,
    trimmed_timestamps: float = 0.05,
    chunk: int = 1000,
) -> GroundTruth:
    """Write a store of ``aggregates`` aggregates (types Enrollment with GUID ids, Invoice and
    Course with integer ids) and return its ground truth.

    ``events_per_aggregate``: a count or an inclusive (low, high) range. About
    ``compressed_share`` of the payloads exceed ``threshold`` bytes and are stored
    gzip+base64; about ``legacy_share`` of the events are in the legacy layout (the first half
    of the events of a random ``2 * legacy_share`` of the aggregates, saved before October
    2017, with commit ids "1", "2", … continuing after the legacy hash's size). About
    ``trimmed_timestamps`` of the TimeStamps have trailing zeros trimmed, as Newtonsoft writes
    them; the rest have seven fractional digits.

    ``defects`` lists kinds of DEFECT_KINDS to plant, each on an aggregate of its own (repeat a
    kind to plant it more than once); ``shared_commit_list`` adds a Course that shares an
    Invoice's id. Writes are pipelined (``chunk`` commands per round trip), payload before
    commit id, in time order.
    """
    requested = list(defects)
    unknown = set(requested) - set(DEFECT_KINDS)
    if unknown:
        raise ValueError(f"unknown defect kinds {sorted(unknown)}; use {DEFECT_KINDS}")
    low, high = (
        events_per_aggregate
        if isinstance(events_per_aggregate, tuple)
        else (events_per_aggregate, events_per_aggregate)
    )
    builder = _Builder(app, seed, threshold, compressed_share)
    rng = builder.rng
    legacy_counter = int(client.hlen(legacy_hash_key(app)))
    old_share = min(1.0, 2 * legacy_share)

    plans: list[_Plan] = []
    next_int = dict(_FIRST_INT_ID)
    types = list(_DOMAIN)
    for number in range(aggregates):
        aggregate_type = types[number % len(types)]
        if _DOMAIN[aggregate_type][0] == "guid":
            aggregate_id = builder.guid()
        else:
            aggregate_id = str(next_int[aggregate_type])
            next_int[aggregate_type] += 1
        count = rng.randint(low, high)
        old = rng.random() < old_share
        legacy = (count + 1) // 2 if old else 0
        start = (
            ticks_of(datetime(2017, 3, 1, tzinfo=UTC))
            if old
            else ticks_of(datetime(2018, 1, 1, tzinfo=UTC))
        )
        start += rng.randrange(150 * 86400 * 10_000_000)
        plans.append(
            _Plan(
                aggregate_type, aggregate_id, count, legacy, start, rng.choice((0, -300, 60, 330))
            )
        )

    # Defects go to distinct aggregates of the right kind; each gets at least 3 events.
    victims: list[tuple[str, _Plan]] = []
    free = [p for p in plans]
    rng.shuffle(free)
    for kind in requested:
        wanted = "Invoice" if kind == "shared_commit_list" else None
        candidates = [p for p in free if wanted is None or p.aggregate_type == wanted]
        if not candidates:
            raise ValueError(f"not enough aggregates to plant {requested}")
        plan = candidates[0]
        free.remove(plan)
        plan.defect = kind
        plan.count = max(plan.count, 3)
        plan.legacy = min(plan.legacy, plan.count - 2)  # defects sit on partitioned events
        victims.append((kind, plan))
        if kind == "shared_commit_list":
            twin = _Plan("Course", plan.aggregate_id, 3, 0, plan.start + 7 * 10_000_000, 0)
            twin.defect = kind
            plans.append(twin)

    truth = GroundTruth(app, seed, threshold, [], {}, [], [], legacy_counter)
    timed: list[tuple[int, int, TruthEvent, bool]] = []  # (ticks, order, event, listed)
    order = 0
    for plan in plans:
        aggregate = TruthAggregate(
            plan.aggregate_id, plan.aggregate_type, commit_list_key(app, plan.aggregate_id)
        )
        if plan.defect not in (None, "orphan"):
            aggregate.defects.append(plan.defect)
        truth.aggregates.append(aggregate)
        # Where a per-event defect sits: a partitioned event, never the first.
        at = rng.randint(max(1, plan.legacy), plan.count - 1) if plan.defect else 0
        ticks = plan.start
        for position in range(plan.count + (1 if plan.defect == "orphan" else 0)):
            is_orphan = plan.defect == "orphan" and position == plan.count
            legacy = position < plan.legacy
            if position:
                longest = 86400 if legacy else 20 * 86400
                ticks += rng.randrange(60 * 10_000_000, longest * 10_000_000)
            if legacy and ticks >= ticks_of(LEGACY_CUTOFF):
                raise ValueError("too many legacy events per aggregate to fit before 2017-10")
            if not legacy and ticks < ticks_of(LEGACY_CUTOFF):
                ticks = ticks_of(LEGACY_CUTOFF + timedelta(days=5)) + rng.randrange(10**13)
            trim = rng.random() < trimmed_timestamps
            event_ticks = ticks - ticks % 100_000 if trim else ticks | 1
            version = position + 1
            defect: str | None = None
            payload_id = plan.aggregate_id
            aggregate_type = plan.aggregate_type
            if plan.defect == "version_gap" and position >= at:
                version += 1
                defect = "version_gap" if position == at else None
            elif plan.defect == "duplicate_version" and position >= at:
                version -= 1
                defect = "duplicate_version" if position == at else None
            elif plan.defect == "id_mismatch" and position == at:
                payload_id = (
                    builder.guid() if plan.aggregate_type == "Enrollment" else "9" + payload_id
                )
                defect = "id_mismatch"
            elif plan.defect == "aggregate_type_changed" and position == at:
                aggregate_type = plan.aggregate_type + "V2"
                defect = "aggregate_type_changed"
            elif plan.defect == "invalid_compressed" and position == at:
                defect = "invalid_compressed"
            elif plan.defect == "missing_payload" and position == plan.count - 1:
                defect = "missing_payload"
            elif is_orphan:
                defect = "orphan"
            big = defect == "invalid_compressed" or rng.random() < builder.compressed_share
            event_type, type_name, stamp, text = builder.payload(
                aggregate_type=plan.aggregate_type,
                written_type=aggregate_type,
                payload_id=payload_id,
                position=position,
                version=version,
                ticks=event_ticks,
                offset=plan.offset,
                big=big,
                trim=trim,
            )
            if legacy:
                truth.legacy_counter += 1
                commit_id = str(truth.legacy_counter)
                hash_key = legacy_hash_key(app)
            else:
                commit_id = builder.guid()
                hash_key = event_hash_key(app, commit_id)
            value, compressed = stored_value(text, threshold)
            stored: bytes | None = value
            if defect == "invalid_compressed":
                stored, compressed = invalid_gzip_base64(rng), False
            elif defect == "missing_payload":
                stored = None
            event = TruthEvent(
                plan.aggregate_id, aggregate_type, commit_id, version, event_type, type_name,
                stamp, text, hash_key, legacy, compressed, stored, payload_id, defect,
            )  # fmt: skip
            if is_orphan:
                truth.orphans.append(event)
            else:
                aggregate.events.append(event)
            timed.append((event_ticks, order, event, not is_orphan))
            order += 1
            if defect is not None:
                key = hash_key if defect in ("orphan", "invalid_compressed") else aggregate.list_key
                truth.defects.append(
                    TruthDefect(defect, plan.aggregate_id, (plan.aggregate_type,), commit_id, key,
                                _describe(defect, event))
                )  # fmt: skip
    for kind, plan in victims:
        if kind == "shared_commit_list":
            truth.defects.append(
                TruthDefect(
                    kind, plan.aggregate_id, ("Invoice", "Course"), None,
                    commit_list_key(app, plan.aggregate_id),
                    f"Invoice and Course {plan.aggregate_id} share one commit list",
                )
            )  # fmt: skip

    timed.sort(key=lambda item: (item[0], item[1]))
    pipe = client.pipeline(transaction=False)
    pending = 0
    for _, _, event, listed in timed:
        if event.stored is not None:
            pipe.hset(event.hash_key, event.commit_id, event.stored)
            pending += 1
        if listed:
            key = commit_list_key(app, event.aggregate_id)
            pipe.rpush(key, event.commit_id)
            truth.commit_lists.setdefault(key, []).append(event.commit_id)
            pending += 1
        if pending >= chunk:
            pipe.execute()
            pending = 0
    pipe.execute()
    return truth


def _describe(kind: str, event: TruthEvent) -> str:
    return {
        "orphan": f"payload of version {event.version} that no commit list names",
        "missing_payload": f"commit {event.commit_id} has no payload",
        "invalid_compressed": f"commit {event.commit_id} starts with H4sI but is not gzip",
        "version_gap": f"version {event.version - 1} is missing",
        "duplicate_version": f"version {event.version} appears twice",
        "id_mismatch": f"commit {event.commit_id} says Id {event.payload_id}",
        "aggregate_type_changed": f"commit {event.commit_id} says {event.aggregate_type}",
    }[kind]


def append_events(
    client: Client,
    truth: GroundTruth,
    count: int,
    *,
    seed: int = 1,
    aggregate_ids: Sequence[str] | None = None,
    pause: float = 0.0,
    compressed_share: float = 0.3,
) -> list[TruthEvent]:
    """Append ``count`` events to clean aggregates of ``truth`` (all of them, or those named by
    ``aggregate_ids``), chosen at random, and record them in ``truth``.

    Each save is what the library does: HSET of the payload into its partition hash, then RPUSH
    of the new commit id in a transaction conditioned on the list's length (retried when another
    writer changed the list). The new event's Version is one more than the aggregate's last;
    its TimeStamp is now, in UTC. ``pause`` seconds between saves spreads them over time (a
    writer running during a migration). Thread-safe for one caller per ``truth``.
    """
    builder = _Builder(truth.app, seed, truth.threshold, compressed_share)
    rng = builder.rng
    pool = [
        a
        for a in truth.clean_aggregates()
        if aggregate_ids is None or a.aggregate_id in set(aggregate_ids)
    ]
    if not pool:
        raise ValueError("no clean aggregate to append to")
    written: list[TruthEvent] = []
    for _ in range(count):
        aggregate = rng.choice(pool)
        version = aggregate.last_version + 1
        moment = datetime.now(UTC)
        event_type, type_name, stamp, text = builder.payload(
            aggregate_type=aggregate.aggregate_type,
            payload_id=aggregate.aggregate_id,
            position=version - 1,
            version=version,
            ticks=(ticks_of(moment) + rng.randrange(10)) | 1,
            offset=0,
            big=rng.random() < compressed_share,
            trim=False,
        )
        commit_id = builder.guid()
        hash_key = event_hash_key(truth.app, commit_id)
        value, compressed = stored_value(text, truth.threshold)
        client.hset(hash_key, commit_id, value)
        _rpush_conditioned(client, aggregate.list_key, commit_id)
        event = TruthEvent(
            aggregate.aggregate_id, aggregate.aggregate_type, commit_id, version, event_type,
            type_name, stamp, text, hash_key, False, compressed, value, aggregate.aggregate_id,
        )  # fmt: skip
        aggregate.events.append(event)
        truth.commit_lists.setdefault(aggregate.list_key, []).append(commit_id)
        written.append(event)
        if pause:
            time.sleep(pause)
    return written


def _rpush_conditioned(client: Client, key: str, commit_id: str) -> None:
    """RPUSH in a transaction conditioned on the list's length (StackExchange.Redis conditions
    are WATCH + a check + MULTI/EXEC)."""
    for _ in range(100):
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                pipe.llen(key)  # the length the condition is about; WATCH enforces it
                pipe.multi()
                pipe.rpush(key, commit_id)
                pipe.execute()
                return
            except redis.WatchError:
                continue
    raise RuntimeError(f"could not append to {key}: the list kept changing")
