"""A Redis that answers ``LOADING Redis is loading the dataset in memory``: just restarted and
still reading its RDB file (or a replica re-syncing from its primary, ``DEBUG RELOAD``).

Commands wait for it (saying so on stderr) up to ``ESCTL_REDIS_LOADING_WAIT`` and go on, or
fail with exit 1 and an error that names the server and says to rerun once ``INFO
persistence`` shows ``loading:0``; doctor reports it at once.

The servers are real: an RDB file of the demo store and some filler keys, loaded by a server
started with ``--key-load-delay`` (Redis's debug setting: microseconds per key) and
``--loading-process-events-interval-bytes 1024`` (it answers clients between keys), so it
stays loading until the test sets ``key-load-delay`` back to 0."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from helpers import run_cli, start_cli

from esctl import servers
from esctl.demo import DemoSummary, write_demo_store

pytestmark = pytest.mark.skipif(
    servers.find_redis_server() is None, reason="no redis-server binary"
)

APP = "Learning.LoadingTest.Web"
ENV = "loading-test"
FILLER_KEYS = 3000
FILLER_BYTES = 1100
"""Each filler key is over ``loading-process-events-interval-bytes``: the loading server
answers clients after every key."""
SLOW_LOAD = ["--loading-process-events-interval-bytes", "1024"]
WAIT = {"ESCTL_REDIS_LOADING_WAIT": "1s"}


@dataclass(frozen=True)
class Dump:
    rdb: Path
    demo: DemoSummary


@pytest.fixture(scope="module")
def dump(tmp_path_factory: pytest.TempPathFactory) -> Dump:
    """An RDB file holding the demo store of APP/ENV and FILLER_KEYS filler keys."""
    workdir = tmp_path_factory.mktemp("rdb")
    server = servers.start_redis(workdir=workdir)
    try:
        client = redis.Redis.from_url(server.url)
        demo = write_demo_store(client, app=APP, env=ENV)
        fill(client)
        client.save()
        client.close()
    finally:
        server.stop()
    return Dump(workdir / "dump.rdb", demo)


def fill(client: redis.Redis, keys: int = FILLER_KEYS) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(keys):
        pipe.set(f"filler:{i}", "x" * FILLER_BYTES)
    pipe.execute()


def is_loading(client: redis.Redis) -> bool:
    return str(client.info("persistence")["loading"]) == "1"


def finish_loading(client: redis.Redis) -> None:
    """Let the server load the rest of its RDB at full speed."""
    client.config_set("key-load-delay", 0)


@contextmanager
def loading_redis(dump: Dump, workdir: Path, delay_us: int = 20000) -> Iterator[Any]:
    """A server loading ``dump`` ``delay_us`` per key (20 ms: a minute for the whole file)
    until :func:`finish_loading`; yields (server, client)."""
    workdir.mkdir()
    shutil.copy(dump.rdb, workdir / "dump.rdb")
    server = servers.start_redis(
        workdir=workdir, extra_args=["--key-load-delay", str(delay_us), *SLOW_LOAD]
    )
    client = redis.Redis.from_url(server.url)
    try:
        assert is_loading(client)
        yield server, client
    finally:
        with suppress(redis.RedisError):
            finish_loading(client)
        client.close()
        server.stop()


@pytest.fixture
def loading(dump: Dump, tmp_path: Path) -> Iterator[Any]:
    with loading_redis(dump, tmp_path / "redis") as pair:
        yield pair


def address(server: servers.LocalRedis) -> str:
    return f"127.0.0.1:{server.port}"


def assert_clean(out: str, err: str) -> None:
    """No traceback, and nothing taken for a bug in esctl."""
    for text in (out, err):
        assert "Traceback" not in text
        assert "bug in esctl" not in text
        assert "error: unexpected" not in text and '"internal"' not in text


# --- at connect time: waited for, then the command goes on --------------------------------------


def test_a_command_waits_for_redis_to_load_its_data_and_goes_on(loading: Any, dump: Dump) -> None:
    server, client = loading
    proc = start_cli("inspect", "stats", "--app", APP, "--json", "--redis-url", server.url)
    try:
        assert proc.stderr is not None
        notice = proc.stderr.readline().decode()
        assert f"Redis {address(server)}/0 is loading its data set" in notice, notice
        assert "%" in notice and "waiting" in notice
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting
        finish_loading(client)
        out, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = notice + rest.decode()
    assert proc.returncode == 0, err
    assert_clean(out.decode(), err)
    assert "has loaded its data set" in err and "going on" in err
    stats = json.loads(out)
    assert stats["aggregates"] == dump.demo.commit_lists
    assert stats["events"]["commit_ids"] == dump.demo.commit_ids


def test_sigterm_stops_the_wait(loading: Any) -> None:
    server, _ = loading
    proc = start_cli("queue", "list", "--env", ENV, "--redis-url", server.url)
    try:
        assert proc.stderr is not None
        notice = proc.stderr.readline().decode()
        assert "is loading its data set" in notice, notice
        proc.send_signal(signal.SIGTERM)
        out, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, rest
    assert "stopped by SIGTERM" in rest.decode()
    assert_clean(out.decode(), rest.decode())


# --- past the wait: exit 1, the server named, what to do ----------------------------------------


COMMANDS = {
    "inspect stats": ["inspect", "stats", "--app", APP, "--json"],
    "queue list": ["queue", "list", "--env", ENV, "--json"],
    "events query": ["events", "query", "--app", APP, "--format", "jsonl"],
    "migrate redis-to-pg": ["migrate", "redis-to-pg", "--app", APP, "--init-schema", "--json"],
}


@pytest.mark.parametrize("words", COMMANDS.values(), ids=COMMANDS.keys())
def test_past_the_wait_the_command_fails_naming_the_server(
    words: list[str], loading: Any, pg_dsn: str
) -> None:
    server, _ = loading
    started = time.monotonic()
    pg = ["--pg-dsn", pg_dsn] if words[0] == "migrate" else []
    result = run_cli(*words, "--redis-url", server.url, *pg, env=WAIT)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert_clean(result.stdout, result.stderr)
    assert 1.0 <= took < 30
    # one document (a stream's: its last line)
    document = json.loads(
        result.stdout.strip().splitlines()[-1] if "jsonl" in words else result.stdout
    )
    assert document["exit_code"] == 1
    error = document["error"]
    assert error["kind"] == "connection"
    message, hint = error["message"], error["hint"]
    assert f"Redis {address(server)}/0 is still loading its data set" in message
    assert "%" in message and "restarted" in message and "nothing was done" in message
    assert f"redis-cli -h 127.0.0.1 -p {server.port} INFO persistence" in hint
    assert "loading:0" in hint and "ESCTL_REDIS_LOADING_WAIT" in hint
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {message}"]
    assert "waiting for it (up to 1 s)" in result.stderr
    if words[0] == "migrate":
        with psycopg.connect(pg_dsn) as conn:  # nothing was done: not even the schema
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'event'"
            ).fetchone()
        assert tables == (0,)


def test_no_wait_fails_at_once(loading: Any) -> None:
    server, _ = loading
    result = run_cli(
        "inspect", "stats", "--app", APP, "--redis-url", server.url,
        env={"ESCTL_REDIS_LOADING_WAIT": "0"},
    )  # fmt: skip
    assert result.returncode == 1
    assert_clean(result.stdout, result.stderr)
    assert f"error: Redis {address(server)}/0 is loading its data set" in result.stderr
    assert "waiting" not in result.stderr


def test_a_wait_that_is_no_duration_is_a_usage_error(redis_test_url: str) -> None:
    result = run_cli(
        "queue", "list", "--env", ENV, "--redis-url", redis_test_url,
        env={"ESCTL_REDIS_LOADING_WAIT": "soon"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "ESCTL_REDIS_LOADING_WAIT=soon" in result.stderr
    assert_clean(result.stdout, result.stderr)


def test_doctor_reports_a_loading_redis_at_once(loading: Any) -> None:
    server, _ = loading
    started = time.monotonic()
    result = run_cli("doctor", "--redis-url", server.url, "--json")
    assert time.monotonic() - started < 20  # not the 60 s a command would wait
    assert result.returncode == 3, result.stderr
    assert_clean(result.stdout, result.stderr)
    checks = {c["id"]: c for c in json.loads(result.stdout)["checks"]}
    reachable = checks["redis.reachable"]
    assert reachable["status"] == "fail"
    assert f"Redis {address(server)}/0 is loading its data set" in reachable["observed"]
    assert "%" in reachable["observed"]
    assert "loading:0" in reachable["action"]
    assert "waiting" not in result.stderr
