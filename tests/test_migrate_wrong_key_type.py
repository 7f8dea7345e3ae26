"""Keys named as a commit list or an event hash but of another Redis type (a stray write, a bad
manual fix) in ``migrate redis-to-pg``, ``verify``, ``plan``, ``status`` and ``prune``.

The library fails (WRONGTYPE) on every read of such a key, so the aggregate it names (or whose
payloads it should hold) cannot be loaded: migrate quarantines it (``wrong_key_type``) and exits
3, as for any other problem. It used to skip a commit-list key of another type silently (SCAN
``TYPE list``: exit 0, the aggregate's events never reached PostgreSQL) and to stop the whole
run (exit 1) on an event hash of another type."""

from __future__ import annotations

from dataclasses import dataclass

import independent_writer as iw
import psycopg
import redis
from test_migrate import migrate, run_migrate_cli, write_clean_store

STRING = "stray-string"
HASH = "stray-hash"


def plant_commit_list_keys(client: redis.Redis, app: str) -> dict[str, str]:
    """A string and a hash where commit lists' names are: key -> its Redis type."""
    client.set(iw.commit_list_key(app, STRING), b"x")
    client.hset(iw.commit_list_key(app, HASH), b"f", b"v")
    return {iw.commit_list_key(app, STRING): "string", iw.commit_list_key(app, HASH): "hash"}


def turn_into_list(client: redis.Redis, key: str) -> None:
    """A bad manual fix: the hash gone, a list in its place."""
    client.delete(key)
    client.rpush(key, b"oops")


@dataclass
class WrongHashes:
    partition: str
    """A partition hash, now a list."""
    legacy: str
    """The legacy hash, now a string."""
    unreadable: dict[str, set[str]]
    """Aggregate id -> the hashes of another type its committed events are looked up in."""


def plant_wrong_hashes(client: redis.Redis, app: str, truth: iw.GroundTruth) -> WrongHashes:
    """One partition hash turned into a list and the legacy hash into a string."""
    events = truth.events()
    partition = next(e.hash_key for e in events if not e.legacy)
    legacy = iw.legacy_hash_key(app)
    assert any(e.legacy for e in events)
    turn_into_list(client, partition)
    client.delete(legacy)
    client.set(legacy, b"x")
    unreadable: dict[str, set[str]] = {}
    for e in events:
        if e.hash_key in (partition, legacy):
            unreadable.setdefault(e.aggregate_id, set()).add(e.hash_key)
    return WrongHashes(partition, legacy, unreadable)


def event_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM event").fetchone()
    assert row is not None
    return int(row[0])


def quarantined(dsn: str) -> dict[str, list[tuple[str, str]]]:
    """aggregate id -> (kind, detail) of every esctl.quarantine row."""
    out: dict[str, list[tuple[str, str]]] = {}
    with psycopg.connect(dsn) as conn:
        for aggregate_id, kind, detail in conn.execute(
            "SELECT aggregate_id, kind, detail FROM esctl.quarantine ORDER BY quarantine_id"
        ):
            out.setdefault(aggregate_id, []).append((kind, detail))
    return out


def events_of(truth: iw.GroundTruth, leaving_out: set[str]) -> int:
    return sum(len(a.events) for a in truth.aggregates if a.aggregate_id not in leaving_out)


# --- migrate redis-to-pg -------------------------------------------------------------------


def test_commit_list_keys_of_another_type_are_quarantined_and_the_run_exits_3(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """The nightly run must not stay green while an aggregate is left behind (it exited 0)."""
    truth = write_clean_store(redis_client, app_name, aggregates=20)
    wrong = plant_commit_list_keys(redis_client, app_name)
    result = run_migrate_cli(redis_test_url, pg_dsn, app_name, "--init-schema")
    assert result[0] == 3, result[2]
    summary = result[1]
    assert summary["problem_counts"] == {"wrong_key_type": 2}
    assert summary["aggregates_quarantined"] == 2 and summary["events_quarantined"] == 0
    assert summary["aggregates"] == len(truth.aggregates) + 2
    assert summary["events_migrated"] == len(truth.events()) == event_count(pg_dsn)
    listed = {p["key"]: p["detail"] for p in summary["problems"]}
    assert set(listed) == set(wrong)
    for key, kind in wrong.items():
        assert f"{key} is a {kind}, not a list" in listed[key] and "RENAME" in listed[key]
    rows = quarantined(pg_dsn)
    assert set(rows) == {STRING, HASH}
    assert all(kind == "wrong_key_type" for found in rows.values() for kind, _ in found)
    # the next run finds them again: still exit 3 until someone fixes them
    assert migrate(redis_test_url, pg_dsn, app_name).problem_counts == {"wrong_key_type": 2}


def test_event_hashes_of_another_type_quarantine_the_aggregates_read_there_not_the_run(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """A partition hash that is a list and a legacy hash that is a string: each aggregate
    whose committed events are looked up there is quarantined (wrong_key_type, naming the
    hash); every other aggregate is migrated (the run stopped with exit 1, 'safe to rerun',
    though a rerun stopped the same way)."""
    truth = write_clean_store(redis_client, app_name, aggregates=30, legacy_share=0.3)
    wrong = plant_wrong_hashes(redis_client, app_name, truth)
    summary = migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    assert summary.problem_counts == {"wrong_key_type": sum(map(len, wrong.unreadable.values()))}
    assert summary.aggregates_quarantined == len(wrong.unreadable)
    assert summary.events_migrated == events_of(truth, set(wrong.unreadable))
    rows = quarantined(pg_dsn)
    assert set(rows) == set(wrong.unreadable)
    for aggregate_id, hashes in wrong.unreadable.items():
        details = [detail for kind, detail in rows[aggregate_id] if kind == "wrong_key_type"]
        assert len(details) == len(hashes), rows[aggregate_id]
        for key in hashes:
            [detail] = [d for d in details if d.startswith(f"{key} is a")]
            if key == wrong.legacy:
                assert f"{key} is a string, not a hash: the library keeps pre-2017" in detail
            else:
                assert f"{key} is a list, not a hash" in detail
            assert "looked up there" in detail and "RENAME" in detail


def test_a_migrated_commit_list_overwritten_with_another_type_is_quarantined_next_run(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """An incremental run measures the lists of migrated aggregates (LLEN): one that became
    a string since is quarantined, saying its events migrated before stay in PostgreSQL."""
    truth = write_clean_store(redis_client, app_name, aggregates=20)
    migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    victim = truth.clean_aggregates()[0]
    redis_client.delete(victim.list_key)
    redis_client.set(victim.list_key, b"overwritten")
    summary = migrate(redis_test_url, pg_dsn, app_name)
    assert summary.problem_counts == {"wrong_key_type": 1}
    assert summary.aggregates_unchanged == len(truth.aggregates) - 1
    [(kind, detail)] = quarantined(pg_dsn)[victim.aggregate_id]
    assert kind == "wrong_key_type"
    assert f"{victim.list_key} is a string, not a list" in detail
    assert f"({len(victim.events)} of its commits were migrated before it was)" in detail
    assert event_count(pg_dsn) == len(truth.events())  # nothing taken back
