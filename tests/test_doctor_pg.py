"""doctor's PostgreSQL checks against a database of the test's own: before any schema, with
the library's schema and esctl's bookkeeping (written as a migration leaves them), with a
unique constraint missing, and with PostgreSQL down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import independent_writer as iw
import psycopg
import redis

from esctl import doctor, pg, servers
from esctl.doctor import DoctorOptions, DoctorReport

PG_CHECKS = ("pg.reachable", "pg.schema", "pg.constraints", "pg.migration")


def run(url: str, dsn: str | None, **options: Any) -> DoctorReport:
    return doctor.run_doctor(DoctorOptions(redis_url=url, pg_dsn=dsn, **options))


def record_migration(
    dsn: str, truth: iw.GroundTruth, *, status: str = "finished", age: timedelta | None = None
) -> None:
    """What a migration of every aggregate of ``truth`` leaves in esctl's bookkeeping."""
    started = datetime.now(UTC) - (age or timedelta(minutes=5))
    with psycopg.connect(dsn) as conn:
        pg.ensure_event_store_schema(conn, "public", create=True)
        pg.ensure_state_schema(conn)
        conn.execute(
            "INSERT INTO esctl.migration_run (run_id, target_schema, application_name, shard,"
            " status, started_at, finished_at) VALUES ('r1', 'public', %s, '0/1', %s, %s, %s)",
            (truth.app, status, started, started + timedelta(minutes=1)),
        )
        for aggregate in truth.aggregates:
            conn.execute(
                "INSERT INTO esctl.migrated_stream (target_schema, application_name,"
                " aggregate_id, aggregate_type, commits, last_commit_id)"
                " VALUES ('public', %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (
                    truth.app,
                    aggregate.aggregate_id,
                    aggregate.aggregate_type,
                    len(truth.commit_lists[aggregate.list_key]),
                    truth.commit_lists[aggregate.list_key][-1],
                ),
            )


def test_no_checks_without_a_dsn(redis_test_url: str) -> None:
    report = run(redis_test_url, None)
    assert not [c for c in report.checks if c.id.startswith("pg.")]
    assert any(s["group"] == "postgresql" for s in report.skipped)


def test_an_empty_database(redis_test_url: str, pg_dsn: str, app_name: str) -> None:
    report = run(redis_test_url, pg_dsn, app=app_name)
    got = {c: report.check(c).status for c in PG_CHECKS}
    assert got == {
        "pg.reachable": "ok",
        "pg.schema": "warn",
        "pg.constraints": "unavailable",
        "pg.migration": "warn",
    }
    assert "--init-schema" in (report.check("pg.schema").action or "")


def test_a_migrated_store_and_the_events_saved_since(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=12, seed=5)
    record_migration(pg_dsn, truth)
    report = run(redis_test_url, pg_dsn, app=app_name)
    assert {c: report.check(c).status for c in PG_CHECKS} == dict.fromkeys(PG_CHECKS, "ok")
    migration = report.check("pg.migration")
    assert migration.values["status"] == "finished"
    assert migration.values["unmigrated_events"] == 0 and migration.values["unmigrated_exact"]

    iw.append_events(redis_client, truth, 7)
    later = run(redis_test_url, pg_dsn, app=app_name)
    assert later.check("pg.migration").values["unmigrated_events"] == 7
    assert "7 Redis events not migrated yet" in later.check("pg.migration").observed


def test_an_old_last_run_with_new_events_and_a_failed_run_are_warnings(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=4, seed=9)
    record_migration(pg_dsn, truth, age=timedelta(days=5))
    iw.append_events(redis_client, truth, 2)
    stale = run(redis_test_url, pg_dsn, app=app_name).check("pg.migration")
    assert stale.status == "warn" and "nightly" in (stale.action or "")
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE esctl.migration_run SET status = 'failed'")
    failed = run(redis_test_url, pg_dsn, app=app_name).check("pg.migration")
    assert failed.status == "warn" and "resumes" in (failed.action or "")


def test_a_missing_unique_constraint_fails(redis_test_url: str, pg_dsn: str, app_name: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        pg.ensure_event_store_schema(conn, "public", create=True)
        name = conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'public.event'::regclass"
            " AND contype = 'u'"
        ).fetchone()
        assert name is not None
        conn.execute(f'ALTER TABLE public.event DROP CONSTRAINT "{name[0]}"')
    report = run(redis_test_url, pg_dsn, app=app_name)
    constraints = report.check("pg.constraints")
    assert constraints.status == "fail"
    assert "public.event(aggregate_key, version)" in constraints.observed
    assert report.check("pg.schema").status == "fail"  # migrate would refuse it too
    assert report.failed


def test_postgresql_down_is_a_failed_check(redis_test_url: str) -> None:
    dsn = f"postgresql://esctl:secret@127.0.0.1:{servers.free_port()}/postgres"
    report = run(redis_test_url, dsn)
    assert report.check("pg.reachable").status == "fail"
    assert "secret" not in report.check("pg.reachable").observed
    assert {report.check(c).status for c in PG_CHECKS[1:]} == {"unavailable"}
    assert report.check("redis.reachable").status == "ok"  # the rest still ran
    assert report.postgresql is not None and "secret" not in report.postgresql
