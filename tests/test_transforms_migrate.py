"""``migrate redis-to-pg --transforms`` and ``migrate verify --transforms`` end to end (real
subprocesses, a real Redis and PostgreSQL, a store from the independent writer): PostgreSQL
holds what the rules make of each Redis stream, incremental runs continue the numbering, a run
with other rules is refused unless --restart --yes, and a failing rule quarantines an aggregate
whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import independent_writer as iw
import psycopg
import pytest
import redis
from helpers import run_cli

from esctl.transforms import Numbering, SourceEvent, load_rules, transform_stream

ASM = "Learning.Enrollment.Domain"
NS = f"{ASM}.Events"

CALLABLE = '''
def split_notes(event):
    """Leaves out EnrollmentProgressed, splits EnrollmentNoteAdded in two, fails on "FAIL"."""
    if event.data.get("Remark") == "FAIL":
        raise ValueError("a failing note")
    if event.event_type == "EnrollmentProgressed":
        return None
    if event.event_type == "EnrollmentNoteAdded":
        indexed = dict(event.data)
        indexed["$type"] = indexed["$type"].replace("NoteAdded", "NoteIndexed")
        return [event, indexed]
    return event
'''

RULES = f"""
[[leave_out]]
event_type = "InvoicePaid"

[[leave_out]]
aggregate_type = "Course"

[[rename_type]]
from = "{NS}.InvoiceIssued"
to = "Learning.Billing.Events.InvoiceOpened"

[[rename_namespace]]
from = "{ASM}.Models"
to = "Learning.Enrollment.Shapes"

[[rename_assembly]]
from = "{ASM}"
to = "Learning.Enrollment.Core"

[[upcast]]
event_type = "EnrollmentNoteAdded"
rename = {{ Note = "Remark" }}
default = {{ Reviewed = false }}

[[python]]
callable = "tf_split:split_notes"
"""


def migrate(url: str, dsn: str, app: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    result = run_cli(
        "migrate", "redis-to-pg", "--redis-url", url, "--pg-dsn", dsn, "--app", app,
        "--no-progress", "--json", *extra,
    )  # fmt: skip
    assert "Traceback" not in result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def verify(url: str, dsn: str, app: str, *extra: str) -> tuple[int, dict[str, Any]]:
    result = run_cli(
        "migrate", "verify", "--redis-url", url, "--pg-dsn", dsn, "--app", app, "--json",
        "--workers", "1", *extra,
    )  # fmt: skip
    assert "Traceback" not in result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def pg_rows(dsn: str, app: str) -> dict[str, list[tuple[Any, ...]]]:
    """aggregate id -> [(aggregate type, version, event type, time stamp, data)] by version."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(dsn) as conn:
        for row in conn.execute(
            "SELECT a.aggregate_id, a.aggregate_type, e.version, e.event_type, e.time_stamp,"
            "       e.event_data::text FROM public.aggregate a"
            "  LEFT JOIN public.event e ON e.aggregate_key = a.aggregate_key"
            " WHERE a.application_name = %s ORDER BY a.aggregate_id, e.version",
            (app,),
        ):
            out.setdefault(row[0], []).append((*row[1:5], json.loads(row[5]) if row[5] else None))
    return out


def expected(truth: iw.GroundTruth, rules_file: Path) -> dict[str, list[tuple[Any, ...]]]:
    """What the engine makes of every Redis stream, transformed at once (a fresh run)."""
    from esctl.codec import parse_timestamp

    rules = load_rules(rules_file).rules
    out: dict[str, list[tuple[Any, ...]]] = {}
    for aggregate in truth.aggregates:
        sources = [SourceEvent(e.commit_id, e.version, e.payload) for e in aggregate.events]
        outcome = transform_stream(rules, aggregate.aggregate_id, sources, Numbering())
        if outcome.failure is not None or not outcome.events:
            continue
        out[aggregate.aggregate_id] = []
        for t in outcome.events:
            moment = parse_timestamp(t.timestamp)
            row = (t.aggregate_type, t.version, t.event_type, moment, json.loads(t.text))
            out[aggregate.aggregate_id].append(row)
    return out


@pytest.fixture
def store(redis_client: redis.Redis, app_name: str) -> iw.GroundTruth:
    return iw.write_store(redis_client, app=app_name, aggregates=30, seed=7, legacy_share=0.0)


