"""A Redis that answers ``LOADING Redis is loading the dataset in memory``: just restarted and
still reading its RDB file (or a replica re-syncing from its primary, ``DEBUG RELOAD``).

Commands wait for it (saying so on stderr) up to ``ESCTL_REDIS_LOADING_WAIT`` and go on, or
fail with exit 1 and an error that names the server and says to rerun once ``INFO
persistence`` shows ``loading:0``; doctor reports it at once. Mid-run, reads wait for it and
go on, and a SCAN whose server was restarted stops.

The servers are real: an RDB file of the demo store and some filler keys, loaded by a server
started with ``--key-load-delay`` (Redis's debug setting: microseconds per key) and
``--loading-process-events-interval-bytes 1024`` (it answers clients between keys), so it
stays loading until the test sets ``key-load-delay`` back to 0."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lostlock
import psycopg
import pytest
import redis
from faultrelay import script_sha
from helpers import assert_clean, read_as_restore, run_cli, started_cli
from test_migrate import new_database, pg_rows

from esctl import queues, redisio, servers
from esctl.demo import DemoSummary, write_demo_store
from esctl.errors import ConnectionFailed
from esctl.queues import scripts
from esctl.queues.scripts import RESTORE_SCRIPT

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


# --- at connect time: waited for, then the command goes on --------------------------------------


def test_a_command_waits_for_redis_to_load_its_data_and_goes_on(loading: Any, dump: Dump) -> None:
    server, client = loading
    with started_cli("inspect", "stats", "--app", APP, "--json", "--redis-url", server.url) as proc:
        assert proc.stderr is not None
        notice = proc.stderr.readline().decode()
        assert f"Redis {address(server)}/0 is loading its data set" in notice, notice
        assert "%" in notice and "waiting" in notice
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting
        finish_loading(client)
        out, rest = proc.communicate(timeout=60)
    err = notice + rest.decode()
    assert proc.returncode == 0, err
    assert_clean(out.decode(), err)
    assert "has loaded its data set" in err and "going on" in err
    stats = json.loads(out)
    assert stats["aggregates"] == dump.demo.commit_lists
    assert stats["events"]["commit_ids"] == dump.demo.commit_ids


def test_sigterm_stops_the_wait(loading: Any) -> None:
    server, _ = loading
    with started_cli("queue", "list", "--env", ENV, "--redis-url", server.url) as proc:
        assert proc.stderr is not None
        notice = proc.stderr.readline().decode()
        assert "is loading its data set" in notice, notice
        proc.send_signal(signal.SIGTERM)
        out, rest = proc.communicate(timeout=30)
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


# --- mid-run: a server reloading its data in place, a restarted one ----------------------------


@pytest.fixture
def reloadable(tmp_path: Path) -> Iterator[Any]:
    """A server that may be told ``DEBUG RELOAD`` (its data saved and loaded again in place,
    as a replica re-syncing does), with FILLER_KEYS filler keys."""
    server = servers.start_redis(
        workdir=tmp_path / "redis", extra_args=[*SLOW_LOAD, "--enable-debug-command", "local"]
    )
    client = redis.Redis.from_url(server.url)
    fill(client)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


class Reload:
    """``DEBUG RELOAD`` of a server (its data saved and loaded again in place), ``delay_us``
    per key: :meth:`start` returns once the server answers LOADING, :meth:`finish` lets it
    load the rest at full speed and waits for the reload's answer."""

    def __init__(self, server: servers.LocalRedis, client: redis.Redis) -> None:
        self.server = server
        self.client = client
        self.thread: threading.Thread | None = None
        self.answer: list[Any] = []

    def start(self, delay_us: int) -> None:
        self.client.config_set("key-load-delay", delay_us)
        self.thread = threading.Thread(target=self._reload)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not is_loading(self.client):
            assert time.monotonic() < deadline and self.thread.is_alive()
            time.sleep(0.005)

    def _reload(self) -> None:
        with redis.Redis.from_url(self.server.url, socket_timeout=120) as own:
            self.answer.append(own.execute_command("DEBUG", "RELOAD"))

    def finish(self) -> None:
        if self.thread is None:
            return
        finish_loading(self.client)
        self.thread.join(60)
        assert self.answer == [b"OK"]


