"""``migrate redis-to-pg`` runs of different shard counts against real servers: runs whose
shards share an aggregate (``0/4`` beside ``0/2``, an unsharded run beside any shard) exclude
each other with exit 75 naming the holder, also when they start at the same moment and while a
``--follow`` run lasts; runs of disjoint shards (every shard of one count, ``1/2`` beside
``0/4``, machines with different ``--workers``) run side by side; ``migrate status`` shows the
runs that ran and none that was refused."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace

import pytest
import redis
from helpers import run_cli, started_together
from test_migrate import cli_args, count, regclass_exists, run_migrate_cli, write_clean_store
from test_migrate_follow import Follower

from esctl.migrate import MigrateOptions
from esctl.migrate.run import lock_name, migration_lock
from esctl.shard import Shard


@contextmanager
def runs_of(pg_dsn: str, app: str, *shards: str) -> Iterator[None]:
    """Hold the locks that runs of ``shards`` hold (each its own session, as each run has)."""
    with ExitStack() as stack:
        for shard in shards:
            opts = MigrateOptions(app=app, pg_dsn=pg_dsn, shard=Shard.parse(shard))
            stack.enter_context(migration_lock(opts))
        yield


def test_overlaps_is_whether_some_aggregate_hash_falls_in_both_shards() -> None:
    for n in range(1, 9):
        for m in range(1, 9):
            for i in range(n):
                for j in range(m):
                    common = any(x % n == i and x % m == j for x in range(math.lcm(n, m)))
                    assert Shard(i, n).overlaps(Shard(j, m)) == common, (i, n, j, m)


@pytest.mark.parametrize(
    ("held", "shard", "env"),
    [
        ("0/4", "0/2", {}),
        ("0/4", None, {}),  # an unsharded run beside a shard
        ("0/1", "1/2", {}),  # a shard beside an unsharded run
        ("2/4", "auto", {"JOB_COMPLETION_INDEX": "0", "ESCTL_SHARD_COUNT": "2"}),
        ("1/2", "3/8", {}),
    ],
)
def test_a_run_whose_shard_shares_aggregates_with_a_running_one_exits_75_naming_it(
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    app_name: str,
    held: str,
    shard: str | None,
    env: dict[str, str],
) -> None:
    write_clean_store(redis_client, app_name, aggregates=20)
    args = [*cli_args(redis_test_url, pg_dsn, app_name), "--init-schema", "--json"]
    if shard is not None:
        args += ["--shard", shard]
    with runs_of(pg_dsn, app_name, held):
        result = run_cli("migrate", "redis-to-pg", *args, env=env)
    assert result.returncode == 75, result.stdout + result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "locked"
    message, hint = error["message"], error["hint"]
    theirs = "an unsharded migration" if held == "0/1" else f"shard {held}, is running"
    assert theirs in message, message
    assert (
        f"the lock {lock_name('public', app_name, held)!r} is held by PostgreSQL session pid"
        in (message)
    )
    assert "application 'esctl migrate redis-to-pg (pid " in message, message
    assert message.endswith("; nothing was done"), message
    assert "docs/deploy/kubernetes.md" in hint and "pg_terminate_backend(" in hint, hint
    assert not regclass_exists(pg_dsn, "esctl.migration_run")  # nothing was done
    assert not regclass_exists(pg_dsn, "public.event")


@pytest.mark.parametrize(
    ("held", "shard"),
    [
        (("0/2",), "1/2"),  # shards of one count side by side
        (("0/4", "2/4"), "1/2"),  # disjoint shards of different counts
        (("1/2",), "2/4"),
    ],
)
def test_runs_of_disjoint_shards_run_side_by_side(
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
    app_name: str,
    held: tuple[str, ...],
    shard: str,
) -> None:
    truth = write_clean_store(redis_client, app_name, aggregates=20)
    with runs_of(pg_dsn, app_name, *held):
        code, document, err = run_migrate_cli(
            redis_test_url, pg_dsn, app_name, "--init-schema", "--shard", shard
        )
    assert code == 0, err
    events = [e for e in truth.events() if Shard.parse(shard).owns(e.aggregate_id)]
    assert document["events_migrated"] == len(events) > 0


def test_workers_of_one_shard_count_run_beside_another_machines_workers(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """Two machines, `--shard 0/2 --workers 2` (sub-shards 0/4 and 2/4, held here) and
    `--shard 1/2 --workers 3` (1/6, 3/6, 5/6): no aggregate in common, so both run. An
    unsharded `--workers 2` beside them has its sub-shard 0/2 refused (it shares aggregates
    with 0/4 and 2/4) and its 1/2 runs, as a worker refused its own shard's lock does."""
    truth = write_clean_store(redis_client, app_name, aggregates=40)
    with runs_of(pg_dsn, app_name, "0/4", "2/4"):
        code, document, err = run_migrate_cli(
            redis_test_url, pg_dsn, app_name, "--init-schema", "--shard", "1/2", "--workers", "3"
        )
        assert code == 0, err
        events = [e for e in truth.events() if Shard(1, 2).owns(e.aggregate_id)]
        assert document["events_migrated"] == len(events) > 0
        result = run_cli(
            "migrate", "redis-to-pg", *cli_args(redis_test_url, pg_dsn, app_name), "--json",
            "--workers", "2",
        )  # fmt: skip
    assert result.returncode == 75, result.stderr
    message = json.loads(result.stdout)["error"]["message"]
    assert "shard 0/4, is running, and shard 0/2 of this run" in message, message
    assert "nothing was done in shard 0/2" in message, message
    assert "the other workers: shard 1/2 migrated 0 events" in message, message


