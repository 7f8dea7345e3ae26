"""``migrate prune`` when a delete fails part-way, on a Redis of the test's own: an ACL user
refused some of the commit lists, a guarded delete answered with an error, a lost
connection. What the run deleted went whole (list and payload fields) and is in the backup
file; the error says exactly what was deleted; nothing after the round trip that failed is
sent; a rerun leaves the store an uninterrupted run leaves (real Redis and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from credservers import PASSWORD, acl_users, set_user, user_url
from helpers import run_cli
from independent_writer import GroundTruth, TruthAggregate, write_store
from test_migrate_prune import (
    field_bytes,
    journal_rows,
    read_backup,
    redis_contents,
    run_migration,
    without_events,
    write_messaging_and_snapshots,
)

from esctl import prune, redisio
from esctl.errors import ConnectionFailed, ServerError
from esctl.servers import LocalRedis


class Store:
    """A migrated store (every aggregate identical in PostgreSQL) with snapshots and queues,
    on the test's own Redis."""

    def __init__(self, server: LocalRedis, dsn: str, app: str) -> None:
        self.server, self.dsn, self.app = server, dsn, app
        self.admin = redis.Redis.from_url(server.url)
        self.truth: GroundTruth = write_store(self.admin, app=app, aggregates=300, seed=5)
        write_messaging_and_snapshots(self.admin, app, self.truth)
        with redisio.connect(server.url) as client:
            run_migration(client, app, dsn)
        self.before = redis_contents(self.admin)

    def gone(self) -> list[TruthAggregate]:
        """The aggregates whose commit list is no longer in Redis."""
        return [a for a in self.truth.aggregates if not self.admin.exists(a.list_key)]

    def cli(self, url: str, *args: str) -> Any:
        return run_cli(
            "migrate", "prune", "--yes", "--json", *args,
            "--app", self.app, "--redis-url", url, "--pg-dsn", self.dsn,
        )  # fmt: skip


@pytest.fixture
def store(fresh_redis: LocalRedis, pg_dsn: str, app_name: str) -> Store:
    return Store(fresh_redis, pg_dsn, app_name)


def deleted_text(aggregates: list[TruthAggregate]) -> str:
    events = sum(len(a.events) for a in aggregates)
    return f"this prune deleted {len(aggregates):,} aggregates ({events:,} events"


def test_a_user_refused_some_commit_lists_stops_and_the_error_says_what_was_deleted(
    store: Store, tmp_path: Path
) -> None:
    """An ACL user that may delete only some of the commit lists (the README's rules with a
    narrower key pattern): Redis refuses the guarded deletes of the others and runs the rest
    of the same round trip. Those it ran are deleted whole (list, then payload fields) and are
    in the backup file; the permission error says how many aggregates and events went. With
    the README's rules a rerun prunes the rest."""
    s = store
    rules = acl_users(s.app, "env")["esctl-prune"]
    lists = f"~{{EventStore:{s.app}}}:*"
    assert lists in rules
    set_user(s.admin, "esctl-prune", [f"~{{EventStore:{s.app}}}:[0-7]*" if r == lists else r
                                      for r in rules])  # fmt: skip
    s.admin.script_load(prune.GUARD_SCRIPT)  # as a run before this one left it
    url = user_url(s.server.port, "esctl-prune")
    first = tmp_path / "first.jsonl.zst"

    result = s.cli(url, "--backup-file", str(first))

    assert result.returncode == 1, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "permission"
    gone = s.gone()
    assert 0 < len(gone) < len(s.truth.aggregates)
    assert redis_contents(s.admin) == without_events(s.before, gone)  # each whole, no orphan
    assert journal_rows(s.dsn, s.app) == 0
    backed_up = {field_bytes(d, "commit_id") for d in read_backup(first)}
    assert {e.commit_id.encode() for a in gone for e in a.events} <= backed_up
    message = " ".join(error["message"].split())
    assert f"refused EVALSHA on {{EventStore:{s.app}}}:" in message
    assert deleted_text(gone) in message
    assert "only the payload fields of the lists it deleted were deleted, nothing else" in message

    set_user(s.admin, "esctl-prune", rules)
    result = s.cli(url, "--backup-file", str(tmp_path / "second.jsonl.zst"))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["aggregates_pruned"] == len(s.truth.aggregates) - len(gone)
    assert document["orphan_fields_cleaned"] == 0
    assert redis_contents(s.admin) == without_events(s.before, s.truth.aggregates)


def test_a_guarded_delete_redis_answers_with_an_error_stops_the_run_after_its_round_trip(
    store: Store,
) -> None:
    """A commit list replaced by a string after it verified: its guard fails (WRONGTYPE), the
    other guards of the same round trip ran. Their aggregates are deleted whole; the error
    names the key and counts what was deleted."""
    s = store
    replaced: list[str] = []

    def replace_one(candidates: list[str]) -> None:
        aggregate = next(a for a in s.truth.aggregates if a.aggregate_id == candidates[0])
        s.admin.delete(aggregate.list_key)
        s.admin.set(aggregate.list_key, "not a list")
        replaced.append(aggregate.aggregate_id)

    options = prune.PruneOptions(app=s.app, pg_dsn=s.dsn, scan_count=100_000)  # one page
    with redisio.connect(s.server.url) as client, pytest.raises(ServerError) as raised:
        prune.prune(client, options, before_delete=replace_one)

    gone = s.gone()
    (kept,) = [a for a in s.truth.aggregates if a not in gone]
    assert [kept.aggregate_id] == replaced  # every other guard of the round trip ran
    contents = redis_contents(s.admin)
    expected = without_events(s.before, gone)  # the others went whole, list and fields
    assert contents.pop(kept.list_key.encode()) != expected.pop(kept.list_key.encode())
    assert contents == expected
    assert journal_rows(s.dsn, s.app) == 0
    message = " ".join(raised.value.message.split())
    assert f"the guarded delete of {kept.list_key} failed" in message and "WRONGTYPE" in message
    assert deleted_text(gone) in message


