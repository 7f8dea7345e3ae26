"""``queue drain`` / ``queue restore``, ``doctor`` and ``compress`` on a real three-primary Redis
Cluster (issue 8).

Each operation runs through the CLI against the cluster and against a single server holding the
same data (the same seed, app and env names), and the answers are compared: the JSON summaries
less what names a server or measures time, the backup files, and what Redis holds afterwards.
The queues drained here live on every primary, so each slot's scripts, locks and progress keys
are exercised on the node that serves it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import independent_writer as iw
import pytest
import redis
import redis.cluster
import redis_bytes as rb
from cluster import LocalCluster, redis_cluster, redis_cluster_with_replicas
from helpers import outcomes, read_as_restore, run_cli

from esctl import compress, demo, doctor, layout, queues, redisio, servers
from esctl.demo import DemoSummary, write_demo_store

__all__ = ["redis_cluster", "redis_cluster_with_replicas"]  # the fixtures, imported for pytest

Client = redis.Redis | redis.cluster.RedisCluster

SUMMARY_VOLATILE = {"elapsed_s", "backup_file", "backup_id", "used_memory_before",
                    "used_memory_after", "used_memory_saved"}  # fmt: skip
"""Summary keys that name a file or a server's own memory, or measure time."""
BULK = 2500
"""Messages added to one published list, so drain and restore take several script batches."""


@pytest.fixture
def cluster_client(redis_cluster: LocalCluster) -> Iterator[redis.cluster.RedisCluster]:
    yield redis_cluster.client()


def esctl_json(*args: str) -> tuple[int, Any]:
    result = run_cli(*args, "--json")
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def stable(document: Any) -> Any:
    if isinstance(document, dict):
        return {k: stable(v) for k, v in document.items() if k not in SUMMARY_VOLATILE}
    if isinstance(document, list):
        return [stable(v) for v in document]
    return document


def node_of(client: redis.cluster.RedisCluster, key: str) -> str:
    return str(client.get_node_from_key(key).name)


# --- queue drain and restore ---------------------------------------------------------------


def spread_env(client: redis.cluster.RedisCluster, base: str) -> str:
    """An env name (``base``, or ``base-N``) whose demo queues live on every primary: each
    event type's ``{ENV:TYPE}`` slot is decided by the env name, so a random one may leave a
    primary without queues."""
    for attempt in range(100):
        env = base if attempt == 0 else f"{base}-{attempt}"
        nodes = {node_of(client, layout.subscribers_key(env, t)) for t in demo.SUBSCRIPTIONS}
        if len(nodes) == len(client.get_primaries()):
            return env
    raise AssertionError("no env name spreads the demo queues over every primary")


def queue_lists(client: Client, env: str) -> dict[str, list[bytes]]:
    """Every list of every demo queue, as stored."""
    found = {}
    for event_type, subscribers in demo.SUBSCRIPTIONS.items():
        for subscriber in subscribers:
            for which in queues.QUEUE_LISTS:
                key = layout.queue_key(subscriber, env, event_type, which)
                found[key] = rb.lrange(client, key)
    return found


def write_queues(client: Client, app: str, env: str) -> DemoSummary:
    """The demo store, and BULK more messages waiting for the search indexer."""
    summary = write_demo_store(client, app=app, env=env)
    key = layout.queue_key(demo.SEARCH, env, "ItemScoreCreated", "published")
    bulk = [
        json.dumps({"$type": "Ns.ItemScoreCreated, Asm", "Id": f"agg-{i % 300}", "Version": i})
        for i in range(BULK)
    ]
    bulk[7] = bulk[8]  # equal messages in one list are drained and restored one by one
    client.lpush(key, *bulk)
    return summary


def backup_contents(path: Path) -> dict[str, Any]:
    """What a backup file says, less its id and creation time (new for every drain)."""
    survey, records = read_as_restore(path)
    header = {k: v for k, v in survey.header.items() if k not in ("backup_id", "created_at")}
    return {
        "header": header,
        "records": records,
        "outcomes": outcomes(survey, records),
        "complete": survey.complete,
        "truncated": survey.truncated,
    }


