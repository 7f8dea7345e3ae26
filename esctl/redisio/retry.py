"""Waiting out a cluster's failover: which errors and replies mean "try again shortly", the
slot map refreshed between tries, and how long reads keep trying (:data:`READ_RETRY_SECONDS`,
read at call time: set it here). And waiting for a server that is loading its data set
(:func:`wait_while_loading`, up to :data:`LOADING_WAIT_SECONDS`, announced through
:data:`loading_notice`: set them here)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import redis.cluster
import redis.exceptions

from esctl.errors import ConnectionFailed
from esctl.redisio.client import (
    REDIS_ERRORS,
    RedisClient,
    describe,
    is_denied,
    is_loading,
    loading_error,
    wrap_errors,
)

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
    # (redis-py's BusyLoadingError has lost its LOADING word: is_loading knows it)
    return isinstance(reply, Exception) and (
        str(reply).startswith(_RETRIED_REPLIES) or is_loading(reply)
    )


def refresh_slots(client: redis.cluster.RedisCluster) -> bool:
    """Ask the cluster for its slot map again (after MOVED, a lost node, a failover). False
    when no node answered: the caller's next attempt finds out what is wrong."""
    try:
        client.nodes_manager.initialize()
    except REDIS_ERRORS:
        return False
    return True


# --- a server loading its data set ------------------------------------------------------------

LOADING_WAIT_SECONDS = 60.0
"""How long a command waits for a single server that answers LOADING (restarted and reading
its RDB/AOF file, or a replica loading its primary's data) before ConnectionFailed: when it
connects, and mid-run for read-only pipelined calls and SCAN. The CLI sets it from
``ESCTL_REDIS_LOADING_WAIT``."""
LOADING_POLL_SECONDS = 0.2
"""How often a wait asks the server (``INFO persistence``) whether it is done."""
LOADING_NOTICE_SECONDS = 10.0
"""How often a wait says again how far the server got."""
loading_notice: Callable[[str], None] | None = None
"""Where a wait for a loading server is announced (the CLI: a line on stderr); None: silently."""
_announcing = threading.Lock()
"""Held by the wait that announces: threads waiting at the same time wait silently."""


@dataclass(frozen=True)
class Loading:
    """How far a server loading its data set got (None: it does not say: INFO refused)."""

    percent: float | None = None
    eta_seconds: int | None = None

    def describe(self) -> str:
        """``42%, about 12 s left``, ``42%`` or ``''`` (Redis's estimate of the time left
        only once it has loaded something to base it on)."""
        if self.percent is None:
            return ""
        text = f"{self.percent:.0f}%"
        if self.percent >= 1 and self.eta_seconds is not None and 0 < self.eta_seconds < 86400:
            text += f", about {self.eta_seconds} s left"
        return text


def loading_state(client: redis.Redis) -> Loading | None:
    """How far ``client``'s server is in loading its data set, or None when it serves commands.
    From ``INFO persistence`` (which a loading server answers); a user the ACL refuses INFO
    is answered by PING (LOADING or not). A lost connection raises ConnectionFailed."""
    try:
        try:
            info = client.info("persistence")
        except redis.exceptions.ResponseError as exc:
            if not is_denied(exc):
                raise
            client.ping()
            return None
    except redis.exceptions.BusyLoadingError:
        return Loading()
    except REDIS_ERRORS as exc:
        raise wrap_errors(client, exc) from exc
    if str(info.get("loading", "0")) != "1":
        return None
    return Loading(
        _number(info.get("loading_loaded_perc"), float),
        _number(info.get("loading_eta_seconds"), int),
    )


def _number(value: Any, kind: Callable[[Any], Any]) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def wait_while_loading(client: RedisClient, *, after: str, bound: float | None = None) -> None:
    """Return once ``client``'s server has loaded its data set (it answered LOADING), waiting up
    to ``bound`` seconds (:data:`LOADING_WAIT_SECONDS`), saying so through
    :data:`loading_notice` when it starts, every :data:`LOADING_NOTICE_SECONDS` and when the
    server is done (one thread says it when several wait). Past the bound ConnectionFailed
    naming the server and how far it got; ``after`` says what became of the command's work
    (``nothing was done``). A cluster is not waited for (its failover waits apply). Ctrl-C
    and SIGTERM stop the wait (KeyboardInterrupt)."""
    if not isinstance(client, redis.Redis):
        raise loading_error(client, after=after)
    limit = LOADING_WAIT_SECONDS if bound is None else bound
    server = describe(client)
    started = time.monotonic()
    announces = _announcing.acquire(blocking=False)
    announced: float | None = None
    try:
        while True:
            state = loading_state(client)
            now = time.monotonic()
            if state is None:
                if announced is not None and loading_notice is not None:
                    loading_notice(
                        f"Redis {server} has loaded its data set (waited "
                        f"{now - started:.0f} s); going on"
                    )
                return
            if limit <= 0:
                raise loading_error(client, after=after, progress=state.describe())
            if (
                announces
                and loading_notice is not None
                and (announced is None or now - announced >= LOADING_NOTICE_SECONDS)
            ):
                how_far = f" ({state.describe()})" if state.describe() else ""
                loading_notice(
                    f"Redis {server} is loading its data set into memory{how_far}; waiting "
                    f"for it (up to {limit:.0f} s)…"
                )
                announced = now
            if now - started >= limit:
                raise loading_error(
                    client, after=after, progress=state.describe(), waited=now - started
                )
            time.sleep(max(0.0, min(LOADING_POLL_SECONDS, limit - (now - started))))
    finally:
        if announces:
            _announcing.release()


def wait_for_the_same_server(client: redis.Redis, since: float, *, after: str) -> None:
    """Wait while ``client``'s server loads its data set (:func:`wait_while_loading`), then
    make sure it is the process that served the caller since ``since`` (``time.monotonic()``):
    one reloading its data in place (a replica re-syncing) still serves a SCAN cursor it
    handed out; a restarted one does not (its keys hash anew), which is ConnectionFailed."""
    wait_while_loading(client, after=after)
    try:
        uptime = int(client.info("server").get("uptime_in_seconds", 0))
    except REDIS_ERRORS as exc:
        raise wrap_errors(client, exc) from exc
    if uptime <= time.monotonic() - since + 1:
        server = describe(client)
        raise ConnectionFailed(
            f"Redis {server} was restarted during the run (up {uptime} s): where the run "
            f"stood in its keys means nothing to the new process; {after}",
            server=server,
            hint="rerun the same command",
        )


def loaded_again(client: RedisClient, exc: BaseException) -> bool:
    """Whether a call that failed with ``exc`` can be sent again: ``exc`` is a single server's
    LOADING answer (the call did not run) and the server has loaded its data set since,
    waited for as :func:`wait_while_loading` waits. False for any other error, and when the
    wait ran out or the connection was lost meanwhile: the caller's own handling of the
    failed call applies."""
    if not (is_loading(exc) and isinstance(client, redis.Redis)):
        return False
    try:
        wait_while_loading(client, after="")
    except ConnectionFailed:
        return False
    return True


def after_loading(client: RedisClient, call: Callable[[], T]) -> T:
    """``call()`` (one command or script call on ``client``), sent again while it is answered
    LOADING and the server then loads its data set in time (:func:`loaded_again`); else what
    it raised, as it raised it."""
    while True:
        try:
            return call()
        except REDIS_ERRORS as exc:
            if not loaded_again(client, exc):
                raise
