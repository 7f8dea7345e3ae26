"""esctl.queues against a real Redis: list, peek, requeue, drain, restore, the lock."""

from __future__ import annotations

import importlib
import os
import re
import signal
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lostlock
import orjson
import pytest
import redis
import redis_bytes as rb
import zstandard
from faultrelay import FaultRelay, script_sha
from helpers import outcomes, read_as_restore, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esctl import errors, layout, metrics, queues
from esctl.demo import DEFAULT_NOW, DemoSummary
from esctl.interrupts import HeldInterrupts
from esctl.queues import scripts

# the module, not the function esctl.queues exports under the same name
drain_module = importlib.import_module("esctl.queues.drain")
requeue_module = importlib.import_module("esctl.queues.requeue")
restore_module = importlib.import_module("esctl.queues.restore")
progress_module = importlib.import_module("esctl.queues.progress")
selection_module = importlib.import_module("esctl.queues.selection")

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SUB = "Learning.ReportingService.Worker-Test"


def message(
    aggregate_id: str, version: int = 1, *, age: timedelta = timedelta(0), **extra: Any
) -> bytes:
    """A queued message as the library publishes it (uncompressed Newtonsoft JSON)."""
    stamp = NOW - age
    document = {
        "$type": "Learning.ScoringService.Domain.Events.ItemScoreCreated, Learning.ScoringService.Domain",
        "Id": aggregate_id,
        "TimeStamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%f") + "1+00:00",
        "Version": version,
        "AggregateType": "ItemScore",
        **extra,
    }
    return orjson.dumps(document)


def ref(env: str, event_type: str = "ItemScoreCreated", subscriber: str = SUB) -> queues.QueueRef:
    return queues.QueueRef(subscriber, env, event_type)


def fill(client: redis.Redis, key: str, consumption_order: list[bytes]) -> None:
    """Make ``key`` hold these values, the first one at the tail (taken next)."""
    client.delete(key)
    if consumption_order:
        client.lpush(key, *consumption_order)


def contents(client: redis.Redis, key: str) -> list[bytes]:
    """The list in consumption order (tail first)."""
    return list(reversed(rb.lrange(client, key)))


def snapshot_lists(client: redis.Redis, env: str) -> dict[str, list[bytes]]:
    found = {}
    for key in client.scan_iter(match=f"*:{{{env}:*}}:*", count=1000):
        name = key.decode()
        if layout.parse_queue_key(name) and client.type(key) == b"list":
            found[name] = rb.lrange(client, key)
    return found


# --- queue list ----------------------------------------------------------------------------


def test_list_matches_what_the_demo_wrote(
    redis_client: redis.Redis, demo_store: DemoSummary
) -> None:
    now = DEFAULT_NOW
    listing = queues.list_queues(redis_client, demo_store.env, now=now)
    got = {(q.subscriber, q.event_type): q for q in listing.queues}
    expected = {(q.subscriber, q.event_type): q for q in demo_store.queues}
    assert set(got) == set(expected)  # subscribers with empty lists included
    for pair, q in expected.items():
        status = got[pair]
        assert (status.published, status.processing, status.dead) == (
            q.published,
            q.processing,
            q.dead_letters,
        ), pair
        assert status.subscribed
        if q.processing:
            assert status.oldest_processing_age_s is not None
            if q.stuck:
                assert status.oldest_processing_age_s > 300
        else:
            assert status.oldest_processing_age_s is None
    assert sum(listing.retry_data.values()) == demo_store.retry_data
    assert listing.problems == []


def test_list_includes_lists_without_subscription_and_filters(
    redis_client: redis.Redis, env_name: str
) -> None:
    redis_client.sadd(layout.subscribers_key(env_name, "A"), "S1", "S2")
    redis_client.lpush(layout.queue_key("S1", env_name, "A", "published"), b"x", b"y")
    redis_client.lpush(layout.queue_key("Gone", env_name, "B", "dead"), message("1"))
    redis_client.hset(layout.retry_data_key(env_name, "B", "1"), "RetryCount", "2")
    # a subscriber named RetryData with an aggregate called DeadLetters: decided by key type
    redis_client.lpush(layout.queue_key("RetryData", env_name, "B", "dead"), b"z")
    redis_client.lpush(layout.queue_key("S1", "other-env", "A", "published"), b"x")
    listing = queues.list_queues(redis_client, env_name, now=NOW)
    rows = {(q.subscriber, q.event_type): q for q in listing.queues}
    assert set(rows) == {("S1", "A"), ("S2", "A"), ("Gone", "B"), ("RetryData", "B")}
    assert rows["S1", "A"].published == 2 and rows["S1", "A"].subscribed
    assert rows["S2", "A"].published == 0 and rows["S2", "A"].subscribed
    assert rows["Gone", "B"].dead == 1 and not rows["Gone", "B"].subscribed
    assert listing.retry_data == {"B": 1}
    only = queues.list_queues(redis_client, env_name, event_types=["A"], subscribers=["S2"])
    assert [(q.subscriber, q.event_type) for q in only.queues] == [("S2", "A")]
    assert only.retry_data == {}


def test_prometheus_textfile_is_written_atomically(
    tmp_path: Path, redis_client: redis.Redis, env_name: str
) -> None:
    redis_client.sadd(layout.subscribers_key(env_name, "T"), 'we"ird\\sub')
    redis_client.lpush(
        layout.queue_key('we"ird\\sub', env_name, "T", "processing"),
        message("a", age=timedelta(minutes=10)),
    )
    listing = queues.list_queues(redis_client, env_name, now=NOW)
    target = tmp_path / "esctl_queues.prom"
    target.write_text("old")
    metrics.write_textfile(target, queues.render_prometheus(listing))
    text = target.read_text()
    assert 'list="processing",subscriber="we\\"ird\\\\sub"} 1' in text
    assert "esctl_queue_oldest_processing_age_seconds{" in text
    assert "} 600\n" in text
    assert "# TYPE esctl_queue_messages gauge" in text
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["esctl_queues.prom"]  # no temp file left


# --- peek ----------------------------------------------------------------------------------


def test_peek_shows_consumption_order_and_retry_data(
    redis_client: redis.Redis, env_name: str
) -> None:
    q = ref(env_name)
    values = [message(str(i), age=timedelta(hours=3 - i)) for i in range(3)]
    fill(redis_client, q.key("dead"), values)
    redis_client.hset(
        q.retry_data_key("0"),
        mapping={"RetryCount": "4", "LastRetryTime": "t", "LastException": "Boom\r\n at X"},
    )
    result = queues.peek(redis_client, q, "dead", count=2, now=NOW)
    assert result.length == 3
    assert [m.aggregate_id for m in result.messages] == ["0", "1"]
    assert [m.position for m in result.messages] == [0, 1]
    assert result.messages[0].retry == queues.RetryInfo(4, "t", "Boom\r\n at X")
    assert result.messages[1].retry is None
    assert result.messages[0].text == values[0].decode()
    assert result.messages[0].age_s == pytest.approx(3 * 3600, abs=1)


def test_unknown_queue_is_not_found(redis_client: redis.Redis, env_name: str) -> None:
    with pytest.raises(errors.NotFound, match="no queue of subscriber 'Typo'"):
        queues.peek(redis_client, ref(env_name, subscriber="Typo"))
    with pytest.raises(errors.NotFound):
        queues.requeue(redis_client, ref(env_name, subscriber="Typo"), queues.RequeueOptions())


# --- requeue -------------------------------------------------------------------------------


def test_requeue_moves_to_the_tail_in_order_and_notifies(
    redis_client: redis.Redis, env_name: str
) -> None:
    q = ref(env_name)
    stuck = [message(f"s{i}") for i in range(5)]
    waiting = [message(f"w{i}") for i in range(3)]
    fill(redis_client, q.key("processing"), stuck)
    fill(redis_client, q.key("published"), waiting)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(q.channel)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    summary = queues.requeue(redis_client, q, queues.RequeueOptions(now=NOW))
    assert (summary.selected, summary.requeued, summary.gone, summary.failed) == (5, 5, 0, 0)
    assert summary.notified
    # requeued messages are taken next, oldest taken first, before those already waiting
    assert contents(redis_client, q.key("published")) == stuck + waiting
    assert redis_client.llen(q.key("processing")) == 0
    note = pubsub.get_message(timeout=1)
    assert note is not None and note["data"] == b"1"
    assert pubsub.get_message(timeout=0.1) is None  # one notification, not one per message
    pubsub.close()
    assert not redis_client.exists(q.lock_key)  # released


