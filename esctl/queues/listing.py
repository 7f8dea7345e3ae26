"""``queue list``: every subscriber's queue of one environment with its lengths, the age of its
oldest stuck message and its event type's RetryData count; and the same figures as Prometheus
samples. Read-only."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from esctl import codec, layout, metrics, redisio, storereads
from esctl.queues.messages import resolve_now
from esctl.queues.refs import QUEUE_LISTS, QueueRef, problem

OLDEST_SAMPLE = 1000
"""``queue list`` reads at most this many messages at the tail of a ProcessingEvents list (the
ones taken longest ago) to find the oldest TimeStamp."""


@dataclass(slots=True)
class QueueStatus:
    subscriber: str
    event_type: str
    subscribed: bool
    """The subscriber is a member of ``Subscribers:{ENV:TYPE}`` (False: only its lists exist)."""
    published: int
    processing: int
    dead: int
    oldest_processing_timestamp: str | None
    oldest_processing_age_s: float | None
    retry_data: int
    """RetryData hashes of the event type (shared by all its subscribers)."""


@dataclass(slots=True)
class QueueListing:
    env: str
    generated_at: str
    queues: list[QueueStatus]
    retry_data: dict[str, int]
    problems: list[dict[str, str]]
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["totals"] = {
            "queues": len(self.queues),
            "published": sum(q.published for q in self.queues),
            "processing": sum(q.processing for q in self.queues),
            "dead": sum(q.dead for q in self.queues),
            "retry_data": sum(self.retry_data.values()),
        }
        return document


@dataclass(slots=True)
class _Found:
    """What one SCAN of an environment's keys found."""

    queues: set[tuple[str, str]] = field(default_factory=set)
    """(subscriber, event type) of every queue list."""
    subscriber_sets: list[str] = field(default_factory=list)
    """Event types with a ``Subscribers:{ENV:TYPE}`` set."""
    retry_by_type: Counter[str] = field(default_factory=Counter)
    """RetryData hashes per event type."""


def list_queues(
    client: redisio.RedisClient,
    env: str,
    *,
    event_types: Sequence[str] = (),
    subscribers: Sequence[str] = (),
    now: datetime | None = None,
    oldest_sample: int = OLDEST_SAMPLE,
) -> QueueListing:
    """Every subscriber x event type of ``env``: found by one SCAN over ``*:{ENV:*}*`` (queue
    lists, ``Subscribers:{ENV:TYPE}`` sets, RetryData hashes), so subscribers whose lists are
    empty are listed too. Lengths are read in pipelined round trips. The oldest processing
    message is the oldest TimeStamp among the ``oldest_sample`` messages at the tail of
    ProcessingEvents (the ones taken longest ago; exact when the list is no longer). Read-only."""
    started = time.perf_counter()
    found = find_queues(client, env, event_types=event_types, subscribers=subscribers)
    return read_queues(client, found, now=now, oldest_sample=oldest_sample, started=started)


@dataclass(slots=True)
class FoundQueues:
    """The queues of an environment as one scan of its keys found them (:func:`find_queues`):
    what :func:`read_queues` reads the lengths of, again and again for ``queue list --watch``."""

    env: str
    refs: list[QueueRef]
    """In the listing's order: by event type, then subscriber."""
    subscribed: set[tuple[str, str]]
    retry_data: dict[str, int]
    problems: list[dict[str, str]]
    elapsed_s: float
    """What the scan took."""


def find_queues(
    client: redisio.RedisClient,
    env: str,
    *,
    event_types: Sequence[str] = (),
    subscribers: Sequence[str] = (),
) -> FoundQueues:
    """The queues of ``env`` (of ``event_types`` and ``subscribers`` when given): one SCAN
    over ``*:{ENV:*}*`` and the members of the ``Subscribers:{ENV:TYPE}`` sets. Read-only."""
    started = time.perf_counter()
    type_filter = set(event_types)
    sub_filter = set(subscribers)
    found = _scan(client, env)
    problems: list[dict[str, str]] = []
    subscribed = _subscribed(client, env, found.subscriber_sets, type_filter, problems)
    pairs = sorted(
        {
            (sub, t)
            for sub, t in found.queues | subscribed
            if (not type_filter or t in type_filter) and (not sub_filter or sub in sub_filter)
        },
        key=lambda p: (p[1], p[0]),
    )
    retry_data = {
        t: n for t, n in sorted(found.retry_by_type.items()) if not type_filter or t in type_filter
    }
    return FoundQueues(
        env=env,
        refs=[QueueRef(sub, env, t) for sub, t in pairs],
        subscribed=subscribed,
        retry_data=retry_data,
        problems=problems,
        elapsed_s=time.perf_counter() - started,
    )


