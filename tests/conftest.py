"""The test harness: real Redis and PostgreSQL servers, isolated per test.

Servers: ``ESCTL_TEST_REDIS_URL`` / ``ESCTL_TEST_PG_DSN`` when set (CI points them at the
machine's servers), otherwise throwaway servers started by :mod:`esctl.servers` the first time
a test asks for one and stopped at the end of the session (a killed run takes them down too).

Isolation:
- Redis: the session claims one database number 1..15 that is empty and that no other client
  has selected (another test run on the same server claims a different one). It is flushed
  before and after every test that uses it. Database 0, and any database that held keys or had
  a client when the session started, are never touched.
- PostgreSQL: every test that asks for ``pg_dsn`` gets a database of its own, created from
  template0 (UTF-8, C collation, as the throwaway cluster is) and dropped WITH (FORCE) after the
  test. Measured on this machine's PostgreSQL 15: 30-50 ms for create + connect + drop.
- Keys are keyed by ApplicationName and environment: ``app_name`` / ``env_name`` are new for
  every test.

End-to-end CLI tests use ``helpers.run_cli`` (``from helpers import run_cli``).
"""

from __future__ import annotations

import compileall
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
import redis
from hypothesis import settings
from psycopg import sql
from psycopg.conninfo import make_conninfo

import esctl
from esctl import servers
from esctl.config import redact

# No per-example deadline: on a loaded 2-core CI machine a slow example is not a failure.
settings.register_profile("esctl", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "esctl"))


def pytest_configure(config: pytest.Config) -> None:
    """Compile esctl's modules once, as a non-editable install would: the suite starts about
    1,400 esctl processes, and where PYTHONDONTWRITEBYTECODE is set (as on the CI machine) each
    compiled every module it imports from source again, 0.1 CPU-s a run (nearly 2 CPU-minutes
    a run of the suite). Up-to-date files are skipped: the xdist workers find them done."""
    compileall.compile_dir(os.path.dirname(esctl.__file__), quiet=1)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject.toml): a worker per core and one more. A worker spends part of
    its time waiting (servers starting, a process polled, a timeout run out), which a third
    worker fills: measured on the 2-core CI machine, two workers kept the cores 86% busy."""
    return len(os.sched_getaffinity(0)) + 1


REDIS_URL_ENV = "ESCTL_TEST_REDIS_URL"
PG_DSN_ENV = "ESCTL_TEST_PG_DSN"
_CLAIM_NAME = "esctl-tests-claim"


# --- Redis ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the Redis server the session uses (``ESCTL_TEST_REDIS_URL`` or a throwaway
    server). Tests should not write to it directly: use ``redis_test_url`` / ``redis_client``,
    which point at the session's own database number."""
    url = os.environ.get(REDIS_URL_ENV)
    if url:
        yield url
        return
    server = servers.start_redis()
    try:
        yield server.url
    finally:
        server.stop()


