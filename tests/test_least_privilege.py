"""Each command family under exactly the rights the README documents, and with one right less.

Redis: ACL users made from the README's ``ACL SETUSER`` lines; ``ACL LOG`` lists every command
or key the server refused, so a read-only command that tried a write would show there.
PostgreSQL: roles made from the README's GRANT statements, on a server that makes them
authenticate with scram-sha-256; its log would show any statement refused to them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import zstandard
from cluster import LocalCluster, node_id, redis_cluster, slot_owner, wait_for_agreement
from credservers import (
    DOCTOR_PROBES,
    PASSWORD,
    SCRAM_HBA,
    acl_denials,
    acl_users,
    cluster_extras,
    doctor_extras,
    pg_statements,
    pg_url,
    set_user,
    user_url,
)
from faultrelay import FaultRelay, script_sha
from helpers import run_cli
from psycopg import sql

from esctl import layout, queues, servers
from esctl.demo import DemoSummary, write_demo_store

__all__ = ["redis_cluster"]  # the fixture, imported for pytest


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[servers.LocalRedis]:
    server = servers.start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scram_pg() -> Iterator[servers.LocalPostgres]:
    server = servers.start_postgres(hba_lines=SCRAM_HBA)
    try:
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            for role in ("esctl_migrate", "esctl_read"):
                for statement in pg_statements(role, "postgres"):
                    if statement.startswith("CREATE ROLE"):
                        admin.execute(statement)
        yield server
    finally:
        server.stop()


class Store:
    """One test's demo store (own app and env), its Redis users and its PostgreSQL database."""

    def __init__(self, redis_server: servers.LocalRedis, pg: servers.LocalPostgres) -> None:
        self.redis_port = redis_server.port
        self.pg = pg
        self.admin = redis.Redis.from_url(redis_server.url)
        self.admin.flushdb()
        self.app = f"LpApp-{secrets.token_hex(3)}"
        self.env = f"lp{secrets.token_hex(3)}"
        self.demo: DemoSummary = write_demo_store(self.admin, app=self.app, env=self.env)
        self.rules = acl_users(self.app, self.env)
        for name, rules in self.rules.items():
            set_user(self.admin, name, rules)
        acl_denials(self.admin)
        self.db = f"lp_{secrets.token_hex(4)}"
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db)))

    def grant(self, role: str) -> None:
        """The README's grants of ``role`` in this test's database (as the superuser)."""
        with psycopg.connect(self.admin_dsn(), autocommit=True) as admin:
            for statement in pg_statements(role, self.db):
                if not statement.startswith("CREATE ROLE"):
                    admin.execute(statement)

    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg.port}/{self.db}"

    def run(self, user: str, role: str | None, *args: str) -> Any:
        words = [*args, "--redis-url", user_url(self.redis_port, user)]
        if role is not None:
            words += ["--pg-dsn", pg_url(self.pg.port, role, self.db)]
        result = run_cli(*words)
        assert PASSWORD not in result.stdout + result.stderr
        return result

    def queue(self, which: str) -> tuple[str, str, str]:
        """(subscriber, event type, key) of a queue whose ``which`` list has messages."""
        field = {"dead": "dead_letters", "processing": "processing"}[which]
        q = max(self.demo.queues, key=lambda q: getattr(q, field))
        assert getattr(q, field) > 0
        return (
            q.subscriber,
            q.event_type,
            layout.queue_key(q.subscriber, self.env, q.event_type, which),
        )

    def close(self) -> None:
        self.admin.flushdb()
        for name in self.rules:
            self.admin.execute_command("ACL", "DELUSER", name)
        self.admin.close()
        with psycopg.connect(self.pg.dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(self.db)))
            # Default privileges and grants in the dropped database went with it; the roles stay.


@pytest.fixture
def store(acl_redis: servers.LocalRedis, scram_pg: servers.LocalPostgres) -> Iterator[Store]:
    made = Store(acl_redis, scram_pg)
    try:
        yield made
    finally:
        made.close()


def pg_log_since(pg: servers.LocalPostgres, offset: int) -> str:
    return (pg.workdir / "postgres.log").read_bytes()[offset:].decode("utf-8", "replace")


def pg_log_size(pg: servers.LocalPostgres) -> int:
    return (pg.workdir / "postgres.log").stat().st_size


