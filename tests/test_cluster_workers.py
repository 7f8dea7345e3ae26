"""``migrate redis-to-pg --workers K``: K local processes, one sub-shard each, one combined
summary; the rows are exactly those of one unsharded run (issue 8). Run against the three-
primary cluster and a single instance."""

from __future__ import annotations

import json
from collections.abc import Iterator

import independent_writer as iw
import psycopg
import pytest
import redis
import redis.cluster
from cluster import LocalCluster, redis_cluster
from helpers import run_cli
from test_migrate import (
    cli_args,
    migrate,
    new_database,
    pg_rows,
    write_defect_store,
)

from esctl import redisio
from esctl.migrate import MigrateOptions, Progress, migrate_parallel
from esctl.shard import Shard

__all__ = ["redis_cluster"]  # the fixture, imported for pytest

QUARANTINE_SQL = "SELECT DISTINCT aggregate_id, kind FROM esctl.quarantine ORDER BY 1, 2"


@pytest.fixture
def reference_dsn(pg_admin_dsn: str) -> Iterator[str]:
    with new_database(pg_admin_dsn) as dsn:
        yield dsn


def test_workers_on_a_cluster_give_the_rows_of_one_unsharded_run_with_one_summary(
    redis_cluster: LocalCluster, pg_dsn: str, reference_dsn: str, app_name: str
) -> None:
    client = redis_cluster.client()
    truth = write_defect_store(client, app_name, seed=21)  # type: ignore[arg-type]
    reference = migrate_parallel(
        redisio.RedisTarget(redis_cluster.url),
        MigrateOptions(app=app_name, pg_dsn=reference_dsn, init_schema=True),
        workers=1,
    )
    seen: list[Progress] = []
    summary = migrate_parallel(
        redisio.RedisTarget(redis_cluster.url),
        MigrateOptions(app=app_name, pg_dsn=pg_dsn, init_schema=True, batch_size=30),
        workers=3,
        on_progress=seen.append,
    )
    rows = pg_rows(pg_dsn)
    assert rows == pg_rows(reference_dsn)
    assert len(rows) == len(set(rows)) == reference.events_migrated
    for name in ("aggregates", "events_migrated", "aggregates_quarantined", "events_quarantined"):
        assert getattr(summary, name) == getattr(reference, name), name
    assert summary.aggregates == len(truth.commit_lists)
    key = lambda p: (p["kind"], p["key"])  # noqa: E731
    assert sorted(summary.problems, key=key) == sorted(reference.problems, key=key)
    assert summary.problem_counts == reference.problem_counts
    assert summary.problems_total == reference.problems_total
    assert summary.problems_where is not None and summary.run_id is not None
    assert all(r in summary.problems_where for r in summary.run_id.split(","))
    assert len(summary.run_id.split(",")) == 3
    # Combined progress: cumulative over the workers, ending at the totals.
    assert seen and seen[-1].events_migrated == summary.events_migrated
    assert [p.commits_seen for p in seen] == sorted(p.commits_seen for p in seen)
    with psycopg.connect(pg_dsn) as a, psycopg.connect(reference_dsn) as b:
        assert a.execute(QUARANTINE_SQL).fetchall() == b.execute(QUARANTINE_SQL).fetchall()

    # A rerun with the same workers finds everything present.
    again = migrate_parallel(
        redisio.RedisTarget(redis_cluster.url),
        MigrateOptions(app=app_name, pg_dsn=pg_dsn),
        workers=3,
    )
    assert again.events_migrated == 0 and pg_rows(pg_dsn) == rows


def test_cli_workers_within_a_shard_on_a_single_instance(
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    reference_dsn: str,
    app_name: str,
) -> None:
    iw.write_store(redis_client, app=app_name, aggregates=90, defects=["orphan"], seed=4)
    reference = migrate(redis_test_url, reference_dsn, app_name, init_schema=True)

    docs = []
    for index in range(2):  # --shard i/2 with --workers 2: four processes in all
        result = run_cli(
            "migrate", "redis-to-pg", *cli_args(redis_test_url, pg_dsn, app_name),
            "--init-schema", "--shard", f"{index}/2", "--workers", "2", "--json",
        )  # fmt: skip
        assert "Traceback" not in result.stdout + result.stderr
        assert result.returncode == 0, result.stderr
        docs.append(json.loads(result.stdout))
        assert all(Shard(index, 2).owns(p["key"].split("}:", 1)[1]) for p in docs[-1]["problems"])
    assert pg_rows(pg_dsn) == pg_rows(reference_dsn)
    assert sum(d["events_migrated"] for d in docs) == reference.events_migrated
    assert sum(d["aggregates"] for d in docs) == reference.aggregates == 90


def test_a_worker_error_is_reported_as_the_command_error(
    redis_cluster: LocalCluster, pg_dsn: str, app_name: str
) -> None:
    # No tables and no --init-schema: every worker refuses; the error names the table.
    result = run_cli(
        "migrate", "redis-to-pg", *cli_args(redis_cluster.url, pg_dsn, app_name),
        "--workers", "2", "--json",
    )  # fmt: skip
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == 1
    error = json.loads(result.stdout)["error"]
    # the worker's typed error crossed the process boundary whole, hint included
    assert error["kind"] == "schema" and "--init-schema" in error["hint"]
