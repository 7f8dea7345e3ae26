"""Pipelined commands: on one server through the raw connection, on a cluster grouped by the
node serving each key's slot (TLS included), following MOVED/ASK and waiting out a failover
for reads.

``BY_NODE_PIPELINES`` is read at call time: set it here."""

from __future__ import annotations

import time
import weakref
from binascii import crc_hqx
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import hiredis
import redis
import redis.cluster
import redis.exceptions
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from esctl.config import redact
from esctl.errors import ConnectionFailed, ServerError
from esctl.inflight import Pace
from esctl.redisio import resp as _resp
from esctl.redisio import retry as _retry
from esctl.redisio.client import (
    PIPELINE_CHUNK,
    REDIS_ERRORS,
    RedisClient,
    describe,
    is_denied,
    is_loading,
    key_str,
    permission_denied,
    wrap_errors,
)
from esctl.redisio.resp import (
    _as_resp2,
    _conversation,
    _open_raw_connection,
    _pipelined_packed,
    _raw_connection,
    _raw_connections,
    _RawConnection,
)
from esctl.redisio.retry import (
    _RETRIED_ERRORS,
    _is_retried_reply,
    refresh_slots,
)
from esctl.units import counted

READ_ONLY_COMMANDS = frozenset(
    {
        "EXISTS", "GET", "HEXISTS", "HGET", "HGETALL", "HKEYS", "HLEN", "HMGET", "HSCAN",
        "HSTRLEN", "HVALS", "LINDEX", "LLEN", "LPOS", "LRANGE", "MEMORY USAGE", "PTTL",
        "SCARD", "SISMEMBER", "SMEMBERS", "SMISMEMBER", "SSCAN", "STRLEN", "TTL", "TYPE",
        "ZCARD", "ZRANGE", "ZSCORE",
    }
)  # fmt: skip
"""Commands that change nothing. On a cluster, a pipelined call made of these only is re-run
after a lost node or a failover (see :func:`pipelined`), and with ``--read-from-replicas`` they
are the ones sent to replicas."""
REDIRECT_ROUNDS = 5
"""MOVED/ASK redirections followed per command before giving up: one is normal during a
reshard, two when a slot moves twice; more means the slot map is not settling."""
BY_NODE_PIPELINES = True
"""False sends every cluster pipeline through redis-py's ClusterPipeline, as before the
per-node path existed (bench/bench_cluster.py compares the two)."""
_KEY_AT_1 = frozenset(
    {
        "APPEND", "DECR", "DECRBY", "EXPIRE", "GET", "GETDEL", "GETSET", "HDEL", "HEXISTS",
        "HGET", "HGETALL", "HINCRBY", "HKEYS", "HLEN", "HMGET", "HMSET", "HSCAN", "HSET",
        "HSETNX", "HSTRLEN", "HVALS", "INCR", "INCRBY", "LINDEX", "LINSERT", "LLEN", "LPOP",
        "LPOS", "LPUSH", "LRANGE", "LREM", "LSET", "LTRIM", "PERSIST", "PEXPIRE", "PTTL",
        "RPOP", "RPUSH", "SADD", "SCARD", "SET", "SETEX", "SETNX", "SISMEMBER", "SMEMBERS",
        "SMISMEMBER", "SREM", "SSCAN", "STRLEN", "TTL", "TYPE", "ZADD", "ZCARD", "ZRANGE",
        "ZREM", "ZSCORE",
    }
)  # fmt: skip
"""Commands whose one key is argv[1]: the ones the per-node cluster path routes itself."""
_ALL_ARGS_KEYS = frozenset({"DEL", "EXISTS", "TOUCH", "UNLINK"})
_TWO_KEYS = frozenset({"LMOVE", "RPOPLPUSH", "SMOVE"})
_SCRIPTS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO"})


