"""A Redis Cluster node that answers LOADING: restarted (a rolling restart) and still reading
its RDB file. esctl waits for it as for a single server (tests/test_redis_loading.py): at
connect time (the seed, or another node), and mid-run for reads and for what Redis answered
without running it; the same notice on stderr, the same bound (``ESCTL_REDIS_LOADING_WAIT``).

While it loads, a restarted primary answers a command with a key CLUSTERDOWN (Redis checks the
cluster's state first, and the node's stays failed until it has loaded), one without a key
LOADING, and once the other nodes have marked it failing (it takes no cluster-bus connection
while it loads) every node answers CLUSTERDOWN.

The cluster is this module's own (nodes are restarted); the node is restarted by pid with
``--key-load-delay`` (Redis's debug setting, microseconds per key) so that it stays loading
until the test sets it back to 0 (:func:`cluster.restart_loading`). No sleep synchronises:
each test finishes the load when esctl has said it waits (or when it has failed)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
from cluster import LocalCluster, restart_loading, start_cluster, wait_for_cluster_ok
from helpers import assert_clean, run_cli, started_cli

from esctl import redisio, servers
from esctl.demo import DemoSummary, write_demo_store
from esctl.errors import ConnectionFailed
from esctl.interrupts import HeldInterrupts
from esctl.redisio import retry

pytestmark = pytest.mark.skipif(
    servers.find_redis_server() is None, reason="no redis-server binary"
)

APP = "Learning.ClusterLoading.Web"
ENV = "cluster-loading"
FILLER_KEYS = 3000
FILLER_BYTES = 1100
"""Random bytes (the RDB cannot compress them), over the 1 KiB between two times the loading
node answers: it answers between keys, about every ``key-load-delay``."""
SLOW_US = 20000
"""20 ms per key: a minute for the filler keys, unless the test ends the load first."""


@dataclass
class Loading:
    cluster: LocalCluster
    demo: DemoSummary
    tmp: Path
    restarts: int = 0

    def restart(self, index: int) -> servers.LocalRedis:
        """Restart ``cluster.nodes[index]`` loading slowly (it stays loading until
        :func:`finish_loading`)."""
        self.restarts += 1
        node = self.cluster.nodes[index]
        return restart_loading(
            self.cluster, node, self.tmp / f"restart-{self.restarts}", key_load_delay_us=SLOW_US
        )


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loading]:
    """Three primaries, no replica: the demo store, and FILLER_KEYS keys on each of the first
    two primaries (which the tests restart)."""
    if servers.find_redis_server() is None:
        pytest.skip("redis-server is not installed")
    cluster = start_cluster(3, 0)
    try:
        client = cluster.client()
        demo = write_demo_store(client, app=APP, env=ENV)
        for node in cluster.nodes[:2]:
            fill(client, node)
        yield Loading(cluster, demo, tmp_path_factory.mktemp("cluster-loading"))
    finally:
        cluster.stop()


@pytest.fixture
def loading(own_cluster: Loading) -> Iterator[Loading]:
    """The cluster, every node loaded and ``cluster_state:ok`` again after the test."""
    try:
        yield own_cluster
    finally:
        for node in own_cluster.cluster.nodes:
            finish_loading(node)
        wait_for_cluster_ok(own_cluster.cluster)


def fill(client: redis.cluster.RedisCluster, node: servers.LocalRedis) -> None:
    """FILLER_KEYS keys served by ``node``."""
    served = client.get_node(host="127.0.0.1", port=node.port)
    assert served is not None
    pipe = client.pipeline(transaction=False)
    written = i = 0
    while written < FILLER_KEYS:
        key = f"filler:{i}"
        i += 1
        if client.nodes_manager.get_node_from_slot(client.keyslot(key)).name == served.name:
            pipe.set(key, os.urandom(FILLER_BYTES))
            written += 1
    pipe.execute()


def finish_loading(node: servers.LocalRedis) -> None:
    """Let ``node`` load the rest of its RDB at full speed (CONFIG SET answers while loading)."""
    with redis.Redis(port=node.port) as plain:
        plain.config_set("key-load-delay", 0)


def is_loading(node: servers.LocalRedis) -> bool:
    with redis.Redis(port=node.port) as plain:
        return str(plain.info("persistence")["loading"]) == "1"


def name(node: servers.LocalRedis) -> str:
    return f"cluster node 127.0.0.1:{node.port}"


@pytest.fixture
def notices(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What esctl announces (retry.loading_notice), in-process; the bound as the CLI's."""
    said: list[str] = []
    monkeypatch.setattr(retry, "loading_notice", said.append)
    monkeypatch.setattr(retry, "LOADING_WAIT_SECONDS", 60.0)
    yield said