def refused(result: Any, server: str, *words: str, grant: tuple[str, ...] = ()) -> dict[str, Any]:
    """The run exited 1 with a ``permission`` error document naming ``server`` and ``words``,
    pointing at the README section; its hint names what to grant: ``grant``, the command, the
    README's user or role of its family and what that user is made for (app, env, database)."""
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    error = document["error"]
    assert error["kind"] == "permission", document
    for word in (server, *words):
        assert word in error["message"], (word, error)
    assert "Credentials and least privilege" in error["hint"], error
    for word in grant:
        assert word in error["hint"], (word, error)
    return error


def test_the_read_only_family_runs_under_users_without_any_write(store: Store) -> None:
    # The migrate role makes the tables (as the README says the read grants come after).
    store.grant("esctl_migrate")
    migrated = store.run(
        "esctl-read", "esctl_migrate", "migrate", "redis-to-pg", "--app", store.app, "--init-schema"
    )
    assert migrated.returncode == 3, migrated.stderr  # the demo's planted defects
    store.grant("esctl_read")
    assert acl_denials(store.admin) == []
    log_start = pg_log_size(store.pg)

    aggregate = next(iter(store.demo.aggregate_ids.values()))[0]
    sub, event_type, _ = store.queue("dead")
    app, env = ["--app", store.app], ["--env", store.env]
    expected = [
        (0, None, ["inspect", "stats", *app]),
        (3, None, ["inspect", "integrity", *app]),
        (0, None, ["inspect", "aggregate", aggregate, *app]),
        (0, None, ["events", "query", "--source", "redis", *app]),
        (0, "esctl_read", ["events", "query", "--source", "pg", *app]),
        (0, None, ["queue", "list", *env]),
        (0, None, ["queue", "peek", sub, event_type, "--list", "dead", *env]),
        (3, "esctl_read", ["migrate", "verify", "--workers", "1", *app]),
        (0, "esctl_read", ["migrate", "plan", *app, "--json"]),
        (0, "esctl_read", ["migrate", "status", "--lag", *app]),
        (3, "esctl_read", ["doctor", "--read-only", *app, *env]),
        (0, "esctl_read", ["replay", "--from", "pg", "--all", "--to", "stdout", *app]),
        (3, None, ["replay", "--from", "redis", "--all", "--to", "stdout", *app]),
    ]
    for code, role, words in expected:
        result = store.run("esctl-read", role, *words)
        assert result.returncode == code, (words, result.stderr[-2000:])
        if words[:2] == ["migrate", "plan"]:
            note = json.loads(result.stdout)["trial_note"]
            assert "CREATE on the database" in note, note
        denied = acl_denials(store.admin)
        # doctor tries CONFIG GET, LATENCY and SLOWLOG and reports them unavailable
        allowed = DOCTOR_PROBES if words[0] == "doctor" else set()
        assert {d for d in denied if d[1] not in allowed or d[0] != "command"} == set(), words
    assert "permission denied" not in pg_log_since(store.pg, log_start)

    # With the README's extra rules doctor reads everything, and nothing is refused.
    set_user(store.admin, "esctl-read", store.rules["esctl-read"] + doctor_extras())
    result = store.run("esctl-read", None, "doctor", "--read-only", *app, *env, "--json")
    assert result.returncode in (0, 3), result.stderr  # 3: the demo store's findings
    assert acl_denials(store.admin) == []

    # One right less: the read-only role may not migrate; the message names the server.
    result = store.run("esctl-read", "esctl_read", "migrate", "redis-to-pg", *app, "--json")
    refused(
        result,
        f"127.0.0.1:{store.pg.port}",
        "permission denied",
        grant=("`esctl migrate redis-to-pg`", "esctl_migrate role", f"DBNAME = {store.db}"),
    )


