"""``--read-from-replicas`` on a cluster of three primaries with a replica each: the read-only
work goes to the replicas and the answers are those of the primaries (issue 8)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import replace
from typing import Any

import independent_writer as iw
import pytest
import redis
from cluster import LocalCluster, redis_cluster_with_replicas, role, start_cluster
from helpers import run_cli
from test_migrate import assert_clean_aggregates_migrated, cli_args

from esctl import redisio, servers
from esctl.errors import ConnectionFailed, EsctlError, ServerError
from esctl.migrate import MigrateOptions, migrate_redis_to_pg

__all__ = ["redis_cluster_with_replicas"]  # the fixture, imported for pytest

READS = ("hget", "lrange")


def read_calls(nodes: list[Any]) -> int:
    """HGET + LRANGE calls the nodes have served so far (INFO commandstats)."""
    total = 0
    for node in nodes:
        with redis.Redis(port=node.port) as plain:
            stats = plain.info("commandstats")
        total += sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in READS)
    return total


def test_migrate_verify_inspect_and_query_read_from_the_replicas(
    redis_cluster_with_replicas: LocalCluster, pg_dsn: str, app_name: str
) -> None:
    cluster = redis_cluster_with_replicas
    truth = iw.write_store(cluster.client(), app=app_name, aggregates=60, seed=9)  # type: ignore[arg-type]
    cluster.sync_replicas()
    primaries, replicas = cluster.primaries(), cluster.replicas_of_primaries()
    assert len(primaries) == len(replicas) == 3
    on_primaries, on_replicas = read_calls(primaries), read_calls(replicas)

    args = [*cli_args(cluster.url, pg_dsn, app_name), "--read-from-replicas"]
    result = run_cli("migrate", "redis-to-pg", *args, "--init-schema", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["events_migrated"] == len(truth.events())
    assert_clean_aggregates_migrated(pg_dsn, truth)

    checked = run_cli("migrate", "verify", *args[:-2], "--read-from-replicas", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    common = ["--redis-url", cluster.url, "--app", app_name, "--read-from-replicas"]
    integrity = run_cli("inspect", "integrity", *common, "--json")
    assert integrity.returncode == 0, integrity.stdout + integrity.stderr
    query = run_cli("events", "query", *common, "--format", "json")
    assert query.returncode == 0, query.stderr
    assert len(json.loads(query.stdout)) == len(truth.events())

    # The reads went to the replicas; the primaries served none of them.
    assert read_calls(replicas) - on_replicas >= 2 * len(truth.events())
    assert read_calls(primaries) == on_primaries


def test_a_primary_failover_during_a_migration_loses_and_doubles_nothing(
    redis_cluster_with_replicas: LocalCluster, pg_dsn: str, app_name: str
) -> None:
    cluster = redis_cluster_with_replicas
    truth = iw.write_store(cluster.client(), app=app_name, aggregates=200, seed=12)  # type: ignore[arg-type]
    cluster.sync_replicas()
    replica = cluster.replicas_of_primaries()[0]
    client = redisio.connect(cluster.url)
    # ~940 events at 250/s: the run lasts ~4 s, the promotion takes well under that
    opts = MigrateOptions(app=app_name, pg_dsn=pg_dsn, init_schema=True, batch_size=10, rate=250)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["summary"] = migrate_redis_to_pg(client, opts)
        except EsctlError as exc:  # exit 1: rerun
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.5)
    with redis.Redis(port=replica.port) as promoted:
        promoted.execute_command("CLUSTER FAILOVER")
        deadline = time.monotonic() + 10
        while promoted.info("replication")["role"] != "master":
            assert time.monotonic() < deadline, "the replica was not promoted"
            time.sleep(0.05)
    assert worker.is_alive(), "the migration ended before the failover: nothing was tested"
    worker.join(60)
    assert not worker.is_alive()
    assert "summary" in outcome or isinstance(outcome["error"], ConnectionFailed | ServerError)
    if "error" in outcome:
        rerun = migrate_redis_to_pg(redisio.connect(cluster.url), replace(opts, rate=None))
        assert rerun.problems == []
    else:
        assert outcome["summary"].problems == []
    assert_clean_aggregates_migrated(pg_dsn, truth)  # every event once, none lost


def test_a_primary_killed_mid_migration_is_survived_or_a_rerun_completes(
    pg_dsn: str, app_name: str
) -> None:
    """A hard failover: SIGKILL of a primary, its replica promoted by the cluster (node timeout
    1 s). The run either rides it out or exits with ConnectionFailed (exit 1); a rerun
    completes, and every event is in PostgreSQL once. On a cluster of its own: it loses a node."""
    if servers.find_redis_server() is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server / redis-cli are not installed")
    cluster = start_cluster(3, 1)
    try:
        truth = iw.write_store(cluster.client(), app=app_name, aggregates=200, seed=13)  # type: ignore[arg-type]
        cluster.sync_replicas()
        victim = cluster.primaries()[1]
        client = redisio.connect(cluster.url)
        opts = MigrateOptions(
            app=app_name, pg_dsn=pg_dsn, init_schema=True, batch_size=10, rate=400
        )
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["summary"] = migrate_redis_to_pg(client, opts)
            except EsctlError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(0.5)
        os.kill(victim.pid, signal.SIGKILL)
        worker.join(120)
        assert not worker.is_alive()
        if "error" in outcome:
            assert isinstance(outcome["error"], ConnectionFailed), outcome["error"]
            survivors = [n for n in cluster.nodes if n is not victim]
            deadline = time.monotonic() + 20
            while True:  # the replica is promoted after the node timeout
                with contextlib.suppress(redis.RedisError):
                    roles = [role(n.port) for n in survivors]
                    with redis.Redis(port=survivors[0].port) as plain:
                        state = plain.cluster("info")["cluster_state"]
                    if roles.count("master") == 3 and state == "ok":
                        break
                assert time.monotonic() < deadline, "the cluster did not recover"
                time.sleep(0.1)
            seed = f"redis+cluster://127.0.0.1:{survivors[0].port}"
            rerun = migrate_redis_to_pg(redisio.connect(seed), replace(opts, rate=None))
            assert rerun.problems == []
        else:
            assert outcome["summary"].problems == []
        assert_clean_aggregates_migrated(pg_dsn, truth)
    finally:
        cluster.stop()
