"""Finding keys and reading whole hashes: SCAN per primary node (on a cluster, the
slot-accounting scan that reads a slot moved mid-scan again on its own; see
docs/design/cluster-scan.md) and HSCAN of whole hashes that starts a hash over where it went
when its slot moves (:func:`hash_pages`)."""

from __future__ import annotations

import functools
import hashlib
import re
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.cluster
import redis.exceptions
from redis.crc import key_slot

from esctl.config import redact
from esctl.errors import ConnectionFailed, ServerError
from esctl.redisio import retry as _retry
from esctl.redisio.client import (
    REDIS_ERRORS,
    RedisClient,
    describe,
    key_bytes,
    key_str,
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
from esctl.redisio.resp import (
    _as_resp2,
    _conversation,
    _raw_connection,
    _RawConnection,
)
from esctl.redisio.retry import (
    _RETRIED_ERRORS,
    _RETRIED_REPLIES,
    _is_retried_reply,
    read_with_retry,
    refresh_slots,
)


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


SCAN_SEEN_LIMIT = 250_000
"""Keys a cluster SCAN remembers so that a key met again (in a slot read again after it moved,
or repeated by SCAN itself) is not handed out twice: about 35 MB. Past it the scan goes on
remembering only those, so a key met for the first time after that may come twice, never zero
times."""
SLOT_READ_KEYS = 10_000
"""Keys per MULTI/EXEC when a cluster SCAN reads moved slots whole (GETKEYSINSLOT): small slots
share one transaction up to this many keys; a larger slot is read alone, whatever its size."""


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
            i += 1
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
            if members:
                out.append(b"[" + b"".join(b"\\x%02x" % b for b in sorted(members)) + b"]")
            else:
                out.append(b"(?!)")
        else:
            if char == 0x5C and end - i >= 2:  # \x: x itself
                i += 1
            out.append(re.escape(pattern[i : i + 1]))
        i += 1
    return b"".join(out)


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
) -> Iterator[tuple[ScanPosition, list[str]]]:
    """SCAN every primary for keys matching ``match``. Yields ``(position_after, keys)`` per
    SCAN reply (pages of about ``count`` keys); resuming from a yielded position continues
    after those keys. A key present for the whole scan is returned at least once (SCAN may
    return it more than once).

    On a cluster (:func:`_scan_cluster`) a pattern of one hash tag is scanned on the node that
    serves its slot only, and failovers and reshards during the scan are ridden out."""
    position = start or ScanPosition()
    if position.done:
        return
    if isinstance(client, redis.cluster.RedisCluster):
        yield from _scan_cluster(client, match, type_, count, position)
        return
    cursor = position.cursor
    while True:
        try:
            cursor, keys = client.scan(cursor, match=match, count=count, _type=type_)
        except REDIS_ERRORS as exc:
            raise wrap_errors(client, exc) from exc
        cursor = int(cursor)
        yield (
            ScanPosition(done=True) if cursor == 0 else ScanPosition(0, cursor),
            [key_str(k) for k in keys],
        )
        if cursor == 0:
            break


