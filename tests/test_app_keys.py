"""A typo in ``--app`` / ``ESCTL_APP``: which apps have keys in a Redis database (a bounded
SCAN), whether an app has any key at all, and the ``note:`` the commands print when the app
they read has none (naming the apps that do)."""

from __future__ import annotations

import time

import pytest
import redis

from esctl import layout, redisio, storereads
from esctl.demo import DemoSummary

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
