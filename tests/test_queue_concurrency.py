"""Acceptance: requeue and drain/restore cycles while a publisher and four consumers run, some
of the consumers dying mid-message. Every published message must be handled at least once;
only messages whose consumer died while holding them may be handled twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import orjson
import redis
import redis_bytes as rb

from esctl import layout, queues

MESSAGES = 1200
CONSUMERS = 4
GRACE = timedelta(seconds=0.3)
DEADLINE_S = 45.0
TYPE = "ItemScoreUpdated"
SUB = "Learning.ReportingService.Worker-Test"


def payload(number: int) -> bytes:
    return orjson.dumps(
        {
            "$type": f"Learning.ScoringService.Domain.Events.{TYPE}, Learning.ScoringService.Domain",
            "Id": str(number),
            "TimeStamp": "2025-03-01T12:00:00.0000001+00:00",
            "Version": 1,
            "AggregateType": "ItemScore",
            "Score": number % 11,
        }
    )


class World:
    """The live side: a publisher and consumers following the library's protocol."""

    def __init__(self, url: str, env: str) -> None:
        self.url = url
        self.ref = queues.QueueRef(SUB, env, TYPE)
        self.published = self.ref.key("published")
        self.processing = self.ref.key("processing")
        self.dead = self.ref.key("dead")
        self.stop = threading.Event()
        self.mutex = threading.Lock()
        self.handled: Counter[int] = Counter()
        self.attempts: Counter[int] = Counter()
        self.died_holding: set[int] = set()
        self.slow: set[int] = set()
        self.failures = 0
        self.empty_polls = 0
        """Times a consumer found nothing to take (the published list empty)."""
        self.publisher_done = threading.Event()
        self.errors: list[BaseException] = []

    def wait_for_an_empty_poll(self, consumers: list[threading.Thread]) -> None:
        """Wait until a consumer found the published list empty (or none is alive to look)."""
        with self.mutex:
            before = self.empty_polls
        deadline = time.monotonic() + DEADLINE_S
        while True:
            with self.mutex:
                if self.empty_polls > before:
                    return
            if not any(c.is_alive() for c in consumers):
                return
            assert time.monotonic() < deadline, "no consumer looked at the drained list"
            time.sleep(0.001)

    def publish_all(self) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            members = layout.subscribers_key(self.ref.env, TYPE)
            for number in range(MESSAGES):
                # the library: LPUSH to every subscriber, then PUBLISH, in one transaction
                pipe = client.pipeline(transaction=True)
                for subscriber in sorted(rb.smembers(client, members)):
                    pipe.lpush(
                        layout.queue_key(subscriber.decode(), self.ref.env, TYPE, "published"),
                        payload(number),
                    )
                pipe.publish(self.ref.channel, "1")
                pipe.execute()
                if number % 200 == 0:
                    time.sleep(0.01)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            self.publisher_done.set()
            client.close()

    def consume(self) -> None:
        """One consumer until it dies or the run stops: RPOPLPUSH, handle, LREM (count 0)."""
        client = redis.Redis.from_url(self.url)
        try:
            while not self.stop.is_set():
                value = client.rpoplpush(self.published, self.processing)
                if value is None:
                    with self.mutex:
                        self.empty_polls += 1
                    time.sleep(0.002)
                    continue
                assert isinstance(value, bytes)
                taken = time.monotonic()
                number = int(orjson.loads(value)["Id"])
                with self.mutex:
                    self.attempts[number] += 1
                    first = self.attempts[number] == 1
                if first and number % 97 == 5:  # dies before its handler finished
                    with self.mutex:
                        self.died_holding.add(number)
                    return
                if first and number % 29 == 0:  # the handler throws: dead letter + RetryData
                    client.lpush(self.dead, value)
                    client.hset(
                        self.ref.retry_data_key(str(number)),
                        mapping={"RetryCount": "1", "LastException": "boom"},
                    )
                    rb.lrem(client, self.processing, 0, value)
                    with self.mutex:
                        self.failures += 1
                    continue
                time.sleep(0.001)  # the handler's work: the published list builds a backlog
                with self.mutex:
                    self.handled[number] += 1
                if first and number % 97 == 50:  # handled, then died before its LREM
                    with self.mutex:
                        self.died_holding.add(number)
                    return
                rb.lrem(client, self.processing, 0, value)
                if time.monotonic() - taken > GRACE.total_seconds() * 0.8:
                    with self.mutex:  # the machine stalled this thread: "in flight" by the clock
                        self.slow.add(number)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            client.close()