def pipelined(
    client: RedisClient,
    commands: Sequence[tuple[Any, ...]],
    chunk: int = PIPELINE_CHUNK,
    *,
    retry_reads: bool | None = None,
    refuse_denied: bool = True,
) -> list[Any]:
    """Run ``commands`` (tuples of command name and arguments) in pipelines of ``chunk`` and
    return the raw replies in order. Error replies are returned as exception objects; a
    NOPERM reply raises PermissionDenied once every reply is read, unless ``refuse_denied`` is
    False (a caller that counts what its other commands did first).

    On a single server the commands are packed by hand and the replies read straight from the
    hiredis parser: about twice redis-py's pipeline throughput (measured). On a cluster the
    same is done per node (:func:`_pipelined_by_node`): commands are grouped by the node that
    serves their key's slot, sent to every node, then the replies read, and MOVED/ASK
    redirections during a reshard followed. Commands whose keys the module cannot place and
    other connection classes go through redis-py's pipeline, whose replies are brought back
    to the raw RESP2 shapes (:func:`_as_resp2`), so callers see one shape.

    ``retry_reads``: on a cluster, a call that fails on a lost node, a failover or a reshard's
    transient error replies is re-run (slot map refreshed, short waits) for up to
    :data:`READ_RETRY_SECONDS` before ConnectionFailed; a node loading its data set (LOADING,
    or CLUSTERDOWN while it loads) is waited for as a single server is (below), then the
    retries start over. That is only harmless when the commands
    change nothing, so the default (None) retries exactly the calls made of
    :data:`READ_ONLY_COMMANDS`; False never retries; True is the caller's promise that running
    its commands twice does no harm. A call with any writing command fails fast, as on a single
    server, where nothing else is retried: a restarted server is the operator's to look at.

    On a single server, the commands of such a read call that the server answered LOADING
    (it is loading its data set: a replica re-syncing from its primary, a restart) did not
    run: they are sent again once it is done, waited for up to
    :data:`~esctl.redisio.retry.LOADING_WAIT_SECONDS` (:func:`~esctl.redisio.retry.wait_while_loading`),
    then ConnectionFailed. A writing call gets its LOADING replies as they are."""
    if not commands:
        return []
    if isinstance(client, redis.cluster.RedisCluster):
        retry = is_read_only(commands) if retry_reads is None else retry_reads
        replies = _pipelined_cluster(client, commands, chunk, retry)
    else:
        try:
            replies = _pipelined_single(client, commands, chunk)
            if _loading_replies(replies) and (
                is_read_only(commands) if retry_reads is None else retry_reads
            ):
                replies = _after_loading(client, commands, replies, chunk)
        except REDIS_ERRORS as exc:
            raise wrap_errors(client, exc) from exc
    if refuse_denied:
        _refuse_denied(client, commands, replies)
    return replies


def _pipelined_single(
    client: redis.Redis, commands: Sequence[tuple[Any, ...]], chunk: int
) -> list[Any]:
    fast = _pipelined_packed(client, commands, chunk)
    return fast if fast is not None else _pipelined_redis_py(client, commands, chunk)


def _loading_replies(replies: Sequence[Any]) -> list[int]:
    """The positions of the replies that are a LOADING answer."""
    return [
        i
        for i, reply in enumerate(replies)
        if type(reply) is not bytes and isinstance(reply, Exception) and is_loading(reply)
    ]


def _after_loading(
    client: redis.Redis, commands: Sequence[tuple[Any, ...]], replies: list[Any], chunk: int
) -> list[Any]:
    """``replies`` with those the server answered LOADING replaced by the answers of their
    commands sent again once it has loaded its data set (ConnectionFailed when it takes
    longer than :data:`~esctl.redisio.retry.LOADING_WAIT_SECONDS`)."""
    while pending := _loading_replies(replies):
        _retry.wait_while_loading(client, after="the run kept a consistent state")
        again = _pipelined_single(client, [commands[i] for i in pending], chunk)
        for i, reply in zip(pending, again, strict=True):
            replies[i] = reply
    return replies


PROBES = frozenset({"CONFIG", "LATENCY", "SLOWLOG", "TIME", "CLUSTER", "INFO", "MEMORY"})
"""Commands whose callers degrade on their own when the server refuses them (doctor reads
settings with CONFIG GET, else INFO): a NOPERM reply to one of these is returned as a reply."""


