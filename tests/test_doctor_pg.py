"""doctor's PostgreSQL checks against a database of the test's own: before any schema, with
the library's schema and esctl's bookkeeping (written as a migration leaves them, or by real
migrations that quarantine aggregates), with a unique constraint missing, and with PostgreSQL
down."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import independent_writer as iw
import psycopg
import pytest
import redis
from psycopg import conninfo, sql
from test_migrate import migrate

from esctl import doctor, layout, pg, servers
from esctl.doctor import DoctorOptions, DoctorReport, pg_checks, report_metrics
from esctl.migrate import MigrationSummary
from esctl.shard import Shard

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
    assert "7 Redis events waiting for the next run" in later.check("pg.migration").observed


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


# --- quarantined aggregates: not events waiting for the next run ---------------------------


def quarantined_events(truth: iw.GroundTruth) -> int:
    """The Redis events of the aggregates a first migration of ``truth`` quarantines."""
    return sum(len(truth.commit_lists[a.list_key]) for a in truth.defective_aggregates())


def quarantined_two(
    client: redis.Redis, redis_url: str, pg_dsn: str, app: str, *, seed: int
) -> tuple[iw.GroundTruth, MigrationSummary]:
    """A store of 12 aggregates, two with a defect (a missing payload, a version gap), migrated
    once: both quarantined."""
    truth = iw.write_store(
        client, app=app, aggregates=12, seed=seed, defects=("missing_payload", "version_gap")
    )
    summary = migrate(redis_url, pg_dsn, app, init_schema=True)
    assert summary.aggregates_quarantined == 2
    return truth, summary


def unmigrated_samples(report: DoctorReport) -> dict[str, float]:
    """The events waiting for the next run and those quarantined, from the metrics: all the
    unmigrated events (the series it always had, labelled by app only) and the quarantined."""
    found = {
        m.name: m.value
        for m in report_metrics(report)
        if m.name in ("esctl_doctor_pg_unmigrated_events", "esctl_doctor_pg_quarantined_events")
        and m.labels == {"app": report.app}
    }
    total, quarantined = (
        found["esctl_doctor_pg_unmigrated_events"],
        found["esctl_doctor_pg_quarantined_events"],
    )
    return {"waiting": total - quarantined, "quarantined": quarantined}


def test_quarantined_aggregates_are_told_apart_from_the_events_waiting_for_the_next_run(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """A rerun does not move what migrate quarantined: those events are not "not migrated
    yet", and the aggregates need a human, so the check warns and says where to look."""
    truth, summary = quarantined_two(redis_client, redis_test_url, pg_dsn, app_name, seed=5)
    stuck = quarantined_events(truth)

    report = run(redis_test_url, pg_dsn, app=app_name)
    check = report.check("pg.migration")
    assert check.values["quarantined_aggregates"] == 2
    assert check.values["quarantine_run_ids"] == [summary.run_id]
    assert check.values["unmigrated_waiting_events"] == 0
    assert check.values["unmigrated_quarantined_events"] == stuck
    assert check.values["unmigrated_events"] == stuck  # all of them, whatever the reason
    assert check.values["unmigrated_exact"]
    assert "0 Redis events waiting for the next run" in check.observed
    assert f"2 aggregates quarantined ({stuck} events)" in check.observed
    assert check.status == "warn"
    assert summary.run_id is not None and "esctl.quarantine" in (check.action or "")
    assert summary.run_id in (check.action or "")
    assert f"`esctl migrate status --app {app_name}`" in (check.action or "")
    assert unmigrated_samples(report) == {"waiting": 0, "quarantined": stuck}
    (aggregates,) = [
        m for m in report_metrics(report) if m.name == "esctl_doctor_pg_quarantined_aggregates"
    ]
    assert aggregates.value == 2 and aggregates.labels == {"app": app_name}

    iw.append_events(redis_client, truth, 7)
    later = run(redis_test_url, pg_dsn, app=app_name)
    check = later.check("pg.migration")
    assert check.values["unmigrated_waiting_events"] == 7
    assert check.values["unmigrated_quarantined_events"] == stuck
    assert check.values["unmigrated_events"] == 7 + stuck
    assert "7 Redis events waiting for the next run" in check.observed
    assert unmigrated_samples(later) == {"waiting": 7, "quarantined": stuck}

    # A rerun migrates the 7 and quarantines the two again: still two, still a warning.
    migrate(redis_test_url, pg_dsn, app_name)
    again = run(redis_test_url, pg_dsn, app=app_name).check("pg.migration")
    assert again.values["quarantined_aggregates"] == 2
    assert again.values["unmigrated_waiting_events"] == 0 and again.status == "warn"


def fix_missing_payload(client: redis.Redis, truth: iw.GroundTruth) -> iw.TruthAggregate:
    """Store the payload the ``missing_payload`` defect left out, as an operator would."""
    (defect,) = truth.defects_of("missing_payload")
    aggregate = truth.aggregate(defect.aggregate_id)
    (event,) = [e for e in aggregate.events if e.commit_id == defect.commit_id]
    client.hset(event.hash_key, event.commit_id, event.payload)
    aggregate.defects.clear()
    return aggregate


