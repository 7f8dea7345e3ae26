"""``migrate prune --transforms`` and ``migrate redis-to-pg --transforms --delete-source`` (real
subprocesses, a real Redis and PostgreSQL, a store from the independent writer): an aggregate is
deleted only when PostgreSQL holds what the rules make of its stream, one the rules leave out
whole only with --include-left-out and into the backup, prune with other rules (or none) is
refused, and the backups restore the keys byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import independent_writer as iw
import pytest
import redis
from helpers import run_cli
from test_migrate_prune import read_backup, redis_contents, restore, without_events
from test_transforms_migrate import expected, migrate, pg_rows

from esctl.transforms import load_rules

NS = "Learning.Enrollment.Domain.Events"

RULES = f"""
[[leave_out]]
event_type = "InvoicePaid"

[[leave_out]]
aggregate_type = "Course"

[[rename_type]]
from = "{NS}.InvoiceIssued"
to = "Learning.Billing.Events.InvoiceOpened"
"""


def prune(url: str, dsn: str, app: str, *extra: str) -> tuple[int, dict[str, Any]]:
    result = run_cli(
        "migrate", "prune", "--redis-url", url, "--pg-dsn", dsn, "--app", app, "--json", *extra
    )
    assert "Traceback" not in result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.fixture
def store(redis_client: redis.Redis, app_name: str) -> iw.GroundTruth:
    return iw.write_store(redis_client, app=app_name, aggregates=30, seed=11, legacy_share=0.0)


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(RULES, encoding="utf-8")
    return path


def backed_up_lists(documents: list[dict[str, Any]]) -> set[str]:
    return {d["list_key"] for d in documents}


def test_prune_with_the_rules_keeps_left_out_aggregates_unless_asked(
    store: iw.GroundTruth,
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    app_name: str,
    rules: Path,
    tmp_path: Path,
) -> None:
    url, app = redis_test_url, app_name
    courses = [a for a in store.aggregates if a.aggregate_type == "Course"]
    others = [a for a in store.aggregates if a.aggregate_type != "Course"]
    assert courses and others
    assert any(e.event_type == "InvoicePaid" for a in others for e in a.events)
    code, summary, err = migrate(url, pg_dsn, app, "--init-schema", "--transforms", str(rules))
    assert code == 0 and summary["transforms"]["aggregates_left_out"] == len(courses), err
    original = redis_contents(redis_client)
    mine = load_rules(rules).fingerprint

    # without the rules, or with other ones: refused, nothing deleted
    code, document = prune(url, pg_dsn, app, "--yes")
    assert code == 2, document
    message = document["error"]["message"]
    assert "without --transforms" in message and mine[:16] in message
    other = tmp_path / "other.toml"
    other.write_text(RULES.replace('"InvoicePaid"', '"InvoiceLineAdded"'), encoding="utf-8")
    code, document = prune(url, pg_dsn, app, "--yes", "--transforms", str(other))
    assert code == 2, document
    message = document["error"]["message"]
    assert mine[:16] in message and load_rules(other).fingerprint[:16] in message
    assert str(other) in message
    # --include-left-out deletes what PostgreSQL does not hold: only with a backup
    code, document = prune(
        url, pg_dsn, app, "--yes", "--transforms", str(rules), "--include-left-out"
    )
    assert code == 2 and "--backup-file" in document["error"]["message"]
    assert redis_contents(redis_client) == original

    # a dry run counts, deletes nothing
    code, document = prune(url, pg_dsn, app, "--dry-run", "--transforms", str(rules))
    assert code == 0, document
    assert document["aggregates_pruned"] == len(others)
    assert document["aggregates_left_out_kept"] == len(courses)
    assert redis_contents(redis_client) == original

    # with the rules: the transformed aggregates go (backed up), the left-out ones stay
    first = tmp_path / "first.jsonl.zst"
    code, document = prune(
        url, pg_dsn, app, "--yes", "--transforms", str(rules), "--backup-file", str(first)
    )
    assert code == 0, document
    assert document["transforms"] == mine
    assert document["aggregates_pruned"] == len(others)
    assert document["aggregates_left_out_kept"] == len(courses)
    assert document["aggregates_left_out_pruned"] == 0
    assert document["skipped_mismatch"] == document["skipped_not_migrated"] == 0
    assert redis_contents(redis_client) == without_events(original, others)
    first_docs = read_backup(first)
    assert backed_up_lists(first_docs) == {a.list_key for a in others}
    assert len(first_docs) == document["events_deleted"] == sum(len(a.events) for a in others)
    assert pg_rows(pg_dsn, app) == expected(store, rules)  # PostgreSQL untouched

    # with --include-left-out: the left-out aggregates go too, into the backup first
    second = tmp_path / "second.jsonl.zst"
    code, document = prune(
        url, pg_dsn, app, "--yes", "--transforms", str(rules), "--include-left-out",
        "--backup-file", str(second),
    )  # fmt: skip
    assert code == 0, document
    assert document["aggregates_pruned"] == document["aggregates_left_out_pruned"] == len(courses)
    assert document["aggregates_left_out_kept"] == 0
    assert redis_contents(redis_client) == without_events(original, store.aggregates)
    second_docs = read_backup(second)
    assert backed_up_lists(second_docs) == {a.list_key for a in courses}
    assert len(second_docs) == sum(len(a.events) for a in courses)

    # the backups put every key back byte for byte
    restore(redis_client, first_docs + second_docs)
    assert redis_contents(redis_client) == original


def test_delete_source_with_transforms_migrates_then_prunes_by_the_rules(
    store: iw.GroundTruth,
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    app_name: str,
    rules: Path,
    tmp_path: Path,
) -> None:
    url, app = redis_test_url, app_name
    courses = [a for a in store.aggregates if a.aggregate_type == "Course"]
    others = [a for a in store.aggregates if a.aggregate_type != "Course"]
    original = redis_contents(redis_client)
    backup = tmp_path / "pruned.jsonl.zst"
    code, document, err = migrate(
        url, pg_dsn, app, "--init-schema", "--transforms", str(rules), "--delete-source",
        "--yes", "--backup-file", str(backup),
    )  # fmt: skip
    assert code == 0, err
    assert pg_rows(pg_dsn, app) == expected(store, rules)
    pruned = document["prune"]
    assert pruned["transforms"] == load_rules(rules).fingerprint
    assert pruned["aggregates_pruned"] == len(others)
    assert pruned["aggregates_left_out_kept"] == len(courses)
    assert redis_contents(redis_client) == without_events(original, others)
    documents = read_backup(backup)
    assert backed_up_lists(documents) == {a.list_key for a in others}
    restore(redis_client, documents)
    assert redis_contents(redis_client) == original
