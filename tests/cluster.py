"""A real local Redis Cluster for tests: ``redis-server --cluster-enabled yes`` processes on
free ports of 127.0.0.1, joined with ``redis-cli --cluster create``, stopped by pid.

Test modules import the fixture they need (``from cluster import redis_cluster``); it is
session-scoped, so one cluster serves every test of the run. Tests keep apart by their own
``app_name`` / ``env_name`` (every key esctl reads names one of them), so nothing is flushed
between tests. Without ``redis-cli`` (or ``redis-server``) the tests are skipped, naming why.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import redis.cluster

from esctl import servers

START_TIMEOUT = 30.0


@dataclass
class LocalCluster:
    """Running cluster nodes (primaries first as ``redis-cli`` chose them, then replicas)."""

    nodes: list[servers.LocalRedis]
    replicas: int = 0
    _clients: list[redis.cluster.RedisCluster] = field(default_factory=list, repr=False)

    @property
    def seed(self) -> servers.LocalRedis:
        return self.nodes[0]

    @property
    def url(self) -> str:
        """esctl's URL of the cluster (any node is a seed; the client finds the others)."""
        return f"redis+cluster://127.0.0.1:{self.seed.port}"

    def client(self) -> redis.cluster.RedisCluster:
        """A cluster client (bytes in, bytes out), closed with the cluster."""
        client = redis.cluster.RedisCluster(host="127.0.0.1", port=self.seed.port)
        self._clients.append(client)
        return client

    def flushall(self) -> None:
        for node in self.primaries():
            with redis.Redis(port=node.port) as plain:
                plain.flushall()

    def primaries(self) -> list[servers.LocalRedis]:
        """The nodes that are primaries now (a failover changes which)."""
        return [n for n in self.nodes if role(n.port) == "master"]

    def replicas_of_primaries(self) -> list[servers.LocalRedis]:
        return [n for n in self.nodes if role(n.port) == "slave"]

    def sync_replicas(self, timeout: float = 10.0) -> None:
        """Wait until every replica has applied everything its primary has (what a test
        reading from replicas must do after writing)."""
        deadline = time.monotonic() + timeout
        for node in self.replicas_of_primaries():
            with redis.Redis(port=node.port) as replica:
                while True:
                    info = replica.info("replication")
                    with redis.Redis(host=info["master_host"], port=info["master_port"]) as primary:
                        wanted = primary.info("replication")["master_repl_offset"]
                    if info.get("slave_repl_offset", -1) >= wanted:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"replica {node.port} did not catch up")
                    time.sleep(0.02)

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        for node in self.nodes:
            node.stop()


def role(port: int) -> str:
    with redis.Redis(port=port) as plain:
        return str(plain.info("replication")["role"])


def _cluster_ok(ports: list[int]) -> bool:
    """Every node says ``cluster_state:ok``, knows every node and sees all slots served."""
    for port in ports:
        try:
            with redis.Redis(port=port, socket_timeout=2) as plain:
                info = plain.cluster("info")
        except redis.RedisError:
            return False
        if (
            info.get("cluster_state") != "ok"
            or int(info.get("cluster_known_nodes", 0)) != len(ports)
            or int(info.get("cluster_slots_ok", 0)) != 16384
        ):
            return False
    return True


def node_args(bus_port: int) -> list[str]:
    """The command line options of a node of :func:`start_cluster`'s clusters."""
    return [
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
        "--cluster-port", str(bus_port), "--cluster-node-timeout", "1000",
    ]  # fmt: skip