def finishing_on_notice(node: servers.LocalRedis, said: list[str]) -> Callable[[str], None]:
    """A loading_notice that records what it is told and, told that esctl waits for ``node``,
    lets ``node`` load the rest: esctl goes on only if it waited for it."""

    def notice(text: str) -> None:
        said.append(text)
        if f"{name(node)} is loading its data set" in text:
            finish_loading(node)

    return notice


# --- at connect time: the seed, another node ---------------------------------------------------


def test_a_command_waits_for_a_loading_seed_and_goes_on(loading: Loading) -> None:
    cluster = loading.cluster
    seed = loading.restart(0)
    assert cluster.url.endswith(f":{seed.port}")
    with started_cli(
        "inspect", "stats", "--app", APP, "--json", "--redis-url", cluster.url
    ) as proc:
        assert proc.stderr is not None
        notice = proc.stderr.readline().decode()
        assert f"Redis {name(seed)} is loading its data set into memory (" in notice, notice
        assert "%" in notice and "waiting for it (up to 60 s)" in notice
        assert proc.poll() is None and is_loading(seed)  # still waiting
        finish_loading(seed)
        out, rest = proc.communicate(timeout=60)
    err = notice + rest.decode()
    assert proc.returncode == 0, err
    assert_clean(out.decode(), err)
    assert f"Redis {name(seed)} has loaded its data set (waited" in err and "going on" in err
    stats = json.loads(out)
    assert stats["aggregates"] == loading.demo.commit_lists
    assert stats["events"]["commit_ids"] == loading.demo.commit_ids


def test_past_the_wait_a_loading_seed_is_named(loading: Loading) -> None:
    seed = loading.restart(0)
    started = time.monotonic()
    result = run_cli(
        "queue", "list", "--env", ENV, "--json", "--redis-url", loading.cluster.url,
        env={"ESCTL_REDIS_LOADING_WAIT": "1s"},
    )  # fmt: skip
    assert 1.0 <= time.monotonic() - started < 30
    assert result.returncode == 1, result.stderr
    assert_clean(result.stdout, result.stderr)
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "connection"
    message, hint = error["message"], error["hint"]
    assert f"Redis {name(seed)} is still loading its data set into memory (" in message
    assert "after esctl waited 1 s for it" in message and "nothing was done" in message
    assert f"redis-cli -h 127.0.0.1 -p {seed.port} INFO persistence" in hint
    assert "loading:0" in hint and "ESCTL_REDIS_LOADING_WAIT" in hint
    assert "waiting for it (up to 1 s)" in result.stderr


def test_doctor_reports_a_loading_seed_at_once(loading: Loading) -> None:
    seed = loading.restart(0)
    started = time.monotonic()
    result = run_cli("doctor", "--redis-url", loading.cluster.url, "--json")
    assert time.monotonic() - started < 20  # not the 60 s a command would wait
    assert result.returncode == 3, result.stderr
    assert_clean(result.stdout, result.stderr)
    reachable = {c["id"]: c for c in json.loads(result.stdout)["checks"]}["redis.reachable"]
    assert reachable["status"] == "fail"
    assert f"Redis {name(seed)} is loading its data set" in reachable["observed"]
    assert "%" in reachable["observed"] and "loading:0" in reachable["action"]
    assert "waiting" not in result.stderr


