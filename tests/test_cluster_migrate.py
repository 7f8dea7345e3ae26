"""``migrate redis-to-pg`` and ``migrate verify`` on a real three-primary Redis Cluster give
exactly what they give on a single instance (issue 8).

The same independent-writer store (same seed, same app name) is written into the cluster and
into the single server; the PostgreSQL results of the two migrations are compared row for row.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import independent_writer as iw
import psycopg
import pytest
import redis
import redis.cluster
from cluster import LocalCluster, redis_cluster
from helpers import cli_env, run_cli
from test_migrate import (
    assert_clean_aggregates_migrated,
    cli_args,
    migrate,
    new_database,
    pg_rows,
    write_defect_store,
)
from test_migrate_wrong_key_type import plant_commit_list_keys, plant_wrong_hashes

from esctl import redisio
from esctl.migrate import MigrateOptions, migrate_redis_to_pg
from esctl.verify import VerifyOptions, verify

__all__ = ["redis_cluster"]  # the fixture, imported for pytest

QUARANTINE_SQL = "SELECT DISTINCT aggregate_id, kind FROM esctl.quarantine ORDER BY 1, 2"


@pytest.fixture
def cluster_client(redis_cluster: LocalCluster) -> Iterator[redis.cluster.RedisCluster]:
    yield redis_cluster.client()


@pytest.fixture
def single_pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A second database: the single instance's migration goes there."""
    with new_database(pg_admin_dsn) as dsn:
        yield dsn


def test_the_cluster_holds_the_store_across_all_primaries(
    redis_cluster: LocalCluster, cluster_client: redis.cluster.RedisCluster, app_name: str
) -> None:
    truth = write_defect_store(cluster_client, app_name)  # type: ignore[arg-type]
    per_node = [
        redis.Redis(port=n.port).dbsize()
        for n in redis_cluster.nodes
        if redis.Redis(port=n.port).info("replication")["role"] == "master"
    ]
    assert len(per_node) == 3 and all(size > 0 for size in per_node)
    found: set[str] = set()
    for _, keys in redisio.scan_pages(cluster_client, "{EventStore:" + app_name + "}:*"):
        found.update(keys)
    assert found == set(truth.commit_lists)


def test_migration_from_the_cluster_gives_exactly_the_rows_of_a_single_instance(
    cluster_client: redis.cluster.RedisCluster,
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    single_pg_dsn: str,
    app_name: str,
) -> None:
    truth = write_defect_store(cluster_client, app_name)  # type: ignore[arg-type]
    write_defect_store(redis_client, app_name)
    from_cluster = migrate_redis_to_pg(
        cluster_client, MigrateOptions(app=app_name, pg_dsn=pg_dsn, batch_size=60, init_schema=True)
    )
    from_single = migrate(redis_test_url, single_pg_dsn, app_name, batch_size=60, init_schema=True)

    assert_clean_aggregates_migrated(pg_dsn, truth)
    rows = pg_rows(pg_dsn)
    assert rows and rows == pg_rows(single_pg_dsn)
    with psycopg.connect(pg_dsn) as a, psycopg.connect(single_pg_dsn) as b:
        assert a.execute(QUARANTINE_SQL).fetchall() == b.execute(QUARANTINE_SQL).fetchall()
    for name in ("aggregates", "events_migrated", "aggregates_quarantined", "events_quarantined"):
        assert getattr(from_cluster, name) == getattr(from_single, name), name
    key = lambda p: (p["kind"], p["key"])  # noqa: E731
    assert sorted(from_cluster.problems, key=key) == sorted(from_single.problems, key=key)
    assert from_cluster.problem_counts == from_single.problem_counts
    assert from_cluster.problems_total == from_single.problems_total

    # A second run finds everything present, as on a single instance.
    again = migrate_redis_to_pg(cluster_client, MigrateOptions(app=app_name, pg_dsn=pg_dsn))
    assert again.events_migrated == 0
    assert pg_rows(pg_dsn) == rows


