"""A typo in ``--app`` / ``ESCTL_APP``: which apps have keys in a Redis database (a bounded
SCAN), whether an app has any key at all, and the ``note:`` the commands print when the app
they read has none (naming the apps that do); the same for the commands that read the migrated
events in PostgreSQL (an app with no row in the schema's ``aggregate`` table)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from cluster import LocalCluster, redis_cluster
from helpers import run_cli, start_cli

from esctl import layout, pg, pgevents, redisio, storereads
from esctl.cli import appkeys
from esctl.demo import DemoSummary, write_demo_store
from esctl.doctor import DoctorOptions, run_doctor
from esctl.migrate import MigrateOptions, migrate_redis_to_pg
from esctl.migrate.status import StatusOptions, migration_status

__all__ = ["redis_cluster"]  # the fixture, imported for pytest

# --- which keys are an app's store -----------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("{EventStore:My.App}:42", (layout.COMMIT_LIST, "My.App")),
        ("{EventStore:My.App}:a:b}", (layout.COMMIT_LIST, "My.App")),
        ("EventStore:My.App:123456", (layout.EVENT_HASH, "My.App")),
        ("EventStore:My.App", (layout.LEGACY_HASH, "My.App")),
        ("EventStore:My:App", (layout.LEGACY_HASH, "My:App")),
        ("Snapshots:My.App:7", (layout.SNAPSHOT_HASH, "My.App")),
        ("Snapshots:My.App", None),
        ("Snapshots:My.App:x", None),
        ("{EventStore:}:42", None),
        ("{EventStore:My.App}", None),
        ("EventStore:", None),
        ("Subscribers:{prod:ItemScoreCreated}", None),
        ("My.App:{prod:ItemScoreCreated}:PublishedEvents", None),
        ("esctl:doctor:{My.App}", None),
    ],
)
def test_store_key_app(key: str, expected: tuple[str, str] | None) -> None:
    assert layout.store_key_app(key) == expected


def test_the_store_keys_pattern_matches_every_store_key_and_little_else() -> None:
    matches = redisio.glob_matcher(layout.STORE_KEYS_PATTERN)
    for key in ("{EventStore:A}:1", "EventStore:A:1", "EventStore:A", "Snapshots:A:1"):
        assert matches(key.encode())
    for key in ("Subscribers:{p:T}", "RetryData:{p:T}:1", "esctl:lock:x", "A:{p:T}:DeadLetters"):
        assert not matches(key.encode())
    app = "A*[b]?"
    of_app = redisio.glob_matcher(layout.app_store_keys_pattern(app))
    assert of_app(f"{{EventStore:{app}}}:1".encode())
    assert of_app(f"EventStore:{app}:1".encode()) and of_app(f"Snapshots:{app}:1".encode())
    assert not of_app(b"EventStore:Ax[b]?:1")


# --- which apps have keys here ---------------------------------------------------------------


def test_apps_with_keys_names_every_app_of_a_small_database(
    redis_client: redis.Redis, demo_store: DemoSummary
) -> None:
    redis_client.hset("Snapshots:Other.App:12", "agg", "{}")
    redis_client.rpush("{EventStore:Third.App}:1", "c")
    redis_client.set("unrelated", "x")
    here = storereads.apps_with_keys(redis_client)
    assert here.complete
    assert set(here.keys) == {demo_store.app, "Other.App", "Third.App"}
    assert here.total == redis_client.dbsize() == here.examined
    # The names most like the one asked for come first (a typo's likely meaning).
    assert here.listed(demo_store.app + "x")[0] == demo_store.app
    assert here.listed(demo_store.app, limit=1) == ["Other.App"]
    assert "apps with keys here: " in here.text("Nope")
    assert "partial" not in here.text("Nope")


def test_apps_with_keys_stays_bounded_in_a_large_keyspace(
    redis_client: redis.Redis, demo_store: DemoSummary
) -> None:
    pipe = redis_client.pipeline(transaction=False)
    for start in range(0, 200_000, 5000):
        pipe.mset({f"unrelated:{i}": "x" for i in range(start, start + 5000)})
    pipe.execute()
    started = time.perf_counter()
    here = storereads.apps_with_keys(redis_client, max_keys=2000)
    took = time.perf_counter() - started
    assert not here.complete
    assert here.examined <= 2000 and here.total == redis_client.dbsize()
    assert took < 1.0, took
    assert f"(a partial scan: ~{here.examined:,} of {here.total:,} keys)" in here.text("Nope")
    # The time bound holds too: one SCAN call, then it stops.
    quick = storereads.apps_with_keys(redis_client, max_seconds=0)
    assert not quick.complete and quick.examined <= 500
    # The default bounds: a few thousand keys, ~100 ms.
    started = time.perf_counter()
    default = storereads.apps_with_keys(redis_client)
    assert time.perf_counter() - started < 1.0
    assert not default.complete and default.examined <= redisio.scan.SAMPLE_KEYS


def test_find_store_key_stops_at_its_time_in_a_large_keyspace(
    redis_client: redis.Redis, demo_store: DemoSummary
) -> None:
    """Looking for a mistyped app's event hashes goes through the whole keyspace (no key is
    found to stop at): on a large one the search stops at its time, and the note says only
    what the command's own scan made sure of."""
    pipe = redis_client.pipeline(transaction=False)
    for start in range(0, 200_000, 5000):
        pipe.mset({f"unrelated:{i}": "x" for i in range(start, start + 5000)})
    pipe.execute()
    wrong = typo(demo_store.app)
    hashes = [layout.EVENT_HASH, layout.SNAPSHOT_HASH]
    started = time.perf_counter()
    assert storereads.find_store_key(redis_client, wrong, hashes, max_seconds=0) == (
        storereads.SEARCH_CUT
    )
    assert time.perf_counter() - started < 1.0
    assert storereads.find_store_key(redis_client, wrong, hashes) is None  # unbounded: sure
    here = storereads.apps_with_keys(redis_client)
    note = appkeys.no_commits_text(wrong, "127.0.0.1:6379/9", [layout.COMMIT_LIST], here)
    assert note.startswith(f"app {wrong} has no commit list in Redis 127.0.0.1:6379/9 (a large")
    assert "apps with keys here (a partial scan: ~" in note


