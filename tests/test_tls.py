"""Every command family over TLS, against servers that speak nothing else: a Redis with
``--port 0 --tls-port P`` and a PostgreSQL with ``ssl = on`` that refuses TCP without SSL, both
with certificates of a throwaway CA made here (tests/tls_servers.py). Redis is reached with
``rediss://`` and the CA in ``ssl_ca_certs`` (the server's certificate verified, its name
checked), PostgreSQL with ``sslmode=verify-full sslrootcert=CA``. A wrong CA or a name the
certificate does not hold exits 1 naming the server and what to check; a Redis that requires
client certificates is reached with ``ssl_certfile`` / ``ssl_keyfile``, a PostgreSQL role with
``cert`` authentication with ``sslcert`` / ``sslkey``; a TLS-only Redis Cluster with
``rediss+cluster://``. esctl's raw connections are checked to be TLS sockets, and what they
send compared with redis-py's pipelines (``resp.RAW_TLS`` off).

The servers are the module's own (started once, stopped by pid; the cluster and the Redis that
requires client certificates by their test); each test writes a store under an app and env of
its own and the Redis database is flushed after it."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import independent_writer as iw
import psycopg
import pytest
import redis
import redis.cluster
import redis_bytes as rb
from helpers import run_cli
from psycopg import sql
from psycopg.conninfo import make_conninfo
from tls_servers import Pki, make_pki, start_tls_cluster

from esctl import layout, redisio, servers
from esctl.config import redact
from esctl.demo import DemoSummary, write_demo_store
from esctl.redisio import resp
from esctl.replay import ReplayOptions, Selection, replay

SECRET = "tls-Secret-7f3a"
"""A password put into URLs and DSNs that must never be printed."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_redis(pki: Pki) -> Iterator[servers.LocalRedis]:
    """TLS only; also bound to 127.0.0.2, an address its certificate does not name."""
    server = servers.start_redis(
        tls=pki.server_files(), extra_args=["--bind", "127.0.0.1", "127.0.0.2"]
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_pg(pki: Pki) -> Iterator[servers.LocalPostgres]:
    server = servers.start_postgres(tls=pki.server_files())
    try:
        yield server
    finally:
        server.stop()


def rediss(server: servers.LocalRedis, ca: Path, host: str = "localhost", **params: str) -> str:
    return f"rediss://{host}:{server.port}/0?{urlencode({'ssl_ca_certs': str(ca), **params})}"


def verify_full(
    server: servers.LocalPostgres, ca: Path, dbname: str = "postgres", **params: str
) -> str:
    return make_conninfo(
        host="localhost",
        port=server.port,
        user="postgres",
        dbname=dbname,
        sslmode="verify-full",
        sslrootcert=str(ca),
        **params,
    )


@pytest.fixture
def url(tls_redis: servers.LocalRedis, pki: Pki) -> Iterator[str]:
    """The verified ``rediss://localhost`` URL; the database is flushed after the test."""
    url = rediss(tls_redis, pki.ca)
    yield url
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


@pytest.fixture
def store(url: str, app_name: str, env_name: str) -> DemoSummary:
    """The demo store (every kind of key, queues, defects), written over TLS by esctl's own
    demo writer (what ``esctl demo`` writes)."""
    client = redisio.connect(url)
    try:
        return write_demo_store(client, app=app_name, env=env_name)
    finally:
        client.close()


@pytest.fixture
def tls_db(tls_pg: servers.LocalPostgres, pki: Pki) -> Iterator[str]:
    """A new database on the SSL server: its ``sslmode=verify-full`` DSN."""
    admin = verify_full(tls_pg, pki.ca)
    name = "esctl_tls_t"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield verify_full(tls_pg, pki.ca, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def ok(*args: str, codes: tuple[int, ...] = (0,)) -> str:
    result = run_cli(*args)
    assert result.returncode in codes, (args, result.returncode, result.stderr[-2000:])
    return result.stdout


def queue_lists(client: redis.Redis, env: str) -> dict[bytes, list[bytes]]:
    return {
        key: rb.lrange(client, key)
        for key in client.scan_iter(match=f"*:{{{env}:*}}:*")
        if client.type(key) == b"list"
    }


# --- every command family ----------------------------------------------------------------


def test_reads_and_doctor_over_tls(
    tls_redis: servers.LocalRedis,
    tls_pg: servers.LocalPostgres,
    pki: Pki,
    url: str,
    store: DemoSummary,
) -> None:
    by_address = rediss(tls_redis, pki.ca, host="127.0.0.1")  # the certificate's IP SAN
    app = ("--app", store.app)
    stats = json.loads(ok("inspect", "stats", "--redis-url", url, *app, "--json"))
    assert stats["events"]["commit_ids"] == store.commit_ids
    aggregate = store.samples["aggregate"]
    shown = json.loads(
        ok("inspect", "aggregate", aggregate, "--redis-url", by_address, *app, "--json")
    )
    assert shown["ok"] and len(shown["events"]) == shown["commits"] >= 1
    assert all(e["data"] is not None for e in shown["events"])
    integrity = json.loads(
        ok("inspect", "integrity", "--redis-url", url, *app, "--json", codes=(3,))
    )
    assert integrity["problems"]
    found = json.loads(ok("events", "query", "--redis-url", by_address, *app, "--json"))
    assert len(found) == store.readable_events

    doctor = json.loads(
        ok(
            "doctor", "--redis-url", url, *app, "--env", store.env,
            "--pg-dsn", verify_full(tls_pg, pki.ca), "--json",
            codes=(3,),
        )
    )  # fmt: skip
    checks = {c["id"]: c for c in doctor["checks"]}
    assert checks["redis.reachable"]["status"] == "ok"
    assert "TLS, CA verified, hostname checked" in checks["redis.reachable"]["observed"]
    assert checks["redis.reachable"]["values"]["tls"] is True
    assert checks["pg.reachable"]["status"] == "ok"
    assert "SSL TLSv1." in checks["pg.reachable"]["observed"]
    assert "sslmode=verify-full" in checks["pg.reachable"]["observed"]
    assert checks["queues.stuck"]["status"] == "fail"  # the demo's stuck messages were read


def test_migrate_verify_plan_and_postgresql_reads_over_ssl(
    url: str, store: DemoSummary, tls_db: str
) -> None:
    both = ("--redis-url", url, "--pg-dsn", tls_db, "--app", store.app)
    plan = json.loads(ok("migrate", "plan", *both, "--json"))
    assert plan["events"] == store.commit_ids and plan["exact"]
    # --workers 2: forked processes open their own TLS connections
    migrated = json.loads(
        ok(
            "migrate", "redis-to-pg", *both, "--init-schema", "--workers", "2", "--json",
            codes=(3,),
        )
    )  # fmt: skip
    assert migrated["events_migrated"] > 0 and migrated["aggregates_quarantined"] > 0
    with psycopg.connect(tls_db) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)
        (events,) = conn.execute("SELECT count(*) FROM event").fetchone() or (0,)
    assert events == migrated["events_migrated"]
    verified = json.loads(ok("migrate", "verify", *both, "--json", codes=(3,)))
    assert verified["events_compared"] == events
    assert (verified["missing_in_pg"], verified["extra_in_pg"], verified["content_differs"]) == (
        0,
        0,
        0,
    )
    assert verified["unmigratable_in_redis"] == migrated["aggregates_quarantined"]

    pg_events = json.loads(ok("events", "query", "--source", "pg", *both, "--json"))
    assert len(pg_events) == events
    ok(
        "replay", "--from", "pg", "--all", "--to", "projection",
        "--projection", "esctl.projections.event_counts", "--checkpoint", "tls", *both,
    )  # fmt: skip
    with psycopg.connect(tls_db) as conn:
        (counted,) = conn.execute(
            "SELECT sum(events) FROM projections.event_counts"
        ).fetchone() or (0,)
    assert counted == events


def test_replay_to_stdout_and_to_queue_raw_and_through_redis_py(
    url: str, store: DemoSummary, monkeypatch: pytest.MonkeyPatch
) -> None:
    both = ("--redis-url", url, "--app", store.app)
    lines = ok("replay", "--from", "redis", "--all", "--to", "stdout", *both, codes=(3,))
    assert len(lines.splitlines()) == store.readable_events

    client = redis.Redis.from_url(url)
    before = queue_lists(client, store.env)
    done = json.loads(
        ok(
            "replay", "--from", "redis", "--all", "--to", "queue", "--env", store.env,
            "--yes", *both, "--json", codes=(3,),
        )
    )  # fmt: skip
    assert done["notifications"] > 0
    published = queue_lists(client, store.env)
    grown = {k: v[: len(v) - len(before.get(k, []))] for k, v in published.items()}
    grown = {k: v for k, v in grown.items() if v}
    assert sum(len(v) for v in grown.values()) >= done["notifications"]

    # The same publication in this process: through the raw connection (a TLS socket) and,
    # with RAW_TLS off, through redis-py's pipeline; both push exactly what the CLI pushed.
    esctl_client = redisio.connect(url)
    assert isinstance(esctl_client, redis.Redis)
    raw = resp._raw_connection(esctl_client)
    assert raw is not None and isinstance(raw.sock, ssl.SSLSocket)
    options = ReplayOptions(
        source="redis", target="queue", app=store.app, env=store.env,
        selection=Selection(all_events=True),
    )  # fmt: skip
    for raw_tls in (True, False):
        monkeypatch.setattr(resp, "RAW_TLS", raw_tls)
        for key, values in grown.items():
            client.ltrim(key, len(values), -1)  # LPUSH adds at the head
        assert queue_lists(client, store.env) == before
        replay(options, redis_client=esctl_client)
        assert queue_lists(client, store.env) == published, f"RAW_TLS={raw_tls}"
    client.close()
    esctl_client.close()


def test_queue_commands_over_tls(url: str, store: DemoSummary, tmp_path: Path) -> None:
    client = redis.Redis.from_url(url)
    env = ("--redis-url", url, "--env", store.env)
    listed = json.loads(ok("queue", "list", *env, "--json"))
    assert listed["totals"]["dead"] == store.dead_letters
    sub, kind = store.samples["dead_subscriber"], store.samples["dead_event_type"]
    peeked = json.loads(ok("queue", "peek", sub, kind, "--list", "dead", *env, "--json"))
    assert peeked["length"] >= 1

    stuck_sub, stuck_kind = store.samples["stuck_subscriber"], store.samples["stuck_event_type"]
    processing = layout.queue_key(stuck_sub, store.env, stuck_kind, "processing")
    stuck = client.llen(processing)
    requeued = json.loads(
        ok("queue", "requeue", stuck_sub, stuck_kind, "--older-than", "5m", "--yes", *env, "--json")
    )
    assert requeued["requeued"] == stuck >= 1 and client.llen(processing) == 0

    before = queue_lists(client, store.env)
    dead = layout.queue_key(sub, store.env, kind, "dead")
    backup = tmp_path / "dead.jsonl.zst"
    drained = json.loads(
        ok(
            "queue", "drain", sub, kind, "--list", "dead", "--to-file", str(backup),
            "--yes", *env, "--json",
        )
    )  # fmt: skip
    assert drained["drained"] == len(before[dead.encode()]) and client.llen(dead) == 0
    restored = json.loads(ok("queue", "restore", str(backup), "--yes", *env, "--json"))
    assert restored["restored"] == drained["drained"]
    assert queue_lists(client, store.env) == before
    client.close()


def test_compress_over_tls(url: str, app_name: str) -> None:
    client = redis.Redis.from_url(url)
    truth = iw.write_store(client, app=app_name, aggregates=10, threshold=None, seed=1)
    big = [e for e in truth.events() if len(e.payload.encode("utf-8")) > 1000]
    assert big
    app = ("--redis-url", url, "--app", app_name)
    dry = json.loads(ok("compress", *app, "--dry-run", "--json"))
    assert dry["dry_run"] is True and dry["plain_over_threshold"] == len(big)
    done = json.loads(ok("compress", *app, "--yes", "--json"))
    assert done["compressed"] == len(big) and done["bytes_saved"] > 0
    for event in big:
        stored = rb.hget(client, event.hash_key, event.commit_id)
        assert stored is not None and iw.gunzip_base64(stored) == event.payload
    client.close()


def test_client_certificate_required(pki: Pki, app_name: str, env_name: str) -> None:
    """``tls-auth-clients yes``: refused without ssl_certfile/ssl_keyfile, served with them
    (the raw fast path included: replay --to queue)."""
    server = servers.start_redis(tls=pki.server_files(require_client_cert=True))
    try:
        without = run_cli(
            "queue", "list", "--redis-url", rediss(server, pki.ca), "--env", env_name, "--json"
        )
        assert without.returncode == 1
        error = json.loads(without.stdout)["error"]
        assert f"localhost:{server.port}" in error["message"]
        assert "ssl_certfile" in error["hint"] and "ssl_keyfile" in error["hint"]

        url = rediss(
            server, pki.ca, ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.client_key)
        )
        client = redisio.connect(url)
        store = write_demo_store(client, app=app_name, env=env_name)
        listed = json.loads(ok("queue", "list", "--redis-url", url, "--env", env_name, "--json"))
        assert listed["totals"]["dead"] == store.dead_letters
        done = json.loads(
            ok(
                "replay", "--from", "redis", "--all", "--to", "queue", "--env", env_name,
                "--yes", "--redis-url", url, "--app", app_name, "--json", codes=(3,),
            )
        )  # fmt: skip
        assert done["notifications"] > 0
        client.close()
    finally:
        server.stop()


