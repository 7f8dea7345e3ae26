"""``inspect stats`` (esctl.inspect.inspect_stats) on the demo store, whose summary says exactly
what was written."""

from __future__ import annotations

import json

import redis
import redis_bytes as rb

from esctl import demo, layout
from esctl.inspect import inspect_stats


def stored_values(client: redis.Redis, app: str) -> list[bytes]:
    """Every committed event's stored value, looked up as the library does (no esctl code)."""
    values = []
    for key in client.scan_iter(match=layout.commit_list_pattern(app), count=1000):
        for commit_id in rb.lrange(client, key):
            cid = commit_id.decode()
            value = rb.hget(client, f"EventStore:{app}:{layout.partition(cid)}", cid)
            if value is None:
                value = rb.hget(client, f"EventStore:{app}", cid)
            if value is not None:
                values.append(value)
    return values


def test_full_stats_are_exact(demo_store: demo.DemoSummary, redis_client: redis.Redis) -> None:
    report = inspect_stats(redis_client, demo_store.app, env=demo_store.env, full=True)
    assert report.commit_lists == demo_store.commit_lists
    assert report.commit_ids == demo_store.commit_ids
    assert report.legacy_fields == demo_store.legacy_events
    assert report.partitioned_fields == demo_store.hash_fields - demo_store.legacy_events
    assert report.partitioned_hashes == demo_store.event_hashes - 1
    assert report.snapshots == demo_store.snapshots
    assert report.queue_messages == {
        "published": demo_store.published_messages,
        "processing": demo_store.processing_messages,
        "dead": demo_store.dead_letters,
    }
    assert report.queue_lists == {
        "published": sum(1 for q in demo_store.queues if q.published),
        "processing": sum(1 for q in demo_store.queues if q.processing),
        "dead": sum(1 for q in demo_store.queues if q.dead_letters),
    }
    by_type = {t.event_type: t.events for t in report.event_types}
    assert by_type == {**demo_store.events_by_event_type, "(unreadable)": 1}
    values = stored_values(redis_client, demo_store.app)
    assert report.examined.events == len(values) == demo_store.events
    assert report.payload_bytes_exact
    assert report.payload_bytes == sum(len(v) for v in values)
    assert sum(t.stored_bytes for t in report.event_types) == report.payload_bytes
    assert report.examined.compressed == demo_store.compressed_events
    assert report.examined.legacy == demo_store.legacy_events
    sizes = [t.stored_bytes for t in report.event_types]
    assert sizes == sorted(sizes, reverse=True)

    document = json.loads(json.dumps(report.as_dict()))
    assert document["event_types_exact"] is True
    assert document["aggregates"] == demo_store.commit_lists
    assert 0 < document["payloads"]["compressed_share"] < 1
    assert document["payloads"]["compression_ratio"] > 1
    memory = {m["family"]: m for m in document["memory"]["families"]}
    assert memory["commit_lists"]["keys"] == demo_store.commit_lists
    assert memory["legacy_hash"]["keys"] == 1
    assert memory["snapshots"]["keys"] == demo_store.snapshots  # one per partition here
    assert memory["queues"]["keys"] == sum(report.queue_lists.values())
    for family in memory.values():
        assert family["sampled"] == family["keys"]  # the default sample covers the demo
        assert family["estimated_bytes"] == family["sampled_bytes"] > 0
        assert 0 < family["share_of_used_memory"] < 1
    used = document["memory"]["used_memory"]
    assert used > 0
    assert 0 < document["memory"]["event_store_bytes"] < used


def test_sampled_stats_are_estimates(
    demo_store: demo.DemoSummary, redis_client: redis.Redis
) -> None:
    report = inspect_stats(redis_client, demo_store.app, sample=10, seed=3)
    assert report.commit_lists == demo_store.commit_lists  # counts stay exact
    assert report.commit_ids == demo_store.commit_ids
    assert report.examined.events < demo_store.events
    assert not report.payload_bytes_exact and report.payload_bytes > 0
    assert abs(sum(t.events for t in report.event_types) - report.commit_ids) <= len(
        report.event_types
    )
    memory = {m.family: m for m in report.memory}
    assert memory["commit_lists"].sampled == 10
    assert memory["event_hashes"].sampled == 10
    assert memory["event_hashes"].estimated_bytes > memory["event_hashes"].sampled_bytes
    assert report.as_dict()["event_types_exact"] is False
    # without --env every environment's queues are counted (one here)
    assert report.queue_messages["dead"] == demo_store.dead_letters


def test_empty_store(redis_client: redis.Redis, app_name: str) -> None:
    report = inspect_stats(redis_client, app_name)
    document = report.as_dict()
    assert document["aggregates"] == 0 and document["events"]["commit_ids"] == 0
    assert document["payloads"]["compressed_share"] is None
    assert document["event_types"] == []
    assert all(m["estimated_bytes"] == 0 for m in document["memory"]["families"])
