"""``migrate redis-to-pg --follow`` against real servers: an independent writer appends while
the follower runs; notifications off (polling), enabled by the follower, or refused; a killed
subscription and a Redis restart; kill -9 and restart; a stalled PostgreSQL; the signals; the
JSON lines and the metrics file; a Redis Cluster.

Each test ends by comparing PostgreSQL with a plain migration of the final store into another
database: the follower's rows must be exactly those."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import independent_writer as iw
import psycopg
import pytest
import redis
import redis.cluster
from cluster import (
    LocalCluster,
    move_slot,
    redis_cluster,
    redis_cluster_with_replicas,
    slot_owner,
)
from helpers import cli_env, run_cli, wait_for
from terminal import ESCTL, TerminalSession, problems_on
from test_migrate import cli_args, migrate, new_database, pg_rows
from test_migrate_faults import assert_same_rows_as, wait_for_no_esctl_sessions

from esctl import layout, servers
from esctl.cli.wrapping import break_line
from esctl.shard import Shard

__all__ = ["redis_cluster", "redis_cluster_with_replicas"]  # the fixtures, for pytest

NOTIFYING = ["--notify-keyspace-events", "Kl"]


@pytest.fixture
def reference_dsn(pg_admin_dsn: str) -> Iterator[str]:
    with new_database(pg_admin_dsn) as dsn:
        yield dsn


@pytest.fixture
def notifying_redis() -> Iterator[servers.LocalRedis]:
    """A Redis of the test's own that publishes keyspace notifications for list commands."""
    server = servers.start_redis(extra_args=NOTIFYING)
    try:
        yield server
    finally:
        server.stop()


class Follower:
    """``esctl migrate redis-to-pg --follow --json`` in a process; its lines parsed as they
    come (each must be one JSON object)."""

    def __init__(self, url: str, dsn: str, app: str, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "esctl", "migrate", "redis-to-pg", *cli_args(url, dsn, app),
                "--init-schema", "--follow", "--json", "--batch-size", "200", *extra,
            ],
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self.lines: list[dict[str, Any]] = []
        self.bad: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                self.bad.append(raw.decode("utf-8", "replace"))
                continue
            assert isinstance(line, dict)
            self.lines.append(line)

    def wait_for(
        self, test: Callable[[dict[str, Any]], bool], timeout: float = 20.0, *, after: int = 0
    ) -> dict[str, Any]:
        """The first line (from the ``after``-th on) that passes ``test``."""
        deadline = time.monotonic() + timeout
        seen = after
        while time.monotonic() < deadline:
            lines = self.lines[seen:]
            for line in lines:
                if test(line):
                    return line
            seen += len(lines)
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.02)
        sweeps = [e for e in self.lines if e["event"] in ("sweep", "notice")]
        raise AssertionError(
            f"no such line; exit {self.proc.poll()}, sweeps: {sweeps}, last: {self.lines[-2:]}"
        )

    def caught_up(self) -> dict[str, Any]:
        return self.wait_for(lambda e: e["event"] == "sweep" and e["phase"] == "finished")

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.finish()

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        self.reader.join(5)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read().decode("utf-8", "replace")
        assert "Traceback" not in err
        assert not self.bad, self.bad
        return code, err


def level(dsn: str, truth: iw.GroundTruth, timeout: float = 10.0) -> float:
    """Seconds until PostgreSQL holds as many events as the clean aggregates of ``truth``."""
    want = sum(len(a.events) for a in truth.clean_aggregates())
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() - started < timeout:
            row = conn.execute("SELECT count(*) FROM event").fetchone()
            if row and row[0] >= want:
                return time.monotonic() - started
            time.sleep(0.02)
    raise AssertionError(f"PostgreSQL did not get level within {timeout} s")


def reference_rows(url: str, dsn: str, app: str) -> list[tuple[Any, ...]]:
    migrate(url, dsn, app, init_schema=True)
    return pg_rows(dsn)