def test_apps_with_keys_of_an_empty_database(redis_client: redis.Redis) -> None:
    here = storereads.apps_with_keys(redis_client)
    assert here.complete and here.keys == {} and here.total == 0
    assert "no app has event store keys in this database" in here.text("Nope")


# --- whether an app has any key --------------------------------------------------------------


def test_find_store_key_finds_each_family_and_only_the_apps_own(
    redis_client: redis.Redis, app_name: str
) -> None:
    assert storereads.find_store_key(redis_client, app_name) is None
    # Another app whose name starts like this one's is not this app.
    redis_client.hset(f"EventStore:{app_name}:Sub:12", "c", "v")
    redis_client.hset(f"Snapshots:{app_name}.Other:12", "a", "v")
    redis_client.rpush(f"{{EventStore:{app_name}x}}:1", "c")
    assert storereads.find_store_key(redis_client, app_name) is None
    keys = {
        layout.COMMIT_LIST: layout.commit_list_key(app_name, "1"),
        layout.EVENT_HASH: layout.event_hash_key(app_name, "c"),
        layout.LEGACY_HASH: layout.legacy_event_hash_key(app_name),
        layout.SNAPSHOT_HASH: layout.snapshot_hash_key(app_name, "1"),
    }
    for family, key in keys.items():
        if family == layout.COMMIT_LIST:
            redis_client.rpush(key, "c")
        else:
            redis_client.hset(key, "f", "v")
        assert storereads.find_store_key(redis_client, app_name, [family]) == key
        others = [f for f in layout.STORE_KEY_FAMILIES if f != family]
        assert storereads.find_store_key(redis_client, app_name, others) is None
        assert storereads.find_store_key(redis_client, app_name) == key
        redis_client.delete(key)


# --- the note --------------------------------------------------------------------------------


def typo(app: str) -> str:
    """An --app one letter off ``app``."""
    return app[:-1]


def notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("note: ")]


def assert_noted(result: Any, asked: str, server: str, *right: str) -> str:
    """``result`` printed the one note: ``asked`` has no keys on ``server``, ``right`` do."""
    found = notes(result.stderr)
    assert len(found) == 1, result.stderr
    note = found[0]
    assert note.startswith(f"note: app {asked} has no keys in Redis {server}"), note
    assert "(no commit list, event hash or snapshot)" in note
    if right:
        assert "apps with keys here" in note and all(app in note for app in right), note
    assert note.endswith("--app / ESCTL_APP"), note
    assert "note:" not in result.stdout
    return note


def assert_quiet(result: Any) -> None:
    assert notes(result.stderr) == [], result.stderr


REDIS_COMMANDS = {
    # name: (arguments, exit code of a typo, takes --json)
    "inspect stats": (("inspect", "stats"), 0, True),
    "inspect integrity": (("inspect", "integrity"), 0, True),
    "inspect integrity --shard": (("inspect", "integrity", "--shard", "1/2"), 0, True),
    "events query": (("events", "query", "--type", "ItemScoreCreated"), 0, True),
    "events query --aggregate": (
        ("events", "query", "--aggregate", "1", "--format", "table"),
        0,
        False,
    ),
    "replay --to stdout": (("replay", "--from", "redis", "--all", "--to", "stdout"), 0, False),
    "replay --dry-run": (
        ("replay", "--from", "redis", "--all", "--to", "stdout", "--dry-run"),
        0,
        True,
    ),
    "compress --dry-run": (("compress", "--dry-run"), 0, True),
}


@pytest.mark.parametrize("name", list(REDIS_COMMANDS))
def test_a_command_reading_an_app_with_no_keys_names_the_apps_that_have_some(
    name: str, demo_store: DemoSummary, redis_test_url: str
) -> None:
    args, code, takes_json = REDIS_COMMANDS[name]
    server = redisio.describe_url(redis_test_url)
    wrong = typo(demo_store.app)
    result = run_cli(*args, "--redis-url", redis_test_url, "--app", wrong)
    assert result.returncode == code, result.stderr
    assert_noted(result, wrong, server, demo_store.app)
    # ESCTL_APP is named as well as --app: the same note.
    by_env = run_cli(*args, "--redis-url", redis_test_url, env={"ESCTL_APP": wrong})
    assert by_env.returncode == code and notes(by_env.stderr) == notes(result.stderr)
    right = run_cli(*args, "--redis-url", redis_test_url, "--app", demo_store.app)
    assert_quiet(right)
    if takes_json:
        # stdout stays the one document it was, of the same shape; the note is on stderr.
        document = run_cli(*args, "--redis-url", redis_test_url, "--app", wrong, "--json")
        assert document.returncode == code
        assert_noted(document, wrong, server, demo_store.app)
        parsed = json.loads(document.stdout)
        of_right = json.loads(
            run_cli(*args, "--redis-url", redis_test_url, "--app", demo_store.app, "--json").stdout
        )
        assert type(parsed) is type(of_right)
        if isinstance(parsed, dict):
            assert parsed.keys() == of_right.keys()
        else:
            assert parsed == []