def test_verify_on_the_cluster_reports_what_it_reports_on_a_single_instance(
    cluster_client: redis.cluster.RedisCluster,
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    single_pg_dsn: str,
    app_name: str,
) -> None:
    iw.write_store(cluster_client, app=app_name, aggregates=80, defects=["orphan"], seed=5)
    iw.write_store(redis_client, app=app_name, aggregates=80, defects=["orphan"], seed=5)
    migrate_redis_to_pg(
        cluster_client, MigrateOptions(app=app_name, pg_dsn=pg_dsn, init_schema=True)
    )
    migrate(redis_test_url, single_pg_dsn, app_name, init_schema=True)

    on_cluster = verify(cluster_client, VerifyOptions(app=app_name, pg_dsn=pg_dsn))
    on_single = verify(redisio.connect(redis_test_url), VerifyOptions(app=app_name, pg_dsn=pg_dsn))
    assert on_cluster.mismatches == 0 and on_cluster.problems == []
    assert on_cluster.aggregates == on_single.aggregates == 80
    assert on_cluster.events_compared == on_single.events_compared > 0


def test_keys_of_another_type_are_quarantined_on_the_cluster_as_on_a_single_instance(
    cluster_client: redis.cluster.RedisCluster,
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    single_pg_dsn: str,
    app_name: str,
) -> None:
    """The commit-list SCAN without TYPE (on the node of the app's hash tag) and the event
    hashes of another type spread over the primaries: the same quarantine, the same verify."""
    for client in (cluster_client, redis_client):
        truth = iw.write_store(client, app=app_name, aggregates=40, legacy_share=0.3, seed=6)
        plant_commit_list_keys(client, app_name)  # type: ignore[arg-type]
        wrong = plant_wrong_hashes(client, app_name, truth)  # type: ignore[arg-type]
    from_cluster = migrate_redis_to_pg(
        cluster_client, MigrateOptions(app=app_name, pg_dsn=pg_dsn, init_schema=True)
    )
    from_single = migrate(redis_test_url, single_pg_dsn, app_name, init_schema=True)
    assert from_cluster.problem_counts == from_single.problem_counts
    assert from_cluster.aggregates_quarantined == 2 + len(wrong.unreadable)
    assert from_cluster.events_migrated == from_single.events_migrated > 0
    with psycopg.connect(pg_dsn) as a, psycopg.connect(single_pg_dsn) as b:
        assert a.execute(QUARANTINE_SQL).fetchall() == b.execute(QUARANTINE_SQL).fetchall()
    assert pg_rows(pg_dsn) == pg_rows(single_pg_dsn)
    on_cluster = verify(cluster_client, VerifyOptions(app=app_name, pg_dsn=pg_dsn))
    assert on_cluster.counts["unmigratable_in_redis"] == 2 + len(wrong.unreadable)
    assert on_cluster.mismatches == on_cluster.counts["unmigratable_in_redis"]


