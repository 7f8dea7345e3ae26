"""A real local Redis Cluster for tests: ``redis-server --cluster-enabled yes`` processes on
free ports of 127.0.0.1, joined with ``redis-cli --cluster create``, stopped by pid.

Test modules import the fixture they need (``from cluster import redis_cluster``); it is
session-scoped, so one cluster serves every test of the run. Tests keep apart by their own
``app_name`` / ``env_name`` (every key esctl reads names one of them), so nothing is flushed
between tests. Without ``redis-cli`` (or ``redis-server``) the tests are skipped, naming why.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

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
            args = [
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(servers.free_port()), "--cluster-node-timeout", "1000",
            ]  # fmt: skip
            cluster.nodes.append(servers.start_redis(extra_args=args))
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