def read_queues(
    client: redisio.RedisClient,
    found: FoundQueues,
    *,
    now: datetime | None = None,
    oldest_sample: int = OLDEST_SAMPLE,
    started: float | None = None,
) -> QueueListing:
    """The lengths of the queues ``found`` (one pipelined round trip of LLEN) and the age of
    each one's oldest processing message (the tail of ProcessingEvents, at most
    ``oldest_sample`` messages). ``started``: the ``time.perf_counter()`` the listing's
    ``elapsed_s`` counts from (default: now). Read-only."""
    started = time.perf_counter() if started is None else started
    moment = resolve_now(now)
    problems = list(found.problems)
    statuses = _statuses(client, found.refs, found.subscribed, found.retry_data, problems)
    _find_oldest_processing(client, found.refs, statuses, oldest_sample, moment, problems)
    return QueueListing(
        env=found.env,
        generated_at=moment.isoformat(),
        queues=statuses,
        retry_data=dict(found.retry_data),
        problems=problems,
        elapsed_s=time.perf_counter() - started,
    )


_ANY_SUBSCRIBERS_SET = re.compile(r"Subscribers:\{(?P<env>[^{}:]+):[^{}]+\}", re.DOTALL)


def envs_with_queues(
    client: redisio.RedisClient,
    *,
    max_keys: int | None = None,
    max_seconds: float | None = None,
) -> storereads.NamesHere:
    """The environments with a ``Subscribers:{ENV:TYPE}`` set in the database ``client``
    reads (every environment a service publishes in has one), from a SCAN bounded as
    :func:`esctl.storereads.apps_with_keys`'s: for the note on an ``--env`` with no queues."""
    sample = redisio.sample_keys(
        client, "Subscribers:{*}", max_keys=max_keys, max_seconds=max_seconds
    )
    counts: Counter[str] = Counter()
    for key in set(sample.keys):
        m = _ANY_SUBSCRIBERS_SET.fullmatch(key)
        if m:
            counts[m["env"]] += 1
    return storereads.NamesHere(
        dict(counts), sample.examined, sample.total, sample.complete, storereads.ENVS
    )


