"""``replay --shard I/N`` against real servers: four shard processes of one projection running
at once write exactly the tables of one unsharded run (from Redis and from PostgreSQL), a shard
killed mid-run and rerun changes nothing, each shard has its own checkpoint row and lock, and a
checkpoint of another shard count is refused (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import zlib
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import independent_writer as iw
import psycopg
import pytest
import redis
from helpers import cli_env, run_cli

from esctl.locks import AdvisoryLock
from esctl.migrate import MigrateOptions, migrate_redis_to_pg
from esctl.query import QueryFilters
from esctl.replay import PgSource, RedisSource
from esctl.replay.checkpoints import checkpoint_lock_name
from esctl.shard import Shard

PROJECTION = '''
"""The built-in event counts, plus one row per handled event tagged with the run's shard (no
unique key: a repeat would show); SIGKILLs itself once in the flush of batch KILL_AT_BATCH
(after writing, before esctl commits) while the marker file does not exist."""
import os, signal, time

from esctl.projections.event_counts import EventCounts


class CountsAndSeen(EventCounts):
    def setup(self, ctx):
        super().setup(ctx)  # holds the advisory lock that serialises the shards' setups
        ctx.conn.execute(
            "CREATE TABLE IF NOT EXISTS shard_seen"
            " (shard text, aggregate_id text, version int, event_type text)"
        )
        if ctx.fresh:
            ctx.conn.execute("DELETE FROM shard_seen WHERE shard = %s", (str(ctx.shard),))
        self.rows = []

    def handle(self, event):
        super().handle(event)
        self.rows.append((event.aggregate_id, event.version, event.event_type))

    def flush(self, ctx):
        super().flush(ctx)
        with ctx.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO shard_seen VALUES (%s, %s, %s, %s)",
                [(str(ctx.shard), *row) for row in self.rows],
            )
        self.rows = []
        marker = os.environ.get("KILL_MARKER", "")
        if ctx.batch == int(os.environ.get("KILL_AT_BATCH", "0")) and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(float(os.environ.get("BATCH_DELAY", "0")))


projection = CountsAndSeen
'''


@pytest.fixture
def truth(redis_client: redis.Redis, app_name: str, pg_dsn: str) -> iw.GroundTruth:
    """A store with two unloadable aggregates, migrated (PostgreSQL holds the clean ones)."""
    store = iw.write_store(
        redis_client,
        app=app_name,
        aggregates=48,
        events_per_aggregate=(1, 8),
        defects=["version_gap", "missing_payload"],
        seed=31,
    )
    migrate_redis_to_pg(
        redis_client, MigrateOptions(app=app_name, pg_dsn=pg_dsn, init_schema=True, writers=1)
    )
    return store


@pytest.fixture
def projection_file(tmp_path: Path) -> str:
    path = tmp_path / "counts_and_seen.py"
    path.write_text(textwrap.dedent(PROJECTION))
    return f"{path}:CountsAndSeen"


def replay_args(
    source: str, url: str, dsn: str, app: str, projection: str, checkpoint: str, *extra: str
) -> list[str]:
    return [
        "replay", "--from", source, "--all", "--to", "projection", "--projection", projection,
        "--checkpoint", checkpoint, "--batch-size", "10", "--redis-url", url, "--pg-dsn", dsn,
        "--app", app, "--json", *extra,
    ]  # fmt: skip


def run_shards(
    args: list[str],
    env: dict[str, str] | None = None,
    victim: int | None = None,
    *,
    head_start: tuple[str, str] | None = None,
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``--shard i/4`` for i = 0..3 as four processes at once; ``victim`` gets ``env``
    (the others none of it). ``head_start`` (DSN, checkpoint name): start the others only
    once shard 0/4 has committed a batch, so their fresh starts come after its first writes."""
    procs: list[subprocess.Popen[str]] = []
    for i in range(4):
        extra = env if victim is None or i == victim else {}
        if i == 1 and head_start is not None:
            deadline = time.monotonic() + 60
            while not checkpoint_rows(*head_start).get("0/4", {}).get("events"):
                assert procs[0].poll() is None or procs[0].returncode == 0, procs[0].returncode
                assert time.monotonic() < deadline, "shard 0/4 committed no batch within 60 s"
                time.sleep(0.05)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "esctl", *args, "--shard", f"{i}/4"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=cli_env({"BATCH_DELAY": "0.02", **(extra or {})}),
            )
        )
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def counts_table(dsn: str) -> dict[tuple[str, date], int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT event_type, day, events FROM projections.event_counts")
        return {(t, d): n for t, d, n in rows}


def seen(dsn: str, shards: str) -> Counter[tuple[str, int, str]]:
    """The events handled by runs whose shard spec is LIKE ``shards``."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT aggregate_id, version, event_type FROM shard_seen WHERE shard LIKE %s",
            (shards,),
        )
        return Counter((a, v, t) for a, v, t in rows)


def expected_counts(events: list[iw.TruthEvent]) -> dict[tuple[str, date], int]:
    return dict(
        Counter(
            (e.event_type, datetime.fromisoformat(e.timestamp).astimezone(UTC).date())
            for e in events
        )
    )


def events_of(truth: iw.GroundTruth, source: str) -> list[iw.TruthEvent]:
    if source == "pg":
        return [e for a in truth.clean_aggregates() for e in a.events]
    return [e for a in truth.aggregates for e in a.events if e.readable]


def checkpoint_rows(dsn: str, name: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT shard, events, finished_at FROM esctl.projection_checkpoint WHERE name = %s",
            (name,),
        ).fetchall()
    return {s: {"events": n, "finished": f is not None} for s, n, f in rows}


def owner(aggregate_id: str) -> int:
    return zlib.crc32(aggregate_id.encode()) % 4


# --- the sources --------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["aggregate", "time"])
@pytest.mark.parametrize("source", ["redis", "pg"])
def test_a_shard_source_yields_exactly_its_aggregates(
    truth: iw.GroundTruth,
    redis_client: redis.Redis,
    app_name: str,
    pg_dsn: str,
    source: str,
    order: str,
) -> None:
    def read(shard: Shard) -> list[tuple[str, int]]:
        events: RedisSource | PgSource
        if source == "redis":
            events = RedisSource(redis_client, app_name, QueryFilters(), order=order, shard=shard)
        else:
            events = PgSource(pg_dsn, "public", app_name, QueryFilters(), order=order, shard=shard)
        return [(e.aggregate_id, e.version) for e in events]

    whole = read(Shard())
    parts = [read(Shard(i, 4)) for i in range(4)]
    for i, part in enumerate(parts):
        assert part and {owner(a) for a, _ in part} == {i}
        assert part == [x for x in whole if owner(x[0]) == i]  # same order, filtered
    assert Counter(x for p in parts for x in p) == Counter(whole)


# --- four shards at once --------------------------------------------------------------------


@pytest.mark.parametrize("source", ["redis", "pg"])
def test_four_concurrent_shards_write_the_tables_of_one_unsharded_run(
    truth: iw.GroundTruth,
    redis_test_url: str,
    app_name: str,
    pg_dsn: str,
    projection_file: str,
    source: str,
) -> None:
    args = [source, redis_test_url, pg_dsn, app_name, projection_file]
    whole = run_cli(*replay_args(*args, "whole"))
    assert whole.returncode in (0, 3), whole.stderr
    expected = expected_counts(events_of(truth, source))
    assert counts_table(pg_dsn) == expected
    unsharded_seen = seen(pg_dsn, "0/1")
    assert sum(unsharded_seen.values()) == len(events_of(truth, source))

    results = run_shards(replay_args(*args, "parts"), head_start=(pg_dsn, "parts"))
    documents = []
    for i, result in enumerate(results):
        assert result.returncode in (0, 3), (i, result.stderr)
        documents.append(json.loads(result.stdout))
    # The fresh shards took the unsharded run's counts back and counted everything again.
    assert counts_table(pg_dsn) == expected
    assert seen(pg_dsn, "%/4") == unsharded_seen
    assert sum(d["events"] for d in documents) == len(events_of(truth, source))
    assert [d["shard"] for d in documents] == ["0/4", "1/4", "2/4", "3/4"]
    assert all(d["events"] > 0 for d in documents)
    rows = checkpoint_rows(pg_dsn, "parts")
    assert set(rows) == {"0/4", "1/4", "2/4", "3/4"}
    assert all(r["finished"] for r in rows.values())
    assert [rows[f"{i}/4"]["events"] for i in range(4)] == [d["events"] for d in documents]


def test_shards_started_over_while_the_others_run_keep_the_totals(
    truth: iw.GroundTruth, redis_test_url: str, app_name: str, pg_dsn: str, projection_file: str
) -> None:
    """--reset on every shard at once: each takes back its own share of the counts while the
    others are adding theirs to the same rows (no lost count, no deadlock)."""
    args = replay_args("pg", redis_test_url, pg_dsn, app_name, projection_file, "parts")
    assert all(r.returncode == 0 for r in run_shards(args))
    expected = expected_counts(events_of(truth, "pg"))
    assert counts_table(pg_dsn) == expected
    again = run_shards([*args, "--reset"], head_start=(pg_dsn, "parts"))
    assert all(r.returncode == 0 for r in again), [r.stderr for r in again]
    assert all(not json.loads(r.stdout)["checkpoint"]["resumed"] for r in again)
    assert counts_table(pg_dsn) == expected
    with psycopg.connect(pg_dsn) as conn:
        shares: dict[str, object] = dict(
            conn.execute(
                "SELECT shard, sum(events) FROM projections.event_counts_by_shard GROUP BY 1"
            ).fetchall()
        )
    assert shares == {k: v["events"] for k, v in checkpoint_rows(pg_dsn, "parts").items()}


@pytest.mark.parametrize("source", ["pg", "redis"])
def test_a_shard_killed_mid_run_and_rerun_leaves_the_same_tables(
    truth: iw.GroundTruth,
    redis_test_url: str,
    app_name: str,
    pg_dsn: str,
    projection_file: str,
    tmp_path: Path,
    source: str,
) -> None:
    args = replay_args(source, redis_test_url, pg_dsn, app_name, projection_file, "parts")
    marker = str(tmp_path / "killed")
    results = run_shards(args, {"KILL_AT_BATCH": "2", "KILL_MARKER": marker}, victim=1)
    assert results[1].returncode == -9, results[1].stderr
    assert all(r.returncode in (0, 3) for i, r in enumerate(results) if i != 1)
    assert checkpoint_rows(pg_dsn, "parts")["1/4"]["events"] == 10  # batch 1 only
    rerun = run_cli(*args, "--shard", "1/4", env={"KILL_MARKER": marker})
    assert rerun.returncode in (0, 3), rerun.stderr
    document = json.loads(rerun.stdout)
    assert document["checkpoint"]["resumed"] and document["checkpoint"]["shard"] == "1/4"
    events = events_of(truth, source)
    assert counts_table(pg_dsn) == expected_counts(events)
    assert seen(pg_dsn, "%/4") == Counter((e.aggregate_id, e.version, e.event_type) for e in events)


# --- shards starting at different moments: who may empty the tables ------------------------

TRUNCATING = '''
"""The minimal projection of docs/projections.md, shard-safe: TRUNCATE when ctx.fresh_all,
else (fresh) delete the rows of this shard's aggregates. On a release without fresh_all it
reads it as those docs said (TRUNCATE when fresh). Each setup is recorded."""
import os, time


class Rows:
    def setup(self, ctx):
        self.ctx = ctx
        conn = ctx.conn
        conn.execute("CREATE TABLE IF NOT EXISTS rows_seen (aggregate_id text, version int)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS rows_setups (n serial, checkpoint text, shard text,"
            " fresh bool, fresh_all bool)"
        )
        fresh_all = getattr(ctx, "fresh_all", ctx.fresh)
        conn.execute(
            "INSERT INTO rows_setups (checkpoint, shard, fresh, fresh_all) VALUES (%s, %s, %s, %s)",
            (ctx.checkpoint, str(ctx.shard), ctx.fresh, fresh_all),
        )
        if fresh_all:
            conn.execute("TRUNCATE rows_seen")
        elif ctx.fresh:
            ids = [i for (i,) in conn.execute("SELECT DISTINCT aggregate_id FROM rows_seen")]
            mine = [i for i in ids if ctx.shard.owns(i)]
            conn.execute("DELETE FROM rows_seen WHERE aggregate_id = ANY(%s)", (mine,))

    def handle(self, event):
        self.ctx.conn.execute(
            "INSERT INTO rows_seen VALUES (%s, %s)", (event.aggregate_id, event.version)
        )

    def flush(self, ctx):
        time.sleep(float(os.environ.get("BATCH_DELAY", "0")))
        hold = os.environ.get("HOLD_WHILE")  # a file: its batches wait while it is there
        while hold and os.path.exists(hold):
            time.sleep(0.02)
'''


def rows_seen(dsn: str) -> Counter[tuple[str, int]]:
    with psycopg.connect(dsn) as conn:
        return Counter(conn.execute("SELECT aggregate_id, version FROM rows_seen").fetchall())


def setups(dsn: str) -> list[tuple[str | None, str, bool, bool]]:
    """(checkpoint, shard, fresh, fresh_all) of each setup since the last call, in order."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "DELETE FROM rows_setups RETURNING n, checkpoint, shard, fresh, fresh_all"
        ).fetchall()
    return [tuple(r[1:]) for r in sorted(rows)]