def drain_everything_and_restore(
    url: str, env: str, folder: Path, moves: list[tuple[str, str, str, str, str]]
) -> dict[str, Any]:
    """Drain every non-empty demo list into a backup file of its own and restore each file
    where it came from; then drain each of ``moves`` (``sub, type, list, to_sub, to_type``) and
    restore it into another queue's published list (twice: the second restores nothing).
    Through esctl's own client of ``url``, as the CLI calls them (the CLI's exit codes are
    checked in :func:`test_drain_and_restore_through_the_cli_on_the_cluster`). Returns every
    summary and backup, and what the lists held at each step."""
    client = redisio.connect(url)
    before = queue_lists(client, env)
    answers: dict[str, Any] = {"drained": {}, "backups": {}, "restored": {}}
    files: list[tuple[str, Path]] = []
    for key, values in before.items():
        if not values:
            continue
        subscriber, _, event_type, which = layout.parse_queue_key(key)  # type: ignore[misc]
        path = folder / f"{len(files)}.jsonl.zst"
        ref = queues.QueueRef(subscriber, env, event_type)
        drained = queues.drain(client, ref, queues.DrainOptions(which=which, to_file=path))
        assert drained.drained == len(values) and drained.gone == drained.failed == 0
        answers["drained"][key] = stable(drained.as_dict())
        answers["backups"][key] = backup_contents(path)
        files.append((key, path))
    answers["after_drain"] = queue_lists(client, env)
    assert not any(answers["after_drain"].values())
    for key, path in files:
        restored = queues.restore(client, path, queues.RestoreOptions(expect_env=env))
        assert restored.failed == 0 and restored.problems == [] and restored.notified
        answers["restored"][key] = stable(restored.as_dict())
    answers["after_restore"] = queue_lists(client, env)
    assert answers["after_restore"] == before  # byte-identical, every message in its place

    answers["moved"] = []
    for subscriber, event_type, which, to_subscriber, to_type in moves:
        path = folder / f"move-{len(answers['moved'])}.jsonl.zst"
        ref = queues.QueueRef(subscriber, env, event_type)
        drained = queues.drain(client, ref, queues.DrainOptions(which=which, to_file=path))
        target = queues.RestoreOptions(
            target=queues.QueueRef(to_subscriber, env, to_type), target_list="published"
        )
        restored = queues.restore(client, path, target)
        assert restored.restored == drained.drained > 0
        again = queues.restore(client, path, target)
        assert (again.restored, again.already_restored) == (0, drained.drained)
        answers["moved"].append([stable(x.as_dict()) for x in (drained, restored, again)])
    answers["after_moves"] = queue_lists(client, env)
    client.close()
    return answers


def test_drain_and_restore_give_the_same_answers_on_the_cluster(
    cluster_client: redis.cluster.RedisCluster,
    redis_cluster: LocalCluster,
    redis_client: redis.Redis,
    redis_test_url: str,
    app_name: str,
    env_name: str,
    tmp_path: Path,
) -> None:
    env_name = spread_env(cluster_client, env_name)
    assert write_queues(cluster_client, app_name, env_name) == write_queues(
        redis_client, app_name, env_name
    )
    lists = [k for k, v in queue_lists(cluster_client, env_name).items() if v]
    assert len({node_of(cluster_client, k) for k in lists}) == 3  # every primary holds some
    # Move a dead list into a queue of another event type served by another primary: the
    # backup is read from one slot and restored into (and locked, and counted in) another.
    dead_key = next(k for k in lists if k.endswith(":DeadLetters"))
    dead_sub, _, dead_type, _ = layout.parse_queue_key(dead_key)  # type: ignore[misc]
    elsewhere = next(
        (sub, event_type)
        for event_type, subscribers in demo.SUBSCRIPTIONS.items()
        for sub in subscribers
        if node_of(cluster_client, layout.subscribers_key(env_name, event_type))
        != node_of(cluster_client, dead_key)
    )
    moves = [(dead_sub, dead_type, "dead", *elsewhere)]

    (tmp_path / "cluster").mkdir()
    (tmp_path / "single").mkdir()
    on_cluster = drain_everything_and_restore(
        redis_cluster.url, env_name, tmp_path / "cluster", moves
    )
    on_single = drain_everything_and_restore(redis_test_url, env_name, tmp_path / "single", moves)
    assert on_cluster == on_single
    bulk_key = layout.queue_key(demo.SEARCH, env_name, "ItemScoreCreated", "published")
    assert len(on_cluster["backups"][bulk_key]["records"]) > queues.MOVE_BATCH
    # the moved dead letters wait at the tail of the other queue's published list, in order
    target = layout.queue_key(elsewhere[0], env_name, elsewhere[1], "published")
    moved = on_cluster["after_moves"][target]
    dead_before = on_cluster["after_restore"][dead_key]
    assert moved[-len(dead_before) :] == dead_before
    assert on_cluster["after_moves"][dead_key] == []