def test_command_families_on_a_tls_cluster(
    pki: Pki, tls_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rediss+cluster://`` with the CA: the cluster's paths (esctl's per-node pipelines on
    raw TLS connections, redis-py's cluster client and scripts) over TLS, the nodes' addresses
    learnt from the cluster."""
    nodes = start_tls_cluster(pki)
    try:
        url = f"rediss+cluster://localhost:{nodes[0].port}?ssl_ca_certs={pki.ca}"
        client = redisio.connect(url)
        assert isinstance(client, redis.cluster.RedisCluster)
        store = write_demo_store(client, app="TlsCluster", env="tls-cluster")
        keys = [
            key
            for node in nodes
            for key in redis.Redis.from_url(node.url, ssl_ca_certs=str(pki.ca)).scan_iter()
        ]
        commands = [("TYPE", key) for key in keys]
        replies = redisio.pipelined(client, commands)
        sockets = [c.sock for c in resp._raw_connections.nodes[client].values()]
        assert len(sockets) == len(nodes)
        assert all(isinstance(sock, ssl.SSLSocket) for sock in sockets)
        monkeypatch.setattr(resp, "RAW_TLS", False)  # redis-py's cluster pipeline
        assert redisio.pipelined(client, commands) == replies
        monkeypatch.setattr(resp, "RAW_TLS", True)
        both = ("--redis-url", url, "--app", store.app)
        found = json.loads(ok("events", "query", *both, "--json"))
        assert len(found) == store.readable_events
        integrity = json.loads(ok("inspect", "integrity", *both, "--json", codes=(3,)))
        assert integrity["commits"] == store.commit_ids
        pg = ("--pg-dsn", tls_db)
        migrated = json.loads(
            ok("migrate", "redis-to-pg", *both, *pg, "--init-schema", "--json", codes=(3,))
        )
        verified = json.loads(ok("migrate", "verify", *both, *pg, "--json", codes=(3,)))
        assert verified["events_compared"] == migrated["events_migrated"] > 0
        assert (verified["missing_in_pg"], verified["content_differs"]) == (0, 0)
        env = ("--env", store.env)
        done = json.loads(
            ok("replay", "--from", "pg", "--all", "--to", "queue", "--yes", *both, *pg, *env,
               "--json")
        )  # fmt: skip
        assert done["events"] == migrated["events_migrated"] and done["notifications"] > 0
        listed = json.loads(ok("queue", "list", "--redis-url", url, *env, "--json"))
        assert listed["totals"]["dead"] == store.dead_letters
        sub, kind = store.samples["dead_subscriber"], store.samples["dead_event_type"]
        backup = tmp_path / "dead.jsonl.zst"
        drain = ("queue", "drain", sub, kind, "--list", "dead", "--to-file", str(backup))
        drained = json.loads(ok(*drain, "--yes", "--redis-url", url, *env, "--json"))
        restored = json.loads(
            ok("queue", "restore", str(backup), "--yes", "--redis-url", url, *env, "--json")
        )
        assert restored["restored"] == drained["drained"] >= 1
        client.close()
    finally:
        for node in nodes:
            node.stop()


# --- refusals: exit 1, the server named, what to check -------------------------------------


def _refused(args: list[str], server: str, *hint_words: str, human: bool = False) -> None:
    """``args`` exit 1 with a connection error naming ``server`` and hinting ``hint_words``
    (also in the human form with ``human``); SECRET is never printed."""
    result = run_cli(*args, "--json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["exit_code"] == 1 and document["error"]["kind"] == "connection"
    assert server in document["error"]["message"]
    for word in hint_words:
        assert word in document["error"]["hint"], document["error"]
    outputs = [result.stdout, result.stderr]
    if human:
        text = run_cli(*args)
        assert text.returncode == 1 and server in text.stderr and not text.stdout
        assert all(word in text.stderr for word in hint_words)
        outputs.append(text.stderr)
    assert not [output for output in outputs if SECRET in output]


def test_redis_wrong_ca_or_hostname_exits_1_naming_the_server(
    tls_redis: servers.LocalRedis, pki: Pki
) -> None:
    port = tls_redis.port
    wrong_ca = f"rediss://user:{SECRET}@localhost:{port}/0?ssl_ca_certs={pki.wrong_ca}"
    stats = ["inspect", "stats", "--app", "A", "--redis-url"]
    _refused([*stats, wrong_ca], f"localhost:{port}", "ssl_ca_certs", human=True)
    # 127.0.0.2 reaches the server, but its certificate names localhost and 127.0.0.1 only
    misnamed = rediss(tls_redis, pki.ca, host="127.0.0.2")
    _refused(
        ["queue", "list", "--env", "e", "--redis-url", misnamed],
        f"127.0.0.2:{port}",
        "ssl_check_hostname",
    )
    _refused([*stats, f"redis://localhost:{port}/0"], f"localhost:{port}", "rediss://")

    doctor = run_cli("doctor", "--redis-url", wrong_ca, "--json")
    assert doctor.returncode == 3 and SECRET not in doctor.stdout + doctor.stderr
    reachable = next(c for c in json.loads(doctor.stdout)["checks"] if c["id"] == "redis.reachable")
    assert reachable["status"] == "fail" and f"localhost:{port}" in reachable["observed"]
    assert "ssl_ca_certs" in reachable["action"]


def test_postgresql_wrong_ca_or_hostname_exits_1_naming_the_server(
    url: str, tls_pg: servers.LocalPostgres, pki: Pki
) -> None:
    port = f"port={tls_pg.port}"
    wrong_ca = make_conninfo(verify_full(tls_pg, pki.wrong_ca), password=SECRET)
    args = ["migrate", "plan", "--app", "A", "--redis-url", url, "--pg-dsn"]
    _refused([*args, wrong_ca], port, "sslrootcert", human=True)
    # libpq connects to hostaddr and checks the certificate against host
    misnamed = make_conninfo(verify_full(tls_pg, pki.ca), host="db.example", hostaddr="127.0.0.1")
    _refused([*args, misnamed], port, "does not name the host")
    no_ssl = make_conninfo(verify_full(tls_pg, pki.ca), sslmode="disable")
    _refused([*args, no_ssl], port, "sslmode=verify-full")


def test_postgresql_ssl_settings_from_libpq_environment_variables(
    url: str, tls_pg: servers.LocalPostgres, pki: Pki
) -> None:
    """PGSSLMODE / PGSSLROOTCERT apply where the DSN says nothing (libpq's own rule)."""
    dsn = make_conninfo(host="localhost", port=tls_pg.port, user="postgres", dbname="postgres")
    args = ("migrate", "plan", "--app", "A", "--redis-url", url, "--pg-dsn", dsn, "--json")
    for ca, code in ((pki.ca, 0), (pki.wrong_ca, 1)):
        result = run_cli(*args, env={"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(ca)})
        assert result.returncode == code, result.stderr
    assert "sslrootcert" in json.loads(result.stdout)["error"]["hint"]


def _wait_for_hba(dsn: str) -> None:
    """Until the reloaded pg_hba.conf refuses ``dsn`` (a connection without a certificate)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=5).close()
        except psycopg.OperationalError:
            return
        assert time.monotonic() < deadline, "pg_hba.conf was not reloaded within 30 s"
        time.sleep(0.2)


def test_postgresql_client_certificate_sslcert_sslkey(
    url: str, tls_pg: servers.LocalPostgres, pki: Pki, tls_db: str
) -> None:
    """A role that may only log in with a client certificate (``cert`` authentication: the
    certificate's CN names the role) is reached with libpq's sslcert / sslkey."""
    hba = tls_pg.workdir / "data" / "pg_hba.conf"
    original = hba.read_text()
    with psycopg.connect(tls_db, autocommit=True) as admin:
        admin.execute("CREATE ROLE esctl LOGIN")
        try:
            hba.write_text("hostssl all esctl all cert\n" + original)
            admin.execute("SELECT pg_reload_conf()")
            without = make_conninfo(tls_db, user="esctl")
            _wait_for_hba(without)
            args = ("migrate", "plan", "--app", "A", "--redis-url", url, "--json", "--pg-dsn")
            _refused([*args, without], f"port={tls_pg.port}", "sslcert")
            with_cert = make_conninfo(
                without, sslcert=str(pki.client_cert), sslkey=str(pki.client_key)
            )
            plan = json.loads(ok(*args, with_cert))
            assert plan["target_tables_present"] is False
        finally:
            hba.write_text(original)
            admin.execute("SELECT pg_reload_conf()")
            admin.execute("DROP ROLE esctl")


def test_bad_tls_parameters_in_the_url_are_config_errors(
    tls_redis: servers.LocalRedis, pki: Pki
) -> None:
    for params in ({"ssl_ca_cert": "x"}, {"ssl_cert_reqs": "always"}):
        url = rediss(tls_redis, pki.ca, **params)
        result = run_cli("queue", "list", "--env", "e", "--redis-url", url, "--json")
        assert result.returncode == 1, result.stderr
        error = json.loads(result.stdout)["error"]
        assert error["kind"] == "config" and "ssl_ca_certs" in error["hint"]
        assert "Traceback" not in result.stderr


def test_redact_hides_passwords_in_tls_urls_and_dsns() -> None:
    for text in (
        f"rediss://app:{SECRET}@cache.internal:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required",
        f"rediss://:{SECRET}@cache.internal:6380/2?ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
        f"rediss://cache.internal:6380/0?ssl_keyfile=/k.pem&ssl_password={SECRET}",
        f"rediss+cluster://app:{SECRET}@node-1:6380?ssl_ca_certs=/etc/ca.pem",
        f"host=db port=5432 sslmode=verify-full sslrootcert=/ca.pem password={SECRET}",
        f"postgresql://app:{SECRET}@db/events?sslmode=verify-full&sslrootcert=/ca.pem",
        f"host=db sslcert=/c.pem sslkey=/k.pem sslpassword={SECRET}",
    ):
        shown = redact(text)
        assert SECRET not in shown and "***" in shown
        assert ("6380" in shown) or ("db" in shown)


# --- an expired certificate, TLS aimed at a plain port, SSL asked of a server without it -------


def _wait_for_pg(dsn: str, *, refused: bool) -> None:
    """Until a new connection to ``dsn`` fails (``refused``) or succeeds: PostgreSQL loads a
    changed certificate on its reload, for the connections after it."""
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=5).close()
            if not refused:
                return
        except psycopg.OperationalError:
            if refused:
                return
        assert time.monotonic() < deadline, "PostgreSQL did not reload its certificate in 30 s"
        time.sleep(0.1)


def test_an_expired_server_certificate_is_named_as_such(
    tls_redis: servers.LocalRedis, tls_pg: servers.LocalPostgres, pki: Pki
) -> None:
    """A certificate whose notAfter has passed (signed by the right CA, naming the host) is
    said to have expired, with what to do: renew it (or check the clock). The CA hint said to
    point ssl_ca_certs / sslrootcert at another CA; libpq says only "certificate verify
    failed", so esctl asks OpenSSL why with a handshake of its own."""
    admin = redis.Redis.from_url(rediss(tls_redis, pki.ca))
    swap = ("CONFIG", "SET", "tls-cert-file", "tls-key-file")

    def serve(cert: Path, key: Path) -> None:
        admin.execute_command(*swap[:3], str(cert), swap[3], str(key))

    serve(pki.expired_cert, pki.expired_key)
    try:
        result = run_cli("queue", "list", "--env", "e", "--redis-url", rediss(tls_redis, pki.ca),
                         "--json")  # fmt: skip
    finally:
        serve(pki.server_cert, pki.server_key)
        admin.close()
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "connection" and f"localhost:{tls_redis.port}" in error["message"]
    assert "certificate has expired" in error["message"], error
    assert "has expired: renew it" in error["hint"] and "tls-cert-file" in error["hint"], error

    data = tls_pg.workdir / "data"
    kept = {name: (data / name).read_bytes() for name in ("server.crt", "server.key")}
    dsn = verify_full(tls_pg, pki.ca)
    with psycopg.connect(dsn, autocommit=True) as conn:
        (data / "server.crt").write_bytes(pki.expired_cert.read_bytes())  # owner and mode kept
        (data / "server.key").write_bytes(pki.expired_key.read_bytes())
        try:
            conn.execute("SELECT pg_reload_conf()")
            _wait_for_pg(dsn, refused=True)
            result = run_cli("migrate", "plan", "--app", "A", "--redis-url",
                             rediss(tls_redis, pki.ca), "--pg-dsn", dsn, "--json")  # fmt: skip
        finally:
            for name, content in kept.items():
                (data / name).write_bytes(content)
            conn.execute("SELECT pg_reload_conf()")
    _wait_for_pg(dsn, refused=False)
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "connection" and f"port={tls_pg.port}" in error["message"]
    assert "certificate verify failed (certificate has expired)" in error["message"], error
    assert "has expired: renew it" in error["hint"] and "ssl_cert_file" in error["hint"], error


def test_tls_asked_of_a_server_that_does_not_speak_it_says_so(
    redis_url: str, pg_admin_dsn: str, pki: Pki
) -> None:
    """``rediss://`` aimed at a plain Redis's port: the server reads the TLS hello as a command
    and waits for the rest of it (or answers it with an error), so the handshake timed out,
    and esctl said only to check that Redis runs; it now finds that the port answers a plain
    PING and says to use ``redis://`` there. ``sslmode=require`` against a PostgreSQL without
    SSL: what libpq says, and what to do about it."""
    kw = redis.connection.parse_url(redis_url)
    if redis_url.startswith("rediss") or "path" in kw:
        pytest.skip("the session's Redis is not a plain TCP server")
    url = f"rediss://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/0?" + urlencode(
        {"ssl_ca_certs": str(pki.ca), "socket_connect_timeout": "1"}
    )
    result = run_cli("queue", "list", "--env", "e", "--redis-url", url, "--json")
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "connection", error
    assert "does not speak TLS" in error["hint"] and "redis://" in error["hint"], error

    with psycopg.connect(pg_admin_dsn) as conn:
        row = conn.execute("SHOW ssl").fetchone()
    if row is not None and row[0] == "on":
        pytest.skip("the session's PostgreSQL has SSL on")
    dsn = make_conninfo(pg_admin_dsn, sslmode="require")
    result = run_cli("events", "query", "--source", "pg", "--app", "A", "--pg-dsn", dsn, "--json")
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)["error"]
    assert "server does not support SSL" in error["message"], error
    assert "does not accept SSL" in error["hint"] and "sslmode=" in error["hint"], error