def restart_loading(
    cluster: LocalCluster, node: servers.LocalRedis, workdir: Path, *, key_load_delay_us: int
) -> servers.LocalRedis:
    """Restart ``node`` (SAVE, then stopped by pid, then started again on its port from its
    files, copied to ``workdir``) loading its data set slowly: Redis's debug setting
    ``key-load-delay`` (microseconds per key) with ``loading-process-events-interval-bytes
    1024`` (it answers clients and the cluster bus every 1 KiB of RDB read, so between keys
    bigger than that). It stays loading (``INFO persistence`` says ``loading:1`` when this
    returns) until ``CONFIG SET key-load-delay 0`` lets it load the rest at full speed. The new
    node takes ``node``'s place in ``cluster.nodes``."""
    with redis.Redis(port=node.port) as plain:
        plain.save()
        bus_port = int(plain.config_get("cluster-port")["cluster-port"])
    workdir.mkdir(parents=True)
    for name in ("nodes.conf", "dump.rdb"):
        shutil.copy(node.workdir / name, workdir / name)
    node.stop()
    again = servers.start_redis(
        workdir=workdir,
        port=node.port,
        extra_args=[
            *node_args(bus_port),
            "--key-load-delay", str(key_load_delay_us),
            "--loading-process-events-interval-bytes", "1024",
        ],
    )  # fmt: skip
    cluster.nodes[cluster.nodes.index(node)] = again
    with redis.Redis(port=again.port) as plain:
        if str(plain.info("persistence")["loading"]) != "1":
            raise RuntimeError(f"node {again.port} is not loading its data set")
    return again


def wait_for_cluster_ok(cluster: LocalCluster, timeout: float = START_TIMEOUT) -> None:
    """Wait until every node says ``cluster_state:ok`` (after a node was restarted)."""
    deadline = time.monotonic() + timeout
    while not _cluster_ok([n.port for n in cluster.nodes]):
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster did not reach cluster_state:ok")
        time.sleep(0.05)


def start_cluster(primaries: int = 3, replicas: int = 0) -> LocalCluster:
    """Start ``primaries * (1 + replicas)`` nodes and join them into one cluster (every slot
    served, ``cluster_state:ok`` on every node). On any failure the nodes started so far are
    stopped before the error propagates."""
    redis_cli = shutil.which("redis-cli")
    if redis_cli is None:
        raise FileNotFoundError("redis-cli is not installed (needed for --cluster create)")
    cluster = LocalCluster([], replicas)
    try:
        for _ in range(primaries * (1 + replicas)):
            # --cluster-port: port + 10000 (the default bus port) may exceed 65535
            cluster.nodes.append(servers.start_redis(extra_args=node_args(servers.free_port())))
        ports = [n.port for n in cluster.nodes]
        command = [
            redis_cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-replicas", str(replicas), "--cluster-yes",
        ]  # fmt: skip
        created = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        deadline = time.monotonic() + START_TIMEOUT
        while not _cluster_ok(ports):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster on ports {ports} did not reach cluster_state:ok")
            time.sleep(0.05)
        if replicas:
            _wait_for_replicas(cluster, primaries * replicas, deadline)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for_replicas(cluster: LocalCluster, expected: int, deadline: float) -> None:
    while True:
        linked = 0
        for node in cluster.nodes:
            with redis.Redis(port=node.port) as plain:
                info = plain.info("replication")
            if info["role"] == "slave" and info.get("master_link_status") == "up":
                linked += 1
        if linked == expected and all(_slots_list_replicas(n.port) for n in cluster.nodes):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {linked} of {expected} replicas linked to their primary")
        time.sleep(0.05)


def _slots_list_replicas(port: int) -> bool:
    """Whether the node's CLUSTER SLOTS names a replica for every slot range (gossip takes a
    moment: a client that connects before would send the reads of a range to its primary)."""
    with redis.Redis(port=port) as plain:
        ranges = plain.execute_command("CLUSTER SLOTS")
    return bool(ranges) and all(len(r) >= 4 for r in ranges)


