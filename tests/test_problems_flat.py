"""Summaries stay bounded however many problems a store has (esctl.problems): the first
DEFAULT_LISTED problems are listed, every one is counted by kind, and the summary names where
all of them are — the query over esctl.quarantine for a migration, the --problems-file for
``migrate verify`` and ``inspect integrity`` — and that place really holds all of them."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import psycopg
import pytest
import redis
from bulk_store import write_bulk_store
from helpers import run_cli
from terminal import ESCTL, assert_reads_well, run_on_terminal

from esctl import layout, storereads
from esctl.problems import DEFAULT_LISTED, ProblemTally
from esctl.replay.summary import ReplaySummary

INVALID = 25
"""Aggregates whose every payload is made invalid JSON (3 events each)."""
MISSING = 5
"""Aggregates whose every payload is deleted."""
EVENTS = 3
EXPECTED = {"invalid_json": INVALID * EVENTS, "missing_payload": MISSING * EVENTS}
TOTAL = sum(EXPECTED.values())


@pytest.fixture
def damaged_store(redis_client: redis.Redis, app_name: str) -> dict[str, str]:
    """60 aggregates of 3 events; 30 of them damaged (90 problems): their commit list keys."""
    write_bulk_store(redis_client, app=app_name, aggregates=60, events_per_aggregate=EVENTS)
    keys = sorted(
        k.decode() for k in redis_client.scan_iter(match=layout.commit_list_pattern(app_name))
    )
    damaged: dict[str, str] = {}
    for i, commits in enumerate(storereads.commit_lists(redis_client, keys[: INVALID + MISSING])):
        _, where = storereads.fetch_values(redis_client, app_name, commits)
        kind = "invalid_json" if i < INVALID else "missing_payload"
        for commit_id, hash_key in zip(commits, where, strict=True):
            assert hash_key is not None
            if kind == "invalid_json":
                redis_client.hset(hash_key, commit_id, b'{"Id": ')
            else:
                redis_client.hdel(hash_key, commit_id)
        damaged[keys[i]] = kind
    return damaged


def _json(*args: str) -> dict[str, Any]:
    result = run_cli(*args, "--json")
    assert result.returncode == 3, result.stderr
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def _bounded(document: dict[str, Any], counts: dict[str, int]) -> None:
    total = sum(counts.values())
    assert document["problem_counts"] == counts
    assert document["problems_total"] == total
    assert len(document["problems"]) == min(total, DEFAULT_LISTED)
    assert document["problems_omitted"] == total - len(document["problems"])


def test_migrate_lists_the_first_counts_all_and_its_query_lists_the_rest(
    damaged_store: dict[str, str], redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    store = ["--app", app_name, "--redis-url", redis_test_url, "--pg-dsn", pg_dsn]
    dry = _json("migrate", "redis-to-pg", *store, "--init-schema", "--dry-run", "--no-progress")
    _bounded(dry, EXPECTED)
    assert dry["problems_where"] is None  # a dry run records nothing

    summary = _json("migrate", "redis-to-pg", *store, "--init-schema", "--no-progress")
    _bounded(summary, EXPECTED)
    assert summary["aggregates_quarantined"] == INVALID + MISSING
    query = summary["problems_where"]
    assert summary["run_id"] in query
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(query).fetchall()
    everything = {(kind, layout.commit_list_key(app_name, a), detail) for a, kind, detail in rows}
    assert len(rows) == TOTAL
    assert Counter(kind for _, kind, _ in rows) == EXPECTED
    assert {key for _, key, _ in everything} == set(damaged_store)
    for kind, key, _ in everything:
        assert damaged_store[key] == kind
    assert {(p["kind"], p["key"], p["detail"]) for p in summary["problems"]} <= everything

    # The table at 80 columns: counts by kind, how many are listed, and the query.
    screen = run_on_terminal(
        [*ESCTL, "migrate", "redis-to-pg", *store, "--no-progress"], size="80x24"
    )
    assert_reads_well(screen, exit_code=3)
    words = " ".join(screen.text.split())
    assert f"problems by kind ({TOTAL})" in words
    assert f"problems (first {DEFAULT_LISTED} of {TOTAL})" in words
    for kind, n in EXPECTED.items():
        assert any(kind in row and str(n) in row for row in screen.rows), kind
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT run_id FROM esctl.migration_run ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
    assert row is not None and row[0] != summary["run_id"]
    rerun_query = query.replace(summary["run_id"], row[0])
    # Printed whole on a line of its own under "All N problems:" (the terminal wraps it):
    # selected and copied, it runs as it is.
    index = screen.rows.index(f"All {TOTAL} problems:") + 1
    assert screen.logical_line_at(index, len(rerun_query)) == rerun_query


def test_verify_and_integrity_write_every_problem_to_the_problems_file(
    damaged_store: dict[str, str], redis_test_url: str, pg_dsn: str, app_name: str, tmp_path: Any
) -> None:
    redis_args = ["--app", app_name, "--redis-url", redis_test_url]
    _json("migrate", "redis-to-pg", *redis_args, "--pg-dsn", pg_dsn, "--init-schema")

    path = tmp_path / "verify.jsonl"
    verify = _json(
        "migrate", "verify", *redis_args, "--pg-dsn", pg_dsn, "--workers", "2",
        "--problems-file", str(path),
    )  # fmt: skip
    _bounded(verify, {"unmigratable_in_redis": INVALID + MISSING})
    assert verify["problems_where"] == str(path)
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(p["key"] for p in written) == sorted(damaged_store)
    assert all(p in written for p in verify["problems"])

    path = tmp_path / "integrity.jsonl"
    path.write_text("left from before\n")  # emptied first
    integrity = _json("inspect", "integrity", *redis_args, "--problems-file", str(path))
    assert integrity["problem_counts"] == integrity["counts"] == EXPECTED
    assert integrity["problems_total"] == TOTAL
    # --examples (10) per kind are listed.
    assert len(integrity["problems"]) == 20 == TOTAL - integrity["problems_omitted"]
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert Counter(p["kind"] for p in written) == EXPECTED
    assert {p["key"] for p in written if p["kind"] == "missing_payload"} == {
        k for k, kind in damaged_store.items() if kind == "missing_payload"
    }
    assert all(p in written for p in integrity["problems"])

    # Without a problems file the table says how to get them all.
    screen = run_on_terminal(
        [*ESCTL, "migrate", "verify", *redis_args, "--pg-dsn", pg_dsn], size="80x24"
    )
    assert_reads_well(screen, exit_code=3)
    words = " ".join(screen.text.split())
    assert f"mismatches by kind ({INVALID + MISSING})" in words
    assert (
        f"{INVALID + MISSING - DEFAULT_LISTED} more not listed: rerun with --problems-file" in words
    )


def test_tallies_count_beyond_what_they_list() -> None:
    tally = ProblemTally(listed=3)
    for i in range(10):
        tally.add({"kind": "a" if i % 2 else "b", "key": str(i), "detail": ""})
    other = ProblemTally(listed=3)
    other.add({"kind": "c", "key": "x", "detail": ""})
    tally.merge(other)
    assert tally.as_dict() == {
        "problems": [{"kind": "b", "key": str(i), "detail": ""} for i in (0,)]
        + [{"kind": "a", "key": "1", "detail": ""}, {"kind": "b", "key": "2", "detail": ""}],
        "problem_counts": {"a": 5, "b": 5, "c": 1},
        "problems_total": 11,
        "problems_omitted": 8,
        "problems_where": None,
    }
    replay = ReplaySummary(dry_run=True, source="redis", target="stdout", order="aggregate")
    for i in range(DEFAULT_LISTED + 5):
        replay.add_problem("dead_lettered", str(i), "")
    replay.add_problems([("unreadable", "k", "d")], {"duplicate_version": 7})
    document = replay.as_dict()
    assert document["problem_counts"] == {
        "dead_lettered": DEFAULT_LISTED + 5,
        "duplicate_version": 7,
        "unreadable": 1,
    }
    assert len(document["problems"]) == DEFAULT_LISTED
    assert document["problems_total"] == DEFAULT_LISTED + 13
    assert document["problems_omitted"] == document["problems_not_listed"] == 13