def _refuse_denied(
    client: RedisClient, commands: Sequence[tuple[Any, ...]], replies: Sequence[Any]
) -> None:
    """PermissionDenied for the first NOPERM reply (the ACL user lacks a command or a key)
    to a command that is not one of :data:`PROBES`: every other command of the same kind
    would be refused too, so going on could only report each of them as a failure."""
    for command, reply in zip(commands, replies, strict=False):
        if isinstance(reply, Exception) and is_denied(reply):
            name = _command_name(command)
            if name.split()[0] in PROBES:
                continue
            raise permission_denied(describe(client), reply, command=name, key=_subject(command))


def _subject(command: tuple[Any, ...]) -> str | None:
    """The (first) key a command names, for messages."""
    name = _command_name(command)
    if name in _SCRIPTS:
        try:
            keys = int(command[2])
        except (IndexError, TypeError, ValueError):
            return None
        return _text(command[3]) if keys > 0 and len(command) > 3 else None
    if name in ("MULTI", "EXEC", "PING") or len(command) < 2:
        return None
    return _text(command[1])


def _text(arg: Any) -> str:
    return key_str(arg) if isinstance(arg, str | bytes) else str(arg)


def _pipelined_redis_py(
    client: RedisClient, commands: Sequence[tuple[Any, ...]], chunk: int
) -> list[Any]:
    replies: list[Any] = []
    for start in range(0, len(commands), chunk):
        pipe = client.pipeline(transaction=False)
        for command in commands[start : start + chunk]:
            pipe.execute_command(*command)
        replies.extend(_as_resp2(r) for r in pipe.execute(raise_on_error=False))
    return replies


def _command_name(command: tuple[Any, ...]) -> str:
    name = key_str(command[0]).upper()
    if name == "MEMORY" and len(command) > 2:
        return "MEMORY " + key_str(command[1]).upper()
    return name


def is_read_only(commands: Iterable[tuple[Any, ...]]) -> bool:
    """Whether every command is one of :data:`READ_ONLY_COMMANDS` (safe to run twice)."""
    names: set[str] = set()
    for command in commands:
        first = command[0]
        # hot path: most calls repeat one command; name each distinct spelling once
        if first not in names:
            if _command_name(command) not in READ_ONLY_COMMANDS:
                return False
            if len(command) < 2 or key_str(first).upper() != "MEMORY":
                names.add(first)
    return True


def _arg_bytes(arg: Any) -> bytes:
    """An argument as :func:`pack_commands` sends it (so its slot is the server's)."""
    if type(arg) is bytes:
        return arg
    if type(arg) is str:
        return arg.encode("utf-8", "surrogateescape")
    return str(arg).encode()


def _command_slot(command: tuple[Any, ...]) -> int | None:
    """The hash slot of the command's keys, or None when the command has no key at a position
    this module knows, or keys of several slots (redis-py's pipeline then decides)."""
    name = _command_name(command)
    if name in _KEY_AT_1:
        keys: Sequence[Any] = command[1:2]
    elif name in _SCRIPTS and len(command) > 2:
        try:
            keys = command[3 : 3 + int(command[2])]
        except ValueError:
            return None
    elif name in _ALL_ARGS_KEYS:
        keys = command[1:]
    elif name in _TWO_KEYS:
        keys = command[1:3]
    elif name == "MEMORY USAGE":
        keys = command[2:3]
    else:
        return None
    if not keys:
        return None
    slot = key_slot(_arg_bytes(keys[0]))
    for key in keys[1:]:
        if key_slot(_arg_bytes(key)) != slot:
            return None
    return slot


