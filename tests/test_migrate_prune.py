"""``migrate prune`` (and ``redis-to-pg --delete-source``): only identical aggregates are
deleted, each behind its atomic guard; backups restore byte for byte; an interrupted run is
finished by the next one (real Redis and PostgreSQL)."""

from __future__ import annotations

import base64
import os
import stat
import zlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis
import zstandard
from helpers import run_cli
from independent_writer import GroundTruth, TruthAggregate, append_events, write_store

from esctl import migrate, prune, redisio, units
from esctl.errors import Interrupted, LockHeld, Refused
from esctl.locks import AdvisoryLock, prune_lock_name
from esctl.servers import LocalRedis
from esctl.shard import Shard

DEFECTS = ["missing_payload", "version_gap", "invalid_compressed", "orphan"]


# --- helpers -------------------------------------------------------------------------------


def redis_contents(client: redis.Redis) -> dict[bytes, Any]:
    """Every key of the database with its type and value."""
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


def without_events(
    contents: dict[bytes, Any], aggregates: list[TruthAggregate]
) -> dict[bytes, Any]:
    """``contents`` minus the commit lists and payload fields of ``aggregates``."""
    lists = {a.list_key.encode() for a in aggregates}
    fields = {(e.hash_key.encode(), e.commit_id.encode()) for a in aggregates for e in a.events}
    out: dict[bytes, Any] = {}
    for key, (kind, value) in contents.items():
        if kind == "list" and key in lists:
            continue
        if kind == "hash":
            value = {f: v for f, v in value.items() if (key, f) not in fields}
            if not value:
                continue
        out[key] = (kind, value)
    return out


def in_shard(aggregate_id: str, index: int, count: int) -> bool:
    return zlib.crc32(aggregate_id.encode("utf-8")) % count == index


def write_messaging_and_snapshots(client: redis.Redis, app: str, truth: GroundTruth) -> None:
    """Snapshots of some aggregates and a subscriber's queues (docs/layout.md §3, §4): prune must
    leave all of them alone."""
    env = "test"
    for a in truth.aggregates[:10]:
        part = zlib.crc32(a.aggregate_id.encode()) % 655360
        client.hset(
            f"Snapshots:{app}:{part}",
            a.aggregate_id,
            orjson.dumps({"$type": "X, Y", "Id": a.aggregate_id, "Version": 1}),
        )
    client.sadd(f"Subscribers:{{{env}:EnrollmentCreated}}", "Other.Service")
    for which in ("PublishedEvents", "ProcessingEvents", "DeadLetters"):
        client.rpush(
            f"Other.Service:{{{env}:EnrollmentCreated}}:{which}",
            *[e.payload for e in truth.aggregates[0].events],
        )
    client.hset(f"RetryData:{{{env}:EnrollmentCreated}}:1", "RetryCount", "2")


def run_migration(
    client: redisio.RedisClient, app: str, dsn: str, shard: Shard | None = None
) -> migrate.MigrationSummary:
    return migrate.migrate_redis_to_pg(
        client,
        migrate.MigrateOptions(
            app=app, pg_dsn=dsn, init_schema=True, writers=1, shard=shard or Shard()
        ),
    )


def read_backup(path: Path) -> list[dict[str, Any]]:
    chunks = []
    with open(path, "rb") as f:
        reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        while chunk := reader.read(1 << 16):
            chunks.append(chunk)
    return [orjson.loads(line) for line in b"".join(chunks).splitlines()]


def field_bytes(document: dict[str, Any], name: str) -> bytes:
    if name in document:
        return str(document[name]).encode("utf-8")
    return base64.b64decode(document[name + "_b64"])