def test_cli_migrates_and_verifies_through_a_cluster_url(
    redis_cluster: LocalCluster,
    cluster_client: redis.cluster.RedisCluster,
    pg_dsn: str,
    app_name: str,
) -> None:
    truth = iw.write_store(cluster_client, app=app_name, aggregates=60, seed=7)
    args = cli_args(redis_cluster.url, pg_dsn, app_name)
    result = run_cli("migrate", "redis-to-pg", *args, "--init-schema", "--json")
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["events_migrated"] == len(truth.events()) and doc["problems"] == []
    assert_clean_aggregates_migrated(pg_dsn, truth)

    checked = run_cli("migrate", "verify", *args[:-1], "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["problems"] == []

    # --cluster with a plain redis:// URL of any node is the same cluster.
    plain_url = f"redis://127.0.0.1:{redis_cluster.nodes[1].port}/0"
    args = cli_args(plain_url, pg_dsn, app_name)
    second = run_cli("migrate", "redis-to-pg", *args, "--cluster", "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["events_migrated"] == 0


def test_four_concurrent_shard_processes_give_exactly_the_rows_of_one_unsharded_run(
    redis_cluster: LocalCluster,
    cluster_client: redis.cluster.RedisCluster,
    pg_dsn: str,
    single_pg_dsn: str,
    app_name: str,
) -> None:
    write_defect_store(cluster_client, app_name, seed=16)  # type: ignore[arg-type]
    reference = migrate_redis_to_pg(
        cluster_client, MigrateOptions(app=app_name, pg_dsn=single_pg_dsn, init_schema=True)
    )
    args = cli_args(redis_cluster.url, pg_dsn, app_name)
    command = [sys.executable, "-m", "esctl", "migrate", "redis-to-pg", *args, "--json"]
    processes = [
        subprocess.Popen(
            [*command, "--init-schema", "--batch-size", "40", "--shard", f"{i}/4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(),
            text=True,
        )
        for i in range(4)
    ]
    docs = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode in (0, 3), err
        docs.append(json.loads(out))

    rows = pg_rows(pg_dsn)
    assert rows == pg_rows(single_pg_dsn)
    assert len(rows) == len(set(rows)) == reference.events_migrated
    assert sum(d["aggregates"] for d in docs) == reference.aggregates
    assert sum(d["events_migrated"] for d in docs) == reference.events_migrated
    assert sum(d["aggregates_quarantined"] for d in docs) == reference.aggregates_quarantined
    with psycopg.connect(pg_dsn) as a, psycopg.connect(single_pg_dsn) as b:
        assert a.execute(QUARANTINE_SQL).fetchall() == b.execute(QUARANTINE_SQL).fetchall()


BATCHES_SQL = """
SELECT count(*) FROM esctl.migration_batch b JOIN esctl.migration_run r USING (run_id)
 WHERE r.application_name = %s AND r.shard = %s
"""


def _committed_batches(dsn: str, app: str, shard: str) -> int:
    """Batches the shard's runs committed so far (0 while its state tables do not exist)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('esctl.migration_batch')").fetchone()[0]:  # type: ignore[index]
            return 0
        row = conn.execute(BATCHES_SQL, (app, shard)).fetchone()
    return int(row[0]) if row else 0


def _kill_a_shard_mid_run_then_rerun_it(url: str, pg_dsn: str, app: str) -> list[dict[str, Any]]:
    """Four ``--shard i/4`` processes start at once against ``pg_dsn``; shard 1/4 is SIGKILLed
    as soon as it has committed a batch (and before it finished), the other three finish, then
    shard 1/4 is rerun to completion. Returns the four final summaries (the rerun's for 1/4)."""
    args = [*cli_args(url, pg_dsn, app), "--json", "--init-schema", "--batch-size", "2"]
    command = [sys.executable, "-m", "esctl", "migrate", "redis-to-pg", *args]
    processes = [
        subprocess.Popen(
            [*command, "--shard", f"{i}/4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(),
            text=True,
        )
        for i in range(4)
    ]
    victim = processes[1]
    deadline = time.monotonic() + 60
    while _committed_batches(pg_dsn, app, "1/4") < 1:
        assert victim.poll() is None, "shard 1/4 ended before it could be killed mid-run"
        assert time.monotonic() < deadline, "shard 1/4 committed no batch within 60 s"
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL, "shard 1/4 finished before the kill"
    victim.communicate()
    at_kill = _committed_batches(pg_dsn, app, "1/4")
    with psycopg.connect(pg_dsn) as conn:
        (status,) = conn.execute(
            "SELECT status FROM esctl.migration_run WHERE application_name = %s AND shard = '1/4'",
            (app,),
        ).fetchone()  # type: ignore[misc]
    assert status == "running"  # what a kill -9 leaves: the rerun resumes this run

    docs: list[dict[str, Any]] = []
    for process in processes:
        if process is victim:
            docs.append({})
            continue
        out, err = process.communicate(timeout=180)
        assert process.returncode in (0, 3), err
        docs.append(json.loads(out))
    rerun = run_cli("migrate", "redis-to-pg", *args, "--shard", "1/4")
    assert "Traceback" not in rerun.stdout + rerun.stderr
    assert rerun.returncode in (0, 3), rerun.stderr
    docs[1] = json.loads(rerun.stdout)
    assert docs[1]["resumed"] is True
    assert _committed_batches(pg_dsn, app, "1/4") > at_kill  # the rerun had work left to do
    return docs


def _assert_same_as_unsharded(
    docs: list[dict[str, Any]], reference: Any, pg_dsn: str, reference_dsn: str
) -> None:
    rows = pg_rows(pg_dsn)
    assert rows == pg_rows(reference_dsn)
    assert len(rows) == len(set(rows)) == reference.events_migrated
    # The killed run's committed batches count in its rerun's summary (it resumed that run).
    assert sum(d["events_migrated"] for d in docs) == reference.events_migrated
    assert sum(d["aggregates_quarantined"] for d in docs) == reference.aggregates_quarantined
    with psycopg.connect(pg_dsn) as a, psycopg.connect(reference_dsn) as b:
        assert a.execute(QUARANTINE_SQL).fetchall() == b.execute(QUARANTINE_SQL).fetchall()
        unfinished = a.execute(
            "SELECT count(*) FROM esctl.migration_run WHERE status <> 'finished'"
        ).fetchone()
    assert unfinished == (0,)


def test_a_shard_killed_mid_run_and_rerun_completes_exactly_the_rows_of_one_unsharded_run(
    redis_cluster: LocalCluster,
    cluster_client: redis.cluster.RedisCluster,
    pg_dsn: str,
    single_pg_dsn: str,
    app_name: str,
) -> None:
    iw.write_store(
        cluster_client,
        app=app_name,
        aggregates=400,
        events_per_aggregate=(1, 6),
        defects=["orphan", "version_gap", "missing_payload"],
        seed=21,
    )
    reference = migrate_redis_to_pg(
        cluster_client, MigrateOptions(app=app_name, pg_dsn=single_pg_dsn, init_schema=True)
    )
    docs = _kill_a_shard_mid_run_then_rerun_it(redis_cluster.url, pg_dsn, app_name)
    _assert_same_as_unsharded(docs, reference, pg_dsn, single_pg_dsn)

    # verify: nothing missing, extra or different; only the planted defects, which migrate
    # quarantined (unmigratable_in_redis), are reported.
    args = cli_args(redis_cluster.url, pg_dsn, app_name)[:-1]
    checked = run_cli("migrate", "verify", *args, "--json")
    assert checked.returncode == 3, checked.stderr
    report = json.loads(checked.stdout)
    for kind in ("missing_in_pg", "extra_in_pg", "content_differs", "not_migrated_new_events"):
        assert report[kind] == 0, (kind, report["problems"])
    assert report["unmigratable_in_redis"] == reference.aggregates_quarantined > 0


def test_a_shard_killed_mid_run_and_rerun_on_a_single_instance(
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    single_pg_dsn: str,
    app_name: str,
) -> None:
    iw.write_store(redis_client, app=app_name, aggregates=400, events_per_aggregate=(1, 6), seed=22)
    reference = migrate(redis_test_url, single_pg_dsn, app_name, init_schema=True)
    docs = _kill_a_shard_mid_run_then_rerun_it(redis_test_url, pg_dsn, app_name)
    _assert_same_as_unsharded(docs, reference, pg_dsn, single_pg_dsn)
    args = cli_args(redis_test_url, pg_dsn, app_name)[:-1]
    checked = run_cli("migrate", "verify", *args, "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["problems"] == []