def test_the_queue_family_runs_under_its_user_and_refuses_cleanly_with_a_right_less(
    store: Store, tmp_path: Path
) -> None:
    env = ["--env", store.env]
    sub, event_type, dead_key = store.queue("dead")
    dead_before = store.admin.lrange(dead_key, 0, -1)
    server = f"127.0.0.1:{store.redis_port}"

    # The read-only family's user: the hint names the user whose rules requeue needs.
    result = store.run(
        "esctl-read", None, "queue", "requeue", sub, event_type, "--from", "dead", "--yes", *env,
        "--json",
    )  # fmt: skip
    refused(result, server, "set", grant=("`esctl queue requeue`", "esctl-queues user"))
    assert store.admin.lrange(dead_key, 0, -1) == dead_before
    acl_denials(store.admin)

    # Without RPUSH, requeue is refused before anything moves (the script checks first).
    set_user(store.admin, "esctl-queues", [*store.rules["esctl-queues"], "-rpush"])
    result = store.run(
        "esctl-queues",
        None,
        "queue",
        "requeue",
        sub,
        event_type,
        "--from",
        "dead",
        "--yes",
        *env,
        "--json",
    )
    published_key = layout.queue_key(sub, store.env, event_type, "published")
    queues_user = ("`esctl queue requeue`", "esctl-queues user", f"ENV = {store.env}")
    refused(result, server, "RPUSH", published_key, grant=queues_user)
    assert store.admin.lrange(dead_key, 0, -1) == dead_before
    set_user(store.admin, "esctl-queues", store.rules["esctl-queues"])
    acl_denials(store.admin)

    result = store.run(
        "esctl-queues",
        None,
        "queue",
        "requeue",
        sub,
        event_type,
        "--from",
        "dead",
        "--yes",
        *env,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["requeued"] == len(dead_before)

    sub, event_type, processing_key = store.queue("processing")
    backup = tmp_path / "processing.jsonl.zst"
    result = store.run(
        "esctl-queues",
        None,
        "queue",
        "drain",
        sub,
        event_type,
        "--list",
        "processing",
        "--to-file",
        str(backup),
        "--yes",
        *env,
    )
    assert result.returncode == 0, result.stderr
    assert store.admin.llen(processing_key) == 0
    # Without the pushes, restore is refused before it puts anything back.
    set_user(store.admin, "esctl-queues", [*store.rules["esctl-queues"], "-lpush"])
    result = store.run(
        "esctl-queues", None, "queue", "restore", str(backup), "--yes", *env, "--json"
    )
    refused(
        result, server, "LPUSH", processing_key, grant=("`esctl queue restore`", "esctl-queues")
    )
    assert store.admin.llen(processing_key) == 0
    set_user(store.admin, "esctl-queues", store.rules["esctl-queues"])
    acl_denials(store.admin)
    result = store.run("esctl-queues", None, "queue", "restore", str(backup), "--yes", *env)
    assert result.returncode == 0, result.stderr
    assert store.admin.llen(processing_key) > 0

    # Without LTRIM, drain keeps its backup and removes nothing.
    before = store.admin.lrange(processing_key, 0, -1)
    set_user(store.admin, "esctl-queues", [*store.rules["esctl-queues"], "-ltrim"])
    again = tmp_path / "again.jsonl.zst"
    result = store.run(
        "esctl-queues",
        None,
        "queue",
        "drain",
        sub,
        event_type,
        "--list",
        "processing",
        "--to-file",
        str(again),
        "--yes",
        *env,
        "--json",
    )
    refused(result, server, "LTRIM", processing_key, grant=("`esctl queue drain`", "esctl-queues"))
    assert store.admin.lrange(processing_key, 0, -1) == before
    set_user(store.admin, "esctl-queues", store.rules["esctl-queues"])
    acl_denials(store.admin)
    assert PASSWORD.encode() not in backup.read_bytes()

    result = store.run(
        "esctl-queues",
        None,
        "replay",
        "--from",
        "redis",
        "--all",
        "--to",
        "queue",
        "--app",
        store.app,
        *env,
    )
    assert result.returncode == 3, result.stderr  # the demo's unreadable events are reported
    assert acl_denials(store.admin) == []

    # Without PUBLISH on the notification channels, replay publishes nothing.
    lengths = {
        k: store.admin.llen(k)
        for k in store.admin.scan_iter(f"*:{{{store.env}:*}}:PublishedEvents")
    }
    set_user(store.admin, "esctl-queues", [*store.rules["esctl-queues"], "resetchannels"])
    result = store.run(
        "esctl-queues",
        None,
        "replay",
        "--from",
        "redis",
        "--all",
        "--to",
        "queue",
        "--app",
        store.app,
        *env,
        "--json",
    )
    refused(result, server, "PUBLISH", grant=("`esctl replay`", "esctl-queues user"))
    assert {k: store.admin.llen(k) for k in lengths} == lengths


def test_compress_and_prune_run_under_their_users_and_refuse_cleanly_with_a_right_less(
    store: Store, tmp_path: Path
) -> None:
    app = ["--app", store.app]
    server = f"127.0.0.1:{store.redis_port}"
    snapshot = {
        k: store.admin.hgetall(k) for k in store.admin.scan_iter(f"EventStore:{store.app}*")
    }

    set_user(store.admin, "esctl-compress", [*store.rules["esctl-compress"], "-hset"])
    result = store.run(
        "esctl-compress", None, "compress", "--yes", "--threshold", "200", *app, "--json"
    )
    refused(
        result, server, "HSET", grant=("`esctl compress`", "esctl-compress", f"APP = {store.app}")
    )
    assert {k: store.admin.hgetall(k) for k in snapshot} == snapshot
    set_user(store.admin, "esctl-compress", store.rules["esctl-compress"])
    result = store.run(
        "esctl-compress", None, "compress", "--yes", "--threshold", "200", *app, "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["compressed"] > 0
    assert acl_denials(store.admin) == []

    # Without CREATE on the schema, --init-schema is refused naming the schema.
    store.grant("esctl_migrate")
    with psycopg.connect(store.admin_dsn(), autocommit=True) as admin:
        admin.execute("REVOKE CREATE ON SCHEMA public FROM esctl_migrate")
    result = store.run(
        "esctl-read", "esctl_migrate", "migrate", "redis-to-pg", "--init-schema", *app, "--json"
    )
    refused(
        result,
        f"127.0.0.1:{store.pg.port}",
        "permission denied for schema public",
        grant=("esctl_migrate role",),
    )
    store.grant("esctl_migrate")
    result = store.run(
        "esctl-read", "esctl_migrate", "migrate", "redis-to-pg", "--init-schema", *app
    )
    assert result.returncode == 3, result.stderr
    result = store.run(
        "esctl-read", "esctl_migrate", "replay", "--from", "redis", "--all", "--to", "projection",
        "--projection", "esctl.projections.event_counts", "--checkpoint", "counts", *app,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr  # the demo's unreadable events, skipped
    assert acl_denials(store.admin) == []
    set_user(store.admin, "esctl-prune", [*store.rules["esctl-prune"], "-del"])
    lists = sorted(store.admin.scan_iter(f"{{EventStore:{store.app}}}:*"))
    result = store.run("esctl-prune", "esctl_migrate", "migrate", "prune", "--yes", *app, "--json")
    refused(
        result, server, "DEL", grant=("`esctl migrate prune`", "esctl-prune", f"APP = {store.app}")
    )
    assert sorted(store.admin.scan_iter(f"{{EventStore:{store.app}}}:*")) == lists
    set_user(store.admin, "esctl-prune", store.rules["esctl-prune"])
    acl_denials(store.admin)
    backup = tmp_path / "pruned.jsonl.zst"
    result = store.run(
        "esctl-prune", "esctl_migrate", "migrate", "prune", "--yes", *app, "--json",
        "--backup-file", str(backup),
    )  # fmt: skip
    assert result.returncode in (0, 3), result.stderr  # 3: the demo's streams PG lacks
    with zstandard.ZstdDecompressor().stream_reader(backup.open("rb")) as reader:
        assert PASSWORD.encode() not in backup.read_bytes() + reader.read()
    assert len(list(store.admin.scan_iter(f"{{EventStore:{store.app}}}:*"))) < len(lists)
    assert acl_denials(store.admin) == []
    # going back: the same user puts the backup's events back
    result = store.run(
        "esctl-prune", "esctl_migrate", "migrate", "restore-pruned", str(backup), "--yes",
        *app, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["conflicts"] == 0
    assert sorted(store.admin.scan_iter(f"{{EventStore:{store.app}}}:*")) == lists
    assert acl_denials(store.admin) == []


def forget(nodes: list[redis.Redis], app: str, env: str) -> None:
    """Remove the esctl-read user and the test's store from each cluster node, and close them."""
    for node in nodes:
        node.execute_command("ACL", "DELUSER", "esctl-read")
        for pattern in (f"*{app}*", f"*{{{env}:*"):
            for key in node.scan_iter(match=pattern, count=1000):
                node.delete(key)
        node.close()


def test_the_read_only_family_on_a_cluster_under_the_read_user_and_the_cluster_rules(
    redis_cluster: LocalCluster,
) -> None:
    app, env = f"LpClusterApp-{secrets.token_hex(3)}", f"lpc{secrets.token_hex(3)}"
    demo = write_demo_store(redis_cluster.client(), app=app, env=env)
    rules = acl_users(app, env)["esctl-read"] + cluster_extras()
    nodes = [redis.Redis(port=n.port) for n in redis_cluster.nodes]
    try:
        for node in nodes:
            set_user(node, "esctl-read", rules)
            acl_denials(node)
        url = f"redis+cluster://esctl-read:{PASSWORD}@127.0.0.1:{redis_cluster.seed.port}"
        q = max(demo.queues, key=lambda q: q.dead_letters)
        for code, words in [
            (0, ["inspect", "stats", "--app", app]),
            (3, ["inspect", "integrity", "--app", app]),
            (0, ["events", "query", "--source", "redis", "--app", app]),
            (0, ["queue", "list", "--env", env]),
            (0, ["queue", "peek", q.subscriber, q.event_type, "--list", "dead", "--env", env]),
            (0, ["migrate", "plan", "--no-trial", "--app", app]),
        ]:
            result = run_cli(*words, "--redis-url", url)
            assert result.returncode == code, (
                words,
                result.stderr[-2000:],
                [acl_denials(n) for n in nodes],
            )
            assert PASSWORD not in result.stdout + result.stderr
            assert [acl_denials(node) for node in nodes] == [[]] * len(nodes), words
    finally:
        forget(nodes, app, env)


def test_the_read_only_family_and_doctor_on_a_cluster_with_a_slot_half_moved(
    redis_cluster: LocalCluster,
) -> None:
    """The README's cluster rules cover what a reshard makes esctl send: a scan that meets a
    slot being migrated reads it whole (CLUSTER COUNTKEYSINSLOT and GETKEYSINSLOT on its source
    and target), and doctor's ``redis.cluster`` check reads CLUSTER INFO of every primary.
    Nothing is refused, and the answers are those of a quiet cluster."""
    app, env = f"LpReshardApp-{secrets.token_hex(3)}", f"lpr{secrets.token_hex(3)}"
    client = redis_cluster.client()
    write_demo_store(client, app=app, env=env)
    rules = acl_users(app, env)["esctl-read"] + cluster_extras() + doctor_extras()
    nodes = [redis.Redis(port=n.port) for n in redis_cluster.nodes]
    slot = client.keyslot(layout.commit_list_key(app, "x"))
    source = slot_owner(redis_cluster, slot)
    target = next(p for p in redis_cluster.primaries() if p.port != source.port)
    src, dst = redis.Redis(port=source.port), redis.Redis(port=target.port)
    try:
        for node in nodes:
            set_user(node, "esctl-read", rules)
            acl_denials(node)
        url = f"redis+cluster://esctl-read:{PASSWORD}@127.0.0.1:{redis_cluster.seed.port}"
        quiet = json.loads(run_cli("inspect", "integrity", "--app", app, "--json",
                                   "--redis-url", url).stdout)  # fmt: skip
        assert quiet["commit_lists"] > 10 and quiet["problems_total"] > 0, quiet
        # Half-moved: the commit lists' slot is migrating, half its keys already on the target.
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source.port))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target.port))
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        half = keys[: len(keys) // 2]
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *half)
        integrity = run_cli("inspect", "integrity", "--app", app, "--json", "--redis-url", url)
        assert integrity.returncode == 3, (
            integrity.stderr[-2000:],
            [acl_denials(n) for n in nodes],
        )
        assert json.loads(integrity.stdout)["counts"] == quiet["counts"]
        query = run_cli("events", "query", "--app", app, "--redis-url", url)
        assert query.returncode == 0, query.stderr[-2000:]
        assert [acl_denials(node) for node in nodes] == [[]] * len(nodes)
        doctor = run_cli("doctor", "--read-only", "--json", "--app", app, "--env", env,
                         "--redis-url", url)  # fmt: skip
        checks = {c["id"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert checks["redis.cluster"]["status"] != "unavailable", checks["redis.cluster"]
        assert [acl_denials(node) for node in nodes] == [[]] * len(nodes)
    finally:
        rest = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        if rest:
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *rest)
        for primary in redis_cluster.primaries():
            with redis.Redis(port=primary.port) as plain:
                plain.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(target.port))
        wait_for_agreement(redis_cluster)
        forget(nodes, app, env)
        src.close()
        dst.close()