def with_redis_db(url: str, db: int) -> str:
    """``url`` with its database number replaced by ``db``."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"]
    if parts.scheme == "unix":  # the path is the socket's: the number goes in the query
        return f"unix://{parts.path}?{urlencode([*query, ('db', str(db))])}"
    return urlunsplit(parts._replace(path=f"/{db}", query=urlencode(query)))


@contextmanager
def claimed_redis_db(redis_url: str) -> Iterator[int]:
    """A database number (1..15) that is empty and that no other client has selected, held
    for the block.

    A connection named ``esctl-tests-claim`` stays selected on it until the block ends, so a
    concurrent run skips it (a database some client has selected counts as taken); when two
    runs claim the same number at once, the claim with the lower client id wins."""
    probe = redis.Redis.from_url(redis_url)
    try:
        taken = {int(c["db"]) for c in probe.client_list()}
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {redact(redis_url)} ({REDIS_URL_ENV}) is not usable: {exc}")
    finally:
        probe.close()
    for db in range(1, 16):
        if db in taken:
            continue
        claim = redis.Redis.from_url(with_redis_db(redis_url, db), single_connection_client=True)
        claim.client_setname(_CLAIM_NAME)
        my_id = int(claim.client_id())
        rivals = [
            int(c["id"])
            for c in claim.client_list()
            if int(c["db"]) == db
            and int(c["id"]) != my_id
            # another run's claim that came first, or any other client using this database
            and (c.get("name") != _CLAIM_NAME or int(c["id"]) < my_id)
        ]
        if rivals or claim.dbsize() != 0:
            claim.close()
            continue
        try:
            yield db
        finally:
            claim.close()
        return
    pytest.fail(
        f"Redis at {redact(redis_url)}: no database 1..15 is empty and unused; "
        "the tests flush the database they use, so they never use one that holds data"
    )


@pytest.fixture(scope="session")
def redis_db_number(redis_url: str) -> Iterator[int]:
    """The database number (1..15) this session owns for the whole run
    (:func:`claimed_redis_db`)."""
    with claimed_redis_db(redis_url) as db:
        yield db


@pytest.fixture
def redis_test_url(redis_url: str, redis_db_number: int) -> Iterator[str]:
    """URL of the session's own Redis database, flushed before and after the test (for CLI
    tests: ``run_cli(..., "--redis-url", redis_test_url)``)."""
    assert redis_db_number != 0
    url = with_redis_db(redis_url, redis_db_number)
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    try:
        yield url
    finally:
        with redis.Redis.from_url(url) as client:
            client.flushdb()


@pytest.fixture
def redis_client(redis_test_url: str) -> Iterator[redis.Redis]:
    """A ``redis.Redis`` (bytes in, bytes out) on the session's own database, empty at the
    start of the test and flushed after it."""
    client = redis.Redis.from_url(redis_test_url, decode_responses=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fresh_redis() -> Iterator[servers.LocalRedis]:
    """A throwaway Redis server of the test's own, for tests that stop or kill it (connection
    loss). Stopped after the test if it still runs. About 20 ms to start."""
    server = servers.start_redis()
    try:
        yield server
    finally:
        server.stop()


# --- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """DSN of a PostgreSQL superuser connection (``ESCTL_TEST_PG_DSN`` or a throwaway server,
    about 1 s to start). Tests get their own database through ``pg_dsn``; use this one only
    to create or inspect databases."""
    dsn = os.environ.get(PG_DSN_ENV)
    if dsn:
        try:
            with psycopg.connect(dsn, connect_timeout=10):
                pass
        except psycopg.Error as exc:
            pytest.fail(f"PostgreSQL at {redact(dsn)} ({PG_DSN_ENV}) is not usable: {exc}")
        yield dsn
        return
    server = servers.start_postgres(fast=True)
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A libpq ``key=value`` DSN of a new, empty database ``esctl_t_<hex>`` of the test's own,
    dropped (WITH (FORCE), so open connections do not keep it) after the test."""
    name = f"esctl_t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        # template0: nobody can be connected to it (CREATE DATABASE from template1 fails while
        # another session uses template1), and it was measured the fastest here.
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
            ).format(sql.Identifier(name))
        )
    try:
        yield make_conninfo(pg_admin_dsn, dbname=name)
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --- names ---------------------------------------------------------------------------------


@pytest.fixture
def app_name() -> str:
    """An ApplicationName no other test uses: ``TestApp-<8 hex>``."""
    return f"TestApp-{secrets.token_hex(4)}"


@pytest.fixture
def env_name() -> str:
    """An environment name no other test uses: ``test-<8 hex>``."""
    return f"test-{secrets.token_hex(4)}"


# --- demo data -----------------------------------------------------------------------------


@pytest.fixture
def demo_store(redis_client: redis.Redis, app_name: str, env_name: str) -> Any:
    """The demo event store (``esctl.demo.write_demo_store``) written into the test's own Redis
    database under ``app_name`` / ``env_name``; returns its ``DemoSummary``.

    esctl.demo is imported here, not at the top, so the harness works without it."""
    from esctl.demo import write_demo_store

    return write_demo_store(redis_client, app=app_name, env=env_name)