def test_requeue_dry_run_changes_nothing(redis_client: redis.Redis, env_name: str) -> None:
    q = ref(env_name)
    fill(redis_client, q.key("processing"), [message("a", age=timedelta(hours=1)), message("b")])
    before = snapshot_lists(redis_client, env_name)
    summary = queues.requeue(
        redis_client,
        q,
        queues.RequeueOptions(
            dry_run=True, selection=queues.Selection(older_than=timedelta(minutes=5)), now=NOW
        ),
    )
    assert summary.dry_run and summary.selected == 1 and summary.requeued == 0
    assert [m.aggregate_id for m in summary.messages] == ["a"]
    assert snapshot_lists(redis_client, env_name) == before


def test_requeue_selection_filters(redis_client: redis.Redis, env_name: str) -> None:
    q = ref(env_name)
    values = [
        message("old", age=timedelta(hours=2)),
        message("new", age=timedelta(minutes=1)),
        b"not json",
        message("old2", age=timedelta(hours=3)),
        message("old3", age=timedelta(hours=4)),
    ]
    fill(redis_client, q.key("processing"), values)
    summary = queues.requeue(
        redis_client,
        q,
        queues.RequeueOptions(
            selection=queues.Selection(older_than=timedelta(minutes=30), limit=2), now=NOW
        ),
    )
    assert summary.requeued == 2
    assert contents(redis_client, q.key("published")) == [values[0], values[3]]
    assert [p["kind"] for p in summary.problems] == ["no_timestamp"]
    summary = queues.requeue(
        redis_client,
        q,
        queues.RequeueOptions(
            selection=queues.Selection(aggregates=frozenset({"old3", "new"})), now=NOW
        ),
    )
    assert summary.requeued == 2
    assert contents(redis_client, q.key("processing")) == [b"not json"]


def test_requeue_dead_letters_by_retry_data_and_clears_it(
    redis_client: redis.Redis, env_name: str
) -> None:
    q = ref(env_name)
    values = [message("a"), message("b"), message("c"), message("a", 2)]
    fill(redis_client, q.key("dead"), values)
    redis_client.hset(
        q.retry_data_key("a"),
        mapping={
            "RetryCount": "5",
            "LastException": "System.TimeoutException: Timeout performing EVAL",
        },
    )
    redis_client.hset(
        q.retry_data_key("b"),
        mapping={"RetryCount": "1", "LastException": "Npgsql.PostgresException 23505"},
    )
    redis_client.hset(
        q.retry_data_key("c"), mapping={"RetryCount": "9", "LastException": "timeout"}
    )
    timeout = queues.Selection(exception_contains="TIMEOUT", min_retries=3)
    summary = queues.requeue(
        redis_client,
        q,
        queues.RequeueOptions(source="dead", selection=timeout, keep_retry_data=True),
    )
    assert summary.requeued == 3  # a (twice: two versions) and c
    assert redis_client.exists(q.retry_data_key("a"), q.retry_data_key("c")) == 2
    assert contents(redis_client, q.key("dead")) == [values[1]]
    summary = queues.requeue(redis_client, q, queues.RequeueOptions(source="dead"))
    assert summary.requeued == 1 and summary.retry_data_cleared == 1
    assert not redis_client.exists(q.retry_data_key("b"))
    with pytest.raises(errors.UsageError):
        queues.requeue(
            redis_client, q, queues.RequeueOptions(source="processing", selection=timeout)
        )


def test_requeue_is_count_aware_and_counts_messages_taken_meanwhile(
    redis_client: redis.Redis, env_name: str
) -> None:
    q = ref(env_name)
    dup = message("dup")
    values = [dup, message("x"), dup, message("y"), dup]
    fill(redis_client, q.key("processing"), values)

    def consumer_finishes(plan: queues.Plan) -> bool:
        # between the snapshot and the moves, a consumer finishes one "dup" and "x"
        rb.lrem(redis_client, q.key("processing"), 1, dup)
        rb.lrem(redis_client, q.key("processing"), 0, values[1])
        return True

    summary = queues.requeue(
        redis_client, q, queues.RequeueOptions(), queues.Hooks(confirm=consumer_finishes)
    )
    assert (summary.selected, summary.requeued, summary.gone) == (5, 3, 2)
    assert sorted(contents(redis_client, q.key("published"))) == sorted([dup, dup, values[3]])
    assert redis_client.llen(q.key("processing")) == 0


def test_grace_requeues_only_messages_seen_twice(redis_client: redis.Redis, env_name: str) -> None:
    q = ref(env_name)
    dup = message("dup")
    stuck = message("stuck", age=timedelta(seconds=1))
    done_soon = message("fast")
    fill(redis_client, q.key("processing"), [stuck, dup, done_soon, dup])
    slept: list[float] = []

    def meanwhile(seconds: float) -> None:
        slept.append(seconds)
        rb.lrem(redis_client, q.key("processing"), 1, done_soon)  # finished by its consumer
        rb.lrem(redis_client, q.key("processing"), 1, dup)  # one of the two equal ones finished
        redis_client.lpush(q.key("processing"), message("arrived"))  # taken just now

    summary = queues.requeue(
        redis_client,
        q,
        queues.RequeueOptions(selection=queues.Selection(grace=timedelta(seconds=30))),
        queues.Hooks(sleep=meanwhile),
    )
    assert slept == [30.0]
    assert summary.requeued == 2  # stuck, and the one dup still there
    assert contents(redis_client, q.key("published")) == [stuck, dup]
    assert contents(redis_client, q.key("processing")) == [message("arrived")]


def test_requeue_refusal_and_failure(redis_client: redis.Redis, env_name: str) -> None:
    q = ref(env_name)
    fill(redis_client, q.key("processing"), [message("a")])
    with pytest.raises(errors.Refused):
        queues.requeue(
            redis_client, q, queues.RequeueOptions(), queues.Hooks(confirm=lambda plan: False)
        )
    assert redis_client.llen(q.key("processing")) == 1
    redis_client.set(q.key("published"), "not a list")
    summary = queues.requeue(redis_client, q, queues.RequeueOptions())
    assert summary.failed == 1 and summary.requeued == 0
    assert summary.problems[0]["kind"] == "move_failed"
    assert "WRONGTYPE" in summary.problems[0]["detail"]
    assert redis_client.llen(q.key("processing")) == 1  # checked before anything changed


def test_a_large_requeue_keeps_order_across_batches(
    redis_client: redis.Redis, env_name: str
) -> None:
    q = ref(env_name)
    values = [message(f"m{i}") for i in range(2500)]
    fill(redis_client, q.key("processing"), values)
    summary = queues.requeue(redis_client, q, queues.RequeueOptions())
    assert summary.requeued == 2500
    assert contents(redis_client, q.key("published")) == values
    # sparse selections in a long list, near either end and in the middle
    redis_client.delete(q.key("published"))
    fill(redis_client, q.key("dead"), values)
    picked = {"m2", "m1500", "m2497", "m2499"}
    summary = queues.requeue(
        redis_client,
        q,
        queues.RequeueOptions(
            source="dead", selection=queues.Selection(aggregates=frozenset(picked))
        ),
    )
    assert summary.requeued == 4
    assert contents(redis_client, q.key("published")) == [
        values[2],
        values[1500],
        values[2497],
        values[2499],
    ]
    assert contents(redis_client, q.key("dead")) == [
        v for i, v in enumerate(values) if f"m{i}" not in picked
    ]


# --- the lock ------------------------------------------------------------------------------


