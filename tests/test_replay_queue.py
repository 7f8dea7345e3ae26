"""``replay --to queue`` against a real Redis: what lands in which list, in which order, with
how many notifications, and what an independent consumer written to the library's protocol
receives. Ground truth comes from tests/independent_writer.py, not from esctl."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import independent_writer as iw
import lostlock
import pytest
import redis
import redis_bytes as rb
from faultrelay import expired_so_far, left_in_redis, signalled_twice
from helpers import cli_env, started_cli
from test_bench_relay import relay_module

from esctl import codec, errors, layout, queues, servers
from esctl.migrate import MigrateOptions, migrate_redis_to_pg
from esctl.replay import (
    Pacer,
    PublishPlan,
    ReplayOptions,
    Selection,
    replay,
    replay_lock,
)

SUB_A = "Learning.ReportingService.Worker-Test"
SUB_B = "Learning.SearchIndexer.Worker-Test"
SUBSCRIPTIONS = {
    "EnrollmentCreated": (SUB_A, SUB_B),
    "EnrollmentProgressed": (SUB_A,),
    "EnrollmentNoteAdded": (SUB_B,),
    "InvoiceIssued": (SUB_B,),
}


def subscribe(client: redis.Redis, env: str) -> None:
    for event_type, subs in SUBSCRIPTIONS.items():
        client.sadd(layout.subscribers_key(env, event_type), *subs)


def published(client: redis.Redis, sub: str, env: str, event_type: str) -> list[bytes]:
    """A PublishedEvents list in consumption order (the tail, RPOPLPUSH's end, first)."""
    return list(reversed(rb.lrange(client, layout.queue_key(sub, env, event_type, "published"))))


def expected_events(
    truth: iw.GroundTruth, *, aggregate_type: str | None = None, ids: set[str] | None = None
) -> list[iw.TruthEvent]:
    """The readable events, aggregate id order then version order (the replay's ``--order
    aggregate`` from Redis; an aggregate with a version gap is replayed as it is)."""
    chosen = [
        a
        for a in truth.aggregates
        if (aggregate_type is None or a.aggregate_type == aggregate_type)
        and (ids is None or a.aggregate_id in ids)
    ]
    chosen.sort(key=lambda a: a.aggregate_id)
    return [e for a in chosen for e in sorted(a.events, key=lambda e: e.version) if e.readable]


class Notifications:
    """Counts PUBLISHes on channels, from a subscription opened before the replay."""

    def __init__(self, client: redis.Redis, channels: list[str]) -> None:
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(*channels)
        # wait for the subscription confirmations so no notification is missed
        deadline = time.monotonic() + 5
        confirmed = 0
        while confirmed < len(channels) and time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.1)
            if message and message["type"] == "subscribe":
                confirmed += 1
        assert confirmed == len(channels)
        self.counts: Counter[str] = Counter()
        self.payloads: set[bytes] = set()

    def drain(self, expected: int, timeout: float = 10.0) -> Counter[str]:
        deadline = time.monotonic() + timeout
        quiet_until = None
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.05)
            if message is None:
                if sum(self.counts.values()) >= expected:
                    quiet_until = quiet_until or time.monotonic() + 0.3
                    if time.monotonic() >= quiet_until:
                        break
                continue
            if message["type"] != "message":
                continue
            self.counts[message["channel"].decode()] += 1
            self.payloads.add(message["data"])
        return self.counts

    def close(self) -> None:
        self.pubsub.close()


def consume(client: redis.Redis, sub: str, env: str, event_type: str) -> list[bytes]:
    """An independent consumer written to the library's protocol: RPOPLPUSH PublishedEvents ->
    ProcessingEvents, handle, LREM the exact value from ProcessingEvents."""
    source = f"{sub}:{{{env}:{event_type}}}:PublishedEvents"
    processing = f"{sub}:{{{env}:{event_type}}}:ProcessingEvents"
    handled: list[bytes] = []
    while True:
        value = client.rpoplpush(source, processing)
        if value is None:
            break
        assert isinstance(value, bytes)
        handled.append(value)  # the handler
        assert rb.lrem(client, processing, 0, value) >= 1
    assert client.llen(processing) == 0
    return handled


@pytest.fixture
def store(redis_client: redis.Redis, app_name: str, env_name: str) -> iw.GroundTruth:
    truth = iw.write_store(
        redis_client,
        app=app_name,
        aggregates=36,
        events_per_aggregate=(1, 7),
        compressed_share=0.4,
        defects=["missing_payload", "version_gap"],
        seed=5,
    )
    subscribe(redis_client, env_name)
    return truth


def options(app: str, env: str, **overrides: Any) -> ReplayOptions:
    values: dict[str, Any] = {
        "source": "redis",
        "target": "queue",
        "app": app,
        "env": env,
        "selection": Selection(all_events=True),
    }
    values.update(overrides)
    return ReplayOptions(**values)


# --- the acceptance test -------------------------------------------------------------------