def restore(client: redis.Redis, documents: list[dict[str, Any]]) -> None:
    """A restore from a prune backup, as the help text describes it."""
    by_list: dict[bytes, list[dict[str, Any]]] = defaultdict(list)
    for d in documents:
        by_list[field_bytes(d, "list_key")].append(d)
    for key, items in by_list.items():
        items.sort(key=lambda d: d["index"])
        assert [d["index"] for d in items] == list(range(items[0]["list_length"]))
        client.rpush(key, *[field_bytes(d, "commit_id") for d in items])
    for d in documents:
        client.hset(
            field_bytes(d, "hash_key"), field_bytes(d, "commit_id"), field_bytes(d, "value")
        )


def journal_rows(dsn: str, app: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM esctl.prune_pending WHERE application_name = %s", (app,)
        ).fetchone()
    assert row is not None
    return int(row[0])


class Scenario:
    """A store with defects, snapshots and queues; shard 0/2 migrated; new events appended to
    a few migrated aggregates. ``expected``: the aggregates prune must delete."""

    def __init__(self, client: redis.Redis, url: str, app: str, dsn: str) -> None:
        self.app, self.dsn, self.url, self.raw = app, dsn, url, client
        self.truth = write_store(client, app=app, aggregates=120, defects=DEFECTS, seed=21)
        write_messaging_and_snapshots(client, app, self.truth)
        self.client = redisio.connect(url)
        run_migration(self.client, app, dsn, Shard(0, 2))
        migrated = [a for a in self.truth.clean_aggregates() if in_shard(a.aggregate_id, 0, 2)]
        appended = append_events(
            client, self.truth, 3, aggregate_ids=[a.aggregate_id for a in migrated[:3]], seed=4
        )
        self.appended = {e.aggregate_id for e in appended}
        self.expected = [a for a in migrated if a.aggregate_id not in self.appended]
        self.not_migrated = [
            a for a in self.truth.clean_aggregates() if not in_shard(a.aggregate_id, 0, 2)
        ]
        self.before = redis_contents(client)

    def options(self, **kw: Any) -> prune.PruneOptions:
        return prune.PruneOptions(app=self.app, pg_dsn=self.dsn, **kw)

    def cli(self, *args: str) -> Any:
        return run_cli(
            "migrate", "prune", *args,
            "--app", self.app, "--redis-url", self.url, "--pg-dsn", self.dsn,
        )  # fmt: skip


