"""``inspect``, ``events query`` and ``queue`` commands on a real three-primary Redis Cluster
answer exactly as on a single instance (issue 8).

The demo store (every layout, planted defects, queues with stuck and dead-lettered messages) is
written with the same seed and clock into the cluster and into the single server under the same
app and env names; each command runs through the CLI against both and the JSON documents are
compared, less what names the server or measures time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.cluster
from cluster import LocalCluster, redis_cluster
from helpers import run_cli

from esctl.demo import DemoSummary, write_demo_store

__all__ = ["redis_cluster"]  # the fixture, imported for pytest

VOLATILE = {
    "elapsed_s",
    "events_per_s",
    "server",
    "redis",
    "redis_server",
    "generated_at",
    "oldest_processing_age_s",
    "age_s",
}
"""Keys naming the server or measuring time: not part of the answer."""


@pytest.fixture
def cluster_client(redis_cluster: LocalCluster) -> Iterator[redis.cluster.RedisCluster]:
    yield redis_cluster.client()


@pytest.fixture
def both_stores(
    redis_cluster: LocalCluster,
    cluster_client: redis.cluster.RedisCluster,
    redis_client: redis.Redis,
    redis_test_url: str,
    app_name: str,
    env_name: str,
) -> tuple[DemoSummary, str, str]:
    """The demo store in the cluster and in the single server: (summary, cluster URL, URL).
    The cluster is flushed first, as the single server's database is: commands that scan
    every app or env (``inspect stats``' queue section) must see the same keys."""
    redis_cluster.flushall()
    on_cluster = write_demo_store(cluster_client, app=app_name, env=env_name)
    on_single = write_demo_store(redis_client, app=app_name, env=env_name)
    assert on_cluster == on_single
    return on_cluster, redis_cluster.url, redis_test_url


def _stable(document: Any) -> Any:
    if isinstance(document, dict):
        return {k: _stable(v) for k, v in document.items() if k not in VOLATILE}
    if isinstance(document, list):
        return [_stable(v) for v in document]
    return document


def esctl_json(url: str, summary: DemoSummary, *args: str) -> tuple[int, Any]:
    scope = ["--env", summary.env] if args[0] == "queue" else ["--app", summary.app]
    output = ["--format", "json"] if args[:2] == ("events", "query") else ["--json"]
    result = run_cli(*args, "--redis-url", url, *scope, *output)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.stdout, result.stderr
    return result.returncode, _stable(json.loads(result.stdout))


def assert_same_answer(stores: tuple[DemoSummary, str, str], *args: str) -> tuple[int, Any]:
    summary, cluster_url, single_url = stores
    code, on_cluster = esctl_json(cluster_url, summary, *args)
    single_code, on_single = esctl_json(single_url, summary, *args)
    if args[:2] == ("events", "query"):  # SCAN order is each server's own
        on_cluster, on_single = sorted(on_cluster, key=_row_key), sorted(on_single, key=_row_key)
    assert (code, on_cluster) == (single_code, on_single), args
    return code, on_cluster


def _row_key(row: dict[str, Any]) -> tuple[str, int, str]:
    return row["aggregate_id"], row["version"], row["commit_id"] or ""


def test_inspect_aggregate_is_the_same_on_the_cluster(
    both_stores: tuple[DemoSummary, str, str],
) -> None:
    summary = both_stores[0]
    code, doc = assert_same_answer(
        both_stores, "inspect", "aggregate", summary.samples["aggregate"], "--raw"
    )
    assert code == 0 and doc["events"]
    for defect in summary.defects:
        if defect.aggregate_id is not None:
            code, _ = assert_same_answer(both_stores, "inspect", "aggregate", defect.aggregate_id)
            assert code in (0, 3)


def test_inspect_integrity_is_the_same_on_the_cluster(
    both_stores: tuple[DemoSummary, str, str],
) -> None:
    code, doc = assert_same_answer(both_stores, "inspect", "integrity")
    assert code == 3 and doc["problems"]


def test_inspect_stats_is_the_same_on_the_cluster(
    both_stores: tuple[DemoSummary, str, str],
) -> None:
    summary, cluster_url, single_url = both_stores
    args = ("inspect", "stats", "--full")
    code, on_cluster = esctl_json(cluster_url, summary, *args)
    single_code, on_single = esctl_json(single_url, summary, *args)
    # MEMORY USAGE / INFO memory are each server's own: everything else must agree.
    memory = on_cluster.pop("memory")
    on_single.pop("memory")
    assert (code, on_cluster) == (single_code, on_single)
    assert code in (0, 3) and memory["used_memory"] > 0


def test_events_query_is_the_same_on_the_cluster(
    both_stores: tuple[DemoSummary, str, str],
) -> None:
    summary = both_stores[0]
    _, everything = assert_same_answer(both_stores, "events", "query")
    assert len(everything) > 0
    by_type = sorted(summary.events_by_event_type)[0]
    _, some = assert_same_answer(
        both_stores, "events", "query", "--type", by_type, "--since", "2018-01-01"
    )
    assert 0 < len(some) < len(everything)
    aggregate_id = summary.samples["aggregate"]
    _, one = assert_same_answer(both_stores, "events", "query", "--aggregate", aggregate_id)
    assert {row["aggregate_id"] for row in one} == {aggregate_id}


def test_queue_list_peek_and_requeue_are_the_same_on_the_cluster(
    both_stores: tuple[DemoSummary, str, str],
) -> None:
    summary = both_stores[0]
    code, listing = assert_same_answer(both_stores, "queue", "list")
    assert code in (0, 3) and listing
    stuck = next(q for q in summary.queues if q.stuck)
    dead = next(q for q in summary.queues if q.dead_letters)
    assert_same_answer(
        both_stores, "queue", "peek", stuck.subscriber, stuck.event_type, "--list", "processing"
    )
    code, moved = assert_same_answer(
        both_stores, "queue", "requeue", stuck.subscriber, stuck.event_type,
        "--older-than", "5m", "--yes",
    )  # fmt: skip
    assert code == 0 and moved["requeued"] == stuck.stuck and moved["gone"] == 0
    code, moved = assert_same_answer(
        both_stores, "queue", "requeue", dead.subscriber, dead.event_type, "--from", "dead", "--yes"
    )
    assert code == 0 and moved["requeued"] == dead.dead_letters
    code, after = assert_same_answer(both_stores, "queue", "list")
    assert after != listing
