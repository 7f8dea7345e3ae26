"""The cut-over of README "Switching services to PostgreSQL", end to end on real servers.

A live writer (tests/independent_writer.py, saving as the .NET library does) appends while
``migrate redis-to-pg --follow`` runs; the writer stops; ``migrate status`` reports lag 0 and
``--max-lag`` exits 0; ``migrate verify`` exits 0; the follower stops on SIGTERM with exit 0;
PostgreSQL holds exactly the writer's ground truth; ``migrate prune`` with a backup file
empties the app's events from Redis and leaves its snapshots and queues. And ``--max-lag``
exits 3 while one shard's follower is down and 0 once it has caught up.

Every command is the real CLI in a subprocess. The followers turn keyspace notifications on
(``--enable-notifications``: CONFIG SET), so each test has a Redis server of its own.
"""

from __future__ import annotations

import json
import os
import signal
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import independent_writer as iw
import psycopg
import redis
from helpers import run_cli, wait_for
from test_migrate_follow import Follower, writer

from esctl import servers

SNAPSHOT = '{"$type":"Learning.Enrollment.Domain.EnrollmentSnapshot, Learning.Enrollment.Domain","Version":1}'
QUEUE = "Learning.ReportingService.Worker:{production:EnrollmentCreated}:PublishedEvents"


def cli(*args: str, where: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """``esctl ARGS --json`` against the test's servers: (exit code, its JSON document)."""
    result = run_cli(
        *args, "--app", where["app"], "--redis-url", where["redis_url"],
        "--pg-dsn", where["pg_dsn"], "--json",
    )  # fmt: skip
    assert result.returncode in (0, 3), (args, result.returncode, result.stderr)
    return result.returncode, json.loads(result.stdout)


@contextmanager
def following(where: dict[str, str], *args: str) -> Iterator[Follower]:
    """A follower (turning notifications on, as the README's cut-over does), caught up."""
    follower = Follower(
        where["redis_url"], where["pg_dsn"], where["app"], "--enable-notifications", *args
    )
    try:
        follower.caught_up()
        yield follower
    finally:
        if follower.proc.poll() is None:
            os.kill(follower.proc.pid, signal.SIGKILL)
            follower.proc.wait()


def pg_events(pg_dsn: str, app: str) -> dict[tuple[str, int], tuple[str, Any]]:
    """(aggregate id, version) -> (event type, payload) of every event of ``app``."""
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT a.aggregate_id, e.version, e.event_type, e.event_data #>> '{}' FROM event e"
            " JOIN aggregate a USING (aggregate_key) WHERE a.application_name = %s",
            (app,),
        ).fetchall()
    return {(a, v): (t, json.loads(d)) for a, v, t, d in rows}


def pg_count(pg_dsn: str, app: str) -> int:
    return len(pg_events(pg_dsn, app))


def truth_events(truth: iw.GroundTruth) -> dict[tuple[str, int], tuple[str, Any]]:
    return {
        (e.aggregate_id, e.version): (e.event_type, json.loads(e.payload)) for e in truth.events()
    }