def writer(
    client: iw.Client, truth: iw.GroundTruth, count: int, pause: float = 0.002, seed: int = 1
) -> threading.Thread:
    thread = threading.Thread(
        target=iw.append_events, args=(client, truth, count), kwargs={"pause": pause, "seed": seed}
    )
    thread.start()
    return thread


def small_store(client: iw.Client, app: str, seed: int = 7, defects: tuple[str, ...] = ()) -> Any:
    return iw.write_store(
        client, app=app, aggregates=300, events_per_aggregate=(1, 6), seed=seed, defects=defects
    )


# --- following ---------------------------------------------------------------------------


def test_follows_an_independent_writer_gets_level_and_stops_on_sigterm(
    notifying_redis: servers.LocalRedis,
    pg_dsn: str,
    reference_dsn: str,
    app_name: str,
    tmp_path: Path,
) -> None:
    client = redis.Redis.from_url(notifying_redis.url)
    truth = small_store(client, app_name, defects=("version_gap",))
    metrics_file = tmp_path / "follow.prom"
    follower = Follower(notifying_redis.url, pg_dsn, app_name, "--metrics-file", str(metrics_file))
    follower.caught_up()
    writer(client, truth, 600).join()
    assert level(pg_dsn, truth) < 2.0  # within 2 s of the writer's last event
    # A lag line reported once level (one from while the writer ran may show 0 s, rounded,
    # with an event that had just arrived).
    line = follower.wait_for(
        lambda e: e["event"] == "lag" and e["lag_seconds"] == 0, after=len(follower.lines)
    )
    assert line["events_behind"] == 0 and line["mode"] == "notifications"
    batches = [e for e in follower.lines if e["event"] == "batch"]
    assert any(b["source"] == "notifications" for b in batches)
    assert all(isinstance(b["lag_seconds"], float | int) for b in batches)
    text = metrics_file.read_text()
    for name in ("lag_seconds", "events_behind", "events_migrated", "last_batch_timestamp"):
        assert f"esctl_migrate_follow_{name}" in text
    assert f'app="{app_name}"' in text
    status = run_cli(
        "migrate", "status", "--redis-url", notifying_redis.url, "--pg-dsn", pg_dsn,
        "--app", app_name, "--max-lag", "1m", "--json",
    )  # fmt: skip
    assert status.returncode == 0, status.stdout
    (shard,) = json.loads(status.stdout)["shards"]
    assert shard["status"] == "running" and shard["lock_alive"]

    code, err = follower.stop(signal.SIGTERM)
    assert code == 0, err
    last = follower.lines[-1]
    assert last["event"] == "stopped" and last["reason"] == "terminate"
    assert last["quarantined"] >= 1  # the aggregate with a version gap
    assert last["events_migrated"] == sum(len(a.events) for a in truth.clean_aggregates())
    assert_same_rows_as(pg_dsn, reference_rows(notifying_redis.url, reference_dsn, app_name))


def test_sweep_interval_0_leaves_out_the_periodic_sweeps_but_not_the_first(
    notifying_redis: servers.LocalRedis, pg_dsn: str, app_name: str
) -> None:
    """0 is "none", not "every 0 s" (which would sweep back to back, as polling does)."""
    client = redis.Redis.from_url(notifying_redis.url)
    truth = small_store(client, app_name, seed=17)
    follower = Follower(notifying_redis.url, pg_dsn, app_name, "--sweep-interval", "0")
    follower.caught_up()
    writer(client, truth, 50).join()
    level(pg_dsn, truth)
    time.sleep(1.5)
    code, _ = follower.stop(signal.SIGTERM)
    assert code == 0
    sweeps = [e for e in follower.lines if e["event"] == "sweep" and e["phase"] == "finished"]
    assert [s["reason"] for s in sweeps] == ["start"]
    assert any(e["event"] == "batch" and e["source"] == "notifications" for e in follower.lines)