def _pipelined_cluster(
    client: redis.cluster.RedisCluster,
    commands: Sequence[tuple[Any, ...]],
    chunk: int,
    retry: bool,
) -> list[Any]:
    """One attempt, or (``retry``) attempts until the replies carry no failover-time error, a
    slot map refresh and a short sleep apart, within :data:`READ_RETRY_SECONDS` (a node
    loading its data set waited for meanwhile, :func:`~esctl.redisio.retry.wait_to_retry`)."""
    deadline = time.monotonic() + _retry.READ_RETRY_SECONDS
    delay = 0.1
    while True:
        cause: object = None
        try:
            replies = _pipelined_by_node(client, commands, chunk)
            if replies is None:
                replies = _pipelined_redis_py(client, commands, chunk)
            if not retry:
                return replies
            cause = next((r for r in replies if _is_retried_reply(r)), None)
            if cause is None:
                return replies
            problem = f"the cluster answered {cause}"
        except redis.exceptions.AuthenticationError as exc:
            raise wrap_errors(client, exc) from exc
        except _Unsettled as exc:
            if not retry:
                raise exc.error from None
            problem = exc.error.message
        except _RETRIED_ERRORS as exc:
            if not retry:
                raise wrap_errors(client, exc) from exc
            problem = redact(str(exc)) or type(exc).__name__
            cause = exc
        except REDIS_ERRORS as exc:
            raise wrap_errors(client, exc) from exc
        deadline, delay = _retry.wait_to_retry(
            client,
            deadline,
            delay,
            what="reads",
            problem=problem,
            cause=cause,
            after=": the run kept a consistent state",
        )


def _pipelined_by_node(  # noqa: C901, PLR0912, PLR0915  hot path of every cluster pipeline: one loop kept whole
    client: redis.cluster.RedisCluster, commands: Sequence[tuple[Any, ...]], chunk: int
) -> list[Any] | None:
    """:func:`pipelined` on a cluster over this thread's raw connections, one per node, or
    None where that does not apply (a command whose keys cannot be placed, another connection
    class, TLS with ``resp.RAW_TLS`` off, credentials from a provider).

    Each node gets its commands in the original order, up to ``chunk`` per node and round;
    a round is sent to every node before any reply is read, so the nodes work concurrently.
    A reply ``MOVED slot host:port`` (the slot has moved: the command was not executed) makes
    the slot map refresh and the command go to that node; ``ASK slot host:port`` (the key is
    being migrated) sends ``ASKING`` and the command to that node, for that command only.
    With ``--read-from-replicas`` the read-only commands go where redis-py's load balancing
    sends them (the replicas) over READONLY connections."""
    if not _by_node_applies(client):
        return None
    slots: list[int] = []
    key_at_1 = _KEY_AT_1
    append = slots.append
    for command in commands:
        first = command[0]
        if type(first) is str and first in key_at_1:
            # hot path (HGET, LRANGE, LLEN ...): redis.crc.key_slot inlined
            key = command[1]
            data = key.encode("utf-8", "surrogateescape") if type(key) is str else _arg_bytes(key)
            start = data.find(b"{")
            if start > -1:
                end = data.find(b"}", start + 1)
                if end > start + 1:
                    data = data[start + 1 : end]
            append(crc_hqx(data, 0) % REDIS_CLUSTER_HASH_SLOTS)
            continue
        slot = _command_slot(command)
        if slot is None:
            return None
        slots.append(slot)
    nodes = client.nodes_manager
    table = _primary_table(nodes)
    strategy = client.load_balancing_strategy or (
        redis.cluster.LoadBalancingStrategy.ROUND_ROBIN if client.read_from_replicas else None
    )
    read_names: dict[Any, bool] = {}
    replica_of: dict[str, str] = {}

    def owner(index: int) -> str:
        name = table[slots[index]]
        if name is None:
            raise redis.exceptions.SlotNotCoveredError(f"slot {slots[index]} is not served")
        if strategy is None:
            return name
        command = commands[index]
        read = read_names.get(command[0])
        if read is None:
            name_of_command = _command_name(command)
            read = name_of_command in READ_ONLY_COMMANDS
            if not name_of_command.startswith("MEMORY"):  # read-only or not by subcommand
                read_names[command[0]] = read
        if not read:
            return name
        # one choice per primary and call: redis-py's balancer picks among its replicas
        chosen = replica_of.get(name)
        if chosen is None:
            chosen = replica_of[name] = nodes.get_node_from_slot(slots[index], False, strategy).name
        return chosen

    replies: list[Any] = [None] * len(commands)
    redirect: dict[int, tuple[str, bool]] = {}  # index -> (node name, ASK?)
    asked_again: set[int] = set()  # reads whose empty answer after an ASK was asked again
    pending: Sequence[int] = range(len(commands))
    connections = _ClusterConnections(client, readonly=strategy is not None)
    for _ in range(REDIRECT_ROUNDS + 1):
        groups: dict[str, list[int]] = {}
        for index in pending:
            target = redirect.get(index) if redirect else None
            name = target[0] if target else owner(index)
            group = groups.get(name)
            if group is None:
                groups[name] = [index]
            else:
                group.append(index)
        _exchange(connections, groups, commands, redirect, replies, chunk)
        redirected: list[int] = []
        moved = False
        for name, indices in groups.items():
            for index in indices:
                reply = replies[index]
                if type(reply) is not hiredis.ReplyError:
                    if (
                        redirect
                        and (reply is None or reply == [] or reply == 0)
                        and index not in asked_again
                        and redirect.get(index, ("", False))[1]
                        and _command_name(commands[index]) in READ_ONLY_COMMANDS
                    ):
                        # An importing node answers a read after ASKING as if the key were
                        # not there when it has not arrived yet: an ASK gone stale (the slot
                        # moved on, and back, since the ASK). Asked again where the slot map
                        # says, once.
                        asked_again.add(index)
                        del redirect[index]
                        moved = True
                        redirected.append(index)
                    continue
                text = str(reply)
                if text.startswith(("MOVED ", "ASK ")):
                    kind, _slot, address = text.split(" ", 2)
                    if address.startswith(":"):  # "MOVED 12 :7001": same host, other port
                        address = name.rsplit(":", 1)[0] + address
                    redirect[index] = (address, kind == "ASK")
                    moved = moved or kind == "MOVED"
                    redirected.append(index)
        if not redirected:
            return replies
        if moved:
            refresh_slots(client)
            replica_of.clear()
        pending = redirected
    first = pending[0]
    raise _Unsettled(
        ServerError(
            f"Redis {describe(client)} still redirects {counted(len(pending), 'command')} after "
            f"{REDIRECT_ROUNDS} redirections, e.g. {_command_name(commands[first])} on slot "
            f"{slots[first]}: {replies[first]}",
            hint="the cluster's slot map is not settling (a reshard stuck half-way?): check "
            "`redis-cli --cluster check HOST:PORT`, fix it (`redis-cli --cluster fix`), then "
            "rerun",
        )
    )