def test_cutover_as_the_readme_walks_it(pg_dsn: str, app_name: str, tmp_path: Path) -> None:
    server = servers.start_redis()
    try:
        client = redis.Redis.from_url(server.url)
        where = {"redis_url": server.url, "pg_dsn": pg_dsn, "app": app_name}
        truth = iw.write_store(
            client, app=app_name, aggregates=60, events_per_aggregate=(1, 5), seed=16
        )
        first = truth.aggregates[0]
        client.hset(
            iw.snapshot_hash_key(app_name, first.aggregate_id), first.aggregate_id, SNAPSHOT
        )
        client.lpush(QUEUE, first.events[0].payload)

        # Plan, then the first run creating the schema.
        code, plan = cli("migrate", "plan", "--sample", "100", where=where)
        assert code == 0 and plan["events"] == len(truth.events())
        assert cli("migrate", "redis-to-pg", "--init-schema", "--no-progress", where=where)[0] == 0

        # The follower, with the services still writing to Redis.
        with following(where) as follower:
            writing = writer(client, truth, 150, pause=0.01, seed=5)
            wait_for(
                lambda: any(x["events_migrated"] > 0 for x in follower.lines),
                "following",
                timeout=15.0,
            )
            _, running = cli("migrate", "status", where=where)
            assert [(s["status"], s["lock_alive"]) for s in running["shards"]] == [
                ("running", True)
            ]
            writing.join()  # the writers stop

            wait_for(
                lambda: pg_count(pg_dsn, app_name) == len(truth.events()),
                "every event in PostgreSQL after the writers stopped",
                timeout=15.0,
            )
            code, level = cli("migrate", "status", "--max-lag", "0s", where=where)
            assert code == 0 and level["over_max_lag"] == [], level
            assert level["lag"]["events_behind"] == 0 and level["lag"]["seconds"] == 0
            code, verified = cli("migrate", "verify", where=where)
            assert code == 0, verified["problems"]
            assert verified["events_compared"] == len(truth.events())
            assert follower.stop()[0] == 0
        assert follower.lines[-1]["event"] == "stopped"
        assert pg_events(pg_dsn, app_name) == truth_events(truth)

        # The services read from PostgreSQL now: free Redis, keeping a backup.
        backup = tmp_path / "cutover.jsonl.zst"
        code, pruned = cli("migrate", "prune", "--yes", "--backup-file", str(backup), where=where)
        assert code == 0, pruned
        assert pruned["events_deleted"] == len(truth.events()) and backup.stat().st_size > 0
        assert not list(client.scan_iter(match=iw.commit_list_key(app_name, "*")))
        assert not client.exists(*{e.hash_key for e in truth.events()})
        # Snapshots and queues stay in Redis.
        assert (
            client.hget(iw.snapshot_hash_key(app_name, first.aggregate_id), first.aggregate_id)
            == SNAPSHOT.encode()
        )
        assert client.lrange(QUEUE, 0, -1) == [first.events[0].payload.encode()]
        assert pg_events(pg_dsn, app_name) == truth_events(truth)
    finally:
        server.stop()


def test_max_lag_exits_3_while_a_shard_is_behind_and_0_once_level(
    pg_dsn: str, app_name: str
) -> None:
    server = servers.start_redis()
    try:
        client = redis.Redis.from_url(server.url)
        where = {"redis_url": server.url, "pg_dsn": pg_dsn, "app": app_name}
        truth = iw.write_store(
            client, app=app_name, aggregates=40, events_per_aggregate=(1, 4), seed=17
        )
        for shard in ("0/2", "1/2"):
            assert (
                cli("migrate", "redis-to-pg", "--init-schema", "--shard", shard, where=where)[0]
                == 0
            )
        ids = {
            n: [
                a.aggregate_id
                for a in truth.aggregates
                if zlib.crc32(a.aggregate_id.encode()) % 2 == n
            ]
            for n in (0, 1)
        }
        total = len(truth.events())
        # Shard 0/2 is followed; shard 1/2's follower is down while both shards get events.
        with following(where, "--shard", "0/2") as first:
            iw.append_events(client, truth, 6, seed=8, aggregate_ids=ids[0])
            iw.append_events(client, truth, 6, seed=9, aggregate_ids=ids[1])
            wait_for(
                lambda: pg_count(pg_dsn, app_name) == total + 6, "shard 0/2 level", timeout=15.0
            )
            time.sleep(0.2)  # the oldest missing event is older than --max-lag
            code, behind = cli("migrate", "status", "--max-lag", "100ms", where=where)
            assert code == 3 and behind["over_max_lag"] == ["1/2"], behind
            shards = {s["shard"]: s["lag"]["events_behind"] for s in behind["shards"]}
            assert shards == {"0/2": 0, "1/2": 6}

            with following(where, "--shard", "1/2") as second:
                wait_for(
                    lambda: pg_count(pg_dsn, app_name) == total + 12,
                    "both shards level",
                    timeout=15.0,
                )
                code, level = cli("migrate", "status", "--max-lag", "100ms", where=where)
                assert code == 0 and level["over_max_lag"] == [], level
                assert second.stop()[0] == 0
            assert first.stop()[0] == 0
        assert pg_events(pg_dsn, app_name) == truth_events(truth)
    finally:
        server.stop()
