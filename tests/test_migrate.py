"""``migrate redis-to-pg``: acceptance tests against real Redis and PostgreSQL servers.

Ground truth is the independent writer (tests/independent_writer.py): expected rows, time stamps
and kinds are computed here from the payload text it wrote, never through esctl's codec. The
core is called as a library (``migrate_redis_to_pg``); a few tests run the real CLI for option
parsing, output shape and exit codes. ``clean_rows`` (the hand-optimised hot path) is held to
the general path (build_stream + validate_stream + stream_rows) by a property test.
"""

from __future__ import annotations

import json
import operator
import random
import re
import resource
import secrets
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import independent_writer as iw
import psycopg
import pytest
import redis
from helpers import cli_env, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.conninfo import make_conninfo

from esctl import pg, redisio, storereads
from esctl.codec import parse_timestamp
from esctl.locks import AdvisoryLock
from esctl.migrate import MigrateOptions, MigrationSummary, clean_rows, migrate_redis_to_pg
from esctl.migrate.rows import PG_EPOCH
from esctl.migrate.rows import binary_row as make_binary_row
from esctl.migrate.run import lock_name
from esctl.shard import Shard
from esctl.streams import StreamProblem, build_stream, clean_payloads, validate_stream
from esctl.verify import VerifyOptions, verify

# esctl's name for each kind the writer plants (orphans are not events: not a quarantine).
QUARANTINE_KIND = {k: k for k in iw.DEFECT_KINDS if k != "orphan"}

SUMMARY_KEYS = {
    "run_id",
    "dry_run",
    "aggregates",
    "events_migrated",
    "events_already_present",
    "aggregates_quarantined",
    "events_quarantined",
    "problems",
    "elapsed_s",
    "events_per_s",
    "resumed",
    "this_invocation",
}


# --- shared helpers (test_migrate_faults.py and test_verify.py import these) ---------------