class _Unsettled(redis.exceptions.RedisClusterException):
    """Commands still redirected after :data:`REDIRECT_ROUNDS` rounds (a slot moving to and
    fro faster than a round goes): a read call waits and runs again, as after a failover;
    any other call fails with ``error``."""

    def __init__(self, error: ServerError) -> None:
        super().__init__(error.message)
        self.error = error


_primary_tables: weakref.WeakKeyDictionary[Any, tuple[Any, list[str | None]]] = (
    weakref.WeakKeyDictionary()
)


def _primary_table(nodes: Any) -> list[str | None]:
    """The name of the primary serving each slot, from redis-py's slot map; rebuilt whenever
    redis-py replaces that map (at each refresh). A table gone stale otherwise is corrected
    by the MOVED replies it causes (they refresh the map)."""
    slots_cache = nodes.slots_cache
    cached = _primary_tables.get(nodes)
    if cached is not None and cached[0] is slots_cache:
        return cached[1]
    table: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    for slot, owners in list(slots_cache.items()):
        if owners:
            table[slot] = owners[0].name
    _primary_tables[nodes] = (slots_cache, table)
    return table


def _by_node_applies(client: redis.cluster.RedisCluster) -> bool:
    kwargs = client.nodes_manager.connection_kwargs
    connection_class = kwargs.get("connection_class", redis.connection.Connection)
    return (
        BY_NODE_PIPELINES
        and (
            connection_class is redis.connection.Connection
            or (connection_class is redis.connection.SSLConnection and _resp.RAW_TLS)
        )
        and kwargs.get("credential_provider") is None
    )


