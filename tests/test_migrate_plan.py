"""``migrate plan``: estimates against the ground truth of an independently written store, and
PostgreSQL left exactly as it was (real Redis and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import pytest
import redis
from helpers import run_cli
from independent_writer import GroundTruth, write_store

from esctl import migrate, plan, redisio


def esctl_client(url: str) -> redisio.RedisClient:
    return redisio.connect(url)


def truth_figures(truth: GroundTruth) -> dict[str, Any]:
    events = [e for e in truth.events()]
    stored = [e for e in events if e.stored is not None]
    return {
        "aggregates": len(truth.commit_lists),
        "events": sum(len(ids) for ids in truth.commit_lists.values()),
        "stored_bytes": sum(len(e.stored or b"") for e in stored),
        "json_bytes": sum(len(e.payload.encode("utf-8")) for e in stored),
        "compressed_share": sum(e.compressed for e in events) / len(events),
        "legacy_share": sum(e.legacy for e in events) / len(events),
    }


def pg_state(dsn: str) -> dict[str, Any]:
    """Everything a trial could leave behind: schemas, relations (with their sizes), functions,
    row counts and sequence positions. Session-private temp schemas are left out."""
    with psycopg.connect(dsn) as conn:
        schemas = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_temp%'"
            " AND nspname NOT LIKE 'pg_toast_temp%' ORDER BY 1"
        ).fetchall()
        relations = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind, pg_relation_size(c.oid)"
            "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
            "   AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'"
            # the system catalogs' TOAST (OIDs below 16384): an autovacuum ANALYZE meanwhile
            # grows pg_statistic's (pg_toast_2619)
            "   AND NOT (n.nspname = 'pg_toast'"
            "            AND substring(c.relname FROM '^pg_toast_([0-9]+)')::bigint < 16384)"
            " ORDER BY 1, 2"
        ).fetchall()
        functions = conn.execute(
            "SELECT n.nspname, p.proname FROM pg_proc p JOIN pg_namespace n"
            " ON n.oid = p.pronamespace WHERE n.nspname NOT IN ('pg_catalog',"
            " 'information_schema') ORDER BY 1, 2"
        ).fetchall()
        counts = {}
        sequences = {}
        for schema, name, kind, _ in relations:
            if schema == "pg_toast":
                continue
            ident = psycopg.sql.Identifier(schema, name)
            if kind == "r":
                counts[(schema, name)] = conn.execute(
                    psycopg.sql.SQL("SELECT count(*) FROM {}").format(ident)
                ).fetchone()
            elif kind == "S":
                sequences[(schema, name)] = conn.execute(
                    psycopg.sql.SQL("SELECT last_value, is_called FROM {}").format(ident)
                ).fetchone()
    return {
        "schemas": schemas,
        "relations": relations,
        "functions": functions,
        "counts": counts,
        "sequences": sequences,
    }


def redis_contents(client: redis.Redis) -> dict[bytes, Any]:
    """Every key of the test's database with its type and value."""
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"list":
            out[key] = ("list", client.lrange(key, 0, -1))
        elif kind == b"hash":
            out[key] = ("hash", client.hgetall(key))
        elif kind == b"set":
            out[key] = ("set", client.smembers(key))
        else:
            out[key] = (kind, client.dump(key))
    return out


def table_bytes(dsn: str, schema: str = "public") -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT pg_total_relation_size(%s::regclass) + pg_total_relation_size(%s::regclass)",
            (f"{schema}.aggregate", f"{schema}.event"),
        ).fetchone()
    assert row is not None
    return int(row[0])


def run_migration(client: redisio.RedisClient, app: str, dsn: str) -> migrate.MigrationSummary:
    return migrate.migrate_redis_to_pg(
        client, migrate.MigrateOptions(app=app, pg_dsn=dsn, init_schema=True, writers=1)
    )


def within(estimate: float, truth: float, share: float) -> bool:
    return abs(estimate - truth) <= share * truth


# --- estimates -----------------------------------------------------------------------------


