"""Naming a subscriber's reliable queue (``docs/layout.md`` §4): :class:`QueueRef` and its
keys, the three list names, the check that a queue exists, and the shape of a problem report."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from typing import Any

from esctl import layout, redisio
from esctl.errors import NotFound, ServerError, UsageError

QUEUE_LISTS = layout.QUEUE_LISTS
"""``published``, ``processing``, ``dead``."""


@dataclass(frozen=True, order=True)
class QueueRef:
    """One subscriber's reliable queue for one event type in one environment."""

    subscriber: str
    env: str
    event_type: str

    def key(self, which: str) -> str:
        return layout.queue_key(self.subscriber, self.env, self.event_type, which)

    def retry_data_key(self, aggregate_id: str) -> str:
        return layout.retry_data_key(self.env, self.event_type, aggregate_id)

    @property
    def channel(self) -> str:
        return layout.notification_channel(self.env, self.event_type)

    @property
    def lock_key(self) -> str:
        """The queue commands' lock of this queue (:func:`esctl.queues.lock.queue_lock`)."""
        return layout.queue_lock_key(self.subscriber, self.env, self.event_type)

    def drain_outcome_key(self, which: str, backup_id: str) -> str:
        return layout.drain_outcome_key(
            self.subscriber, self.env, self.event_type, which, backup_id
        )

    def restore_progress_key(self, which: str, backup_id: str) -> str:
        return layout.restore_progress_key(
            self.subscriber, self.env, self.event_type, which, backup_id
        )


def check_list_name(which: str) -> str:
    if which not in QUEUE_LISTS:
        raise UsageError(
            f"unknown queue list {which!r}", hint=f"use one of {', '.join(QUEUE_LISTS)}"
        )
    return which


def ensure_known(client: redisio.RedisClient, ref: QueueRef) -> None:
    """NotFound when the subscriber has no list of this type and is not subscribed to it
    (almost always a typo in a name)."""
    replies = redisio.pipelined(
        client,
        [("EXISTS", ref.key(w)) for w in QUEUE_LISTS]
        + [("SISMEMBER", layout.subscribers_key(ref.env, ref.event_type), ref.subscriber)],
    )
    for reply in replies:
        if isinstance(reply, Exception):
            raise ServerError(f"Redis {redisio.describe(client)} answered with an error: {reply}")
    if not any(int(r) for r in replies):
        raise NotFound(
            f"no queue of subscriber {ref.subscriber!r} for event type {ref.event_type!r} in "
            f"env {ref.env!r}: no {ref.key('published')} (nor processing/dead lists) and not a "
            f"member of {layout.subscribers_key(ref.env, ref.event_type)}",
            hint=f"`esctl queue list --env {shlex.quote(ref.env)}` shows the queues that exist",
        )


def problem(kind: str, key: str, detail: str) -> dict[str, str]:
    """One entry of a summary's ``problems``: what went wrong (``kind``), with which key."""
    return {"kind": kind, "key": key, "detail": detail}


def summary_document(summary: Any, order: str | None = None) -> dict[str, Any]:
    """A dataclass summary as JSON: its fields (with what they hold as plain values), in
    ``order`` (their names, space-separated; default: as declared), ``list_name`` as ``list``
    (the name the CLI's options and the documents use), put last."""
    document = asdict(summary)
    if order is not None:
        document = {name: document[name] for name in order.split()}
    if "list_name" in document:
        document["list"] = document.pop("list_name")
    return document
