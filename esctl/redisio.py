"""The one layer through which esctl talks to Redis (single instance or Redis Cluster).

Rules that keep it cluster-ready: keys are found with SCAN per primary node (never KEYS), work
is sent in pipelines (redis-py's cluster pipeline groups commands by node), and server-side
scripts only touch keys of one hash slot. Values come back as bytes; keys are decoded as UTF-8
(``surrogateescape`` so any key round-trips).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
import redis.cluster
import redis.exceptions

from esctl import layout
from esctl.config import redact
from esctl.errors import ConnectionFailed, ServerError

RedisClient = redis.Redis | redis.cluster.RedisCluster
REDIS_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)
"""What redis-py raises: the cluster client's own errors (no node reachable, a slot not
covered during a failover) are not RedisErrors."""
PIPELINE_CHUNK = 1000
"""Commands per pipelined round trip (PERF-NOTES: 200 per round trip costs 20-25%)."""


def key_str(key: bytes | str) -> str:
    return key if isinstance(key, str) else key.decode("utf-8", "surrogateescape")


def is_utf8(key: str) -> bool:
    """Whether a key decoded by :func:`key_str` was valid UTF-8 (no escaped bytes)."""
    if key.isascii():
        return True
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(key: str) -> str:
    """A key for messages, JSON and text columns: bytes that are not UTF-8 as ``\\xNN``."""
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def is_cluster_url(url: str) -> bool:
    return url.startswith(("redis+cluster://", "rediss+cluster://"))


def connect(url: str, *, cluster: bool = False, read_from_replicas: bool = False) -> RedisClient:
    """Open a client and check the server answers. Raises ConnectionFailed (password hidden)."""
    shown = redact(url)
    try:
        client: RedisClient
        if cluster or is_cluster_url(url):
            plain = url.replace("+cluster://", "://", 1)
            # Read-only commands (and their pipelines) go to the replicas, keeping load off the
            # primaries; writes still go to primaries.
            strategy = (
                redis.cluster.LoadBalancingStrategy.ROUND_ROBIN_REPLICAS
                if read_from_replicas
                else None
            )
            client = redis.cluster.RedisCluster.from_url(
                plain, load_balancing_strategy=strategy, socket_timeout=30
            )
        else:
            client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10)
        client.ping()
    except redis.exceptions.AuthenticationError as exc:
        raise ConnectionFailed(
            f"Redis at {shown} refused the credentials: {exc}",
            server=shown,
            hint="check the user and password in --redis-url / ESCTL_REDIS_URL",
        ) from None
    except (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        # the cluster client's "no startup node reachable" (or "not a cluster node")
        redis.exceptions.RedisClusterException,
        OSError,
    ) as exc:
        raise ConnectionFailed(
            f"cannot connect to Redis at {shown}: {redact(str(exc))}",
            server=shown,
            hint="check that Redis is running and --redis-url / ESCTL_REDIS_URL is right",
        ) from None
    except ValueError as exc:
        raise ConnectionFailed(
            f"bad Redis URL {shown}: {exc}",
            server=shown,
            hint="use redis://[user:password@]host:port/db, rediss:// or redis+cluster://",
        ) from None
    return client


def describe(client: RedisClient) -> str:
    """Printable server name (no password)."""
    if isinstance(client, redis.cluster.RedisCluster):
        nodes = client.get_primaries()
        return "cluster " + ",".join(f"{n.host}:{n.port}" for n in nodes[:3])
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix:{kw['path']}"
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def wrap_errors(client: RedisClient, exc: Exception) -> Exception:
    """Turn a redis-py exception into esctl's typed error."""
    server = describe(client)
    if isinstance(
        exc,
        redis.exceptions.ConnectionError
        | redis.exceptions.TimeoutError
        | redis.exceptions.RedisClusterException,
    ):
        return ConnectionFailed(
            f"lost the connection to Redis {server}: {redact(str(exc))}",
            server=server,
            hint="the run kept a consistent state; rerun the same command when Redis is back",
        )
    return ServerError(f"Redis {server} answered with an error: {redact(str(exc))}")


