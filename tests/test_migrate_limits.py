"""``migrate redis-to-pg`` limits an operator sets: ``--max-problems N`` (stop once more than N
aggregates had problems) and ``--max-redis-latency MS`` (back off while Redis answers slower
than MS), the latter against a Redis of the test's own slowed with ``CLIENT PAUSE``."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import independent_writer as iw
import psycopg
import pytest
import redis
from helpers import run_cli, start_cli
from test_migrate import cli_args, new_database, pg_rows

from esctl import redisio, servers

BATCH = ["--batch-size", "40"]


def write_defective_store(client: redis.Redis, app: str) -> iw.GroundTruth:
    """300 aggregates, 8 of them unloadable (quarantined by every run)."""
    return iw.write_store(
        client,
        app=app,
        aggregates=300,
        events_per_aggregate=(2, 5),
        defects=["version_gap", "missing_payload"] * 4,
        seed=61,
    )


def migrate_cli(url: str, dsn: str, app: str, *extra: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("migrate", "redis-to-pg", *cli_args(url, dsn, app), "--json", *extra)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def run_statuses(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT status FROM esctl.migration_run ORDER BY started_at").fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def second_dsn(pg_admin_dsn: str) -> Iterator[str]:
    with new_database(pg_admin_dsn) as dsn:
        yield dsn


# --- --max-problems ------------------------------------------------------------------------


def test_max_problems_stops_once_more_than_n_aggregates_had_problems(
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    second_dsn: str,
    app_name: str,
) -> None:
    truth = write_defective_store(redis_client, app_name)
    bad = {a.list_key for a in truth.defective_aggregates()}
    assert len(bad) == 8

    # Exactly as many as the store holds: not more than N, so the run goes to the end.
    code, whole = migrate_cli(redis_test_url, second_dsn, app_name, "--init-schema", *BATCH,
                              "--max-problems", "8")  # fmt: skip
    assert code == 3, whole
    assert whole["stopped_early"] is None and whole["aggregates_quarantined"] == 8
    assert run_statuses(second_dsn) == ["finished"]
    reference = pg_rows(second_dsn)
    assert len(reference) == sum(len(a.events) for a in truth.clean_aggregates())

    code, stopped = migrate_cli(redis_test_url, pg_dsn, app_name, "--init-schema", *BATCH,
                                "--max-problems", "2")  # fmt: skip
    assert code == 3, stopped
    assert stopped["stopped_early"] == "more than 2 aggregates with problems (--max-problems)"
    assert 3 <= stopped["aggregates_quarantined"] < 8, stopped
    assert {p["key"] for p in stopped["problems"]} < bad
    assert run_statuses(pg_dsn) == ["stopped"]
    assert 0 < len(pg_rows(pg_dsn)) < len(reference)  # the batches after the stop: not read

    # The same command without the limit resumes the stopped run and finishes it.
    code, rest = migrate_cli(redis_test_url, pg_dsn, app_name, *BATCH)
    assert code == 3 and rest["resumed"] is True and rest["stopped_early"] is None, rest
    assert {p["key"] for p in rest["problems"]} == bad
    assert run_statuses(pg_dsn) == ["finished"]
    assert pg_rows(pg_dsn) == reference


def test_max_problems_one_below_the_stores_count_stops(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_defective_store(redis_client, app_name)
    code, doc = migrate_cli(redis_test_url, pg_dsn, app_name, "--init-schema", *BATCH,
                            "--max-problems", "7")  # fmt: skip
    assert code == 3 and doc["stopped_early"], doc
    assert run_statuses(pg_dsn) == ["stopped"]


# --- --max-redis-latency -------------------------------------------------------------------


def pings(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_ping")
    return int(stats["calls"]) if stats else 0


def test_the_pacer_waits_out_a_paused_redis_and_goes_on_once_it_answers_in_time(
    fresh_redis: servers.LocalRedis,
) -> None:
    admin = redis.Redis.from_url(fresh_redis.url)
    client = redis.Redis.from_url(fresh_redis.url)
    try:
        # Over the threshold: slow pings are retried until one answers within 200 ms.
        before = pings(admin)
        admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        started = time.monotonic()
        pacer = redisio.LatencyPacer(client, None, max_latency_ms=200)
        pacer.wait(1)
        assert time.monotonic() - started >= 1.0  # the server answered nothing before
        assert pings(admin) - before >= 2  # the slow one, then one in time
        assert pacer.last_latency_ms <= 200

        # Under the threshold: the slow answer is accepted as it is, one ping.
        before = pings(admin)
        admin.execute_command("CLIENT", "PAUSE", 800, "ALL")
        slow_ok = redisio.LatencyPacer(client, None, max_latency_ms=60_000)
        slow_ok.wait(1)
        assert pings(admin) - before == 1
        assert slow_ok.last_latency_ms >= 500
    finally:
        client.close()
        admin.close()


def committed_batches(dsn: str) -> int:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM esctl.migration_batch WHERE events_migrated > 0"
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def test_migrate_backs_off_while_redis_is_slower_than_max_redis_latency(
    fresh_redis: servers.LocalRedis, pg_dsn: str, second_dsn: str, app_name: str
) -> None:
    """The same migration twice from one server: undisturbed, then paused for a second mid-run.
    The paused run pings more (its slow ping is retried), exits 0 and migrates every event."""
    client = redis.Redis.from_url(fresh_redis.url)
    truth = iw.write_store(client, app=app_name, aggregates=400, events_per_aggregate=(3, 8),
                           seed=62)  # fmt: skip
    events = len(truth.events())
    slowed = [*cli_args(fresh_redis.url, pg_dsn, app_name), "--init-schema", *BATCH,
              "--max-redis-latency", "300", "--rate", "1500", "--json"]  # fmt: skip
    try:
        before = pings(client)
        code, calm = migrate_cli(fresh_redis.url, second_dsn, app_name, "--init-schema", *BATCH,
                                 "--max-redis-latency", "300")  # fmt: skip
        assert code == 0 and calm["events_migrated"] == events, calm
        calm_pings = pings(client) - before
        assert calm_pings >= 1

        before = pings(client)
        proc = start_cli("migrate", "redis-to-pg", *slowed)
        try:
            deadline = time.monotonic() + 60
            while committed_batches(pg_dsn) == 0:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no batch committed"
                time.sleep(0.01)
            client.execute_command("CLIENT", "PAUSE", 1000, "ALL")
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        assert proc.returncode == 0, err
        paused = json.loads(out)
        assert paused["events_migrated"] == events and paused["problems"] == []
        assert pings(client) - before > calm_pings  # the ping during the pause was retried
        assert pg_rows(pg_dsn) == pg_rows(second_dsn)
    finally:
        client.close()
