"""Requeue and drain read their snapshot back a page at a time: on a list of many pages, with a
consumer taking and finishing messages and new ones arriving while they work, they move exactly
the snapshot's messages that are still there (count-aware), never one twice, never one pushed
after the snapshot."""

from __future__ import annotations

import random
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
import redis
import redis.exceptions
import redis_bytes as rb
from helpers import outcomes, queued_message, read_as_restore
from hypothesis import given, settings
from hypothesis import strategies as st

from esctl import queues
from esctl.queues import scripts, selection
from esctl.queues.backup import value_bytes
from esctl.redisio import resp

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SUB = "Learning.ReportingService.Worker-Test"
TYPE = "ItemScoreCreated"
N = 3000


def message(number: int, tag: str = "m") -> bytes:
    return queued_message(number, tag, event_type=TYPE)


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selection, "PAGE", 97)
    monkeypatch.setattr(scripts, "MOVE_BATCH", 40)


class Consumer:
    """Finishes (LREMs) random snapshot messages and pushes new ones at the head, from the moment
    the command has taken its snapshot (its confirmation) until it returns."""

    def __init__(self, url: str, key: str, snapshot: list[bytes], seed: int) -> None:
        self.client = redis.Redis.from_url(url)
        self.key = key
        self.snapshot = snapshot
        self.rng = random.Random(seed)
        self.taken: Counter[bytes] = Counter()
        self.arrived: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.work, daemon=True)
        self.errors: list[BaseException] = []

    def step(self) -> None:
        value = self.rng.choice(self.snapshot)
        if rb.lrem(self.client, self.key, 1, value) == 1:
            self.taken[value] += 1
        new = message(len(self.arrived), "new")
        self.client.lpush(self.key, new)
        self.arrived.append(new)

    def work(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def confirm(self, plan: queues.Plan) -> bool:
        for _ in range(50):  # the list changed before the first move, whatever the timing
            self.step()
        self.thread.start()
        return True

    @contextmanager
    def running(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.stop.set()
            if self.thread.is_alive():
                self.thread.join(timeout=30)
            self.client.close()
        assert not self.errors, self.errors


def snapshot_values() -> list[bytes]:
    """N messages in consumption order, a third of them equal to another one."""
    return [message(i % 2000) for i in range(N)]


def test_requeue_pages_through_a_changing_list(
    small_pages: None, redis_client: redis.Redis, redis_test_url: str, env_name: str
) -> None:
    q = queues.QueueRef(SUB, env_name, TYPE)
    values = snapshot_values()
    redis_client.lpush(q.key("processing"), *values)
    dry = queues.requeue(redis_client, q, queues.RequeueOptions(dry_run=True, now=NOW))
    assert (dry.examined, dry.selected) == (N, N)
    consumer = Consumer(redis_test_url, q.key("processing"), values, seed=17)
    with consumer.running():
        summary = queues.requeue(
            redis_client, q, queues.RequeueOptions(now=NOW), queues.Hooks(confirm=consumer.confirm)
        )
    assert consumer.taken, "the consumer finished nothing while the requeue ran"
    published = Counter(rb.lrange(redis_client, q.key("published")))
    assert published + consumer.taken == Counter(values)  # each exactly once, somewhere
    assert Counter(rb.lrange(redis_client, q.key("processing"))) == Counter(consumer.arrived)
    assert summary.selected == N
    assert summary.requeued == published.total() and summary.gone == consumer.taken.total()

    # without a consumer: the order across pages is kept, and --limit takes the next ones
    redis_client.delete(q.key("published"), q.key("processing"))
    redis_client.lpush(q.key("processing"), *values)
    limited = queues.requeue(
        redis_client, q, queues.RequeueOptions(now=NOW, selection=queues.Selection(limit=1234))
    )
    assert (limited.selected, limited.requeued) == (1234, 1234)
    assert rb.lrange(redis_client, q.key("published"))[::-1] == values[:1234]
    assert rb.lrange(redis_client, q.key("processing"))[::-1] == values[1234:]


def test_drain_pages_through_a_changing_list_and_restores_what_it_removed(
    small_pages: None,
    tmp_path: Path,
    redis_client: redis.Redis,
    redis_test_url: str,
    env_name: str,
) -> None:
    q = queues.QueueRef(SUB, env_name, TYPE)
    values = snapshot_values()
    redis_client.lpush(q.key("dead"), *values)
    consumer = Consumer(redis_test_url, q.key("dead"), values, seed=29)
    path = tmp_path / "dead.jsonl.zst"
    with consumer.running():
        summary = queues.drain(
            redis_client,
            q,
            queues.DrainOptions(which="dead", to_file=path, now=NOW),
            queues.Hooks(confirm=consumer.confirm),
        )
    assert consumer.taken
    survey, records = read_as_restore(path)
    assert survey.complete and len(records) == N
    # the backup holds the snapshot, in consumption order, numbered from the tail
    assert [value_bytes(r) for r in records] == values
    assert [r["n"] for r in records] == list(range(N))
    assert [r["position"] for r in records] == list(range(N))
    marked = outcomes(survey, records)
    removed = Counter(value_bytes(r) for r in records if marked[r["n"]] == "removed")
    assert removed + consumer.taken == Counter(values)
    assert Counter(rb.lrange(redis_client, q.key("dead"))) == Counter(consumer.arrived)
    assert (summary.drained, summary.gone) == (removed.total(), consumer.taken.total())
    restored = queues.restore(redis_client, path, queues.RestoreOptions())
    assert restored.restored == removed.total()
    assert Counter(rb.lrange(redis_client, q.key("dead"))) == removed + Counter(consumer.arrived)


class _Chunks:
    """A socket's receiving end that hands out ``data`` in the given piece sizes (the parser's
    only input: how the bytes arrive)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data = data
        self.sizes = sizes
        self.at = 0

    def recv(self, limit: int) -> bytes:
        size = min(limit, self.sizes[self.at % len(self.sizes)] if self.sizes else limit)
        piece = self.data[: max(1, size)]
        self.data = self.data[len(piece) :]
        self.at += 1
        return piece


@given(
    values=st.lists(st.binary(max_size=40), max_size=60),
    sizes=st.lists(st.integers(1, 50), max_size=8),
    page=st.integers(1, 7),
)
@settings(max_examples=200, deadline=None)
def test_a_streamed_lrange_reply_splits_into_pages_wherever_the_bytes_break(
    values: list[bytes], sizes: list[int], page: int
) -> None:
    reply = b"*%d\r\n" % len(values) + b"".join(b"$%d\r\n%s\r\n" % (len(v), v) for v in values)
    pages: list[tuple[bytes, int]] = []
    count = resp._read_bulk_array(
        cast(socket.socket, _Chunks(reply, sizes)), lambda d, n: pages.append((d, n)), page
    )
    assert count == len(values)
    assert [n for _, n in pages] == [
        min(page, len(values) - i) for i in range(0, len(values), page)
    ]
    assert [v for d, n in pages for v in resp.bulk_values(d, n)] == values


def test_a_refused_lrange_is_a_response_error() -> None:
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        resp._read_bulk_array(
            cast(socket.socket, _Chunks(b"-WRONGTYPE not a list\r\n", [3])), print, 10
        )