@pytest.mark.parametrize("when", ["before the guards", "before the payload fields"])
def test_a_connection_lost_mid_run_says_what_was_deleted_and_a_rerun_finishes(
    store: Store, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Redis closes esctl's connection at the third page, before its guarded deletes or after
    them, before the payload fields: ConnectionFailed, whose message counts what the run
    deleted (as many aggregates as are gone whole) and says that the page in hand is recorded
    for the next prune; the rerun finishes, to the store of an uninterrupted run."""
    s = store
    pages: list[list[str]] = []

    def cut() -> None:
        s.admin.client_kill_filter(_type="normal", skipme=True)

    def at_third_page(candidates: list[str]) -> None:
        pages.append(candidates)
        if len(pages) == 3 and when == "before the guards":
            cut()

    real = prune.delete_fields

    def fields_at_third_page(client: Any, fields: Any) -> int:
        if len(pages) == 3 and when == "before the payload fields":
            cut()
        return real(client, fields)

    monkeypatch.setattr(prune, "delete_fields", fields_at_third_page)
    options = prune.PruneOptions(app=s.app, pg_dsn=s.dsn, scan_count=40)
    with redisio.connect(s.server.url) as client, pytest.raises(ConnectionFailed) as raised:
        prune.prune(client, options, before_delete=at_third_page)

    assert len(pages) == 3
    in_hand = set(pages[2])
    finished = [a for a in s.gone() if a.aggregate_id not in in_hand]
    assert len(finished) == len(pages[0]) + len(pages[1])
    message = " ".join(raised.value.message.split())
    assert deleted_text(finished) in message
    assert f"the deletes of {len(in_hand):,} more aggregates were under way" in message
    assert "recorded in esctl.prune_pending" in message
    assert journal_rows(s.dsn, s.app) == len(in_hand)

    monkeypatch.setattr(prune, "delete_fields", real)
    with redisio.connect(s.server.url) as client:
        again = prune.prune(client, prune.PruneOptions(app=s.app, pg_dsn=s.dsn))
    assert again.aggregates_pruned + len(finished) + (
        len(in_hand) if when == "before the payload fields" else 0
    ) == len(s.truth.aggregates)
    assert redis_contents(s.admin) == without_events(s.before, s.truth.aggregates)
    assert journal_rows(s.dsn, s.app) == 0


def test_delete_source_whose_prune_is_refused_says_the_migration_finished(
    fresh_redis: LocalRedis, pg_dsn: str, app_name: str, tmp_path: Path
) -> None:
    """``redis-to-pg --delete-source`` under the prune user with a narrower list pattern: the
    migration finishes, its prune is refused part-way; the permission error says the migration
    finished (how many events it copied) and what the prune deleted. With the README's rules
    the same command finishes the job."""
    admin = redis.Redis.from_url(fresh_redis.url)
    truth = write_store(admin, app=app_name, aggregates=300, seed=5)
    write_messaging_and_snapshots(admin, app_name, truth)
    before = redis_contents(admin)
    rules = acl_users(app_name, "env")["esctl-prune"]
    lists = f"~{{EventStore:{app_name}}}:*"
    set_user(admin, "esctl-prune", [f"~{{EventStore:{app_name}}}:[0-7]*" if r == lists else r
                                    for r in rules])  # fmt: skip
    admin.script_load(prune.GUARD_SCRIPT)
    url = user_url(fresh_redis.port, "esctl-prune")

    def delete_source(backup: str) -> Any:
        return run_cli(
            "migrate", "redis-to-pg", "--init-schema", "--delete-source", "--yes", "--json",
            "--backup-file", str(tmp_path / backup),
            "--app", app_name, "--redis-url", url, "--pg-dsn", pg_dsn,
        )  # fmt: skip

    result = delete_source("first.jsonl.zst")

    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "permission"
    events = sum(len(a.events) for a in truth.aggregates)
    gone = [a for a in truth.aggregates if not admin.exists(a.list_key)]
    assert 0 < len(gone) < len(truth.aggregates)
    message = " ".join(error["message"].split())
    assert f"migrate redis-to-pg finished ({events:,} events migrated" in message
    assert "then the prune of --delete-source stopped" in message
    assert deleted_text(gone) in message

    set_user(admin, "esctl-prune", rules)
    result = delete_source("second.jsonl.zst")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["events_migrated"] == 0
    assert document["prune"]["aggregates_pruned"] == len(truth.aggregates) - len(gone)
    assert redis_contents(admin) == without_events(before, truth.aggregates)
    admin.close()