def test_drain_and_restore_through_the_cli_on_the_cluster(
    redis_cluster: LocalCluster,
    cluster_client: redis.cluster.RedisCluster,
    app_name: str,
    env_name: str,
    tmp_path: Path,
) -> None:
    write_queues(cluster_client, app_name, env_name)
    ref = queues.QueueRef(demo.SEARCH, env_name, "ItemScoreCreated")
    before = cluster_client.lrange(ref.key("published"), 0, -1)
    path = tmp_path / "bulk.jsonl.zst"
    scope = ["--redis-url", redis_cluster.url, "--env", env_name]
    code, drained = esctl_json(
        "queue", "drain", ref.subscriber, ref.event_type, "--list", "published",
        "--to-file", str(path), "--yes", *scope,
    )  # fmt: skip
    assert code == 0 and drained["drained"] == len(before) == BULK + 3, drained
    assert cluster_client.llen(ref.key("published")) == 0
    code, restored = esctl_json("queue", "restore", str(path), "--yes", *scope)
    assert code == 0 and restored["restored"] == len(before), restored
    assert cluster_client.lrange(ref.key("published"), 0, -1) == before


def test_a_drain_while_another_run_holds_the_queue_lock_exits_75_on_the_cluster(
    redis_cluster: LocalCluster,
    cluster_client: redis.cluster.RedisCluster,
    app_name: str,
    env_name: str,
    tmp_path: Path,
) -> None:
    write_queues(cluster_client, app_name, env_name)
    ref = queues.QueueRef(demo.SEARCH, env_name, "ItemScoreCreated")
    cluster_client.set(ref.lock_key, "other-host:1234:run", px=30_000)
    result = run_cli(
        "queue", "drain", ref.subscriber, ref.event_type, "--list", "published",
        "--to-file", str(tmp_path / "x.jsonl.zst"), "--yes", "--redis-url", redis_cluster.url,
        "--env", env_name,
    )  # fmt: skip
    assert result.returncode == 75, result.stderr
    # (the holder is named; the whole "other-host:1234:run" is not asserted: the CLI's console
    # renders ":1234:" and ":lock:" as emoji codes, reported separately)
    assert "another esctl run (other-host" in result.stderr and "holds the lock" in result.stderr
    assert cluster_client.llen(ref.key("published")) == BULK + 3  # nothing was drained
    assert not (tmp_path / "x.jsonl.zst").exists()