def start_together(base: MigrateOptions, shards: list[Shard]) -> dict[str, str]:
    """Runs of ``shards`` taking their locks at the same moment: which ``ran`` (holding its
    lock until all have answered) and which were ``refused``."""

    def attempt(shard: Shard, hold: Callable[[], None]) -> None:
        with migration_lock(replace(base, shard=shard)):
            hold()

    return started_together(shards, attempt, wait=10)


def test_runs_of_two_shard_counts_starting_at_once_one_of_them_runs(
    pg_dsn: str, app_name: str
) -> None:
    """Their checks are made one after the other: never both refused, never both running."""
    base = MigrateOptions(app=app_name, pg_dsn=pg_dsn)
    for round_ in range(8):
        outcome = start_together(base, [Shard(0, 2), Shard(round_ % 3, 3)])
        assert sorted(outcome.values()) == ["ran", "refused"], (round_, outcome)


def test_a_follower_keeps_overlapping_runs_out_while_it_runs_and_status_shows_the_runs(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_clean_store(redis_client, app_name, aggregates=40)
    follower = Follower(redis_test_url, pg_dsn, app_name, "--shard", "1/2")
    try:
        follower.caught_up()
        args = [*cli_args(redis_test_url, pg_dsn, app_name), "--json"]
        refused = [
            run_cli("migrate", "redis-to-pg", *args, *shard) for shard in ([], ["--shard", "3/4"])
        ]
        for result in refused:
            assert result.returncode == 75, result.stderr
            message = json.loads(result.stdout)["error"]["message"]
            assert "shard 1/2, is running" in message, message
            assert f"'esctl migrate redis-to-pg (pid {follower.proc.pid} on " in message, message
        side = run_cli("migrate", "redis-to-pg", *args, "--shard", "0/2")
        assert side.returncode == 0, side.stderr
        status = run_cli("migrate", "status", "--app", app_name, "--pg-dsn", pg_dsn, "--json")
        assert status.returncode == 0, status.stderr
        shards = {s["shard"]: s for s in json.loads(status.stdout)["shards"]}
        assert set(shards) == {"0/2", "1/2"}  # the refused runs recorded nothing
        assert shards["1/2"]["status"] == "running" and shards["1/2"]["lock_alive"]
        assert shards["0/2"]["status"] == "finished" and not shards["0/2"]["lock_alive"]
    finally:
        assert follower.stop()[0] == 0
    # The follower gone, the unsharded run goes: everything is already there.
    code, document, err = run_migrate_cli(redis_test_url, pg_dsn, app_name)
    assert code == 0, err
    assert document["events_migrated"] == 0
    migrated = count(pg_dsn, "SELECT count(*) FROM event")
    assert migrated == len(truth.events())
    status = run_cli("migrate", "status", "--app", app_name, "--pg-dsn", pg_dsn, "--json")
    shards = {s["shard"]: s for s in json.loads(status.stdout)["shards"]}
    assert {k: s["status"] for k, s in shards.items()} == {
        "0/1": "finished",
        "0/2": "finished",
        "1/2": "finished",
    }


def test_more_sub_shards_than_the_lock_tells_apart_are_refused_in_the_users_terms(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """`--shard 0/40000 --workers 2` makes sub-shards of 80,000: refused before any worker
    starts, naming the shard and --workers the user gave (each worker used to fail on its own
    sub-shard, which the user never named); a prune, which has no --workers, does not speak
    of it."""
    write_clean_store(redis_client, app_name, aggregates=4)
    code, document, _ = run_migrate_cli(
        redis_test_url, pg_dsn, app_name, "--init-schema", "--shard", "0/40000", "--workers", "2"
    )
    assert code == 2, document
    message = document["error"]["message"]
    assert message.startswith("--shard 0/40000 with --workers 2 makes 80,000 shards"), message
    assert "fewer --workers" in document["error"]["hint"]
    assert not regclass_exists(pg_dsn, "esctl.migration_run")  # nothing was done
    result = run_cli(
        "migrate", "prune", "--yes", "--json", "--shard", "0/70000",
        *cli_args(redis_test_url, pg_dsn, app_name)[:-1],  # (prune has no bar to turn off)
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    message = json.loads(result.stdout)["error"]["message"]
    assert "at most 65,535 shards can be told apart" in message, message
    assert "--workers" not in message, message