# --- scanning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanPosition:
    """Where a SCAN over all primaries stands: the index of the node (in a stable order) and
    that node's cursor. ``done`` once every node has been scanned. ``epoch`` names the
    server(s) the cursor belongs to (:func:`scan_epoch`): a cursor is meaningless elsewhere."""

    node: int = 0
    cursor: int = 0
    done: bool = False
    epoch: str = ""

    def encode(self) -> str:
        return "done" if self.done else f"{self.epoch}@{self.node}:{self.cursor}"

    @classmethod
    def decode(cls, text: str | None) -> ScanPosition:
        if not text:
            return cls()
        if text == "done":
            return cls(done=True)
        epoch, _, where = text.rpartition("@")
        node, cursor = where.split(":")
        return cls(int(node), int(cursor), epoch=epoch)


def scan_epoch(client: RedisClient) -> str:
    """Identifies the server(s) a SCAN runs on: the ``run_id`` of a single server (new at every
    restart), or a digest of the primaries' run ids and addresses on a cluster (a failover or a
    reshard changes it)."""
    try:
        if isinstance(client, redis.cluster.RedisCluster):
            infos = client.info("server", target_nodes=redis.cluster.RedisCluster.PRIMARIES)
            ids = sorted(f"{node}={info.get('run_id')}" for node, info in infos.items())
            return hashlib.sha1("|".join(ids).encode()).hexdigest()[:16]
        return str(client.info("server")["run_id"])
    except REDIS_ERRORS as exc:
        raise wrap_errors(client, exc) from exc


def _scan_nodes(client: RedisClient) -> list[Any]:
    if isinstance(client, redis.cluster.RedisCluster):
        # Stable order: by the first slot each primary serves.
        primaries = client.get_primaries()
        first_slot: dict[str, int] = {}
        for slot, nodes in client.nodes_manager.slots_cache.items():
            name = nodes[0].name
            first_slot[name] = min(first_slot.get(name, slot), slot)
        return sorted(primaries, key=lambda n: first_slot.get(n.name, 1 << 20))
    return [None]


def scan_pages(
    client: RedisClient,
    match: str,
    *,
    type_: str | None = None,
    count: int = 1000,
    start: ScanPosition | None = None,
) -> Iterator[tuple[ScanPosition, list[str]]]:
    """SCAN every primary for keys matching ``match``. Yields ``(position_after, keys)`` per
    SCAN reply; resuming from a yielded position continues after those keys. A key present for
    the whole scan is returned at least once (SCAN may return it more than once)."""
    position = start or ScanPosition()
    if position.done:
        return
    nodes = _scan_nodes(client)
    for index in range(position.node, len(nodes)):
        cursor = position.cursor if index == position.node else 0
        node = nodes[index]
        while True:
            try:
                if node is None:
                    cursor, keys = client.scan(cursor, match=match, count=count, _type=type_)
                else:
                    # redis-py's cluster SCAN answers (cursors by node name, keys).
                    cursors, keys = client.scan(
                        cursor, match=match, count=count, _type=type_, target_nodes=node
                    )
                    cursor = cursors[node.name] if isinstance(cursors, dict) else cursors
            except REDIS_ERRORS as exc:
                raise wrap_errors(client, exc) from exc
            cursor = int(cursor)
            finished_node = cursor == 0
            if finished_node and index == len(nodes) - 1:
                after = ScanPosition(done=True)
            elif finished_node:
                after = ScanPosition(index + 1, 0)
            else:
                after = ScanPosition(index, cursor)
            yield after, [key_str(k) for k in keys]
            if finished_node:
                break


# --- pipelined reads -----------------------------------------------------------------------


def pipelined(
    client: RedisClient, commands: Sequence[tuple[Any, ...]], chunk: int = PIPELINE_CHUNK
) -> list[Any]:
    """Run ``commands`` (tuples of command name and arguments) in pipelines of ``chunk`` and
    return the raw replies in order. Error replies are returned as exception objects.

    On a single server the commands are packed by hand and the replies read straight from the
    hiredis parser: about twice redis-py's pipeline throughput (PERF-NOTES). A cluster client
    (or TLS) goes through redis-py's pipeline, which groups commands by node; its replies are
    brought back to the raw RESP2 shapes (:func:`_as_resp2`), so callers see one shape."""
    if not commands:
        return []
    try:
        if isinstance(client, redis.Redis):
            fast = _pipelined_packed(client, commands, chunk)
            if fast is not None:
                return fast
        replies: list[Any] = []
        for start in range(0, len(commands), chunk):
            pipe = client.pipeline(transaction=False)
            for command in commands[start : start + chunk]:
                pipe.execute_command(*command)
            replies.extend(_as_resp2(r) for r in pipe.execute(raise_on_error=False))
        return replies
    except REDIS_ERRORS as exc:
        raise wrap_errors(client, exc) from exc