# --- a refusal part-way through a queue command ----------------------------------------------


class QueueUser:
    """The README's ``esctl-queues`` user on the module's Redis, for an env of the test's own;
    ``allow`` sets its rules (the README's, plus any given)."""

    def __init__(self, server: servers.LocalRedis) -> None:
        self.port = server.port
        self.admin = redis.Redis.from_url(server.url)
        self.admin.flushdb()
        self.env = f"lq{secrets.token_hex(3)}"
        self.rules = acl_users("App", self.env)["esctl-queues"]
        self.allow()

    def allow(self, *extra: str) -> None:
        set_user(self.admin, "esctl-queues", [*self.rules, *extra])

    @property
    def url(self) -> str:
        return user_url(self.port, "esctl-queues")

    def run(self, *args: str) -> Any:
        result = run_cli(*args, "--env", self.env, "--redis-url", self.url)
        assert PASSWORD not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        return result

    def close(self) -> None:
        self.admin.flushdb()
        self.admin.execute_command("ACL", "DELUSER", "esctl-queues")
        self.admin.close()


@pytest.fixture
def queue_user(acl_redis: servers.LocalRedis) -> Iterator[QueueUser]:
    made = QueueUser(acl_redis)
    try:
        yield made
    finally:
        made.close()


def dead_letter(aggregate_id: str) -> bytes:
    return json.dumps(
        {"$type": "Ns.T, Asm", "Id": aggregate_id, "Version": 1, "AggregateType": "A"}
    ).encode()


