"""What esctl reads from one queued message: :func:`describe_message` (through the codec), the
selection's fast path to its aggregate id and age, and a dead letter's RetryData hash."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from esctl import codec, redisio
from esctl.queues.refs import QueueRef


@dataclass(frozen=True, slots=True)
class RetryInfo:
    """A dead letter's ``RetryData:{ENV:TYPE}:AGG`` hash (fields as stored; None when absent)."""

    retry_count: int | None
    last_retry_time: str | None
    last_exception: str | None

    @classmethod
    def from_hash(cls, fields: dict[bytes, bytes]) -> RetryInfo | None:
        if not fields:
            return None
        text = {
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()
        }
        count_text = text.get("RetryCount")
        try:
            count = int(count_text) if count_text is not None else None
        except ValueError:
            count = None
        return cls(count, text.get("LastRetryTime"), text.get("LastException"))


@dataclass(slots=True)
class MessageInfo:
    """What esctl shows of one queued message. ``position`` counts in consumption order: 0 is
    the message RPOPLPUSH takes next (the tail of the list)."""

    position: int
    size: int
    aggregate_id: str | None
    event_type: str | None
    version: int | None
    timestamp: str | None
    age_s: float | None
    problems: list[dict[str, str]] = field(default_factory=list)
    retry: RetryInfo | None = None
    text: str | None = None
    """The message text (``peek`` only)."""


def describe_message(
    value: bytes, position: int, now: datetime, *, with_text: bool = False
) -> MessageInfo:
    decoded, event = codec.decode_event(value)
    age = (now - event.timestamp).total_seconds() if event.timestamp is not None else None
    return MessageInfo(
        position=position,
        size=len(value),
        aggregate_id=event.aggregate_id,
        event_type=event.event_type,
        version=event.version,
        timestamp=event.timestamp_text,
        age_s=age,
        problems=[{"kind": p.kind, "detail": p.detail} for p in event.problems],
        text=decoded.text if with_text else None,
    )


def id_and_age(value: bytes, now: datetime) -> tuple[str | None, float | None]:
    """The payload's ``Id`` and the age of its ``TimeStamp`` (None when unreadable): the
    selection's hot path. Queued messages are plain JSON, read here in one orjson call; anything
    else (compressed, not UTF-8, odd timestamps) goes through the codec, which decides."""
    if not value.startswith((codec.GZIP_BASE64_PREFIX, codec.ZSTD_MAGIC)):
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            data = None
        if type(data) is dict:
            aggregate_id = data.get("Id")
            stamp = data.get("TimeStamp")
            if type(aggregate_id) is str and type(stamp) is str and codec.TIMESTAMP_RE.match(stamp):
                return aggregate_id, (now - datetime.fromisoformat(stamp)).total_seconds()
    _, event = codec.decode_event(value)
    age = (now - event.timestamp).total_seconds() if event.timestamp is not None else None
    return event.aggregate_id, age


def retry_infos(
    client: redisio.RedisClient, ref: QueueRef, aggregate_ids: Sequence[str]
) -> dict[str, RetryInfo | None]:
    """The RetryData of each aggregate id, read in one pipelined round trip (None: no hash, or
    Redis refused to read it)."""
    distinct = sorted(set(aggregate_ids))
    replies = redisio.pipelined(client, [("HGETALL", ref.retry_data_key(a)) for a in distinct])
    found: dict[str, RetryInfo | None] = {}
    for aggregate_id, reply in zip(distinct, replies, strict=True):
        if isinstance(reply, Exception):
            found[aggregate_id] = None
        elif isinstance(reply, dict):
            found[aggregate_id] = RetryInfo.from_hash(reply)
        else:  # RESP2 without a callback: a flat list of field, value
            pairs = dict(zip(reply[::2], reply[1::2], strict=True))
            found[aggregate_id] = RetryInfo.from_hash(pairs)
    return found


def resolve_now(now: datetime | None) -> datetime:
    """The moment ages are measured from: ``now`` when given (tests), else the clock."""
    return now if now is not None else datetime.now(UTC)