@contextmanager
def reloading(server: servers.LocalRedis, client: redis.Redis, delay_us: int) -> Iterator[None]:
    """The server reloads its data while the block runs (:class:`Reload`)."""
    reload = Reload(server, client)
    reload.start(delay_us)
    try:
        yield
    finally:
        reload.finish()


def test_reads_and_a_scan_wait_for_a_reload_and_go_on(reloadable: Any) -> None:
    server, client = reloadable
    client.rpush("list:a", "1", "2", "3")
    client.hset("hash:a", mapping={"f": "v"})
    esctl_client = redisio.connect(server.url)
    reads = [("LRANGE", "list:a", 0, -1), ("HGET", "hash:a", "f"), ("GET", "filler:7")]
    assert redisio.pipelined(esctl_client, reads)[0] == [b"1", b"2", b"3"]
    pages = redisio.scan_pages(esctl_client, "filler:*", count=100)
    seen = set(next(pages)[1])
    with reloading(server, client, delay_us=300):  # about a second
        started = time.monotonic()
        replies = redisio.pipelined(esctl_client, reads)
        assert time.monotonic() - started > 0.2  # it waited
        assert replies == [[b"1", b"2", b"3"], b"v", b"x" * FILLER_BYTES]
        for _, keys in pages:
            seen.update(keys)
    assert len(seen) == FILLER_KEYS


def test_a_scan_stops_when_its_server_was_restarted(dump: Dump, tmp_path: Path) -> None:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    shutil.copy(dump.rdb, workdir / "dump.rdb")
    first = servers.start_redis(workdir=workdir)
    esctl_client = redisio.connect(first.url)
    pages = redisio.scan_pages(esctl_client, "filler:*", count=100)
    next(pages)
    first.stop()
    again = servers.start_redis(
        workdir=workdir, port=first.port, extra_args=["--key-load-delay", "20000", *SLOW_LOAD]
    )
    client = redis.Redis.from_url(again.url)
    try:
        threading.Timer(0.5, finish_loading, [client]).start()
        with pytest.raises(ConnectionFailed) as failed:
            for _ in pages:
                pass
        assert f"Redis {address(again)}/0 was restarted during the run" in failed.value.message
    finally:
        client.close()
        again.stop()


def test_a_migration_waits_for_a_reload_and_moves_every_event_once(
    reloadable: Any, pg_dsn: str, pg_admin_dsn: str
) -> None:
    server, client = reloadable
    write_demo_store(client, app=APP, env=ENV)
    common = ["--app", APP, "--redis-url", server.url, "--batch-size", "20", "--json"]
    with new_database(pg_admin_dsn) as reference:
        expected = run_cli(
            "migrate", "redis-to-pg", *common, "--pg-dsn", reference, "--init-schema"
        )
        assert expected.returncode == 3, expected.stderr  # the demo store's quarantined events
        with started_cli(
            "migrate", "redis-to-pg", *common, "--pg-dsn", pg_dsn, "--init-schema", "--rate", "80"
        ) as proc:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                deadline = time.monotonic() + 60
                while not migrated_some(conn):
                    assert proc.poll() is None and time.monotonic() < deadline
                    time.sleep(0.01)
            with reloading(server, client, delay_us=500):  # about 1.5 s
                time.sleep(1)
            out, err = proc.communicate(timeout=120)
        assert proc.returncode == 3, err
        assert_clean(out.decode(), err.decode())
        assert f"Redis {address(server)}/0 is loading its data set" in err.decode()
        assert "going on" in err.decode()
        summary, reference_summary = json.loads(out), json.loads(expected.stdout)
        for count in ("events_migrated", "aggregates_quarantined", "events_quarantined"):
            assert summary[count] == reference_summary[count], count
        assert pg_rows(pg_dsn) == pg_rows(reference)


def migrated_some(conn: psycopg.Connection[Any]) -> bool:
    try:
        row = conn.execute("SELECT count(*) FROM event").fetchone()
    except psycopg.errors.UndefinedTable:
        return False
    return row is not None and row[0] > 0