def test_estimates_from_a_sample_are_near_the_truth(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_store(redis_client, app=app_name, aggregates=400, seed=7)
    want = truth_figures(truth)
    client = esctl_client(redis_test_url)

    summary = plan.plan(client, plan.PlanOptions(app=app_name, pg_dsn=pg_dsn, sample=150, seed=3))

    assert summary.aggregates == want["aggregates"]
    assert summary.events == want["events"]  # exact: SCAN + LLEN
    assert summary.sample_aggregates == 150
    assert not summary.exact
    assert within(summary.stored_bytes_estimate, want["stored_bytes"], 0.30)
    assert within(summary.json_bytes_estimate, want["json_bytes"], 0.30)
    assert abs(summary.compressed_share - want["compressed_share"]) < 0.15
    assert abs(summary.legacy_share - want["legacy_share"]) < 0.15
    assert summary.problems_in_sample == {}
    assert summary.target_tables_present is False
    assert summary.trial_events == summary.sample_events
    assert summary.trial_events_per_s and summary.trial_events_per_s > 0
    assert summary.estimated_seconds and summary.estimated_seconds > 0

    # The PostgreSQL estimate against a real load of the whole store.
    result = run_migration(client, app_name, pg_dsn)
    assert result.events_migrated == want["events"]
    actual = table_bytes(pg_dsn)
    assert summary.pg_bytes_estimate is not None
    assert within(summary.pg_bytes_estimate, actual, 0.35), (summary.pg_bytes_estimate, actual)


def test_a_sample_covering_the_store_is_exact(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_store(redis_client, app=app_name, aggregates=60, seed=11)
    want = truth_figures(truth)

    summary = plan.plan(
        esctl_client(redis_test_url), plan.PlanOptions(app=app_name, pg_dsn=pg_dsn, sample=1000)
    )

    assert summary.exact
    assert summary.sample_aggregates == want["aggregates"]
    assert summary.sample_events == summary.events == want["events"]
    assert summary.stored_bytes_estimate == want["stored_bytes"]
    assert summary.json_bytes_estimate == want["json_bytes"]
    assert summary.compressed_share == pytest.approx(want["compressed_share"])
    assert summary.legacy_share == pytest.approx(want["legacy_share"])
    assert summary.trial_aggregates == want["aggregates"]


def test_problems_in_the_sample_are_counted_per_kind(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    defects = ["missing_payload", "version_gap", "duplicate_version", "id_mismatch", "orphan"]
    truth = write_store(redis_client, app=app_name, aggregates=40, defects=defects, seed=5)

    summary = plan.plan(
        esctl_client(redis_test_url), plan.PlanOptions(app=app_name, pg_dsn=pg_dsn, sample=1000)
    )

    assert summary.problems_in_sample == {
        "missing_payload": 1,
        "version_gap": 1,
        "duplicate_version": 1,
        "id_mismatch": 1,
    }
    assert summary.aggregates_with_problems_in_sample == 4
    assert {p["kind"] for p in summary.problems} == set(summary.problems_in_sample)
    # Only clean aggregates go into the trial (the orphan's aggregate is clean).
    assert summary.trial_aggregates == len(truth.clean_aggregates())


def test_the_trial_respects_its_size_limit(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_store(redis_client, app=app_name, aggregates=80, events_per_aggregate=5, seed=2)

    summary = plan.plan(
        esctl_client(redis_test_url),
        plan.PlanOptions(app=app_name, pg_dsn=pg_dsn, sample=1000, trial_events=50),
    )

    assert summary.trial_events == 50
    assert summary.trial_aggregates == 10
    assert summary.pg_bytes_estimate and summary.pg_bytes_estimate > 0


# --- nothing stays in PostgreSQL -----------------------------------------------------------


def test_plan_leaves_an_empty_database_empty(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_store(redis_client, app=app_name, aggregates=30, seed=1)
    before = pg_state(pg_dsn)

    summary = plan.plan(esctl_client(redis_test_url), plan.PlanOptions(app=app_name, pg_dsn=pg_dsn))

    assert summary.trial_events > 0 and summary.pg_bytes_estimate
    assert pg_state(pg_dsn) == before


def test_plan_leaves_a_loaded_schema_and_its_sequences_unchanged(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_store(redis_client, app=app_name, aggregates=30, seed=1)
    client = esctl_client(redis_test_url)
    run_migration(client, app_name, pg_dsn)
    write_store(redis_client, app=app_name + "-other", aggregates=30, seed=2)
    before = pg_state(pg_dsn)
    assert before["sequences"]  # the bigserial sequences of aggregate and event

    for app in (app_name, app_name + "-other"):
        summary = plan.plan(client, plan.PlanOptions(app=app, pg_dsn=pg_dsn))
        assert summary.target_tables_present is True
        assert summary.trial_events > 0

    assert pg_state(pg_dsn) == before


def test_no_trial_needs_no_postgres(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    write_store(redis_client, app=app_name, aggregates=20, seed=1)

    summary = plan.plan(
        esctl_client(redis_test_url),
        plan.PlanOptions(app=app_name, pg_dsn="postgresql://nobody@127.0.0.1:1/none", trial=False),
    )

    assert summary.events > 0
    assert summary.pg_bytes_estimate is None and summary.estimated_seconds is None
    assert summary.trial_note


def test_plan_reads_redis_without_changing_it(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_store(redis_client, app=app_name, aggregates=30, defects=["orphan"], seed=4)
    before = redis_contents(redis_client)

    plan.plan(esctl_client(redis_test_url), plan.PlanOptions(app=app_name, pg_dsn=pg_dsn))

    assert redis_contents(redis_client) == before


# --- the command ---------------------------------------------------------------------------


def test_cli_json_document_and_exit_code(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_store(
        redis_client, app=app_name, aggregates=30, defects=["version_gap"], seed=9
    )  # a problem in the sample does not change the exit code

    result = run_cli(
        "migrate", "plan", "--sample", "10", "--json",
        "--app", app_name, "--redis-url", redis_test_url, "--pg-dsn", pg_dsn,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    document = orjson.loads(result.stdout)
    for key in (
        "aggregates", "events", "sample_aggregates", "sample_events", "stored_bytes_estimate",
        "json_bytes_estimate", "compressed_share", "legacy_share", "pg_bytes_estimate",
        "trial_events_per_s", "estimated_seconds", "problems_in_sample",
    ):  # fmt: skip
        assert key in document, key
    assert document["aggregates"] == 30
    assert document["sample_aggregates"] == 10
    assert isinstance(document["events"], int)


def test_cli_table(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_store(redis_client, app=app_name, aggregates=20, defects=["missing_payload"], seed=9)

    result = run_cli(
        "migrate", "plan",
        "--app", app_name, "--redis-url", redis_test_url, "--pg-dsn", pg_dsn,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "PostgreSQL size" in result.stdout
    assert "estimated run time" in result.stdout
    assert "missing_payload" in result.stdout


def test_cli_table_without_a_trial_shows_no_figures_rather_than_tilde_dash_or_a_rate_of_0(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_store(redis_client, app=app_name, aggregates=5, seed=9)

    result = run_cli(
        "migrate", "plan", "--no-trial",
        "--app", app_name, "--redis-url", redis_test_url, "--pg-dsn", pg_dsn,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    rows: dict[str, str] = {}
    for line in result.stdout.splitlines():
        if "\u2502" in line:
            name, value = line.split("\u2502", 1)
            rows[name.strip()] = value.strip()
    for row in ("PostgreSQL size", "of which event_data", "trial", "estimated run time"):
        assert rows[row] == "-", (row, result.stdout)
    assert "no trial (--no-trial)" in result.stderr


def test_cli_help_has_an_example() -> None:
    result = run_cli("migrate", "plan", "--help")
    assert result.returncode == 0
    assert "Example: esctl migrate plan" in result.stdout
