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