@pytest.fixture
def scenario(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> Iterator[Scenario]:
    yield Scenario(redis_client, redis_test_url, app_name, pg_dsn)


# --- what is deleted -----------------------------------------------------------------------


def test_prune_deletes_exactly_the_identical_aggregates(scenario: Scenario) -> None:
    s = scenario
    assert s.expected and s.not_migrated and s.appended

    summary = prune.prune(s.client, s.options())

    assert redis_contents(s.raw) == without_events(s.before, s.expected)
    assert summary.aggregates_pruned == len(s.expected)
    assert summary.events_deleted == sum(len(a.events) for a in s.expected)
    assert summary.payload_fields_deleted == summary.events_deleted
    assert summary.aggregates_examined == len(s.truth.commit_lists)
    assert summary.skipped_unmigratable == len(s.truth.defective_aggregates())
    assert summary.skipped_not_migrated == len(s.not_migrated) + len(s.appended)
    assert summary.skipped_mismatch == 0 and summary.changed_since_verify == 0
    assert summary.skipped_not_identical == summary.aggregates_examined - len(s.expected)
    assert summary.problems == [] and not summary.found_problems
    assert summary.used_memory_before > 0 and summary.used_memory_after > 0
    assert journal_rows(s.dsn, s.app) == 0

    again = prune.prune(s.client, s.options())
    assert again.aggregates_pruned == 0
    assert again.aggregates_examined == summary.aggregates_examined - len(s.expected)
    assert redis_contents(s.raw) == without_events(s.before, s.expected)


def test_pruned_aggregates_stay_readable_from_postgres(scenario: Scenario) -> None:
    s = scenario
    prune.prune(s.client, s.options())
    with psycopg.connect(s.dsn) as conn:
        for a in s.expected[:10]:
            texts = [
                r[0]
                for r in conn.execute(
                    "SELECT * FROM public.get_events_for_aggregate(%s, %s, %s, 0)",
                    (a.aggregate_id, s.app, a.aggregate_type),
                )
            ]
            assert [orjson.loads(t) for t in texts] == [orjson.loads(e.payload) for e in a.events]


def test_dry_run_deletes_nothing(scenario: Scenario) -> None:
    s = scenario
    summary = prune.prune(s.client, s.options(dry_run=True))

    assert summary.dry_run
    assert summary.aggregates_pruned == len(s.expected)
    assert summary.events_deleted == sum(len(a.events) for a in s.expected)
    assert redis_contents(s.raw) == s.before


MISMATCHES = {
    # PostgreSQL holds other content for a version
    "content_differs": "UPDATE public.event e SET event_data = e.event_data || '{\"Extra\": 1}'"
    "  FROM public.aggregate a WHERE a.aggregate_key = e.aggregate_key"
    "   AND a.aggregate_id = %s AND a.application_name = %s AND e.version = 1",
    # rows esctl recorded as migrated are gone from PostgreSQL
    "missing_in_pg": "DELETE FROM public.event e USING public.aggregate a"
    " WHERE a.aggregate_key = e.aggregate_key AND a.aggregate_id = %s"
    "   AND a.application_name = %s",
}


@pytest.mark.parametrize("kind", list(MISMATCHES))
def test_a_mismatch_is_skipped_and_reported(scenario: Scenario, kind: str) -> None:
    s = scenario
    victim = s.expected[0]
    with psycopg.connect(s.dsn) as conn:
        conn.execute(MISMATCHES[kind], (victim.aggregate_id, s.app))

    result = s.cli("--yes", "--json")

    assert result.returncode == 3, result.stderr
    document = orjson.loads(result.stdout)
    assert document["skipped_mismatch"] == 1
    assert document["aggregates_pruned"] == len(s.expected) - 1
    assert [(p["kind"], p["key"]) for p in document["problems"]] == [(kind, victim.list_key)]
    assert redis_contents(s.raw) == without_events(s.before, s.expected[1:])


# --- the guard -----------------------------------------------------------------------------


def test_an_aggregate_changed_after_verification_is_left_untouched(scenario: Scenario) -> None:
    s = scenario
    changed: list[str] = []

    def append_one(candidates: list[str]) -> None:
        if not changed:
            changed.append(candidates[0])
            append_events(s.raw, s.truth, 1, aggregate_ids=[candidates[0]], seed=9)

    summary = prune.prune(s.client, s.options(), before_delete=append_one)

    victim = s.truth.aggregate(changed[0])
    assert summary.changed_since_verify == 1
    assert [(p["kind"], p["key"]) for p in summary.problems] == [
        ("changed_since_verify", victim.list_key)
    ]
    assert summary.found_problems
    assert summary.aggregates_pruned == len(s.expected) - 1
    # The list and every payload it names are still there, the new commit included.
    assert s.raw.lrange(victim.list_key, 0, -1) == [e.commit_id.encode() for e in victim.events]
    for e in victim.events:
        assert s.raw.hget(e.hash_key, e.commit_id) == e.stored
    others = [a for a in s.expected if a.aggregate_id != victim.aggregate_id]
    for a in others:
        assert not s.raw.exists(a.list_key)
    assert journal_rows(s.dsn, s.app) == 0


def test_the_guard_script_deletes_only_the_verified_list(fresh_redis: LocalRedis) -> None:
    # A server that never saw the script: EVALSHA fails with NOSCRIPT and EVAL takes over.
    client = redisio.connect(fresh_redis.url)
    raw = redis.Redis.from_url(fresh_redis.url)
    raw.rpush("{EventStore:A}:1", "a", "b", "c")
    raw.rpush("{EventStore:A}:2", "a", "b", "c")
    raw.rpush("{EventStore:A}:3", "a", "b", "c")
    raw.rpush("{EventStore:A}:4", "a", "b", "c")

    assert prune.guarded_delete(
        client,
        [
            ("{EventStore:A}:1", 2, "a", "c"),  # length differs
            ("{EventStore:A}:2", 3, "a", "b"),  # last differs
            ("{EventStore:A}:3", 3, "x", "c"),  # first differs
            ("{EventStore:A}:4", 3, "a", "c"),  # as verified
            ("{EventStore:A}:5", 0, "", ""),  # gone
        ],
    ) == [False, False, False, True, False]
    assert sorted(raw.keys()) == [b"{EventStore:A}:1", b"{EventStore:A}:2", b"{EventStore:A}:3"]
    assert raw.lrange("{EventStore:A}:1", 0, -1) == [b"a", b"b", b"c"]
    raw.close()


def test_used_memory_drops(fresh_redis: LocalRedis, pg_dsn: str, app_name: str) -> None:
    raw = redis.Redis.from_url(fresh_redis.url)
    write_store(raw, app=app_name, aggregates=300, seed=3)
    client = redisio.connect(fresh_redis.url)
    run_migration(client, app_name, pg_dsn)

    summary = prune.prune(client, prune.PruneOptions(app=app_name, pg_dsn=pg_dsn))

    assert summary.aggregates_pruned == 300
    assert summary.used_memory_after < summary.used_memory_before
    assert raw.dbsize() == 0  # every commit list and event hash of the app is gone
    raw.close()


# --- backup --------------------------------------------------------------------------------


def test_backup_holds_every_deleted_event_and_restores_byte_identical(
    scenario: Scenario, tmp_path: Path
) -> None:
    s = scenario
    path = tmp_path / "pruned.jsonl.zst"

    summary = prune.prune(s.client, s.options(backup_file=str(path)))

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert summary.backup_file == str(path)
    documents = read_backup(path)
    assert len(documents) == summary.backup_events == summary.events_deleted
    truth = {e.commit_id: e for a in s.expected for e in a.events}
    assert {field_bytes(d, "commit_id").decode() for d in documents} == set(truth)
    for d in documents:
        event = truth[field_bytes(d, "commit_id").decode()]
        assert field_bytes(d, "value") == event.stored
        assert field_bytes(d, "hash_key") == event.hash_key.encode()
        assert d["app"] == s.app and d["aggregate_id"] == event.aggregate_id

    restore(s.raw, documents)
    assert redis_contents(s.raw) == s.before


def test_backup_file_is_never_overwritten(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    path = tmp_path / "old.jsonl.zst"
    path.write_bytes(b"an earlier backup")

    with pytest.raises(Refused):
        prune.prune(s.client, s.options(backup_file=str(path)))

    assert path.read_bytes() == b"an earlier backup"
    assert redis_contents(s.raw) == s.before
    result = s.cli("--yes", "--backup-file", str(path))
    assert result.returncode == 2
    assert "exists" in result.stderr


# --- interrupted runs ----------------------------------------------------------------------


def test_a_run_killed_between_list_and_fields_is_finished_by_the_next(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = scenario
    real = prune.delete_fields

    def die(*args: Any, **kw: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(prune, "delete_fields", die)
    with pytest.raises(Interrupted) as stopped:
        prune.prune(s.client, s.options())
    monkeypatch.setattr(prune, "delete_fields", real)
    # It says so (Ctrl-C, SIGTERM): the lists of the page are gone, their fields not yet.
    pruned_lists = len(s.expected)
    assert stopped.value.state == (
        "this prune deleted 0 aggregates (0 events, 0 payload fields) in all; the deletes of "
        f"{pruned_lists} more aggregates were under way ({pruned_lists} of their commit lists "
        "known deleted, each list deleted whole or not at all): what of them was deleted is "
        "recorded in esctl.prune_pending, and the next prune deletes their payload fields first"
    )
    assert stopped.value.done == {
        "aggregates_pruned": 0,
        "events_deleted": 0,
        "payload_fields_deleted": 0,
    }

    # Lists deleted, payload fields left behind (orphans), recorded in the journal.
    for a in s.expected:
        assert not s.raw.exists(a.list_key)
        assert all(s.raw.hexists(e.hash_key, e.commit_id) for e in a.events)
    assert journal_rows(s.dsn, s.app) == len(s.expected)

    summary = prune.prune(s.client, s.options())

    assert summary.orphan_fields_cleaned == sum(len(a.events) for a in s.expected)
    assert summary.aggregates_pruned == 0
    assert redis_contents(s.raw) == without_events(s.before, s.expected)
    assert journal_rows(s.dsn, s.app) == 0


def test_a_run_killed_before_its_deletes_leaves_everything(scenario: Scenario) -> None:
    s = scenario

    def die(candidates: list[str]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(Interrupted) as stopped:
        prune.prune(s.client, s.options(), before_delete=die)
    assert stopped.value.state.startswith("this prune deleted 0 aggregates"), stopped.value.state
    assert redis_contents(s.raw) == s.before
    assert journal_rows(s.dsn, s.app) > 0

    summary = prune.prune(s.client, s.options())

    assert summary.orphan_fields_cleaned == 0
    assert summary.aggregates_pruned == len(s.expected)
    assert redis_contents(s.raw) == without_events(s.before, s.expected)
    assert journal_rows(s.dsn, s.app) == 0


def test_an_interrupted_run_says_what_it_deleted_before(scenario: Scenario) -> None:
    """Ctrl-C (or SIGTERM) before the third page's deletes: the counts it gives are what Redis
    lost, page by page, and a rerun prunes the rest."""
    s = scenario
    pages: list[int] = []

    def third_page(candidates: list[str]) -> None:
        pages.append(len(candidates))
        if len(pages) == 3:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as stopped:
        prune.prune(s.client, s.options(scan_count=10), before_delete=third_page)
    gone = [a for a in s.expected if not s.raw.exists(a.list_key)]
    assert len(gone) == sum(pages[:2]) > 0
    events = sum(len(a.events) for a in gone)
    assert not any(s.raw.hexists(e.hash_key, e.commit_id) for a in gone for e in a.events)
    assert stopped.value.done == {
        "aggregates_pruned": len(gone),
        "events_deleted": events,
        "payload_fields_deleted": events,
    }
    assert stopped.value.state.startswith(
        f"this prune deleted {len(gone)} aggregates ({events} events, {events} payload fields) "
        f"in all; the deletes of {units.counted(pages[2], 'more aggregate')} were under way "
        "(each list deleted whole or not at all): what of them was deleted is recorded in "
        "esctl.prune_pending"
    ), stopped.value.state
    assert stopped.value.hint == "rerun the same command to prune the rest"

    summary = prune.prune(s.client, s.options())
    assert summary.aggregates_pruned == len(s.expected) - len(gone)
    assert redis_contents(s.raw) == without_events(s.before, s.expected)


# --- lock, refusal, CLI --------------------------------------------------------------------


def test_a_held_lock_exits_75_and_deletes_nothing(scenario: Scenario) -> None:
    s = scenario
    with AdvisoryLock(s.dsn, f"esctl:prune:public:{s.app}", what="test"):
        with pytest.raises(LockHeld):
            prune.prune(s.client, s.options())
        result = s.cli("--yes")
        assert result.returncode == 75, result.stderr
    assert redis_contents(s.raw) == s.before


def test_shards_prune_side_by_side_and_a_prune_of_the_whole_waits_for_them(
    scenario: Scenario,
) -> None:
    """A sharded prune holds the whole app's prune lock shared: another shard runs beside it;
    an unsharded prune (and restore-pruned, tested with it) is refused while it runs, and a
    shard is refused while they run."""
    s = scenario
    whole = prune_lock_name("public", s.app)
    with AdvisoryLock(s.dsn, f"{whole}:1/2", within=whole, what="migrate prune"):
        unsharded = s.cli("--yes", "--json")
        assert unsharded.returncode == 75, unsharded.stderr
        message = orjson.loads(unsharded.stdout)["error"]["message"]
        assert "application 'esctl migrate prune (pid " in message, message
        assert redis_contents(s.raw) == s.before
        assert s.cli("--yes", "--shard", "0/2").returncode == 0
    with AdvisoryLock(s.dsn, whole, what="migrate restore-pruned"):
        shard = s.cli("--yes", "--shard", "1/2", "--json")
        assert shard.returncode == 75, shard.stderr
        assert "esctl migrate restore-pruned" in orjson.loads(shard.stdout)["error"]["message"]


def test_without_yes_it_refuses_and_deletes_nothing(scenario: Scenario) -> None:
    s = scenario

    result = s.cli()
    assert result.returncode == 2
    assert "--yes" in result.stderr

    result = s.cli("--json")
    assert result.returncode == 2
    assert orjson.loads(result.stdout)["error"]["kind"] == "refused"
    assert redis_contents(s.raw) == s.before


def test_cli_dry_run_writes_no_backup_and_deletes_nothing(
    scenario: Scenario, tmp_path: Path
) -> None:
    s = scenario
    path = tmp_path / "b.jsonl.zst"

    result = s.cli("--dry-run", "--json", "--backup-file", str(path))

    assert result.returncode == 0, result.stderr
    document = orjson.loads(result.stdout)
    assert document["dry_run"] is True
    assert document["aggregates_pruned"] == len(s.expected)
    assert document["backup_file"] is None
    assert not path.exists()
    assert redis_contents(s.raw) == s.before


def test_cli_json_summary(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    path = tmp_path / "b.jsonl.zst"

    result = s.cli("--yes", "--json", "--backup-file", str(path))

    assert result.returncode == 0, result.stderr
    document = orjson.loads(result.stdout)
    for key in (
        "dry_run", "aggregates_examined", "aggregates_pruned", "events_deleted",
        "skipped_not_identical", "changed_since_verify", "used_memory_before",
        "used_memory_after", "backup_file", "problems",
    ):  # fmt: skip
        assert key in document, key
    assert document["dry_run"] is False
    assert document["aggregates_pruned"] == len(s.expected)
    assert document["backup_file"] == str(path)
    assert redis_contents(s.raw) == without_events(s.before, s.expected)

    human = s.cli("--yes")
    assert human.returncode == 0, human.stderr
    assert "aggregates pruned" in human.stdout


def test_cli_help_has_an_example() -> None:
    result = run_cli("migrate", "prune", "--help")
    assert result.returncode == 0
    assert "Example: esctl migrate prune" in result.stdout


# --- redis-to-pg --delete-source -----------------------------------------------------------


def migrate_cli(url: str, dsn: str, app: str, *args: str) -> Any:
    return run_cli(
        "migrate", "redis-to-pg", "--init-schema", "--no-progress", *args,
        "--app", app, "--redis-url", url, "--pg-dsn", dsn,
    )  # fmt: skip


def test_delete_source_needs_yes_then_prunes_after_the_migration(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_store(redis_client, app=app_name, aggregates=20, defects=["version_gap"], seed=1)
    before = redis_contents(redis_client)

    result = migrate_cli(redis_test_url, pg_dsn, app_name, "--delete-source")

    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert redis_contents(redis_client) == before
    with psycopg.connect(pg_dsn) as conn:  # refused before anything was done
        row = conn.execute("SELECT to_regclass('public.event')").fetchone()
        assert row is not None and row[0] is None

    result = migrate_cli(redis_test_url, pg_dsn, app_name, "--delete-source", "--yes", "--json")

    assert result.returncode == 3, result.stderr  # the quarantined aggregate
    document = orjson.loads(result.stdout)
    clean = truth.clean_aggregates()
    assert document["events_migrated"] == sum(len(a.events) for a in clean)
    assert document["prune"]["aggregates_pruned"] == len(clean)
    assert document["prune"]["skipped_unmigratable"] == 1
    assert document["prune"]["problems"] == []
    assert redis_contents(redis_client) == without_events(before, clean)


def test_delete_source_with_dry_run_prunes_nothing(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_store(redis_client, app=app_name, aggregates=40, seed=1)
    write_messaging_and_snapshots(redis_client, app_name, truth)
    before = redis_contents(redis_client)
    first = migrate_cli(redis_test_url, pg_dsn, app_name, "--json")
    assert first.returncode == 0, first.stderr
    assert "prune" not in orjson.loads(first.stdout)

    dry = migrate_cli(redis_test_url, pg_dsn, app_name, "--delete-source", "--dry-run", "--json")

    assert dry.returncode == 0, dry.stderr
    document = orjson.loads(dry.stdout)
    assert document["prune"]["dry_run"] is True
    assert document["prune"]["aggregates_pruned"] == len(truth.aggregates)
    assert redis_contents(redis_client) == before

    human = migrate_cli(redis_test_url, pg_dsn, app_name, "--delete-source", "--yes")

    assert human.returncode == 0, human.stderr
    assert "aggregates pruned" in human.stdout
    assert redis_contents(redis_client) == without_events(before, truth.aggregates)


def test_delete_source_backs_up_what_it_deletes_and_checks_the_file_first(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str, tmp_path: Path
) -> None:
    truth = write_store(redis_client, app=app_name, aggregates=25, seed=6)
    before = redis_contents(redis_client)
    taken = tmp_path / "taken.jsonl.zst"
    taken.write_bytes(b"an earlier backup")

    for args, complaint in (
        (["--backup-file", str(tmp_path / "b.zst")], "--delete-source"),  # nothing to back up
        (["--delete-source", "--yes", "--backup-file", str(taken)], "exists"),
        (["--delete-source", "--yes", "--backup-file", str(tmp_path / "no" / "b.zst")], "writable"),
    ):
        refused = migrate_cli(redis_test_url, pg_dsn, app_name, *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert complaint in refused.stderr
    assert taken.read_bytes() == b"an earlier backup"
    with psycopg.connect(pg_dsn) as conn:  # refused before the migration
        row = conn.execute("SELECT to_regclass('public.event')").fetchone()
        assert row is not None and row[0] is None

    path = tmp_path / "pruned.jsonl.zst"
    result = migrate_cli(
        redis_test_url, pg_dsn, app_name, "--delete-source", "--yes", "--json",
        "--backup-file", str(path),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    document = orjson.loads(result.stdout)
    assert document["prune"]["backup_file"] == str(path)
    events = sum(len(a.events) for a in truth.aggregates)
    assert document["prune"]["events_deleted"] == document["prune"]["backup_events"] == events
    assert redis_contents(redis_client) == without_events(before, truth.aggregates)
    restore(redis_client, read_backup(path))
    assert redis_contents(redis_client) == before


def test_delete_source_prunes_nothing_after_a_migration_that_stopped_early(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    write_store(redis_client, app=app_name, aggregates=20, defects=["version_gap"], seed=3)
    before = redis_contents(redis_client)

    result = migrate_cli(
        redis_test_url,
        pg_dsn,
        app_name,
        "--delete-source",
        "--yes",
        "--max-problems",
        "0",
        "--json",
    )

    assert result.returncode == 3, result.stderr
    document = orjson.loads(result.stdout)
    assert document["stopped_early"]
    assert document["prune"] is None
    assert "nothing pruned because the migration stopped early" in result.stderr
    assert redis_contents(redis_client) == before
