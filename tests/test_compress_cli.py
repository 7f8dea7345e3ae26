"""``esctl compress`` end to end (a real subprocess): confirmation, --dry-run, --json, exit
codes. The behaviour itself is tested in test_compress.py."""

from __future__ import annotations

import json

import independent_writer as iw
import redis
import redis_bytes as rb
from helpers import run_cli

from esctl import layout


def esctl(url: str, app: str, *args: str) -> tuple[int, str, str]:
    result = run_cli("compress", "--redis-url", url, "--app", app, *args)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout, result.stderr


def big_payloads(truth: iw.GroundTruth) -> list[iw.TruthEvent]:
    return [e for e in truth.events() if len(e.payload.encode("utf-8")) > 1000]


def test_refuses_without_a_terminal_and_changes_nothing(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=10, threshold=None, seed=1)
    code, stdout, stderr = esctl(redis_test_url, app_name)
    assert code == 2
    assert "no terminal" in stderr and "--yes" in stderr
    event = big_payloads(truth)[0]
    assert redis_client.hget(event.hash_key, event.commit_id) == event.payload.encode("utf-8")
    code, stdout, _ = esctl(redis_test_url, app_name, "--json")
    assert code == 2 and json.loads(stdout)["error"]["kind"] == "refused"


def test_dry_run_then_yes(redis_client: redis.Redis, redis_test_url: str, app_name: str) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=10, threshold=None, seed=1)
    big = big_payloads(truth)
    code, stdout, _ = esctl(redis_test_url, app_name, "--dry-run")
    assert code == 0
    assert "dry run" in stdout and f"{len(big)} events" in stdout
    code, stdout, _ = esctl(redis_test_url, app_name, "--dry-run", "--json")
    document = json.loads(stdout)
    assert document["dry_run"] is True and document["plain_over_threshold"] == len(big)
    assert document["compressed"] == 0 and document["problems"] == []

    code, stdout, stderr = esctl(redis_test_url, app_name, "--yes", "--json")
    assert code == 0, stderr
    document = json.loads(stdout)
    assert document["dry_run"] is False and document["compressed"] == len(big)
    assert document["bytes_saved"] == document["bytes_before"] - document["bytes_after"] > 0
    assert document["used_memory_before"] > 0 and document["used_memory_after"] > 0
    for event in big:
        stored = rb.hget(redis_client, event.hash_key, event.commit_id)
        assert stored is not None and iw.gunzip_base64(stored) == event.payload

    code, stdout, _ = esctl(redis_test_url, app_name, "--yes")
    assert code == 0 and "already compressed" in stdout


def test_lock_held_exits_75(redis_client: redis.Redis, redis_test_url: str, app_name: str) -> None:
    redis_client.set(layout.compress_lock_key(app_name), "other-run", px=30_000)
    code, stdout, _ = esctl(redis_test_url, app_name, "--yes", "--json")
    assert code == 75
    assert json.loads(stdout)["error"]["kind"] == "locked"


def test_values_left_alone_exit_3(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    redis_client.hset(f"EventStore:{app_name}:3", "f", b"\xff" * 1500)
    code, stdout, _ = esctl(redis_test_url, app_name, "--yes", "--json")
    assert code == 3
    assert json.loads(stdout)["problems"][0]["kind"] == "invalid_utf8"


def test_needs_an_app(redis_test_url: str) -> None:
    result = run_cli("compress", "--redis-url", redis_test_url, "--yes")
    assert result.returncode == 1 and "ESCTL_APP" in result.stderr


def test_a_count_of_one_is_said_in_the_singular(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    """The summary's counts agree with their nouns: '2 events, 1 snapshot' (it said '1
    snapshots'), 'at most 1 byte'."""
    payload = '{"Id":"%s","Version":1,"Text":"' + "x" * 600 + '"}'
    for commit_id in (
        "c0e0f1a2-0000-4000-8000-000000000001",
        "c0e0f1a2-0000-4000-8000-000000000002",
    ):
        redis_client.hset(layout.event_hash_key(app_name, commit_id), commit_id, payload % "a")
    redis_client.hset(layout.snapshot_hash_key(app_name, "a"), "a", payload % "a")
    code, stdout, _ = esctl(redis_test_url, app_name, "--threshold", "500", "--dry-run")
    assert code == 0
    assert "values to compress" in stdout and "2 events, 1 snapshot" in stdout
    assert "1 snapshots" not in stdout
    code, stdout, _ = esctl(redis_test_url, app_name, "--threshold", "1", "--dry-run")
    assert code == 0 and "at most 1 byte (left plain)" in stdout


def test_values_that_grow_are_said_to_grow(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    """A low --threshold takes in short values, which gzip+base64 makes longer: the summary
    says the bytes grow (it said 'saves -39 B'); --json keeps the signed bytes_saved."""
    commit_id = "c0e0f1a2-0000-4000-8000-000000000003"
    payload = '{"Id":"a","Version":1,"Text":"short"}'
    redis_client.hset(layout.event_hash_key(app_name, commit_id), commit_id, payload)
    code, stdout, _ = esctl(redis_test_url, app_name, "--threshold", "10", "--dry-run", "--json")
    assert code == 0 and json.loads(stdout)["bytes_saved"] < 0
    code, stdout, _ = esctl(redis_test_url, app_name, "--threshold", "10", "--dry-run")
    assert code == 0 and "(grows by " in stdout and "saves -" not in stdout, stdout