def test_without_notifications_it_polls_says_how_to_enable_them_and_sigint_exits_130(
    fresh_redis: servers.LocalRedis, pg_dsn: str, reference_dsn: str, app_name: str
) -> None:
    client = redis.Redis.from_url(fresh_redis.url)
    truth = small_store(client, app_name, seed=8)
    follower = Follower(fresh_redis.url, pg_dsn, app_name)
    notice = follower.wait_for(lambda e: e["event"] == "notice")
    # Quoted in backticks, so esctl never breaks it over two rows (it did at 75-77 columns).
    command = "`CONFIG SET notify-keyspace-events Kl`"
    assert command in notice["message"]
    for width in range(40, 161):
        rows = break_line(f"warning: {notice['message']}", width)
        assert any(command in row for row in rows), (width, rows)
    assert "--enable-notifications" in notice["message"]
    follower.caught_up()
    writer(client, truth, 200).join()
    level(pg_dsn, truth)
    assert {e["mode"] for e in follower.lines} == {"polling"}
    assert any(e["event"] == "sweep" and e["reason"] == "poll" for e in follower.lines)

    code, _ = follower.stop(signal.SIGINT)
    assert code == 130
    stopped = [e for e in follower.lines if e["event"] == "stopped"]
    assert stopped and stopped[0]["reason"] == "interrupt"
    assert_same_rows_as(pg_dsn, reference_rows(fresh_redis.url, reference_dsn, app_name))


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--sweep-interval", "5m"], "--sweep-interval needs --follow"),
        (["--stall-timeout", "5m"], "--stall-timeout needs --follow"),
        (
            ["--enable-notifications", "--stall-timeout", "5m"],
            "--enable-notifications and --stall-timeout need --follow",
        ),
    ],
)
def test_follower_options_without_follow_are_refused_naming_those_given_and_what_to_do(
    redis_test_url: str, pg_dsn: str, app_name: str, options: list[str], named: str
) -> None:
    result = run_cli(
        "migrate", "redis-to-pg", *cli_args(redis_test_url, pg_dsn, app_name), "--json", *options
    )
    assert result.returncode == 2, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["message"] == named
    assert "--metrics-file" not in error["message"]
    assert error["hint"].startswith("add --follow")