def test_the_migrate_commands_name_the_apps_that_have_keys(
    demo_store: DemoSummary, redis_test_url: str, pg_dsn: str
) -> None:
    server = redisio.describe_url(redis_test_url)
    wrong = typo(demo_store.app)

    def run(app: str, *args: str) -> Any:
        return run_cli(
            "migrate", *args, "--redis-url", redis_test_url, "--pg-dsn", pg_dsn, "--app", app
        )

    # A cron job's nightly run: exit 0, 0 events, and now a note saying why.
    migrated = run(wrong, "redis-to-pg", "--init-schema", "--json", "--no-progress")
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout)["events_migrated"] == 0
    assert_noted(migrated, wrong, server, demo_store.app)
    for args in (("plan", "--no-trial"), ("plan", "--json"), ("verify",), ("verify", "--json")):
        result = run(wrong, *args)
        assert result.returncode == 0, result.stderr
        assert_noted(result, wrong, server, demo_store.app)
        if "--json" in args:
            json.loads(result.stdout)
    right = run(demo_store.app, "redis-to-pg", "--json", "--no-progress")
    assert right.returncode == 3  # the demo's planted defects are quarantined
    assert_quiet(right)
    assert_quiet(run(demo_store.app, "plan", "--no-trial"))
    assert_quiet(run(demo_store.app, "verify"))
    # The prune a cron job runs after it: nothing to delete for a typo, and a note saying why.
    for pruning in (("prune", "--dry-run"), ("prune", "--yes", "--json")):
        result = run(wrong, *pruning)
        assert result.returncode == 0, result.stderr
        assert_noted(result, wrong, server, demo_store.app)
    assert_quiet(run(demo_store.app, "prune", "--dry-run"))


def recorded_runs(pg_dsn: str, app: str) -> list[tuple[str, str]]:
    """The (shard, status) of every run of ``app`` in esctl.migration_run."""
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute(
            "SELECT shard, status FROM esctl.migration_run WHERE application_name = %s"
            " ORDER BY started_at",
            (app,),
        ).fetchall()


def test_a_migration_of_an_app_with_no_keys_records_no_run(
    demo_store: DemoSummary, redis_test_url: str, pg_dsn: str
) -> None:
    """A mistyped --app, from cron: every night a finished run of 0 events was recorded under
    the typo, which ``migrate status`` and doctor's pg.migration then showed as a migration
    that ran (doctor: ok). An app with no key in Redis and no earlier run gets no run: exit 0
    (README's nightly job goes on to verify), ``run_id`` null, the note naming the apps that
    have keys; ``--workers`` and ``--delete-source`` alike."""
    server = redisio.describe_url(redis_test_url)
    wrong = typo(demo_store.app)
    store = ("--redis-url", redis_test_url, "--pg-dsn", pg_dsn, "--app", wrong)

    table = run_cli("migrate", "redis-to-pg", *store, "--init-schema", "--no-progress")
    assert table.returncode == 0, table.stderr
    assert recorded_runs(pg_dsn, wrong) == []
    assert "none recorded (the app has no key in Redis and no earlier run)" in table.stdout
    assert_noted(table, wrong, server, demo_store.app)
    both = run_cli(
        "migrate", "redis-to-pg", *store, "--workers", "2", "--delete-source", "--yes", "--json"
    )
    assert both.returncode == 0, both.stderr
    document = json.loads(both.stdout)
    assert document["run_id"] is None and document["problems_where"] is None
    assert document["aggregates"] == document["events_migrated"] == 0
    assert document["prune"]["events_deleted"] == 0
    assert_noted(both, wrong, server, demo_store.app)
    assert recorded_runs(pg_dsn, wrong) == []

    status = migration_status(StatusOptions(app=wrong, pg_dsn=pg_dsn, pg_schema="public"))
    assert status.shards == []
    report = run_doctor(DoctorOptions(redis_url=redis_test_url, app=wrong, pg_dsn=pg_dsn))
    check = report.check("pg.migration")
    assert check.status == "warn"
    assert check.observed == (
        f"no migration run of {wrong} into schema public, and no key of it in Redis"
    )
    assert (check.action or "").startswith("check --app / ESCTL_APP: the store checks name")


def test_an_app_whose_store_is_empty_now_still_records_its_runs(
    demo_store: DemoSummary, redis_client: redis.Redis, redis_test_url: str, pg_dsn: str
) -> None:
    """An app migrated before whose Redis store is empty now (pruned whole, its snapshots
    deleted too) is no typo: its nightly run is recorded as ever, so ``migrate status`` and
    doctor show the last night's run."""
    app = demo_store.app
    migrate_redis_to_pg(redis_client, MigrateOptions(app=app, pg_dsn=pg_dsn, init_schema=True))
    for key in redis_client.scan_iter(match=layout.app_store_keys_pattern(app)):
        redis_client.delete(key)
    redis_client.delete(layout.legacy_event_hash_key(app))
    assert storereads.find_store_key(redis_client, app) is None
    store = ("--redis-url", redis_test_url, "--pg-dsn", pg_dsn, "--app", app)
    nightly = run_cli("migrate", "redis-to-pg", *store, "--json")
    assert nightly.returncode == 0, nightly.stderr
    run_id = json.loads(nightly.stdout)["run_id"]
    assert isinstance(run_id, str) and run_id
    assert recorded_runs(pg_dsn, app) == [("0/1", "finished"), ("0/1", "finished")]
    status = migration_status(StatusOptions(app=app, pg_dsn=pg_dsn, pg_schema="public"))
    assert [s.run_id for s in status.shards] == [run_id]