def test_a_requeue_refused_part_way_counts_the_batch_in_flight_behind_the_refusal(
    queue_user: QueueUser,
) -> None:
    """Without DEL, a batch of dead letters whose RetryData goes with them is refused (the
    script checks first, nothing in it moves); the batch already sent behind it, of a message
    whose id cannot be read (no RetryData key to delete), runs. The run stops there, and its
    summary counts exactly what moved, and says what was refused: exit 1."""
    u = queue_user
    u.allow("-del")
    dead_key = layout.queue_key("Svc", u.env, "T", "dead")
    published_key = layout.queue_key("Svc", u.env, "T", "published")
    readable = [dead_letter(f"agg-{i}") for i in range(1000)]  # one whole batch, sent first
    unreadable = b"not json: no aggregate id"
    u.admin.rpush(dead_key, *readable, unreadable)  # batches go from the head to the tail
    u.admin.hset(layout.retry_data_key(u.env, "T", "agg-0"), "RetryCount", "3")

    result = u.run("queue", "requeue", "Svc", "T", "--from", "dead", "--yes", "--json")
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert u.admin.lrange(published_key, 0, -1) == [unreadable]
    assert u.admin.lrange(dead_key, 0, -1) == readable
    assert u.admin.exists(layout.retry_data_key(u.env, "T", "agg-0"))
    assert (summary["requeued"], summary["gone"], summary["failed"]) == (1, 0, 1000)
    assert summary["notified"] is True  # the message that moved is announced
    [problem] = summary["problems"]
    assert problem["kind"] == "move_failed" and problem["key"] == dead_key
    for words in ("NOPERM", "DEL", "the ACL user may not run it", "1000 selected messages"):
        assert words in problem["detail"], (words, problem)


