"""``--read-from-replicas`` on a cluster of three primaries with a replica each: the read-only
work goes to the replicas and the answers are those of the primaries (issue 8)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from typing import Any

import independent_writer as iw
import psycopg
import pytest
import redis
from cluster import LocalCluster, redis_cluster_with_replicas, role, slot_owner, start_cluster
from helpers import cli_env, run_cli
from test_migrate import assert_clean_aggregates_migrated, cli_args

from esctl import layout, redisio, servers, storereads
from esctl.errors import ConnectionFailed, EsctlError, ServerError
from esctl.migrate import MigrateOptions, migrate_redis_to_pg
from esctl.redisio import retry as redisio_retry

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
    truth = iw.write_store(cluster.client(), app=app_name, aggregates=60, seed=9)
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
    truth = iw.write_store(cluster.client(), app=app_name, aggregates=200, seed=12)
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
        truth = iw.write_store(cluster.client(), app=app_name, aggregates=200, seed=13)
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
            # the replica is promoted after the node timeout
            wait_for_replicas_to_take_over(cluster, victim, timeout=20)
            survivors = [n for n in cluster.nodes if n is not victim]
            seed = f"redis+cluster://127.0.0.1:{survivors[0].port}"
            rerun = migrate_redis_to_pg(redisio.connect(seed), replace(opts, rate=None))
            assert rerun.problems == []
        else:
            assert outcome["summary"].problems == []
        assert_clean_aggregates_migrated(pg_dsn, truth)
    finally:
        cluster.stop()


# --- riding out a failover -----------------------------------------------------------------


def start_migration(url: str, pg_dsn: str, app: str, *extra: str) -> subprocess.Popen[str]:
    """``esctl migrate redis-to-pg --json`` in the background, slowed down by ``--rate`` so a
    failover lands in the middle of it."""
    args = [*cli_args(url, pg_dsn, app), "--init-schema", "--json", "--batch-size", "20", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "esctl", "migrate", "redis-to-pg", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )  # fmt: skip


def wait_for_first_batch(proc: subprocess.Popen[str], pg_dsn: str, timeout: float = 30) -> None:
    """Wait until the migration has committed a batch: it is reading Redis now."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(psycopg.Error), psycopg.connect(pg_dsn) as conn:
            row = conn.execute("SELECT count(*) FROM esctl.migration_batch").fetchone()
            if row and row[0] > 0:
                return
        assert proc.poll() is None, "the migration ended before its first batch"
        assert time.monotonic() < deadline, "the migration committed no batch"
        time.sleep(0.05)


def wait_for_replicas_to_take_over(cluster: LocalCluster, dead: Any, timeout: float = 30) -> None:
    survivors = [n for n in cluster.nodes if n is not dead]
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError):
            roles = [role(n.port) for n in survivors]
            with redis.Redis(port=survivors[0].port) as plain:
                state = plain.cluster("info")["cluster_state"]
            if roles.count("master") == 3 and state == "ok":
                return
        assert time.monotonic() < deadline, "the cluster did not recover"
        time.sleep(0.1)


def commit_lists_primary(cluster: LocalCluster, app: str) -> Any:
    """The primary holding the app's commit lists (SCAN and LRANGE go there)."""
    slot = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.seed.port).keyslot(
        layout.commit_list_key(app, "x")
    )
    return slot_owner(cluster, slot)


@pytest.mark.parametrize("replicas", [False, True], ids=["primaries", "read-from-replicas"])
def test_a_replica_promoted_mid_migration_is_ridden_out_and_the_run_exits_0(
    redis_cluster_with_replicas: LocalCluster, pg_dsn: str, app_name: str, replicas: bool
) -> None:
    """CLUSTER FAILOVER on the replica of the primary holding the commit lists, while a
    migration reads them: the run follows the new primary and finishes, every event once."""
    cluster = redis_cluster_with_replicas
    truth = iw.write_store(cluster.client(), app=app_name, aggregates=200, seed=14)
    cluster.sync_replicas()
    primary = commit_lists_primary(cluster, app_name)
    extra = ["--rate", "400", *(["--read-from-replicas"] if replicas else [])]
    proc = start_migration(cluster.url, pg_dsn, app_name, *extra)
    wait_for_first_batch(proc, pg_dsn)
    replica = next(
        n for n in cluster.replicas_of_primaries()
        if redis.Redis(port=n.port).info("replication")["master_port"] == primary.port
    )  # fmt: skip
    with redis.Redis(port=replica.port) as promoted:
        promoted.execute_command("CLUSTER FAILOVER")
        deadline = time.monotonic() + 10
        while promoted.info("replication")["role"] != "master":
            assert time.monotonic() < deadline, "the replica was not promoted"
            time.sleep(0.05)
    ended_early = proc.poll() is not None
    out, err = proc.communicate(timeout=120)
    assert not ended_early, f"the migration ended before the failover: {out}{err}"

    assert proc.returncode == 0, out + err
    doc = json.loads(out)
    assert doc["problems"] == [] and doc["events_migrated"] == len(truth.events())
    assert_clean_aggregates_migrated(pg_dsn, truth)


def test_a_primary_killed_mid_migration_is_ridden_out_and_the_run_exits_0(
    pg_dsn: str, app_name: str
) -> None:
    """SIGKILL of the primary holding the commit lists; the cluster promotes its replica
    after the node timeout (1 s here). The run waits for that, rereads what it was reading and
    finishes: exit 0, every event in PostgreSQL once. Pipelined reads in this process ride
    the same failover out."""
    if servers.find_redis_server() is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server / redis-cli are not installed")
    cluster = start_cluster(3, 1)
    try:
        truth = iw.write_store(cluster.client(), app=app_name, aggregates=200, seed=15)
        cluster.sync_replicas()
        victim = commit_lists_primary(cluster, app_name)
        reader = redisio.connect(cluster.url)
        lists = [layout.commit_list_key(app_name, a.aggregate_id) for a in truth.aggregates]
        expected = storereads.commit_lists(reader, lists)
        seed = next(n for n in cluster.nodes if n is not victim)
        url = f"redis+cluster://127.0.0.1:{seed.port}"
        proc = start_migration(url, pg_dsn, app_name, "--rate", "300")
        wait_for_first_batch(proc, pg_dsn)
        os.kill(victim.pid, signal.SIGKILL)
        started = time.monotonic()
        assert storereads.commit_lists(reader, lists) == expected  # waits for the promotion
        assert time.monotonic() - started < redisio_retry.READ_RETRY_SECONDS
        ended_early = proc.poll() is not None
        out, err = proc.communicate(timeout=120)
        assert not ended_early, f"the migration ended before the kill: {out}{err}"

        assert proc.returncode == 0, out + err
        doc = json.loads(out)
        assert doc["problems"] == [] and doc["events_migrated"] == len(truth.events()), doc
        assert_clean_aggregates_migrated(pg_dsn, truth)
        wait_for_replicas_to_take_over(cluster, victim)
    finally:
        cluster.stop()
