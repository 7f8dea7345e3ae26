"""Keys named as a commit list or an event hash but of another Redis type (a stray write, a bad
manual fix) in ``migrate redis-to-pg``, ``verify``, ``plan``, ``status`` and ``prune``.

The library fails (WRONGTYPE) on every read of such a key, so the aggregate it names (or whose
payloads it should hold) cannot be loaded: migrate quarantines it (``wrong_key_type``) and exits
3, as for any other problem. It used to skip a commit-list key of another type silently (SCAN
``TYPE list``: exit 0, the aggregate's events never reached PostgreSQL) and to stop the whole
run (exit 1) on an event hash of another type."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import independent_writer as iw
import psycopg
import redis
from test_migrate import migrate, run_migrate_cli, write_clean_store

from esctl import plan, prune, redisio
from esctl.migrate.status import StatusOptions, migration_status
from esctl.verify import VerifyOptions, verify

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


# --- verify, plan, status, prune -----------------------------------------------------------


def test_verify_reports_keys_of_another_type_as_unmigratable(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str, tmp_path: Path
) -> None:
    """As migrate quarantines them: the commit-list keys (verify skipped them) and the
    aggregates of an event hash of another type (verify stopped on it, exit 1)."""
    truth = write_clean_store(redis_client, app_name, aggregates=30, legacy_share=0.3)
    migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    keys = plant_commit_list_keys(redis_client, app_name)
    wrong = plant_wrong_hashes(redis_client, app_name, truth)
    every = tmp_path / "problems.jsonl"
    client = redisio.connect(redis_test_url)
    try:
        opts = VerifyOptions(app=app_name, pg_dsn=pg_dsn, problems_file=str(every))
        summary = verify(client, opts)
    finally:
        client.close()
    assert summary.aggregates == len(truth.aggregates) + 2
    assert summary.counts["unmigratable_in_redis"] == len(keys) + len(wrong.unreadable)
    assert summary.mismatches == summary.counts["unmigratable_in_redis"]
    assert summary.aggregates_identical == len(truth.aggregates) - len(wrong.unreadable)
    lines = every.read_text(encoding="utf-8").splitlines()
    found = {p["key"]: p["detail"] for p in map(json.loads, lines)}
    assert len(found) == summary.mismatches
    for key, kind in keys.items():
        assert "migrate quarantines it as wrong_key_type" in found[key]
        assert f"{key} is a {kind}, not a list" in found[key]
    for aggregate_id in wrong.unreadable:
        detail = found[iw.commit_list_key(app_name, aggregate_id)]
        assert "(wrong_key_type)" in detail and "not a hash" in detail, detail


def test_plan_counts_every_commit_list_key_of_another_type_and_the_hashes_in_its_sample(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """The commit-list keys are found by the plan's SCAN (each one, however small the sample:
    it skipped them); a sampled aggregate read in an event hash of another type is a
    wrong_key_type problem (the plan stopped on it, exit 1)."""
    truth = write_clean_store(redis_client, app_name, aggregates=30, legacy_share=0.3)
    keys = plant_commit_list_keys(redis_client, app_name)
    wrong = plant_wrong_hashes(redis_client, app_name, truth)
    client = redisio.connect(redis_test_url)
    try:
        small = plan.plan(client, plan.PlanOptions(app_name, pg_dsn, sample=3, trial=False))
        whole = plan.plan(client, plan.PlanOptions(app_name, pg_dsn, sample=1000, trial=False))
    finally:
        client.close()
    for summary in (small, whole):
        assert summary.aggregates == len(truth.aggregates) + 2
        assert summary.events == len(truth.events())
        listed = {p["key"] for p in summary.problems if p["kind"] == "wrong_key_type"}
        assert set(keys) <= listed
    assert small.sample_aggregates == 3 + 2
    assert whole.exact and whole.sample_aggregates == len(truth.aggregates) + 2
    assert whole.problems_in_sample == {"wrong_key_type": len(keys) + len(wrong.unreadable)}
    assert whole.aggregates_with_problems_in_sample == len(keys) + len(wrong.unreadable)


def test_status_scans_keys_of_another_type_and_an_unreadable_missing_event_is_undated(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """The lag leaves a commit-list key of another type out (it has no length; migrate
    quarantines it) but counts it scanned; an aggregate behind whose first missing event is
    looked up in a hash of another type is behind and undated (status stopped, exit 1)."""
    truth = write_clean_store(redis_client, app_name, aggregates=20)
    migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    plant_commit_list_keys(redis_client, app_name)
    behind = truth.clean_aggregates()[0]
    commit_id = str(uuid.uuid4())
    hash_key = iw.event_hash_key(app_name, commit_id)
    redis_client.hset(hash_key, commit_id, b"{}")
    redis_client.rpush(behind.list_key, commit_id)
    turn_into_list(redis_client, hash_key)
    report = migration_status(
        StatusOptions(app=app_name, pg_dsn=pg_dsn, pg_schema="public", lag=True),
        lambda: redisio.connect(redis_test_url),
    )
    assert report.aggregates_scanned == len(truth.aggregates) + 2
    assert report.lag is not None
    assert report.lag.aggregates_behind == 1 and report.lag.events_behind == 1
    assert report.lag.undated == 1


def test_prune_never_touches_keys_of_another_type_and_keeps_the_aggregates_they_hold(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """The commit-list keys and the hashes of another type stay as they are, the aggregates
    read in those hashes are kept (unmigratable), every other migrated aggregate is pruned
    (prune stopped on the first such hash, exit 1)."""
    truth = write_clean_store(redis_client, app_name, aggregates=30, legacy_share=0.3)
    migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    keys = plant_commit_list_keys(redis_client, app_name)
    wrong = plant_wrong_hashes(redis_client, app_name, truth)
    planted = {k: redis_client.dump(k) for k in [*keys, wrong.partition, wrong.legacy]}
    client = redisio.connect(redis_test_url)
    try:
        summary = prune.prune(client, prune.PruneOptions(app=app_name, pg_dsn=pg_dsn))
    finally:
        client.close()
    assert summary.skipped_unmigratable == len(wrong.unreadable)
    assert summary.aggregates_pruned == len(truth.aggregates) - len(wrong.unreadable)
    assert {k: redis_client.dump(k) for k in planted} == planted
    for aggregate_id in wrong.unreadable:
        assert redis_client.exists(iw.commit_list_key(app_name, aggregate_id))
    left = {k.decode() for k in redis_client.scan_iter(match=f"{{EventStore:{app_name}}}:*")} - set(
        keys
    )
    assert left == {iw.commit_list_key(app_name, a) for a in wrong.unreadable}