def test_replay_to_one_subscriber_acceptance(
    redis_client: redis.Redis, store: iw.GroundTruth, app_name: str, env_name: str
) -> None:
    """Exactly the selected events, uncompressed, in the library's order, on that
    subscriber's lists only, one notification per event; an independent consumer gets each
    once."""
    truth = store
    sentinel = b'{"untouched": true}'
    other_list = layout.queue_key(SUB_B, env_name, "EnrollmentCreated", "published")
    redis_client.lpush(other_list, sentinel)
    before = {
        k: redis_client.lrange(k, 0, -1)
        for k in redis_client.scan_iter(match=f"*{{{env_name}:*}}*")
        if redis_client.type(k) == b"list"
    }
    channels = [layout.notification_channel(env_name, t) for t in SUBSCRIPTIONS]
    notifications = Notifications(redis_client, channels)
    try:
        summary = replay(
            options(
                app_name,
                env_name,
                selection=Selection(aggregate_type="Enrollment"),
                subscribers=(SUB_A,),
            ),
            redis_client=redis_client,
        )
        selected = [
            e
            for e in expected_events(truth, aggregate_type="Enrollment")
            if e.event_type in ("EnrollmentCreated", "EnrollmentProgressed")
        ]
        by_type = Counter(e.event_type for e in selected)
        counts = notifications.drain(len(selected))
    finally:
        notifications.close()
    # the store's event without a payload is reported (whatever its type: it cannot be read)
    assert [p["kind"] for p in summary.problems] == ["unreadable"]
    assert summary.published == {SUB_A: dict(by_type)}
    assert summary.notifications == len(selected)
    assert counts == Counter(
        {layout.notification_channel(env_name, t): n for t, n in by_type.items()}
    )
    assert notifications.payloads == {b"1"}
    for event_type in ("EnrollmentCreated", "EnrollmentProgressed"):
        wanted = [e.payload.encode() for e in selected if e.event_type == event_type]
        assert published(redis_client, SUB_A, env_name, event_type) == wanted
        assert all(not v.startswith(b"H4sI") for v in wanted)
    assert any(e.compressed for e in selected)  # some were stored gzip+base64
    # nothing else changed: only SUB_A's two PublishedEvents lists are new
    after = {
        k: redis_client.lrange(k, 0, -1)
        for k in redis_client.scan_iter(match=f"*{{{env_name}:*}}*")
        if redis_client.type(k) == b"list"
    }
    new_keys = {k.decode() for k in set(after) - set(before)}
    assert new_keys == {
        layout.queue_key(SUB_A, env_name, t, "published")
        for t in ("EnrollmentCreated", "EnrollmentProgressed")
    }
    assert all(after[k] == v for k, v in before.items())
    # an independent consumer receives each selected event exactly once, in order
    for event_type in ("EnrollmentCreated", "EnrollmentProgressed"):
        handled = consume(redis_client, SUB_A, env_name, event_type)
        assert handled == [e.payload.encode() for e in selected if e.event_type == event_type]