def test_an_aggregate_fixed_and_migrated_since_its_quarantine_is_not_counted(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """The latest run of shard 0/1 quarantined both; after one is fixed, runs of shards 0/2 and
    1/2 migrate it and quarantine the other again. 0/1's latest run still lists the fixed one
    in esctl.quarantine, but esctl.migrated_stream has it migrated since: not counted."""
    truth, first = quarantined_two(redis_client, redis_test_url, pg_dsn, app_name, seed=6)
    fixed = fix_missing_payload(redis_client, truth)
    halves = [migrate(redis_test_url, pg_dsn, app_name, shard=Shard(i, 2)) for i in (0, 1)]
    assert sum(h.aggregates_quarantined for h in halves) == 1
    (again,) = [h for h in halves if h.aggregates_quarantined]

    check = run(redis_test_url, pg_dsn, app=app_name).check("pg.migration")
    (gap,) = truth.defective_aggregates()
    assert gap.aggregate_id != fixed.aggregate_id
    assert check.values["quarantined_aggregates"] == 1
    assert first.run_id is not None and again.run_id is not None
    assert check.values["quarantine_run_ids"] == sorted([first.run_id, again.run_id])
    assert check.values["unmigrated_quarantined_events"] == len(truth.commit_lists[gap.list_key])
    assert check.values["unmigrated_waiting_events"] == 0
    assert "1 aggregate quarantined" in check.observed and check.status == "warn"


def test_an_aggregate_a_follower_quarantined_then_migrated_once_fixed_is_not_counted(
    fresh_redis: servers.LocalRedis, pg_dsn: str, app_name: str
) -> None:
    """One run, still running: the follower quarantines the aggregate, the operator fixes it,
    the service saves its next event and the follower migrates it. The run's esctl.quarantine
    rows stay; the aggregate is not quarantined any more."""
    from test_migrate_follow import Follower, level

    client = redis.Redis.from_url(fresh_redis.url)
    truth = iw.write_store(
        client, app=app_name, aggregates=20, seed=8, defects=("missing_payload",)
    )
    follower = Follower(fresh_redis.url, pg_dsn, app_name)
    try:
        follower.caught_up()
        held = run(fresh_redis.url, pg_dsn, app=app_name).check("pg.migration")
        assert held.values["status"] == "running"
        assert held.values["quarantined_aggregates"] == 1 and held.status == "warn"

        fixed = fix_missing_payload(client, truth)
        iw.append_events(client, truth, 1, aggregate_ids=[fixed.aggregate_id])
        level(pg_dsn, truth)
        check = run(fresh_redis.url, pg_dsn, app=app_name).check("pg.migration")
    finally:
        code, _ = follower.stop()
    assert code == 0
    assert check.values["run_id"] == held.values["run_id"]
    assert check.values["quarantined_aggregates"] == 0
    assert check.values["unmigrated_events"] == 0
    assert check.status == "ok" and "quarantined" not in check.observed


def test_the_estimate_reads_a_bounded_number_of_commit_lists_and_quarantined_aggregates(
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    app_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    truth = iw.write_store(
        redis_client,
        app=app_name,
        aggregates=30,
        seed=11,
        defects=("missing_payload", "version_gap", "invalid_compressed"),
    )
    migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    monkeypatch.setattr(pg_checks, "COMMIT_LIST_SAMPLE_MAX", 2)
    check = run(redis_test_url, pg_dsn, app=app_name).check("pg.migration")
    assert check.values["commit_lists_sampled"] == 2
    assert check.values["unmigrated_exact"] is False
    assert check.values["quarantined_aggregates"] == 3  # counted in PostgreSQL, not sampled
    # The first two by id read, scaled to the three.
    first = sorted(truth.defective_aggregates(), key=lambda a: a.aggregate_id)[:2]
    read = sum(len(truth.commit_lists[a.list_key]) for a in first)
    assert check.values["unmigrated_quarantined_events"] == round(read / 2 * 3)
    assert "~" in check.observed


def test_a_commit_list_key_that_is_not_utf8_does_not_stop_the_check(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """It made the lookup in esctl.migrated_stream raise (the check was n/a); migrate
    quarantines such a key, and it then counts as quarantined."""
    truth = iw.write_store(redis_client, app=app_name, aggregates=5, seed=3)
    record_migration(pg_dsn, truth)
    redis_client.rpush(layout.commit_list_key(app_name, "bad").encode() + b"\xff", b"1")
    check = run(redis_test_url, pg_dsn, app=app_name).check("pg.migration")
    assert check.status == "ok", check.observed
    assert check.values["unmigrated_waiting_events"] == 1
    migrate(redis_test_url, pg_dsn, app_name)
    check = run(redis_test_url, pg_dsn, app=app_name).check("pg.migration")
    assert check.values["quarantined_aggregates"] == 1
    assert check.values["unmigrated_waiting_events"] == 0


def test_a_role_that_may_not_read_the_tables_is_given_the_grants(
    redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """A role without README's read grants: information_schema hides the tables from it, so
    pg.schema said "no event tables in schema public yet" and to run --init-schema, and
    pg.migration "could not run: InsufficientPrivilege" with nothing to do. Now each says the
    role may not read them, with the GRANTs to paste; pasted, the checks run."""
    role = f"esctl_t_{secrets.token_hex(4)}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        pg.ensure_event_store_schema(admin, "public", create=True)
        pg.ensure_state_schema(admin)
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(role)))
        database = sql.Identifier(admin.info.dbname)
        admin.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, sql.Identifier(role))
        )
    try:
        dsn = conninfo.make_conninfo(pg_dsn, user=role, password="pw")
        report = run(redis_test_url, dsn, app=app_name)
        schema, constraints, migration = (report.check(c) for c in PG_CHECKS[1:])
        for check in (schema, constraints, migration):
            assert check.status == "unavailable", (check.id, check.observed)
            assert check.action is not None and "GRANT SELECT ON ALL TABLES" in check.action
        assert f"role {role} may not read them" in schema.observed
        grants = schema.action or ""
        assert "--init-schema" not in grants
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(grants.split("`")[1].encode())
        granted = run(redis_test_url, dsn, app=app_name)
        assert granted.check("pg.schema").status == "ok"
        assert granted.check("pg.constraints").status == "ok"
        assert granted.check("pg.migration").status != "unavailable"
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(database, sql.Identifier(role))
            )
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