def _scan_cluster(
    client: redis.cluster.RedisCluster,
    match: str,
    type_: str | None,
    count: int,
    start: ScanPosition,
) -> Iterator[tuple[ScanPosition, list[str]]]:
    """SCAN a cluster one primary after another, keeping account of which hash slots are done;
    a slot that moved (or was being moved) while its node was scanned is read again on its
    own, where it is then, instead of the whole scan starting over. docs/design/cluster-scan.md
    tells how and why it holds.

    - Each SCAN call goes to its node in one MULTI/EXEC with ``CLUSTER NODES``, so every page
      comes with what the node served at that very moment. A slot is done when its node served
      it (not migrating it away) at every call of the node's SCAN, from cursor 0 to 0.
    - The slots left are read whole on their current owner (``CLUSTER GETKEYSINSLOT`` inside
      a MULTI/EXEC with the node's ``CLUSTER NODES``), filtered by :func:`glob_matcher` and, for
      ``type_``, TYPE; a slot being migrated is read on its source, then on its target. A node
      left with half its slots or more to do (a failover, a restart) is SCANned again instead.
    - Keys are handed out once (up to :data:`SCAN_SEEN_LIMIT` remembered). Lost nodes and
      slots that do not settle are waited for up to :data:`READ_RETRY_SECONDS` without progress.

    Positions are resumable as on a single server as long as nothing moved; after that, and
    for the pages of slots read again, the position is the scan's start (a resume rescans: the
    layout's epoch, :func:`scan_epoch`, has changed anyway). The last page carries ``done``."""
    scan = _ClusterScan(client, match, type_, count)
    held: tuple[ScanPosition, list[str]] | None = None
    try:
        for position, keys in scan.pages(start):
            if held is not None:
                yield held
            held = (position or ScanPosition(), keys)
    except REDIS_ERRORS as exc:
        raise wrap_errors(client, exc) from exc
    yield ScanPosition(done=True), held[1] if held is not None else []


@dataclass(frozen=True)
class _SlotClaims:
    """What one node said about its own slots at one moment (its ``CLUSTER NODES`` line)."""

    node_id: str
    served: frozenset[int]
    """Slots it serves and is not migrating away: all their keys are on this node."""
    migrating: dict[int, str]
    """Slot -> id of the node it is being migrated to (keys on either node)."""
    importing: dict[int, str]
    """Slot -> id of the node it is being migrated from."""


def _myself_line(reply: bytes) -> bytes:
    at = reply.find(b"myself")
    if at < 0:
        raise redis.exceptions.ResponseError("CLUSTER NODES has no line for the node itself")
    end = reply.find(b"\n", at)
    return reply[reply.rfind(b"\n", 0, at) + 1 : end if end >= 0 else len(reply)]


def _parse_claims(line: bytes) -> _SlotClaims:
    fields = key_str(line).split()
    served: set[int] = set()
    migrating: dict[int, str] = {}
    importing: dict[int, str] = {}
    for entry in fields[8:]:
        if entry.startswith("["):
            slot, arrow, other = entry.strip("[]").partition("->-")
            if arrow:
                migrating[int(slot)] = other
            else:
                slot, _, other = entry.strip("[]").partition("-<-")
                importing[int(slot)] = other
        else:
            first, _, last = entry.partition("-")
            served.update(range(int(first), int(last or first) + 1))
    return _SlotClaims(fields[0], frozenset(served - migrating.keys()), migrating, importing)


def _node_address(reply: bytes, node_id: str) -> str | None:
    """``host:port`` of the node ``node_id`` in a ``CLUSTER NODES`` reply."""
    for line in key_str(reply).splitlines():
        fields = line.split(" ", 2)
        if fields[0] == node_id and len(fields) > 1:
            return fields[1].split("@")[0]
    return None


def _node_replies(
    plain: redis.Redis, commands: Sequence[tuple[Any, ...]], *, atomic: bool
) -> list[Any]:
    """The replies to ``commands`` sent to one node in one round trip; with ``atomic`` inside
    one MULTI/EXEC, so that no other client's command runs between them. An error reply
    raises: a failover's (CLUSTERDOWN, LOADING, ...) as ClusterDownError, which the scan
    retries, any other as ResponseError."""
    conn = _raw_connection(plain)
    if conn is None:  # TLS, another connection class: redis-py's pipeline
        pipe = plain.pipeline(transaction=atomic)
        for command in commands:
            pipe.execute_command(*command)
        replies = [_as_resp2(r) for r in pipe.execute(raise_on_error=False)]
    else:
        with _conversation(plain, conn):
            if not atomic:
                replies = conn.execute(commands)
            else:
                got = conn.execute([("MULTI",), *commands, ("EXEC",)])
                for reply in got:  # the queued command refused first, EXECABORT last
                    _raise_error_reply(reply)
                replies = got[-1]
    for reply in replies:
        _raise_error_reply(reply)
    return replies