def _exchange(  # noqa: C901  hot path of every cluster pipeline: send and receive kept in one loop
    connections: _ClusterConnections,
    groups: dict[str, list[int]],
    commands: Sequence[tuple[Any, ...]],
    redirect: dict[int, tuple[str, bool]],
    replies: list[Any],
    chunk: int,
) -> None:
    """Send each node its commands (``ASKING`` first where redirected by ASK) and store the
    replies at the commands' indices. Any failure closes every connection used: replies left
    unread on a socket would be read as the answers to the next call's commands."""
    used: list[str] = []
    current = "?"
    try:
        longest = max(len(indices) for indices in groups.values())
        for offset in range(0, longest, chunk):
            sent: list[tuple[str, _RawConnection, list[int], int]] = []
            for name, indices in groups.items():
                part = indices[offset : offset + chunk]
                if not part:
                    continue
                if redirect:
                    batch: list[tuple[Any, ...]] = []
                    for index in part:
                        if redirect.get(index, ("", False))[1]:
                            batch.append(("ASKING",))
                        batch.append(commands[index])
                else:
                    batch = [commands[index] for index in part]
                used.append(name)
                current = name
                connection = connections.get(name)
                connection.send(batch)
                sent.append((name, connection, part, len(batch)))
            for name, connection, part, count in sent:
                current = name
                got = connection.receive(count)
                if count == len(part):
                    for index, reply in zip(part, got, strict=True):
                        replies[index] = reply
                    continue
                position = 0
                for index in part:
                    if redirect.get(index, ("", False))[1]:
                        position += 1  # ASKING's OK
                    replies[index] = got[position]
                    position += 1
    except BaseException as exc:
        for name in used:
            connections.drop(name)
        if isinstance(exc, OSError | redis.exceptions.ConnectionError) and not isinstance(
            exc, redis.exceptions.AuthenticationError
        ):
            raise redis.exceptions.ConnectionError(f"cluster node {current}: {exc}") from exc
        raise


class RespChannel:
    """A connection of its own to a single server for commands the caller encodes as RESP
    itself (replay's publisher, which sends the same command shapes many times): :meth:`send`
    batches, make the next ones while the server runs them, and :meth:`receive` each batch's
    replies, in the order sent. Its own connection, so nothing else on the thread can read
    those replies; closed at the first error, which may leave replies unread. Open with
    :func:`resp_channel`; :meth:`close` when done."""

    def __init__(self, client: redis.Redis, conn: _RawConnection) -> None:
        self.client = client
        self.conn: _RawConnection | None = conn
        self.in_flight: deque[int] = deque()
        """Per batch sent and not received yet, oldest first: its number of commands."""

    def send(self, data: bytes, count: int) -> None:
        """Send ``count`` commands encoded in ``data``, as one batch."""
        conn = self._open()
        try:
            conn.sock.sendall(data)
        except BaseException as exc:
            raise self._failed(exc) from exc
        self.in_flight.append(count)

    def receive(self) -> list[Any]:
        """The replies of the oldest batch in flight (errors as exception objects)."""
        count = self.in_flight.popleft()
        if not count:
            return []
        conn = self._open()
        try:
            return conn.receive(count)
        except BaseException as exc:
            raise self._failed(exc) from exc

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _open(self) -> _RawConnection:
        if self.conn is None:
            raise wrap_errors(
                self.client, redis.exceptions.ConnectionError("the connection was closed")
            )
        return self.conn

    def _failed(self, exc: BaseException) -> BaseException:
        """Close (replies may be left unread); esctl's error for a Redis or socket error."""
        self.close()
        if isinstance(exc, OSError):
            exc = redis.exceptions.ConnectionError(str(exc))
        if isinstance(exc, REDIS_ERRORS):
            return wrap_errors(self.client, exc)
        return exc


def resp_channel(client: RedisClient) -> RespChannel | None:
    """A :class:`RespChannel` to ``client``'s server, or None where that path does not apply (a
    cluster, another connection class, TLS with ``resp.RAW_TLS`` off): use :func:`pipelined`."""
    if not isinstance(client, redis.Redis):
        return None
    try:
        conn = _open_raw_connection(client)
    except REDIS_ERRORS as exc:
        raise wrap_errors(client, exc) from exc
    return None if conn is None else RespChannel(client, conn)


