"""Small operations over the pipelines: list lengths, memory used, server-side scripts
(EVALSHA, EVAL where the script is not loaded, waited out through a failover), pacing by
latency, and chunking."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis
import redis.cluster
import redis.exceptions

from esctl.errors import ConnectionFailed, ServerError
from esctl.redisio import retry as _retry
from esctl.redisio.client import REDIS_ERRORS, RedisClient, is_loading, wrap_errors
from esctl.redisio.pipelines import pipelined
from esctl.redisio.retry import (
    _RETRIED_ERRORS,
    _is_retried_reply,
    read_with_retry,
    refresh_slots,
)


def list_lengths(client: RedisClient, keys: Sequence[str]) -> list[int]:
    """LLEN of each key, pipelined; on a cluster a failover is waited out."""
    replies = pipelined(client, [("LLEN", k) for k in keys], retry_reads=True)
    out = []
    for key, reply in zip(keys, replies, strict=True):
        if isinstance(reply, Exception):
            raise ServerError(f"LLEN {key} failed: {reply}")
        out.append(int(reply))
    return out


def used_memory(client: RedisClient) -> int:
    """``used_memory`` of INFO memory (summed over a cluster's primaries)."""
    info: Any
    if isinstance(client, redis.cluster.RedisCluster):
        cluster = client
        info = read_with_retry(
            cluster,
            lambda: cluster.info("memory", target_nodes=redis.cluster.RedisCluster.PRIMARIES),
        )
    else:
        try:
            info = client.info("memory")
        except REDIS_ERRORS as exc:
            raise wrap_errors(client, exc) from exc
    if "used_memory" in info:
        return int(info["used_memory"])
    return sum(int(v["used_memory"]) for v in info.values() if isinstance(v, dict))


def used_memory_or_none(client: RedisClient) -> int | None:
    """:func:`used_memory`, or None where INFO is not allowed (a proxy, an ACL)."""
    try:
        return used_memory(client)
    except ServerError:
        return None


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError) or (
        isinstance(reply, Exception) and "NOSCRIPT" in str(reply)
    )


def eval_pipelined(
    client: RedisClient,
    script: str,
    calls: Sequence[tuple[Any, ...]],
    *,
    until_failure: bool = False,
    refuse_denied: bool | None = None,
) -> list[Any]:
    """Run a Lua script once per call (``(numkeys, *keys, *args)``), pipelined: EVALSHA, and
    EVAL for the calls a server answered NOSCRIPT (a restarted server, another cluster node).
    Keep each call's keys in one hash slot. Replies in order; errors as exception objects.

    Never retried after a lost connection (scripts write, and whether the lost node ran one is
    unknown): the caller sees ConnectionFailed. But a call the server *answered* with
    TRYAGAIN, CLUSTERDOWN, LOADING or MASTERDOWN was not run (a script whose keys are split by
    a slot half-way through a reshard gets TRYAGAIN until the slot has moved): those calls,
    and only those, are sent again, a short wait apart, for up to :data:`READ_RETRY_SECONDS`;
    after that their error replies are returned as they are. A single server answering
    LOADING (it is loading its data set) is waited for instead, up to
    :data:`~esctl.redisio.retry.LOADING_WAIT_SECONDS`, as :func:`pipelined` waits for one; so is
    a cluster node loading its data set (the calls answered LOADING or CLUSTERDOWN meanwhile).

    ``until_failure``: for a caller that stops at the first call that fails and counts what
    the others did. A NOPERM reply is returned like any other error (not raised), and once a
    call failed (an error reply but NOSCRIPT and those retried) nothing more is sent: the
    calls answered NOSCRIPT or TRYAGAIN are returned with those replies (they did not run).
    Give it one round trip of calls (:data:`PIPELINE_CHUNK` at most) at a time, and read the
    replies before sending more.

    ``refuse_denied``: whether a NOPERM reply raises PermissionDenied once every reply is read
    (:func:`pipelined`); by default only without ``until_failure``. False with
    ``until_failure`` False: every call is still carried through (NOSCRIPT, waits) to its own
    answer, and NOPERM replies are returned, for a caller that counts what the others did."""
    sha = hashlib.sha1(script.encode()).hexdigest()
    refuse = not until_failure if refuse_denied is None else refuse_denied
    replies = _eval_once(client, script, sha, calls, until_failure, refuse)
    deadline = time.monotonic() + _retry.READ_RETRY_SECONDS
    delay = 0.1
    while True:
        pending = [i for i, r in enumerate(replies) if _is_retried_reply(r)]
        now = time.monotonic()
        if not pending or now >= deadline or (until_failure and _failed(replies)):
            return replies
        try:
            waited = _waited_for_loading(client, [replies[i] for i in pending])
        except ConnectionFailed:
            return replies  # still loading: the calls did not run, as their replies say
        if waited:
            deadline = time.monotonic() + _retry.READ_RETRY_SECONDS
        else:
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 1.0)
        if isinstance(client, redis.cluster.RedisCluster):
            refresh_slots(client)
        again = _eval_once(client, script, sha, [calls[i] for i in pending], until_failure, refuse)
        for i, reply in zip(pending, again, strict=True):
            replies[i] = reply


