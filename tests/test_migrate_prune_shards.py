"""``migrate prune --shard`` runs of different shard counts against real servers: a prune whose
shard shares aggregates with a running one (``0/2`` beside ``0/4``, unsharded beside a shard)
exits 75 naming that run's shard and session, also when both start at the same moment; prunes
of disjoint shards run side by side; a restore-pruned refused by a running prune names its
shard. The running prunes here are real ones, held before their first delete."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from helpers import run_cli, started_together
from independent_writer import GroundTruth, write_store
from test_migrate_prune import journal_rows, redis_contents, run_migration, without_events

from esctl import prune, redisio
from esctl.shard import Shard


class Store:
    """A clean store of 200 aggregates, all migrated: every shard up to /8 has aggregates
    prune deletes."""

    def __init__(self, client: redis.Redis, url: str, app: str, dsn: str) -> None:
        self.raw, self.url, self.app, self.dsn = client, url, app, dsn
        self.truth: GroundTruth = write_store(client, app=app, aggregates=200, seed=8)
        self.client = redisio.connect(url)
        run_migration(self.client, app, dsn)
        self.before = redis_contents(client)

    def options(self, shard: str | None = None, **kw: Any) -> prune.PruneOptions:
        return prune.PruneOptions(app=self.app, pg_dsn=self.dsn, shard=Shard.parse(shard), **kw)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return run_cli(
            "migrate", "prune", "--yes", "--json", *args,
            "--app", self.app, "--redis-url", self.url, "--pg-dsn", self.dsn, env=env,
        )  # fmt: skip

    def of(self, *shards: str) -> list[Any]:
        """The aggregates in any of ``shards``."""
        parsed = [Shard.parse(s) for s in shards]
        return [a for a in self.truth.aggregates if any(s.owns(a.aggregate_id) for s in parsed)]


@pytest.fixture
def store(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> Iterator[Store]:
    yield Store(redis_client, redis_test_url, app_name, pg_dsn)


class Stop(Exception):
    """Ends a held prune before its deletes."""


@contextmanager
def running(store: Store, *shards: str) -> Iterator[None]:
    """Prunes of ``shards`` (``0/1``: unsharded) running, each in a thread of its own, held
    right before their first deletes for the block (they delete nothing: they stop there)."""
    release = threading.Event()
    threads: list[threading.Thread] = []
    try:
        for shard in shards:
            verified = threading.Event()
            failed: list[BaseException] = []

            def held(_: list[str], verified: threading.Event = verified) -> None:
                verified.set()
                release.wait(60)
                raise Stop

            def run(
                shard: str = shard, held: Any = held, failed: list[BaseException] = failed
            ) -> None:
                try:
                    prune.prune(store.client, store.options(shard), before_delete=held)
                except Stop:
                    pass
                except BaseException as exc:  # reported by the test
                    failed.append(exc)

            threads.append(threading.Thread(target=run, name=f"prune {shard}"))
            threads[-1].start()
            while not verified.wait(0.05):
                assert not failed, f"the prune of {shard} did not start: {failed[0]!r}"
        yield
    finally:
        release.set()
        for thread in threads:
            thread.join(60)


def error_of(result: Any) -> dict[str, Any]:
    assert result.returncode == 75, result.stdout + result.stderr
    error: dict[str, Any] = orjson.loads(result.stdout)["error"]
    assert error["kind"] == "locked"
    return error


@pytest.mark.parametrize(
    ("held", "shard", "env"),
    [
        ("0/4", "0/2", {}),
        ("0/2", "2/4", {}),
        ("1/2", "3/8", {}),
        ("0/4", "auto", {"JOB_COMPLETION_INDEX": "0", "ESCTL_SHARD_COUNT": "2"}),
        ("1/2", None, {}),  # an unsharded prune beside a shard
        ("0/1", "1/2", {}),  # a shard beside an unsharded prune
    ],
)
def test_a_prune_whose_shard_shares_aggregates_with_a_running_one_exits_75_naming_it(
    store: Store, held: str, shard: str | None, env: dict[str, str]
) -> None:
    args = ["--shard", shard] if shard is not None else []
    ours = Shard.from_option(shard, env)
    with running(store, held):
        error = error_of(store.cli(*args, env=env))
        # The refused run deleted nothing (and the running one has not deleted yet).
        assert redis_contents(store.raw) == store.before
    message, hint = error["message"], error["hint"]
    if held == "0/1":
        assert message.startswith(
            f"an unsharded prune of {store.app} (schema public) is running, and it prunes "
            f"every aggregate, those of shard {ours} too: the lock "
            f"'esctl:prune:public:{store.app}' is held by PostgreSQL session pid"
        ), message
    else:
        would = (
            "this unsharded prune would prune its aggregates too"
            if ours.count == 1
            else f"shard {ours} of this prune would prune some of its aggregates too"
        )
        assert message.startswith(
            f"a prune of {store.app} (schema public), shard {held}, is running, and {would}: "
            f"the lock 'esctl:prune:public:{store.app}:{held}' is held by PostgreSQL session pid"
        ), message
    assert f"application 'esctl migrate prune (pid {os.getpid()} on " in message, message
    assert message.endswith("; nothing was done"), message
    assert "one shard count at a time (docs/deploy/kubernetes.md)" in hint, hint
    assert "pg_terminate_backend(" in hint, hint
    # The held prune was stopped before its deletes: nothing at all was deleted.
    assert redis_contents(store.raw) == store.before


def test_a_prune_of_the_same_shard_keeps_its_words(store: Store) -> None:
    with running(store, "1/2"):
        message = error_of(store.cli("--shard", "1/2"))["message"]
    assert message.startswith(
        f"another prune of {store.app} (schema public, shard 1/2), or a restore-pruned of it, "
        f"is running: the lock 'esctl:prune:public:{store.app}:1/2' is held by"
    ), message


@pytest.mark.parametrize(
    ("held", "shard"),
    [
        (("0/2",), "1/2"),  # shards of one count side by side
        (("0/4", "2/4"), "1/2"),  # disjoint shards of different counts
        (("1/2",), "2/4"),
    ],
)
def test_prunes_of_disjoint_shards_run_side_by_side(
    store: Store, held: tuple[str, ...], shard: str
) -> None:
    with running(store, *held):
        result = store.cli("--shard", shard)
    assert result.returncode == 0, result.stdout + result.stderr
    document = orjson.loads(result.stdout)
    mine = store.of(shard)
    assert document["aggregates_pruned"] == len(mine) > 0
    assert document["changed_since_verify"] == 0 and document["problems"] == []
    assert redis_contents(store.raw) == without_events(store.before, mine)


def start_together(store: Store, shards: list[Shard]) -> dict[str, str]:
    """Prunes of ``shards`` taking their locks at the same moment: which ``ran`` (reached its
    deletes, held there until all have answered, then stopped before them) and which were
    ``refused``."""

    def attempt(shard: Shard, hold: Callable[[], None]) -> None:
        def held(_: list[str]) -> None:
            hold()
            raise Stop

        with contextlib.suppress(Stop):
            prune.prune(store.client, store.options(str(shard)), before_delete=held)

    return started_together(shards, attempt, wait=30)


def test_overlapping_prunes_starting_at_once_one_of_them_runs(store: Store) -> None:
    """Their checks are made one after the other: never both refused, never both running
    (where both would delete the same aggregates, and the one that came second would report
    each as changed_since_verify and forget the other's journal rows)."""
    for round_ in range(6):
        outcome = start_together(store, [Shard(0, 2), Shard(round_ % 3, 3)])
        assert sorted(outcome.values()) == ["ran", "refused"], (round_, outcome)
    # Nothing was deleted, and the next prune finds the journal rows of the stopped ones.
    assert redis_contents(store.raw) == store.before
    assert prune.prune(store.client, store.options()).aggregates_pruned == 200
    assert journal_rows(store.dsn, store.app) == 0


def test_a_restore_refused_by_a_running_prune_names_its_shard(store: Store, tmp_path: Path) -> None:
    backup = tmp_path / "pruned.jsonl.zst"
    first = store.cli("--shard", "0/4", "--backup-file", str(backup))
    assert first.returncode == 0, first.stderr
    pruned = redis_contents(store.raw)
    restore = [
        "migrate", "restore-pruned", str(backup), "--yes", "--json",
        "--app", store.app, "--redis-url", store.url, "--pg-dsn", store.dsn,
    ]  # fmt: skip
    for held, words in (
        ("1/2", f"a prune of {store.app} (schema public), shard 1/2, is running"),
        ("0/1", f"an unsharded prune of {store.app} (schema public) is running"),
    ):
        with running(store, held):
            message = error_of(run_cli(*restore))["message"]
        lock = f"esctl:prune:public:{store.app}" + (f":{held}" if held != "0/1" else "")
        assert message.startswith(
            f"{words}; a restore runs only while no prune of the app does: the lock "
            f"{lock!r} is held by PostgreSQL session pid"
        ), message
        assert redis_contents(store.raw) == pruned
    # No prune running: it restores.
    assert run_cli(*restore).returncode == 0
    assert redis_contents(store.raw) == store.before