@pytest.mark.parametrize("encoding", ["resp", "commands"])
def test_replay_one_aggregate_to_every_subscriber(
    redis_client: redis.Redis,
    store: iw.GroundTruth,
    app_name: str,
    env_name: str,
    encoding: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both ways of sending the transactions publish the same: the publisher's own RESP
    encoding (single server) and command tuples through redisio.pipelined (where the raw path
    does not apply; over real TLS: tests/test_tls.py)."""
    if encoding == "commands":
        monkeypatch.setattr("esctl.redisio.resp_channel", lambda *args: None)
    aggregate = next(
        a
        for a in store.clean_aggregates()
        if a.aggregate_type == "Enrollment" and len(a.events) > 3
    )
    summary = replay(
        options(app_name, env_name, selection=Selection(aggregates=(aggregate.aggregate_id,))),
        redis_client=redis_client,
    )
    events = sorted(aggregate.events, key=lambda e: e.version)
    for event_type, subs in SUBSCRIPTIONS.items():
        wanted = [e.payload.encode() for e in events if e.event_type == event_type]
        for sub in subs:
            assert published(redis_client, sub, env_name, event_type) == wanted
    assert summary.events == len(events)
    assert summary.unpublished == {}
    assert summary.messages == sum(len(SUBSCRIPTIONS[e.event_type]) for e in events)


def test_version_order_not_commit_order(
    redis_client: redis.Redis, store: iw.GroundTruth, app_name: str, env_name: str
) -> None:
    """The library sorts an aggregate's events by Version: so does the replay, whatever the
    commit list's order."""
    aggregate = next(
        a
        for a in store.clean_aggregates()
        if a.aggregate_type == "Enrollment" and len(a.events) > 3
    )
    key = aggregate.list_key
    ids = redis_client.lrange(key, 0, -1)
    redis_client.delete(key)
    redis_client.rpush(key, *reversed(ids))
    replay(
        options(
            app_name,
            env_name,
            selection=Selection(aggregates=(aggregate.aggregate_id,)),
            subscribers=(SUB_A,),
        ),
        redis_client=redis_client,
    )
    got = published(redis_client, SUB_A, env_name, "EnrollmentProgressed")
    versions = [int(v.split(b'"Version":')[1].split(b",")[0]) for v in got]
    assert versions == sorted(versions) and len(versions) == len(set(versions)) > 0


def test_unreadable_events_are_reported_not_published(
    redis_client: redis.Redis, store: iw.GroundTruth, app_name: str, env_name: str
) -> None:
    broken = store.defects_of("missing_payload")[0]
    summary = replay(
        options(app_name, env_name, selection=Selection(aggregates=(broken.aggregate_id,))),
        redis_client=redis_client,
    )
    assert [p["kind"] for p in summary.problems] == ["unreadable"]
    aggregate = store.aggregate(broken.aggregate_id)
    assert summary.events == len([e for e in aggregate.events if e.stored is not None])


# --- subscribers ---------------------------------------------------------------------------


def test_unknown_subscriber_is_a_usage_error_unless_forced(
    redis_client: redis.Redis, store: iw.GroundTruth, app_name: str, env_name: str
) -> None:
    aggregate = next(a for a in store.clean_aggregates() if a.aggregate_type == "Invoice")
    selection = Selection(aggregates=(aggregate.aggregate_id,))
    with pytest.raises(errors.UsageError, match=r"Reporting\.Typo"):
        replay(
            options(app_name, env_name, selection=selection, subscribers=("Reporting.Typo",)),
            redis_client=redis_client,
        )
    assert not list(redis_client.scan_iter(match="*PublishedEvents"))
    summary = replay(
        options(
            app_name, env_name, selection=selection, subscribers=("New.ReadModel",), force=True
        ),
        redis_client=redis_client,
    )
    events = sorted(aggregate.events, key=lambda e: e.version)
    assert summary.events == len(events) and summary.unpublished == {}
    for event_type in {e.event_type for e in events}:
        wanted = [e.payload.encode() for e in events if e.event_type == event_type]
        assert published(redis_client, "New.ReadModel", env_name, event_type) == wanted


def test_types_nobody_subscribes_to_are_counted_not_published(
    redis_client: redis.Redis, store: iw.GroundTruth, app_name: str, env_name: str
) -> None:
    summary = replay(
        options(app_name, env_name, selection=Selection(aggregate_type="Course")),
        redis_client=redis_client,
    )
    assert summary.messages == 0 and summary.notifications == 0
    assert sum(summary.unpublished.values()) == summary.events > 0


def test_wrong_type_target_is_refused_before_publishing(
    redis_client: redis.Redis, store: iw.GroundTruth, app_name: str, env_name: str
) -> None:
    wrong = layout.queue_key(SUB_B, env_name, "InvoiceIssued", "published")
    redis_client.set(wrong, "oops")
    with pytest.raises(errors.ServerError, match="not a list"):
        replay(options(app_name, env_name), redis_client=redis_client)
    assert list(redis_client.scan_iter(match="*PublishedEvents")) == [wrong.encode()]


# --- confirmation, dry run, lock -----------------------------------------------------------


def test_confirmation_over_the_threshold(
    redis_client: redis.Redis, store: iw.GroundTruth, app_name: str, env_name: str
) -> None:
    asked: list[PublishPlan] = []

    def no(plan: PublishPlan) -> bool:
        asked.append(plan)
        return False

    with pytest.raises(errors.Refused):
        replay(options(app_name, env_name, confirm_over=5), redis_client=redis_client, confirm=no)
    assert len(asked) == 1
    plan = asked[0]
    every = expected_events(store)
    wanted = Counter(e.event_type for e in every if e.event_type in SUBSCRIPTIONS)
    assert plan.published[SUB_A] == {t: n for t, n in wanted.items() if SUB_A in SUBSCRIPTIONS[t]}
    assert plan.events == sum(wanted.values())
    assert not list(redis_client.scan_iter(match="*PublishedEvents"))

    # under the threshold: not asked
    aggregate = store.clean_aggregates()[0]
    replay(
        options(
            app_name,
            env_name,
            selection=Selection(aggregates=(aggregate.aggregate_id,)),
            confirm_over=1000,
        ),
        redis_client=redis_client,
        confirm=no,
    )
    assert len(asked) == 1


def test_dry_run_counts_per_subscriber_and_type_and_writes_nothing(
    redis_client: redis.Redis, store: iw.GroundTruth, app_name: str, env_name: str
) -> None:
    keys_before = set(redis_client.scan_iter())
    summary = replay(options(app_name, env_name, dry_run=True), redis_client=redis_client)
    assert set(redis_client.scan_iter()) == keys_before
    every = expected_events(store)
    by_type = Counter(e.event_type for e in every)
    assert summary.dry_run and summary.events >= len(every)
    for sub in (SUB_A, SUB_B):
        assert summary.published[sub] == {
            t: n for t, n in by_type.items() if sub in SUBSCRIPTIONS.get(t, ())
        }


def test_a_second_replay_on_the_same_queue_exits_locked(
    redis_client: redis.Redis, store: iw.GroundTruth, app_name: str, env_name: str
) -> None:
    holder = replay_lock(redis_client, [queues.QueueRef(SUB_A, env_name, "EnrollmentCreated")])
    with holder, pytest.raises(errors.LockHeld):
        replay(options(app_name, env_name), redis_client=redis_client)
    assert not list(redis_client.scan_iter(match="*PublishedEvents"))
    # the queue commands' own lock is another one: a requeue running does not block a replay
    with queues.queue_lock(redis_client, [queues.QueueRef(SUB_A, env_name, "EnrollmentCreated")]):
        replay(options(app_name, env_name), redis_client=redis_client)


# --- back-pressure -------------------------------------------------------------------------


@pytest.fixture
def slow_consumer(redis_client: redis.Redis, env_name: str) -> Iterator[dict[str, Any]]:
    """A consumer thread draining SUB_A's EnrollmentCreated queue a few messages at a time,
    recording the longest length it saw."""
    state: dict[str, Any] = {"max": 0, "handled": [], "stop": threading.Event()}
    key = layout.queue_key(SUB_A, env_name, "EnrollmentCreated", "published")
    client = redis.Redis(connection_pool=redis_client.connection_pool)

    def run() -> None:
        while not state["stop"].is_set():
            state["max"] = max(state["max"], client.llen(key))
            value = client.rpop(key)
            if value is None:
                time.sleep(0.005)
            else:
                state["handled"].append(value)
                time.sleep(0.002)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state["stop"].set()
        thread.join(5)


def test_max_queue_length_keeps_lists_under_the_cap(
    redis_client: redis.Redis,
    store: iw.GroundTruth,
    app_name: str,
    env_name: str,
    slow_consumer: dict[str, Any],
) -> None:
    summary = replay(
        options(
            app_name,
            env_name,
            selection=Selection(types=("EnrollmentCreated",)),
            subscribers=(SUB_A,),
            max_queue_length=3,
        ),
        redis_client=redis_client,
    )
    key = layout.queue_key(SUB_A, env_name, "EnrollmentCreated", "published")
    deadline = time.monotonic() + 10
    while redis_client.llen(key) and time.monotonic() < deadline:
        time.sleep(0.01)
    slow_consumer["stop"].set()
    wanted = [
        e.payload.encode() for e in expected_events(store) if e.event_type == "EnrollmentCreated"
    ]
    assert len(wanted) > 6
    assert slow_consumer["handled"] == wanted
    assert slow_consumer["max"] <= 3
    assert summary.waited_s > 0


def test_rate_paces_publishing(
    redis_client: redis.Redis, store: iw.GroundTruth, app_name: str, env_name: str
) -> None:
    slept: list[float] = []
    summary = replay(
        options(app_name, env_name, selection=Selection(types=("EnrollmentCreated",)), rate=20),
        redis_client=redis_client,
        sleep=slept.append,
    )
    # 20 events/s: round trips of 2 events (a tenth of a second's worth), a wait before each
    assert summary.events > 6
    assert len(slept) == (summary.events + 1) // 2 - 1


def test_pacer_keeps_the_rate() -> None:
    now = [100.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    pacer = Pacer(50, sleep, lambda: now[0])
    assert pacer.batch(500) == 5
    for _ in range(100):
        pacer.wait(5)
    assert now[0] - 100.0 == pytest.approx(99 * 5 / 50)


# --- from PostgreSQL -----------------------------------------------------------------------


def test_replay_from_pg_publishes_what_the_sql_provider_returns_metadata_first(
    redis_client: redis.Redis, store: iw.GroundTruth, app_name: str, env_name: str, pg_dsn: str
) -> None:
    """The SQL provider's text (jsonb's key order), with Newtonsoft's metadata put first again
    for the queue's subscribers (tests/test_dotnet_reader.py reads them with Newtonsoft)."""
    migrate_redis_to_pg(
        redis_client, MigrateOptions(app=app_name, pg_dsn=pg_dsn, init_schema=True, writers=1)
    )
    aggregate = next(
        a
        for a in store.clean_aggregates()
        if a.aggregate_type == "Enrollment" and len(a.events) > 2
    )
    summary = replay(
        options(
            app_name,
            env_name,
            source="pg",
            pg_dsn=pg_dsn,
            selection=Selection(aggregates=(aggregate.aggregate_id,)),
            subscribers=(SUB_A,),
        ),
        redis_client=redis_client,
    )
    import psycopg

    with psycopg.connect(pg_dsn) as conn:
        texts = [
            r[0]
            for r in conn.execute(
                "SELECT * FROM get_events_for_aggregate(%s, %s, %s, 0)",
                (aggregate.aggregate_id, app_name, aggregate.aggregate_type),
            )
        ]
    events = sorted(aggregate.events, key=lambda e: e.version)
    for event_type in ("EnrollmentCreated", "EnrollmentProgressed"):
        wanted = [
            codec.newtonsoft_metadata_first(t.encode())
            for t, e in zip(texts, events, strict=True)
            if e.event_type == event_type
        ]
        assert all(w.startswith(b'{"$type": ') for w in wanted)
        assert published(redis_client, SUB_A, env_name, event_type) == wanted
    assert summary.events == len(events)


def test_the_cluster_publish_script_does_what_multi_exec_does(
    redis_client: redis.Redis, store: iw.GroundTruth, app_name: str, env_name: str
) -> None:
    """On a Redis Cluster each event is one Lua script (redis-py's cluster pipeline cannot
    carry MULTI); run that path on the single server and compare."""
    from esctl.query import Selectors
    from esctl.replay import Publisher, RedisSource, ReplaySummary

    routes: dict[str, tuple[str, ...]] = {"EnrollmentCreated": (SUB_A, SUB_B)}
    events = list(
        RedisSource(redis_client, app_name, Selectors(types=("EnrollmentCreated",)).filters())
    )
    results = {}
    for cluster in (False, True):
        env = f"{env_name}-{cluster}"
        summary = ReplaySummary(dry_run=False, source="redis", target="queue", order="aggregate")
        publisher = Publisher(redis_client, env, routes, summary, batch=7)
        publisher.cluster = cluster
        notifications = Notifications(
            redis_client, [layout.notification_channel(env, "EnrollmentCreated")]
        )
        try:
            for event in events:
                publisher.add(event)
            publisher.flush()
            counts = notifications.drain(len(events))
        finally:
            notifications.close()
        assert sum(counts.values()) == summary.notifications == len(events)
        results[cluster] = [
            published(redis_client, s, env, "EnrollmentCreated") for s in (SUB_A, SUB_B)
        ]
    assert results[True] == results[False]
    assert results[True][0] == [e.payload for e in events]


def test_at_a_distance_publish_batches_grow_and_publish_the_same(
    redis_client: redis.Redis,
    redis_test_url: str,
    store: iw.GroundTruth,
    app_name: str,
    env_name: str,
) -> None:
    """A batch's transactions go to Redis in one round trip; when that round trip is long
    (a relay adding 5 ms each way) the next batches grow, and the lists get exactly what a
    near Redis gets, in order. On loopback they grow far less, if at all."""
    from esctl import redisio
    from esctl.query import Selectors
    from esctl.replay import Publisher, RedisSource, ReplaySummary
    from esctl.replay.publisher import PUBLISH_BATCH

    routes: dict[str, tuple[str, ...]] = {"EnrollmentCreated": (SUB_A,)}
    found = list(
        RedisSource(redis_client, app_name, Selectors(types=("EnrollmentCreated",)).filters())
    )
    events = (found * (3 * PUBLISH_BATCH // len(found) + 1))[: 3 * PUBLISH_BATCH]
    url = urlsplit(redis_test_url)
    batches = {}
    with relay_module.Relay((url.hostname or "127.0.0.1", url.port or 6379), 0.005) as relay:
        for where, port in (("near", url.port or 6379), ("far", relay.port)):
            client = redisio.connect(urlunsplit(url._replace(netloc=f"127.0.0.1:{port}")))
            env = f"{env_name}-{where}"
            summary = ReplaySummary(
                dry_run=False, source="redis", target="queue", order="aggregate"
            )
            publisher = Publisher(
                client, env, routes, summary, round_trip_s=redisio.round_trip(client)
            )
            try:
                for event in events:
                    publisher.add(event)
                publisher.flush()
            finally:
                client.close()
            batches[where] = publisher.batch
            assert published(redis_client, SUB_A, env, "EnrollmentCreated") == [
                e.payload for e in events
            ]
    # Near, the round trip is a small share of a batch's time: a batch grows little if at all
    # (here the events are made already, so a batch takes far less time than in a replay).
    # Far, how much it grows follows the time an event takes here: 10x on a quiet machine,
    # 8.6x seen with the cores busy (a clean-clone CI run beside other tests).
    assert batches["near"] < batches["far"] and batches["far"] >= 4 * PUBLISH_BATCH


@pytest.mark.parametrize("cluster", [False, True])
def test_a_failed_transaction_stops_publishing_and_counts_what_ran(
    redis_client: redis.Redis, env_name: str, cluster: bool
) -> None:
    """Transactions that do not run (a subscriber's list is a string here) stop the publisher
    once their answers are read: the events of the batches already sent that ran are counted
    (the rest of the failing batch, and on a single server the batch in flight behind it),
    every one that failed is named, and nothing more is sent (the third batch, made
    meanwhile). Both ways of sending: MULTI/EXEC with batches in flight, and the cluster's
    script per event, one batch at a time."""
    from esctl.projections import Event
    from esctl.replay import Publisher, ReplaySummary
    from esctl.replay.publisher import IN_FLIGHT, PublishFailed

    assert IN_FLIGHT == 2
    env = f"{env_name}-{cluster}"
    redis_client.set(layout.queue_key(SUB_A, env, "Bad", "published"), "not a list")
    events = [
        Event(f"a-{n}", "Test", n, "Bad" if n in (3, 5) else "Good", "", None, (n,),
              b'{"n":%d}' % n)
        for n in range(1, 22)
    ]  # fmt: skip
    summary = ReplaySummary(dry_run=False, source="redis", target="queue", order="aggregate")
    with Publisher(
        redis_client, env, {"Good": (SUB_A,), "Bad": (SUB_A,)}, summary, batch=7
    ) as publisher:
        publisher.cluster = cluster
        with pytest.raises(PublishFailed) as failed:
            for event in events:
                publisher.add(event)
            publisher.flush()
    # the key that failed: the list (MULTI/EXEC), the notification channel (the script)
    bad = f"{env}:Bad" if cluster else layout.queue_key(SUB_A, env, "Bad", "published")
    assert [(e.version, key) for e, key, _ in failed.value.failures] == [(3, bad), (5, bad)]
    assert "WRONGTYPE" in failed.value.detail
    ran = [4, 6, 7] if cluster else [4, 6, 7, *range(8, 15)]
    assert failed.value.published_after == len(ran)
    assert published(redis_client, SUB_A, env, "Good") == [b'{"n":%d}' % n for n in (1, 2, *ran)]
    assert summary.published == {SUB_A: {"Good": 2 + len(ran)}}
    assert summary.messages == summary.notifications == 2 + len(ran)


AT_SECOND_BATCH = """
import os, sys
import redis
from esctl.replay import publisher

real_init = publisher.Publisher.__init__
real = publisher.Publisher._send

def small_batches(self, *args, **kwargs):
    real_init(self, *args, **{**kwargs, "batch": 16})

sent = []

def full_after_first(self, chunk):
    sent.append(len(chunk))
    if len(sent) == 2:  # Redis over maxmemory from the second batch on
        admin = redis.Redis.from_url(os.environ["ADMIN_URL"])
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) - 100_000)
    return real(self, chunk)

publisher.Publisher.__init__ = small_batches
publisher.Publisher._send = full_after_first
sys.argv[0] = "esctl"
from esctl.cli.app import main
main()
"""
"""``esctl ARGS`` whose Redis (``$ADMIN_URL``) goes over maxmemory as the replay sends its
second batch of events; everything else is the real command."""


def test_a_replay_that_fills_redis_says_what_to_do_about_memory(
    fresh_redis: servers.LocalRedis, app_name: str, env_name: str
) -> None:
    """Redis refuses the publishes once over maxmemory: the error names the first event not
    published and says to free memory (not only "fix the cause"), then to replay the rest."""
    client = redis.Redis.from_url(fresh_redis.url)
    iw.write_store(client, app=app_name, aggregates=120, events_per_aggregate=(2, 4), seed=8)
    subscribe(client, env_name)
    result = subprocess.run(
        [sys.executable, "-c", AT_SECOND_BATCH, "replay", "--from", "redis", "--all",
         "--to", "queue", "--subscriber", SUB_A, "--redis-url", fresh_redis.url,
         "--app", app_name, "--env", env_name, "--yes"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**cli_env(), "ADMIN_URL": fresh_redis.url},
    )  # fmt: skip
    client.config_set("maxmemory", 0)
    assert result.returncode == 1, result.stderr
    error = " ".join(result.stderr.split())
    assert "failed: command not allowed when used memory" in error or "OOM" in error, error
    assert "what to do: Redis is at its maxmemory: free memory or raise maxmemory" in error
    assert "then replay the rest" in error
    client.close()


def test_a_replay_that_loses_its_lock_mid_run_counts_the_batches_in_flight_and_stops(
    redis_client: redis.Redis,
    store: iw.GroundTruth,
    app_name: str,
    env_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another run takes the replay lock once batch 4 was sent (batches 3 and 4 in flight):
    nothing more is sent, the answers in flight are read and counted, the summary stops on
    the lost lock (exit 1) naming its key and the first event not published; the lists hold
    exactly the events sent, in order, each once, with one notification each. Once the other
    run is gone a replay runs again."""
    from esctl.replay import Publisher

    monkeypatch.setattr("esctl.replay.to_queue.PUBLISH_BATCH", 10)
    monkeypatch.setattr("esctl.redisio.round_trip", lambda client: 0.0)  # batches stay at 10
    locks = lostlock.ShortLocks(monkeypatch)
    real = Publisher._send
    sent: list[Any] = []

    def take_the_lock_after_batch_4(publisher: Publisher, chunk: Any) -> None:
        real(publisher, chunk)
        sent.extend(chunk)
        if len(sent) == 40:
            locks.take_away(redis_client)

    monkeypatch.setattr(Publisher, "_send", take_the_lock_after_batch_4)
    channels = [layout.notification_channel(env_name, t) for t in SUBSCRIPTIONS]
    notifications = Notifications(redis_client, channels)
    try:
        summary = replay(options(app_name, env_name), redis_client=redis_client)
        counts = notifications.drain(40)
    finally:
        notifications.close()
    assert len(sent) == 40, "nothing is sent once the loss is known"
    order = [e for e in expected_events(store) if e.event_type in SUBSCRIPTIONS]
    assert len(order) > 40
    assert [(e.aggregate_id, e.version) for e in sent] == [
        (e.aggregate_id, e.version) for e in order[:40]
    ]
    for event_type, subs in SUBSCRIPTIONS.items():
        wanted = [e.payload.encode() for e in order[:40] if e.event_type == event_type]
        for sub in subs:
            assert published(redis_client, sub, env_name, event_type) == wanted
    assert summary.notifications == 40 == sum(counts.values())
    assert summary.messages == sum(len(SUBSCRIPTIONS[e.event_type]) for e in order[:40])
    assert summary.events == 40 + sum(summary.unpublished.values())
    stopped = summary.stopped
    assert stopped is not None and stopped["kind"] == "lock_lost"
    keys = {
        layout.replay_lock_key(s, env_name, t) for t, subs in SUBSCRIPTIONS.items() for s in subs
    }
    assert stopped["key"] in keys
    assert stopped["error"] == f"{stopped['key']} was taken or deleted by someone else"
    nxt = order[40]
    assert (stopped["aggregate_id"], stopped["version"], stopped["event_type"]) == (
        nxt.aggregate_id, nxt.version, nxt.event_type,
    )  # fmt: skip

    locks.give_back(redis_client)
    monkeypatch.setattr(Publisher, "_send", real)
    again = replay(options(app_name, env_name), redis_client=redis_client)
    assert again.stopped is None and again.notifications == len(order)


@pytest.mark.parametrize(
    "signals",
    [("SIGINT",), ("SIGTERM",), ("SIGINT", "SIGINT")],
    ids=["int", "term", "int-twice"],
)
def test_an_interrupted_replay_says_exactly_what_the_lists_hold(
    fresh_redis: servers.LocalRedis, app_name: str, env_name: str, signals: tuple[str, ...]
) -> None:
    """Ctrl-C or SIGTERM (to the process, by its pid) while a batch's transactions wait for
    Redis's answer (held there by CLIENT PAUSE WRITE): the run waits for the answer, counts
    the batch, and stops: the events and messages it says it published, to how many subscriber
    queues, and the last of them are exactly what the lists hold: the first routed events of
    the selection, in order (--json: error.done). A second signal stops the wait at once: the
    events sent and not answered are said to be in doubt, and the lists hold at least the
    events said, at most those and the ones in doubt."""
    client = redis.Redis.from_url(fresh_redis.url)
    truth = iw.write_store(client, app=app_name, aggregates=60, events_per_aggregate=(2, 4), seed=8)
    subscribe(client, env_name)
    order = [e for e in expected_events(truth) if e.event_type in SUBSCRIPTIONS]
    keys = [
        layout.queue_key(s, env_name, t, "published")
        for t, subs in SUBSCRIPTIONS.items()
        for s in subs
    ]

    def messages() -> int:
        return sum(int(client.llen(k)) for k in keys)

    args = [
        "replay", "--from", "redis", "--all", "--to", "queue", "--rate", "100",
        "--redis-url", fresh_redis.url, "--app", app_name, "--env", env_name,
        "--yes", "--json", "--no-progress",
    ]  # fmt: skip
    try:
        with started_cli(*args) as process:
            deadline = time.monotonic() + 20
            while messages() < 30:
                assert process.poll() is None, "the replay ended before it could be stopped"
                assert time.monotonic() < deadline
                time.sleep(0.005)
            client.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")
            time.sleep(0.4)  # its next batch sent, it waits for the answer (rate 100: 10 a batch)
            for name in signals:
                os.kill(process.pid, getattr(signal, name))
                time.sleep(0.2)
            client.execute_command("CLIENT", "UNPAUSE")
            stdout, stderr = process.communicate(timeout=30)
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
    assert process.returncode == 130, stderr
    message = " ".join(stderr.decode().split())
    assert "Traceback" not in message
    said = "stopped by SIGTERM" if signals[0] == "SIGTERM" else "interrupted"
    found = re.search(
        rf"error: {said}; ([\d,]+) events published to (\d+) subscriber queues before it "
        r"stopped \(([\d,]+) messages, each event whole with its notification; the last: "
        r"(\S+) (\S+) version (\d+)\)",
        message,
    )
    assert found is not None, message
    events, queues_, sent = (int(found[i].replace(",", "")) for i in (1, 2, 3))
    assert 30 <= events < len(order)
    error = json.loads(stdout)["error"]
    held = {k: rb.lrange(client, k) for k in keys}
    lists = sum(len(v) for v in held.values())
    last = order[events - 1]
    assert (found[4], found[5], int(found[6])) == (last.event_type, last.aggregate_id, last.version)
    assert (
        "the same command publishes every event of the selection again, from its start" in message
    )
    if len(signals) == 1:
        assert "every batch sent was answered and is counted, nothing more was sent" in message
        assert error["done"] == {"events_published": events, "messages": sent}
        assert lists == sent and queues_ == sum(1 for v in held.values() if v)
        there = events
    else:
        doubt = error["done"].pop("events_in_doubt")
        assert error["done"] == {"events_published": events, "messages": sent}
        assert f"whether the {doubt} events sent after them were published is not known" in message
        assert doubt > 0 and sent <= lists
        there = next(n for n in range(events, events + doubt + 1) if lists == _messages(order[:n]))
    for event_type, subs in SUBSCRIPTIONS.items():  # the first routed events, in order, once
        wanted = [e.payload.encode() for e in order[:there] if e.event_type == event_type]
        for sub in subs:
            assert published(client, sub, env_name, event_type) == wanted
    client.close()


def _messages(events: list[iw.TruthEvent]) -> int:
    return sum(len(SUBSCRIPTIONS[e.event_type]) for e in events)


PROMPT_S = 3.0
"""How soon after a second signal a replay on a Redis that does not answer must have exited
(its lock's release is waited for about a second, as the queue commands wait)."""


def test_a_second_signal_on_a_redis_that_does_not_answer_hurries_the_lock_release(
    fresh_redis: servers.LocalRedis, app_name: str, env_name: str
) -> None:
    """Redis stopped (SIGSTOP: it answers nothing, not even the release of the replay lock)
    while a batch waits for its answer: the first signal waits for it, a second one stops the
    wait, and the run exits 130 within a few seconds, its message saying that Redis did not
    answer the release of the replay lock, which expires on its own (a rerun before then exits
    75). Before, the run waited for the release for as long as Redis stayed stopped."""
    client = redis.Redis.from_url(fresh_redis.url)
    iw.write_store(client, app=app_name, aggregates=60, events_per_aggregate=(2, 4), seed=8)
    subscribe(client, env_name)
    keys = [
        layout.queue_key(s, env_name, t, "published")
        for t, subs in SUBSCRIPTIONS.items()
        for s in subs
    ]
    locks = sorted(
        layout.replay_lock_key(s, env_name, t) for t, subs in SUBSCRIPTIONS.items() for s in subs
    )
    args = [
        "replay", "--from", "redis", "--all", "--to", "queue", "--rate", "100",
        "--redis-url", fresh_redis.url, "--app", app_name, "--env", env_name,
        "--yes", "--json", "--no-progress",
    ]  # fmt: skip
    with started_cli(*args) as process:
        deadline = time.monotonic() + 20
        while sum(int(client.llen(k)) for k in keys) < 30:
            assert process.poll() is None, "the replay ended before it could be stopped"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(fresh_redis.pid, signal.SIGSTOP)
        try:
            time.sleep(0.4)  # its next batch sent, it waits for the answer (rate 100: 10 a batch)
            os.kill(process.pid, signal.SIGINT)
            time.sleep(0.2)
            os.kill(process.pid, signal.SIGINT)
            signalled = time.monotonic()
            try:
                stdout, stderr = process.communicate(timeout=PROMPT_S + 7)
            except subprocess.TimeoutExpired:
                pytest.fail("the replay still waited for Redis 10 s after the second signal")
            took = time.monotonic() - signalled
        finally:
            os.kill(fresh_redis.pid, signal.SIGCONT)
    message = " ".join(stderr.decode().split())
    assert process.returncode == 130, message
    assert "Traceback" not in message
    assert took < PROMPT_S, f"it waited {took:.1f} s after the second signal: {message}"
    assert "(a second signal stopped the wait for Redis's answer)" in message
    said = (
        f"Redis did not answer the release of the replay lock {', '.join(locks)}: it expires "
        "30 s after its last renewal, and a rerun before then exits 75"
    )
    assert said in message
    error = json.loads(stdout)["error"]
    assert said in error["hint"] and error["done"]["events_in_doubt"] > 0
    assert all(client.exists(k) for k in locks)  # left, to expire on its own
    client.close()


def test_a_second_signal_while_the_replay_lock_is_given_back_is_said_to_leave_it(
    redis_client: redis.Redis, redis_test_url: str, app_name: str, env_name: str
) -> None:
    """A first Ctrl-C as the first batch goes out (its answer read and counted on the way
    out), and a second one while the replay gives its lock back: the release does not reach
    Redis, the replay lock stays until it expires, and a rerun before then exits 75. The
    run's message says so, as when Redis did not answer the release (it said nothing)."""
    iw.write_store(redis_client, app=app_name, aggregates=60, events_per_aggregate=(2, 4), seed=8)
    subscribe(redis_client, env_name)
    locks = sorted(
        layout.replay_lock_key(s, env_name, t) for t, subs in SUBSCRIPTIONS.items() for s in subs
    )
    args = ["replay", "--from", "redis", "--all", "--to", "queue", "--app", app_name]
    args += ["--env", env_name, "--yes", "--json", "--no-progress"]
    signals = (signal.SIGINT, signal.SIGINT)
    expired = expired_so_far(redis_client)
    with (
        signalled_twice(redis_test_url, b"PUBLISH", signals) as (through, started),
        started_cli(*args, "--redis-url", through) as process,
    ):
        started(process.pid)
        stdout, stderr = process.communicate(timeout=60)
    message = " ".join(stderr.decode().split())
    assert process.returncode == 130 and "Traceback" not in message, message
    assert re.search(r"error: interrupted; [\d,]+ events? published to \d+ subscriber", message)
    left = (
        f"a signal stopped the release of the replay lock {', '.join(locks)}, which may still "
        "be held: it expires 30 s after its last renewal, and a rerun before then exits 75"
    )
    assert left in message, message
    assert json.loads(stdout)["error"]["hint"].endswith(left)

    if not left_in_redis(redis_client, locks, expired):
        return  # (one expired on its own already: a rerun would not find it)
    with started_cli(*args, "--redis-url", redis_test_url) as rerun:
        stdout, _ = rerun.communicate(timeout=60)
    assert rerun.returncode == 75, stdout