def test_connect_waits_for_a_loading_node_that_is_not_the_seed(
    loading: Loading, notices: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = loading.restart(1)
    monkeypatch.setattr(retry, "loading_notice", finishing_on_notice(node, notices))
    client = redisio.connect(loading.cluster.url)
    try:
        assert not is_loading(node)
        assert f"Redis {name(node)} is loading its data set" in notices[0]
        assert f"Redis {name(node)} has loaded its data set" in notices[-1]
        # served again: the wait lasts until every primary's cluster_state is ok
        for each in loading.cluster.nodes:
            with redis.Redis(port=each.port) as plain:
                assert plain.cluster("info")["cluster_state"] == "ok"
    finally:
        client.close()


# --- mid-run: a node restarted under a connected client ------------------------------------------


def node_keys(client: redisio.RedisClient, node: servers.LocalRedis) -> list[str]:
    assert isinstance(client, redis.cluster.RedisCluster)
    return [
        f"filler:{i}"
        for i in range(20000)
        if client.nodes_manager.get_node_from_slot(client.keyslot(f"filler:{i}")).port == node.port
    ][:5]


INCREMENT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def operations(client: redisio.RedisClient, tag: str) -> dict[str, Callable[[], Any]]:
    """Each of esctl's calls that meet a loading node mid-run, by name; each returns what the
    test compares with the same call made before the restart."""
    keys = [f"{{{tag}}}:{i}" for i in range(3)]
    return {
        "pipelined reads": lambda: redisio.pipelined(
            client, [("STRLEN", k) for k in [f"filler:{i}" for i in range(300)]]
        ),
        "scan": lambda: sorted(
            k for _, page in redisio.scan_pages(client, "filler:*") for k in page
        ),
        "hash pages": lambda: sorted(
            (k, tuple(f)) for k, f in redisio.hash_pages(client, [f"hash:{{{tag}}}"], count=10)
        ),
        "script calls": lambda: redisio.eval_pipelined(
            client, INCREMENT, [(1, k, 0) for k in keys]
        ),
        "one write, after_loading": lambda: redisio.after_loading(
            client, lambda: client.incrby(keys[0], 0)
        ),
    }


@pytest.mark.parametrize(
    "operation",
    ["pipelined reads", "scan", "hash pages", "script calls", "one write, after_loading"],
)
def test_a_node_that_restarts_mid_run_is_waited_for_and_the_call_goes_on(
    operation: str,
    loading: Loading,
    notices: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Connected before the restart (the call's answer before it taken by another client: a
    connection the call had used would be lost, and a write whose connection is lost may have
    run, so it is not sent again). Past READ_RETRY_SECONDS (cut to 10 s here; the node would
    load for a minute) the failover waits give up: only the wait for the loading node lets the
    call go on."""
    client = redisio.connect(loading.cluster.url)
    other = redisio.connect(loading.cluster.url)
    try:
        node = loading.cluster.nodes[1]
        tag = node_keys(other, node)[0]  # a hash tag served by the node restarted
        other.hset(f"hash:{{{tag}}}", mapping={f"f{i}": i for i in range(50)})
        before = operations(other, tag)[operation]()
        node = loading.restart(1)
        monkeypatch.setattr(retry, "READ_RETRY_SECONDS", 10.0)
        monkeypatch.setattr(retry, "loading_notice", finishing_on_notice(node, notices))
        assert operations(client, tag)[operation]() == before
        assert notices and f"Redis {name(node)} is loading its data set" in notices[0]
        assert f"Redis {name(node)} has loaded its data set" in notices[-1]
    finally:
        client.close()
        other.close()


def test_a_writing_pipeline_is_not_waited_for(loading: Loading, notices: list[str]) -> None:
    """A writing call fails fast as before: its replies as Redis gave them (CLUSTERDOWN for the
    keys of the loading node: not run), nothing waited for."""
    client = redisio.connect(loading.cluster.url)
    try:
        node = loading.cluster.nodes[1]
        keys = node_keys(client, node)
        node = loading.restart(1)
        started = time.monotonic()
        try:
            replies = redisio.pipelined(client, [("SET", f"{{{k}}}:w", "v") for k in keys])
        except ConnectionFailed as exc:  # the old connection to the node, lost
            assert "lost the connection" in exc.message
        else:
            assert all(isinstance(r, Exception) for r in replies), replies
        assert time.monotonic() - started < 5
        assert notices == []
        assert is_loading(node)
    finally:
        client.close()


def test_a_ctrl_c_held_during_a_try_answered_clusterdown_stops_there(
    loading: Loading, notices: list[str]
) -> None:
    """A call sent with Ctrl-C held (a queue drain's or restore's batch) that a loading node
    answered CLUSTERDOWN did not run: the run stops there, as after LOADING on a single
    server, instead of waiting for the node first."""
    client = redisio.connect(loading.cluster.url)
    try:
        key = f"{{{node_keys(client, loading.cluster.nodes[1])[0]}}}:ctrl-c"
        node = loading.restart(1)
        held = HeldInterrupts()

        def call() -> Any:
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C while the batch is under way
            return client.incrby(key, 1)

        with pytest.raises(KeyboardInterrupt):
            redisio.after_loading(client, held.around(call))
        assert held.caught and notices == [] and is_loading(node)
    finally:
        client.close()