def test_a_drain_refused_part_way_reports_what_it_removed(
    queue_user: QueueUser, tmp_path: Path
) -> None:
    """LTRIM is taken away from the user between two removal batches (rules reloaded while a
    drain runs): the second batch is refused and changes nothing. The first batch's messages
    are in the backup file and gone from the list, and the summary says so (exit 1) instead
    of an error saying nothing was changed."""
    u = queue_user
    dead_key = layout.queue_key("Svc", u.env, "T", "dead")
    values = [dead_letter(f"agg-{i}") for i in range(1500)]  # batches of 1,000 and 500
    u.admin.rpush(dead_key, *values)
    u.admin.script_load(queues.REMOVE_SCRIPT)  # so every batch is one EVALSHA
    backup = tmp_path / "dead.jsonl.zst"
    relay = FaultRelay(u.url, script_sha(queues.REMOVE_SCRIPT), 2, before=lambda: u.allow("-ltrim"))
    with relay:
        result = run_cli(
            "queue", "drain", "Svc", "T", "--to-file", str(backup), "--yes", "--json",
            "--env", u.env, "--redis-url", relay.url,
        )  # fmt: skip
    assert relay.fired.is_set()
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["drained"], summary["gone"], summary["failed"]) == (1000, 0, 500)
    assert u.admin.lrange(dead_key, 0, -1) == values[1000:]  # batches go from the head
    [problem] = summary["problems"]
    assert problem["kind"] == "remove_failed"
    for words in ("NOPERM", "LTRIM", "the ACL user may not run it", "500 selected messages"):
        assert words in problem["detail"], (words, problem)
    u.allow()
    restored = u.run("queue", "restore", str(backup), "--yes", "--json")
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["restored"] == 1000
    assert u.admin.lrange(dead_key, 0, -1) == values