@pytest.mark.parametrize(
    ("options", "hint"),
    [
        (["--dry-run"], "leave out --dry-run to follow, or --follow for one run with it"),
        (
            ["--workers", "2", "--delete-source", "--yes"],
            "leave out --delete-source and --workers to follow, or --follow for one run with them",
        ),
    ],
)
def test_options_a_follower_cannot_take_are_refused_saying_what_to_do(
    redis_test_url: str, pg_dsn: str, app_name: str, options: list[str], hint: str
) -> None:
    result = run_cli(
        "migrate", "redis-to-pg", *cli_args(redis_test_url, pg_dsn, app_name), "--json",
        "--follow", *options,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert json.loads(result.stdout)["error"]["hint"] == hint


def test_a_quarantined_aggregate_is_recorded_once_while_unchanged_and_again_once_it_grows(
    fresh_redis: servers.LocalRedis, pg_dsn: str, app_name: str
) -> None:
    """A polling follower sweeps back to back: an aggregate it quarantined must not be
    quarantined again (new esctl.quarantine rows, a growing count) on every sweep while its
    commit list is unchanged. A new commit on it is looked at again."""
    client = redis.Redis.from_url(fresh_redis.url)
    truth = small_store(client, app_name, seed=9, defects=("version_gap", "missing_payload"))
    follower = Follower(fresh_redis.url, pg_dsn, app_name)
    follower.caught_up()
    since = len(follower.lines) - 1  # from the first finished sweep on

    def sweeps() -> int:
        return sum(1 for e in follower.lines if e["event"] == "sweep" and e["phase"] == "finished")

    def quarantine_rows() -> int:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM esctl.quarantine").fetchone()
            assert row is not None
            return int(row[0])

    first = quarantine_rows()
    assert first >= 2
    done = sweeps()
    follower.wait_for(
        lambda e: e["event"] == "sweep" and e["phase"] == "finished" and sweeps() >= done + 4
    )
    assert quarantine_rows() == first
    counts = {e["quarantined"] for e in follower.lines[since:] if e["event"] in ("sweep", "lag")}
    assert counts == {2}, counts

    (bad, *_) = truth.defective_aggregates()
    # a commit id with no payload: the aggregate grows and stays defective
    client.rpush(layout.commit_list_key(app_name, bad.aggregate_id), str(uuid.uuid4()))
    follower.wait_for(lambda e: e["quarantined"] == 3)
    code, _ = follower.stop(signal.SIGTERM)
    assert code == 0
    assert quarantine_rows() > first


def test_a_commit_list_key_of_another_type_is_quarantined_once_and_migrated_once_fixed(
    fresh_redis: servers.LocalRedis, pg_dsn: str, app_name: str
) -> None:
    """A string where a commit list's name is: quarantined (wrong_key_type) by the first sweep
    and passed over while it stays a string (it was skipped by every sweep: no quarantine, no
    lag); once someone puts the aggregate's list back, its events are migrated."""
    client = redis.Redis.from_url(fresh_redis.url)
    truth = iw.write_store(client, app=app_name, aggregates=30, seed=5)
    stray = layout.commit_list_key(app_name, "stray")
    client.set(stray, b"x")
    follower = Follower(fresh_redis.url, pg_dsn, app_name)  # polling: sweeps back to back
    follower.caught_up()

    def quarantine_rows() -> list[tuple[str, str]]:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            return conn.execute("SELECT aggregate_id, kind FROM esctl.quarantine").fetchall()

    def sweeps() -> int:
        return sum(1 for e in follower.lines if e["event"] == "sweep" and e["phase"] == "finished")

    assert quarantine_rows() == [("stray", "wrong_key_type")]
    level(pg_dsn, truth)
    done = sweeps()
    follower.wait_for(
        lambda e: e["event"] == "sweep" and e["phase"] == "finished" and sweeps() >= done + 3
    )
    assert quarantine_rows() == [("stray", "wrong_key_type")]  # once, while it stays a string

    client.delete(stray)
    commit_id = str(uuid.uuid4())
    client.hset(
        layout.event_hash_key(app_name, commit_id),
        commit_id,
        iw.to_json(
            {
                "$type": "Ns.Fixed, Asm",
                "Id": "stray",
                "TimeStamp": "2024-01-02T03:04:05.1234567+00:00",
                "Version": 1,
                "AggregateType": "Item",
            }
        ),
    )
    client.rpush(stray, commit_id)

    def migrated() -> bool:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM event e JOIN aggregate a USING (aggregate_key)"
                " WHERE a.aggregate_id = 'stray'"
            ).fetchone()
        return row is not None and row[0] == 1

    wait_for(migrated, "the fixed aggregate migrated", timeout=10)
    code, _ = follower.stop(signal.SIGTERM)
    assert code == 0


def test_enable_notifications_sets_them_and_a_refusal_is_a_clear_error(
    fresh_redis: servers.LocalRedis, pg_dsn: str, app_name: str
) -> None:
    client = redis.Redis.from_url(fresh_redis.url)
    small_store(client, app_name, seed=9)
    client.acl_setuser(
        "nocfg", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-config"],
    )  # fmt: skip
    denied = Follower(
        fresh_redis.url.replace("redis://", "redis://nocfg:pw@"),
        pg_dsn,
        app_name,
        "--enable-notifications",
    )
    code, err = denied.finish()
    assert code == 1
    assert "CONFIG SET" in err and "notify-keyspace-events" in err
    assert denied.lines[-1]["error"]["kind"] == "permission"

    wait_for_no_esctl_sessions(pg_dsn)
    follower = Follower(fresh_redis.url, pg_dsn, app_name, "--enable-notifications")
    follower.caught_up()
    flags = str(client.config_get("notify-keyspace-events")["notify-keyspace-events"])
    assert "K" in flags and "l" in flags
    assert all(e["event"] != "notice" for e in follower.lines)
    assert follower.lines[0]["mode"] == "notifications"

    second = Follower(fresh_redis.url, pg_dsn, app_name)  # the lock is held: 75
    code, err = second.finish()
    assert code == 75, err
    assert follower.stop()[0] == 0