def count_setups(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM rows_setups").fetchone()
    assert row is not None
    return int(row[0])


def start_shard(
    args: list[str], shard: str, delay: str = "0", hold: Path | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "esctl", *args, "--shard", shard],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env({"BATCH_DELAY": delay, "HOLD_WHILE": str(hold or "")}),
    )


def finished(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def test_a_shard_starting_after_another_keeps_its_rows_with_reset_too(
    truth: iw.GroundTruth, redis_test_url: str, app_name: str, pg_dsn: str, tmp_path: Path
) -> None:
    """Two shards of a projection that TRUNCATEs when the whole checkpoint starts over: the
    shard that starts second (after the first finished, or while it runs, with --reset on
    both) must not empty the table; the first start of a new shard count may."""
    path = tmp_path / "rows.py"
    path.write_text(textwrap.dedent(TRUNCATING))
    args = replay_args("pg", redis_test_url, pg_dsn, app_name, f"{path}:Rows", "rows")
    everything = Counter((e.aggregate_id, e.version) for e in events_of(truth, "pg"))

    # A new checkpoint: shard 0/2 to the end, then shard 1/2.
    finished(start_shard(args, "0/2"))
    finished(start_shard(args, "1/2"))
    assert rows_seen(pg_dsn) == everything
    assert setups(pg_dsn) == [("rows", "0/2", True, True), ("rows", "1/2", True, False)]

    # --reset on both, shard 1/2 starting while 0/2 is halfway.
    # 0/2's batches wait while `hold` is there: a loaded machine may take seconds to start 1/2.
    hold = tmp_path / "hold"
    first = start_shard([*args, "--reset"], "0/2", delay="0.2", hold=hold)
    deadline = time.monotonic() + 60
    while not (
        count_setups(pg_dsn) == 1 and checkpoint_rows(pg_dsn, "rows")["0/2"]["events"] >= 20
    ):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "shard 0/2 committed no batch within 60 s"
        time.sleep(0.02)
    hold.touch()
    second = start_shard([*args, "--reset"], "1/2")
    while count_setups(pg_dsn) < 2:
        assert second.poll() is None, second.communicate()
        time.sleep(0.02)
    assert first.poll() is None  # 1/2 made its start while 0/2 was writing
    hold.unlink()
    assert not finished(second)["checkpoint"]["resumed"]
    assert finished(first)["events"] == checkpoint_rows(pg_dsn, "rows")["0/2"]["events"]
    assert rows_seen(pg_dsn) == everything
    assert setups(pg_dsn) == [("rows", "0/2", True, False), ("rows", "1/2", True, False)]

    # A resume is not fresh; --reset with another shard count deletes the old count's rows:
    # its first shard may empty the table, the later ones may not.
    finished(start_shard(args, "1/2"))
    for i in range(3):
        finished(start_shard([*args, "--reset"], f"{i}/3"))
    assert setups(pg_dsn) == [
        ("rows", "1/2", False, False),
        ("rows", "0/3", True, True),
        ("rows", "1/3", True, False),
        ("rows", "2/3", True, False),
    ]
    assert rows_seen(pg_dsn) == everything

    # Without a checkpoint a shard cannot know of the others: never fresh_all; unsharded is.
    bare = [a for a in args if a not in ("--checkpoint", "rows")]
    finished(start_shard(bare, "0/3"))
    assert run_cli(*bare).returncode == 0
    assert setups(pg_dsn) == [(None, "0/3", True, False), (None, "0/1", True, True)]


# --- checkpoints of another shard count ----------------------------------------------------


def test_a_checkpoint_of_another_shard_count_is_refused_until_reset(
    truth: iw.GroundTruth, redis_test_url: str, app_name: str, pg_dsn: str
) -> None:
    base = replay_args(
        "pg", redis_test_url, pg_dsn, app_name, "esctl.projections.event_counts", "counts"
    )
    for i in (0, 1):
        assert run_cli(*base, "--shard", f"{i}/2").returncode == 0
    for other in (["--shard", "0/4"], [], ["--shard", "1/4", "--dry-run"]):
        refused = run_cli(*base, *other)
        assert refused.returncode == 2, (other, refused.stdout, refused.stderr)
        error = json.loads(refused.stdout)["error"]
        assert "--shard 0/2, 1/2" in error["message"] and "--reset" in error["hint"], error
    assert set(checkpoint_rows(pg_dsn, "counts")) == {"0/2", "1/2"}
    # an unsharded checkpoint is refused to a sharded run, and says so
    assert run_cli(*replay_args("pg", redis_test_url, pg_dsn, app_name,
                                "esctl.projections.event_counts", "whole")).returncode == 0  # fmt: skip
    refused = run_cli(
        *replay_args(
            "pg", redis_test_url, pg_dsn, app_name, "esctl.projections.event_counts", "whole"
        ),
        "--shard",
        "2/4",
    )
    assert refused.returncode == 2
    assert "without --shard" in json.loads(refused.stdout)["error"]["message"]
    # --reset starts the checkpoint over for the new shard count
    for i in range(4):
        assert run_cli(*base, "--shard", f"{i}/4", "--reset").returncode == 0
    assert set(checkpoint_rows(pg_dsn, "counts")) == {f"{i}/4" for i in range(4)}
    assert counts_table(pg_dsn) == expected_counts(events_of(truth, "pg"))


def test_a_reset_refused_for_a_running_shard_names_the_session_holding_it(
    truth: iw.GroundTruth, redis_test_url: str, app_name: str, pg_dsn: str
) -> None:
    """--reset with another shard count deletes the old count's rows: refused (75) while a run
    of one of them holds its lock, naming that session and how to end a dead one."""
    base = replay_args(
        "pg", redis_test_url, pg_dsn, app_name, "esctl.projections.event_counts", "counts"
    )
    for i in (0, 1):
        assert run_cli(*base, "--shard", f"{i}/2").returncode == 0
    lock = checkpoint_lock_name("counts", Shard.parse("1/2"))
    with psycopg.connect(pg_dsn, autocommit=True, application_name="old-shard-run") as holder:
        row = holder.execute(
            "SELECT pg_backend_pid(), pg_try_advisory_lock(hashtextextended(%s, 0))", (lock,)
        ).fetchone()
        assert row is not None and row[1]
        refused = run_cli(*base, "--shard", "0/4", "--reset")
    assert refused.returncode == 75, refused.stderr
    error = json.loads(refused.stdout)["error"]
    assert "would delete the row of shard 1/2" in error["message"], error
    assert f"held by PostgreSQL session pid {row[0]} (" in error["message"], error
    assert "application 'old-shard-run'" in error["message"]
    assert f"`SELECT pg_terminate_backend({row[0]})`" in error["hint"], error
    assert set(checkpoint_rows(pg_dsn, "counts")) == {"0/2", "1/2"}  # nothing was done


def test_a_shard_lock_is_its_own(truth: iw.GroundTruth, app_name: str, pg_dsn: str) -> None:
    with AdvisoryLock(pg_dsn, "esctl:replay:counts:shard 1/4", what="test"):
        base = replay_args(
            "pg", "redis://unused", pg_dsn, app_name, "esctl.projections.event_counts", "counts"
        )
        busy = run_cli(*base, "--shard", "1/4")
        assert busy.returncode == 75, busy.stderr
        assert "shard 1/4" in json.loads(busy.stdout)["error"]["message"]
        assert run_cli(*base, "--shard", "0/4").returncode == 0


# --- the other targets ---------------------------------------------------------------------


def test_stdout_shards_print_their_share(
    truth: iw.GroundTruth, redis_test_url: str, app_name: str
) -> None:
    base = ["replay", "--from", "redis", "--all", "--to", "stdout"]
    base += ["--redis-url", redis_test_url, "--app", app_name]
    whole = run_cli(*base)
    assert whole.returncode in (0, 3), whole.stderr
    lines = whole.stdout.splitlines()
    assert lines
    union: list[str] = []
    for i in range(4):
        part = run_cli(*base, "--shard", f"{i}/4")
        assert part.returncode in (0, 3), part.stderr
        for line in part.stdout.splitlines():
            assert owner(json.loads(line)["aggregate_id"]) == i
        union.extend(part.stdout.splitlines())
    assert Counter(union) == Counter(lines)


def test_queue_refuses_shard(redis_test_url: str, app_name: str, env_name: str) -> None:
    result = run_cli(
        "replay", "--from", "redis", "--all", "--to", "queue", "--env", env_name,
        "--redis-url", redis_test_url, "--app", app_name, "--shard", "0/2", "--json",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    message = json.loads(result.stdout)["error"]["message"]
    assert "--shard 0/2" in message and "--to queue" in message


# --- the previous release's tables ---------------------------------------------------------


def test_tables_of_the_previous_release_keep_working(
    truth: iw.GroundTruth, redis_test_url: str, app_name: str, pg_dsn: str, tmp_path: Path
) -> None:
    """A checkpoint keyed by name alone and event counts without shares (as the release
    before --shard made them) are resumed, rekeyed, and taken back by a sharded rebuild."""
    projection = "esctl.projections.event_counts"
    args = replay_args("pg", redis_test_url, pg_dsn, app_name, projection, "old")
    assert run_cli(*args, "--limit", "25").returncode == 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE esctl.projection_checkpoint DROP CONSTRAINT projection_checkpoint_pkey;"
            " ALTER TABLE esctl.projection_checkpoint DROP COLUMN shard;"
            " ALTER TABLE esctl.projection_checkpoint ADD PRIMARY KEY (name);"
            " DROP TABLE projections.event_counts_by_shard;"
        )
    dry = run_cli(*args, "--limit", "25", "--dry-run")  # reads the old table, changes nothing
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["checkpoint"]["resumed"]
    with psycopg.connect(pg_dsn) as conn:
        assert not conn.execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = 'esctl.projection_checkpoint'::regclass"
            " AND attname = 'shard' AND NOT attisdropped"
        ).fetchone()
    resumed = run_cli(*args, "--limit", "25")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["checkpoint"]["resumed"]
    assert json.loads(resumed.stdout)["events"] == 0
    assert checkpoint_rows(pg_dsn, "old") == {"0/1": {"events": 25, "finished": True}}
    with psycopg.connect(pg_dsn) as conn:
        shares = conn.execute(
            "SELECT shard, sum(events) FROM projections.event_counts_by_shard GROUP BY 1"
        ).fetchall()
    assert shares == [("0/1", 25)]  # the old counts became the unsharded run's share
    results = run_shards(replay_args("pg", redis_test_url, pg_dsn, app_name, projection, "new"))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert counts_table(pg_dsn) == expected_counts(events_of(truth, "pg"))
    with psycopg.connect(pg_dsn) as conn:
        pkey = conn.execute(
            "SELECT array_agg(a.attname ORDER BY a.attname) FROM pg_constraint c"
            " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)"
            " WHERE c.conrelid = 'esctl.projection_checkpoint'::regclass AND c.contype = 'p'"
        ).fetchone()
    assert pkey == (["name", "shard"],)
