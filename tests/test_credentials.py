"""Real credentials: a Redis with ``requirepass`` and ACL users, a PostgreSQL whose roles log in
with scram-sha-256, passwords given in URLs, DSNs, environment variables, profiles and a
``.pgpass`` file. Wrong credentials exit 1 naming the server; the password never appears in
anything esctl prints or writes, in any command family, error path or ``--debug``, on a pipe or
a terminal, nor in what PostgreSQL sees (its log records every session's application_name and
every statement)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import redis
import zstandard
from credservers import PASSWORD, SCRAM_HBA, pg_url, user_url
from helpers import run_cli
from psycopg import sql
from terminal import ESCTL, run_on_terminal

from esctl import servers
from esctl.demo import DemoSummary, write_demo_store

WRONG = "Wr0ng-S3cr3t-QQQ"
ROLE = "esctl_owner"
DB = "creds"
APP = "CredsApp"
ENV = "creds"


class Servers:
    def __init__(self, redis_server: servers.LocalRedis, pg: servers.LocalPostgres) -> None:
        self.redis = redis_server
        self.pg = pg
        self.admin = redis.Redis(port=redis_server.port, password=PASSWORD)
        self.demo: DemoSummary = write_demo_store(self.admin, app=APP, env=ENV)

    def requirepass_url(self, password: str | None = PASSWORD) -> str:
        secret = f":{password}@" if password is not None else ""
        return f"redis://{secret}127.0.0.1:{self.redis.port}/0"

    def acl_url(self, user: str = "esctl-ops", password: str = PASSWORD) -> str:
        return user_url(self.redis.port, user, password)

    def pg_url(self, role: str = ROLE, password: str | None = PASSWORD) -> str:
        return pg_url(self.pg.port, role, DB, password)

    def pg_log(self) -> str:
        return (self.pg.workdir / "postgres.log").read_text("utf-8", "replace")


@pytest.fixture(scope="module")
def creds() -> Iterator[Servers]:
    redis_server = servers.start_redis()
    pg = servers.start_postgres(hba_lines=SCRAM_HBA)
    try:
        with redis.Redis.from_url(redis_server.url) as admin:
            admin.config_set("requirepass", PASSWORD)  # the default user's password
        with redis.Redis(port=redis_server.port, password=PASSWORD) as admin:
            admin.execute_command(
                "ACL", "SETUSER", "esctl-ops", "on", f">{PASSWORD}", "~*", "&*", "+@all"
            )
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            admin.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
            admin.execute(f"CREATE DATABASE {DB} OWNER {ROLE}")
            # Every session's application_name and every statement in the server's log.
            admin.execute("ALTER SYSTEM SET log_connections = on")
            admin.execute("ALTER SYSTEM SET log_statement = 'all'")
            admin.execute("ALTER SYSTEM SET log_line_prefix = 'app=[%a] user=%u '")
            admin.execute("SELECT pg_reload_conf()")
        made = Servers(redis_server, pg)
        migrated = run_cli(
            "migrate",
            "redis-to-pg",
            "--init-schema",
            "--app",
            APP,
            "--redis-url",
            made.acl_url(),
            "--pg-dsn",
            made.pg_url(),
        )
        assert migrated.returncode == 3, migrated.stderr  # the demo's planted defects
        yield made
    finally:
        redis_server.stop()
        pg.stop()


def no_secret(result: Any, *secrets: str) -> None:
    for secret in (PASSWORD, *secrets):
        assert secret not in result.stdout, result.stdout[-3000:]
        assert secret not in result.stderr, result.stderr[-3000:]


def test_passwords_in_urls_dsns_environment_profiles_and_pgpass_work(
    creds: Servers, tmp_path: Path
) -> None:
    result = run_cli("inspect", "stats", "--app", APP, "--redis-url", creds.requirepass_url())
    assert result.returncode == 0, result.stderr
    result = run_cli("queue", "list", "--env", ENV, "--redis-url", creds.acl_url(), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["queues"]
    no_secret(result)

    # PostgreSQL: the password in a key=value DSN, then only in PGPASSFILE.
    kv = f"host=127.0.0.1 port={creds.pg.port} dbname={DB} user={ROLE} password={PASSWORD}"
    result = run_cli(
        "events", "query", "--source", "pg", "--app", APP, "--limit", "3", "--pg-dsn", kv
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{creds.pg.port}:{DB}:{ROLE}:{PASSWORD}\n")
    pgpass.chmod(0o600)
    result = run_cli(
        "migrate", "verify", "--workers", "1", "--app", APP, "--json",
        "--redis-url", creds.acl_url(), "--pg-dsn", creds.pg_url(password=None),
        env={"PGPASSFILE": str(pgpass)},
    )  # fmt: skip
    assert result.returncode == 3, result.stderr  # the demo's unmigratable streams
    assert json.loads(result.stdout)["missing_in_pg"] == 0
    no_secret(result)

    # Environment variables and a profile; config show hides the password either way.
    env = {"ESCTL_REDIS_URL": creds.acl_url(), "ESCTL_PG_DSN": creds.pg_url()}
    result = run_cli("config", "show", "--json", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["settings"]
    assert "***" in shown["redis_url"]["value"] and "***" in shown["pg_dsn"]["value"]
    no_secret(result)
    result = run_cli("inspect", "stats", "--app", APP, env=env)
    assert result.returncode == 0, result.stderr
    config = tmp_path / "esctl.toml"
    config.write_text(f'[prod]\nredis_url = "{creds.requirepass_url()}"\napp = "{APP}"\n')
    config.chmod(0o600)
    result = run_cli("inspect", "stats", "--config", str(config), "--profile", "prod", "--json")
    assert result.returncode == 0, result.stderr
    no_secret(result)


@pytest.mark.parametrize(
    ("server", "case"),
    [
        ("redis", "wrong password"),
        ("redis", "unknown user"),
        ("redis", "no password"),
        ("pg", "wrong password"),
        ("pg", "unknown user"),
        ("pg", "no password"),
    ],
)
def test_wrong_credentials_exit_1_naming_the_server_that_refused(
    creds: Servers, tmp_path: Path, server: str, case: str
) -> None:
    if server == "redis":
        url = {
            "wrong password": creds.requirepass_url(WRONG),
            "unknown user": creds.acl_url("nobody"),
            "no password": creds.requirepass_url(None),
        }[case]
        words = ["queue", "list", "--env", ENV, "--redis-url", url]
        port, check = creds.redis.port, "password in --redis-url"
    else:
        dsn = {
            "wrong password": creds.pg_url(password=WRONG),
            "unknown user": creds.pg_url(role="nobody"),
            "no password": creds.pg_url(password=None),
        }[case]
        words = ["events", "query", "--source", "pg", "--app", APP, "--pg-dsn", dsn]
        port, check = creds.pg.port, ".pgpass"
    env = {"PGPASSFILE": str(tmp_path / "none")}  # not the developer's ~/.pgpass
    result = run_cli(*words, "--json", "--debug", env=env)
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "connection", error
    assert f"127.0.0.1:{port}" in error["message"], error
    assert (
        "refused the credentials" in error["message"]
        or "asks for a password" in error["message"]
        or "no password supplied" in error["message"]
    ), error
    assert check in error["hint"], error
    assert "Traceback" in result.stderr  # --debug shows it: without the password either
    no_secret(result, WRONG)


def test_the_password_never_appears_in_any_output_or_file(creds: Servers, tmp_path: Path) -> None:
    r, p = ["--redis-url", creds.acl_url()], ["--pg-dsn", creds.pg_url()]
    app, env = ["--app", APP], ["--env", ENV]
    q = max(creds.demo.queues, key=lambda q: q.dead_letters)
    metrics, doctor_metrics = tmp_path / "queues.prom", tmp_path / "doctor.prom"
    backup, pruned = tmp_path / "dead.jsonl.zst", tmp_path / "pruned.jsonl.zst"
    log_start = len(creds.pg_log())
    runs: list[tuple[set[int], list[str]]] = [
        ({0}, ["inspect", "stats", *app, *r, "--debug"]),
        ({3}, ["inspect", "integrity", *app, *r, "--json"]),
        ({0}, ["events", "query", "--source", "pg", "--limit", "5", *app, *p, "--debug"]),
        ({0}, ["migrate", "plan", *app, *r, *p, "--json", "--debug"]),
        ({3}, ["migrate", "redis-to-pg", *app, *r, *p, "--debug"]),
        ({0}, ["migrate", "prune", "--dry-run", *app, *r, *p, "--json", "--debug"]),
        (
            {0},
            [
                "replay",
                "--from",
                "pg",
                "--all",
                "--limit",
                "5",
                "--to",
                "stdout",
                *app,
                *r,
                *p,
                *env,
                "--debug",
            ],
        ),
        (
            {0},
            [
                "replay",
                "--from",
                "pg",
                "--all",
                "--limit",
                "5",
                "--to",
                "queue",
                "--dry-run",
                *app,
                *r,
                *p,
                *env,
                "--json",
            ],
        ),
        ({0}, ["queue", "list", *env, *r, "--metrics-file", str(metrics), "--debug"]),
        ({0}, ["queue", "peek", q.subscriber, q.event_type, "--list", "dead", *env, *r, "--json"]),
        (
            {0},
            [
                "queue",
                "requeue",
                q.subscriber,
                q.event_type,
                "--from",
                "dead",
                "--dry-run",
                *env,
                *r,
                "--json",
            ],
        ),
        (
            {0},
            [
                "queue",
                "drain",
                q.subscriber,
                q.event_type,
                "--to-file",
                str(backup),
                "--yes",
                *env,
                *r,
                "--debug",
            ],
        ),
        ({0}, ["queue", "restore", str(backup), "--yes", *env, *r, "--json", "--debug"]),
        (
            {0, 3},
            [
                "doctor",
                "--read-only",
                *app,
                *env,
                *r,
                *p,
                "--metrics-file",
                str(doctor_metrics),
                "--debug",
            ],
        ),
        ({0}, ["compress", "--dry-run", *app, *r, "--json", "--debug"]),
        # error paths: unreachable servers, a schema that is not there, an unknown app or key
        (
            {1},
            [
                "inspect",
                "stats",
                *app,
                "--redis-url",
                f"redis://esctl-ops:{PASSWORD}@127.0.0.1:1/0",
                "--debug",
                "--json",
            ],
        ),
        (
            {1},
            [
                "migrate",
                "verify",
                *app,
                *r,
                "--pg-dsn",
                f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:1/{DB}",
                "--debug",
            ],
        ),
        ({1}, ["migrate", "verify", *app, *r, *p, "--pg-schema", "nosuch", "--debug", "--json"]),
        ({1}, ["inspect", "aggregate", "no-such-aggregate", "--app", "NoSuchApp", *r, "--debug"]),
        ({2}, ["migrate", "prune", *app, *r, *p, "--backup-file", str(pruned), "--debug"]),
    ]
    unexpected = []
    for codes, words in runs:
        result = run_cli(*words)
        if result.returncode not in codes:
            unexpected.append((words[:2], result.returncode, result.stderr[-600:]))
        no_secret(result)
    assert unexpected == []
    for written in (metrics, doctor_metrics, backup):
        data = written.read_bytes()
        assert data and PASSWORD.encode() not in data, written
    with zstandard.ZstdDecompressor().stream_reader(backup.open("rb")) as reader:
        assert PASSWORD.encode() not in reader.read()
    assert not pruned.exists()  # refused without --yes and a terminal

    # PostgreSQL saw esctl's own session names only, and never the password.
    log = creds.pg_log()[log_start:]
    names = set(re.findall(r"app=\[([^\]]*)\] user=" + ROLE, log))
    assert names and all(n.startswith("esctl") for n in names), names
    assert PASSWORD not in log

    # The demo (its own servers) with secret-bearing settings in the environment.
    secret_env = {"ESCTL_REDIS_URL": creds.acl_url(), "ESCTL_PG_DSN": creds.pg_url()}
    result = run_cli("demo", "--json", env=secret_env)
    assert result.returncode == 0, result.stderr
    no_secret(result)


@pytest.mark.parametrize(
    "words",
    [
        ["inspect", "integrity", "--app", APP, "--redis-url", "REDIS"],
        [
            "migrate",
            "verify",
            "--workers",
            "1",
            "--app",
            APP,
            "--redis-url",
            "REDIS",
            "--pg-dsn",
            "PG",
        ],
        ["queue", "list", "--env", ENV, "--redis-url", "WRONG"],
    ],
    ids=["inspect-integrity", "migrate-verify", "wrong-password"],
)
def test_progress_bars_and_messages_on_a_terminal_never_show_the_password(
    creds: Servers, words: list[str]
) -> None:
    given = {"REDIS": creds.acl_url(), "PG": creds.pg_url(), "WRONG": creds.acl_url(password=WRONG)}
    screen = run_on_terminal([*ESCTL, *[given.get(w, w) for w in words], "--debug"], size="120x40")
    assert screen.exit_code in (1, 3), screen.describe()
    assert screen.text.strip(), screen.describe()
    assert PASSWORD not in screen.text and WRONG not in screen.text, screen.describe()


# --- a password holding the characters a URL gives a meaning to ------------------------------

SPECIAL = "Zq9@Kx7:Wm3/Rt5%41#Jh2?Vb8"
"""A password with every character the README says to percent-encode in a URL (and a ``%41``
that, left as it is, a URL parser reads as ``A``)."""
SPECIAL_PIECES = [*re.split(r"[@:/#?]", SPECIAL), "Rt5A"]
"""What a parser that cut the password at one of those characters could quote as a host, a
port or a query: none of them may appear in what esctl prints."""


def special_url(creds: Servers, encoded: bool) -> str:
    secret = quote(SPECIAL, safe="") if encoded else SPECIAL
    return f"redis://esctl-special:{secret}@127.0.0.1:{creds.redis.port}/0"


def special_pg_url(creds: Servers, encoded: bool) -> str:
    secret = quote(SPECIAL, safe="") if encoded else SPECIAL
    return f"postgresql://esctl_special:{secret}@127.0.0.1:{creds.pg.port}/{DB}"


@pytest.fixture(scope="module")
def special(creds: Servers) -> Iterator[Servers]:
    """An ACL user and a PostgreSQL role (reading everything) whose password is SPECIAL."""
    creds.admin.execute_command(
        "ACL", "SETUSER", "esctl-special", "on", f">{SPECIAL}", "~*", "&*", "+@all"
    )
    with psycopg.connect(creds.pg.dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE esctl_special LOGIN PASSWORD {}").format(sql.Literal(SPECIAL))
        )
        admin.execute("GRANT pg_read_all_data TO esctl_special")
    try:
        yield creds
    finally:
        creds.admin.execute_command("ACL", "DELUSER", "esctl-special")
        with psycopg.connect(creds.pg.dsn, autocommit=True) as admin:
            admin.execute("DROP ROLE esctl_special")


def no_piece_of_special(result: Any) -> None:
    for piece in SPECIAL_PIECES:
        assert piece not in result.stdout + result.stderr, (piece, result.stdout, result.stderr)


def test_a_password_with_url_characters_works_percent_encoded(
    special: Servers, tmp_path: Path
) -> None:
    """The README's rule: percent-encoded in URLs; in a .pgpass file with ``:`` (and ``\\``)
    escaped by ``\\``."""
    result = run_cli("inspect", "stats", "--app", APP, "--redis-url", special_url(special, True))
    assert result.returncode == 0, result.stderr
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(
        f"127.0.0.1:{special.pg.port}:{DB}:esctl_special:{SPECIAL.replace(':', chr(92) + ':')}\n"
    )
    pgpass.chmod(0o600)
    no_password = f"postgresql://esctl_special@127.0.0.1:{special.pg.port}/{DB}"
    for dsn, env in (
        (special_pg_url(special, True), {}),
        (no_password, {"PGPASSFILE": str(pgpass)}),
    ):
        result = run_cli(
            "events", "query", "--source", "pg", "--app", APP, "--limit", "1", "--pg-dsn", dsn,
            env=env,
        )  # fmt: skip
        assert result.returncode == 0, (dsn, result.stderr)
        no_piece_of_special(result)


@pytest.mark.parametrize(
    "case", ["redis option", "redis env", "doctor profile", "config show", "pg url", "pg kv"]
)
def test_a_password_with_url_characters_left_unencoded_is_refused_and_never_shown(
    special: Servers, tmp_path: Path, case: str
) -> None:
    """Written as it is, ``@ : / % # ?`` make the URL's parser cut the password short and read
    the rest as the host, the port or a query, and its message quoted that piece (``Port could
    not be cast to integer value as 'Kx7'``); the URL was shown with the password's tail after
    the ``***``. esctl now refuses such a URL before it connects, saying to percent-encode,
    and shows no piece of the password: in messages, --json, doctor, config show."""
    raw_redis, raw_pg = special_url(special, False), special_pg_url(special, False)
    config = tmp_path / "esctl.toml"
    config.write_text(
        f"[prod]\nredis_url = '{raw_redis}'\npg_dsn = '{raw_pg}'\napp = '{APP}'\nenv = '{ENV}'\n"
    )
    config.chmod(0o600)
    profile = ("--config", str(config), "--profile", "prod")
    kv_unquoted = (
        f"host=127.0.0.1 port={special.pg.port} password=Kx7 Wm3 user=esctl_special dbname={DB}"
    )
    words, env, code = {
        "redis option": (["inspect", "stats", "--app", APP, "--redis-url", raw_redis], {}, 1),
        "redis env": (["queue", "list", "--env", ENV], {"ESCTL_REDIS_URL": raw_redis}, 1),
        "doctor profile": (["doctor", "--read-only", *profile], {}, 3),
        "config show": (["config", "show", *profile], {}, 0),
        "pg url": (["events", "query", "--source", "pg", "--app", APP, "--pg-dsn", raw_pg], {}, 1),
        "pg kv": (
            ["events", "query", "--source", "pg", "--app", APP, "--pg-dsn", kv_unquoted],
            {},
            1,
        ),
    }[case]
    result = run_cli(*words, "--json", env=env)
    assert result.returncode == code, result.stderr
    no_piece_of_special(result)
    document = json.loads(result.stdout)
    if case == "config show":
        shown = document["settings"]
        assert (
            shown["redis_url"]["value"]
            == f"redis://esctl-special:***@127.0.0.1:{special.redis.port}/0"
        )
        assert (
            shown["pg_dsn"]["value"]
            == f"postgresql://esctl_special:***@127.0.0.1:{special.pg.port}/{DB}"
        )
        return
    if case == "doctor profile":
        checks = {c["id"]: c for c in document["checks"]}
        for check in ("redis.reachable", "pg.reachable"):
            assert checks[check]["status"] == "fail", checks[check]
            assert "not percent-encoded" in checks[check]["observed"], checks[check]
            assert "%2F" in checks[check]["action"], checks[check]
        return
    error = document["error"]
    assert error["kind"] == "connection", error
    if case == "pg kv":  # libpq refuses it; the word after the space is not quoted back
        assert "single quotes" in error["hint"], error
        return
    server = special.pg.port if case.startswith("pg") else special.redis.port
    assert f"127.0.0.1:{server}" in error["message"], error
    assert "not percent-encoded" in error["message"], error
    assert all(code in error["hint"] for code in ("%40", "%3A", "%2F", "%3F", "%23", "%25"))
