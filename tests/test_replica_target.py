"""A command that writes to Redis pointed at a read-only replica (a managed Redis's reader
endpoint, say): Redis answers READONLY, and the error says what to do — point --redis-url at the
primary — instead of leaving the operator with "You can't write against a read only replica"."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from helpers import run_cli

from esctl import demo, prune, redisio, servers


@pytest.fixture(scope="module")
def replica() -> Iterator[tuple[servers.LocalRedis, demo.DemoSummary]]:
    """A replica in sync with a primary that holds the demo store (nothing here writes to
    either: the replica refuses)."""
    primary = servers.start_redis()
    try:
        replica = servers.start_redis(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
        try:
            with redis.Redis.from_url(primary.url) as client:
                store = demo.write_demo_store(client, app="Learning.Replica.Web", env="replica")
                keys = client.dbsize()
            with redis.Redis.from_url(replica.url) as copy:
                deadline = time.monotonic() + 15
                while copy.dbsize() < keys:
                    assert time.monotonic() < deadline, "the replica did not sync"
                    time.sleep(0.05)
            yield replica, store
        finally:
            replica.stop()
    finally:
        primary.stop()


@pytest.mark.parametrize("command", ["queue requeue", "compress"])
def test_a_write_to_a_replica_says_to_use_the_primary(
    command: str, replica: tuple[servers.LocalRedis, demo.DemoSummary]
) -> None:
    copy, store = replica
    if command == "compress":
        args = ["compress", "--app", store.app]
    else:
        sub, kind = store.samples["dead_subscriber"], store.samples["dead_event_type"]
        args = ["queue", "requeue", sub, kind, "--from", "dead", "--env", store.env]
    result = run_cli(*args, "--redis-url", copy.url, "--yes", "--json")
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)["error"]
    assert "read only replica" in error["message"] and "nothing was done" in error["message"]
    assert error["hint"] == redisio.READONLY_HINT
    assert "point --redis-url at the primary" in error["hint"]


def test_a_guarded_delete_a_replica_refused_says_so(
    replica: tuple[servers.LocalRedis, demo.DemoSummary],
) -> None:
    copy, _ = replica
    client = redisio.connect(copy.url)
    try:
        with pytest.raises(redis.exceptions.ReadOnlyError) as refused:
            client.set("esctl:test:write", "1")
        error = prune.guard_error(client, "{EventStore:X}:1", refused.value)
    finally:
        client.close()
    assert error.hint == redisio.READONLY_HINT