def test_lock_held_by_another_run(redis_client: redis.Redis, env_name: str) -> None:
    q = ref(env_name)
    fill(redis_client, q.key("processing"), [message("a")])
    redis_client.set(q.lock_key, "otherhost:42:abc", px=60_000)
    with pytest.raises(errors.LockHeld, match="otherhost:42"):
        queues.requeue(redis_client, q, queues.RequeueOptions())
    with pytest.raises(errors.LockHeld):
        queues.drain(redis_client, q, queues.DrainOptions(which="processing", discard=True))
    assert queues.requeue(redis_client, q, queues.RequeueOptions(dry_run=True)).selected == 1
    assert redis_client.get(q.lock_key) == b"otherhost:42:abc"  # untouched
    assert redis_client.llen(q.key("processing")) == 1


def test_lock_is_renewed_and_notices_when_lost(redis_client: redis.Redis, env_name: str) -> None:
    q = ref(env_name)
    # A TTL that a stalled renewal thread on a loaded machine still meets (renewed every 1 s).
    with queues.queue_lock(redis_client, [q], ttl_ms=3000) as lock:
        lowest = [redis_client.pttl(q.lock_key)]

        def renewed() -> bool:  # the TTL went back up: PEXPIRE ran again
            ttl = redis_client.pttl(q.lock_key)
            lowest[0] = min(lowest[0], ttl)
            return ttl > lowest[0] + 100

        wait_for(renewed, "the lock was renewed")
        assert redis_client.get(q.lock_key) == lock.token.encode()
        lock.check()
        redis_client.set(q.lock_key, "someone else")

        def noticed() -> bool:
            try:
                lock.check()
            except errors.ServerError as exc:
                assert "lost the queue lock" in str(exc)
                return True
            return False

        wait_for(noticed, "the renewal noticed the lock was taken")
    assert redis_client.get(q.lock_key) == b"someone else"  # never deletes others' locks


# --- a lock lost mid-run -------------------------------------------------------------------


def subscribed(client: redis.Redis, channel: str) -> Any:
    """A subscription to ``channel``, confirmed (no notification after this is missed)."""
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    wait_for(
        lambda: (pubsub.get_message(timeout=0.05) or {}).get("type") == "subscribe", "subscribed"
    )
    return pubsub


def notifications(pubsub: Any) -> int:
    """The notifications received so far (waiting a moment for the last)."""
    count = 0
    while (got := pubsub.get_message(timeout=0.3)) is not None:
        count += got["type"] == "message"
    return count


def test_a_requeue_that_loses_its_lock_mid_run_counts_the_batches_in_flight_and_stops(
    redis_client: redis.Redis, env_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run takes the queue lock while batches 1-3 are sent (3 still unanswered, Redis
    has run it) and batch 4 is being made. The requeue stops: batch 4's script finds the lock
    gone and does not run, no batch after it is made, the answers of every batch sent are read
    and counted, the subscribers are notified of what moved, and the summary names the lost
    lock (exit 1). Nothing is lost or duplicated, and a rerun once the other run is gone moves
    the rest."""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 3)
    locks = lostlock.ShortLocks(monkeypatch)
    q = ref(env_name)
    values = [message(str(i)) for i in range(30)]  # ten batches of 3
    fill(redis_client, q.key("processing"), values)
    real = requeue_module._move_call
    made: list[int] = []

    def take_the_lock_at_batch_4(*args: Any) -> Any:
        made.append(len(args[4]))
        if len(made) == 4:  # batches 1-3 were sent: once Redis ran them, the lock goes
            wait_for(lambda: redis_client.llen(q.key("published")) == 9, "batches 1-3 ran")
            locks.take_away(redis_client)
        return real(*args)

    monkeypatch.setattr(requeue_module, "_move_call", take_the_lock_at_batch_4)
    pubsub = subscribed(redis_client, q.channel)
    summary = queues.requeue(redis_client, q, queues.RequeueOptions())
    assert made == [3, 3, 3, 3], "no batch is made once the loss is known"
    published, processing = (contents(redis_client, q.key(w)) for w in ("published", "processing"))
    assert (
        (summary.requeued, summary.gone, summary.failed)
        == (9, 0, 21)
        == (len(published), 0, len(processing))
    )
    assert sorted(published + processing) == sorted(values)  # none lost, none twice
    assert summary.notified and notifications(pubsub) == 1
    [problem] = summary.problems
    assert problem["kind"] == "move_failed" and problem["key"] == q.key("processing")
    detail = problem["detail"]
    # the renewal noticed before batch 4's answer came: that is the reason; batch 4 was sent
    # already, and its script found the lock gone (it did not run: 9 requeued)
    assert detail.startswith(
        f"lost the queue lock: {q.lock_key} was taken or deleted by someone else; nothing more "
        "was sent, and every batch already sent was answered and is counted"
    )
    assert "(9 requeued, 0 gone); 21 selected messages not requeued" in detail
    assert "rerun to requeue the rest" in detail
    assert redis_client.get(q.lock_key) == lostlock.OTHER_RUN  # never deletes others' locks

    locks.give_back(redis_client)
    monkeypatch.setattr(requeue_module, "_move_call", real)
    again = queues.requeue(redis_client, q, queues.RequeueOptions())
    assert (again.requeued, again.failed, again.problems) == (21, 0, [])
    assert sorted(contents(redis_client, q.key("published"))) == sorted(values)
    assert not redis_client.exists(q.key("processing"))
    pubsub.close()


def test_a_requeue_whose_script_finds_the_lock_gone_first_stops_on_that(
    redis_client: redis.Redis, env_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock is taken between two batches and a batch's script finds it before the renewal
    does (it runs every 10 s): that batch does not run, the run stops on it with the same
    report (the lost lock named, what moved counted), and the batches before it are counted."""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 3)
    q = ref(env_name)
    values = [message(str(i)) for i in range(30)]
    fill(redis_client, q.key("dead"), values)
    real = requeue_module.batches

    def take_the_lock_after_batch_2(candidates: Any) -> Any:
        for n, batch in enumerate(real(candidates), 1):
            if n == 3:
                wait_for(lambda: redis_client.llen(q.key("published")) == 6, "batches 1-2 ran")
                redis_client.set(q.lock_key, lostlock.OTHER_RUN)
            yield batch

    monkeypatch.setattr(requeue_module, "batches", take_the_lock_after_batch_2)
    summary = queues.requeue(redis_client, q, queues.RequeueOptions(source="dead"))
    dead = contents(redis_client, q.key("dead"))
    published = contents(redis_client, q.key("published"))
    assert (summary.requeued, summary.failed) == (6, 24) == (len(published), len(dead))
    assert sorted(published + dead) == sorted(values)
    [problem] = summary.problems
    assert problem["detail"].startswith(
        f"lost the queue lock: {q.lock_key} is no longer held by this run (a batch of 3 moves "
        "found it so, and did not run); nothing more was sent"
    )
    assert "(6 requeued, 0 gone); 24 selected messages not requeued" in problem["detail"]
    assert summary.notified