def test_queue_commands_and_compress_refuse_one_node_of_a_cluster_given_alone(
    redis_cluster: LocalCluster,
    cluster_client: redis.cluster.RedisCluster,
    app_name: str,
    env_name: str,
    tmp_path: Path,
) -> None:
    """A ``redis://`` URL of one node sees that node's keys only: ``queue list`` and
    ``compress`` would report part of the store as all of it (and ``migrate`` exited 0 with
    0 aggregates), so every command refuses it (exit 1, naming the fix); with ``--cluster``
    the same URL works."""
    write_queues(cluster_client, app_name, env_name)
    write_plain_store(cluster_client, app_name)
    before = queue_lists(cluster_client, env_name), payload_hashes(cluster_client, app_name)
    node = f"redis://127.0.0.1:{redis_cluster.primaries()[0].port}/0"
    scope = ["--redis-url", node, "--env", env_name]
    commands = [
        ("queue", "list", *scope),
        ("queue", "peek", demo.SEARCH, "ItemScoreCreated", *scope),
        ("queue", "drain", demo.SEARCH, "ItemScoreCreated", "--list", "published",
         "--to-file", str(tmp_path / "x.jsonl.zst"), "--yes", *scope),
        ("queue", "requeue", demo.SEARCH, "ItemScoreCreated", "--yes", *scope),
        ("compress", "--app", app_name, "--yes", "--redis-url", node),
        # every other command too: redisio.connect refuses a lone node
        ("migrate", "redis-to-pg", "--app", app_name, "--redis-url", node,
         "--pg-dsn", "postgresql://127.0.0.1:1/none"),
        ("inspect", "stats", "--app", app_name, "--redis-url", node),
        ("inspect", "integrity", "--app", app_name, "--redis-url", node),
    ]  # fmt: skip
    for command in commands:
        code, document = esctl_json(*command)
        assert code == 1 and document["error"]["kind"] == "config", (command, document)
        assert "node of a Redis Cluster" in document["error"]["message"]
        assert "redis+cluster://127.0.0.1:" in document["error"]["hint"]
    query = run_cli("events", "query", "--app", app_name, "--redis-url", node)
    assert query.returncode == 1 and "node of a Redis Cluster" in query.stderr, query.stderr
    assert (queue_lists(cluster_client, env_name), payload_hashes(cluster_client, app_name)) == before  # fmt: skip
    code, listing = esctl_json("queue", "list", *scope, "--cluster")
    assert code in (0, 3) and len(listing["queues"]) == sum(map(len, demo.SUBSCRIPTIONS.values()))


# --- doctor --------------------------------------------------------------------------------

RECOMMENDED = {
    "maxmemory": "256mb",
    "maxmemory-policy": "noeviction",
    "appendonly": "yes",
    "appendfsync": "everysec",
    "no-appendfsync-on-rewrite": "yes",
    "latency-monitor-threshold": "100",
}


@contextmanager
def configured(ports: list[int], settings: dict[str, str]) -> Iterator[None]:
    """CONFIG SET ``settings`` on each server, and back to what they were afterwards (the
    session's cluster serves other tests too)."""
    saved = {}
    for port in ports:
        with redis.Redis(port=port) as plain:
            saved[port] = {name: plain.config_get(name)[name] for name in settings}
            for name, value in settings.items():
                plain.config_set(name, value)
    try:
        yield
    finally:
        for port, values in saved.items():
            with redis.Redis(port=port) as plain:
                for name, value in values.items():
                    plain.config_set(name, value)


@pytest.fixture
def single_server() -> Iterator[servers.LocalRedis]:
    """A throwaway server started as the cluster's nodes are (no persistence), so settings
    checks compare like with like."""
    server = servers.start_redis()
    try:
        yield server
    finally:
        server.stop()


