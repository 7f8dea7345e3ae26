"""``esctl compress`` (the core) against the test's own Redis database. What was written is
checked with the independent writer's reader (``independent_writer.gunzip_base64``), never
with esctl's own codec, so a bug shared by esctl's writer and reader cannot hide."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence

import independent_writer as iw
import pytest
import redis
import redis_bytes as rb

from esctl import compress, layout, redisio
from esctl.compress import Candidate, CompressOptions
from esctl.errors import LockHeld

THRESHOLD = 1000


@pytest.fixture
def client(redis_test_url: str) -> Iterator[redisio.RedisClient]:
    c = redisio.connect(redis_test_url)
    try:
        yield c
    finally:
        c.close()


def snapshot_text(aggregate_id: str, size: int) -> str:
    body = {"$type": "Ns.EnrollmentSnapshot, Asm", "Id": aggregate_id, "Version": 3}
    body["Notes"] = "Größe 学習 🦄 " * max(0, (size - 80) // 20)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def everything(client: redis.Redis) -> dict[bytes, bytes | None]:
    return {key: client.dump(key) for key in client.scan_iter()}


def write_snapshots(client: redis.Redis, app: str, truth: iw.GroundTruth) -> dict[str, str]:
    """One plain snapshot per aggregate, alternately over and under the threshold."""
    texts = {}
    for i, aggregate in enumerate(truth.aggregates):
        text = snapshot_text(aggregate.aggregate_id, 1500 if i % 2 else 300)
        client.hset(iw.snapshot_hash_key(app, aggregate.aggregate_id), aggregate.aggregate_id, text)
        texts[aggregate.aggregate_id] = text
    return texts


def test_plain_payloads_over_the_threshold_are_compressed_as_the_library_writes(
    redis_client: redis.Redis, client: redisio.RedisClient, app_name: str, env_name: str
) -> None:
    truth = iw.write_store(
        redis_client, app=app_name, aggregates=60, threshold=None, legacy_share=0.2, seed=11
    )
    snapshots = write_snapshots(redis_client, app_name, truth)
    queue = layout.queue_key("Sub", env_name, "ItemScoreCreated", "published")
    big_message = truth.events()[0].payload.ljust(1500)
    redis_client.lpush(queue, big_message)
    lists_before = {k: redis_client.lrange(k, 0, -1) for k in truth.commit_lists}

    summary = compress.compress(client, CompressOptions(app=app_name))

    events = truth.events()
    big = [e for e in events if len(e.payload.encode("utf-8")) > THRESHOLD]
    assert big and len(big) < len(events)
    assert any(e.legacy for e in big)
    for event in events:
        stored = rb.hget(redis_client, event.hash_key, event.commit_id)
        assert stored is not None
        if len(event.payload.encode("utf-8")) > THRESHOLD:
            assert stored.startswith(b"H4sI")
            assert iw.gunzip_base64(stored) == event.payload
        else:
            assert stored == event.payload.encode("utf-8")  # untouched
    for aggregate_id, text in snapshots.items():
        stored = rb.hget(redis_client, iw.snapshot_hash_key(app_name, aggregate_id), aggregate_id)
        assert stored is not None
        if len(text.encode("utf-8")) > THRESHOLD:
            assert stored.startswith(b"H4sI") and iw.gunzip_base64(stored) == text
        else:
            assert stored == text.encode("utf-8")
    # never touched: queues and commit lists
    assert redis_client.lrange(queue, 0, -1) == [big_message.encode("utf-8")]
    assert {k: redis_client.lrange(k, 0, -1) for k in truth.commit_lists} == lists_before

    big_snapshots = sum(1 for t in snapshots.values() if len(t.encode("utf-8")) > THRESHOLD)
    assert summary.families["events"].compressed == len(big)
    assert summary.families["snapshots"].compressed == big_snapshots
    assert summary.families["events"].below_threshold == len(events) - len(big)
    assert summary.total.bytes_after < summary.total.bytes_before
    assert summary.used_memory_before and summary.used_memory_after
    assert summary.problems == [] and summary.failed == 0
    document = summary.as_dict()
    assert document["dry_run"] is False and document["compressed"] == len(big) + big_snapshots

    again = compress.compress(client, CompressOptions(app=app_name))
    assert again.total.compressed == 0
    assert again.total.already_compressed == len(big) + big_snapshots


def test_a_value_a_writer_changes_meanwhile_keeps_the_writers_value(
    redis_client: redis.Redis, client: redisio.RedisClient, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=30, threshold=None, seed=2)
    big = [e for e in truth.events() if len(e.payload.encode("utf-8")) > THRESHOLD]
    changed, deleted = big[0], big[1]
    writers_value = b'{"written":"by a live service meanwhile"}'.ljust(1200)
    seen: list[Candidate] = []

    def concurrent_writer(candidates: Sequence[Candidate]) -> None:
        seen.extend(candidates)
        redis_client.hset(changed.hash_key, changed.commit_id, writers_value)
        redis_client.hdel(deleted.hash_key, deleted.commit_id)

    summary = compress.compress(
        client, CompressOptions(app=app_name), before_write=concurrent_writer
    )
    assert {c.field.decode() for c in seen} >= {changed.commit_id, deleted.commit_id}
    assert redis_client.hget(changed.hash_key, changed.commit_id) == writers_value
    assert redis_client.hexists(deleted.hash_key, deleted.commit_id) == 0  # not recreated
    assert summary.total.changed_concurrently == 2
    assert summary.total.compressed == len(big) - 2
    for event in big[2:]:
        stored = rb.hget(redis_client, event.hash_key, event.commit_id)
        assert stored is not None and iw.gunzip_base64(stored) == event.payload


def test_the_compare_and_set_script_writes_only_over_the_value_read(
    redis_client: redis.Redis, client: redisio.RedisClient
) -> None:
    redis_client.hset("EventStore:X:1", mapping={"a": "old-a", "b": "old-b"})
    replies = compress.compare_and_set(
        client,
        "EventStore:X:1",
        [(b"a", b"old-a", b"new-a"), (b"b", b"not what is there", b"new-b"), (b"c", b"x", b"y")],
    )
    assert replies == [1, 0, 0]
    assert redis_client.hgetall("EventStore:X:1") == {b"a": b"new-a", b"b": b"old-b"}
    assert compress.compare_and_set(client, "EventStore:X:1", [(b"a", b"old-a", b"new-a")]) == [2]


def test_dry_run_changes_nothing_and_counts_what_it_would_do(
    redis_client: redis.Redis, client: redisio.RedisClient, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=20, threshold=None, seed=4)
    before = everything(redis_client)
    summary = compress.compress(client, CompressOptions(app=app_name, dry_run=True))
    assert everything(redis_client) == before
    big = [e for e in truth.events() if len(e.payload.encode("utf-8")) > THRESHOLD]
    assert summary.total.plain_over_threshold == len(big)
    assert summary.total.compressed == 0
    assert summary.total.bytes_before == sum(len(e.payload.encode("utf-8")) for e in big)
    assert 0 < summary.total.bytes_after < summary.total.bytes_before
    assert summary.used_memory_after is None


def test_threshold_is_strictly_exceeded_and_configurable(
    redis_client: redis.Redis, client: redisio.RedisClient, app_name: str
) -> None:
    key = f"EventStore:{app_name}:7"
    redis_client.hset(key, mapping={"at": "x" * 500, "over": "y" * 501, "small": "z" * 20})
    summary = compress.compress(client, CompressOptions(app=app_name, threshold=500))
    assert summary.total.compressed == 1
    assert redis_client.hget(key, "at") == b"x" * 500
    over = rb.hget(redis_client, key, "over")
    assert over is not None and iw.gunzip_base64(over) == "y" * 501


def test_what_is_not_plain_text_is_left_alone(
    redis_client: redis.Redis, client: redisio.RedisClient, app_name: str
) -> None:
    key = f"EventStore:{app_name}:9"
    not_utf8 = b"\xff\xfe" + b"a" * 1200
    corrupt_gzip = base64.b64encode(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x0a\x07" + b"q" * 900)
    redis_client.hset(key, mapping={"bin": not_utf8, "corrupt": corrupt_gzip})
    other_app = f"EventStore:{app_name}:Other:5"  # another app whose name starts with ours
    redis_client.hset(other_app, "f", "w" * 2000)
    summary = compress.compress(client, CompressOptions(app=app_name))
    assert redis_client.hget(key, "bin") == not_utf8
    assert redis_client.hget(key, "corrupt") == corrupt_gzip
    assert redis_client.hget(other_app, "f") == b"w" * 2000
    assert summary.total.invalid_utf8 == 1 and summary.total.already_compressed == 1
    assert [p["kind"] for p in summary.problems] == ["invalid_utf8"]
    assert summary.problems_total == 1


def test_a_second_run_while_one_holds_the_lock_does_nothing(
    redis_client: redis.Redis, client: redisio.RedisClient, app_name: str
) -> None:
    iw.write_store(redis_client, app=app_name, aggregates=10, threshold=None, seed=6)
    redis_client.set(layout.compress_lock_key(app_name), "another-host:123:abc", px=30_000)
    before = everything(redis_client)
    with pytest.raises(LockHeld, match="another-host:123:abc"):
        compress.compress(client, CompressOptions(app=app_name))
    assert everything(redis_client) == before
    # a dry run takes no lock
    assert compress.compress(client, CompressOptions(app=app_name, dry_run=True)).dry_run


def test_the_lock_is_released_after_a_run(
    redis_client: redis.Redis, client: redisio.RedisClient, app_name: str
) -> None:
    iw.write_store(redis_client, app=app_name, aggregates=5, threshold=None, seed=8)
    compress.compress(client, CompressOptions(app=app_name))
    assert not redis_client.exists(layout.compress_lock_key(app_name))


def test_the_sample_for_doctor_classifies_as_compress_does(
    redis_client: redis.Redis, client: redisio.RedisClient, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=25, threshold=None, seed=10)
    samples = compress.sample_payloads(client, app_name, hashes=1000)
    big = [e for e in truth.events() if len(e.payload.encode("utf-8")) > THRESHOLD]
    assert samples["events"].counts.values_examined == len(truth.events())
    assert samples["events"].counts.plain_over_threshold == len(big)
    limited = compress.sample_payloads(client, app_name, hashes=3)
    assert limited["events"].hashes_sampled == 3


def test_events_saved_while_it_runs_all_read_back_exactly(
    redis_client: redis.Redis, client: redisio.RedisClient, app_name: str
) -> None:
    import threading

    truth = iw.write_store(redis_client, app=app_name, aggregates=40, threshold=None, seed=12)
    writer_client = redis.Redis(connection_pool=redis_client.connection_pool)
    writer = threading.Thread(
        target=iw.append_events, args=(writer_client, truth, 150), kwargs={"pause": 0.0002}
    )
    writer.start()
    try:
        compress.compress(client, CompressOptions(app=app_name))
    finally:
        writer.join()
    for event in truth.events():
        stored = rb.hget(redis_client, event.hash_key, event.commit_id)
        assert stored is not None
        text = iw.gunzip_base64(stored) if stored.startswith(b"H4sI") else stored.decode()
        assert text == event.payload