def test_live_consumers_lose_nothing_and_duplicate_only_what_died_in_flight(
    redis_client: redis.Redis, redis_test_url: str, env_name: str, tmp_path: Path
) -> None:
    world = World(redis_test_url, env_name)
    redis_client.sadd(layout.subscribers_key(env_name, TYPE), SUB)
    publisher = threading.Thread(target=world.publish_all, name="publisher")
    consumers: list[threading.Thread] = []
    totals: Counter[str] = Counter()
    publisher.start()
    started = time.monotonic()
    cycle = 0
    try:
        while True:
            assert time.monotonic() - started < DEADLINE_S, (
                f"did not settle: {totals}, {world.handled.total()} handled"
            )
            assert not world.errors, world.errors
            # a supervisor restarts consumers that died
            consumers = [c for c in consumers if c.is_alive()]
            while len(consumers) < CONSUMERS:
                consumer = threading.Thread(
                    target=world.consume, name=f"consumer-{cycle}-{len(consumers)}"
                )
                consumer.start()
                consumers.append(consumer)
            cycle += 1

            stuck = queues.requeue(
                redis_client,
                world.ref,
                queues.RequeueOptions(selection=queues.Selection(grace=GRACE)),
            )
            dead = queues.requeue(redis_client, world.ref, queues.RequeueOptions(source="dead"))
            totals.update(
                stuck_requeued=stuck.requeued,
                dead_requeued=dead.requeued,
                gone=stuck.gone + dead.gone,
            )
            assert stuck.failed == dead.failed == 0
            for which in ("published", "dead"):
                path = tmp_path / f"{which}-{cycle}.jsonl.zst"
                drained = queues.drain(
                    redis_client, world.ref, queues.DrainOptions(which=which, to_file=path)
                )
                totals.update(drained=drained.drained, drained_gone=drained.gone)
                if drained.backup_file:
                    if which == "published":  # consumers run while the messages are out
                        world.wait_for_an_empty_poll(consumers)
                    restored = queues.restore(redis_client, path, queues.RestoreOptions())
                    assert restored.restored == drained.drained and restored.failed == 0
                    totals.update(restored=restored.restored)

            lengths = [
                redis_client.llen(k) for k in (world.published, world.processing, world.dead)
            ]
            with world.mutex:
                all_handled = len(world.handled) == MESSAGES
            if world.publisher_done.is_set() and all_handled and lengths == [0, 0, 0]:
                break
    finally:
        world.stop.set()
        publisher.join(timeout=10)
        for consumer in consumers:
            consumer.join(timeout=10)

    assert not world.errors, world.errors
    # none lost
    assert set(world.handled) == set(range(MESSAGES))
    # none handled twice, except those whose consumer died holding them (or stalled past grace)
    twice = {n for n, times in world.handled.items() if times > 1}
    assert twice <= world.died_holding | world.slow, (twice - world.died_holding, world.slow)
    assert max(world.handled.values()) <= 2
    # the run exercised what it claims to
    expected_deaths = sum(1 for n in range(MESSAGES) if n % 97 in (5, 50))
    assert len(world.died_holding) == expected_deaths
    assert totals["stuck_requeued"] >= expected_deaths
    assert totals["dead_requeued"] >= 1 and world.failures == sum(
        1 for n in range(MESSAGES) if n % 29 == 0
    )
    assert totals["drained"] > 0 and totals["restored"] == totals["drained"]
    assert cycle >= 3
    print(f"{cycle} cycles, {dict(totals)}, {len(twice)} handled twice")
    assert not redis_client.keys("RetryData:*")  # cleared as dead letters were requeued