def _raise_error_reply(reply: Any) -> None:
    if isinstance(reply, Exception):
        text = str(reply)
        if text.startswith(_RETRIED_REPLIES):
            raise redis.exceptions.ClusterDownError(text)
        raise redis.exceptions.ResponseError(text)


class _ClusterScan:
    """The state of one cluster SCAN (:func:`_scan_cluster`): the slots not done yet, the keys
    handed out, and how long the cluster has kept it from progressing."""

    def __init__(
        self, client: redis.cluster.RedisCluster, match: str, type_: str | None, count: int
    ) -> None:
        self.client = client
        self.match = match
        self.type_ = type_
        self.count = count
        self.matches = glob_matcher(match)
        self.pending: set[int] = set()
        """Slots whose keys have not all been handed out yet."""
        self.seen: set[str] = set()
        self.resumable = True
        """Whether the positions of SCAN pages still describe where the scan is."""
        self.failure: Exception | None = None
        """The last failover-like error of the current round (a node lost, CLUSTERDOWN)."""
        self.problem = ""
        """Why the last slot not done is not (for the error when slots do not settle)."""
        self.no_second_scan: set[str] = set()
        self._claims: dict[bytes, _SlotClaims] = {}

    # -- the walk -------------------------------------------------------------------------

    def pages(self, start: ScanPosition) -> Iterator[tuple[ScanPosition | None, list[str]]]:
        """``(position or None, keys)`` pages: first one SCAN over every primary (from
        ``start``), then rounds over the slots left until none is."""
        nodes = read_with_retry(self.client, self._first_walk)
        for _, _, slots in nodes[start.node :]:
            self.pending |= slots
        for index, (_, plain, expected) in enumerate(nodes[start.node :], start.node):
            cursor = start.cursor if index == start.node else 0
            try:
                for after, keys in self._scan_node(plain, cursor, expected):
                    if not self.resumable:
                        yield None, keys
                    else:
                        yield ScanPosition(index, after) if after else ScanPosition(index + 1), keys
            except _RETRIED_ERRORS as exc:
                self._failed(exc)
                self.resumable = False
        stalled_since: float | None = None
        delay = 0.05
        while self.pending:
            self.failure = None
            before = len(self.pending)
            yield from self._round()
            if len(self.pending) < before:
                stalled_since, delay = None, 0.05
                continue
            now = time.monotonic()
            stalled_since = stalled_since or now
            if now - stalled_since > _retry.READ_RETRY_SECONDS:
                raise self._stalled()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _first_walk(self) -> list[tuple[str, redis.Redis, set[int]]]:
        """The primaries to SCAN, in a stable order, each with the slots it serves that the
        scan must cover: the primary serving the pattern's hash tag (that slot only), or every
        primary serving slots, by the first slot each serves."""
        if not refresh_slots(self.client):
            raise redis.exceptions.ConnectionError("no cluster node answered CLUSTER SLOTS")
        slots_cache = self.client.nodes_manager.slots_cache
        tag_slot = pattern_slot(self.match)
        by_owner: dict[str, set[int]] = {}
        if tag_slot is not None:
            nodes = slots_cache.get(tag_slot)
            if not nodes:
                raise redis.exceptions.ClusterDownError(f"slot {tag_slot} is not served")
            by_owner[nodes[0].name] = {tag_slot}
        else:
            for slot, nodes in slots_cache.items():
                if nodes:
                    owned = by_owner.get(nodes[0].name)
                    if owned is None:
                        owned = by_owner[nodes[0].name] = set()
                    owned.add(slot)
        order = sorted(by_owner, key=lambda name: min(by_owner[name]))
        return [(name, _node_client(self.client, name), by_owner[name]) for name in order]

    def _round(self) -> Iterator[tuple[ScanPosition | None, list[str]]]:
        """Read every slot left on the node serving it now (the slot map refreshed first)."""
        self.resumable = False
        if not refresh_slots(self.client):
            self.failure = redis.exceptions.ConnectionError(
                "no cluster node answered CLUSTER SLOTS"
            )
            return
        slots_cache = self.client.nodes_manager.slots_cache
        by_owner: dict[str, set[int]] = {}
        for slot in sorted(self.pending):
            nodes = slots_cache.get(slot)
            if nodes:
                by_owner.setdefault(nodes[0].name, set()).add(slot)
            else:
                self.problem = f"slot {slot} is served by no node"
        served: dict[str, int] = {}
        if any(len(slots) > 64 for slots in by_owner.values()):
            for nodes in slots_cache.values():
                served[nodes[0].name] = served.get(nodes[0].name, 0) + 1
        for name, slots in by_owner.items():
            plain = _node_client(self.client, name)
            try:
                if len(slots) * 2 >= served.get(name, 2**14) and name not in self.no_second_scan:
                    # most of the node to do (a failover, a restart): SCAN it again
                    self.no_second_scan.add(name)
                    for _, keys in self._scan_node(plain, 0, slots):
                        yield None, keys
                else:
                    yield from self._read_slots(plain, sorted(slots))
            except _RETRIED_ERRORS as exc:
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, redis.exceptions.AuthenticationError):
            raise wrap_errors(self.client, exc) from exc
        self.failure = exc
        self.problem = redact(str(exc)) or type(exc).__name__

    def _stalled(self) -> Exception:
        if self.failure is not None:
            return wrap_errors(self.client, self.failure)
        left = sorted(self.pending)
        shown = ", ".join(map(str, left[:5])) + (", ..." if len(left) > 5 else "")
        return ServerError(
            f"the cluster {describe(self.client)} kept {len(left)} hash slot(s) ({shown}) from "
            f"being read for {_retry.READ_RETRY_SECONDS:.0f} s during a SCAN over {self.match}: "
            f"{self.problem}",
            hint="check every slot is served and none is stuck half-moved (`redis-cli --cluster "
            "check HOST:PORT`; `redis-cli --cluster fix HOST:PORT` finishes an interrupted "
            "reshard), then rerun the same command",
        )

    # -- one node's SCAN ------------------------------------------------------------------

    def _scan_node(
        self, plain: redis.Redis, cursor: int, expected: set[int]
    ) -> Iterator[tuple[int, list[str]]]:
        """SCAN ``plain`` from ``cursor`` to its end: ``(cursor after, new keys)`` per call.
        The slots the node served at every call are done by the time the last page comes (if
        the node was not restarted meanwhile: same run id at both ends). ``expected``: the
        slots the scan counts on it for; positions stay resumable only if it served them all
        throughout."""
        run_id = plain.info("server")["run_id"]
        command: tuple[Any, ...] = ("SCAN", 0, "MATCH", self.match, "COUNT", self.count)
        if self.type_:
            command += ("TYPE", self.type_)
        served: frozenset[int] | None = None
        line = b""
        while True:
            scanned, nodes = _node_replies(
                plain, [(*command[:1], cursor, *command[2:]), ("CLUSTER", "NODES")], atomic=True
            )
            myself = _myself_line(nodes)
            if myself != line:  # the node's slots changed (or first call)
                line = myself
                now_served = self._claims_of(line).served
                if served is None:
                    served = now_served
                    if not expected <= served:
                        self.resumable = False
                elif not served <= now_served:
                    served = served & now_served
                    self.resumable = False
            cursor = int(scanned[0])
            if cursor == 0:
                if served is not None and plain.info("server")["run_id"] == run_id:
                    self.pending -= served  # also a slot that came before the first call
                if self.pending & expected:
                    self.resumable = False
            # remembered as handed out only now that nothing can fail before they are
            yield cursor, self._fresh([key_str(k) for k in scanned[1]])
            if cursor == 0:
                return

    def _claims_of(self, line: bytes) -> _SlotClaims:
        """The node's claims from its ``CLUSTER NODES`` line; parsed once per distinct line
        (ping and pong times, the only parts changing every second, are left out of the key)."""
        fields = line.split(b" ")
        key = b" ".join([fields[0], fields[2], *fields[8:]])
        claims = self._claims.get(key)
        if claims is None:
            if len(self._claims) > 1000:
                self._claims.clear()
            claims = self._claims[key] = _parse_claims(line)
        return claims

    # -- slots read whole -----------------------------------------------------------------

    def _read_slots(
        self, plain: redis.Redis, slots: list[int]
    ) -> Iterator[tuple[ScanPosition | None, list[str]]]:
        """Read ``slots`` whole on the node ``plain`` (their owner in the slot map). A slot is
        done when, in the same MULTI/EXEC as its GETKEYSINSLOT, the node says it serves it;
        when the node says it is migrating it, once its target has been read right after it
        (see :meth:`_read_targets`). A slot the node does not serve stays for the next round."""
        sizes = _node_replies(
            plain, [("CLUSTER", "COUNTKEYSINSLOT", s) for s in slots], atomic=False
        )
        for group in _slot_groups(slots, sizes):
            replies = _node_replies(plain, [("CLUSTER", "NODES"), *_slot_reads(group)], atomic=True)
            claims = _parse_claims(_myself_line(replies[0]))
            found: list[bytes] = []
            moving: dict[str, list[int]] = {}
            for index, (slot, _) in enumerate(group):
                total, keys = replies[1 + 2 * index], replies[2 + 2 * index]
                found.extend(keys)
                if len(keys) < total:  # it grew past what was asked for: read it again
                    self.problem = f"slot {slot} keeps growing"
                elif slot in claims.served:
                    self.pending.discard(slot)
                elif slot in claims.migrating:
                    moving.setdefault(claims.migrating[slot], []).append(slot)
                else:
                    self.problem = f"slot {slot} has left the node the slot map names"
            # the targets at once, before any key is handed out (the caller may take its time)
            for target_id, moved in moving.items():
                address = _node_address(replies[0], target_id)
                if address is None:
                    self.problem = f"slots {moved} are migrating to an unknown node {target_id}"
                    continue
                found.extend(self._read_targets(address, claims.node_id, moved))
            yield from self._hand_out(found)

    def _read_targets(self, address: str, source_id: str, slots: list[int]) -> list[bytes]:
        """The second half of reading slots being migrated from ``source_id`` to the node at
        ``address``: their keys there, read two round trips after the source. Keys only go
        from the source to the target, so a key that was not on the source then is on the
        target now — if the target still imports the slot from that source, serves it (the
        migration has ended since), or has no part in it (no key can have gone there): the
        slot is done. Not when the target imports it from another node or migrates it on. (A
        whole move of the slot, and one more from the target, cannot fit in between.)"""
        plain = _node_client(self.client, address)
        sizes = _node_replies(
            plain, [("CLUSTER", "COUNTKEYSINSLOT", s) for s in slots], atomic=False
        )
        found: list[bytes] = []
        for group in _slot_groups(slots, sizes):
            replies = _node_replies(plain, [("CLUSTER", "NODES"), *_slot_reads(group)], atomic=True)
            claims = _parse_claims(_myself_line(replies[0]))
            for index, (slot, _) in enumerate(group):
                total, keys = replies[1 + 2 * index], replies[2 + 2 * index]
                found.extend(keys)
                if len(keys) < total:
                    self.problem = f"slot {slot} keeps growing"
                elif slot in claims.migrating:
                    self.problem = f"slot {slot} is migrating on from {address} to another node"
                elif claims.importing.get(slot, source_id) != source_id:
                    self.problem = (
                        f"slot {slot} is migrating to {address}, which imports it from another node"
                    )
                else:
                    self.pending.discard(slot)
        return found

    def _hand_out(self, raw_keys: list[bytes]) -> Iterator[tuple[ScanPosition | None, list[str]]]:
        """The keys of a slot read that match the pattern (and ``type_``) and were not handed
        out before, in pages of ``count``."""
        matches = self.matches
        keys = [k for k in dict.fromkeys(key_str(k) for k in raw_keys if matches(k))]
        keys = [k for k in keys if k not in self.seen]
        if keys and self.type_:
            types = pipelined(self.client, [("TYPE", k) for k in keys])
            for key, reply in zip(keys, types, strict=True):
                if isinstance(reply, Exception):
                    raise ServerError(f"TYPE {printable(key)} failed during a SCAN: {reply}")
            keys = [k for k, t in zip(keys, types, strict=True) if key_str(t) == self.type_]
        keys = self._fresh(keys)
        for offset in range(0, len(keys), self.count):
            yield None, keys[offset : offset + self.count]

    def _fresh(self, keys: list[str]) -> list[str]:
        """``keys`` less those handed out before; remembered up to :data:`SCAN_SEEN_LIMIT`."""
        seen = self.seen
        keys = [k for k in keys if k not in seen]
        if len(seen) < SCAN_SEEN_LIMIT:
            seen.update(keys)
        return keys


