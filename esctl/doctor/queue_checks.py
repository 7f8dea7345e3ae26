"""The queue checks (``--env``): stuck processing messages, dead letters, and published lists
nobody drains (compared with an earlier run)."""

from __future__ import annotations

import hashlib
import shlex
from datetime import datetime, timedelta
from typing import Any

from esctl import layout, queues, redisio
from esctl.doctor.readings import Comparison, Readings
from esctl.doctor.report import Check, DoctorOptions, declare, guarded
from esctl.errors import EsctlError
from esctl.metrics import Metric
from esctl.units import counted, format_duration


def _queue_labels(env: str, q: queues.QueueStatus) -> dict[str, str]:
    return {"env": env, "subscriber": q.subscriber, "event_type": q.event_type}


STUCK = declare(
    "queues.stuck",
    "stuck processing messages",
    why=(
        "A message stays in ProcessingEvents when its consumer died between RPOPLPUSH and "
        "LREM; nothing delivers it unless it is requeued."
    ),
    metrics={
        "esctl_doctor_queue_oldest_processing_age_seconds": "Age of the oldest processing message.",
    },
)


def check_stuck(env: str, listing: queues.QueueListing, stuck_after: timedelta) -> Check:
    limit = stuck_after.total_seconds()
    stuck = [
        q
        for q in listing.queues
        if q.oldest_processing_age_s is not None and q.oldest_processing_age_s > limit
    ]
    metrics = [
        Metric("esctl_doctor_queue_oldest_processing_age_seconds", round(q.oldest_processing_age_s, 3), _queue_labels(env, q))
        for q in listing.queues
        if q.oldest_processing_age_s is not None
    ]  # fmt: skip
    details = [
        f"{q.subscriber} {q.event_type}: {q.processing:,} processing, oldest "
        f"{format_duration(q.oldest_processing_age_s or 0)} old"
        for q in stuck
    ]
    values = {
        "threshold_s": limit,
        "queues": [
            {"subscriber": q.subscriber, "event_type": q.event_type, "processing": q.processing,
             "oldest_processing_age_s": round(q.oldest_processing_age_s or 0, 3)}
            for q in stuck
        ],
    }  # fmt: skip
    if not stuck:
        busy = sum(q.processing for q in listing.queues)
        return STUCK.result(
            "ok",
            f"no processing message older than {format_duration(limit)} in "
            f"{counted(len(listing.queues), 'queue')} ({busy:,} being processed)",
            values=values,
            metrics=metrics,
        )
    first = stuck[0]
    return STUCK.result(
        "fail",
        f"{counted(len(stuck), 'queue')} {'holds' if len(stuck) == 1 else 'hold'} processing "
        f"messages older than {format_duration(limit)}",
        action=f"requeue them: `esctl queue requeue SUB TYPE --env {shlex.quote(env)} --grace 2m "
        f"--yes` (e.g. `esctl queue requeue {_queue_words(first, env)} --grace 2m --dry-run` "
        "first); check why the consumer died",
        values=values,
        details=details,
        metrics=metrics,
    )


DEAD_LETTERS = declare(
    "queues.dead_letters",
    "dead letters",
    why=(
        "Dead letters are messages whose handler failed; the library retries them with backoff "
        "and drops them after their time-to-live, so events can go unhandled for good."
    ),
    metrics={
        "esctl_doctor_queue_messages": "Messages in a queue list.",
    },
)


def check_dead_letters(env: str, listing: queues.QueueListing) -> Check:
    dead = [q for q in listing.queues if q.dead]
    total = sum(q.dead for q in dead)
    values = {
        "dead_letters": total,
        "queues": [
            {"subscriber": q.subscriber, "event_type": q.event_type, "dead": q.dead} for q in dead
        ],
    }
    metrics = [
        Metric("esctl_doctor_queue_messages", count, _queue_labels(env, q) | {"list": which})
        for q in listing.queues
        for which, count in (("published", q.published), ("processing", q.processing),
                             ("dead", q.dead))
    ]  # fmt: skip
    if not dead:
        return DEAD_LETTERS.result("ok", "no dead letters", values=values, metrics=metrics)
    first = max(dead, key=lambda q: q.dead)
    return DEAD_LETTERS.result(
        "warn",
        f"{counted(total, 'dead letter')} in {counted(len(dead), 'queue')}",
        action=f"see why: `esctl queue peek {_queue_words(first, env)} --list dead`; after a fix, "
        "`esctl queue requeue ... --from dead`, or back them up and remove them with `esctl "
        "queue drain`",
        values=values,
        details=[f"{q.subscriber} {q.event_type}: {q.dead:,} dead" for q in dead],
        metrics=metrics,
    )


def queue_reading(
    listing: queues.QueueListing, tails: dict[tuple[str, str], str | None], taken_at: float
) -> dict[str, Any]:
    return {
        "taken_at": taken_at,
        "queues": [
            [q.subscriber, q.event_type, q.published, tails.get((q.subscriber, q.event_type))]
            for q in listing.queues
        ],
    }


def queue_tails(
    client: redisio.RedisClient, env: str, listing: queues.QueueListing
) -> dict[tuple[str, str], str | None]:
    """A digest of the message each published list will give next (its tail)."""
    busy = [q for q in listing.queues if q.published]
    replies = redisio.pipelined(
        client,
        [
            ("LINDEX", layout.queue_key(q.subscriber, env, q.event_type, "published"), -1)
            for q in busy
        ],
    )
    out: dict[tuple[str, str], str | None] = {}
    for q, reply in zip(busy, replies, strict=True):
        out[(q.subscriber, q.event_type)] = (
            hashlib.sha1(reply).hexdigest()[:16] if isinstance(reply, bytes) else None
        )
    return out