class _ClusterConnections:
    """This thread's raw connections to the nodes of one cluster client, by node name
    (``host:port``), opened on first use with the client's credentials."""

    def __init__(self, client: redis.cluster.RedisCluster, *, readonly: bool) -> None:
        nodes: weakref.WeakKeyDictionary[redis.cluster.RedisCluster, dict[str, _RawConnection]]
        nodes = getattr(_raw_connections, "nodes", None) or weakref.WeakKeyDictionary()
        _raw_connections.nodes = nodes
        self.by_name = nodes.setdefault(client, {})
        kwargs = client.nodes_manager.connection_kwargs
        self.credentials = {k: kwargs[k] for k in ("username", "password") if kwargs.get(k)}
        # a rediss+cluster:// client: its TLS settings (ssl_ca_certs, ...) for every node
        self.tls = kwargs.get("connection_class") is redis.connection.SSLConnection
        if self.tls:
            self.credentials |= {k: v for k, v in kwargs.items() if k.startswith("ssl_")}
        self.timeout = float(kwargs.get("socket_timeout") or 30.0)
        self.readonly = readonly

    def get(self, name: str) -> _RawConnection:
        conn = self.by_name.get(name)
        if conn is None or conn.readonly != self.readonly:
            if conn is not None:
                conn.close()
            host, _, port = name.rpartition(":")
            try:
                conn = _RawConnection(
                    {"host": host, "port": int(port), **self.credentials},
                    self.timeout,
                    readonly=self.readonly,
                    tls=self.tls,
                )
            except OSError as exc:
                raise redis.exceptions.ConnectionError(f"cannot connect ({exc})") from exc
            self.by_name[name] = conn
        return conn

    def drop(self, name: str) -> None:
        conn = self.by_name.pop(name, None)
        if conn is not None:
            conn.close()


def windowed(
    client: RedisClient,
    commands: Iterable[tuple[Any, ...]],
    pace: Pace,
) -> Iterator[Any]:
    """The replies of ``commands``, in order, with up to ``pace.depth`` commands sent ahead of
    the reply being read: the server works on the next command while this reply travels back
    and the caller builds the one after. Each command runs on its own (a script call stays one
    atomic step), in the iterator's order. Error replies come as exception objects. A lost
    connection raises redis-py's ConnectionError (or TimeoutError): the commands sent and not
    answered may or may not have run. ``commands`` is pulled lazily, so it decides when to
    stop (a caller that has seen an error reply stops yielding commands and reads the replies
    still due).

    The depth adapts (:class:`esctl.inflight.Pace`): a command's latency is taken as
    ``pace.latency_s`` (the caller's measured round trip, :func:`round_trip`) plus the
    server's own work on it, assumed about what building and sending it took here; the time
    per command is what building and sending it took. On a single server this goes through
    the raw connection; elsewhere (a cluster, another connection class) the commands are sent
    in pipelines of ``pace.depth``, each waited for."""
    round_trip_s = pace.latency_s or 0.0
    if isinstance(client, redis.cluster.RedisCluster) or _raw_connection(client) is None:
        yield from _windowed_by_pipelines(client, commands, pace)
        return
    conn = _raw_connection(client)
    assert conn is not None
    source = iter(commands)
    in_flight = 0
    exhausted = False
    with _conversation(client, conn):
        while True:
            while not exhausted and in_flight < pace.depth:
                started = time.perf_counter()
                command = next(source, None)
                if command is None:
                    exhausted = True
                    break
                conn.send([command])
                in_flight += 1
                work = time.perf_counter() - started
                pace.observe(round_trip_s + work, work)
            if not in_flight:
                return
            reply = conn.receive(1)[0]
            in_flight -= 1
            yield reply


def _windowed_by_pipelines(
    client: RedisClient, commands: Iterable[tuple[Any, ...]], pace: Pace
) -> Iterator[Any]:
    source = iter(commands)
    while True:
        group = []
        for command in source:
            group.append(command)
            if len(group) >= pace.depth:
                break
        if not group:
            return
        try:
            replies = (
                _pipelined_cluster(client, group, len(group), False)
                if isinstance(client, redis.cluster.RedisCluster)
                else _pipelined_redis_py(client, group, len(group))
            )
        except ConnectionFailed as exc:
            raise redis.exceptions.ConnectionError(str(exc)) from exc
        yield from replies