def _start_or_skip(primaries: int, replicas: int) -> LocalCluster:
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed: cannot create a Redis Cluster")
    if servers.find_redis_server() is None:
        pytest.skip("redis-server is not installed: cannot start a Redis Cluster")
    return start_cluster(primaries, replicas)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A session-wide cluster of three primaries (no replicas), stopped at the end."""
    cluster = _start_or_skip(3, 0)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_with_replicas() -> Iterator[LocalCluster]:
    """A session-wide cluster of three primaries with one replica each, stopped at the end
    (for --read-from-replicas and failover tests)."""
    cluster = _start_or_skip(3, 1)
    try:
        yield cluster
    finally:
        cluster.stop()


# --- moving slots (resharding) -------------------------------------------------------------


def node_id(port: int) -> str:
    with redis.Redis(port=port) as plain:
        return str(plain.execute_command("CLUSTER", "MYID").decode())


def slot_owner(cluster: LocalCluster, slot: int) -> servers.LocalRedis:
    """The primary serving ``slot`` now, as that primary itself says."""
    for node in cluster.primaries():
        with redis.Redis(port=node.port) as plain:
            ranges = plain.execute_command("CLUSTER", "SLOTS")
        for start, end, primary, *_ in ranges:
            if int(start) <= slot <= int(end) and int(primary[1]) == node.port:
                return node
    raise RuntimeError(f"no primary serves slot {slot}")


def move_slot(
    cluster: LocalCluster,
    slot: int,
    target: servers.LocalRedis,
    *,
    keys_per_step: int = 5,
    pause: float = 0.0,
    on_step: Callable[[int], None] | None = None,
) -> int:
    """Move ``slot`` to the primary ``target`` as ``redis-cli --cluster reshard`` does:
    IMPORTING on the target, MIGRATING on the source, MIGRATE of its keys ``keys_per_step`` at a
    time (``pause`` seconds apart, so clients meet the half-moved slot and its ASK replies), then
    SETSLOT NODE on every primary. Returns the number of keys moved; ``on_step`` is told the
    number after each MIGRATE.

    Waits first until every primary knows every config epoch, as redis-cli checks the nodes
    agree before a reshard: a target that takes the slot while unaware of a newer epoch does
    not bump its own, and gossip the source sent before the move can then take the slot back
    from it, leaving the slot served by no node (seen on a loaded CI machine)."""
    source = slot_owner(cluster, slot)
    if source.port == target.port:
        return 0
    others = [p for p in cluster.primaries() if p not in (source, target)]
    with contextlib.ExitStack() as stack:
        src, dst, *rest = (
            stack.enter_context(redis.Redis(port=n.port)) for n in (source, target, *others)
        )
        wait_for_epochs([src, dst, *rest])
        return _move(src, dst, rest, slot, keys_per_step, pause, on_step)


def _move(
    src: redis.Redis,
    dst: redis.Redis,
    others: list[redis.Redis],
    slot: int,
    keys_per_step: int,
    pause: float,
    on_step: Callable[[int], None] | None,
) -> int:
    """:func:`move_slot` over open connections to the source, the target and the other
    primaries."""
    source_id, target_id = (c.execute_command("CLUSTER", "MYID").decode() for c in (src, dst))
    target_port = dst.connection_pool.connection_kwargs["port"]
    moved = 0
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    while True:
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, keys_per_step)
        if not keys:
            break
        src.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)
        moved += len(keys)
        if on_step is not None:
            on_step(len(keys))
        if pause:
            time.sleep(pause)
    for node in (dst, src, *others):
        node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return moved


def key_slots(client: redis.cluster.RedisCluster, pattern: str) -> dict[int, int]:
    """Slot -> number of keys matching ``pattern`` (over every primary)."""
    slots: dict[int, int] = {}
    for key in client.scan_iter(match=pattern, count=1000):
        slot = client.keyslot(key)
        slots[slot] = slots.get(slot, 0) + 1
    return slots


class Resharder:
    """Moves ``slots`` round and round the primaries in a background thread until stopped, a
    few keys at a time, then gives every slot back to the primary it started on. Counts the
    slot moves and keys moved while it ran (``moves``, and ``keys`` as each MIGRATE is done); an
    error in the thread is raised again by :meth:`stop`. A slot listed twice moves twice a turn.

    ``quick``: keep one connection per primary and follow the slots' owners itself instead of
    asking the cluster before each move (no failover may happen meanwhile): a slot of a few
    keys moves in a few milliseconds, as with ``redis-cli --cluster reshard`` in a loop, where
    the default takes about a tenth of a second. Each move waits until every primary knows
    every config epoch (as redis-cli checks the nodes agree before a reshard): a node taking a
    slot while it is unaware of a newer epoch elsewhere does not bump its own, and may lose
    the slot to gossip sent before the move, leaving it served by no node."""

    def __init__(
        self,
        cluster: LocalCluster,
        slots: list[int],
        *,
        keys_per_step: int = 5,
        pause: float = 0.002,
        quick: bool = False,
    ) -> None:
        self.cluster = cluster
        self.slots = slots
        self.keys_per_step = keys_per_step
        self.pause = pause
        self.quick = quick
        self.home = {slot: slot_owner(cluster, slot) for slot in slots}
        self._owner = {slot: home.port for slot, home in self.home.items()}
        """With ``quick``: the port of each slot's primary, as this mover left it."""
        self._clients: dict[int, redis.Redis] = {}
        self._connections = contextlib.ExitStack()
        self.moves = 0
        self.keys = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Resharder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            if self.quick:
                self._run_quick()
                return
            primaries = self.cluster.primaries()
            turn = 0
            while not self._stop.is_set():
                for slot in self.slots:
                    if self._stop.is_set():
                        break
                    target = primaries[turn % len(primaries)]
                    turn += 1
                    if slot_owner(self.cluster, slot).port == target.port:
                        continue
                    move_slot(
                        self.cluster,
                        slot,
                        target,
                        keys_per_step=self.keys_per_step,
                        pause=self.pause,
                        on_step=self._count,
                    )
                    self.moves += 1
        except BaseException as exc:  # handed to the test by stop()
            self._error = exc

    def _run_quick(self) -> None:
        primaries = [p.port for p in self.cluster.primaries()]
        turn = 0
        while not self._stop.is_set():
            for slot in self.slots:
                if self._stop.is_set():
                    break
                self._move_quick(slot, primaries[turn % len(primaries)], self._count)
                turn += 1

    def _move_quick(
        self, slot: int, target: int, on_step: Callable[[int], None] | None = None
    ) -> None:
        """Move ``slot`` to the primary on port ``target`` over the connections kept open,
        once every primary knows every config epoch."""
        if self._owner[slot] == target:
            return
        clients = self._clients
        if not clients:
            for node in self.cluster.primaries():
                clients[node.port] = self._connections.enter_context(redis.Redis(port=node.port))
        wait_for_epochs(list(clients.values()))
        source = self._owner[slot]
        others = [c for port, c in clients.items() if port not in (source, target)]
        _move(
            clients[source], clients[target], others, slot, self.keys_per_step, self.pause, on_step
        )
        self._owner[slot] = target
        self.moves += 1

    def _count(self, keys: int) -> None:
        self.keys += keys

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        with self._connections:
            for slot, home in self.home.items():
                if self.quick:
                    self._move_quick(slot, home.port)
                else:
                    move_slot(self.cluster, slot, home)
        wait_for_agreement(self.cluster)
        if self._error is not None:
            raise self._error


def wait_for_epochs(clients: list[redis.Redis], timeout: float = 10.0) -> None:
    """Wait until every node of ``clients`` sees the same config epoch for every node."""
    deadline = time.monotonic() + timeout
    while True:
        views = set()
        for client in clients:
            lines = client.execute_command("CLUSTER", "NODES").decode().splitlines()
            views.add(tuple(sorted((f[0], f[6]) for f in map(str.split, lines))))
        if len(views) == 1:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster nodes do not agree on the config epochs")
        time.sleep(0.001)


def wait_for_agreement(cluster: LocalCluster, timeout: float = 20.0) -> None:
    """Wait until every node answers the same CLUSTER SLOTS (gossip spreads SETSLOT NODE)."""
    deadline = time.monotonic() + timeout
    while True:
        views = set()
        for node in cluster.nodes:
            with redis.Redis(port=node.port) as plain:
                ranges = plain.execute_command("CLUSTER", "SLOTS")
            views.add(tuple(sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in ranges)))
        if len(views) == 1:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster nodes do not agree on the slot map")
        time.sleep(0.05)