@pytest.fixture
def notices(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What waits for a loading server say (in the CLI: lines on stderr)."""
    said: list[str] = []
    monkeypatch.setattr(redisio.retry, "loading_notice", said.append, raising=False)
    return said


def test_a_script_call_waits_for_a_reload_longer_than_a_failover(
    reloadable: Any, notices: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """eval_pipelined (prune's guarded deletes, compress, restore-pruned) waits for a loading
    server as long as a command waits for one, not the failover's READ_RETRY_SECONDS."""
    server, client = reloadable
    monkeypatch.setattr(redisio.retry, "READ_RETRY_SECONDS", 0.2)
    esctl_client = redisio.connect(server.url)
    script = "return redis.call('GET', KEYS[1])"
    with reloading(server, client, delay_us=300):  # about a second
        replies = redisio.eval_pipelined(esctl_client, script, [(1, "filler:1"), (1, "filler:2")])
    assert replies == [b"x" * FILLER_BYTES] * 2
    assert any("is loading its data set" in n for n in notices)


QUEUE = queues.QueueRef("Learning.ReportingService.Worker-Test", ENV, "ItemScoreCreated")
MESSAGES = [
    json.dumps({"$type": "Ns.ItemScoreCreated, Asm", "Id": str(i), "Version": 1}).encode()
    for i in range(2500)
]  # three removal batches


@contextmanager
def hooked(server: servers.LocalRedis, script: str, hook: Any) -> Iterator[lostlock.ScriptHook]:
    """A client (made from the URL, as esctl makes its own: redis-py retries nothing) that
    calls ``hook(n)`` after its n-th call of ``script``."""
    with lostlock.ScriptHook.from_url(server.url) as client:
        client.sha = script_sha(script).decode()
        client.hook = hook
        yield client


def test_a_drain_and_a_restore_wait_for_a_reload_between_their_batches(
    reloadable: Any, notices: list[str], tmp_path: Path
) -> None:
    """The reload starts after the first batch of the drain (then of the restore): the second
    is answered LOADING, did not run, and is sent again once the server has loaded; the list
    ends drained (then restored) whole, the backup file complete."""
    server, client = reloadable
    client.lpush(QUEUE.key("dead"), *MESSAGES)
    backup = tmp_path / "dead.jsonl.zst"
    reload = Reload(server, client)

    def after(n: int) -> None:
        if n == 1:
            reload.start(delay_us=300)  # about a second

    try:
        with hooked(server, scripts.REMOVE_SCRIPT, after) as esctl_client:
            drained = queues.drain(esctl_client, QUEUE, queues.DrainOptions(to_file=backup))
    finally:
        reload.finish()
    assert (drained.drained, drained.failed, drained.problems) == (2500, 0, [])
    assert client.llen(QUEUE.key("dead")) == 0
    assert read_as_restore(backup)[0].complete
    assert any("is loading its data set" in n for n in notices)

    notices.clear()
    reload = Reload(server, client)
    try:
        with hooked(server, RESTORE_SCRIPT, after) as esctl_client:
            restored = queues.restore(esctl_client, backup, queues.RestoreOptions())
    finally:
        reload.finish()
    assert (restored.restored, restored.failed, restored.problems) == (2500, 0, [])
    assert client.lrange(QUEUE.key("dead"), 0, -1) == MESSAGES[::-1]
    assert any("is loading its data set" in n for n in notices)


def test_a_drain_past_the_wait_says_the_batch_did_not_run(
    reloadable: Any, notices: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LOADING answer is Redis's answer, not a lost connection: the batch did not run."""
    server, client = reloadable
    monkeypatch.setattr(redisio.retry, "LOADING_WAIT_SECONDS", 0.3, raising=False)
    client.lpush(QUEUE.key("dead"), *MESSAGES)
    reload = Reload(server, client)

    def after(n: int) -> None:
        if n == 1:
            reload.start(delay_us=2000)  # about 6 s

    try:
        with hooked(server, scripts.REMOVE_SCRIPT, after) as esctl_client:
            summary = queues.drain(
                esctl_client, QUEUE, queues.DrainOptions(to_file=tmp_path / "dead.jsonl.zst")
            )
    finally:
        reload.finish()
    assert (summary.drained, summary.failed) == (1000, 1500)
    [problem] = summary.problems
    assert problem["kind"] == "remove_failed"
    assert problem["detail"].startswith(
        "a batch of 1000 removals failed (Redis is loading the dataset in memory); 1500 selected "
        "messages may still be in the list"
    ), problem["detail"]
    assert client.llen(QUEUE.key("dead")) == 1500