DRAINING = declare(
    "queues.draining",
    "subscribers draining their queues",
    why=(
        "A published list that keeps its oldest message and does not shrink between two runs "
        "has no consumer: messages pile up in memory and, past the publisher's cap, publishing "
        "waits."
    ),
    metrics={
        "esctl_doctor_queue_draining": "1 when the queue was drained since the earlier reading.",
    },
)


def check_draining(env: str, listing: queues.QueueListing, compared: Comparison) -> Check:
    reading, baseline = compared.reading, compared.baseline
    if baseline is None:
        return compared.too_soon(DRAINING)
    elapsed = compared.elapsed_s
    before = {(r[0], r[1]): (int(r[2]), r[3]) for r in baseline.get("queues", [])}
    now = {(r[0], r[1]): (int(r[2]), r[3]) for r in reading["queues"]}
    stalled_subscribed: list[str] = []
    stalled_leftover: list[str] = []
    metrics = []
    rows = []
    for q in listing.queues:
        pair = (q.subscriber, q.event_type)
        if pair not in before:
            continue
        (old_len, old_tail), (new_len, new_tail) = before[pair], now[pair]
        stalled = (
            old_len > 0 and new_len >= old_len and old_tail is not None and new_tail == old_tail
        )
        metrics.append(
            Metric("esctl_doctor_queue_draining", int(not stalled), _queue_labels(env, q))
        )
        rows.append({"subscriber": q.subscriber, "event_type": q.event_type,
                     "published_before": old_len, "published_now": new_len,
                     "draining": not stalled, "subscribed": q.subscribed})  # fmt: skip
        if stalled:
            line = f"{q.subscriber} {q.event_type}: {old_len:,} → {new_len:,} published, same oldest message"
            (stalled_subscribed if q.subscribed else stalled_leftover).append(line)
    values = {"interval_s": round(elapsed, 1), "queues": rows}
    over = f"over {format_duration(elapsed)}"
    if stalled_subscribed:
        return DRAINING.result(
            "fail",
            f"{counted(len(stalled_subscribed), 'subscribed queue')} not drained {over}",
            action="start (or fix) the subscriber's consumer service; its messages wait in "
            "PublishedEvents and are taken as soon as it runs",
            values=values,
            details=stalled_subscribed + [f"(not subscribed) {line}" for line in stalled_leftover],
            metrics=metrics,
        )
    if stalled_leftover:
        return DRAINING.result(
            "warn",
            f"{counted(len(stalled_leftover), 'queue')} of services no longer subscribed "
            f"{'holds' if len(stalled_leftover) == 1 else 'hold'} messages "
            f"nobody takes ({over})",
            action="if the service is gone for good, back the messages up and remove them: "
            "`esctl queue drain SUB TYPE --list published --to-file PATH.jsonl.zst --env "
            f"{shlex.quote(env)}`",
            values=values,
            details=stalled_leftover,
            metrics=metrics,
        )
    return DRAINING.result(
        "ok",
        f"{counted(len(rows), 'queue')} compared {over}: none stalled",
        values=values,
        metrics=metrics,
    )


def run_queue_checks(
    client: redisio.RedisClient, opts: DoctorOptions, moment: datetime, readings: Readings
) -> tuple[list[Check], int | None]:
    """The queue checks of ``opts.env``, and how many queues it has (None when they could not
    be listed): the eviction policy's verdict uses it."""
    env = opts.env
    assert env is not None
    try:
        listing = queues.list_queues(client, env, now=moment)
    except EsctlError as exc:
        return [
            spec.unavailable(f"could not list the queues: {exc.message}", exc.hint)
            for spec in (STUCK, DEAD_LETTERS, DRAINING)
        ], None

    if not listing.queues:  # a typo in --env, or the wrong database: say so, not "ok"
        empty = _no_queues(client, env, opts.env_setting)
        if empty is not None:
            readings.skip(layout.doctor_queue_reading_key(env), "the env has no queues here")
            observed, action = empty
            return [
                spec.result("warn", observed, action=action)
                for spec in (STUCK, DEAD_LETTERS, DRAINING)
            ], 0

    def draining() -> Check:
        tails = queue_tails(client, env, listing)
        reading = queue_reading(listing, tails, moment.timestamp())
        key = layout.doctor_queue_reading_key(env)
        return check_draining(
            env, listing, readings.exchange(key, reading, opts.queue_min_interval)
        )

    return [
        guarded("queues.stuck", lambda: check_stuck(env, listing, opts.stuck_after)),
        guarded("queues.dead_letters", lambda: check_dead_letters(env, listing)),
        guarded("queues.draining", draining),
    ], len(listing.queues)


def _no_queues(client: redisio.RedisClient, env: str, check: str) -> tuple[str, str] | None:
    """For an env whose listing found no queue: what the queue checks observe and what to do
    (the environments that have queues here, from a bounded SCAN), or None when that SCAN
    sees the env after all (a queue made meanwhile). ``check``: where the env was set."""
    observed = f"env {redisio.printable(env)} has no queues in this database"
    try:
        here = queues.envs_with_queues(client)
    except (EsctlError, *redisio.REDIS_ERRORS):
        return observed, f"check {check}, and --redis-url (and its database number)"
    return None if here.has(env) else (observed, here.text(env, check))


def _queue_words(queue: queues.QueueStatus, env: str) -> str:
    """A queue's arguments of the queue commands, quoted for a shell (a generic type's name
    such as Envelope`1 would start a command substitution unquoted)."""
    return (
        f"{shlex.quote(queue.subscriber)} {shlex.quote(queue.event_type)} --env {shlex.quote(env)}"
    )