def test_a_drain_that_loses_its_lock_mid_run_reports_what_it_drained_and_a_restore_undoes_it(
    tmp_path: Path,
    redis_test_url: str,
    redis_client: redis.Redis,
    env_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lock is taken after batch 2's removal: the drain sends no batch after it, its
    summary counts the two batches (exit 1, the lost lock named), the backup file records
    them and is not marked complete; restoring it puts them back, and a rerun drains the
    rest."""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 3)
    locks = lostlock.ShortLocks(monkeypatch)
    q = ref(env_name)
    values = [message(str(i)) for i in range(10)]
    fill(redis_client, q.key("dead"), values)
    path, rest = tmp_path / "d.jsonl.zst", tmp_path / "rest.jsonl.zst"
    with lostlock.ScriptHook.from_url(redis_test_url) as client:
        client.sha = script_sha(scripts.REMOVE_SCRIPT).decode()
        client.hook = lambda n: locks.take_away(redis_client) if n == 2 else None
        summary = queues.drain(client, q, queues.DrainOptions(to_file=path))
        assert client.calls == 2, "nothing is sent once the loss is known"
    assert len(contents(redis_client, q.key("dead"))) == 4
    assert (summary.drained, summary.gone, summary.failed) == (6, 0, 4)
    [problem] = summary.problems
    assert problem["kind"] == "remove_failed"
    detail = problem["detail"]
    assert detail.startswith(f"lost the queue lock: {q.lock_key} was taken or deleted")
    assert "6 drained and 0 gone before that, 4 selected messages not removed" in detail
    assert "to drain the rest" in detail
    survey, records = read_as_restore(path)
    assert not survey.complete
    # records count in consumption order; batches go from the head: the last 6 records
    marked = outcomes(survey, records)
    assert sorted(n for n, o in marked.items() if o == "removed") == list(range(4, 10))

    locks.give_back(redis_client)
    restored = queues.restore(redis_client, path, queues.RestoreOptions())
    assert (restored.restored, restored.kept, restored.failed) == (6, 4, 0)  # 4 never removed
    assert contents(redis_client, q.key("dead")) == values
    again = queues.drain(redis_client, q, queues.DrainOptions(to_file=rest))
    assert (again.drained, again.failed) == (10, 0)


def test_a_restore_that_loses_its_lock_mid_run_reports_what_it_restored_and_a_rerun_finishes(
    tmp_path: Path,
    redis_test_url: str,
    redis_client: redis.Redis,
    env_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lock is taken after batch 2 of a restore: no batch after it is sent, the summary
    counts the two (exit 1, the lost lock named), the subscribers are notified of them, and
    rerunning the same restore puts the rest back, each message once, in place."""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 3)
    q = ref(env_name)
    values = [message(str(i)) for i in range(10)]
    fill(redis_client, q.key("dead"), values)
    path = tmp_path / "d.jsonl.zst"
    queues.drain(redis_client, q, queues.DrainOptions(to_file=path))
    locks = lostlock.ShortLocks(monkeypatch)
    pubsub = subscribed(redis_client, q.channel)
    with lostlock.ScriptHook.from_url(redis_test_url) as client:
        client.sha = script_sha(scripts.RESTORE_SCRIPT).decode()
        client.hook = lambda n: locks.take_away(redis_client) if n == 2 else None
        summary = queues.restore(client, path, queues.RestoreOptions())
        assert client.calls == 2, "nothing is sent once the loss is known"
    assert (summary.restored, summary.failed) == (6, 4)
    assert contents(redis_client, q.key("dead")) == values[:6]  # the 6 nearest the tail
    assert summary.notified and notifications(pubsub) == 1
    [problem] = summary.problems
    assert problem["kind"] == "restore_failed"
    detail = problem["detail"]
    assert detail.startswith(f"lost the queue lock: {q.lock_key} was taken or deleted")
    assert "6 messages restored to this list before that, 4 not restored" in detail
    assert "rerun the same restore to continue" in detail

    locks.give_back(redis_client)
    again = queues.restore(redis_client, path, queues.RestoreOptions())
    assert (again.already_restored, again.restored, again.failed) == (6, 4, 0)
    assert contents(redis_client, q.key("dead")) == values
    pubsub.close()


# --- drain and restore ---------------------------------------------------------------------


def test_drain_then_restore_is_byte_identical_for_every_demo_list(
    tmp_path: Path, redis_client: redis.Redis, demo_store: DemoSummary
) -> None:
    env = demo_store.env
    before = snapshot_lists(redis_client, env)
    assert len(before) >= 10
    files = []
    for number, key in enumerate(sorted(before)):
        subscriber, _, event_type, which = layout.parse_queue_key(key)  # type: ignore[misc]
        path = tmp_path / f"{number}.jsonl.zst"
        summary = queues.drain(
            redis_client,
            queues.QueueRef(subscriber, env, event_type),
            queues.DrainOptions(which=which, to_file=path),
        )
        assert summary.drained == len(before[key]) and summary.gone == 0
        assert not redis_client.exists(key)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        files.append(path)
    for path in reversed(files):
        assert queues.restore(redis_client, path, queues.RestoreOptions()).failed == 0
    assert snapshot_lists(redis_client, env) == before