def _as_resp2(reply: Any) -> Any:
    """Undo redis-py's reply callbacks where they change a reply's shape: a dict (HGETALL) back
    to its flat field, value list, a set (SMEMBERS) to a list, and a SCAN-family
    ``(cursor, items)`` pair (HSCAN gives a dict of items) to ``[cursor, flat items]``."""
    if isinstance(reply, dict):
        return [item for pair in reply.items() for item in pair]
    if isinstance(reply, set):
        return list(reply)
    if isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[0], int):
        cursor, items = reply
        return [str(cursor).encode(), _as_resp2(items) if isinstance(items, dict) else items]
    return reply


def pack_commands(commands: Sequence[tuple[Any, ...]]) -> bytes:
    """RESP encoding of ``commands`` in one buffer (hot path: no per-argument calls)."""
    parts: list[bytes] = []
    append = parts.append
    for command in commands:
        append(b"*%d\r\n" % len(command))
        for arg in command:
            if type(arg) is str:
                data = arg.encode("utf-8", "surrogateescape")
            elif type(arg) is bytes:
                data = arg
            else:
                data = str(arg).encode()
            append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _RawConnection:
    """A plain socket to one server speaking RESP2, replies parsed by hiredis: esctl's fast
    path for bulk pipelined reads on a single (non-TLS) server. Measured ~2x redis-py's own
    pipelines per reply (PERF-NOTES), which matters because decoding and reading share one
    Python thread during a migration."""

    def __init__(self, kwargs: dict[str, Any], timeout: float = 30.0) -> None:
        path = kwargs.get("path")
        if path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(path)
        else:
            self.sock = socket.create_connection(
                (kwargs.get("host", "localhost"), kwargs.get("port", 6379)), timeout=timeout
            )
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        hello: list[tuple[Any, ...]] = []
        if kwargs.get("password"):
            user = kwargs.get("username")
            hello.append(
                ("AUTH", user, kwargs["password"]) if user else ("AUTH", kwargs["password"])
            )
        if kwargs.get("db"):
            hello.append(("SELECT", kwargs["db"]))
        for reply in self.execute(hello):
            if isinstance(reply, Exception):
                self.close()
                raise redis.exceptions.AuthenticationError(str(reply))

    def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        if not commands:
            return []
        self.sock.sendall(pack_commands(commands))
        replies: list[Any] = []
        gets = self.reader.gets
        want = len(commands)
        while len(replies) < want:
            reply = gets()
            if reply is False:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise redis.exceptions.ConnectionError("Redis closed the connection")
                self.reader.feed(data)
                continue
            replies.append(reply)
        return replies

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


_raw_connections = threading.local()


def _forget_raw_connections() -> None:
    """In a forked child: the inherited raw sockets are the parent's (a reply meant for one
    process could be read by the other). Close this process's copies; the next read opens its
    own connection. redis-py's pools do the same for themselves."""
    cache = getattr(_raw_connections, "cache", None)
    if cache is not None:
        for conn in list(cache.values()):
            conn.close()
        _raw_connections.cache = weakref.WeakKeyDictionary()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_raw_connections)


def _raw_connection(client: redis.Redis) -> _RawConnection | None:
    """This thread's raw connection to ``client``'s server, or None where the fast path does not
    apply (TLS or another connection class: those use redis-py's pipeline)."""
    pool = client.connection_pool
    if pool.connection_class not in (
        redis.connection.Connection,
        redis.connection.UnixDomainSocketConnection,
    ):
        return None
    cache: weakref.WeakKeyDictionary[redis.Redis, _RawConnection] | None = getattr(
        _raw_connections, "cache", None
    )
    if cache is None:
        cache = weakref.WeakKeyDictionary()
        _raw_connections.cache = cache
    conn = cache.get(client)
    if conn is None:
        try:
            conn = _RawConnection(pool.connection_kwargs)
        except OSError as exc:
            raise redis.exceptions.ConnectionError(str(exc)) from exc
        cache[client] = conn
    return conn


def _pipelined_packed(
    client: redis.Redis, commands: Sequence[tuple[Any, ...]], chunk: int
) -> list[Any] | None:
    conn = _raw_connection(client)
    if conn is None:
        return None
    replies: list[Any] = []
    try:
        for start in range(0, len(commands), chunk):
            replies.extend(conn.execute(commands[start : start + chunk]))
    except BaseException as exc:
        # Unread replies may be left on the socket: never use this connection again.
        conn.close()
        _raw_connections.cache.pop(client, None)
        if isinstance(exc, OSError):
            raise redis.exceptions.ConnectionError(str(exc)) from exc
        raise
    return replies