def _waited_for_loading(client: RedisClient, pending: Sequence[Any]) -> bool:
    """Whether the server (a single one that answered LOADING), or a node of the cluster (that
    answered LOADING or CLUSTERDOWN, :func:`~esctl.redisio.retry.may_be_loading`), was loading
    its data set and has loaded it since (waited for); False when nothing is loading.
    ConnectionFailed when it still is after the wait."""
    if isinstance(client, redis.cluster.RedisCluster):
        return any(_retry.may_be_loading(r) for r in pending) and _retry.wait_for_loading_nodes(
            client, after=_retry.KEPT
        )
    if not any(is_loading(r) for r in pending):
        return False
    _retry.wait_while_loading(client, after=_retry.KEPT)
    return True


def _failed(replies: Sequence[Any]) -> bool:
    """Whether a call failed: an error reply other than NOSCRIPT and those waited out."""
    return any(
        isinstance(r, Exception) and not _is_noscript(r) and not _is_retried_reply(r)
        for r in replies
    )


def _eval_once(
    client: RedisClient,
    script: str,
    sha: str,
    calls: Sequence[tuple[Any, ...]],
    until_failure: bool = False,
    refuse: bool = True,
) -> list[Any]:
    """One pipelined EVALSHA per call, then EVAL for those the server answered NOSCRIPT
    (``until_failure``: not after a call failed); ``refuse``: a NOPERM reply raises."""
    replies = pipelined(
        client,
        [("EVALSHA", sha, *call) for call in calls],
        retry_reads=False,
        refuse_denied=refuse,
    )
    if until_failure and _failed(replies):
        return replies
    missing = [i for i, r in enumerate(replies) if _is_noscript(r)]
    if missing:
        again = pipelined(
            client,
            [("EVAL", script, *calls[i]) for i in missing],
            retry_reads=False,
            refuse_denied=refuse,
        )
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    return replies


class LatencyPacer:
    """Paces a loop: at most ``rate`` items per second, and (adaptively) slower while Redis
    round trips take longer than ``max_latency_ms``. ``wait(n)`` is called before n items."""

    def __init__(
        self, client: RedisClient, rate: float | None = None, max_latency_ms: float | None = None
    ) -> None:
        self.client = client
        self.rate = rate
        self.max_latency_ms = max_latency_ms
        self._next_at = time.monotonic()
        self._backoff = 0.0
        self.last_latency_ms = 0.0

    def wait(self, items: int) -> None:
        if self.rate:
            now = time.monotonic()
            if self._next_at > now:
                time.sleep(self._next_at - now)
            self._next_at = max(self._next_at, now) + items / self.rate
        if self.max_latency_ms:
            failing_since: float | None = None
            while True:
                started = time.perf_counter()
                try:
                    self.client.ping()
                    answered = True
                except REDIS_ERRORS as exc:
                    # A cluster failing over answers again within READ_RETRY_SECONDS: until
                    # then it counts as slow (a ping changes nothing, so retrying is safe). A
                    # node loading its data set is waited for, then it starts over.
                    if (
                        isinstance(self.client, redis.cluster.RedisCluster)
                        and _retry.may_be_loading(exc)
                        and _retry.wait_for_loading_nodes(self.client, after=_retry.KEPT)
                    ):
                        failing_since = None
                        continue
                    failing_since = failing_since or time.monotonic()
                    if (
                        not isinstance(self.client, redis.cluster.RedisCluster)
                        or not isinstance(exc, _RETRIED_ERRORS)
                        or time.monotonic() - failing_since > _retry.READ_RETRY_SECONDS
                    ):
                        raise wrap_errors(self.client, exc) from exc
                    refresh_slots(self.client)
                    answered = False
                if answered:
                    self.last_latency_ms = (time.perf_counter() - started) * 1000
                if answered and self.last_latency_ms <= self.max_latency_ms:
                    self._backoff = max(0.0, self._backoff / 2 - 0.01)
                    break
                self._backoff = min(5.0, max(0.05, self._backoff * 2))
                time.sleep(self._backoff)
            if self._backoff:
                time.sleep(self._backoff)


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
