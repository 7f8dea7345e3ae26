"""SCAN of a Redis Cluster that keeps account of hash slots: a slot that moves (or was being
moved) while its node is scanned is read again on its own, where it is then, instead of the
whole scan starting over. :func:`esctl.redisio.scan.scan_pages` comes here on a cluster;
docs/design/cluster-scan.md tells how and why it holds."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.cluster
import redis.exceptions

from esctl.config import redact
from esctl.errors import ServerError
from esctl.redisio import retry as _retry
from esctl.redisio.client import (
    REDIS_ERRORS,
    describe,
    key_str,
    printable,
    wrap_errors,
)
from esctl.redisio.pipelines import pipelined
from esctl.redisio.resp import _as_resp2, _conversation, _raw_connection
from esctl.redisio.retry import (
    _RETRIED_ERRORS,
    _RETRIED_REPLIES,
    read_with_retry,
    refresh_slots,
)
from esctl.redisio.scan import ScanPosition, _node_client, glob_matcher, pattern_slot
from esctl.units import counted

SCAN_SEEN_LIMIT = 250_000
"""Keys a cluster SCAN remembers so that a key met again (in a slot read again after it moved,
or repeated by SCAN itself) is not handed out twice: about 35 MB. Past it the scan goes on
remembering only those, so a key met for the first time after that may come twice, never zero
times."""
SLOT_READ_KEYS = 10_000
"""Keys per MULTI/EXEC when a cluster SCAN reads moved slots whole (GETKEYSINSLOT): small slots
share one transaction up to this many keys; a larger slot is read alone, whatever its size."""


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
    if conn is None:  # another connection class, RAW_TLS off: redis-py's pipeline
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
            if (
                self.failure is not None
                and _retry.may_be_loading(self.failure)
                and _retry.wait_for_loading_nodes(self.client, after=_retry.KEPT)
            ):
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
            f"the cluster {describe(self.client)} kept {counted(len(left), 'hash slot')} ({shown}) from "
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
