"""The demo's queues: which published messages are still waiting, in flight (some of them
stuck) or dead-lettered with RetryData, per subscriber; the writes that put them there, and
their counts for the summary."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from esctl import layout
from esctl.demo import dotnet
from esctl.demo.domain import ANALYTICS, BILLING, NOTIFICATION, REPORTING, SEARCH, SUBSCRIPTIONS
from esctl.demo.plan import RECENT_STORIES, DemoPlan
from esctl.demo.records import Event
from esctl.demo.summary import QueueCounts

STUCK_AFTER = timedelta(minutes=5)
"""The library's retry job treats a ProcessingEvents message older than this as stuck."""

# Where a published message sits for one subscriber, when it is not simply consumed.
# Fresh messages (younger than STUCK_AFTER) are waiting in PublishedEvents for the 1st, 3rd, …
# subscriber and in flight (ProcessingEvents) for the 2nd, 4th, …
_OVERRIDES: dict[tuple[str, int, str], str] = {
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


def queue_plan(plan: DemoPlan) -> list[tuple[Event, str, str]]:
    """(event, subscriber, state) for every message not simply consumed, oldest first."""
    messages = []
    recent = [a for a in plan.aggregates if a.role in RECENT_STORIES]
    events = sorted((e for a in recent for e in a.events), key=lambda e: e.ticks)
    now_ticks = dotnet.ticks(plan.now)
    for event in events:
        for position, subscriber in enumerate(SUBSCRIPTIONS.get(event.kind, ())):
            state = _OVERRIDES.get((event.aggregate.role, event.index, subscriber))
            if state is None and now_ticks - event.ticks < dotnet.ticks_of(STUCK_AFTER):
                state = "published" if position % 2 == 0 else "processing"
            if state is not None:
                messages.append((event, subscriber, state))
    return messages


def queue_commands(plan: DemoPlan) -> list[tuple[Any, ...]]:
    """The LPUSHes of the queued messages and the HSETs of their RetryData (which draw the
    retry's time and exception from the plan's random source)."""
    commands: list[tuple[Any, ...]] = []
    for event, subscriber, state in queue_plan(plan):
        message = event.text.encode("utf-8")  # queues carry the uncompressed JSON
        which = {"published": "published", "published_twice": "published",
                 "processing": "processing"}.get(state, "dead")  # fmt: skip
        key = layout.queue_key(subscriber, plan.env, event.kind, which)
        commands.append(("LPUSH", key, message))
        if state == "published_twice":
            commands.append(("LPUSH", key, message))
        if state.startswith("dead_retried:"):
            commands.append(_retry_data(plan, event, subscriber, retries=int(state.split(":")[1])))
    return commands


def _retry_data(plan: DemoPlan, event: Event, subscriber: str, *, retries: int) -> tuple[Any, ...]:
    handler = subscriber.split("-")[0] + ".Handlers." + event.kind.replace("`1", "") + "Handler"
    exception = plan.rng.choice(_EXCEPTIONS).format(handler=handler, event=event.kind)
    retried_at = plan.now - timedelta(minutes=plan.rng.randint(6, 50))
    return (
        "HSET", layout.retry_data_key(plan.env, event.kind, event.aggregate.id),
        "RetryCount", str(retries), "LastRetryTime", dotnet.retry_time_text(retried_at),
        "LastException", exception,
    )  # fmt: skip


def queue_counts(plan: DemoPlan) -> tuple[list[QueueCounts], int]:
    """Every subscriber's queue for every event type it is subscribed to, and the RetryData
    hashes written."""
    queues = []
    messages = queue_plan(plan)
    now_ticks = dotnet.ticks(plan.now)
    for event_type, subscribers in SUBSCRIPTIONS.items():
        for subscriber in subscribers:
            mine = [
                (event, state)
                for event, sub, state in messages
                if sub == subscriber and event.kind == event_type
            ]
            published = sum(2 if s == "published_twice" else 1
                            for _, s in mine if s.startswith("published"))  # fmt: skip
            processing = [e for e, s in mine if s == "processing"]
            stuck = [e for e in processing if now_ticks - e.ticks > dotnet.ticks_of(STUCK_AFTER)]
            dead = [e for e, s in mine if s.startswith("dead")]
            queues.append(
                QueueCounts(subscriber, event_type, published, len(processing), len(stuck),
                            len(dead))
            )  # fmt: skip
    retry_data = sum(1 for _, _, s in messages if s.startswith("dead_retried:"))
    return queues, retry_data