def doctor_json(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    code, document = esctl_json("doctor", "--redis-url", url, *args)
    assert document["exit_code"] == code
    return code, document


def by_id(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in document["checks"]}


def test_doctor_on_the_cluster_answers_as_on_a_single_instance(
    redis_cluster: LocalCluster,
    cluster_client: redis.cluster.RedisCluster,
    single_server: servers.LocalRedis,
    app_name: str,
    env_name: str,
) -> None:
    redis_cluster.flushall()  # the queue checks scan every key of the env
    single = redis.Redis(port=single_server.port)
    assert write_demo_store(cluster_client, app=app_name, env=env_name) == write_demo_store(
        single, app=app_name, env=env_name
    )
    scope = ["--app", app_name, "--env", env_name]
    code, on_cluster = doctor_json(redis_cluster.url, *scope)
    single_code, on_single = doctor_json(single_server.url, *scope)
    assert code == single_code == 3  # no persistence anywhere; stuck messages in the demo
    cluster_checks, single_checks = by_id(on_cluster), by_id(on_single)
    assert set(cluster_checks) == set(single_checks) | {"redis.cluster"}
    assert {i: c["status"] for i, c in single_checks.items()} == {
        i: c["status"] for i, c in cluster_checks.items() if i != "redis.cluster"
    }
    assert cluster_checks["redis.cluster"]["status"] == "ok"
    primaries = {f"127.0.0.1:{n.port}" for n in redis_cluster.primaries()}
    for check in cluster_checks.values():
        if check["group"] == "redis":  # evaluated on every primary, each one's verdict given
            assert set(check["servers"]) == primaries, check["id"]
        else:  # evaluated over the whole cluster's keys
            assert check["servers"] is None, check["id"]
    # The store and queue findings are the same: every key was found on whichever node holds it.
    for check_id in ("store.uncompressed", "queues.dead_letters"):
        assert cluster_checks[check_id]["values"] == single_checks[check_id]["values"], check_id
    stuck = [{k: v for k, v in q.items() if k != "oldest_processing_age_s"}
             for q in cluster_checks["queues.stuck"]["values"]["queues"]]  # fmt: skip
    assert stuck == [
        {k: v for k, v in q.items() if k != "oldest_processing_age_s"}
        for q in single_checks["queues.stuck"]["values"]["queues"]
    ]
    memory = cluster_checks["store.memory"]["values"]
    for name in ("events", "aggregates"):
        assert memory[name] == single_checks["store.memory"]["values"][name] > 0
    # used_memory is the primaries' sum, not one node's
    per_node = [redis.Redis(port=n.port).info("memory")["used_memory"] for n in redis_cluster.primaries()]  # fmt: skip
    assert max(per_node) < memory["used_memory"]
    assert abs(memory["used_memory"] - sum(per_node)) < 0.25 * sum(per_node)

    ports = [n.port for n in redis_cluster.primaries()] + [single_server.port]
    with configured(ports, RECOMMENDED):
        code, on_cluster = doctor_json(redis_cluster.url)
        single_code, on_single = doctor_json(single_server.url)
        strict_code, _ = doctor_json(redis_cluster.url, "--strict")
    assert (code, single_code, strict_code) == (0, 0, 3)  # only warning: no replicas
    warned = {c["id"] for c in on_cluster["checks"] if c["status"] != "ok"}
    assert warned == {c["id"] for c in on_single["checks"] if c["status"] != "ok"} == {"redis.role"}


def test_doctor_names_the_one_primary_whose_eviction_policy_is_risky(
    redis_cluster: LocalCluster,
    cluster_client: redis.cluster.RedisCluster,
    app_name: str,
    env_name: str,
    tmp_path: Path,
) -> None:
    write_demo_store(cluster_client, app=app_name, env=env_name)
    primaries = [f"127.0.0.1:{n.port}" for n in redis_cluster.primaries()]
    risky = redis_cluster.primaries()[1]
    name = f"127.0.0.1:{risky.port}"
    metrics = tmp_path / "doctor.prom"
    with configured([risky.port], {"maxmemory-policy": "allkeys-lru"}):
        code, report = doctor_json(
            redis_cluster.url, "--app", app_name, "--metrics-file", str(metrics)
        )
    assert code == 3
    policy = by_id(report)["redis.maxmemory_policy"]
    assert policy["status"] == "fail"
    assert policy["servers"] == {p: "fail" if p == name else "ok" for p in primaries}
    assert policy["observed"].startswith(f"{name}: allkeys-lru: ")
    assert "events stored" in policy["observed"]  # the scoped data is the whole cluster's
    assert policy["action"].startswith(f"on {name}: `CONFIG SET maxmemory-policy noeviction`")
    assert policy["values"][name]["policy"] == "allkeys-lru"
    text = metrics.read_text()
    for primary in primaries:
        flag = 0 if primary == name else 1
        assert (
            f'esctl_doctor_redis_noeviction{{app="{app_name}",server="{primary}"}} {flag}' in text
        )


def test_doctor_readings_for_growth_live_in_one_key_on_the_cluster(
    redis_cluster: LocalCluster,
    cluster_client: redis.cluster.RedisCluster,
    app_name: str,
    env_name: str,
) -> None:
    truth = iw.write_store(cluster_client, app=app_name, aggregates=40, seed=3)
    cluster_client.sadd(layout.subscribers_key(env_name, "T"), "Sub")  # a queue of the env
    first = datetime(2026, 1, 1, tzinfo=UTC)
    options = doctor.DoctorOptions(
        redis_url=redis_cluster.url, app=app_name, env=env_name, now=first
    )
    report = doctor.run_doctor(options)
    assert report.check("store.growth").status == "unavailable"  # nothing to compare with yet
    stored = json.loads(cluster_client.get(layout.doctor_reading_key(app_name)))  # type: ignore[arg-type]
    assert stored["newer"]["events"] == len(truth.events())
    per_node = sum(redis.Redis(port=n.port).info("memory")["used_memory"] for n in redis_cluster.primaries())  # fmt: skip
    assert abs(stored["newer"]["used_memory"] - per_node) < 0.25 * per_node
    assert {r["key"] for r in report.readings if r["stored"]} == {
        layout.doctor_reading_key(app_name),
        layout.doctor_queue_reading_key(env_name),
    }

    # 10 more commits (doctor counts commit ids; it does not read these payloads)
    cluster_client.rpush(truth.aggregates[0].list_key, *[f"new-{i}" for i in range(10)])
    options.now = first + timedelta(hours=2)
    growth = doctor.run_doctor(options).check("store.growth")
    assert growth.status != "unavailable", growth.observed
    assert growth.values["interval_s"] == 7200
    assert growth.values["events_per_day"] == 10 * 12


def test_doctor_asks_each_primarys_own_replica_where_persistence_runs(
    redis_cluster_with_replicas: LocalCluster,
) -> None:
    cluster = redis_cluster_with_replicas
    primaries = {f"127.0.0.1:{n.port}" for n in cluster.primaries()}
    replicas = [n.port for n in cluster.replicas_of_primaries()]
    with configured(replicas, {"appendonly": "yes"}):
        code, report = doctor_json(cluster.url)
    checks = by_id(report)
    for check_id in ("redis.role", "redis.persistence", "redis.cluster"):
        check = checks[check_id]
        assert check["servers"] == dict.fromkeys(primaries, "ok"), check  # primaries only
    assert "primary with 1 replica, all online" in checks["redis.role"]["observed"]
    assert "1 of 1 replica persists" in checks["redis.persistence"]["observed"]
    assert sum("persistence runs only on replicas" in d for d in checks["redis.persistence"]["details"]) == 3  # fmt: skip
    assert (code, report["counts"]["fail"]) == (0, 0)  # warnings only (maxmemory, latency)


def test_doctor_pointed_at_one_node_of_a_cluster_says_so(redis_cluster: LocalCluster) -> None:
    node = redis_cluster.primaries()[0]
    code, report = doctor_json(f"redis://127.0.0.1:{node.port}/0")
    assert code == 3
    check = by_id(report)["redis.cluster"]
    assert check["status"] == "fail" and check["servers"] is None
    assert "--cluster" in check["action"] and "redis+cluster://" in check["action"]
    # the same node through the cluster client: every primary, the cluster's state ok
    code, report = doctor_json(f"redis://127.0.0.1:{node.port}/0", "--cluster")
    assert by_id(report)["redis.cluster"]["status"] == "ok"
    assert len(by_id(report)["redis.cluster"]["servers"]) == 3


# --- compress ------------------------------------------------------------------------------


def payload_hashes(client: Client, app: str) -> dict[str, dict[bytes, bytes]]:
    """Every event and snapshot hash of ``app`` with its fields, wherever it is stored."""
    patterns = (layout.event_hash_pattern(app), layout.snapshot_hash_pattern(app))
    keys: set[bytes] = set()
    for pattern in patterns:
        if isinstance(client, redis.cluster.RedisCluster):
            keys.update(client.scan_iter(match=pattern, target_nodes=client.PRIMARIES))
        else:
            keys.update(client.scan_iter(match=pattern))
    keys.add(layout.legacy_event_hash_key(app).encode())
    return {k.decode(): rb.hgetall(client, k) for k in sorted(keys)}


def write_plain_store(client: Client, app: str) -> iw.GroundTruth:
    """The independent writer's store with compression off (every payload plain), and a plain
    snapshot per aggregate, half of them over the threshold."""
    truth = iw.write_store(
        client, app=app, aggregates=120, threshold=None, legacy_share=0.2, seed=9
    )
    for i, aggregate in enumerate(truth.aggregates):
        text = json.dumps(
            {"$type": "Ns.EnrollmentSnapshot, Asm", "Id": aggregate.aggregate_id,
             "Notes": "Größe 学習 🦄 " * (100 if i % 2 else 5)},
            ensure_ascii=False,
        )  # fmt: skip
        client.hset(iw.snapshot_hash_key(app, aggregate.aggregate_id), aggregate.aggregate_id, text)
    return truth


def test_compress_on_the_cluster_stores_what_it_stores_on_a_single_instance(
    redis_cluster: LocalCluster,
    cluster_client: redis.cluster.RedisCluster,
    redis_client: redis.Redis,
    redis_test_url: str,
    app_name: str,
) -> None:
    truth = write_plain_store(cluster_client, app_name)
    write_plain_store(redis_client, app_name)
    before = payload_hashes(cluster_client, app_name)
    assert before == payload_hashes(redis_client, app_name)
    assert len({node_of(cluster_client, k) for k in before}) == 3

    answers = []
    for url in (redis_cluster.url, redis_test_url):
        code, dry = esctl_json("compress", "--app", app_name, "--dry-run", "--redis-url", url)
        assert code == 0 and dry["compressed"] == 0
        code, done = esctl_json("compress", "--app", app_name, "--yes", "--redis-url", url)
        assert code == 0, done
        code, again = esctl_json("compress", "--app", app_name, "--yes", "--redis-url", url)
        assert code == 0 and again["compressed"] == 0 and again["plain_over_threshold"] == 0
        answers.append((stable(dry), stable(done)))
    assert answers[0] == answers[1]
    dry, done = answers[0]
    assert done["compressed"] == dry["plain_over_threshold"] > 0
    assert done["families"]["snapshots"]["compressed"] == len(truth.aggregates) // 2

    after = payload_hashes(cluster_client, app_name)
    assert after == payload_hashes(redis_client, app_name)  # the same bytes in every field
    assert after != before
    # Read back with the independent reader: every event's text is exactly what was written.
    for event in truth.events():
        stored = after[event.hash_key][event.commit_id.encode()]
        if len(event.payload.encode("utf-8")) > 1000:
            assert stored.startswith(b"H4sI") and iw.gunzip_base64(stored) == event.payload
        else:
            assert stored == event.payload.encode("utf-8")
    # commit lists are never touched
    for key, commit_ids in truth.commit_lists.items():
        assert [c.decode() for c in rb.lrange(cluster_client, key)] == commit_ids


def test_compress_on_the_cluster_keeps_a_value_a_service_changed_meanwhile(
    redis_cluster: LocalCluster, cluster_client: redis.cluster.RedisCluster, app_name: str
) -> None:
    write_plain_store(cluster_client, app_name)
    changed: dict[str, Any] = {}

    def service_writes(candidates: Sequence[compress.Candidate]) -> None:
        if not changed:  # the first round: one value changes between the read and the write
            first = candidates[0]
            changed.update(key=first.key, field=first.field, value=first.old + b" ")
            cluster_client.hset(first.key, first.field, changed["value"])

    client = redisio.connect(redis_cluster.url)
    try:
        summary = compress.compress(
            client, compress.CompressOptions(app=app_name), before_write=service_writes
        )
    finally:
        client.close()
    total = summary.total
    assert total.changed_concurrently == 1 and summary.failed == 0
    assert total.compressed == total.plain_over_threshold - 1 > 0
    assert cluster_client.hget(changed["key"], changed["field"]) == changed["value"]
