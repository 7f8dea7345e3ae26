"""Waiting out a cluster's failover: which errors and replies mean "try again shortly", the
slot map refreshed between tries, and how long reads keep trying (:data:`READ_RETRY_SECONDS`,
read at call time: set it here). And waiting for a server, or a cluster node, that is loading
its data set (:func:`wait_while_loading`, up to :data:`LOADING_WAIT_SECONDS`, announced
through :data:`loading_notice`: set them here): on a cluster the tries above wait for such a
node instead of counting it as a failover (:func:`wait_for_loading_nodes`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import redis.cluster
import redis.exceptions

from esctl.errors import ConnectionFailed, EsctlError
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
KEPT = "the run kept a consistent state"
"""What a mid-run failure says of the run's work (the ``after`` of the errors below)."""
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
    it is failing over, for up to :data:`READ_RETRY_SECONDS`; a node loading its data set is
    waited for instead (:func:`wait_for_loading_nodes`), then the retries start over. Only for
    reads: running ``read`` twice must do no harm."""
    deadline = time.monotonic() + READ_RETRY_SECONDS
    delay = 0.1
    while True:
        try:
            return read()
        except _RETRIED_ERRORS as exc:
            if isinstance(exc, redis.exceptions.AuthenticationError):
                raise wrap_errors(client, exc) from exc
            if may_be_loading(exc) and wait_for_loading_nodes(client, after=KEPT):
                deadline, delay = time.monotonic() + READ_RETRY_SECONDS, 0.1
                refresh_slots(client)
                continue
            now = time.monotonic()
            if now >= deadline:
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
    cause: object = None,
    after: str = "",
) -> tuple[float, float]:
    """Sleep ``delay`` (at most until ``deadline``), refresh the slot map, and return the
    deadline and the next, doubled delay (at most 1 s); ConnectionFailed once ``deadline`` has
    passed: Redis did not answer ``what`` (``reads``, ``HSCAN``) in time, because of ``problem``;
    ``after`` ends the hint (what the rerun can rely on). When ``cause`` (the error or error
    reply) is what a node loading its data set makes the cluster answer (:func:`may_be_loading`)
    and one is, it is waited for instead (:func:`wait_for_loading_nodes`), and the deadline
    returned is a new one."""
    if cause is not None and may_be_loading(cause) and wait_for_loading_nodes(client, after=KEPT):
        refresh_slots(client)
        return time.monotonic() + READ_RETRY_SECONDS, 0.1
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
    return deadline, min(delay * 2, 1.0)


def may_be_loading(cause: object) -> bool:
    """Whether an error, an error reply or its text is what a cluster answers while one of its
    nodes loads its data set: LOADING from that node for a command without a key, CLUSTERDOWN
    for one with a key (Redis checks the cluster's state before whether it is loading, and a
    restarted primary keeps its cluster state failed until it has loaded), and CLUSTERDOWN from
    every node once the others have marked it failing (it takes no cluster-bus connection while
    it loads)."""
    if isinstance(cause, redis.exceptions.ClusterDownError) or is_loading(cause):
        return True
    text = str(cause) if isinstance(cause, Exception | str) else ""
    return text.startswith("CLUSTERDOWN") or "cluster is down" in text


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
"""How long a command waits for a server (or the nodes of a cluster) loading its data set
(restarted and reading its RDB/AOF file, or a replica loading its primary's data) before
ConnectionFailed: when it connects, and mid-run for read-only pipelined calls and SCAN. The CLI
sets it from ``ESCTL_REDIS_LOADING_WAIT``."""
REJOIN_SECONDS = 30.0
"""How long the cluster is given to serve every slot again (``cluster_state:ok`` on every node
asked) once a node has loaded its data set, before the command goes on anyway and meets
whatever the cluster answers: a restarted primary answers CLUSTERDOWN for about 2 s more, and
the others keep it marked failing, answering CLUSTERDOWN, up to twice ``cluster-node-timeout``
(15 s by default) after they marked it."""
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


def wait_while_loading(
    client: RedisClient, *, after: str, bound: float | None = None, server: str | None = None
) -> None:
    """Return once ``client``'s server has loaded its data set (it answered LOADING), waiting up
    to ``bound`` seconds (:data:`LOADING_WAIT_SECONDS`), saying so through
    :data:`loading_notice` when it starts, every :data:`LOADING_NOTICE_SECONDS` and when the
    server is done (one thread says it when several wait). Past the bound ConnectionFailed
    naming the server (``server``, by default :func:`describe`'s name) and how far it got;
    ``after`` says what became of the command's work (``nothing was done``). A cluster: its
    nodes that are loading, each in turn (:func:`wait_for_loading_nodes`). Ctrl-C and SIGTERM
    stop the wait (KeyboardInterrupt)."""
    if isinstance(client, redis.cluster.RedisCluster):
        wait_for_loading_nodes(client, after=after, bound=bound)
        return
    limit = LOADING_WAIT_SECONDS if bound is None else bound
    server = server or describe(client)
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
                raise loading_error(client, after=after, progress=state.describe(), server=server)
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
                    client,
                    after=after,
                    progress=state.describe(),
                    waited=now - started,
                    server=server,
                )
            time.sleep(max(0.0, min(LOADING_POLL_SECONDS, limit - (now - started))))
    finally:
        if announces:
            _announcing.release()


def wait_for_loading_nodes(
    client: redis.cluster.RedisCluster, *, after: str, bound: float | None = None
) -> bool:
    """Wait while nodes of the cluster ``client`` is served by load their data set: its
    primaries, and its replicas when it reads from them, are asked (``INFO persistence``, over
    the client's own connection to each), and one that is loading is waited for as
    :func:`wait_while_loading` waits for a single server, named as ``cluster node HOST:PORT``,
    then the cluster is given up to :data:`REJOIN_SECONDS` to serve every slot again; then
    they are asked again. ``bound`` (:data:`LOADING_WAIT_SECONDS`) is for all of them
    together; past it ConnectionFailed naming the node. True when a node was waited for, False
    when none is loading (a node that does not answer is left to the failover waits)."""
    limit = LOADING_WAIT_SECONDS if bound is None else bound
    started = time.monotonic()
    waited = False
    while (loading := _loading_node(client)) is not None:
        node, plain = loading
        left = limit - (time.monotonic() - started)
        waited = True
        try:
            wait_while_loading(
                plain,
                after=after,
                bound=max(left, LOADING_POLL_SECONDS) if limit > 0 else 0.0,
                server=f"cluster node {node.name}",
            )
        except ConnectionFailed:
            if _is_loading(plain):
                raise  # past the bound
            return waited  # lost meanwhile: the failover waits take it from here
        _wait_to_rejoin(client)
    return waited


def _loading_node(
    client: redis.cluster.RedisCluster,
) -> tuple[redis.cluster.ClusterNode, redis.Redis] | None:
    """The first node of those :func:`wait_for_loading_nodes` asks that says it is loading its
    data set, with the client's connection to it; None when none does."""
    for node in _asked(client):
        plain = client.get_redis_connection(node)
        if _is_loading(plain):
            return node, plain
    return None


def _asked(client: redis.cluster.RedisCluster) -> list[redis.cluster.ClusterNode]:
    """The nodes ``client`` sends commands to: its primaries, and its replicas when it reads
    from them."""
    nodes = list(client.get_primaries())
    if client.read_from_replicas or client.load_balancing_strategy is not None:
        nodes += client.get_replicas()
    return nodes


def _is_loading(plain: redis.Redis) -> bool:
    """Whether the node ``plain`` reaches says it is loading its data set (False when it does
    not answer, a failover's to wait out, or refuses to say)."""
    try:
        return loading_state(plain) is not None
    except EsctlError:
        return False


def _wait_to_rejoin(client: redis.cluster.RedisCluster) -> None:
    """Return once every node :func:`wait_for_loading_nodes` asks says ``cluster_state:ok``
    (after a node has loaded its data set the cluster answers CLUSTERDOWN for a while), after
    :data:`REJOIN_SECONDS` at most; a node that does not answer CLUSTER INFO is not waited
    for."""
    started = time.monotonic()
    waiting = _asked(client)
    announced = False
    while True:
        waiting = [node for node in waiting if not _serves(client.get_redis_connection(node))]
        now = time.monotonic()
        if not waiting or now - started >= REJOIN_SECONDS:
            return
        if not announced and now - started >= LOADING_NOTICE_SECONDS:
            announced = True
            if loading_notice is not None and _announcing.acquire(blocking=False):
                try:  # (a thread waiting for a loading node meanwhile says its own)
                    loading_notice(
                        f"Redis {describe(client)} does not serve every slot yet "
                        f"(cluster_state is not ok on {', '.join(n.name for n in waiting[:3])});"
                        f" waiting for it (up to {REJOIN_SECONDS:.0f} s)…"
                    )
                finally:
                    _announcing.release()
        time.sleep(LOADING_POLL_SECONDS)


def _serves(plain: redis.Redis) -> bool:
    """Whether the cluster node ``plain`` reaches says ``cluster_state:ok`` (True when it does
    not answer CLUSTER INFO: nothing to wait for)."""
    try:
        return bool(plain.cluster("info").get("cluster_state") == "ok")
    except REDIS_ERRORS:
        return True


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
    waited for as :func:`wait_while_loading` waits; on a cluster, the LOADING or CLUSTERDOWN
    answer of a cluster with a node loading its data set (:func:`may_be_loading`; the call did
    not run either) and that node has loaded since (:func:`wait_for_loading_nodes`). False for
    any other error, and when the wait ran out or the connection was lost meanwhile: the
    caller's own handling of the failed call applies."""
    if isinstance(client, redis.cluster.RedisCluster):
        if not may_be_loading(exc):
            return False
        try:
            return wait_for_loading_nodes(client, after="")
        except ConnectionFailed:
            return False
    if not (is_loading(exc) and isinstance(client, redis.Redis)):
        return False
    try:
        wait_while_loading(client, after="")
    except ConnectionFailed:
        return False
    return True


def after_loading(client: RedisClient, call: Callable[[], T]) -> T:
    """``call()`` (one command or script call on ``client``), sent again while it is answered
    LOADING (on a cluster: LOADING or CLUSTERDOWN while a node loads) and the server then loads
    its data set in time (:func:`loaded_again`); else what it raised, as it raised it."""
    while True:
        try:
            return call()
        except REDIS_ERRORS as exc:
            if not loaded_again(client, exc):
                raise
