"""``queue peek``: the next messages of one list, decoded, with a dead letter's RetryData.
Read-only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from esctl import redisio
from esctl.queues.messages import MessageInfo, describe_message, resolve_now, retry_infos
from esctl.queues.refs import QueueRef, check_list_name, ensure_known, summary_document


@dataclass(slots=True)
class PeekResult:
    subscriber: str
    env: str
    event_type: str
    list_name: str
    key: str
    length: int
    messages: list[MessageInfo]

    def as_dict(self) -> dict[str, Any]:
        return summary_document(self)


def peek(
    client: redisio.RedisClient,
    ref: QueueRef,
    which: str = "published",
    count: int = 10,
    *,
    now: datetime | None = None,
) -> PeekResult:
    """The next ``count`` messages of a list in consumption order (the tail first), decoded,
    with their RetryData for dead letters. Read-only."""
    check_list_name(which)
    ensure_known(client, ref)
    key = ref.key(which)
    moment = resolve_now(now)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.llen(key)
        pipe.lrange(key, -count, -1)
        length, values = pipe.execute()
    except redisio.REDIS_ERRORS as exc:
        raise redisio.wrap_errors(client, exc) from exc
    messages = [
        describe_message(v, position, moment, with_text=True)
        for position, v in enumerate(reversed(values))
    ]
    if which == "dead":
        infos = retry_infos(client, ref, [m.aggregate_id for m in messages if m.aggregate_id])
        for m in messages:
            if m.aggregate_id is not None:
                m.retry = infos.get(m.aggregate_id)
    return PeekResult(ref.subscriber, ref.env, ref.event_type, which, key, int(length), messages)