def test_a_follower_of_an_app_with_no_keys_says_so_after_its_first_sweep(
    demo_store: DemoSummary, redis_test_url: str, pg_dsn: str
) -> None:
    """``--follow`` with a typo would follow nothing for as long as it runs: the note comes
    once, after the first sweep, and the follower goes on (stdout: its JSON lines)."""
    server = redisio.describe_url(redis_test_url)
    wrong = typo(demo_store.app)
    proc = start_cli(
        "migrate", "redis-to-pg", "--follow", "--json", "--init-schema", "--app", wrong,
        "--redis-url", redis_test_url, "--pg-dsn", pg_dsn, "--sweep-interval", "1s",
    )  # fmt: skip
    assert proc.stderr is not None
    stderr = ""
    try:
        deadline = time.monotonic() + 60
        while "note: " not in stderr and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 65536).decode()
                assert chunk, f"the follower ended: {stderr}"
                stderr += chunk
        time.sleep(2.5)  # more sweeps: the note is not repeated
        assert proc.poll() is None, "the follower stopped"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, rest = proc.communicate(timeout=60)
    stderr += rest.decode()
    assert proc.returncode == 130, stderr
    assert_noted(subprocess.CompletedProcess([], 0, out.decode(), stderr), wrong, server)
    assert any(json.loads(line)["event"] == "sweep" for line in out.decode().splitlines())
    # A follower waits for the first events of an app that may have none yet: its run is
    # recorded (where a plain run of an app with no keys records none).
    assert recorded_runs(pg_dsn, wrong) == [("0/1", "interrupted")]


def test_inspect_aggregate_and_event_add_the_apps_to_not_found(
    demo_store: DemoSummary, redis_test_url: str
) -> None:
    server = redisio.describe_url(redis_test_url)
    wrong = typo(demo_store.app)
    aggregate = demo_store.samples["aggregate"]
    commit = demo_store.samples["compressed_commit"]
    for args in (("aggregate", aggregate), ("event", commit), ("aggregate", aggregate, "--json")):
        result = run_cli("inspect", *args, "--redis-url", redis_test_url, "--app", wrong)
        assert result.returncode == 1, result.stderr
        assert "does not exist" in result.stderr or "is in neither" in result.stderr
        assert_noted(result, wrong, server, demo_store.app)
        if "--json" in args:
            assert json.loads(result.stdout)["error"]["kind"] == "not_found"
    # The right app and a wrong id: not found, and nothing about apps.
    for args in (("aggregate", "no-such-id"), ("event", "no-such-commit")):
        result = run_cli("inspect", *args, "--redis-url", redis_test_url, "--app", demo_store.app)
        assert result.returncode == 1
        assert_quiet(result)


STORE_CHECKS = ("store.memory", "store.uncompressed", "store.growth", "store.key_types")


def test_doctor_warns_in_its_store_checks_and_stores_no_reading(
    demo_store: DemoSummary, redis_client: redis.Redis, redis_test_url: str, tmp_path: Path
) -> None:
    """A mistyped --app, from cron: the store checks that have nothing to judge warn (not ok),
    their action names the apps that do have keys, and no growth reading is stored (it would
    only create a key for a name that does not exist). The table, --json and the metrics file
    agree; the right app's checks stay as they were."""

    def doctor(app: str, *args: str) -> tuple[Any, dict[str, Any], dict[str, dict[str, Any]]]:
        result = run_cli("doctor", "--redis-url", redis_test_url, "--app", app, "--json", *args)
        document = json.loads(result.stdout)
        assert document["exit_code"] == result.returncode
        assert_quiet(result)  # in the checks, not a note
        return result, document, {c["id"]: c for c in document["checks"]}

    wrong = typo(demo_store.app)
    metrics = tmp_path / "doctor.prom"
    _, document, checks = doctor(wrong, "--metrics-file", str(metrics))
    apps_here = f"apps with keys here: {demo_store.app}; check --app / ESCTL_APP"
    for check_id in STORE_CHECKS:
        assert checks[check_id]["status"] == "warn", checks[check_id]
        assert checks[check_id]["action"] == apps_here
        assert (
            f"app {wrong} has no commit list, event hash or snapshot"
            in checks[check_id]["observed"]
        )
    assert document["status"] in ("warn", "fail")  # fail: the machine's own Redis settings
    assert not redis_client.exists(layout.doctor_reading_key(wrong))
    assert redis_client.keys("esctl:*") == []
    assert document["readings"] == [
        {
            "key": layout.doctor_reading_key(wrong),
            "stored": False,
            "detail": "the app has no keys here",
        }
    ]
    text = metrics.read_text()
    for check_id in STORE_CHECKS:
        status = f'{{app="{wrong}",check="{check_id}",group="event_store"}} 1'
        assert f"esctl_doctor_check_status{status}" in text
    warned = document["counts"]["warn"]
    assert f'esctl_doctor_checks{{app="{wrong}",status="warn"}} {warned}' in text

    _, right_document, right = doctor(demo_store.app)
    assert right["store.memory"]["status"] == right["store.uncompressed"]["status"] == "ok"
    assert right["store.growth"]["status"] == "unavailable"  # the first reading was stored
    assert redis_client.exists(layout.doctor_reading_key(demo_store.app))
    assert right_document["counts"]["warn"] == warned - len(STORE_CHECKS)
    for check_id in STORE_CHECKS:
        assert "apps with keys here" not in (right[check_id]["action"] or "")
        assert checks[check_id]["values"].keys() == right[check_id]["values"].keys()

    table = run_cli("doctor", "--redis-url", redis_test_url, "--app", wrong, "--read-only")
    for check_id in STORE_CHECKS:
        assert re.search(rf"^WARN\W+{re.escape(check_id)}\W", table.stdout, re.M), table.stdout
    assert f"do: {apps_here}" in table.stdout


