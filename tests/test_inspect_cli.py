"""``esctl inspect …`` end to end (a real subprocess): output shape and exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import independent_writer as iw
import redis
from bulk_store import write_bulk_store
from helpers import run_cli

from esctl import demo, layout


def test_aggregate(demo_store: demo.DemoSummary, redis_test_url: str) -> None:
    common = ("--app", demo_store.app, "--redis-url", redis_test_url)
    clean = demo_store.samples["aggregate"]
    result = run_cli("inspect", "aggregate", clean, *common, "--json", "--raw")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["aggregate_id"] == clean and document["ok"] is True
    assert all(e["text"] and e["stored"] for e in document["events"])

    gap = demo_store.defect("version_gap").aggregate_id
    result = run_cli("inspect", "aggregate", gap, *common)
    assert result.returncode == 3
    assert "version_gap" in result.stdout and gap in result.stdout

    result = run_cli("inspect", "aggregate", "no-such-id", *common, "--json")
    assert result.returncode == 1
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "not_found" and "{EventStore:" in error["message"]
    assert "Traceback" not in result.stderr


def test_event(demo_store: demo.DemoSummary, redis_test_url: str) -> None:
    common = ("--app", demo_store.app, "--redis-url", redis_test_url)
    result = run_cli("inspect", "event", demo_store.samples["compressed_commit"], *common)
    assert result.returncode == 0, result.stderr
    assert "partition" in result.stdout and '"$type"' in result.stdout
    orphan = demo_store.defect("orphan")
    assert orphan.commit_id is not None
    result = run_cli("inspect", "event", orphan.commit_id, *common, "--json")
    assert result.returncode == 3
    assert json.loads(result.stdout)["committed"] is False


def test_integrity(demo_store: demo.DemoSummary, redis_test_url: str) -> None:
    common = ("--app", demo_store.app, "--redis-url", redis_test_url)
    result = run_cli("inspect", "integrity", *common, "--json")
    assert result.returncode == 3, result.stderr
    document = json.loads(result.stdout)
    assert document["counts"] == {kind: 1 for kind in demo.DEFECT_KINDS}
    human = run_cli("inspect", "integrity", *common)
    assert human.returncode == 3
    for kind in demo.DEFECT_KINDS:
        assert kind in human.stdout
    assert "\r" not in human.stderr  # no progress bar without a terminal


def test_integrity_of_a_clean_store_exits_0(redis_client: redis.Redis, redis_test_url: str) -> None:
    write_bulk_store(redis_client, app="Clean", aggregates=20)
    result = run_cli("inspect", "integrity", "--app", "Clean", "--redis-url", redis_test_url)
    assert result.returncode == 0, result.stderr
    assert "no problems" in result.stdout


def test_stats(demo_store: demo.DemoSummary, redis_test_url: str) -> None:
    common = ("--app", demo_store.app, "--redis-url", redis_test_url)
    result = run_cli("inspect", "stats", *common, "--env", demo_store.env, "--json", "--full")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["aggregates"] == demo_store.commit_lists
    assert document["event_types_exact"] is True
    human = run_cli("inspect", "stats", *common, "--sample", "5")
    assert human.returncode == 0, human.stderr
    assert "event_hashes" in human.stdout and "estimated from the sample" in human.stdout


def test_counts_of_one_are_said_in_the_singular(
    redis_client: redis.Redis, redis_test_url: str, app_name: str, tmp_path: Path
) -> None:
    """One problem written to a file, one snapshot hash: 'All 1 problem:', '1 in 1 hash' (they
    said '1 problems', '1 hashes')."""
    iw.write_store(redis_client, app=app_name, aggregates=3, defects=["missing_payload"], seed=6)
    redis_client.hset(layout.snapshot_hash_key(app_name, "a"), "a", '{"Id":"a","Version":1}')
    common = ("--app", app_name, "--redis-url", redis_test_url)
    problems = tmp_path / "problems.jsonl"
    result = run_cli("inspect", "integrity", *common, "--problems-file", str(problems))
    assert result.returncode == 3, result.stderr
    assert f"All 1 problem: {problems}" in " ".join(result.stdout.split()), result.stdout
    result = run_cli("inspect", "stats", *common)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^snapshots +│ 1 in 1 hash$", result.stdout, re.M), result.stdout


def test_app_is_required(redis_test_url: str) -> None:
    result = run_cli("inspect", "integrity", "--redis-url", redis_test_url)
    assert result.returncode == 1
    assert "--app" in result.stderr


def test_integrity_counts_keys_of_another_type_and_exits_3(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    iw.write_store(redis_client, app=app_name, aggregates=5, legacy_share=0, seed=3)
    stray = layout.commit_list_key(app_name, "stray")
    redis_client.set(stray, b"x")  # a stray write where a commit list's name is
    common = ("inspect", "integrity", "--app", app_name, "--redis-url", redis_test_url)
    result = run_cli(*common, "--json")
    assert result.returncode == 3, result.stderr
    document = json.loads(result.stdout)
    assert document["counts"] == {"wrong_key_type": 1} and document["problems_total"] == 1
    [problem] = document["problems"]
    assert problem["key"] == stray and f"{stray} is a string, not a list" in problem["detail"]


def test_a_payload_hash_of_another_type_stops_a_read_naming_it(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    """Commands that read events stop on a partition hash the library cannot read either,
    in integrity's words: the key, its type, what to do (was: ``HGET … failed: WRONGTYPE``)."""
    truth = iw.write_store(redis_client, app=app_name, aggregates=3, legacy_share=0, seed=5)
    event = truth.aggregates[0].events[0]
    assert event.hash_key is not None
    redis_client.delete(event.hash_key)
    redis_client.rpush(event.hash_key, b"x")
    common = ("--app", app_name, "--redis-url", redis_test_url)
    for args in (
        ("inspect", "aggregate", event.aggregate_id, *common),
        ("events", "query", "--format", "jsonl", *common),
    ):
        result = run_cli(*args)
        assert result.returncode == 1, result.stderr
        assert f"{event.hash_key} is a list, not a hash" in result.stderr, result.stderr
        assert "`esctl inspect integrity` lists every such key" in result.stderr
        assert "Traceback" not in result.stderr