def test_migrate_and_verify_with_transforms(
    store: iw.GroundTruth,
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    app_name: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "tf_split.py").write_text(CALLABLE, encoding="utf-8")
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES, encoding="utf-8")
    url, app = redis_test_url, app_name
    events = store.events()
    courses = [a for a in store.aggregates if a.aggregate_type == "Course"]
    assert courses and any(e.event_type == "EnrollmentNoteAdded" for e in events)

    code, summary, err = migrate(url, pg_dsn, app, "--init-schema", "--transforms", str(rules))
    assert code == 0, err
    t = summary["transforms"]
    assert t["fingerprint"] == load_rules(rules).fingerprint and t["file"] == str(rules)
    assert t["aggregates_left_out"] == len(courses)
    kinds = [e.event_type for e in events]
    left_out = sum(1 for e in events if e.aggregate_type == "Course") + sum(
        1 for k in kinds if k in ("InvoicePaid", "EnrollmentProgressed")
    )
    assert t["events_left_out"] == left_out
    assert t["events_added_by_split"] == kinds.count("EnrollmentNoteAdded")
    rows = pg_rows(pg_dsn, app)
    assert rows == expected(store, rules)
    assert not {a.aggregate_id for a in courses} & rows.keys()  # left out whole: absent
    for aggregate_rows in rows.values():
        assert [r[1] for r in aggregate_rows] == list(range(1, len(aggregate_rows) + 1))
        assert [r[4]["Version"] for r in aggregate_rows] == [r[1] for r in aggregate_rows]
        assert not {"InvoicePaid", "EnrollmentProgressed"} & {r[2] for r in aggregate_rows}
        text = json.dumps([r[4] for r in aggregate_rows])
        assert f", {ASM}" not in text and f"{ASM}.Models" not in text  # assembly, namespace
    assert any(r[2] == "InvoiceOpened" for rs in rows.values() for r in rs)
    assert any(r[2] == "EnrollmentNoteIndexed" for rs in rows.values() for r in rs)

    code, report = verify(url, pg_dsn, app, "--transforms", str(rules))
    assert code == 0, report
    code, report = verify(url, pg_dsn, app)
    assert code == 3 and report["content_differs"] and report["missing_in_pg"]
    fingerprint = load_rules(rules).fingerprint
    assert report["migrated_with_transforms"] == f"{fingerprint[:16]} ({rules})"

    # writers append; an incremental run continues the numbering
    iw.append_events(redis_client, store, 25, seed=3)
    code, summary, err = migrate(url, pg_dsn, app, "--transforms", str(rules))
    assert code == 0, err
    assert summary["aggregates_unchanged"] > 0
    rows = pg_rows(pg_dsn, app)
    assert rows == expected(store, rules)
    # the library's read function gives what LoadFromHistory needs: Version 1, 2, 3, …
    with psycopg.connect(pg_dsn) as conn:
        for aggregate_id, aggregate_rows in rows.items():
            payloads = conn.execute(
                'SELECT * FROM get_events_for_aggregate(%s, %s, %s, "FromVersion" => 0)',
                (aggregate_id, app, aggregate_rows[0][0]),
            ).fetchall()
            versions = [json.loads(p[0])["Version"] for p in payloads]
            assert versions == list(range(1, len(aggregate_rows) + 1))
    code, report = verify(url, pg_dsn, app, "--transforms", str(rules))
    assert code == 0, report

    # other rules (or none) on an incremental run: refused, nothing written
    before = pg_rows(pg_dsn, app)
    changed = tmp_path / "changed.toml"
    changed.write_text(RULES.replace('"InvoicePaid"', '"InvoiceLineAdded"'), encoding="utf-8")
    code, document, _ = migrate(url, pg_dsn, app, "--transforms", str(changed))
    assert code == 2
    message = document["error"]["message"]
    assert str(rules) in message and "--restart" in document["error"]["hint"]
    assert load_rules(rules).fingerprint[:16] in message
    code, document, _ = migrate(url, pg_dsn, app)
    assert code == 2 and "without --transforms" in document["error"]["message"]
    code, document, _ = migrate(url, pg_dsn, app, "--transforms", str(rules), "--delete-source")
    assert code == 2 and "needs --yes" in document["error"]["message"]
    code, document, _ = migrate(url, pg_dsn, app, "--transforms", str(changed), "--restart")
    assert code == 2 and "--yes" in document["error"]["hint"]
    assert pg_rows(pg_dsn, app) == before
    # an aggregate pruned from Redis would lose its events: no restart
    pruned = next(a for a in store.aggregates if a.aggregate_id in before)
    commits = redis_client.lrange(pruned.list_key, 0, -1)
    redis_client.delete(pruned.list_key)
    code, document, _ = migrate(
        url, pg_dsn, app, "--transforms", str(changed), "--restart", "--yes"
    )
    redis_client.rpush(pruned.list_key, *commits)
    assert code == 2 and "they would be lost" in document["error"]["message"]
    assert repr(pruned.aggregate_id) in document["error"]["message"]
    assert pg_rows(pg_dsn, app) == before
    # nor one whose commit list a stray write made another type (it stopped: LLEN failed)
    redis_client.delete(pruned.list_key)
    redis_client.set(pruned.list_key, b"x")
    code, document, _ = migrate(
        url, pg_dsn, app, "--transforms", str(changed), "--restart", "--yes"
    )
    redis_client.delete(pruned.list_key)
    redis_client.rpush(pruned.list_key, *commits)
    assert code == 2, document
    assert f"{pruned.list_key} is a string, not a list" in document["error"]["message"]
    assert "RENAME" in document["error"]["hint"]
    assert pg_rows(pg_dsn, app) == before

    # --restart --yes: the result equals a fresh run with the new rules
    code, summary, err = migrate(
        url, pg_dsn, app, "--transforms", str(changed), "--restart", "--yes"
    )
    assert code == 0, err
    # every aggregate migrated before (the left-out ones have their bookkeeping only)
    assert summary["transforms"]["aggregates_deleted_by_restart"] == len(store.aggregates)
    assert pg_rows(pg_dsn, app) == expected(store, changed)
    code, report = verify(url, pg_dsn, app, "--transforms", str(changed))
    assert code == 0, report

    # a rule that fails on a new event: the aggregate is quarantined whole, nothing written
    target = next(a for a in store.aggregates if a.aggregate_type == "Enrollment")
    iw.append_events(redis_client, store, 1, seed=4, aggregate_ids=[target.aggregate_id])
    added = target.events[-1]
    data = json.loads(added.payload)
    data.update({"$type": f"{NS}.EnrollmentNoteAdded, {ASM}", "Note": "FAIL"})
    failing = iw.to_json(data)
    redis_client.hset(added.hash_key, added.commit_id, failing)
    iw.append_events(redis_client, store, 1, seed=5, aggregate_ids=[target.aggregate_id])
    target_rows = pg_rows(pg_dsn, app)[target.aggregate_id]
    code, summary, err = migrate(url, pg_dsn, app, "--transforms", str(changed))
    assert code == 3, err
    assert summary["problem_counts"] == {"transform_failed": 1}
    assert pg_rows(pg_dsn, app)[target.aggregate_id] == target_rows
    with psycopg.connect(pg_dsn) as conn:
        kind, detail, stored, events_count = conn.execute(
            "SELECT kind, detail, stored_value, events FROM esctl.quarantine"
            " WHERE aggregate_id = %s",
            (target.aggregate_id,),
        ).fetchone() or (None, None, None, None)
    assert kind == "transform_failed" and events_count == 2
    assert "[[python]] #1" in detail and "a failing note" in detail
    assert stored is not None and bytes(stored).decode() == failing