@dataclass(frozen=True, slots=True)
class StoredPayload:
    commit_id: str
    value: bytes | None
    hash_key: str | None
    """The hash the value was found in (None when missing in both)."""


def fetch_values(
    client: RedisClient, app: str, commit_ids: Sequence[str]
) -> tuple[list[bytes | None], list[str | None]]:
    """Look each commit id up as the library does (partitioned hash, then legacy hash), with
    pipelined round trips: one pass for the likely hash, one more only for the misses.
    Returns the values (None when in neither hash) and the hash each was found in."""
    orders = [layout.event_hash_lookup_order(app, c) for c in commit_ids]
    values: list[bytes | None] = pipelined(
        client, [("HGET", o[0], c) for o, c in zip(orders, commit_ids, strict=True)]
    )
    where: list[str | None] = [o[0] for o in orders]
    misses: list[int] = []
    for i, reply in enumerate(values):
        if reply is None:
            misses.append(i)
        elif isinstance(reply, Exception):
            raise ServerError(f"HGET {orders[i][0]} {commit_ids[i]} failed: {reply}")
    if misses:
        second = pipelined(client, [("HGET", orders[i][1], commit_ids[i]) for i in misses])
        for i, reply in zip(misses, second, strict=True):
            if isinstance(reply, Exception):
                raise ServerError(f"HGET {orders[i][1]} {commit_ids[i]} failed: {reply}")
            values[i] = reply
            where[i] = orders[i][1] if reply is not None else None
    return values, where


def fetch_payloads(client: RedisClient, app: str, commit_ids: Sequence[str]) -> list[StoredPayload]:
    """:func:`fetch_values` as one record per commit id."""
    values, where = fetch_values(client, app, commit_ids)
    return [StoredPayload(c, v, w) for c, v, w in zip(commit_ids, values, where, strict=True)]


def commit_lists(
    client: RedisClient, keys: Sequence[str], starts: Sequence[int] | None = None
) -> list[list[str]]:
    """LRANGE each commit list (from ``starts[i]``, default 0) in pipelined round trips."""
    begin = starts or [0] * len(keys)
    replies = pipelined(client, [("LRANGE", k, s, -1) for k, s in zip(keys, begin, strict=True)])
    out: list[list[str]] = []
    for key, reply in zip(keys, replies, strict=True):
        if isinstance(reply, Exception):
            raise ServerError(
                f"cannot read commit list {key}: {reply}",
                hint="the key is expected to be a Redis list (LAYOUT.md §1)",
            )
        out.append([key_str(c) for c in reply])
    return out


def list_lengths(client: RedisClient, keys: Sequence[str]) -> list[int]:
    replies = pipelined(client, [("LLEN", k) for k in keys])
    out = []
    for key, reply in zip(keys, replies, strict=True):
        if isinstance(reply, Exception):
            raise ServerError(f"LLEN {key} failed: {reply}")
        out.append(int(reply))
    return out


def used_memory(client: RedisClient) -> int:
    """``used_memory`` of INFO memory (summed over a cluster's primaries)."""
    try:
        if isinstance(client, redis.cluster.RedisCluster):
            info: Any = client.info("memory", target_nodes=redis.cluster.RedisCluster.PRIMARIES)
        else:
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


def eval_pipelined(client: RedisClient, script: str, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run a Lua script once per call (``(numkeys, *keys, *args)``), pipelined: EVALSHA, and
    EVAL for the calls a server answered NOSCRIPT (a restarted server, another cluster node).
    Keep each call's keys in one hash slot. Replies in order; errors as exception objects."""
    sha = hashlib.sha1(script.encode()).hexdigest()
    replies = pipelined(client, [("EVALSHA", sha, *call) for call in calls])
    missing = [i for i, r in enumerate(replies) if _is_noscript(r)]
    if missing:
        again = pipelined(client, [("EVAL", script, *calls[i]) for i in missing])
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
            while True:
                started = time.perf_counter()
                try:
                    self.client.ping()
                except REDIS_ERRORS as exc:
                    raise wrap_errors(self.client, exc) from exc
                self.last_latency_ms = (time.perf_counter() - started) * 1000
                if self.last_latency_ms <= self.max_latency_ms:
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