def test_follows_one_shard_with_transforms_as_a_plain_run_would(
    notifying_redis: servers.LocalRedis,
    pg_dsn: str,
    reference_dsn: str,
    app_name: str,
    tmp_path: Path,
) -> None:
    client = redis.Redis.from_url(notifying_redis.url)
    truth = small_store(client, app_name, seed=16)
    rules = tmp_path / "rules.toml"
    rules.write_text('[[leave_out]]\naggregate_type = "Course"\n', encoding="utf-8")
    follower = Follower(
        notifying_redis.url, pg_dsn, app_name, "--shard", "0/2", "--transforms", str(rules)
    )
    follower.caught_up()
    writer(client, truth, 300).join()
    written = time.time()
    follower.wait_for(
        lambda e: (
            e["event"] == "lag"
            and e["lag_seconds"] == 0
            and datetime.fromisoformat(e["at"]).timestamp() > written + 0.2
        )
    )
    assert follower.stop()[0] == 0
    migrate(
        notifying_redis.url,
        reference_dsn,
        app_name,
        init_schema=True,
        shard=Shard.parse("0/2"),
        transforms=str(rules),
    )
    reference = pg_rows(reference_dsn)
    assert reference and all(r[1] != "Course" for r in reference)
    assert_same_rows_as(pg_dsn, reference)


# --- notifications lost ------------------------------------------------------------------


def test_a_killed_subscription_is_made_again_and_the_sweep_brings_postgres_level(
    notifying_redis: servers.LocalRedis, pg_dsn: str, reference_dsn: str, app_name: str
) -> None:
    client = redis.Redis.from_url(notifying_redis.url)
    truth = small_store(client, app_name, seed=10)
    follower = Follower(notifying_redis.url, pg_dsn, app_name)
    follower.caught_up()
    writing = writer(client, truth, 400, pause=0.003)
    time.sleep(0.3)
    assert client.client_kill_filter(_type="pubsub") >= 1
    writing.join()
    sweep = follower.wait_for(lambda e: e["event"] == "sweep" and e["reason"] == "resubscribed")
    assert sweep["phase"] == "started" and sweep["lag_seconds"] > 0  # the gap shows
    follower.wait_for(
        lambda e: (
            e["event"] == "sweep" and e["reason"] == "resubscribed" and e["phase"] == "finished"
        )
    )
    level(pg_dsn, truth)
    assert follower.stop()[0] == 0
    assert_same_rows_as(pg_dsn, reference_rows(notifying_redis.url, reference_dsn, app_name))


