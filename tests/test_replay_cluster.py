"""``replay`` on a real three-primary Redis Cluster answers as on a single instance: the same
events in the same order, and the same messages in every subscriber's queue (published there by
one Lua script per event, redis-py's cluster pipeline cannot carry MULTI/EXEC)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from helpers import run_cli

from esctl import demo, layout
from esctl.demo import write_demo_store

cluster = pytest.importorskip("cluster", reason="tests/cluster.py (the cluster harness) is absent")
redis_cluster = cluster.redis_cluster  # the session fixture, imported for pytest

VOLATILE = {"elapsed_s", "events_per_s"}


def queues(client: Any, env: str) -> dict[str, list[bytes]]:
    found = {}
    for event_type, subscribers in demo.SUBSCRIPTIONS.items():
        for sub in subscribers:
            key = layout.queue_key(sub, env, event_type, "published")
            found[key] = client.lrange(key, 0, -1)
    return found


def test_replay_is_the_same_on_the_cluster(
    redis_cluster: Any,
    redis_client: redis.Redis,
    redis_test_url: str,
    app_name: str,
    env_name: str,
) -> None:
    redis_cluster.flushall()
    on_cluster = redis_cluster.client()
    assert write_demo_store(on_cluster, app=app_name, env=env_name) == write_demo_store(
        redis_client, app=app_name, env=env_name
    )
    scope = ["--app", app_name, "--env", env_name]
    answers = []
    for url, client in ((redis_cluster.url, on_cluster), (redis_test_url, redis_client)):
        printed = run_cli(
            "replay", "--from", "redis", "--all", "--order", "time", "--to", "stdout",
            "--redis-url", url, *scope,
        )  # fmt: skip
        assert printed.returncode == 3, printed.stderr  # the demo's planted unreadable events
        published = run_cli(
            "replay", "--from", "redis", "--all", "--to", "queue", "--yes", "--json",
            "--redis-url", url, *scope,
        )  # fmt: skip
        assert published.returncode == 3, published.stderr
        summary = {k: v for k, v in json.loads(published.stdout).items() if k not in VOLATILE}
        answers.append((printed.stdout, summary, queues(client, env_name)))
    assert answers[0] == answers[1]
    printed_lines, summary, lists = answers[0]
    assert summary["notifications"] > 0 and summary["messages"] > summary["notifications"]
    assert len(printed_lines.splitlines()) == summary["events"]
    assert sum(len(v) for v in lists.values()) >= summary["messages"]