def test_doctor_in_a_database_without_any_store_says_to_check_the_database(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    redis_client.set("unrelated", "x")
    result = run_cli("doctor", "--redis-url", redis_test_url, "--app", app_name, "--json")
    checks = {c["id"]: c for c in json.loads(result.stdout)["checks"]}
    for check_id in STORE_CHECKS:
        assert checks[check_id]["status"] == "warn"
        assert "no app has event store keys in this database; check --redis-url" in (
            checks[check_id]["action"] or ""
        )
    assert redis_client.keys("esctl:*") == []


def test_a_store_that_still_has_keys_gets_no_note_and_an_empty_one_no_failure(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    """After a full prune a store keeps its snapshots (prune never touches them): the app is
    there, no note. A store with nothing left at all gets the note, and still exit 0."""
    server = redisio.describe_url(redis_test_url)
    redis_client.hset(layout.snapshot_hash_key(app_name, "1"), "1", '{"Id":"1","Version":3}')
    for args in (("inspect", "integrity"), ("events", "query"), ("migrate", "plan", "--no-trial")):
        result = run_cli(*args, "--redis-url", redis_test_url, "--app", app_name)
        assert result.returncode == 0, result.stderr
        assert_quiet(result)
    redis_client.flushdb()
    result = run_cli("inspect", "integrity", "--redis-url", redis_test_url, "--app", app_name)
    assert result.returncode == 0
    note = assert_noted(result, app_name, server)
    assert "no app has event store keys in this database; check --redis-url" in note


def test_the_note_comes_quickly_from_a_partial_scan_of_a_large_keyspace(
    redis_client: redis.Redis, demo_store: DemoSummary, redis_test_url: str
) -> None:
    pipe = redis_client.pipeline(transaction=False)
    for start in range(0, 200_000, 5000):
        pipe.mset({f"unrelated:{i}": "x" for i in range(start, start + 5000)})
    pipe.execute()
    wrong = typo(demo_store.app)
    result = run_cli("inspect", "stats", "--redis-url", redis_test_url, "--app", wrong)
    assert result.returncode == 0
    note = assert_noted(result, wrong, redisio.describe_url(redis_test_url))
    assert f" of {redis_client.dbsize():,} keys)" in note and "(a partial scan: ~" in note


def test_the_note_never_shows_the_password(fresh_redis: Any) -> None:
    password = "S3cr3t-noapp-XYZ"
    plain = redis.Redis(port=fresh_redis.port)
    plain.config_set("requirepass", password)
    authed = redis.Redis(port=fresh_redis.port, password=password)
    authed.rpush("{EventStore:Real.App}:1", "c")
    url = f"redis://:{password}@127.0.0.1:{fresh_redis.port}/0"
    result = run_cli("inspect", "integrity", "--redis-url", url, "--app", "Real.Ap")
    assert result.returncode == 0
    assert_noted(result, "Real.Ap", f"127.0.0.1:{fresh_redis.port}/0", "Real.App")
    assert password not in result.stderr + result.stdout


def test_on_a_cluster_every_primary_is_looked_at(
    redis_cluster: LocalCluster, app_name: str
) -> None:
    client = redis_cluster.client()
    write_demo_store(client, app=app_name, env=f"env-{app_name}")
    wrong = typo(app_name)
    here = storereads.apps_with_keys(client)
    seen = {k for k in here.keys if k == app_name}
    assert seen == {app_name}
    # Bounded per primary: a few keys examined on each, from each.
    small = redisio.sample_keys(client, layout.STORE_KEYS_PATTERN, max_keys=10, count=10)
    assert small.examined <= 10 * len(redis_cluster.primaries())
    result = run_cli("inspect", "stats", "--redis-url", redis_cluster.url, "--app", wrong)
    assert result.returncode == 0
    server = "cluster 127.0.0.1:"
    if here.complete:
        assert_noted(result, wrong, server, app_name)
    else:  # other tests' keys fill the cluster: the scan was partial
        assert "(a partial scan: ~" in assert_noted(result, wrong, server)
    right = run_cli("inspect", "stats", "--redis-url", redis_cluster.url, "--app", app_name)
    assert_quiet(right)


def test_migrate_status_measuring_the_lag_of_an_app_with_no_keys_says_so(
    demo_store: DemoSummary, redis_test_url: str, pg_dsn: str, tmp_path: Path
) -> None:
    """``migrate status --max-lag`` from cron with a mistyped app measures a lag of 0 over no
    commit list, every time, and never exits 3: a note says why. Without --lag it reads
    PostgreSQL alone, and says nothing of Redis."""
    server = redisio.describe_url(redis_test_url)
    wrong = typo(demo_store.app)

    def status(app: str, *args: str) -> Any:
        return run_cli(
            "migrate", "status", "--redis-url", redis_test_url, "--pg-dsn", pg_dsn, "--app", app,
            *args,
        )  # fmt: skip

    migrated = run_cli(
        "migrate", "redis-to-pg", "--init-schema", "--no-progress", "--json",
        "--redis-url", redis_test_url, "--pg-dsn", pg_dsn, "--app", demo_store.app,
    )  # fmt: skip
    assert migrated.returncode == 3, migrated.stderr  # the demo's planted defects
    metrics = str(tmp_path / "status.prom")
    for args in (("--lag",), ("--max-lag", "30m", "--json", "--metrics-file", metrics)):
        result = status(wrong, *args)
        assert result.returncode == 0, result.stderr
        assert_noted(result, wrong, server, demo_store.app)
        if "--json" in args:
            assert json.loads(result.stdout)["aggregates_scanned"] == 0
    assert_quiet(status(wrong))
    right = status(demo_store.app, "--max-lag", "30m")
    assert right.returncode == 0, right.stderr
    assert_quiet(right)


def test_doctor_writes_no_store_figures_for_an_app_with_no_keys(
    demo_store: DemoSummary, redis_test_url: str, tmp_path: Path
) -> None:
    """The metrics file of a mistyped --app holds the store checks' status (1, warn) and none
    of their figures: a 0 for the memory, events and plain payloads of an app that is not
    there would draw a healthy empty store on a dashboard. The right app's are there."""

    def metrics(app: str) -> str:
        path = tmp_path / f"{app}.prom"
        result = run_cli(
            "doctor", "--redis-url", redis_test_url, "--app", app, "--read-only",
            "--metrics-file", str(path),
        )  # fmt: skip
        assert result.returncode in (0, 3), result.stderr
        return path.read_text()

    wrong = typo(demo_store.app)
    text = metrics(wrong)
    for check_id in STORE_CHECKS:
        status = f'{{app="{wrong}",check="{check_id}",group="event_store"}} 1'
        assert f"esctl_doctor_check_status{status}" in text
    assert re.findall(r"^esctl_doctor_store_\w+\{.*", text, re.M) == []
    right = metrics(demo_store.app)
    assert f'esctl_doctor_store_events{{app="{demo_store.app}"}} {demo_store.commit_ids}' in right
    assert 'esctl_doctor_store_memory_bytes{app="' in right
    assert "esctl_doctor_store_uncompressed_payloads{" in right


def test_an_app_from_the_config_file_is_checked_in_its_profile(
    demo_store: DemoSummary, redis_test_url: str, tmp_path: Path
) -> None:
    """A cron job's app comes from the config file: the note and doctor's action name the
    profile and the file to fix, not only --app / ESCTL_APP."""
    wrong = typo(demo_store.app)
    config = tmp_path / "esctl.toml"
    config.write_text(f'[nightly]\nredis_url = "{redis_test_url}"\napp = "{wrong}"\n')
    where = f"check app in profile [nightly] of {config} (or --app / ESCTL_APP)"
    chosen = ("--config", str(config), "--profile", "nightly")
    result = run_cli("inspect", "integrity", *chosen)
    assert result.returncode == 0, result.stderr
    (note,) = notes(result.stderr)
    assert note.startswith(f"note: app {wrong} has no keys in Redis "), note
    assert note.endswith(f"apps with keys here: {demo_store.app}; {where}"), note
    doctor = run_cli("doctor", "--json", "--read-only", *chosen)
    checks = {c["id"]: c for c in json.loads(doctor.stdout)["checks"]}
    for check_id in STORE_CHECKS:
        assert checks[check_id]["action"] == f"apps with keys here: {demo_store.app}; {where}"
    # Given by option or environment variable, the note names those, as before.
    by_option = run_cli("inspect", "integrity", *chosen, "--app", wrong)
    assert notes(by_option.stderr)[0].endswith("; check --app / ESCTL_APP")


def test_queue_list_names_the_queues_there_are_when_a_name_matches_none(
    demo_store: DemoSummary, redis_client: redis.Redis, redis_test_url: str, tmp_path: Path
) -> None:
    """``queue list`` from cron (a metrics file every minute, a jq loop that requeues) with a
    mistyped --env, --subscriber or --type lists nothing, successfully: a note on stderr says
    which name matches no queue and names those that do. stdout and the exit code stay."""
    server = redisio.describe_url(redis_test_url)
    env = demo_store.env
    sub = demo_store.samples["stuck_subscriber"]
    event_type = demo_store.samples["stuck_event_type"]

    def listing(*args: str, environ: dict[str, str] | None = None) -> Any:
        return run_cli("queue", "list", "--redis-url", redis_test_url, *args, env=environ)

    metrics = tmp_path / "queues.prom"
    result = listing("--json", "--metrics-file", str(metrics), environ={"ESCTL_ENV": typo(env)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["queues"] == []
    assert notes(result.stderr) == [
        f"note: env {typo(env)} has no queues in Redis {server} (no Subscribers:"
        f"{{{typo(env)}:TYPE}} set, queue list or RetryData hash); environments with queues "
        f"here: {env}; check --env / ESCTL_ENV"
    ]

    given = ("--env", env, "--subscriber", typo(sub), "--subscriber", sub)
    result = listing(*given, "--type", typo(event_type), "--type", event_type, "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["queues"]
    assert {(q["subscriber"], q["event_type"]) for q in shown} == {(sub, event_type)}
    by_subscriber, by_type = notes(result.stderr)
    assert by_subscriber.startswith(
        f"note: subscriber {typo(sub)} has no queue in env {env}; subscribers with queues in "
        f"this environment: {sub}, "
    ), by_subscriber
    assert by_subscriber.endswith("; check --subscriber")
    assert by_type.startswith(
        f"note: event type {typo(event_type)} has no queue in env {env}; event types with "
        f"queues in this environment: {event_type}, "
    ), by_type
    assert by_type.endswith("; check --type")

    assert_quiet(listing("--env", env))
    assert_quiet(listing("--env", env, "--subscriber", sub, "--type", event_type))

    redis_client.flushdb()
    empty = listing("--env", env)
    assert empty.returncode == 0
    assert notes(empty.stderr) == [
        f"note: env {env} has no queues in Redis {server} (no Subscribers:{{{env}:TYPE}} set, "
        "queue list or RetryData hash); no environment has a Subscribers:{ENV:TYPE} set in "
        "this database; check --redis-url (and its database number) and --env / ESCTL_ENV"
    ]


# --- the note of the commands that read PostgreSQL ---------------------------------------------


@pytest.fixture
def migrated_store(redis_client: redis.Redis, demo_store: DemoSummary, pg_dsn: str) -> DemoSummary:
    """The demo store, migrated into the ``public`` schema of the test's own database."""
    migrate_redis_to_pg(
        redis_client, MigrateOptions(app=demo_store.app, pg_dsn=pg_dsn, init_schema=True)
    )
    return demo_store


def assert_noted_in_pg(result: Any, asked: str, dsn: str, schema: str, *right: str) -> str:
    """``result`` printed the one note: ``asked`` has no aggregates in ``schema`` of ``dsn``
    (redacted as esctl shows DSNs), ``right`` have."""
    found = notes(result.stderr)
    assert len(found) == 1, result.stderr
    note = found[0]
    assert note.startswith(
        f"note: app {asked} has no aggregates in PostgreSQL {pg.describe_dsn(dsn)} schema "
        f"{schema} (no row in {schema}.aggregate); "
    ), note
    if right:
        assert "apps with aggregates here: " in note and all(app in note for app in right), note
    assert note.endswith((" --app / ESCTL_APP", " --app / ESCTL_APP)")), note
    assert "note:" not in result.stdout
    return note


PG_COMMANDS = {
    # name: (arguments, takes --json)
    "events query --source pg": (("events", "query", "--source", "pg", "--type", "ItemScoreCreated"), True),
    "events query --source pg --format table": (("events", "query", "--source", "pg", "--format", "table"), False),
    "replay --from pg --to stdout": (("replay", "--from", "pg", "--all", "--to", "stdout"), False),
    "replay --from pg --dry-run": (("replay", "--from", "pg", "--all", "--to", "stdout", "--dry-run"), True),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PG_COMMANDS))
def test_a_command_reading_postgresql_for_an_app_with_no_aggregates_names_the_apps_that_have_some(
    name: str, migrated_store: DemoSummary, redis_test_url: str, pg_dsn: str
) -> None:
    """``events query --source pg`` and ``replay --from pg`` of a mistyped app print nothing
    and exit 0, as before: now a note on stderr says the app has no aggregates there and names
    the one that has. stdout and the exit code stay; --limit 0 (nothing read) gets no note."""
    args, takes_json = PG_COMMANDS[name]
    app = migrated_store.app
    wrong = typo(app)

    def run(*more: str, env: dict[str, str] | None = None) -> Any:
        return run_cli(*args, *more, "--redis-url", redis_test_url, "--pg-dsn", pg_dsn, env=env)

    result = run("--app", wrong)
    assert result.returncode == 0, result.stderr
    assert_noted_in_pg(result, wrong, pg_dsn, "public", app)
    if "--format" not in args and "--dry-run" not in args:
        assert result.stdout == ""  # JSON lines: none
    by_env = run(env={"ESCTL_APP": wrong})
    assert by_env.returncode == 0 and notes(by_env.stderr) == notes(result.stderr)
    assert by_env.stdout == result.stdout
    right = run("--app", app)
    assert right.returncode == 0, right.stderr
    assert_quiet(right)
    assert right.stdout != result.stdout
    nothing_read = run("--app", wrong, "--limit", "0")
    assert nothing_read.returncode == 0, nothing_read.stderr
    assert_quiet(nothing_read)
    if takes_json:
        document = run("--app", wrong, "--json")
        assert document.returncode == 0, document.stderr
        assert_noted_in_pg(document, wrong, pg_dsn, "public", app)
        parsed = json.loads(document.stdout)
        of_right = json.loads(run("--app", app, "--json").stdout)
        assert type(parsed) is type(of_right)
        if isinstance(parsed, dict):
            assert parsed.keys() == of_right.keys() and parsed["events"] == 0
        else:
            assert parsed == [] and of_right != []


def test_postgresql_without_any_aggregate_says_so_and_without_the_tables_as_before(
    redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """Tables with no aggregate at all: the note says no app has any in the schema, and what
    to check. No tables (nothing migrated yet): the commands' error, as before, and no note."""
    with psycopg.connect(pg_dsn) as conn:
        pg.ensure_event_store_schema(conn, "empty_store", create=True)
    for args in (
        ("events", "query", "--source", "pg"),
        ("replay", "--from", "pg", "--all", "--to", "stdout"),
    ):
        given = (*args, "--redis-url", redis_test_url, "--pg-dsn", pg_dsn, "--app", app_name)
        empty = run_cli(*given, "--pg-schema", "empty_store")
        assert empty.returncode == 0, empty.stderr
        note = assert_noted_in_pg(empty, app_name, pg_dsn, "empty_store")
        assert note.endswith(
            "; no app has aggregates in this schema; check --pg-dsn (and its database name), "
            "--pg-schema and --app / ESCTL_APP"
        ), note
        missing = run_cli(*given, "--pg-schema", "not_migrated")
        assert missing.returncode == 1
        assert "error: the event tables not_migrated.aggregate and not_migrated.event do not " in (
            missing.stderr
        )
        assert_quiet(missing)


def test_an_app_from_the_config_file_is_checked_in_its_profile_in_postgresql_too(
    migrated_store: DemoSummary, redis_test_url: str, pg_dsn: str, tmp_path: Path
) -> None:
    wrong = typo(migrated_store.app)
    config = tmp_path / "esctl.toml"
    config.write_text(
        f"[nightly]\nredis_url = {json.dumps(redis_test_url)}\npg_dsn = {json.dumps(pg_dsn)}\n"
        f"app = {json.dumps(wrong)}\n"
    )
    chosen = ("--config", str(config), "--profile", "nightly")
    for args in (("events", "query", "--source", "pg"), ("replay", "--from", "pg", "--all")):
        extra = ("--to", "stdout") if args[0] == "replay" else ()
        result = run_cli(*args, *extra, *chosen)
        assert result.returncode == 0, result.stderr
        note = assert_noted_in_pg(result, wrong, pg_dsn, "public", migrated_store.app)
        assert note.endswith(
            f"apps with aggregates here: {migrated_store.app}; check app in profile [nightly] "
            f"of {config} (or --app / ESCTL_APP)"
        ), note


def test_apps_with_aggregates_stays_bounded_on_a_large_table(pg_dsn: str) -> None:
    """The apps of a 300,000-row aggregate table: without an index leading with
    application_name, from a sample of pages (milliseconds) and one EXISTS; with one, the
    names either side of the app's, one index probe each. Missing tables, or a look-up
    that outlasts its time, tell nothing (no note)."""
    apps = [f"Learning.Service{i:02}" for i in range(12)]
    with psycopg.connect(pg_dsn) as conn:
        pg.ensure_event_store_schema(conn, "public", create=True)
        conn.execute(
            "INSERT INTO aggregate (aggregate_id, aggregate_type, application_name)"
            " SELECT i::text, 'ItemScore', (%s::text[])[1 + i %% 12]"
            " FROM generate_series(1, 300000) i",
            (apps,),
        )
        conn.execute("INSERT INTO aggregate (aggregate_id, aggregate_type, application_name)"
                     " VALUES ('1', 'ItemScore', 'Rare.App')")  # fmt: skip
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE aggregate")

        wrong = "Learning.Service05x"
        started = time.perf_counter()
        found = pgevents.apps_with_aggregates(pg_dsn, "public", wrong, max_seconds=10)
        took = time.perf_counter() - started
        assert found is not None and not found.has_app and not found.complete
        assert 0 < found.sampled <= pgevents.APPS_SAMPLE_ROWS
        assert found.total is not None and 250_000 < found.total < 350_000
        # ~800 rows of each app in the sample; Rare.App's one row is in it one run in ~30
        # (its page is one of the ~3% sampled).
        assert set(found.names) - {"Rare.App"} == set(apps)
        assert took < 2.0, took
        note = appkeys.no_aggregates_text(wrong, "db", "public", found)
        assert f"apps with aggregates here (a sample: ~{found.sampled:,} of ~" in note
        assert note.split("): ")[1].startswith("Learning.Service05, ")  # the likeliest first
        rare = pgevents.apps_with_aggregates(pg_dsn, "public", "Rare.App", max_seconds=10)
        assert rare is not None and rare.has_app  # not in the sample: found by EXISTS
        cut = pgevents.apps_with_aggregates(pg_dsn, "public", wrong, max_seconds=0.001)
        assert cut is None

        conn.execute("CREATE INDEX aggregate_app ON aggregate (application_name)")
        found = pgevents.apps_with_aggregates(pg_dsn, "public", wrong, max_seconds=10)
        assert found is not None and not found.has_app and found.sampled == 0
        assert list(found.names) == apps[6:11] + apps[5:0:-1]
        assert not found.complete  # five on each side: maybe more
        note = appkeys.no_aggregates_text(wrong, "db", "public", found)
        assert "apps with aggregates here (the nearest by name): Learning.Service05, " in note
        assert "and 5 more; check --app / ESCTL_APP" in note
        everything = pgevents.apps_with_aggregates(pg_dsn, "public", "Rare.Ap", max_seconds=10)
        assert everything is not None and not everything.has_app
        assert list(everything.names) == ["Rare.App", *apps[::-1][:5]]
        rare = pgevents.apps_with_aggregates(pg_dsn, "public", "Rare.App", max_seconds=10)
        assert rare is not None and rare.has_app and rare.sampled == 0
        # An index of another collation cannot answer the comparisons: the sample again.
        conn.execute("DROP INDEX aggregate_app")
        conn.execute('CREATE INDEX aggregate_app_c ON aggregate (application_name COLLATE "C")')
        by_sample = pgevents.apps_with_aggregates(pg_dsn, "public", wrong, max_seconds=10)
        assert by_sample is not None and by_sample.sampled > 0
    assert pgevents.apps_with_aggregates(pg_dsn, "not_migrated", wrong, max_seconds=10) is None