def _slot_groups(slots: list[int], sizes: list[Any]) -> Iterator[list[tuple[int, int]]]:
    """``(slot, keys in it)`` in groups of up to :data:`SLOT_READ_KEYS` keys (a larger slot
    alone), empty slots included: their owner's word that they are empty is what is needed."""
    group: list[tuple[int, int]] = []
    total = 0
    for slot, size in zip(slots, sizes, strict=True):
        if group and total + int(size) > SLOT_READ_KEYS:
            yield group
            group, total = [], 0
        group.append((slot, int(size)))
        total += int(size)
    if group:
        yield group


def _slot_reads(group: list[tuple[int, int]]) -> list[tuple[Any, ...]]:
    """COUNTKEYSINSLOT and GETKEYSINSLOT of each slot: room for twice the keys counted before,
    and the count in the same transaction, which tells whether the reply holds them all."""
    commands: list[tuple[Any, ...]] = []
    for slot, size in group:
        commands.append(("CLUSTER", "COUNTKEYSINSLOT", slot))
        commands.append(("CLUSTER", "GETKEYSINSLOT", slot, 2 * size + 16))
    return commands


# --- HSCAN of whole hashes -----------------------------------------------------------------

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
    survival proves the process is the same; without esctl's raw connections, TLS for one, the
    node's run id is asked with each call instead). An HSCAN that runs on a node proves the
    hash was in that node's keyspace then (a node without the key answers MOVED, or ASK while
    migrating its slot), which is all HSCAN's promise needs. A MOVED or ASK reply, a lost or
    restarted node, or a failover error restarts that hash from cursor 0 where it is now
    (after ASK: on the importing node, each call preceded by ASKING), handing out only fields
    it has not handed out yet: the fields of every hash that takes more than one call are
    remembered, up to :data:`HSCAN_SEEN_LIMIT` per call, and dropped when the hash is done. So
    each field present for the whole read comes exactly once (past the limit: at least once).
    Failover errors are waited out for :data:`READ_RETRY_SECONDS` without progress, then
    ConnectionFailed; a hash restarted :data:`HSCAN_RESTARTS` times is a ServerError."""
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
            groups: dict[str, list[str]] = {}
            for key, read in reads.items():
                groups.setdefault(read.node, []).append(key)
            try:
                answers = self._exchange(groups, reads)
            except redis.exceptions.AuthenticationError as exc:
                raise wrap_errors(self.client, exc) from exc
            except _RETRIED_ERRORS as exc:
                problem = redact(str(exc)) or type(exc).__name__
                delay = self._wait(deadline, delay, problem)
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
                delay = self._wait(deadline, delay, troubled)

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

    def _wait(self, deadline: float, delay: float, problem: str) -> float:
        now = time.monotonic()
        if now >= deadline:
            server = describe(self.client)
            raise ConnectionFailed(
                f"Redis {server} did not answer HSCAN for {_retry.READ_RETRY_SECONDS:.0f} s (a failover "
                f"or a reshard that did not settle?): {problem}",
                server=server,
                hint="check `redis-cli -c -h HOST -p PORT cluster info` shows cluster_state:ok, "
                "then rerun the same command",
            )
        time.sleep(min(delay, deadline - now))
        refresh_slots(self.client)
        return min(delay * 2, 1.0)

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