def test_a_redis_restart_shows_as_lag_and_the_follower_gets_level_after_it(
    pg_dsn: str, reference_dsn: str, app_name: str, tmp_path: Path
) -> None:
    persistent = [*NOTIFYING, "--appendonly", "yes"]
    first = servers.start_redis(workdir=tmp_path, extra_args=persistent)
    restarted: servers.LocalRedis | None = None
    try:
        client = redis.Redis.from_url(first.url)
        truth = small_store(client, app_name, seed=11)
        metrics_file = tmp_path / "follow.prom"
        follower = Follower(first.url, pg_dsn, app_name, "--metrics-file", str(metrics_file))
        follower.caught_up()
        writer(client, truth, 100).join()
        level(pg_dsn, truth)
        client.close()
        mark = len(follower.lines)
        first.stop()
        down = follower.wait_for(
            lambda e: e["event"] == "lag" and "Redis" in e.get("obstacle", ""), after=mark
        )
        follower.wait_for(lambda e: e["event"] == "lag" and e["lag_seconds"] > 1.0, after=mark)
        assert _metric(metrics_file, "lag_seconds") > 0
        assert f"127.0.0.1:{first.port}" in down["obstacle"]
        restarted = servers.start_redis(workdir=tmp_path, extra_args=persistent, port=first.port)
        client = redis.Redis.from_url(restarted.url)
        writer(client, truth, 200, seed=2).join()  # partly before the follower is back
        follower.wait_for(
            lambda e: e["event"] == "sweep" and e["phase"] == "finished" and e["sweeps"] >= 2
        )
        level(pg_dsn, truth)
        follower.wait_for(
            lambda e: e["event"] == "lag" and e["lag_seconds"] == 0, after=len(follower.lines)
        )
        assert follower.stop()[0] == 0
        assert_same_rows_as(pg_dsn, reference_rows(restarted.url, reference_dsn, app_name))
    finally:
        first.stop()
        if restarted is not None:
            restarted.stop()


def _metric(path: Path, name: str) -> float:
    for line in path.read_text().splitlines():
        if line.startswith(f"esctl_migrate_follow_{name}{{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in {path}")


# --- kill -9 -------------------------------------------------------------------------------


def test_kill_9_at_random_points_then_restart_gives_the_rows_of_an_uninterrupted_run(
    notifying_redis: servers.LocalRedis, pg_dsn: str, reference_dsn: str, app_name: str
) -> None:
    client = redis.Redis.from_url(notifying_redis.url)
    truth = small_store(client, app_name, seed=12, defects=("missing_payload",))
    rng = random.Random(12)
    writing = writer(client, truth, 1200, pause=0.002)
    for _ in range(3):
        follower = Follower(notifying_redis.url, pg_dsn, app_name)
        follower.wait_for(lambda e: e["event"] == "sweep")
        time.sleep(rng.uniform(0.05, 0.6))
        follower.proc.kill()
        follower.finish()
        wait_for_no_esctl_sessions(pg_dsn)
    writing.join()
    follower = Follower(notifying_redis.url, pg_dsn, app_name)
    follower.caught_up()
    level(pg_dsn, truth)
    assert follower.stop()[0] == 0
    assert_same_rows_as(pg_dsn, reference_rows(notifying_redis.url, reference_dsn, app_name))
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM esctl.migration_run WHERE status IN ('running', 'interrupted')"
        ).fetchone()
    assert row == (0,)  # the restarts resumed the one run; SIGTERM finished it


# --- stalls --------------------------------------------------------------------------------


def caught_up_with_stall_timeout(
    server: servers.LocalRedis, dsn: str, app: str
) -> tuple[redis.Redis, iw.GroundTruth, Follower]:
    """A store, and a follower with --stall-timeout 2s that has caught up with it."""
    client = redis.Redis.from_url(server.url)
    truth = small_store(client, app, seed=13)
    follower = Follower(server.url, dsn, app, "--stall-timeout", "2s")
    follower.caught_up()
    return client, truth, follower