def test_backup_round_trips_any_bytes_and_keeps_arrivals(
    tmp_path: Path, redis_client: redis.Redis, env_name: str
) -> None:
    q = ref(env_name)
    odd = [
        b"\xff\xfe not utf-8 \x00",
        "Zoë 日本語 🎉".encode(),
        b"",
        message("a"),
        b"\xff\xfe not utf-8 \x00",
    ]
    fill(redis_client, q.key("published"), odd)
    path = tmp_path / "p.jsonl.zst"
    queues.drain(redis_client, q, queues.DrainOptions(which="published", to_file=path))
    _, records = read_as_restore(path)
    assert [r["position"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["encoding"] == "base64" and records[1]["encoding"] == "utf-8"
    redis_client.lpush(q.key("published"), b"new1", b"new2")  # published while drained
    summary = queues.restore(redis_client, path, queues.RestoreOptions())
    assert summary.restored == 5 and summary.notified
    assert contents(redis_client, q.key("published")) == [*odd, b"new1", b"new2"]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(st.sampled_from([b"a", b"b", b"c", b"d", b"e", b"\x80"]), max_size=30),
    drained_ids=st.sets(st.sampled_from([b"a", b"b", b"c", b"d", b"e", b"\x80"])),
    arrivals=st.integers(0, 3),
    batch=st.sampled_from([1, 2, 1000]),
)
def test_partial_drain_then_restore_puts_every_message_back_in_place(
    tmp_path_factory: pytest.TempPathFactory,
    redis_client: redis.Redis,
    env_name: str,
    values: list[bytes],
    drained_ids: set[bytes],
    arrivals: int,
    batch: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scripts, "MOVE_BATCH", batch)  # read there by drain and restore
    q = ref(env_name)
    redis_client.sadd(layout.subscribers_key(env_name, q.event_type), q.subscriber)
    messages = [message(v.decode("latin-1"), 1 + i % 2) for i, v in enumerate(values)]  # repeats
    fill(redis_client, q.key("dead"), messages)
    before = contents(redis_client, q.key("dead"))
    ids = frozenset(v.decode("latin-1") for v in drained_ids)
    path = tmp_path_factory.mktemp("b") / "d.jsonl.zst"
    summary = queues.drain(
        redis_client,
        q,
        queues.DrainOptions(to_file=path, selection=queues.Selection(aggregates=ids)),
    )
    expected_left = [
        m
        for m, v in zip(messages, values, strict=True)
        if ids and v.decode("latin-1") not in ids  # no ids: everything
    ]
    assert contents(redis_client, q.key("dead")) == expected_left
    assert summary.backup_file == str(path) and path.exists()  # selected or not
    new = [f"new{i}".encode() for i in range(arrivals)]
    if new:
        redis_client.lpush(q.key("dead"), *new)
    queues.restore(redis_client, path, queues.RestoreOptions())
    assert contents(redis_client, q.key("dead")) == before + new


def test_drain_skips_messages_taken_meanwhile_and_restore_never_duplicates(
    tmp_path: Path, redis_client: redis.Redis, env_name: str
) -> None:
    q = ref(env_name)
    values = [message(str(i)) for i in range(6)]
    fill(redis_client, q.key("published"), values)

    def consumer_takes_two(plan: queues.Plan) -> bool:
        assert plan.action == "drain" and plan.count == 6
        for _ in range(2):
            redis_client.rpoplpush(q.key("published"), q.key("processing"))
        return True

    path = tmp_path / "d.jsonl.zst"
    summary = queues.drain(
        redis_client,
        q,
        queues.DrainOptions(which="published", to_file=path),
        queues.Hooks(confirm=consumer_takes_two),
    )
    assert (summary.selected, summary.drained, summary.gone) == (6, 4, 2)
    survey, records = read_as_restore(path)
    assert survey.complete and list(outcomes(survey, records).values()).count("gone") == 2
    first = queues.restore(redis_client, path, queues.RestoreOptions())
    assert (first.restored, first.gone) == (4, 2)
    assert contents(redis_client, q.key("published")) == values[2:]
    again = queues.restore(redis_client, path, queues.RestoreOptions())
    assert (again.restored, again.already_restored) == (0, 4)
    assert contents(redis_client, q.key("published")) == values[2:]


def test_restore_to_another_queue_and_env_check(
    tmp_path: Path, redis_client: redis.Redis, env_name: str
) -> None:
    q = ref(env_name)
    other = ref(env_name, subscriber="Other")
    values = [message(str(i)) for i in range(3)]
    fill(redis_client, q.key("dead"), values)
    fill(redis_client, other.key("published"), [b"waiting"])
    path = tmp_path / "d.jsonl.zst"
    queues.drain(redis_client, q, queues.DrainOptions(to_file=path))
    with pytest.raises(errors.UsageError, match="drained from env"):
        queues.restore(redis_client, path, queues.RestoreOptions(expect_env="elsewhere"))
    dry = queues.restore(
        redis_client,
        path,
        queues.RestoreOptions(target=other, target_list="published", dry_run=True),
    )
    assert dry.restored == 0 and dry.restorable == 3
    summary = queues.restore(
        redis_client, path, queues.RestoreOptions(target=other, target_list="published")
    )
    assert summary.restored == 3
    assert contents(redis_client, other.key("published")) == [*values, b"waiting"]
    assert not redis_client.exists(q.key("dead"))


def test_a_drain_that_selects_nothing_still_leaves_the_backup_it_was_asked_for(
    tmp_path: Path, redis_client: redis.Redis, env_name: str
) -> None:
    q = ref(env_name)
    redis_client.sadd(layout.subscribers_key(env_name, q.event_type), q.subscriber)
    path = tmp_path / "empty.jsonl.zst"
    summary = queues.drain(redis_client, q, queues.DrainOptions(to_file=path))
    assert (summary.selected, summary.drained, summary.backup_file) == (0, 0, str(path))
    survey, records = read_as_restore(path)
    assert survey.complete and records == []
    restored = queues.restore(redis_client, path, queues.RestoreOptions())
    assert restored.restored == 0
    assert not redis_client.exists(q.key("dead"))


def test_drain_refusals(tmp_path: Path, redis_client: redis.Redis, env_name: str) -> None:
    q = ref(env_name)
    fill(redis_client, q.key("dead"), [message("a")])
    with pytest.raises(errors.Refused, match="backup file"):
        queues.drain(redis_client, q, queues.DrainOptions())
    existing = tmp_path / "exists.jsonl.zst"
    existing.write_bytes(b"keep me")
    with pytest.raises(errors.Refused, match="never overwrites"):
        queues.drain(redis_client, q, queues.DrainOptions(to_file=existing))
    assert existing.read_bytes() == b"keep me"
    assert queues.drain(redis_client, q, queues.DrainOptions(dry_run=True)).selected == 1
    summary = queues.drain(redis_client, q, queues.DrainOptions(discard=True))
    assert summary.drained == 1 and summary.backup_file is None
    assert not redis_client.exists(q.key("dead"))


def test_restore_of_an_interrupted_drain(
    tmp_path: Path, redis_client: redis.Redis, env_name: str
) -> None:
    q = ref(env_name)
    values = [message(str(i)) for i in range(4)]
    fill(redis_client, q.key("dead"), values)
    path = tmp_path / "d.jsonl.zst"
    queues.drain(redis_client, q, queues.DrainOptions(to_file=path))
    # keep only the first frame (the backup), as if the process died before the first outcome,
    # and a torn half of the next one
    data = path.read_bytes()
    obj = zstandard.ZstdDecompressor().decompressobj()
    obj.decompress(data)
    first = data[: len(data) - len(obj.unused_data)]
    path.write_bytes(first + obj.unused_data[:5])
    survey, records = read_as_restore(path)
    assert not survey.complete and survey.truncated and outcomes(survey, records) == {}
    assert len(records) == 4
    # and as if Redis no longer had the drain's outcome record (expired, or another server)
    assert redis_client.delete(q.drain_outcome_key("dead", survey.backup_id)) == 1
    summary = queues.restore(redis_client, path, queues.RestoreOptions())
    assert summary.restored == 0 and summary.unknown == 4 and summary.kept == 0
    assert summary.problems[0]["kind"] == "outcome_unknown"
    summary = queues.restore(redis_client, path, queues.RestoreOptions(include_unknown=True))
    assert summary.restored == 4
    assert contents(redis_client, q.key("dead")) == values
    path.write_bytes(first[:20])
    with pytest.raises(errors.UsageError, match="before removing anything"):
        queues.restore(redis_client, path, queues.RestoreOptions())
    path.write_bytes(b"plain text")
    with pytest.raises(errors.UsageError, match="not an esctl queue backup"):
        queues.restore(redis_client, path, queues.RestoreOptions())
    # a whole first frame of another file's lines, then a torn one: not "its first frame"
    other = zstandard.ZstdCompressor().compress(b'{"list_key": "x"}\n')
    path.write_bytes(other + other[:5])
    with pytest.raises(errors.UsageError) as raised:
        queues.restore(redis_client, path, queues.RestoreOptions())
    assert str(raised.value) == f"{path} is not a complete esctl queue backup"


class _Killed(BaseException):
    """Stands for a kill -9 at one point of a drain (nothing after it runs but cleanup)."""


def test_drain_killed_before_recording_a_batch_then_rerun_restores_every_message_once(
    tmp_path: Path, redis_client: redis.Redis, env_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window a kill -9 of a drain can hit: batch 2's removal ran, its outcome is not in the
    file, batches 3.. never ran. A rerun drains the rest to a second file. Restoring both files
    (with or without --include-unknown) must give back every message exactly once, in place:
    batch 2 settled as removed and batches 3.. as never removed, from Redis."""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 3)
    q = ref(env_name)
    values = [message(str(i % 8)) for i in range(10)]  # 8 distinct, two of them twice
    fill(redis_client, q.key("dead"), values)
    first, second = tmp_path / "1.jsonl.zst", tmp_path / "2.jsonl.zst"
    real_record = drain_module.record_outcome
    calls = []

    def record_then_die(writer: Any, removed: list[int], gone: list[int]) -> None:
        calls.append(removed)
        if len(calls) == 2:
            raise _Killed
        real_record(writer, removed, gone)

    monkeypatch.setattr(drain_module, "record_outcome", record_then_die)
    with pytest.raises(_Killed):
        queues.drain(redis_client, q, queues.DrainOptions(to_file=first))
    monkeypatch.setattr(drain_module, "record_outcome", real_record)
    assert len(contents(redis_client, q.key("dead"))) == 4  # two batches of 3 went
    survey, records = read_as_restore(first)
    assert len(outcomes(survey, records)) == 3 and not survey.complete  # batch 2: not in file
    assert queues.drain(redis_client, q, queues.DrainOptions(to_file=second)).drained == 4
    assert not redis_client.exists(q.key("dead"))

    summary = queues.restore(redis_client, first, queues.RestoreOptions(include_unknown=True))
    assert (summary.restored, summary.unknown, summary.kept) == (6, 0, 4)
    assert summary.problems == []
    assert queues.restore(redis_client, second, queues.RestoreOptions()).restored == 4
    assert contents(redis_client, q.key("dead")) == values


def before_the_restore_locks(monkeypatch: pytest.MonkeyPatch, step: Callable[[], Any]) -> None:
    """Run ``step`` once, just before the next ``queue restore`` takes its queue locks: another
    run finishing between a restore's start and its lock, staged at that point exactly."""
    real = restore_module.queue_lock
    steps = [step]

    def lock_after_step(client: Any, refs: Any, **kwargs: Any) -> Any:
        if steps:
            steps.pop()()
        return real(client, refs, **kwargs)

    monkeypatch.setattr(restore_module, "queue_lock", lock_after_step)


def test_a_restore_reads_the_outcomes_a_drain_finishing_meanwhile_recorded(
    tmp_path: Path, redis_client: redis.Redis, env_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore started while the drain of its file runs its last batches: batch 4's removal
    ran (its outcome in Redis only), batch 5 is still to come. The drain finishes (batch 4's
    and 5's outcomes in the file, batch 5's in Redis, its lock given back) before the restore
    takes its locks. The restore reads the file and the drain's outcome record holding them,
    so it puts back all 100 messages, none taken as never removed. (Read before the locks,
    batch 5's 20 messages were "kept": left out of the list for good.)"""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 20)
    q = ref(env_name)
    values = [message(f"m{i}") for i in range(100)]
    fill(redis_client, q.key("dead"), values)
    path = tmp_path / "d.jsonl.zst"
    real_record = drain_module.record_outcome
    midway: list[tuple[bytes, bytes]] = []

    def record(writer: Any, removed: list[int], gone: list[int]) -> None:
        if len(midway) == 0 and redis_client.llen(q.key("dead")) == 20:  # batch 4 ran
            outcome = q.drain_outcome_key("dead", read_as_restore(path)[0].backup_id)
            midway.append((path.read_bytes(), rb.as_bytes(redis_client.get(outcome))))
        real_record(writer, removed, gone)

    monkeypatch.setattr(drain_module, "record_outcome", record)
    assert queues.drain(redis_client, q, queues.DrainOptions(to_file=path)).drained == 100
    monkeypatch.setattr(drain_module, "record_outcome", real_record)
    outcome = q.drain_outcome_key("dead", read_as_restore(path)[0].backup_id)
    final = (path.read_bytes(), rb.as_bytes(redis_client.get(outcome)))
    [(file_then, outcome_then)] = midway
    assert final[0].startswith(file_then) and final[1] != outcome_then

    def the_drain_finishes() -> None:
        path.write_bytes(final[0])
        redis_client.set(outcome, final[1], keepttl=True)

    path.write_bytes(file_then)  # as the restore finds them when it starts
    redis_client.set(outcome, outcome_then, keepttl=True)
    before_the_restore_locks(monkeypatch, the_drain_finishes)
    summary = queues.restore(redis_client, path, queues.RestoreOptions())
    assert (summary.restored, summary.kept, summary.unknown, summary.problems) == (100, 0, 0, [])
    assert contents(redis_client, q.key("dead")) == values


def test_a_restore_reads_the_progress_another_restore_of_the_file_made_meanwhile(
    tmp_path: Path, redis_client: redis.Redis, env_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two restores of one file: the first was stopped after 60 of 100 messages; the second
    starts, and the first, rerun, restores the other 40 and gives its lock back before the
    second takes the locks. The second reads the progress counter holding them: everything is
    restored already, nothing to do, exit 0. (Read before the locks, it believed 60 were, and
    its first batch was refused by the restore script's check: 40 "failed", exit 1.)"""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 20)
    q = ref(env_name)
    values = [message(f"m{i}") for i in range(100)]
    fill(redis_client, q.key("dead"), values)
    path = tmp_path / "d.jsonl.zst"
    queues.drain(redis_client, q, queues.DrainOptions(to_file=path))
    with pytest.raises(errors.Interrupted) as stopped:  # Ctrl-C at the report of 60
        queues.restore(
            redis_client, path, queues.RestoreOptions(), queues.Hooks(on_progress=Reports(at=4))
        )
    assert stopped.value.done == {"restored": 60}

    def the_other_restore_finishes() -> None:
        assert queues.restore(redis_client, path, queues.RestoreOptions()).restored == 40

    before_the_restore_locks(monkeypatch, the_other_restore_finishes)
    summary = queues.restore(redis_client, path, queues.RestoreOptions())
    assert (summary.restored, summary.already_restored, summary.failed) == (0, 100, 0)
    assert summary.problems == []
    assert contents(redis_client, q.key("dead")) == values


def test_a_restore_elsewhere_waits_for_no_drain_of_its_source_queue(
    tmp_path: Path, redis_client: redis.Redis, env_name: str
) -> None:
    """A restore into another queue (--to) also takes the lock of the queue the file was
    drained from, where a drain still running records its outcomes: while another run holds
    it, the restore exits 75 (LockHeld) and restores nothing."""
    q = ref(env_name)
    other = ref(env_name, subscriber="Other")
    values = [message(str(i)) for i in range(3)]
    fill(redis_client, q.key("dead"), values)
    path = tmp_path / "d.jsonl.zst"
    queues.drain(redis_client, q, queues.DrainOptions(to_file=path))
    fill(redis_client, other.key("published"), [b"waiting"])
    redis_client.set(q.lock_key, "another-run", px=30_000)
    with pytest.raises(errors.LockHeld, match=re.escape(q.lock_key)):
        queues.restore(redis_client, path, queues.RestoreOptions(target=other))
    assert contents(redis_client, other.key("published")) == [b"waiting"]
    redis_client.delete(q.lock_key)
    summary = queues.restore(redis_client, path, queues.RestoreOptions(target=other))
    assert summary.restored == 3


def test_a_drain_that_loses_its_connection_says_the_batch_may_have_run(
    tmp_path: Path,
    redis_client: redis.Redis,
    redis_test_url: str,
    env_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection drops after Redis ran batch 2's removal and before its answer came back:
    drain cannot know whether it ran. The summary counts batch 1 as drained and says that
    batch 2 may have run and that the batch after it was not sent; the messages are in the
    list or in the backup, and a restore (reading batch 2's outcome from Redis) puts every one
    back."""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 2)
    q = ref(env_name)
    values = [message(str(i)) for i in range(5)]  # batches from the head: 2, 2, then 1
    fill(redis_client, q.key("dead"), values)
    redis_client.script_load(scripts.REMOVE_SCRIPT)  # so every batch is one EVALSHA
    path = tmp_path / "d.jsonl.zst"
    relay = FaultRelay(redis_test_url, script_sha(scripts.REMOVE_SCRIPT), 2, cut_reply=True)
    with relay, redis.Redis.from_url(relay.url) as client:
        summary = queues.drain(client, q, queues.DrainOptions(to_file=path))
    assert relay.fired.is_set()
    assert contents(redis_client, q.key("dead")) == values[:1]  # batch 2 ran
    assert (summary.drained, summary.gone, summary.failed) == (2, 0, 3)
    [problem] = summary.problems
    assert problem["kind"] == "remove_failed"
    detail = problem["detail"]
    assert "lost the connection during a batch of 2 removals" in detail
    assert "it may have run" in detail and "queue restore" in detail
    assert "the 1 selected message after it was not removed" in detail
    restored = queues.restore(redis_client, path, queues.RestoreOptions())
    assert (restored.restored, restored.kept, restored.unknown) == (4, 1, 0)
    assert contents(redis_client, q.key("dead")) == values


@pytest.mark.parametrize("redis_back", [True, False], ids=["redis back", "redis gone"])
def test_a_restore_that_loses_its_connection_says_whether_the_batch_ran(
    tmp_path: Path,
    redis_client: redis.Redis,
    redis_test_url: str,
    env_name: str,
    monkeypatch: pytest.MonkeyPatch,
    redis_back: bool,
) -> None:
    """The connection drops after Redis ran batch 2 of a restore and before its answer came
    back. Redis's progress counter, read on a new connection, says the batch ran: the summary
    counts it, and says the batch after it was not sent. When no new connection can be made,
    the summary counts batch 1 and says batch 2 may have run. Either way, rerunning the same
    restore continues where the counter says, and puts every message back once."""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 2)
    q = ref(env_name)
    values = [message(str(i)) for i in range(5)]  # batches from the tail: 2, 2, then 1
    fill(redis_client, q.key("dead"), values)
    path = tmp_path / "d.jsonl.zst"
    queues.drain(redis_client, q, queues.DrainOptions(to_file=path))
    redis_client.script_load(scripts.RESTORE_SCRIPT)  # so every batch is one EVALSHA
    relay = FaultRelay(
        redis_test_url,
        script_sha(scripts.RESTORE_SCRIPT),
        2,
        cut_reply=True,
        then_refuse=not redis_back,
    )
    with relay, redis.Redis.from_url(relay.url) as client:
        summary = queues.restore(client, path, queues.RestoreOptions())
    assert relay.fired.is_set()
    assert contents(redis_client, q.key("dead")) == values[:4]  # batch 2 ran
    problem, *others = summary.problems
    assert problem["kind"] == "restore_failed"
    # the subscribers' notification cannot be sent either while Redis is unreachable
    assert [p["kind"] for p in others] == ([] if redis_back else ["notify_failed"])
    detail = problem["detail"]
    assert "lost the connection during a batch of 2" in detail
    if redis_back:
        assert (summary.restored, summary.failed) == (4, 1)
        assert "it ran (Redis's progress counter, read again, says so" in detail
        assert "the 1 message after it was not sent" in detail
    else:
        assert (summary.restored, summary.failed) == (2, 3)
        assert "it may have run" in detail and "could not be read again" in detail
        assert "the 1 message after it was not restored" in detail
        # the run could not release its lock either: it expires 30 s after its last renewal
        redis_client.delete(q.lock_key)
    again = queues.restore(redis_client, path, queues.RestoreOptions())
    assert (again.already_restored, again.restored, again.failed) == (4, 1, 0)
    assert contents(redis_client, q.key("dead")) == values


def test_backup_file_format(tmp_path: Path, redis_client: redis.Redis, env_name: str) -> None:
    q = ref(env_name)
    fill(redis_client, q.key("processing"), [message("a"), message("b")])
    path = tmp_path / "d.jsonl.zst"
    summary = queues.drain(redis_client, q, queues.DrainOptions(which="processing", to_file=path))
    data = b""
    rest = path.read_bytes()
    while rest:
        obj = zstandard.ZstdDecompressor().decompressobj()
        data += obj.decompress(rest)
        rest = obj.unused_data
    lines = [orjson.loads(line) for line in data.splitlines()]
    header, *records, outcome, complete = lines
    assert header["format"] == "esctl-queue-backup" and header["backup_id"] == summary.backup_id
    assert header["key"] == q.key("processing") and header["length"] == 2
    assert [(r["key"], r["list"], r["position"]) for r in records] == [
        (q.key("processing"), "processing", 0),
        (q.key("processing"), "processing", 1),
    ]
    assert orjson.loads(records[0]["value"])["Id"] == "a"
    assert sorted(outcome["outcome"]["removed"]) == [0, 1]
    assert complete["complete"]["drained"] == 2
    assert os.stat(path).st_mode & 0o077 == 0


def test_ctrl_c_waits_until_a_batch_and_its_outcome_are_recorded() -> None:
    held = HeldInterrupts()
    reached = False
    with held.holding():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        reached = True
    assert reached and held.caught
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        held.check()


def test_a_second_ctrl_c_stops_a_wait_at_once_and_is_only_noted_outside_one() -> None:
    """A second Ctrl-C while a holding block waits on the server raises at once (``broke``);
    one that comes while the block counts is noted, and stops the next wait as it begins."""
    held = HeldInterrupts()
    reached = False
    with pytest.raises(KeyboardInterrupt), held.holding(), held.waiting():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert held.caught and not held.broke  # the first one is held
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        reached = True
    assert held.broke and not reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    held = HeldInterrupts()
    with pytest.raises(KeyboardInterrupt), held.holding():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        reached = True  # (counting: not cut short)
        with held.waiting():
            reached = False
    assert held.broke and reached


# --- progress ------------------------------------------------------------------------------


class Reports:
    """An ``on_progress`` that keeps every report (moved, gone, total), and can send this
    process a Ctrl-C from inside the ``at``-th one, as a key pressed while a bar is drawn."""

    def __init__(self, at: int | None = None) -> None:
        self.seen: list[tuple[int, int, int]] = []
        self.at = at

    def __call__(self, progress: queues.QueueProgress) -> None:
        self.seen.append((progress.moved, progress.gone, progress.total))
        if len(self.seen) == self.at:
            signal.raise_signal(signal.SIGINT)

    @property
    def moved(self) -> list[int]:
        return [moved for moved, _, _ in self.seen]


def test_requeue_drain_and_restore_report_progress_per_batch(
    tmp_path: Path, redis_client: redis.Redis, env_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each reports once it holds its lock and is confirmed (0 of the selected count), then
    once per batch answered: the last report is what it moved (and found gone). A dry run, an
    empty selection or a file with nothing left to restore reports nothing (no bar)."""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 100)
    q = ref(env_name)
    values = [message(f"m{i}") for i in range(1000)]
    fill(redis_client, q.key("processing"), values)

    def consumer_finishes_three(plan: queues.Plan) -> bool:
        for value in values[:3]:
            rb.lrem(redis_client, q.key("processing"), 1, value)
        return True

    reports = Reports()
    requeued = queues.requeue(
        redis_client,
        q,
        queues.RequeueOptions(),
        queues.Hooks(confirm=consumer_finishes_three, on_progress=reports),
    )
    assert (requeued.requeued, requeued.gone) == (997, 3)
    assert reports.seen[0] == (0, 0, 1000)
    assert reports.seen[-1] == (997, 3, 1000)
    assert len(reports.seen) == 1 + 10  # one per batch of 100
    assert reports.moved == sorted(reports.moved)

    fill(redis_client, q.key("dead"), values)
    path = tmp_path / "d.jsonl.zst"
    reports = Reports()
    drained = queues.drain(
        redis_client, q, queues.DrainOptions(to_file=path), queues.Hooks(on_progress=reports)
    )
    assert drained.drained == 1000
    assert (reports.seen[0], reports.seen[-1], len(reports.seen)) == (
        (0, 0, 1000),
        (1000, 0, 1000),
        11,
    )

    reports = Reports()
    restored = queues.restore(
        redis_client, path, queues.RestoreOptions(), queues.Hooks(on_progress=reports)
    )
    assert restored.restored == 1000
    assert (reports.seen[0], reports.seen[-1], len(reports.seen)) == (
        (0, 0, 1000),
        (1000, 0, 1000),
        11,
    )

    nothing = Reports()
    queues.requeue(
        redis_client, q, queues.RequeueOptions(dry_run=True), queues.Hooks(on_progress=nothing)
    )
    none_of_them = queues.Selection(aggregates=frozenset({"no-such-aggregate"}))
    queues.requeue(
        redis_client,
        q,
        queues.RequeueOptions(selection=none_of_them),
        queues.Hooks(on_progress=nothing),
    )
    queues.drain(
        redis_client,
        q,
        queues.DrainOptions(to_file=tmp_path / "empty.jsonl.zst", selection=none_of_them),
        queues.Hooks(on_progress=nothing),
    )
    queues.drain(
        redis_client, q, queues.DrainOptions(dry_run=True), queues.Hooks(on_progress=nothing)
    )
    queues.restore(
        redis_client, path, queues.RestoreOptions(), queues.Hooks(on_progress=nothing)
    )  # done
    assert nothing.seen == []


def test_drain_and_restore_report_their_phases_before_the_moves(
    tmp_path: Path, redis_client: redis.Redis, env_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holding their lock, and before their first move: a drain reports the messages written
    to its backup file ("backing up"), a restore the records read from its file ("reading
    backup") and put in order ("preparing"), each at its start, every PHASE_STEP messages
    and at its end, of the selected count (a bar shows them instead of nothing). The moves'
    reports are as before. A dry run, a run without a file (--discard), an empty selection,
    a restore of a file restored already past its reading, and a run another one holds the
    lock of report no file phase (a drain's selection phases: the test below)."""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 100)
    monkeypatch.setattr(progress_module, "PHASE_STEP", 300)
    q = ref(env_name)
    values = [message(f"m{i}") for i in range(1000)]
    fill(redis_client, q.key("dead"), values)
    path = tmp_path / "d.jsonl.zst"
    seen: list[tuple[str, int, int | None]] = []

    def phase(p: queues.QueuePhase) -> None:
        if p.name not in ("reading list", "selecting"):
            seen.append((p.name, p.done, p.total))

    def moved(p: queues.QueueProgress) -> None:
        seen.append(("moved", p.moved, p.total))

    steps = [0, 300, 600, 900, 1000]
    queues.drain(
        redis_client,
        q,
        queues.DrainOptions(to_file=path),
        queues.Hooks(on_progress=moved, on_phase=phase),
    )
    backing_up = [("backing up", n, 1000) for n in steps]
    assert seen[:6] == [*backing_up, ("moved", 0, 1000)] and len(seen) == 5 + 11, seen

    seen.clear()
    queues.restore(
        redis_client, path, queues.RestoreOptions(), queues.Hooks(on_progress=moved, on_phase=phase)
    )
    reading = [("reading backup", n, 1000) for n in steps]
    preparing = [("preparing", n, 1000) for n in steps]
    assert seen[:11] == [*reading, *preparing, ("moved", 0, 1000)] and len(seen) == 10 + 11

    seen.clear()
    queues.restore(
        redis_client, path, queues.RestoreOptions(), queues.Hooks(on_progress=moved, on_phase=phase)
    )
    assert seen == [*reading, *preparing]  # read and put in order: nothing left to restore
    seen.clear()
    none_of_them = queues.Selection(aggregates=frozenset({"no-such-aggregate"}))
    quiet: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
        (queues.restore, (path, queues.RestoreOptions(dry_run=True))),
        (queues.drain, (q, queues.DrainOptions(dry_run=True))),
        (
            queues.drain,
            (q, queues.DrainOptions(to_file=tmp_path / "0.zst", selection=none_of_them)),
        ),
        (queues.drain, (q, queues.DrainOptions(discard=True))),
    ]
    for run, args in quiet:
        run(redis_client, *args, queues.Hooks(on_phase=phase))
    assert seen == []
    fill(redis_client, q.key("dead"), values)
    redis_client.set(q.lock_key, "another-run", px=30_000)
    with pytest.raises(errors.LockHeld):
        queues.drain(
            redis_client,
            q,
            queues.DrainOptions(to_file=tmp_path / "1.zst"),
            queues.Hooks(on_phase=phase),
        )
    with pytest.raises(errors.LockHeld):
        queues.restore(redis_client, path, queues.RestoreOptions(), queues.Hooks(on_phase=phase))
    assert seen == []


def test_requeue_and_drain_report_reading_and_selecting_before_the_question(
    tmp_path: Path, redis_client: redis.Redis, env_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holding their lock, a requeue and a drain report reading the list ("reading list": its
    length once Redis says it, then the messages read; "reading list again" for --grace's
    second look) and choosing from it ("selecting": the messages examined, of the list's
    length), each at its start, every PHASE_STEP messages and at its end: seconds on a long
    list, where a bar had nothing to show. Then comes the question, then the moves (a drain's
    "backing up" first). A selection that stops at --limit says how far it looked; one of
    nothing reports its phases and no move; a dry run and a run another one holds the lock
    of report none."""
    monkeypatch.setattr(selection_module, "PAGE", 100)
    monkeypatch.setattr(progress_module, "PHASE_STEP", 300)
    q = ref(env_name)
    values = [message(f"m{i}", age=timedelta(hours=2)) for i in range(1000)]
    seen: list[tuple[str, int, int | None]] = []

    def phase(p: queues.QueuePhase) -> None:
        seen.append((p.name, p.done, p.total))

    def moved(p: queues.QueueProgress) -> None:
        seen.append(("moved", p.moved, p.total))

    def confirm(plan: queues.Plan) -> bool:
        seen.append(("asked", plan.count, None))
        return True

    def no_wait(seconds: float) -> None:
        """--grace's wait (of 0 s here)."""

    def steps(name: str, *done: int, length: bool = False) -> list[tuple[str, int, int | None]]:
        start = [(name, 0, None)] if length else []  # its length not known yet
        return [*start, *((name, n, 1000) for n in done)]

    reading = steps("reading list", 0, 300, 600, 900, 1000, length=True)
    older = queues.Selection(older_than=timedelta(hours=1))
    fill(redis_client, q.key("processing"), values)
    queues.requeue(
        redis_client,
        q,
        queues.RequeueOptions(selection=older),
        queues.Hooks(confirm=confirm, on_progress=moved, on_phase=phase),
    )
    selecting = steps("selecting", 0, 300, 600, 900, 1000)
    assert seen[:13] == [*reading, *selecting, ("asked", 1000, None), ("moved", 0, 1000)], seen
    assert seen[13:] == [("moved", 1000, 1000)]  # one batch

    seen.clear()
    fill(redis_client, q.key("dead"), values)
    path = tmp_path / "d.jsonl.zst"
    options = queues.DrainOptions(to_file=path, selection=queues.Selection(grace=timedelta(0)))
    queues.drain(
        redis_client,
        q,
        options,
        queues.Hooks(confirm=confirm, on_progress=moved, on_phase=phase, sleep=no_wait),
    )
    again = steps("reading list again", 0, 300, 600, 900, 1000, length=True)
    backing_up = steps("backing up", 0, 300, 600, 900, 1000)
    assert seen[:24] == [
        *reading,
        *again,
        *selecting,
        ("asked", 1000, None),
        *backing_up,
        ("moved", 0, 1000),
    ], seen

    seen.clear()
    fill(redis_client, q.key("processing"), values)
    limited = queues.Selection(older_than=timedelta(hours=1), limit=150)
    queues.requeue(
        redis_client,
        q,
        queues.RequeueOptions(selection=limited),
        queues.Hooks(confirm=confirm, on_phase=phase),
    )
    assert seen == [*reading, *steps("selecting", 0, 200), ("asked", 150, None)]  # looked at 200

    seen.clear()
    fill(redis_client, q.key("processing"), values)
    nothing = queues.Selection(aggregates=frozenset({"no-such-aggregate"}))
    queues.requeue(
        redis_client,
        q,
        queues.RequeueOptions(selection=nothing),
        queues.Hooks(confirm=confirm, on_phase=phase),
    )
    assert seen == [*reading, *selecting]
    seen.clear()
    queues.requeue(
        redis_client, q, queues.RequeueOptions(dry_run=True), queues.Hooks(on_phase=phase)
    )
    queues.drain(redis_client, q, queues.DrainOptions(dry_run=True), queues.Hooks(on_phase=phase))
    redis_client.set(q.lock_key, "another-run", px=30_000)
    with pytest.raises(errors.LockHeld):
        queues.requeue(redis_client, q, queues.RequeueOptions(), queues.Hooks(on_phase=phase))
    assert seen == []


def test_a_ctrl_c_during_a_progress_report_is_held_and_the_reports_stay_exact(
    tmp_path: Path, redis_client: redis.Redis, env_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that comes while a batch's count is reported (a bar being drawn) is held like
    one during the batch: the run stops once the batches sent are counted, every one of them
    reported, so the last report equals what ``error.done`` says moved, and what Redis holds."""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 100)
    q = ref(env_name)
    values = [message(f"m{i}") for i in range(1000)]
    fill(redis_client, q.key("processing"), values)
    reports = Reports(at=3)  # the second batch's report
    with pytest.raises(errors.Interrupted) as requeue_stop:
        queues.requeue(redis_client, q, queues.RequeueOptions(), queues.Hooks(on_progress=reports))
    assert requeue_stop.value.done is not None
    moved = requeue_stop.value.done["requeued"]
    assert 200 <= moved < 1000 and reports.moved[-1] == moved
    assert redis_client.llen(q.key("published")) == moved

    fill(redis_client, q.key("dead"), values)
    path = tmp_path / "d.jsonl.zst"
    reports = Reports(at=3)
    with pytest.raises(errors.Interrupted) as drain_stop:
        queues.drain(
            redis_client, q, queues.DrainOptions(to_file=path), queues.Hooks(on_progress=reports)
        )
    assert drain_stop.value.done == {"drained": 200, "gone": 0}
    assert reports.moved[-1] == 200 and redis_client.llen(q.key("dead")) == 800

    reports = Reports(at=2)  # the first batch's report
    with pytest.raises(errors.Interrupted) as restore_stop:
        queues.restore(
            redis_client, path, queues.RestoreOptions(), queues.Hooks(on_progress=reports)
        )
    assert restore_stop.value.done == {"restored": 100}
    assert reports.moved == [0, 100] and redis_client.llen(q.key("dead")) == 900
