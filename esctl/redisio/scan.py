"""Finding keys: SCAN positions and their epochs, SCAN MATCH's glob as Redis applies it, and
:func:`scan_pages`, SCAN per primary node. A single server is scanned here; a cluster by the
slot-accounting scan of :mod:`esctl.redisio.cluster_scan` (docs/design/cluster-scan.md). HSCAN
of whole hashes is :mod:`esctl.redisio.hash_scan`."""

from __future__ import annotations

import functools
import hashlib
import re
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
import redis.cluster
import redis.exceptions
from redis.crc import key_slot

from esctl.redisio.client import (
    REDIS_ERRORS,
    RedisClient,
    is_loading,
    key_bytes,
    key_str,
    round_trip,
    wrap_errors,
)
from esctl.redisio.pipelines import _arg_bytes
from esctl.redisio.retry import read_with_retry, refresh_slots, wait_for_the_same_server


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
    restart), or on a cluster a digest of each primary's address, run id, config epoch and
    slots (migrating and importing ones included): a restart, a failover (and a failback,
    which bumps the config epoch) and a reshard all change it."""
    if isinstance(client, redis.cluster.RedisCluster):
        cluster = client
        fingerprint = read_with_retry(cluster, lambda: _layout_fingerprint(cluster))
        return hashlib.sha1(fingerprint.encode()).hexdigest()[:16]
    try:
        return str(client.info("server")["run_id"])
    except REDIS_ERRORS as exc:
        raise wrap_errors(client, exc) from exc


def pattern_slot(match: str) -> int | None:
    """The one hash slot every key matching the SCAN pattern ``match`` lives in, when the
    pattern starts with a literal hash tag (``{EventStore:APP}:*``: every commit list of an
    app); None when matching keys may be anywhere."""
    literal: list[str] = []
    escaped = False
    opened_at = -1
    for char in match:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
            continue
        elif char in "*?[":
            return None
        literal.append(char)
        if char == "{" and opened_at < 0:
            opened_at = len(literal) - 1
        elif char == "}" and opened_at >= 0:
            if len(literal) - 1 == opened_at + 1:
                return None  # "{}" is no hash tag: keys hash whole
            return key_slot(_arg_bytes("".join(literal)))
    return None


@functools.lru_cache(maxsize=64)
def glob_matcher(pattern: str) -> Callable[[bytes], bool]:
    """A test of a key (its bytes) against the glob ``pattern`` exactly as Redis's SCAN MATCH
    and KEYS apply it (``stringmatchlen``): ``*``, ``?`` (one byte), ``[...]`` with ``^``,
    ranges and ``\\`` escapes, an unclosed ``[`` running to the end of the pattern, a trailing
    ``\\`` standing for itself; case-sensitive. A range compares bytes as C ``char``s, which
    are signed on x86-64 (the only difference a server built for ARM would show: ranges
    reaching over 0x7f)."""
    data = key_bytes(pattern)
    if data == b"*":  # SCAN does not filter at all (the empty key included)
        return lambda key: True
    regex = re.compile(_glob_regex(data), re.DOTALL)

    def matches(key: bytes) -> bool:
        if not key:  # stringmatchlen never matches an empty string to a non-empty pattern
            return not data
        return regex.fullmatch(key) is not None

    return matches


def _glob_regex(pattern: bytes) -> bytes:
    """Port of ``stringmatchlen`` (Redis util.c) to a regular expression over bytes."""
    out: list[bytes] = []
    i, end = 0, len(pattern)
    while i < end:
        char = pattern[i]
        if char == 0x2A:  # *
            while i + 1 < end and pattern[i + 1] == 0x2A:
                i += 1
            out.append(b".*")
        elif char == 0x3F:  # ?
            out.append(b".")
        elif char == 0x5B:  # [
            part, i = _glob_class(pattern, i + 1)
            out.append(part)
        else:
            if char == 0x5C and end - i >= 2:  # \x: x itself
                i += 1
            out.append(re.escape(pattern[i : i + 1]))
        i += 1
    return b"".join(out)


def _glob_class(pattern: bytes, i: int) -> tuple[bytes, int]:
    """The ``[...]`` class starting at ``pattern[i]`` (just past its ``[``) as a regular
    expression, and the index of its closing ``]`` (or of the pattern's last byte)."""
    end = len(pattern)
    negate = i < end and pattern[i] == 0x5E  # ^
    if negate:
        i += 1
    members: set[int] = set()
    while True:
        if i < end and pattern[i] == 0x5C and end - i >= 2:  # \x
            i += 1
            members.add(pattern[i])
        elif i < end and pattern[i] == 0x5D:  # ]
            break
        elif i >= end:  # the pattern's end closes the class
            i -= 1
            break
        elif end - i >= 3 and pattern[i + 1] == 0x2D:  # a-z
            low, high = sorted((_signed(pattern[i]), _signed(pattern[i + 2])))
            members.update(b for b in range(256) if low <= _signed(b) <= high)
            i += 2
        else:
            members.add(pattern[i])
        i += 1
    if negate:
        members = set(range(256)) - members
    if not members:
        return b"(?!)", i
    return b"[" + b"".join(b"\\x%02x" % b for b in sorted(members)) + b"]", i


def _signed(byte: int) -> int:
    return byte - 256 if byte > 127 else byte


def _layout_fingerprint(client: redis.cluster.RedisCluster) -> str:
    """Everything a SCAN cursor depends on, as one text: each primary's address, run id,
    config epoch and slots as the node itself sees them (with the ``[slot->-id]`` /
    ``[slot-<-id]`` migration marks), and the run id of each node a slot is being migrated to.
    A failover, a restart, a migration started or finished all change it."""
    if not refresh_slots(client):
        raise redis.exceptions.ConnectionError("no cluster node answered CLUSTER SLOTS")
    serving = {nodes[0].name for nodes in client.nodes_manager.slots_cache.values()}
    described: list[str] = []
    targets: set[str] = set()
    for node in sorted(client.get_primaries(), key=lambda n: n.name):
        if node.name not in serving:
            continue
        plain = client.get_redis_connection(node)
        run_id = plain.info("server")["run_id"]
        lines = key_str(plain.execute_command("CLUSTER", "NODES")).splitlines()
        address = {line.split(" ", 2)[0]: line.split(" ", 2)[1].split("@")[0] for line in lines}
        myself = next(fields for fields in map(str.split, lines) if "myself" in fields[2])
        # id, flags, config epoch and slots (ping and pong times change every second)
        described.append(" ".join([node.name, run_id, myself[0], myself[2], myself[6]]))
        described.extend(myself[8:])
        for entry in myself[8:]:
            _, arrow, target_id = entry.strip("[]").partition("->-")
            if arrow and target_id in address:
                targets.add(address[target_id])
    for name in sorted(targets):
        plain = _node_client(client, name)
        described.append(f"-> {name} {plain.info('server')['run_id']}")
    return "\n".join(described)


_node_clients: weakref.WeakKeyDictionary[Any, dict[str, redis.Redis]] = weakref.WeakKeyDictionary()


def _node_client(client: redis.cluster.RedisCluster, name: str) -> redis.Redis:
    """A client of the node ``host:port``, also one redis-py's slot map does not list yet (a
    node added to the cluster has no slot until the first one migrated to it is done)."""
    node = client.nodes_manager.get_node(node_name=name)
    if node is not None:
        return client.get_redis_connection(node)
    known = _node_clients.setdefault(client.nodes_manager, {})
    if name not in known:
        host, _, port = name.rpartition(":")
        kwargs = client.nodes_manager.connection_kwargs
        known[name] = client.nodes_manager.create_redis_node(host, int(port), **kwargs)
    return known[name]


def scan_pages(
    client: RedisClient,
    match: str,
    *,
    type_: str | None = None,
    count: int = 1000,
    start: ScanPosition | None = None,
    grow_to: int | None = None,
) -> Iterator[tuple[ScanPosition, list[str]]]:
    """SCAN every primary for keys matching ``match``. Yields ``(position_after, keys)`` per
    SCAN reply (pages of about ``count`` keys); resuming from a yielded position continues
    after those keys. A key present for the whole scan is returned at least once (SCAN may
    return it more than once).

    On a cluster (:func:`_scan_cluster`) a pattern of one hash tag is scanned on the node that
    serves its slot only, and failovers and reshards during the scan are ridden out. A single
    server that answers LOADING is waited for (:func:`~esctl.redisio.retry.wait_for_the_same_server`):
    the scan goes on where it stood if the server reloaded its data in place, and stops
    (ConnectionFailed) if it was restarted.

    ``grow_to`` (a single server): a caller that keeps every key, not a page at a time, lets
    COUNT grow up to this while the round trip is a large part of each SCAN's time (a server
    at a distance, :func:`scan_count_after`), so it waits on fewer round trips."""
    position = start or ScanPosition()
    if position.done:
        return
    if isinstance(client, redis.cluster.RedisCluster):
        from esctl.redisio.cluster_scan import _scan_cluster  # it builds on this module

        yield from _scan_cluster(client, match, type_, count, position)
        return
    cursor = position.cursor
    round_trip_s = round_trip(client) if grow_to is not None else 0.0
    started = time.monotonic()
    while True:
        asked = time.perf_counter()
        try:
            cursor, keys = client.scan(cursor, match=match, count=count, _type=type_)
        except REDIS_ERRORS as exc:
            if not is_loading(exc):
                raise wrap_errors(client, exc) from exc
            # reloading its data in place (a replica re-syncing): the cursor still holds
            wait_for_the_same_server(client, started, after="the run kept a consistent state")
            continue
        if grow_to is not None:
            count = scan_count_after(count, grow_to, round_trip_s, time.perf_counter() - asked)
        cursor = int(cursor)
        yield (
            ScanPosition(done=True) if cursor == 0 else ScanPosition(0, cursor),
            [key_str(k) for k in keys],
        )
        if cursor == 0:
            break


def scan_count_after(count: int, most: int, round_trip_s: float, took_s: float) -> int:
    """The COUNT for the next SCAN: double while the round trip is over a third of what the
    last SCAN took (the server's own work is then too small to be worth a round trip), at
    most ``most``."""
    if count < most and round_trip_s * 3 > took_s:
        return min(most, count * 2)
    return count


SAMPLE_KEYS = 4000
"""Keys :func:`sample_keys` examines at most per primary (SCAN's COUNT added up)."""
SAMPLE_SECONDS = 0.1
"""Time :func:`sample_keys` spends at most per primary (checked after each SCAN call)."""


@dataclass(frozen=True)
class KeySample:
    """What a bounded SCAN (:func:`sample_keys`) found and how much of the keyspace it saw."""

    keys: list[str]
    """The keys that matched, as SCAN returned them (one may come twice)."""
    examined: int
    """About how many keys SCAN went over (its COUNT per call; a node scanned to its end:
    its key count)."""
    total: int | None
    """Keys in the database (summed over the primaries); None when INFO was refused."""
    complete: bool
    """Every primary was scanned to its end: ``keys`` are all the matching keys."""


def sample_keys(
    client: RedisClient,
    match: str,
    *,
    max_keys: int | None = None,
    max_seconds: float | None = None,
    count: int = 500,
) -> KeySample:
    """A bounded SCAN MATCH ``match``: each primary (on a cluster; else the one server) from
    its start, until its end, about ``max_keys`` keys examined or ``max_seconds`` spent on it,
    whichever comes first. For a glance at a keyspace of any size (which apps have keys
    here), not for finding every key: see :func:`scan_pages` for that. A cluster's slots are
    not accounted for (a slot that moves meanwhile may be seen twice or not at all).
    Unset bounds are :data:`SAMPLE_KEYS` and :data:`SAMPLE_SECONDS`, read at call time."""
    max_keys = SAMPLE_KEYS if max_keys is None else max_keys
    max_seconds = SAMPLE_SECONDS if max_seconds is None else max_seconds
    step = max(1, min(count, max_keys))
    if isinstance(client, redis.cluster.RedisCluster):
        nodes: list[redis.Redis] = [
            client.get_redis_connection(node)
            for node in sorted(client.get_primaries(), key=lambda n: n.name)
        ]
    else:
        nodes = [client]
    keys: list[str] = []
    examined = 0
    total: int | None = 0
    complete = True
    for node in nodes:
        size = _keys_in_db(node)
        started = time.perf_counter()
        cursor = calls = 0
        try:
            while True:
                cursor, page = node.scan(cursor, match=match, count=step)
                cursor = int(cursor)
                calls += 1
                keys.extend(key_str(k) for k in page)
                if cursor == 0:
                    break
                if calls * step >= max_keys or time.perf_counter() - started >= max_seconds:
                    break
        except REDIS_ERRORS as exc:
            raise wrap_errors(client, exc) from exc
        done = cursor == 0
        complete = complete and done
        if size is None:
            examined += calls * step
        else:
            examined += size if done else min(calls * step, size)
        total = None if total is None or size is None else total + size
    return KeySample(keys, examined, total, complete)


def _keys_in_db(node: redis.Redis) -> int | None:
    """Keys in the database ``node`` uses, from ``INFO keyspace`` (every ACL user esctl
    documents may run INFO; not all may run DBSIZE); None when refused."""
    try:
        keyspace = node.info("keyspace")
    except REDIS_ERRORS:
        return None
    db = node.connection_pool.connection_kwargs.get("db", 0)
    entry = keyspace.get(f"db{db}")
    return int(entry["keys"]) if isinstance(entry, dict) else 0