def test_a_lock_held_on_the_event_table_stops_it_after_the_stall_timeout_naming_the_table(
    notifying_redis: servers.LocalRedis, pg_dsn: str, app_name: str
) -> None:
    client, truth, follower = caught_up_with_stall_timeout(notifying_redis, pg_dsn, app_name)
    with psycopg.connect(pg_dsn) as blocker:
        blocker.execute("LOCK TABLE event IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        writer(client, truth, 20).join()
        code, err = follower.finish()
        elapsed = time.monotonic() - started
        blocker.rollback()
    assert code == 1, err
    assert 1.5 < elapsed < 10
    assert "lock wait on table event" in err and "2 s" in err
    assert follower.lines[-1]["error"]["kind"] == "error"


def test_a_terminate_backend_loop_stops_it_after_the_stall_timeout_naming_the_cause(
    notifying_redis: servers.LocalRedis, pg_dsn: str, app_name: str
) -> None:
    client, truth, follower = caught_up_with_stall_timeout(notifying_redis, pg_dsn, app_name)
    stop = threading.Event()

    def terminate() -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'esctl migrate writer'"
                    # (this test's database only: other tests' migrations run beside it)
                    "   AND datname = current_database()"
                )
                time.sleep(0.005)

    killer = threading.Thread(target=terminate)
    killer.start()
    try:
        time.sleep(0.2)
        writer(client, truth, 20).join()
        code, err = follower.finish()
    finally:
        stop.set()
        killer.join()
    assert code == 1, err
    assert "PostgreSQL connection was terminated" in err


def test_redis_gone_stops_a_polling_follower_after_the_stall_timeout_naming_redis(
    pg_dsn: str, app_name: str
) -> None:
    server = servers.start_redis()
    try:
        small_store(redis.Redis.from_url(server.url), app_name, seed=15)
        follower = Follower(server.url, pg_dsn, app_name, "--stall-timeout", "1s")
        follower.caught_up()
    finally:
        server.stop()
    code, err = follower.finish()
    assert code == 1, err
    assert "Redis is unreachable" in err and f"127.0.0.1:{server.port}" in err
    assert follower.lines[-1]["error"]["kind"] == "error"


# --- cluster -------------------------------------------------------------------------------


def test_follows_a_cluster_on_every_primary_and_its_commit_lists_across_a_reshard(
    redis_cluster: LocalCluster, pg_dsn: str, reference_dsn: str, app_name: str
) -> None:
    client = redis_cluster.client()
    truth = iw.write_store(client, app=app_name, aggregates=60, events_per_aggregate=(1, 3))
    follower = Follower(redis_cluster.url, pg_dsn, app_name, "--enable-notifications")
    follower.caught_up()
    for node in redis_cluster.nodes:
        flags = redis.Redis(port=node.port).config_get("notify-keyspace-events")
        assert "K" in str(flags["notify-keyspace-events"])
    writer(client, truth, 60).join()
    level(pg_dsn, truth)
    assert any(e["event"] == "batch" and e["source"] == "notifications" for e in follower.lines)

    slot = redis.cluster.key_slot(f"{{EventStore:{app_name}}}".encode())
    source = slot_owner(redis_cluster, slot)
    target = next(n for n in redis_cluster.primaries() if n.port != source.port)
    assert move_slot(redis_cluster, slot, target) >= 60  # the commit lists (and any other)
    seen = len(follower.lines)
    writer(client, truth, 60, seed=2).join()  # now published by the other primary
    level(pg_dsn, truth)
    assert any(
        e["event"] == "batch" and e["source"] == "notifications" for e in follower.lines[seen:]
    )
    assert follower.stop()[0] == 0
    assert_same_rows_as(pg_dsn, reference_rows(redis_cluster.url, reference_dsn, app_name))