def test_a_restore_refused_part_way_reports_what_it_restored(
    queue_user: QueueUser, tmp_path: Path
) -> None:
    """LPUSH is taken away between two restore batches: the second is refused and changes
    nothing; the summary counts the first as restored, announces it, and a rerun with the
    right restored completes the list (exit 1, then 0)."""
    u = queue_user
    dead_key = layout.queue_key("Svc", u.env, "T", "dead")
    values = [dead_letter(f"agg-{i}") for i in range(1500)]
    u.admin.rpush(dead_key, *values)
    backup = tmp_path / "dead.jsonl.zst"
    drained = u.run("queue", "drain", "Svc", "T", "--to-file", str(backup), "--yes")
    assert drained.returncode == 0, drained.stderr
    u.admin.script_load(queues.RESTORE_SCRIPT)
    relay = FaultRelay(
        u.url, script_sha(queues.RESTORE_SCRIPT), 2, before=lambda: u.allow("-lpush")
    )
    with relay:
        result = run_cli(
            "queue", "restore", str(backup), "--yes", "--json", "--env", u.env,
            "--redis-url", relay.url,
        )  # fmt: skip
    assert relay.fired.is_set()
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["restored"], summary["failed"], summary["notified"]) == (1000, 500, True)
    assert u.admin.lrange(dead_key, 0, -1) == values[500:]  # from the tail: the first 1,000
    [problem] = summary["problems"]
    assert problem["kind"] == "restore_failed"
    for words in ("NOPERM", "LPUSH", "the ACL user may not run it", "500 messages"):
        assert words in problem["detail"], (words, problem)
    u.allow()
    again = u.run("queue", "restore", str(backup), "--yes", "--json")
    assert again.returncode == 0, again.stderr
    assert (json.loads(again.stdout)["restored"], json.loads(again.stdout)["already_restored"]) == (
        500,
        1000,
    )
    assert u.admin.lrange(dead_key, 0, -1) == values


def test_a_replay_refused_part_way_says_what_it_published(queue_user: QueueUser) -> None:
    """The user may PUBLISH on one type's channel only: the first aggregate's events are
    published, the second's first event is refused (MULTI/EXEC aborts it whole). The run stops
    with exit 1 and its summary: what was published, the refused event, and the ACL hint."""
    import independent_writer as iw

    u = queue_user
    truth = iw.write_store(u.admin, app="App", aggregates=30, seed=12)
    enrollment, invoice = (
        min(a.aggregate_id for a in truth.clean_aggregates() if a.aggregate_type == kind)
        for kind in ("Enrollment", "Invoice")
    )
    if invoice < enrollment:  # the refused type's aggregate must come second (id order)
        invoice = min(
            a.aggregate_id
            for a in truth.clean_aggregates()
            if a.aggregate_type == "Invoice" and a.aggregate_id > enrollment
        )
    for event_type in ("EnrollmentCreated", "InvoiceIssued"):
        u.admin.sadd(layout.subscribers_key(u.env, event_type), "Svc")
    u.allow("resetchannels", f"&{u.env}:EnrollmentCreated")
    result = u.run(
        "replay", "--from", "redis", "--app", "App", "--to", "queue", "--aggregate", enrollment,
        "--aggregate", invoice, "--yes", "--json",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["published"] == {"Svc": {"EnrollmentCreated": 1}}
    created = layout.queue_key("Svc", u.env, "EnrollmentCreated", "published")
    issued = layout.queue_key("Svc", u.env, "InvoiceIssued", "published")
    assert (u.admin.llen(created), u.admin.llen(issued)) == (1, 0)
    stopped = summary["stopped"]
    assert (stopped["aggregate_id"], stopped["event_type"]) == (invoice, "InvoiceIssued")
    for words in ("PUBLISH", f"{u.env}:InvoiceIssued", "ACL"):
        assert words in stopped["error"], (words, stopped)