@contextmanager
def new_database(admin_dsn: str) -> Iterator[str]:
    """A fresh database besides the test's own (``pg_dsn``), dropped afterwards."""
    name = f"esctl_t_{secrets.token_hex(6)}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
            ).format(sql.Identifier(name))
        )
    try:
        yield make_conninfo(admin_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def init_event_store(dsn: str) -> None:
    """The library's tables and functions, as an operator's earlier --init-schema made them."""
    with psycopg.connect(dsn) as conn:
        pg.ensure_event_store_schema(conn, "public", create=True)


def migrate(
    url: str, dsn: str, app: str, *, batch_size: int = 100, **options: Any
) -> MigrationSummary:
    client = redisio.connect(url)
    try:
        return migrate_redis_to_pg(
            client, MigrateOptions(app=app, pg_dsn=dsn, batch_size=batch_size, **options)
        )
    finally:
        client.close()


def cli_args(url: str, dsn: str, app: str) -> list[str]:
    return ["--redis-url", url, "--pg-dsn", dsn, "--app", app, "--no-progress"]


def run_migrate_cli(url: str, dsn: str, app: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    """``esctl migrate redis-to-pg ... --json``: (exit code, the JSON document, stderr)."""
    result = run_cli("migrate", "redis-to-pg", *cli_args(url, dsn, app), "--json", *extra)
    assert "Traceback" not in result.stderr + result.stdout
    return result.returncode, json.loads(result.stdout), result.stderr


ROWS_SQL = """
SELECT a.aggregate_id, a.aggregate_type, a.application_name, e.version, e.event_type,
       e.time_stamp, e.event_data::text
  FROM aggregate a JOIN event e ON e.aggregate_key = a.aggregate_key
 ORDER BY 1, 2, 4
"""


def pg_rows(dsn: str) -> list[tuple[Any, ...]]:
    """Every event row with its aggregate, as comparable tuples (event_data as jsonb text)."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(ROWS_SQL).fetchall()


def count(dsn: str, query: str, params: Sequence[Any] = ()) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def regclass_exists(dsn: str, name: str) -> bool:
    return count(dsn, "SELECT (to_regclass(%s) IS NOT NULL)::int", (name,)) == 1


_TIMESTAMP = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,7}))?([+-])(\d\d):(\d\d)"
)


def expected_timestamp(payload: str) -> datetime:
    """The payload's TimeStamp to the microsecond, the seventh digit truncated (what the .NET
    driver stores), computed from the text alone."""
    text = json.loads(payload)["TimeStamp"]
    m = _TIMESTAMP.fullmatch(text)
    assert m is not None, text
    year, month, day, hour, minute, second, fraction, sign, oh, om = m.groups()
    micro = int(((fraction or "") + "000000")[:6])
    offset = timedelta(hours=int(oh), minutes=int(om)) * (1 if sign == "+" else -1)
    return datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), micro,
        tzinfo=timezone(offset),
    )  # fmt: skip


def defective_list_keys(truth: iw.GroundTruth) -> set[str]:
    return {a.list_key for a in truth.defective_aggregates()}


def clean_events(truth: iw.GroundTruth) -> list[iw.TruthEvent]:
    return [e for a in truth.clean_aggregates() for e in a.events]


def assert_clean_aggregates_migrated(dsn: str, truth: iw.GroundTruth) -> None:
    """Every committed event of every clean aggregate is in PostgreSQL exactly once, with
    event_data equal as jsonb to the exact payload text and the right type, version, time
    stamp, aggregate type and application; nothing else is in the event table."""
    events = clean_events(truth)
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT u.n, e.event_data = u.payload::jsonb, e.event_type, e.time_stamp,"
            "       a.aggregate_type, a.application_name"
            "  FROM unnest(%s::text[], %s::int[], %s::text[]) WITH ORDINALITY AS u(id, v, payload, n)"
            "  LEFT JOIN aggregate a ON a.aggregate_id = u.id AND a.application_name = %s"
            "  LEFT JOIN event e ON e.aggregate_key = a.aggregate_key AND e.version = u.v"
            " ORDER BY u.n",
            (
                [e.aggregate_id for e in events],
                [e.version for e in events],
                [e.payload for e in events],
                truth.app,
            ),
        ).fetchall()
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (aggregate_key, version)) FROM event"
        ).fetchone() or (0, 0)
        aggregates = conn.execute("SELECT count(*) FROM aggregate").fetchone()
    assert len(found) == len(events)  # one aggregate row per (id, app): no row was doubled
    for (n, same_data, event_type, time_stamp, aggregate_type, app), e in zip(
        found, events, strict=True
    ):
        where = f"{e.aggregate_id} v{e.version} (#{n})"
        assert same_data is True, f"{where}: event_data missing or differs"
        assert event_type == e.event_type, where
        assert time_stamp == expected_timestamp(e.payload), where
        assert aggregate_type == e.aggregate_type, where
        assert app == truth.app, where
    assert total == distinct == len(events)
    assert aggregates is not None and aggregates[0] == len(truth.clean_aggregates())


def assert_get_events_for_aggregate(dsn: str, truth: iw.GroundTruth) -> None:
    """The library's read function returns each clean aggregate's JSON in version order."""
    clean = truth.clean_aggregates()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT u.id, g.data FROM unnest(%s::text[], %s::text[]) AS u(id, type),"
            " LATERAL get_events_for_aggregate(u.id, %s, u.type, 0) WITH ORDINALITY AS g(data, n)"
            " ORDER BY u.id, g.n",
            ([a.aggregate_id for a in clean], [a.aggregate_type for a in clean], truth.app),
        ).fetchall()
    got: dict[str, list[Any]] = {}
    for aggregate_id, data in rows:
        got.setdefault(aggregate_id, []).append(json.loads(data))
    for a in clean:
        wanted = [json.loads(e.payload) for e in sorted(a.events, key=lambda e: e.version)]
        assert got.get(a.aggregate_id) == wanted, a.aggregate_id


def write_defect_store(client: redis.Redis, app: str, *, seed: int = 11) -> iw.GroundTruth:
    """Both layouts, ~30% compressed, Unicode, every defect kind planted twice."""
    defects = [k for k in iw.DEFECT_KINDS for _ in range(2)]
    truth = iw.write_store(
        client,
        app=app,
        aggregates=150,
        events_per_aggregate=(1, 8),
        defects=defects,
        seed=seed,
        trimmed_timestamps=0.2,
    )
    events = truth.events()
    assert any(e.legacy for e in events) and any(not e.legacy for e in events)
    assert 0.2 < sum(e.compressed for e in events) / len(events) < 0.45
    assert any(ord(ch) > 0xFFFF for e in events for ch in e.payload)
    return truth


def write_clean_store(
    client: redis.Redis, app: str, *, aggregates: int = 80, seed: int = 5, **kw: Any
) -> iw.GroundTruth:
    """A loadable store (an orphan is planted: it is not an event, so the store is clean)."""
    return iw.write_store(
        client, app=app, aggregates=aggregates, defects=["orphan"], seed=seed, **kw
    )


def write_events(
    client: redis.Redis, app: str, aggregate_id: str, values: Sequence[bytes | str]
) -> list[str]:
    """Save stored values as the library does (HSET into the partition, then RPUSH)."""
    commit_ids = []
    for value in values:
        commit_id = str(uuid.uuid4())
        client.hset(iw.event_hash_key(app, commit_id), commit_id, value)
        client.rpush(iw.commit_list_key(app, aggregate_id), commit_id)
        commit_ids.append(commit_id)
    return commit_ids


def payload(aggregate_id: str, version: int, aggregate_type: str = "Item", **fields: Any) -> str:
    return iw.to_json(
        {
            "$type": "Learning.Items.Events.ItemChanged, Learning.Items",
            "Id": aggregate_id,
            "TimeStamp": f"2019-05-0{version % 9 + 1}T10:11:12.123456{version % 10}+02:00",
            "Version": version,
            "AggregateType": aggregate_type,
            **fields,
        }
    )


@pytest.fixture
def other_pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A second empty database (reference runs)."""
    with new_database(pg_admin_dsn) as dsn:
        yield dsn


# --- correctness ---------------------------------------------------------------------------


def test_migrates_every_clean_event_exactly_once_and_quarantines_defects_whole(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_defect_store(redis_client, app_name)
    summary = migrate(redis_test_url, pg_dsn, app_name, init_schema=True)

    assert_clean_aggregates_migrated(pg_dsn, truth)

    # Every aggregate with a planted defect: no row of it, quarantined whole with its kind.
    bad_ids = sorted({a.aggregate_id for a in truth.defective_aggregates()})
    assert (
        count(pg_dsn, "SELECT count(*) FROM aggregate WHERE aggregate_id = ANY(%s)", (bad_ids,))
        == 0
    )
    with psycopg.connect(pg_dsn) as conn:
        quarantine = conn.execute(
            "SELECT aggregate_id, kind, commit_id, stored_value, target_schema, application_name"
            "  FROM esctl.quarantine WHERE run_id = %s",
            (summary.run_id,),
        ).fetchall()
    kinds: dict[str, set[str]] = {}
    records: dict[tuple[str, str], tuple[str | None, bytes | None]] = {}
    for aggregate_id, kind, commit_id, stored, schema, app in quarantine:
        assert (schema, app) == ("public", app_name)
        kinds.setdefault(aggregate_id, set()).add(kind)
        records[(aggregate_id, kind)] = (commit_id, None if stored is None else bytes(stored))
    assert sorted(kinds) == bad_ids
    for d in truth.defects:
        if d.kind == "orphan":
            continue
        assert QUARANTINE_KIND[d.kind] in kinds[d.aggregate_id], d
    # The stored value is kept as bytes for the per-commit defects.
    by_commit = {e.commit_id: e for e in truth.events()}
    for d in truth.defects:
        if d.kind in ("invalid_compressed", "id_mismatch", "missing_payload"):
            commit_id, stored = records[(d.aggregate_id, d.kind)]
            assert commit_id == d.commit_id and d.commit_id is not None
            assert stored == by_commit[d.commit_id].stored  # None for a missing payload

    # Orphans are not events: their payloads are nowhere in PostgreSQL, not quarantined either.
    assert truth.orphans
    for orphan in truth.orphans:
        assert (
            count(
                pg_dsn, "SELECT count(*) FROM event WHERE event_data = %s::jsonb", (orphan.payload,)
            )
            == 0
        )
        assert orphan.aggregate_id not in kinds

    # The summary's counts.
    bad_keys = defective_list_keys(truth)
    assert summary.aggregates == len(truth.commit_lists)
    assert summary.aggregates_unchanged == 0
    assert summary.events_migrated == len(clean_events(truth))
    assert summary.events_already_present == 0
    assert summary.aggregates_quarantined == len(bad_keys)
    assert summary.events_quarantined == sum(len(truth.commit_lists[k]) for k in bad_keys)
    assert {p["key"] for p in summary.problems} == bad_keys
    expected_pairs = {
        (d.kind, iw.commit_list_key(app_name, d.aggregate_id))
        for d in truth.defects
        if d.kind != "orphan"
    }
    assert expected_pairs <= {(p["kind"], p["key"]) for p in summary.problems}
    assert summary.dry_run is False and summary.resumed is False


def test_get_events_for_aggregate_returns_each_clean_stream_in_version_order(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_defect_store(redis_client, app_name, seed=12)
    migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    assert_get_events_for_aggregate(pg_dsn, truth)


def test_odd_aggregate_ids_app_names_and_payload_text_survive_both_write_paths(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """Ids and text with tabs, newlines, backslashes, quotes and non-BMP characters go through
    COPY's escaping on the fast path and the staging path alike; the app name holds Redis glob
    metacharacters."""
    app = app_name + "[eu]*?\\ü"
    ids = [
        "Zürich/東京 🦄",
        "tab\there",
        "back\\slash\\N",
        "new\nline\r",
        'quote"d',
        "with space",
        "ü" * 300,
        '{br,ace}\\"',
        "NULL",
    ]
    texts = ["\\N", "tab\t", "a\\tb", "🦄\u2028\u2029", "\\\\", '{"}', "\r\n"]
    expected: dict[str, list[str]] = {}
    types = {"NULL": 'Ty"pe\\{,}'}  # (array literal syntax in an aggregate type too)
    last: dict[str, str] = {}
    for i, aggregate_id in enumerate(ids):
        docs = [
            payload(
                aggregate_id, v, types.get(aggregate_id, "Item"), Text=texts[(i + v) % len(texts)]
            )
            for v in (1, 2, 3)
        ]
        if i == 0:  # pretty-printed JSON: raw newlines and tabs between tokens
            docs[1] = json.dumps(json.loads(docs[1]), ensure_ascii=False, indent="\t")
        values = [iw.stored_value(d)[0] if i % 2 else iw.gzip_base64(d) for d in docs]
        last[aggregate_id] = write_events(redis_client, app, aggregate_id, values)[-1]
        expected[aggregate_id] = docs
    init_event_store(pg_dsn)
    # One identical row already there sends its batch through the staging table.
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "SELECT save_event_for_aggregate(%s, 'Item', %s, 1, %s, 'ItemChanged', %s)",
            (ids[1], app, expected_timestamp(expected[ids[1]][0]), expected[ids[1]][0]),
        )

    summary = migrate(redis_test_url, pg_dsn, app)
    assert summary.aggregates_quarantined == 0, summary.problems
    assert summary.events_migrated == 3 * len(ids) - 1
    assert summary.events_already_present == 1
    with psycopg.connect(pg_dsn) as conn:
        for aggregate_id, docs in expected.items():
            got = [
                r[0]
                for r in conn.execute(
                    "SELECT * FROM get_events_for_aggregate(%s, %s, %s, 0)",
                    (aggregate_id, app, types.get(aggregate_id, "Item")),
                )
            ]
            assert [json.loads(g) for g in got] == [json.loads(d) for d in docs], aggregate_id
            same = conn.execute(
                "SELECT bool_and(e.event_data = u.d::jsonb) AND count(*) = 3"
                "  FROM unnest(%s::text[]) WITH ORDINALITY u(d, v)"
                "  JOIN aggregate a ON a.aggregate_id = %s AND a.application_name = %s"
                "  JOIN event e ON e.aggregate_key = a.aggregate_key AND e.version = u.v",
                (docs, aggregate_id, app),
            ).fetchone()
            assert same == (True,), aggregate_id
        # esctl.migrated_stream names each aggregate, its type and last commit as written
        recorded = conn.execute(
            "SELECT aggregate_id, aggregate_type, commits, last_commit_id"
            " FROM esctl.migrated_stream WHERE application_name = %s",
            (app,),
        ).fetchall()
    assert sorted(recorded) == sorted((a, types.get(a, "Item"), 3, last[a]) for a in ids)
    assert migrate(redis_test_url, pg_dsn, app).events_migrated == 0


# --- reruns, incremental runs, dry runs ----------------------------------------------------


def test_second_run_migrates_nothing_and_counts_clean_aggregates_unchanged(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_defect_store(redis_client, app_name, seed=13)
    first = migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    before = pg_rows(pg_dsn)
    second = migrate(redis_test_url, pg_dsn, app_name)
    assert second.run_id != first.run_id and not second.resumed
    assert second.events_migrated == 0
    assert second.events_already_present == 0
    assert second.aggregates_unchanged == len(truth.commit_lists) - len(defective_list_keys(truth))
    assert second.aggregates == first.aggregates == len(truth.commit_lists)
    assert second.aggregates_quarantined == first.aggregates_quarantined
    assert pg_rows(pg_dsn) == before


def test_cli_exit_code_is_0_on_a_clean_store_first_and_second_run(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_clean_store(redis_client, app_name)
    code, doc, _ = run_migrate_cli(redis_test_url, pg_dsn, app_name, "--init-schema")
    assert (code, doc["events_migrated"], doc["problems"]) == (0, len(truth.events()), [])
    code, doc, _ = run_migrate_cli(redis_test_url, pg_dsn, app_name)
    assert (code, doc["events_migrated"]) == (0, 0)
    assert doc["aggregates_unchanged"] == len(truth.commit_lists)


def test_incremental_run_migrates_only_new_events_and_verifies_clean(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_clean_store(redis_client, app_name)
    migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    before = set(pg_rows(pg_dsn))
    added = iw.append_events(redis_client, truth, 40, seed=3)
    touched = {e.aggregate_id for e in added}

    summary = migrate(redis_test_url, pg_dsn, app_name)
    assert summary.events_migrated == 40
    assert summary.events_already_present == 0
    assert summary.aggregates_quarantined == 0
    assert summary.aggregates_unchanged == len(truth.commit_lists) - len(touched)
    after = set(pg_rows(pg_dsn))
    assert before <= after and len(after - before) == 40
    assert {(r[0], r[3]) for r in after - before} == {(e.aggregate_id, e.version) for e in added}
    assert_clean_aggregates_migrated(pg_dsn, truth)

    client = redisio.connect(redis_test_url)
    result = verify(client, VerifyOptions(app=app_name, pg_dsn=pg_dsn))
    assert result.mismatches == 0, result.problems
    assert result.aggregates == result.aggregates_identical == len(truth.commit_lists)


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "aggregates": doc["aggregates"],
        "events_migrated": doc["events_migrated"],
        "events_already_present": doc["events_already_present"],
        "aggregates_quarantined": doc["aggregates_quarantined"],
        "events_quarantined": doc["events_quarantined"],
        "problems": sorted((p["kind"], p["key"]) for p in doc["problems"]),
    }


def test_dry_run_writes_nothing_and_reports_the_counts_of_the_real_run(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_defect_store(redis_client, app_name, seed=15)
    init_event_store(pg_dsn)
    code, dry, _ = run_migrate_cli(
        redis_test_url, pg_dsn, app_name, "--dry-run", "--batch-size", "100"
    )
    assert code == 3 and dry["dry_run"] is True
    assert count(pg_dsn, "SELECT count(*) FROM event") == 0
    assert count(pg_dsn, "SELECT count(*) FROM aggregate") == 0
    assert not regclass_exists(pg_dsn, "esctl.migration_run")  # nothing of esctl's either

    code, real, _ = run_migrate_cli(redis_test_url, pg_dsn, app_name, "--batch-size", "100")
    assert code == 3 and real["dry_run"] is False
    assert _comparable(dry) == _comparable(real)
    assert real["events_migrated"] == len(clean_events(truth))

    # An incremental dry run after new events: still nothing written, same counts as the run.
    iw.append_events(redis_client, truth, 25, seed=4)
    rows = pg_rows(pg_dsn)
    runs = count(pg_dsn, "SELECT count(*) FROM esctl.migration_run")
    quarantined = count(pg_dsn, "SELECT count(*) FROM esctl.quarantine")
    dry_summary = migrate(redis_test_url, pg_dsn, app_name, dry_run=True)
    assert pg_rows(pg_dsn) == rows
    assert count(pg_dsn, "SELECT count(*) FROM esctl.migration_run") == runs
    assert count(pg_dsn, "SELECT count(*) FROM esctl.quarantine") == quarantined
    real_summary = migrate(redis_test_url, pg_dsn, app_name)
    assert _comparable(dry_summary.as_dict()) == _comparable(real_summary.as_dict())
    assert real_summary.events_migrated == 25
    assert dry_summary.aggregates_unchanged == real_summary.aggregates_unchanged > 0


def test_dry_run_with_init_schema_on_an_empty_database_reports_what_would_be_migrated(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_clean_store(redis_client, app_name, aggregates=20)
    result = run_cli(
        "migrate", "redis-to-pg", *cli_args(redis_test_url, pg_dsn, app_name),
        "--dry-run", "--init-schema", "--json",
    )  # fmt: skip
    assert not regclass_exists(pg_dsn, "public.event")  # a dry run creates nothing
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["events_migrated"] == len(truth.events())


# --- conflicts -----------------------------------------------------------------------------


def plant_conflicts(
    truth: iw.GroundTruth, dsn: str, app: str, *, type_clash: bool = True
) -> tuple[iw.TruthAggregate, iw.TruthAggregate, iw.TruthAggregate, str]:
    """Rows a service saved before the migration (save_event_for_aggregate): version 2 of one
    aggregate with other content, version 1 of another exactly as in Redis, and version 1 of a
    third under another aggregate type. Returns those aggregates and the differing text."""
    init_event_store(dsn)
    clean = [a for a in truth.clean_aggregates() if len(a.events) >= 2]
    differing, identical, other_type = clean[0], clean[1], clean[2]

    def save(a: iw.TruthAggregate, e: iw.TruthEvent, data: str, aggregate_type: str) -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "SELECT save_event_for_aggregate(%s, %s, %s, %s, %s, %s, %s)",
                (a.aggregate_id, aggregate_type, app, e.version,
                 expected_timestamp(e.payload), e.event_type, data),
            )  # fmt: skip

    changed = json.loads(differing.events[1].payload)
    changed["Extra"] = "written by someone else"
    changed_text = json.dumps(changed, ensure_ascii=False)
    save(differing, differing.events[1], changed_text, differing.aggregate_type)
    save(identical, identical.events[0], identical.events[0].payload, identical.aggregate_type)
    if type_clash:
        save(other_type, other_type.events[0], other_type.events[0].payload, "SomethingElse")
    return differing, identical, other_type, changed_text


def test_conflicting_rows_quarantine_their_aggregate_and_identical_ones_count_as_present(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_clean_store(redis_client, app_name, aggregates=60)
    differing, _, other_type, changed_text = plant_conflicts(truth, pg_dsn, app_name)
    before = {
        r for r in pg_rows(pg_dsn) if r[0] in (differing.aggregate_id, other_type.aggregate_id)
    }

    summary = migrate(redis_test_url, pg_dsn, app_name, batch_size=50)

    conflicted = {differing.list_key, other_type.list_key}
    assert {p["key"] for p in summary.problems} == conflicted
    assert {p["kind"] for p in summary.problems} == {"conflict"}
    assert summary.aggregates_quarantined == 2
    assert summary.events_quarantined == len(differing.events) + len(other_type.events)
    assert summary.events_already_present == 1
    assert summary.events_migrated == len(truth.events()) - summary.events_quarantined - 1
    # The existing rows are unchanged and nothing was added to those aggregates.
    assert {
        r for r in pg_rows(pg_dsn) if r[0] in (differing.aggregate_id, other_type.aggregate_id)
    } == before
    assert (
        count(
            pg_dsn,
            "SELECT count(*) FROM event e JOIN aggregate a USING (aggregate_key)"
            " WHERE a.aggregate_id = %s AND e.event_data = %s::jsonb",
            (differing.aggregate_id, changed_text),
        )
        == 1
    )
    with psycopg.connect(pg_dsn) as conn:
        kinds = conn.execute(
            "SELECT aggregate_id, kind FROM esctl.quarantine WHERE run_id = %s", (summary.run_id,)
        ).fetchall()
    assert set(kinds) == {
        (differing.aggregate_id, "conflict"),
        (other_type.aggregate_id, "conflict"),
    }
    # Every other aggregate is complete.
    rest = [a for a in truth.clean_aggregates() if a not in (differing, other_type)]
    with psycopg.connect(pg_dsn) as conn:
        for a in rest:
            versions = [
                r[0]
                for r in conn.execute(
                    "SELECT e.version FROM event e JOIN aggregate a USING (aggregate_key)"
                    " WHERE a.aggregate_id = %s AND a.aggregate_type = %s ORDER BY 1",
                    (a.aggregate_id, a.aggregate_type),
                )
            ]
            assert versions == list(range(1, len(a.events) + 1)), a.aggregate_id


def test_a_dry_run_reports_the_conflicts_the_real_run_finds(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_clean_store(redis_client, app_name, aggregates=60)
    differing, _, _, _ = plant_conflicts(truth, pg_dsn, app_name, type_clash=False)
    dry = migrate(redis_test_url, pg_dsn, app_name, batch_size=50, dry_run=True)
    assert [(p["key"], p["kind"]) for p in dry.problems] == [(differing.list_key, "conflict")]
    assert dry.events_already_present == 1
    real = migrate(redis_test_url, pg_dsn, app_name, batch_size=50)
    assert _comparable(dry.as_dict()) == _comparable(real.as_dict())


def test_a_dry_run_reports_an_aggregate_type_clash_as_the_real_run_does(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_clean_store(redis_client, app_name, aggregates=60)
    _, _, other_type, _ = plant_conflicts(truth, pg_dsn, app_name)
    dry = migrate(redis_test_url, pg_dsn, app_name, batch_size=50, dry_run=True)
    assert (other_type.list_key, "conflict") in {(p["key"], p["kind"]) for p in dry.problems}


# --- shards --------------------------------------------------------------------------------


def test_shards_together_give_exactly_the_rows_of_one_unsharded_run(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, other_pg_dsn: str, app_name: str
) -> None:
    truth = write_defect_store(redis_client, app_name, seed=16)
    reference = migrate(redis_test_url, other_pg_dsn, app_name, init_schema=True)

    shard_docs = []
    for index in range(3):
        if index == 1:  # one through the CLI's --shard option
            code, doc, _ = run_migrate_cli(
                redis_test_url, pg_dsn, app_name, "--init-schema", "--shard", f"{index}/3",
                "--batch-size", "60",
            )  # fmt: skip
            assert code == (3 if doc["aggregates_quarantined"] else 0), doc
        else:
            shard = Shard(index, 3)
            doc = migrate(redis_test_url, pg_dsn, app_name, init_schema=True, shard=shard).as_dict()
        shard_docs.append(doc)
        assert all(Shard(index, 3).owns(p["key"].split("}:", 1)[1]) for p in doc["problems"])

    rows = pg_rows(pg_dsn)
    assert rows == pg_rows(other_pg_dsn)
    assert len(rows) == len(set(rows)) == reference.events_migrated
    assert (
        sum(d["aggregates"] for d in shard_docs) == reference.aggregates == len(truth.commit_lists)
    )
    assert sum(d["events_migrated"] for d in shard_docs) == reference.events_migrated
    assert sum(d["aggregates_quarantined"] for d in shard_docs) == reference.aggregates_quarantined
    quarantine_sql = "SELECT DISTINCT aggregate_id, kind FROM esctl.quarantine ORDER BY 1, 2"
    with psycopg.connect(pg_dsn) as a, psycopg.connect(other_pg_dsn) as b:
        assert a.execute(quarantine_sql).fetchall() == b.execute(quarantine_sql).fetchall()


# --- schema --------------------------------------------------------------------------------


def test_init_schema_creates_the_tables_constraints_and_functions(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_clean_store(redis_client, app_name, aggregates=10)
    code, doc, _ = run_migrate_cli(redis_test_url, pg_dsn, app_name, "--init-schema")
    assert code == 0 and doc["events_migrated"] == len(truth.events())
    with psycopg.connect(pg_dsn) as conn:
        columns: dict[str, str] = dict(
            conn.execute(
                "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'public'"
            ).fetchall()
        )
        functions = {
            r[0]
            for r in conn.execute(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = 'public'"
            )
        }
        uniques = {
            r[0]
            for r in conn.execute(
                "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indisunique"
                " AND indrelid IN ('public.aggregate'::regclass, 'public.event'::regclass)"
            )
        }
    assert columns["event.event_data"] == "jsonb"
    assert columns["event.time_stamp"] == "timestamp with time zone"
    assert columns["event.version"] == "integer"
    assert columns["aggregate.aggregate_id"] == "character varying"
    assert {"save_event_for_aggregate", "get_events_for_aggregate"} <= functions
    assert any("(aggregate_id, application_name, aggregate_type)" in u for u in uniques)
    assert any("(aggregate_key, version)" in u for u in uniques)
    for table in ("migration_run", "migration_batch", "migrated_stream", "quarantine"):
        assert regclass_exists(pg_dsn, f"esctl.{table}")
    assert_get_events_for_aggregate(pg_dsn, truth)


def test_without_init_schema_an_empty_database_is_refused_naming_tables_and_option(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_clean_store(redis_client, app_name, aggregates=5)
    result = run_cli("migrate", "redis-to-pg", *cli_args(redis_test_url, pg_dsn, app_name))
    assert result.returncode == 1
    message = result.stderr
    assert "aggregate" in message and "event" in message and "--init-schema" in message
    assert "Traceback" not in message + result.stdout
    assert not regclass_exists(pg_dsn, "public.event")
    assert not regclass_exists(pg_dsn, "esctl.migration_run")


INCOMPATIBLE = {
    "event_data_text": (
        "event_data text NOT NULL",
        "UNIQUE (aggregate_key, version)",
        ("event", "event_data"),
    ),
    "time_stamp_without_zone": (
        "event_data jsonb NOT NULL",
        "UNIQUE (aggregate_key, version)",
        ("event", "time_stamp"),
    ),
    "no_unique_version": ("event_data jsonb NOT NULL", "", ("event", "version")),
}


@pytest.mark.parametrize("case", sorted(INCOMPATIBLE))
def test_incompatible_existing_schema_is_refused_naming_table_and_column_and_left_unaltered(
    case: str, redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    data_column, unique, named = INCOMPATIBLE[case]
    time_stamp = "timestamp" if case == "time_stamp_without_zone" else "timestamptz"
    write_clean_store(redis_client, app_name, aggregates=5)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "CREATE TABLE aggregate (aggregate_key bigserial PRIMARY KEY,"
            " aggregate_id varchar NOT NULL, aggregate_type varchar(255) NOT NULL,"
            " application_name varchar(255) NOT NULL,"
            " UNIQUE (aggregate_id, application_name, aggregate_type))"
        )
        conn.execute(
            f"CREATE TABLE event (event_id bigserial PRIMARY KEY,"
            f" aggregate_key bigint REFERENCES aggregate, time_stamp {time_stamp} NOT NULL,"
            f" version int NOT NULL, event_type varchar(255) NOT NULL, {data_column}"
            f"{', ' + unique if unique else ''})"
        )

    def shape() -> list[tuple[Any, ...]]:
        with psycopg.connect(pg_dsn) as conn:
            return conn.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'public' UNION ALL"
                " SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
                " ORDER BY 1, 2"
            ).fetchall()

    before = shape()
    # Even --init-schema never alters an existing schema.
    args = cli_args(redis_test_url, pg_dsn, app_name)
    result = run_cli("migrate", "redis-to-pg", *args, "--init-schema")
    assert result.returncode == 1, result.stdout
    assert all(word in result.stderr for word in named), result.stderr
    assert "Traceback" not in result.stderr
    assert shape() == before
    assert count(pg_dsn, "SELECT count(*) FROM event") == 0
    assert not regclass_exists(pg_dsn, "esctl.migration_run")


def test_a_bigint_version_column_is_migrated_through_the_staging_table(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """Binary COPY rows carry a 4-byte version: into a schema whose ``event.version`` is
    ``bigint`` (accepted, docs/layout.md §5) they go through the staging table, converted."""
    truth = write_clean_store(redis_client, app_name, aggregates=12)
    with psycopg.connect(pg_dsn) as conn:
        pg.ensure_event_store_schema(conn, "public", create=True)
        conn.execute("ALTER TABLE event ALTER COLUMN version TYPE bigint")
    summary = migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    assert summary.problems == []
    assert summary.events_migrated == len(truth.events())
    assert_clean_aggregates_migrated(pg_dsn, truth)


def test_runs_creating_the_schema_at_the_same_time_both_succeed(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """Deterministic form of shards started together by cron: another run is half-way through
    --init-schema (its transaction not committed yet) when this one starts."""
    truth = write_clean_store(redis_client, app_name, aggregates=20)
    args = cli_args(redis_test_url, pg_dsn, app_name)
    with psycopg.connect(pg_dsn) as other:
        pg.ensure_event_store_schema(other, "public", create=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "esctl", "migrate", "redis-to-pg", *args, "--init-schema",
             "--shard", "1/2", "--json"],
            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as watch:
                for _ in range(3000):  # until it waits for the other run's transaction
                    waiting = watch.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name = 'esctl migrate' AND wait_event_type = 'Lock'"
                    ).fetchone()
                    if (waiting and waiting[0]) or proc.poll() is not None:
                        break
                    time.sleep(0.01)
        finally:
            other.commit()
            out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    owned = [e for e in truth.events() if Shard(1, 2).owns(e.aggregate_id)]
    assert json.loads(out)["events_migrated"] == len(owned)


# --- lock ----------------------------------------------------------------------------------


def test_a_held_lock_exits_75_and_does_nothing(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_clean_store(redis_client, app_name, aggregates=10)
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        held = holder.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
            (f"esctl:migrate:public:{app_name}:0/1",),
        ).fetchone()
        assert held == (True,)
        result = run_cli(
            "migrate", "redis-to-pg", *cli_args(redis_test_url, pg_dsn, app_name), "--init-schema"
        )
        assert result.returncode == 75, result.stderr
        assert "Traceback" not in result.stderr
        assert app_name in result.stderr
        assert not regclass_exists(pg_dsn, "public.event")
        assert not regclass_exists(pg_dsn, "esctl.migration_run")
        # Another shard of the same app is a different job: not blocked.
        code, doc, _ = run_migrate_cli(
            redis_test_url, pg_dsn, app_name, "--init-schema", "--shard", "0/2"
        )
        assert code == 0 and doc["events_migrated"] > 0


def test_a_held_lock_names_its_holder_and_the_statement_that_ends_a_dead_one(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """Exit 75 at 3 a.m.: the message names the session holding the lock (its pid and
    application), the hint says a --follow run holds it for as long as it runs and how to
    end a dead session, with that pid; --json carries the same in message and hint."""
    write_clean_store(redis_client, app_name, aggregates=3)
    with psycopg.connect(pg_dsn, autocommit=True, application_name="esctl lock") as holder:
        row = holder.execute(
            "SELECT pg_backend_pid(), pg_try_advisory_lock(hashtextextended(%s, 0))",
            (f"esctl:migrate:public:{app_name}:0/1",),
        ).fetchone()
        assert row is not None and row[1]
        pid = row[0]
        args = cli_args(redis_test_url, pg_dsn, app_name)
        result = run_cli("migrate", "redis-to-pg", *args, "--init-schema")
        as_json = run_cli("migrate", "redis-to-pg", *args, "--init-schema", "--json")
    assert result.returncode == 75, result.stderr
    words = " ".join(result.stderr.split())
    assert f"held by PostgreSQL session pid {pid} (" in words, words
    assert "application 'esctl lock'" in words and " ago" in words
    assert "`migrate redis-to-pg --follow` run holds it for as long as it runs" in words
    assert f"`SELECT pg_terminate_backend({pid})`" in words, words
    assert as_json.returncode == 75
    document = json.loads(as_json.stdout)
    assert set(document) == {"error", "exit_code"} and document["exit_code"] == 75
    assert set(document["error"]) == {"kind", "message", "hint"}
    assert document["error"]["kind"] == "locked"
    assert f"pid {pid} (" in document["error"]["message"]
    assert f"`SELECT pg_terminate_backend({pid})`" in document["error"]["hint"]


def test_a_worker_refused_its_lock_says_what_the_other_workers_migrated(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """--workers 2 with sub-shard 1/2 held by another run: exit 75 as before, and the error
    no longer says "nothing was done" of the whole run: shard 0/2 migrated, and says how much
    (what PostgreSQL holds)."""
    write_clean_store(redis_client, app_name, aggregates=40)
    args = cli_args(redis_test_url, pg_dsn, app_name)
    with AdvisoryLock(pg_dsn, lock_name("public", app_name, "1/2"), what="test"):
        result = run_cli(
            "migrate", "redis-to-pg", *args, "--init-schema", "--workers", "2", "--json"
        )
    assert result.returncode == 75, result.stderr
    message = json.loads(result.stdout)["error"]["message"]
    migrated = count(
        pg_dsn,
        "SELECT count(*) FROM event e JOIN aggregate a USING (aggregate_key)"
        " WHERE a.application_name = %s",
        (app_name,),
    )
    assert migrated > 0
    assert "(shard 1/2) is running" in message and "nothing was done in shard 1/2" in message
    assert f"the other workers: shard 0/2 migrated {migrated:,} events (committed; " in message
    rerun = run_cli("migrate", "redis-to-pg", *args, "--workers", "2", "--json")
    assert rerun.returncode == 0, rerun.stderr


# --- output --------------------------------------------------------------------------------


def test_json_output_is_one_document_and_exit_code_is_3_while_quarantined_ones_remain(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_defect_store(redis_client, app_name, seed=17)
    args = cli_args(redis_test_url, pg_dsn, app_name)
    result = run_cli("migrate", "redis-to-pg", *args, "--init-schema", "--json")
    assert result.returncode == 3
    doc = json.loads(result.stdout)  # the whole of stdout is one document
    assert isinstance(doc, dict)
    assert set(doc) >= SUMMARY_KEYS
    assert all(k == k.lower() and " " not in k for k in doc)
    for key in ("aggregates", "events_migrated", "events_already_present",
                "aggregates_quarantined", "events_quarantined"):  # fmt: skip
        assert type(doc[key]) is int, key
    assert type(doc["dry_run"]) is bool and type(doc["resumed"]) is bool
    assert isinstance(doc["elapsed_s"], int | float)
    assert isinstance(doc["events_per_s"], int | float)
    assert isinstance(doc["run_id"], str) and doc["run_id"]
    assert doc["problems"] and all(
        set(p) >= {"kind", "key", "detail"}
        and all(isinstance(p[k], str) for k in ("kind", "key", "detail"))
        for p in doc["problems"]
    )
    assert doc["events_migrated"] == len(clean_events(truth))
    # The second run: nothing to migrate, still 3 while quarantined aggregates remain.
    code, doc, _ = run_migrate_cli(redis_test_url, pg_dsn, app_name)
    assert code == 3
    assert doc["events_migrated"] == 0
    assert doc["aggregates_quarantined"] == len(defective_list_keys(truth))


def test_without_pipeline_mode_the_writers_give_the_same_rows_and_summary(
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    other_pg_dsn: str,
    app_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The writers send a batch's statements in psycopg's pipeline mode; with a libpq that
    has none (before 14) each goes on its own, with the same rows, quarantines and summary."""
    write_defect_store(redis_client, app_name, seed=11)
    piped = migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    monkeypatch.setattr(psycopg.Pipeline, "is_supported", classmethod(lambda cls: False))
    plain = migrate(redis_test_url, other_pg_dsn, app_name, init_schema=True)
    assert pg_rows(other_pg_dsn) == pg_rows(pg_dsn)
    for field in ("events_migrated", "aggregates_quarantined", "events_quarantined"):
        assert getattr(plain, field) == getattr(piped, field) > 0, field
    assert plain.problem_counts == piped.problem_counts
    assert plain.problems_total == piped.problems_total <= len(piped.problems)  # all listed
    key = operator.itemgetter("key", "kind", "detail")
    assert sorted(plain.problems, key=key) == sorted(piped.problems, key=key)  # writers race


@pytest.mark.parametrize(("method", "stored"), [("lz4", "lz4"), ("pglz", "pglz"), ("zstd", None)])
def test_toast_compression_is_what_the_writers_session_asked_for_when_the_server_has_it(
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    app_name: str,
    method: str,
    stored: str | None,
) -> None:
    """--toast-compression sets the writers' default_toast_compression when the server has
    that method (the summary says which); one it lacks leaves the server's default, and the
    summary says None."""
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"
        ).fetchone()
    if row is None or "lz4" not in row[0]:
        pytest.skip("this PostgreSQL has no lz4 TOAST compression")
    truth = iw.write_store(
        redis_client, app=app_name, aggregates=1, events_per_aggregate=1, compressed_share=0.0,
        legacy_share=0.0, threshold=None,
    )  # fmt: skip
    (event,) = truth.events()
    key = iw.event_hash_key(app_name, event.commit_id)
    data = json.loads(redis_client.hget(key, event.commit_id) or b"")
    data["Notes"] = [f"note {i}: " + "well done " * 20 for i in range(40)]  # TOASTed, compressed
    redis_client.hset(key, event.commit_id, iw.to_json(data))
    summary = migrate(redis_test_url, pg_dsn, app_name, init_schema=True, toast_compression=method)
    assert summary.toast_compression == stored
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT pg_column_compression(event_data) FROM event").fetchone()
        default = conn.execute("SHOW default_toast_compression").fetchone()
    assert row is not None and default is not None
    assert row[0] == (stored or default[0])


def test_an_install_from_before_gets_the_index_that_counts_a_runs_problems(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """A run's summary and ``migrate status`` count problems by run_id; esctl.quarantine
    made by an earlier esctl lacks the index, and the next run adds it."""
    write_defect_store(redis_client, app_name, seed=5)
    index = "SELECT count(*) FROM pg_indexes WHERE schemaname = 'esctl' AND indexname = %s"
    migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    assert count(pg_dsn, index, ("quarantine_run",)) == 1
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("DROP INDEX esctl.quarantine_run")
    summary = migrate(redis_test_url, pg_dsn, app_name)
    assert count(pg_dsn, index, ("quarantine_run",)) == 1
    assert summary.aggregates_quarantined > 0


def test_human_output_shows_the_summary_and_problems_without_traceback(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_defect_store(redis_client, app_name, seed=18)
    result = run_cli(
        "migrate", "redis-to-pg", *cli_args(redis_test_url, pg_dsn, app_name), "--init-schema"
    )
    assert result.returncode == 3
    assert "Traceback" not in result.stdout + result.stderr
    for word in ("quarantined", "missing_payload", "version_gap", "shared_commit_list"):
        assert word in result.stdout, word


def test_passwords_never_appear_in_output(redis_test_url: str, app_name: str) -> None:
    from esctl.servers import free_port

    secret = "s3cr3t-" + secrets.token_hex(4)
    port = free_port()  # nothing listens there
    runs: tuple[tuple[str, str, list[str]], ...] = (
        (redis_test_url, f"postgresql://esctl:{secret}@127.0.0.1:{port}/db", ["--json"]),
        (redis_test_url, f"host=127.0.0.1 port={port} user=esctl password={secret} dbname=db", []),
        (f"redis://:{secret}@127.0.0.1:{port}/0", "postgresql://127.0.0.1/x", []),
    )
    for url, dsn, extra in runs:
        result = run_cli("migrate", "redis-to-pg", *cli_args(url, dsn, app_name), *extra)
        assert result.returncode == 1
        assert secret not in result.stdout + result.stderr
        assert "***" in result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        if extra:
            error = json.loads(result.stdout)
            assert error["exit_code"] == 1 and "***" in error["error"]["message"]


# --- bugs shown by end-to-end cases --------------------------------------------------------


def test_a_stream_whose_aggregate_type_changes_from_empty_is_quarantined(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_events(redis_client, app_name, "42", [payload("42", 1, ""), payload("42", 2, "Item")])
    write_events(redis_client, app_name, "43", [payload("43", 1), payload("43", 2)])
    summary = migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    assert [(p["kind"], p["key"]) for p in summary.problems] == [
        ("aggregate_type_changed", iw.commit_list_key(app_name, "42"))
    ]
    assert count(pg_dsn, "SELECT count(*) FROM aggregate WHERE aggregate_id = '42'") == 0


def write_non_utf8_key(client: redis.Redis, app: str) -> bytes:
    """A commit list whose key is not UTF-8 (esctl reads keys with surrogateescape "so any key
    round-trips"); its one payload is fine apart from an Id that cannot equal the key."""
    key = iw.commit_list_key(app, "bad").encode() + b"\xff"
    commit_id = str(uuid.uuid4())
    client.hset(iw.event_hash_key(app, commit_id), commit_id, payload("bad\ufffd", 1))
    client.rpush(key, commit_id)
    return key


def test_a_commit_list_key_that_is_not_utf8_is_quarantined_and_the_rest_migrates(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_clean_store(redis_client, app_name, aggregates=10)
    write_non_utf8_key(redis_client, app_name)
    code, doc, _ = run_migrate_cli(redis_test_url, pg_dsn, app_name, "--init-schema")
    assert code == 3
    assert doc["aggregates_quarantined"] == 1
    assert doc["events_migrated"] == len(truth.events())


def test_values_postgresql_rejects_quarantine_only_their_aggregate(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """aggregate_type and event_type are varchar(255): a longer one makes PostgreSQL reject the
    batch, and only the aggregate holding it is quarantined (rejected_by_postgres)."""
    truth = write_clean_store(redis_client, app_name, aggregates=30)
    long_type = "Aggregate" + "X" * 300
    write_events(redis_client, app_name, "long-type", [payload("long-type", 1, long_type)])
    long_event = payload("long-event", 2).replace("ItemChanged", "ItemChanged" + "Y" * 300)
    write_events(redis_client, app_name, "long-event", [payload("long-event", 1), long_event])
    code, doc, stderr = run_migrate_cli(redis_test_url, pg_dsn, app_name, "--init-schema")
    assert code == 3, (doc, stderr)
    assert sorted((p["kind"], p["key"]) for p in doc["problems"]) == [
        ("rejected_by_postgres", iw.commit_list_key(app_name, "long-event")),
        ("rejected_by_postgres", iw.commit_list_key(app_name, "long-type")),
    ]
    assert doc["events_migrated"] == len(truth.events())
    assert_clean_aggregates_migrated(pg_dsn, truth)


def test_a_nul_escape_is_quarantined_as_unsupported_by_postgres(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_events(
        redis_client, app_name, "nul", [payload("nul", 1), payload("nul", 2, Text="a\u0000b")]
    )
    write_events(redis_client, app_name, "ok", [payload("ok", 1)])
    summary = migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    assert [(p["kind"], p["key"]) for p in summary.problems] == [
        ("unsupported_by_postgres", iw.commit_list_key(app_name, "nul"))
    ]
    assert summary.events_migrated == 1


@pytest.mark.parametrize(
    ("stored", "kind"),
    [
        (b"H4sIAAAAAAAAA" + b"not gzip at all", "invalid_compressed"),
        (b"\xff\xfe{not json", "invalid_utf8"),
    ],
)
def test_a_value_that_cannot_be_read_is_one_problem_not_also_invalid_json(
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    app_name: str,
    stored: bytes,
    kind: str,
) -> None:
    """What follows from a value that cannot be read (that it is not JSON either) is not a
    second problem: migrate reports what inspect reports, once."""
    write_events(redis_client, app_name, "bad", [payload("bad", 1), stored])
    summary = migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    assert [(p["kind"], p["key"]) for p in summary.problems] == [
        (kind, iw.commit_list_key(app_name, "bad"))
    ]
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT kind FROM esctl.quarantine WHERE run_id = %s", (summary.run_id,)
        ).fetchall()
    assert rows == [(kind,)]


def test_an_escaped_backslash_before_u0000_is_not_a_nul_and_migrates(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    text = payload("path", 1, Text="C:\\u0000", Nested='{"a":"\\u0000"}')
    assert "\x00" not in json.loads(text)["Text"]
    write_events(redis_client, app_name, "path", [text])
    summary = migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    assert summary.problems == []
    assert count(pg_dsn, "SELECT count(*) FROM event WHERE event_data = %s::jsonb", (text,)) == 1


def _limit_memory() -> None:
    limit = 1 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_huge_version_number_is_quarantined_without_exhausting_memory(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_events(redis_client, app_name, "7", [payload("7", 1), payload("7", 2_147_483_647)])
    write_events(redis_client, app_name, "8", [payload("8", 1), payload("8", 2)])
    result = subprocess.run(
        [sys.executable, "-m", "esctl", "migrate", "redis-to-pg",
         *cli_args(redis_test_url, pg_dsn, app_name), "--init-schema", "--json"],
        capture_output=True, env=cli_env(), preexec_fn=_limit_memory, timeout=120,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr.decode()
    doc = json.loads(result.stdout)
    assert [(p["kind"], p["key"]) for p in doc["problems"]] == [
        ("version_gap", iw.commit_list_key(app_name, "7"))
    ]
    assert doc["events_migrated"] == 2


# --- clean_rows against the general path (property) ----------------------------------------

TEXTS = ("plain", "Zoë 日本語 🎉", "tab\there", "new\nline", "back\\slash", 'quote"d', "cr\r")
AGGREGATE_IDS = ("42", "3f2b1c4e-8d9a-4b7e-9c1d-2e3f4a5b6c7d", "Zürich-1", "tab\tid", "back\\id")
TYPE_NAMES = (
    "Ns.ItemCreated, Asm",
    "Ns.Outer+Inner, Asm",
    "Ns.Audited`1[[Ns.ItemCreated, Asm]], Asm",
)
MUTATIONS = (
    "drop", "flip_byte", "version", "id", "aggregate_type", "non_utf8", "h4si_garbage",
    "nul_escape", "timestamp", "remove_field", "field_type", "not_object", "swap",
)  # fmt: skip

# Corrupt values per mutation (the parameter picks one).
VERSIONS = (0, -1, 1, 2, 3, 7, 12)
IDS = ("other", "", 42, None)
AGGREGATE_TYPES = ("ItemV2", "item", 5, None, "Other", "")
TIMESTAMPS = (
    "2018-01-01T00:00:00",
    "2018-01-01T00:00:00.12345678+00:00",
    "2018-01-01 00:00:00+00:00",
    "2018-01-01T00:00:00Z",
    "2018-13-01T00:00:00+00:00",
    "2018-01-01T00:00:00.1+00:00\n",
    "2018-01-01T24:00:00+00:00",
    20180101,
)
FIELDS = ("$type", "Id", "TimeStamp", "Version", "AggregateType")
WRONG_TYPES = (
    ("$type", 5),
    ("Version", "1"),
    ("Version", True),
    ("Version", 1.0),
    ("TimeStamp", None),
)
NOT_OBJECTS = (b"[1,2]", b'"text"', b"null", b"", b"{", b"\xef\xbb\xbf{}")
GARBAGE = (b"H4sIgarbage", b"H4sI" + b"A" * 40, b"H4sI!!", b"H4sIAAAAAAAA/w==")


@st.composite
def corrupted_streams(draw: st.DrawFn, incremental: bool = False) -> tuple[Any, ...]:
    aggregate_id = draw(st.sampled_from(AGGREGATE_IDS))
    first_version = draw(st.integers(1, 4)) if incremental else 1
    known_type = draw(st.sampled_from((None, "Item", "Other", ""))) if incremental else None
    n = draw(st.integers(1, 5))
    docs = []
    for version in range(first_version, first_version + n):
        fraction = draw(st.sampled_from(("1234567", "0000001", "9999999", "12", "")))
        offset = draw(st.sampled_from(("+00:00", "-05:00", "+05:30")))
        stamp = "2018-0{}-1{}T1{}:0{}:5{}".format(*draw(st.tuples(*[st.integers(1, 9)] * 5)))
        docs.append(
            {
                "$type": draw(st.sampled_from(TYPE_NAMES)),
                "Id": aggregate_id,
                "TimeStamp": stamp + (f".{fraction}" if fraction else "") + offset,
                "Version": version,
                "AggregateType": "Item",
                "Text": draw(st.sampled_from(TEXTS)),
                "Flag": draw(st.booleans()),
            }
        )
    mutations = draw(
        st.lists(
            st.tuples(st.sampled_from(MUTATIONS), st.integers(0, n - 1), st.integers(0, 10**6)),
            max_size=3,
        )
    )
    compressed = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return aggregate_id, first_version, known_type, docs, mutations, compressed


def apply_mutations(
    aggregate_id: str, docs: list[dict[str, Any]], mutations: list[tuple[str, int, int]],
    compressed: list[bool],
) -> list[bytes | None]:  # fmt: skip
    docs = [dict(d) for d in docs]
    on_bytes = []
    for kind, i, p in mutations:
        d = docs[i]
        if kind == "version":
            d["Version"] = VERSIONS[p % len(VERSIONS)]
        elif kind == "id":
            d["Id"] = IDS[p % len(IDS)]
        elif kind == "aggregate_type":
            d["AggregateType"] = AGGREGATE_TYPES[p % len(AGGREGATE_TYPES)]
        elif kind == "timestamp":
            d["TimeStamp"] = TIMESTAMPS[p % len(TIMESTAMPS)]
        elif kind == "remove_field":
            d.pop(FIELDS[p % len(FIELDS)], None)
        elif kind == "field_type":
            name, value = WRONG_TYPES[p % len(WRONG_TYPES)]
            d[name] = value
        elif kind == "nul_escape":
            d["Text"] = "a\u0000b"  # json.dumps writes the escape \u0000
        elif kind == "swap":  # commit order differs from version order: still loadable
            j = p % len(docs)
            docs[i], docs[j] = docs[j], docs[i]
        else:
            on_bytes.append((kind, i, p))
    values: list[bytes | None] = []
    for d, gz in zip(docs, compressed, strict=True):
        text = json.dumps(d, ensure_ascii=False, separators=(",", ":"))
        values.append(iw.gzip_base64(text) if gz else text.encode("utf-8"))
    for kind, i, p in on_bytes:
        stored = values[i]
        if not stored:  # dropped, or emptied by not_object
            continue
        if kind == "drop":
            values[i] = None
        elif kind == "flip_byte":
            raw = bytearray(stored)
            raw[p % len(raw)] ^= 1 << (p % 8)
            values[i] = bytes(raw)
        elif kind == "non_utf8":
            at = p % (len(stored) + 1)
            values[i] = stored[:at] + b"\xff" + stored[at:]
        elif kind == "h4si_garbage":
            values[i] = (*GARBAGE, iw.invalid_gzip_base64(random.Random(p)))[p % 5]
        elif kind == "not_object":
            values[i] = NOT_OBJECTS[p % len(NOT_OBJECTS)]
    return values


def general_path(
    aggregate_id: str, values: Sequence[bytes | None], first_version: int, known_type: str | None
) -> tuple[str, list[bytes]] | None:
    commit_ids = [f"commit-{i}" for i in range(len(values))]
    stream = build_stream(aggregate_id, "key", commit_ids, values, ["hash"] * len(values))
    validate_stream(stream, first_version=first_version, known_type=known_type)
    if not stream.ok:
        return None
    from esctl.migrate import stream_rows

    rows = stream_rows(stream)
    if isinstance(rows, StreamProblem):
        return None
    aggregate_type = stream.aggregate_type
    return (known_type or "") if aggregate_type is None else aggregate_type, rows


def assert_paths_agree(
    aggregate_id: str, values: Sequence[bytes | None], first_version: int, known_type: str | None
) -> None:
    fast = clean_rows(
        clean_payloads(aggregate_id, values, first_version=first_version, known_type=known_type)
    )
    general = general_path(aggregate_id, values, first_version, known_type)
    assert (fast is None) == (general is None), (values, fast, general)
    if fast is not None and general is not None:
        assert fast[1] == general[1]
        assert fast[0] == general[0]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted_streams())
def test_clean_rows_accepts_exactly_what_the_general_path_accepts(case: tuple[Any, ...]) -> None:
    aggregate_id, first_version, known_type, docs, mutations, compressed = case
    values = apply_mutations(aggregate_id, docs, mutations, compressed)
    assert_paths_agree(aggregate_id, values, first_version, known_type)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted_streams(incremental=True))
def test_clean_rows_agrees_with_the_general_path_on_incremental_streams(
    case: tuple[Any, ...],
) -> None:
    aggregate_id, first_version, known_type, docs, mutations, compressed = case
    values = apply_mutations(aggregate_id, docs, mutations, compressed)
    assert_paths_agree(aggregate_id, values, first_version, known_type)


def test_clean_rows_lines_are_exact_on_a_clean_stream() -> None:
    """An anchor for the property: a clean, out-of-order, partly compressed stream."""
    docs = [payload("agg\t1", v, Text="tab\there \\ back", Note="日本語 🦄") for v in (2, 1, 3)]
    values = [iw.gzip_base64(docs[0]), docs[1].encode(), docs[2].encode()]
    fast = clean_rows(clean_payloads("agg\t1", values))
    assert fast is not None
    aggregate_type, rows = fast
    assert aggregate_type == "Item"
    assert [binary_row(row)[1] for row in rows] == [1, 2, 3]
    assert binary_row(rows[0]) == (
        expected_timestamp(docs[1]),
        1,
        "ItemChanged",
        docs[1].encode(),  # as stored: binary COPY escapes nothing
    )
    assert_paths_agree("agg\t1", values, 1, None)


@pytest.mark.parametrize("known_type", [None, "Item"])
def test_clean_rows_and_the_general_path_agree_on_an_empty_aggregate_type(
    known_type: str | None,
) -> None:
    values = [payload("9", 1, "").encode(), payload("9", 2, "Item").encode()]
    assert_paths_agree("9", values, 1, known_type)
    assert clean_rows(clean_payloads("9", values)) is None


def binary_row(row: bytes) -> tuple[datetime, int, str, bytes]:
    """(time_stamp, version, event_type, event_data text) of a binary COPY row of clean_rows."""
    size, micros, size_v, version, size_t = struct.unpack_from(">iqiii", row)
    assert (size, size_v) == (8, 4)
    event_type = row[24 : 24 + size_t].decode()
    size_d, jsonb_version = struct.unpack_from(">ib", row, 24 + size_t)
    data = row[29 + size_t :]
    assert jsonb_version == 1 and size_d == len(data) + 1
    return PG_EPOCH + timedelta(microseconds=micros), version, event_type, data


@settings(max_examples=300)
@given(
    st.integers(0, 7),
    st.sampled_from(("Z", "+00:00", "-05:00", "+05:30", "-00:00", "+14:00")),
    st.integers(0, 10**7 - 1),
)
def test_a_rows_time_stamp_is_the_instant_the_codec_reads(digits: int, offset: str, n: int) -> None:
    """The binary time stamp of a row is the instant parse_timestamp reads (the seventh digit
    truncated, as the library's SQL provider stores it)."""
    fraction = f".{n:07d}"[: digits + 1] if digits else ""
    text = payload("t", 1).replace(
        "2019-05-02T10:11:12.1234561+02:00", f"2018-02-18T03:26:04{fraction}{offset}"
    )
    fast = clean_rows(clean_payloads("t", [text.encode()]))
    assert fast is not None
    assert binary_row(fast[1][0])[0] == parse_timestamp(json.loads(text)["TimeStamp"])


@given(
    st.datetimes(
        timezones=st.sampled_from(
            [
                UTC,
                timezone(timedelta(hours=-5, minutes=-30)),
                timezone(timedelta(hours=14)),
            ]
        )
    )
)
def test_a_rows_time_stamp_counts_every_microsecond_from_postgres_epoch(moment: datetime) -> None:
    delta = moment - PG_EPOCH
    row = make_binary_row(moment, 1, "Learning.Items.Events.ItemChanged, Learning.Items", b"{}")
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    assert struct.unpack_from(">iq", row) == (8, micros)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.text(st.characters(codec="utf-8", exclude_characters="\x00")),
            st.sampled_from(["", "NULL", "null", '"', "\\", '\\"', "{}", "{a,b}", " x ", ","]),
        ),
        max_size=20,
    )
)
def test_text_array_literals_read_back_as_the_values(pg_dsn: str, values: list[str]) -> None:
    """The writer's text[] parameters (pg.text_array): any NUL-free text, including array
    literal syntax, reads back from PostgreSQL as the same list."""
    with psycopg.connect(pg_dsn) as conn:
        got = conn.execute("SELECT %s::text[]", (pg.text_array(values),)).fetchone()
    assert got == (values,)


def test_a_commit_list_deleted_after_the_scan_listed_it_is_not_an_aggregate_and_no_crash(
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    app_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit list SCAN named and someone deleted before its LRANGE (SCAN promises nothing
    about keys deleted meanwhile): the run goes on as if the list had never been there (it
    stopped with 'unexpected IndexError'); every other aggregate is migrated."""
    truth = write_clean_store(redis_client, app_name, aggregates=30)
    doomed = truth.clean_aggregates()[0]
    real = storereads.commit_lists

    def deleted_first(
        client: Any, keys: Sequence[str], starts: Any = None, **kw: Any
    ) -> list[list[str]]:
        if doomed.list_key in keys:
            redis_client.delete(doomed.list_key)
        return real(client, keys, starts, **kw)

    monkeypatch.setattr(storereads, "commit_lists", deleted_first)
    summary = migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    assert summary.problems == []
    assert summary.aggregates == len(truth.aggregates) - 1
    left = [a for a in truth.clean_aggregates() if a is not doomed]
    assert summary.events_migrated == sum(len(a.events) for a in left)