@pytest.mark.slow
def test_a_failover_moves_the_subscription_to_the_promoted_replica(
    redis_cluster_with_replicas: LocalCluster, pg_dsn: str, reference_dsn: str, app_name: str
) -> None:
    cluster = redis_cluster_with_replicas
    client = cluster.client()
    truth = iw.write_store(client, app=app_name, aggregates=60, events_per_aggregate=(1, 3))
    cluster.sync_replicas()
    follower = Follower(cluster.url, pg_dsn, app_name, "--enable-notifications")
    follower.caught_up()
    slot = redis.cluster.key_slot(f"{{EventStore:{app_name}}}".encode())
    primary = slot_owner(cluster, slot)
    replica = next(
        n for n in cluster.replicas_of_primaries()
        if redis.Redis(port=n.port).info("replication")["master_port"] == primary.port
    )  # fmt: skip
    with redis.Redis(port=replica.port) as promoted:
        assert "K" in str(promoted.config_get("notify-keyspace-events")["notify-keyspace-events"])
        promoted.execute_command("CLUSTER FAILOVER")
        deadline = time.monotonic() + 10
        while promoted.info("replication")["role"] != "master":
            assert time.monotonic() < deadline, "the replica was not promoted"
            time.sleep(0.05)
    # the follower notices the new primary within 2 s, subscribes there and sweeps
    follower.wait_for(lambda e: e["event"] == "sweep" and e["reason"] == "resubscribed")
    seen = len(follower.lines)
    writer(cluster.client(), truth, 60).join()
    level(pg_dsn, truth)
    assert any(
        e["event"] == "batch" and e["source"] == "notifications" for e in follower.lines[seen:]
    )
    assert follower.stop()[0] == 0
    assert_same_rows_as(pg_dsn, reference_rows(cluster.url, reference_dsn, app_name))


def test_on_a_terminal_the_status_line_stays_on_one_row_and_ctrl_c_exits_130(
    fresh_redis: servers.LocalRedis, pg_dsn: str, app_name: str
) -> None:
    """As a person runs it: the lag status line is rewritten in place on an 80-column
    terminal (never wider, so never wrapped onto the lines before it), the sweep and notice
    lines stand on their own rows, and Ctrl-C stops it with 130."""
    client = redis.Redis.from_url(fresh_redis.url)
    small_store(client, app_name, seed=11, defects=("version_gap",))
    args = [*cli_args(fresh_redis.url, pg_dsn, app_name), "--init-schema", "--follow"]
    with TerminalSession([*ESCTL, "migrate", "redis-to-pg", *args]) as session:
        session.wait_for(lambda s: "following (polling): lag" in s.text, timeout=30)
        session.wait_for(lambda s: "sweep (start) done" in s.text, timeout=30)
        session.type("\x03")
        screen = session.wait_exit(timeout=30)
    assert not problems_on(screen, exit_code=130), screen.describe()
    assert max(len(row) for row in screen.rows) <= 80
    # The status line was cleared before each other line and at the end: the one row left
    # with it is the final "stopped" line (a status line wider than the terminal would have
    # wrapped, and its redraws left pieces of it on the rows above).
    assert len([row for row in screen.rows if "following (" in row]) == 1, screen.describe()
    (done,) = [r for r in screen.rows if r.startswith("sweep (start) done")]
    assert "events migrated so far" in done
    # (the terminal echoes ^C where the cursor was: at the start of the cleared status row)
    assert "stopped (interrupt): following (polling)" in screen.text, screen.describe()


def test_a_hangup_stops_a_follower_on_a_terminal_as_sigterm_does(
    fresh_redis: servers.LocalRedis, pg_dsn: str, app_name: str
) -> None:
    """Its terminal hung up (an ssh session dropped, tmux killed) while its status line is
    drawn there: it stops after the current batch and exits 0, its run recorded as finished,
    as on SIGTERM (SIGHUP killed it on the spot: the run stayed recorded as running)."""
    client = redis.Redis.from_url(fresh_redis.url)
    small_store(client, app_name, seed=12)
    args = [*cli_args(fresh_redis.url, pg_dsn, app_name), "--init-schema", "--follow"]
    with TerminalSession([*ESCTL, "migrate", "redis-to-pg", *args]) as session:
        session.wait_for(lambda s: "following (polling): lag" in s.text, timeout=30)
        session.hang_up()
        code = session.process.wait(timeout=30)
    assert code == 0
    status = run_cli("migrate", "status", *cli_args(fresh_redis.url, pg_dsn, app_name), "--json")
    assert status.returncode == 0, status.stderr
    (shard,) = json.loads(status.stdout)["shards"]
    assert shard["recorded_status"] == "finished" and not shard["lock_alive"], shard
