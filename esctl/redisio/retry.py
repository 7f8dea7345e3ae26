"""Waiting out a cluster's failover: which errors and replies mean "try again shortly", the
slot map refreshed between tries, and how long reads keep trying (:data:`READ_RETRY_SECONDS`,
read at call time: set it here)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import redis.cluster
import redis.exceptions

from esctl.errors import ConnectionFailed
from esctl.redisio.client import REDIS_ERRORS, describe, wrap_errors

T = TypeVar("T")
READ_RETRY_SECONDS = 30.0
"""How long a read-only pipelined call (or a SCAN) on a cluster keeps retrying through a
failover: a replica is promoted after ``cluster-node-timeout`` (15 s by default) plus an
election of about a second."""
_RETRIED_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterException,
)
"""What a failover looks like to redis-py: a node gone, a slot not served for a moment, the
cluster briefly down, a node still loading its data."""
_RETRIED_REPLIES = ("CLUSTERDOWN", "TRYAGAIN", "LOADING", "MASTERDOWN")
"""Error replies (first word) that a failover or a reshard answers for a while, then stops."""


def read_with_retry(client: redis.cluster.RedisCluster, read: Callable[[], T]) -> T:
    """``read()``, called again (slot map refreshed, short waits) while the cluster looks like
    it is failing over, for up to :data:`READ_RETRY_SECONDS`. Only for reads: running ``read``
    twice must do no harm."""
    deadline = time.monotonic() + READ_RETRY_SECONDS
    delay = 0.1
    while True:
        try:
            return read()
        except _RETRIED_ERRORS as exc:
            now = time.monotonic()
            if now >= deadline or isinstance(exc, redis.exceptions.AuthenticationError):
                raise wrap_errors(client, exc) from exc
        except REDIS_ERRORS as exc:
            raise wrap_errors(client, exc) from exc
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 1.0)
        refresh_slots(client)


def wait_to_retry(
    client: redis.cluster.RedisCluster,
    deadline: float,
    delay: float,
    *,
    what: str,
    problem: str,
    after: str = "",
) -> float:
    """Sleep ``delay`` (at most until ``deadline``), refresh the slot map, and return the next,
    doubled delay (at most 1 s); ConnectionFailed once ``deadline`` has passed: Redis did not
    answer ``what`` (``reads``, ``HSCAN``) in time, because of ``problem``; ``after`` ends the
    hint (what the rerun can rely on)."""
    now = time.monotonic()
    if now >= deadline:
        server = describe(client)
        raise ConnectionFailed(
            f"Redis {server} did not answer {what} for {READ_RETRY_SECONDS:.0f} s (a failover "
            f"or a reshard that did not settle?): {problem}",
            server=server,
            hint="check `redis-cli -c -h HOST -p PORT cluster info` shows cluster_state:ok, "
            f"then rerun the same command{after}",
        )
    time.sleep(min(delay, deadline - now))
    refresh_slots(client)
    return min(delay * 2, 1.0)


def _is_retried_reply(reply: Any) -> bool:
    return isinstance(reply, Exception) and str(reply).startswith(_RETRIED_REPLIES)


def refresh_slots(client: redis.cluster.RedisCluster) -> bool:
    """Ask the cluster for its slot map again (after MOVED, a lost node, a failover). False
    when no node answered: the caller's next attempt finds out what is wrong."""
    try:
        client.nodes_manager.initialize()
    except REDIS_ERRORS:
        return False
    return True