def test_an_install_from_before_gets_the_new_bookkeeping_columns(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    from esctl import pg

    def columns(conn: psycopg.Connection) -> set[tuple[str, str]]:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'esctl'"
        ).fetchall()
        return {(r[0], r[1]) for r in rows}

    with psycopg.connect(pg_dsn) as conn:
        conn.execute(pg.STATE_DDL)  # the tables as an earlier esctl created them
        conn.execute(
            "INSERT INTO esctl.migrated_stream (target_schema, application_name, aggregate_id,"
            " aggregate_type, commits, last_commit_id) VALUES ('public', 'A', 'x', 'T', 3, 'c')"
        )
        conn.commit()
        assert not set(pg.STATE_COLUMNS) & columns(conn)
        # a dry run alters nothing and still works on the old bookkeeping
        iw.write_store(redis_client, app=app_name, aggregates=3, seed=1)
        code, summary, err = migrate(redis_test_url, pg_dsn, app_name, "--dry-run", "--init-schema")
        assert code == 0 and summary["events_migrated"] > 0, err
        assert not set(pg.STATE_COLUMNS) & columns(conn)
        pg.ensure_state_schema(conn)
        conn.commit()
        assert set(pg.STATE_COLUMNS) <= columns(conn)
        pg.ensure_state_schema(conn)  # idempotent
        row = conn.execute(
            "SELECT transforms, last_source_version, last_version FROM esctl.migrated_stream"
        ).fetchone()
    assert row == (None, None, None)  # migrated without transforms


def test_workers_migrate_the_transformed_streams(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str, tmp_path: Path
) -> None:
    store = iw.write_store(redis_client, app=app_name, aggregates=20, seed=9, legacy_share=0.0)
    (tmp_path / "tf_split.py").write_text(CALLABLE, encoding="utf-8")
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES, encoding="utf-8")
    code, summary, err = migrate(
        redis_test_url, pg_dsn, app_name, "--init-schema", "--workers", "2",
        "--transforms", str(rules),
    )  # fmt: skip
    assert code == 0, err
    assert summary["transforms"]["aggregates_left_out"] == sum(
        1 for a in store.aggregates if a.aggregate_type == "Course"
    )
    assert pg_rows(pg_dsn, app_name) == expected(store, rules)