def _env_key_patterns(env: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    e = re.escape(env)
    subscribers = re.compile(rf"Subscribers:\{{{e}:(?P<type>[^{{}}]+)\}}", re.DOTALL)
    retry = re.compile(rf"RetryData:\{{{e}:(?P<type>[^{{}}]+)\}}:(?P<agg>.*)", re.DOTALL)
    return subscribers, retry


def _scan(client: redisio.RedisClient, env: str) -> _Found:
    """One SCAN over ``*:{ENV:*}*``. A key that reads both as a RetryData hash and as a queue
    list (``RetryData:{ENV:TYPE}:DeadLetters``: a subscriber named RetryData, or an aggregate id
    that is a list's name) is decided by its Redis type."""
    subscribers_re, retry_re = _env_key_patterns(env)
    pattern = f"*:{{{layout.glob_escape(env)}:*}}*"
    found = _Found()
    ambiguous: list[tuple[str, tuple[str, str], str]] = []
    for _, keys in redisio.scan_pages(client, pattern):
        for key in keys:
            parsed = layout.parse_queue_key(key)
            queue = (parsed[0], parsed[2]) if parsed and parsed[1] == env else None
            m = subscribers_re.fullmatch(key)
            if m:
                found.subscriber_sets.append(m["type"])
                continue
            r = retry_re.fullmatch(key)
            if r and queue:
                ambiguous.append((key, queue, r["type"]))  # decided by the key's type below
            elif r:
                found.retry_by_type[r["type"]] += 1
            elif queue:
                found.queues.add(queue)
    if ambiguous:
        kinds = redisio.pipelined(client, [("TYPE", k) for k, _, _ in ambiguous])
        for (_, queue, event_type), kind in zip(ambiguous, kinds, strict=True):
            if redisio.key_str(kind) == "list":
                found.queues.add(queue)
            else:
                found.retry_by_type[event_type] += 1
    return found


def _subscribed(
    client: redisio.RedisClient,
    env: str,
    subscriber_sets: list[str],
    type_filter: set[str],
    problems: list[dict[str, str]],
) -> set[tuple[str, str]]:
    """(subscriber, event type) of every member of the ``Subscribers:{ENV:TYPE}`` sets."""
    event_types = sorted({t for t in subscriber_sets if not type_filter or t in type_filter})
    members = redisio.pipelined(
        client, [("SMEMBERS", layout.subscribers_key(env, t)) for t in event_types]
    )
    subscribed: set[tuple[str, str]] = set()
    for event_type, reply in zip(event_types, members, strict=True):
        if isinstance(reply, Exception):
            key = layout.subscribers_key(env, event_type)
            problems.append(problem("wrong_type", key, f"SMEMBERS failed: {reply}"))
            continue
        subscribed.update((redisio.key_str(m), event_type) for m in reply)
    return subscribed


def _statuses(
    client: redisio.RedisClient,
    refs: list[QueueRef],
    subscribed: set[tuple[str, str]],
    retry_by_type: Mapping[str, int],
    problems: list[dict[str, str]],
) -> list[QueueStatus]:
    """Each queue's lengths, in one pipelined round trip (a list Redis cannot read counts 0)."""
    lengths = redisio.pipelined(client, [("LLEN", r.key(w)) for r in refs for w in QUEUE_LISTS])
    statuses: list[QueueStatus] = []
    for index, ref in enumerate(refs):
        counts: list[int] = []
        for offset, which in enumerate(QUEUE_LISTS):
            reply = lengths[index * len(QUEUE_LISTS) + offset]
            if isinstance(reply, Exception):
                problems.append(problem("wrong_type", ref.key(which), f"LLEN failed: {reply}"))
                counts.append(0)
            else:
                counts.append(int(reply))
        statuses.append(
            QueueStatus(
                subscriber=ref.subscriber,
                event_type=ref.event_type,
                subscribed=(ref.subscriber, ref.event_type) in subscribed,
                published=counts[0],
                processing=counts[1],
                dead=counts[2],
                oldest_processing_timestamp=None,
                oldest_processing_age_s=None,
                retry_data=retry_by_type.get(ref.event_type, 0),
            )
        )
    return statuses


def _find_oldest_processing(
    client: redisio.RedisClient,
    refs: list[QueueRef],
    statuses: list[QueueStatus],
    oldest_sample: int,
    moment: datetime,
    problems: list[dict[str, str]],
) -> None:
    """Sets each status's oldest processing message from the tail of its ProcessingEvents."""
    tails = [
        (status, ref.key("processing"))
        for ref, status in zip(refs, statuses, strict=True)
        if status.processing
    ]
    samples = redisio.pipelined(client, [("LRANGE", k, -oldest_sample, -1) for _, k in tails])
    for (status, key), reply in zip(tails, samples, strict=True):
        if isinstance(reply, Exception):
            problems.append(problem("wrong_type", key, f"LRANGE failed: {reply}"))
            continue
        oldest: tuple[datetime, str] | None = None
        for value in reply:
            _, event = codec.decode_event(value)
            stamp, text = event.timestamp, event.timestamp_text
            if stamp is not None and text is not None and (oldest is None or stamp < oldest[0]):
                oldest = (stamp, text)
        if oldest is not None:
            status.oldest_processing_timestamp = oldest[1]
            status.oldest_processing_age_s = (moment - oldest[0]).total_seconds()


# --- the listing as Prometheus samples ---------------------------------------------------------

QUEUE_METRIC_HELP = {
    "esctl_queue_messages": "Messages in a subscriber's reliable queue list (LLEN).",
    "esctl_queue_oldest_processing_age_seconds": "Age, from its TimeStamp, of the oldest message"
    " in ProcessingEvents (absent when the list is empty).",
    "esctl_queue_subscribed": "1 when the subscriber is in Subscribers:{ENV:TYPE}, 0 when only"
    " its lists exist.",
    "esctl_queue_retry_data": "RetryData hashes of an event type.",
    "esctl_queue_list_timestamp_seconds": "When esctl queue list read these figures.",
}


def queue_metrics(listing: QueueListing) -> list[metrics.Metric]:
    """The listing as Prometheus samples (names and labels: :data:`QUEUE_METRIC_HELP`)."""
    env = listing.env
    out: list[metrics.Metric] = []
    for q in listing.queues:
        labels = {"env": env, "event_type": q.event_type, "subscriber": q.subscriber}
        for which, count in (
            ("published", q.published),
            ("processing", q.processing),
            ("dead", q.dead),
        ):
            out.append(metrics.Metric("esctl_queue_messages", count, labels | {"list": which}))
    for q in listing.queues:
        if q.oldest_processing_age_s is not None:
            labels = {"env": env, "event_type": q.event_type, "subscriber": q.subscriber}
            out.append(
                metrics.Metric(
                    "esctl_queue_oldest_processing_age_seconds",
                    round(q.oldest_processing_age_s, 3),
                    labels,
                )
            )
    for q in listing.queues:
        labels = {"env": env, "event_type": q.event_type, "subscriber": q.subscriber}
        out.append(metrics.Metric("esctl_queue_subscribed", int(q.subscribed), labels))
    for event_type, count in listing.retry_data.items():
        labels = {"env": env, "event_type": event_type}
        out.append(metrics.Metric("esctl_queue_retry_data", count, labels))
    generated = datetime.fromisoformat(listing.generated_at).timestamp()
    out.append(
        metrics.Metric("esctl_queue_list_timestamp_seconds", round(generated, 3), {"env": env})
    )
    return out


def render_prometheus(listing: QueueListing) -> str:
    """The listing in the Prometheus text exposition format (for node_exporter's textfile
    collector; write it with :func:`esctl.metrics.write_textfile`)."""
    return metrics.render(queue_metrics(listing), QUEUE_METRIC_HELP)
