"""HSCAN of whole hashes (:func:`hash_pages`) that, on a cluster, starts a hash over where it
went when its slot moves, handing out only the fields it has not handed out yet."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.cluster
import redis.exceptions
from redis.crc import key_slot

from esctl.config import redact
from esctl.errors import ServerError
from esctl.redisio import retry as _retry
from esctl.redisio.client import (
    REDIS_ERRORS,
    RedisClient,
    describe,
    printable,
    wrap_errors,
)
from esctl.redisio.pipelines import (
    _arg_bytes,
    _by_node_applies,
    _ClusterConnections,
    _primary_table,
    pipelined,
)
from esctl.redisio.resp import _as_resp2, _RawConnection
from esctl.redisio.retry import _RETRIED_ERRORS, _is_retried_reply, refresh_slots
from esctl.redisio.scan import _node_client

HSCAN_SEEN_LIMIT = 250_000
"""Fields one :func:`hash_pages` call on a cluster remembers, all hashes together (about 30 MB
for fields of a commit id's size), so that a hash read again from cursor 0 after it moved hands
out only fields not handed out yet. Past it, new fields are no longer remembered: one met again
after a move is handed out again (as HSCAN itself may repeat a field)."""
HSCAN_RESTARTS = 1000
"""Restarts of one hash (its slot moved, its node restarted) before :func:`hash_pages` gives
up: a slot that moves faster than one hash can be read."""


def hash_pages(
    client: RedisClient, keys: Sequence[str], *, count: int = 1000
) -> Iterator[tuple[str, list[bytes]]]:
    """``(key, [field, value, field, value, …])`` per HSCAN reply, for every field of every
    hash in ``keys`` (pipelined: one round trip asks every hash still being read for its next
    page of about ``count`` fields). A hash deleted meanwhile simply ends; a key that is not a
    hash raises ServerError.

    On a single server this is HSCAN as it is, at no extra cost: a field present for the whole
    read comes at least once (rarely twice, when the hash is rehashed in between).

    On a cluster an HSCAN cursor belongs to one server process: continued on the node a hash
    moved to (what redis-py's MOVED/ASK following would do) it skips and repeats fields. So
    each hash is read on one node, redirections not followed, over one connection (whose
    survival proves the process is the same; without esctl's raw connections, another connection class for one, the
    node's run id is asked with each call instead). An HSCAN that runs on a node proves the
    hash was in that node's keyspace then (a node without the key answers MOVED, or ASK while
    migrating its slot), which is all HSCAN's promise needs. A MOVED or ASK reply, a lost or
    restarted node, or a failover error restarts that hash from cursor 0 where it is now
    (after ASK: on the importing node, each call preceded by ASKING), handing out only fields
    it has not handed out yet: the fields of every hash that takes more than one call are
    remembered, up to :data:`HSCAN_SEEN_LIMIT` per call, and dropped when the hash is done. So
    each field present for the whole read comes exactly once (past the limit: at least once).
    Failover errors are waited out for :data:`READ_RETRY_SECONDS` without progress, then
    ConnectionFailed (a node loading its data set is waited for, as
    :func:`~esctl.redisio.retry.wait_to_retry` says); a hash restarted :data:`HSCAN_RESTARTS` times is a ServerError."""
    if not keys:
        return
    if isinstance(client, redis.cluster.RedisCluster):
        yield from _ClusterHashScan(client, count).pages(keys)
        return
    cursors: dict[str, int] = dict.fromkeys(keys, 0)
    while cursors:
        pending = list(cursors)
        replies = pipelined(client, [("HSCAN", k, cursors[k], "COUNT", count) for k in pending])
        for key, reply in zip(pending, replies, strict=True):
            if isinstance(reply, Exception):
                raise _hscan_failed(key, reply)
            cursor, flat = reply
            yield key, flat
            if int(cursor) == 0:
                del cursors[key]
            else:
                cursors[key] = int(cursor)


def _hscan_failed(key: str, reply: Exception) -> ServerError:
    return ServerError(
        f"HSCAN {printable(key)} failed: {reply}", hint="HSCAN reads hashes: is the key a hash?"
    )


@dataclass(slots=True)
class _HashRead:
    """Where one hash is being read on a cluster, and what it handed out."""

    node: str
    asking: bool = False
    cursor: int = 0
    session: object = None
    """The connection (or the node's run id) the cursor belongs to."""
    seen: set[bytes] | None = None
    restarts: int = 0


class _ClusterHashScan:
    """:func:`hash_pages` on a cluster."""

    def __init__(self, client: redis.cluster.RedisCluster, count: int) -> None:
        self.client = client
        self.count = count
        # the same READONLY setting as pipelined(): one connection per node and thread is
        # shared with it, and replacing it would restart every hash read over it
        readonly = client.load_balancing_strategy is not None or bool(client.read_from_replicas)
        self.connections = (
            _ClusterConnections(client, readonly=readonly) if _by_node_applies(client) else None
        )
        self.remembered = 0

    def pages(self, keys: Sequence[str]) -> Iterator[tuple[str, list[bytes]]]:
        reads = {key: _HashRead(self._owner(key)) for key in keys}
        deadline = time.monotonic() + _retry.READ_RETRY_SECONDS
        delay = 0.1
        while reads:
            try:
                answers = self._exchange(_by_node(reads), reads)
            except redis.exceptions.AuthenticationError as exc:
                raise wrap_errors(self.client, exc) from exc
            except _RETRIED_ERRORS as exc:
                problem = redact(str(exc)) or type(exc).__name__
                deadline, delay = self._wait(deadline, delay, problem)
                for key, read in reads.items():
                    self._restart(read, self._owner_or(key, read.node))
                continue
            except REDIS_ERRORS as exc:
                raise wrap_errors(self.client, exc) from exc
            troubled = ""
            for key, session, reply in answers:
                read = reads[key]
                if isinstance(reply, Exception):
                    troubled = self._redirected(key, read, reply) or troubled
                    continue
                deadline = time.monotonic() + _retry.READ_RETRY_SECONDS
                delay = 0.1
                cursor = int(reply[0])
                moved = read.cursor != 0 and session != read.session
                flat = self._fresh(read, reply[1], keep=cursor != 0 or moved)
                if flat:
                    yield key, flat
                if moved:  # the node restarted, or the connection the cursor was on is gone
                    self._restart(read, read.node, asking=read.asking)
                elif cursor == 0:
                    del reads[key]
                else:
                    read.cursor, read.session = cursor, session
            if troubled:
                deadline, delay = self._wait(deadline, delay, troubled)

    def _owner(self, key: str) -> str:
        name = _primary_table(self.client.nodes_manager)[key_slot(_arg_bytes(key))]
        if name is None:
            raise redis.exceptions.SlotNotCoveredError(
                f"the slot of {printable(key)} is not served"
            )
        return name

    def _owner_or(self, key: str, fallback: str) -> str:
        name = _primary_table(self.client.nodes_manager)[key_slot(_arg_bytes(key))]
        return fallback if name is None else name

    def _restart(self, read: _HashRead, node: str, *, asking: bool = False) -> None:
        read.node, read.asking, read.cursor, read.session = node, asking, 0, None
        read.restarts += 1
        if read.restarts > HSCAN_RESTARTS:
            raise ServerError(
                f"Redis {describe(self.client)}: a hash was read again from the start "
                f"{HSCAN_RESTARTS} times (its slot moved or its node restarted each time)",
                hint="the cluster's slot map is not settling (a reshard stuck half-way?): check "
                "`redis-cli --cluster check HOST:PORT`, then rerun",
            )

    def _redirected(self, key: str, read: _HashRead, reply: Exception) -> str:
        """Restart the hash where ``reply`` says it is now; the failover-time error it is, to
        wait on, or ''. Any other error reply is raised."""
        if isinstance(reply, redis.exceptions.AskError):  # redis-py's pipeline (MovedError too)
            kind = "MOVED" if isinstance(reply, redis.exceptions.MovedError) else "ASK"
            address = f"{reply.host}:{reply.port}"
        elif str(reply).startswith(("MOVED ", "ASK ")):
            kind, _slot, address = str(reply).split(" ", 2)
            if address.startswith(":"):  # "MOVED 12 :7001": same host, other port
                address = read.node.rsplit(":", 1)[0] + address
        elif _is_retried_reply(reply):
            refresh_slots(self.client)
            self._restart(read, self._owner_or(key, read.node))
            return str(reply)
        else:
            raise _hscan_failed(key, reply)
        if kind == "MOVED":
            refresh_slots(self.client)
        self._restart(read, address, asking=kind == "ASK")
        return ""

    def _wait(self, deadline: float, delay: float, problem: str) -> tuple[float, float]:
        return _retry.wait_to_retry(
            self.client, deadline, delay, what="HSCAN", problem=problem, cause=problem
        )

    def _fresh(self, read: _HashRead, flat: list[bytes], *, keep: bool) -> list[bytes]:
        """``flat`` less the fields this hash handed out already; remembers them when ``keep``
        (the hash is not done, or starts over)."""
        seen = read.seen
        if seen is not None:
            flat = [
                x
                for i in range(0, len(flat) - 1, 2)
                if flat[i] not in seen
                for x in flat[i : i + 2]
            ]
        if keep and flat:
            if seen is None:
                seen = read.seen = set()
            room = HSCAN_SEEN_LIMIT - self.remembered
            fields = flat[0::2][:room] if room > 0 else []
            seen.update(fields)
            self.remembered += len(fields)
        return flat

    def _exchange(
        self, groups: dict[str, list[str]], reads: dict[str, _HashRead]
    ) -> list[tuple[str, object, Any]]:
        """``(key, session, reply)`` of one HSCAN call of every hash, each on its node."""
        if self.connections is None:
            return self._exchange_redis_py(groups, reads)
        connections = self.connections
        used: list[str] = []
        sent: list[tuple[_RawConnection, list[str], list[bool]]] = []
        answers: list[tuple[str, object, Any]] = []
        try:
            for name, keys in groups.items():
                batch: list[tuple[Any, ...]] = []
                asked: list[bool] = []
                for key in keys:
                    read = reads[key]
                    if read.asking:
                        batch.append(("ASKING",))
                    batch.append(("HSCAN", key, read.cursor, "COUNT", self.count))
                    asked.append(read.asking)
                used.append(name)
                connection = connections.get(name)
                connection.send(batch)
                sent.append((connection, keys, asked))
            for connection, keys, asked in sent:
                got = iter(connection.receive(len(keys) + sum(asked)))
                for key, asking in zip(keys, asked, strict=True):
                    if asking:
                        next(got)  # ASKING's OK
                    answers.append((key, connection, next(got)))
        except BaseException as exc:
            for name in used:
                connections.drop(name)
            if isinstance(exc, OSError):
                raise redis.exceptions.ConnectionError(f"cluster node: {exc}") from exc
            raise
        return answers

    def _exchange_redis_py(
        self, groups: dict[str, list[str]], reads: dict[str, _HashRead]
    ) -> list[tuple[str, object, Any]]:
        answers: list[tuple[str, object, Any]] = []
        for name, keys in groups.items():
            pipe = _node_client(self.client, name).pipeline(transaction=False)
            pipe.execute_command("INFO", "server")
            for key in keys:
                if reads[key].asking:
                    pipe.execute_command("ASKING")
                pipe.execute_command("HSCAN", key, reads[key].cursor, "COUNT", self.count)
            got = pipe.execute(raise_on_error=False)
            run_id = got[0].get("run_id") if isinstance(got[0], dict) else None
            replies = iter(got[1:])
            for key in keys:
                if reads[key].asking:
                    next(replies)
                answers.append((key, run_id, _as_resp2(next(replies))))
        return answers


def _by_node(reads: dict[str, _HashRead]) -> dict[str, list[str]]:
    """The hashes being read, by the node each is read on."""
    groups: dict[str, list[str]] = {}
    for key, read in reads.items():
        groups.setdefault(read.node, []).append(key)
    return groups
