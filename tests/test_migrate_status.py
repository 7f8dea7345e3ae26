"""``migrate status``: runs, lock holders and lag, against real Redis and PostgreSQL.

The store is the independent writer's (tests/independent_writer.py); migrations run through
the real CLI. A run in progress is a real ``migrate redis-to-pg --rate 1`` in the background,
killed with SIGKILL for the interrupted case; --watch runs on a pty and gets a Ctrl-C.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import termios
from datetime import datetime
from pathlib import Path
from typing import Any

import independent_writer as iw
import psycopg
import pyte
import redis
from helpers import run_cli, start_cli, wait_for
from terminal import ESCTL, assert_reads_well, run_on_terminal, terminal_env


def status(*args: str, redis_url: str, pg_dsn: str, app: str) -> tuple[int, dict[str, Any]]:
    result = run_cli(
        "migrate", "status", "--app", app, "--redis-url", redis_url, "--pg-dsn", pg_dsn,
        "--json", *args,
    )  # fmt: skip
    assert result.returncode in (0, 3), result.stderr
    document = json.loads(result.stdout)
    assert document["exit_code"] == result.returncode
    return result.returncode, document


def migrate(*args: str, redis_url: str, pg_dsn: str, app: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "migrate", "redis-to-pg", "--app", app, "--redis-url", redis_url, "--pg-dsn", pg_dsn,
        "--init-schema", "--no-progress", *args,
    )  # fmt: skip


def at(text: str) -> datetime:
    """A TimeStamp (the writer's seven fractional digits are cut to microseconds, as .NET's
    PostgreSQL driver cuts them) or a JSON time as an aware datetime."""
    return datetime.fromisoformat(text)


def test_finished_run_lag_max_lag_and_metrics(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str, tmp_path: Path
) -> None:
    truth = iw.write_store(
        redis_client, app=app_name, aggregates=40, events_per_aggregate=(1, 4),
        defects=["missing_payload"], seed=7,
    )  # fmt: skip
    where = {"redis_url": redis_test_url, "pg_dsn": pg_dsn, "app": app_name}
    clean = truth.clean_aggregates()
    clean_events = sum(len(a.events) for a in clean)
    all_events = sum(len(a.events) for a in truth.aggregates)

    # Before any run: no shard, everything behind (the defective aggregate too: nothing
    # quarantined it yet), dated by the oldest first event.
    code, before = status("--lag", **where)
    assert code == 0 and before["shards"] == []
    assert before["lag"]["events_behind"] == all_events
    assert before["lag"]["aggregates_behind"] == len(truth.aggregates)
    # Dated by each aggregate's first event (the missing payload's aggregate cannot be).
    oldest = min(at(a.events[0].timestamp) for a in truth.aggregates if a.events[0].readable)
    assert at(before["lag"]["oldest_missing_at"]) == oldest
    assert before["lag"]["undated_aggregates"] == sum(
        not a.events[0].readable for a in truth.aggregates
    )

    assert migrate(**where).returncode == 3  # the missing payload is quarantined

    code, done = status("--max-lag", "0s", **where)
    assert code == 0, done
    [shard] = done["shards"]
    assert shard["shard"] == "0/1"
    assert shard["status"] == shard["recorded_status"] == "finished"
    assert shard["lock_alive"] is False and shard["lock_holder"] is None
    assert shard["events_migrated"] == clean_events
    assert shard["aggregates_quarantined"] == 1
    assert shard["last_batch_at"] is not None and shard["batches"] >= 1
    # Level: the quarantined aggregate is reported as such, not as lag.
    assert shard["lag"] == done["lag"]
    assert done["lag"]["events_behind"] == 0 and done["lag"]["seconds"] == 0
    assert done["over_max_lag"] == []

    # Without --lag nothing is read from Redis: no lag figures.
    _, cheap = status(**where)
    assert cheap["lag_measured"] is False and cheap["shards"][0]["lag"] is None

    appended = iw.append_events(redis_client, truth, 5, seed=3)
    behind_ids = {e.aggregate_id for e in appended}
    metrics = tmp_path / "migrate.prom"
    code, behind = status("--max-lag", "0s", "--metrics-file", str(metrics), **where)
    assert code == 3, behind
    assert behind["over_max_lag"] == ["0/1"]
    lag = behind["shards"][0]["lag"]
    assert lag["events_behind"] == 5 and lag["aggregates_behind"] == len(behind_ids)
    first_new = min(at(e.timestamp) for e in appended)
    assert at(lag["oldest_missing_at"]) == first_new
    assert 0 < lag["seconds"] < 120
    # A limit the lag is within: exit 0.
    assert status("--max-lag", "1h", **where)[0] == 0
    # README's every-five-minutes cron line (stdout to /dev/null): nothing on stderr, which
    # cron would mail each time ('wrote PATH' was); the file is written all the same
    metrics.unlink()
    cron = run_cli(
        "migrate", "status", "--app", app_name, "--redis-url", redis_test_url, "--pg-dsn",
        pg_dsn, "--max-lag", "1h", "--metrics-file", str(metrics),
    )  # fmt: skip
    assert (cron.returncode, cron.stderr) == (0, ""), cron.stderr
    assert "esctl_migrate_lag_events{" in metrics.read_text()

    text = metrics.read_text()
    labels = f'app="{app_name}",schema="public",shard="0/1"'
    assert f"esctl_migrate_lag_events{{{labels}}} 5\n" in text
    assert f"esctl_migrate_lag_aggregates{{{labels}}} {len(behind_ids)}\n" in text
    assert f"esctl_migrate_events_migrated{{{labels}}} {clean_events}\n" in text
    assert f"esctl_migrate_aggregates_quarantined{{{labels}}} 1\n" in text
    assert f"esctl_migrate_run_running{{{labels}}} 0\n" in text
    assert f'esctl_migrate_run_status{{{labels},status="finished"}} 1\n' in text
    assert f'esctl_migrate_lag_events{{app="{app_name}",schema="public",shard="all"}} 5\n' in text
    assert "# TYPE esctl_migrate_lag_seconds gauge" in text
    assert not list(tmp_path.glob(".migrate.prom.*"))  # the temporary file was renamed

    # The table, to a pipe: one row for the shard, the whole app's lag under it.
    table = run_cli(
        "migrate", "status", "--app", app_name, "--redis-url", redis_test_url,
        "--pg-dsn", pg_dsn, "--max-lag", "0s",
    )  # fmt: skip
    assert table.returncode == 3, table.stderr
    assert re.search(r"^0/1 +│ finished +│", table.stdout, re.M), table.stdout
    assert "lag (whole app): 5 events in" in table.stdout
    assert "behind more than --max-lag 0s: shard 0/1" in table.stdout

    assert migrate(**where).returncode == 3  # still the quarantined one
    code, level = status("--max-lag", "0s", **where)
    assert code == 0 and level["lag"]["events_behind"] == 0, level


def test_running_then_killed_run(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    iw.write_store(redis_client, app=app_name, aggregates=30, events_per_aggregate=3, seed=5)
    where = {"redis_url": redis_test_url, "pg_dsn": pg_dsn, "app": app_name}
    proc = start_cli(
        "migrate", "redis-to-pg", "--app", app_name, "--redis-url", redis_test_url,
        "--pg-dsn", pg_dsn, "--init-schema", "--rate", "1", "--batch-size", "1", "--no-progress",
    )  # fmt: skip
    try:

        def run_recorded() -> bool:
            assert proc.poll() is None, "the migration ended early"
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                if conn.execute("SELECT to_regclass('esctl.migration_run')").fetchone() == (None,):
                    return False
                row = conn.execute(
                    "SELECT count(*) FROM esctl.migration_run WHERE application_name = %s",
                    (app_name,),
                ).fetchone()
            return bool(row and row[0])

        wait_for(run_recorded, "the run's row")
        _, running = status(**where)
        [shard] = running["shards"]
        assert shard["status"] == "running" and shard["lock_alive"] is True, shard
        # the esctl process that holds it, by pid and machine
        holder = f"esctl migrate redis-to-pg (pid {proc.pid} on {socket.gethostname()})"
        assert shard["lock_holder"]["application_name"] == holder[:63]
        assert shard["lock_holder"]["pid"] > 0
        # and the table says where the run is going on
        human = run_cli(
            "migrate", "status", "--app", app_name, "--redis-url", redis_test_url,
            "--pg-dsn", pg_dsn,
        )  # fmt: skip
        words = " ".join(human.stdout.split())
        pid = shard["lock_holder"]["pid"]
        assert f"running (shard 0/1): in {holder[:63]}, PostgreSQL session pid {pid}" in words
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()

    def lock_freed() -> bool:
        return status(**where)[1]["shards"][0]["lock_alive"] is False

    wait_for(lock_freed, "PostgreSQL to notice the killed session")
    _, killed = status("--lag", **where)
    [shard] = killed["shards"]
    assert shard["status"] == "interrupted" and shard["recorded_status"] == "running"
    assert killed["lag"]["events_behind"] == 90 - shard["events_migrated"]
    assert killed["lag"]["events_behind"] > 0
    # The table says what to do about it (human output only: the JSON is as it was).
    human = run_cli(
        "migrate", "status", "--app", app_name, "--redis-url", redis_test_url, "--pg-dsn", pg_dsn
    )
    words = " ".join(human.stdout.split())
    note = (
        "interrupted (shard 0/1): its run was killed or its machine died; rerun the same "
        "`esctl migrate redis-to-pg` command (same --shard) to continue it"
    )
    assert note in words, human.stdout
    assert "next_steps" not in json.dumps(killed) and "rerun" not in json.dumps(killed)


def test_quarantined_aggregates_come_with_the_query_that_lists_them(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    from test_migrate import write_defect_store

    write_defect_store(redis_client, app_name, seed=17)
    where = {"redis_url": redis_test_url, "pg_dsn": pg_dsn, "app": app_name}
    assert migrate(**where).returncode == 3
    _, document = status(**where)
    [shard] = document["shards"]
    assert shard["aggregates_quarantined"] > 0
    human = run_cli(
        "migrate", "status", "--app", app_name, "--redis-url", redis_test_url, "--pg-dsn", pg_dsn
    )
    words = " ".join(human.stdout.split())
    query = (
        "SELECT DISTINCT aggregate_id, kind, detail FROM esctl.quarantine"
        f" WHERE run_id = '{shard['run_id']}' ORDER BY aggregate_id"
    )
    quarantined = shard["aggregates_quarantined"]
    aggregates = "aggregate" if quarantined == 1 else "aggregates"
    assert f"quarantined: {quarantined:,} {aggregates} skipped whole" in words
    assert f"`{query}`" in words, human.stdout


def test_the_quarantined_note_counts_each_aggregate_once_across_shards_of_other_counts(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """Runs with --workers 3, then 2: the shards 0/3 … 2/3 and 0/2, 1/2 each show their latest
    run, and both quarantined the same aggregates; the note said their sum, twice as many."""
    iw.write_store(redis_client, app=app_name, aggregates=12, defects=["missing_payload"], seed=5)
    where = {"redis_url": redis_test_url, "pg_dsn": pg_dsn, "app": app_name}
    assert migrate("--workers", "3", **where).returncode == 3
    assert migrate("--workers", "2", **where).returncode == 3
    _, document = status(**where)
    assert {s["shard"] for s in document["shards"]} == {"0/3", "1/3", "2/3", "0/2", "1/2"}
    assert sum(s["aggregates_quarantined"] for s in document["shards"]) == 2
    human = run_cli(
        "migrate", "status", "--app", app_name, "--redis-url", redis_test_url, "--pg-dsn", pg_dsn
    )
    assert human.returncode == 0, human.stderr
    words = " ".join(human.stdout.split())
    assert "quarantined: 1 aggregate skipped whole (only in Redis" in words, words


def test_counts_of_one_in_the_notes_are_singular(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """One event behind in one aggregate, one aggregate quarantined: the notes say so in the
    singular (they said '1 events in 1 aggregates', '1 aggregate(s)')."""
    truth = iw.write_store(
        redis_client, app=app_name, aggregates=4, defects=["missing_payload"], seed=5
    )
    where = {"redis_url": redis_test_url, "pg_dsn": pg_dsn, "app": app_name}
    assert migrate(**where).returncode == 3  # the missing payload's aggregate is quarantined
    iw.append_events(redis_client, truth, 1, seed=2)
    human = run_cli(
        "migrate", "status", "--lag", "--app", app_name, "--redis-url", redis_test_url,
        "--pg-dsn", pg_dsn,
    )  # fmt: skip
    assert human.returncode == 0, human.stderr
    words = " ".join(human.stdout.split())
    assert "lag (whole app): 1 event in 1 aggregate not yet in PostgreSQL;" in words, words
    assert "quarantined: 1 aggregate skipped whole (only in Redis" in words, words


def test_watch_needs_a_terminal(redis_test_url: str, pg_dsn: str, app_name: str) -> None:
    base = ["migrate", "status", "--app", app_name, "--redis-url", redis_test_url]
    piped = run_cli(*base, "--pg-dsn", pg_dsn, "--watch")
    assert piped.returncode == 2 and "needs a terminal" in piped.stderr
    as_json = run_cli(*base, "--pg-dsn", pg_dsn, "--watch", "--json")
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["error"]["kind"] == "usage"
    alone = run_cli(*base, "--pg-dsn", pg_dsn, "--interval", "5s")
    assert alone.returncode == 2 and "--interval needs --watch" in alone.stderr
    bad = run_cli(*base, "--pg-dsn", pg_dsn, "--max-lag", "soon", "--json")
    assert bad.returncode == 2 and "duration" in json.loads(bad.stdout)["error"]["message"]


def test_table_fits_80_columns(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=20, seed=9)
    where = {"redis_url": redis_test_url, "pg_dsn": pg_dsn, "app": app_name}
    for shard in ("0/2", "1/2"):
        assert migrate("--shard", shard, **where).returncode == 0
    iw.append_events(redis_client, truth, 3, seed=4)
    screen = run_on_terminal(
        [*ESCTL, "migrate", "status", "--max-lag", "1h"],
        env={"ESCTL_REDIS_URL": redis_test_url, "ESCTL_PG_DSN": pg_dsn, "ESCTL_APP": app_name},
    )
    assert_reads_well(screen)
    for shard in ("0/2", "1/2"):
        assert any(re.match(rf"{shard} +│ finished +│", r) for r in screen.rows), screen.describe()
    assert "lag (whole app): 3 events in" in screen.text, screen.describe()
    assert all(len(r) <= 80 for r in screen.rows)


def test_watch_refreshes_until_ctrl_c(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    iw.write_store(redis_client, app=app_name, aggregates=10, seed=2)
    where = {"redis_url": redis_test_url, "pg_dsn": pg_dsn, "app": app_name}
    assert migrate(**where).returncode == 0
    cols, lines = 80, 24
    screen = pyte.Screen(cols, lines)
    stream = pyte.ByteStream(screen)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, cols, 0, 0))
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_PG_DSN": pg_dsn, "ESCTL_APP": app_name}
    proc = subprocess.Popen(
        [*ESCTL, "migrate", "status", "--lag", "--watch", "--interval", "1"],
        stdin=slave, stdout=slave, stderr=slave, env=terminal_env(env), start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    drawn: list[str] = []

    def read() -> None:
        if select.select([master], [], [], 0.05)[0]:
            with contextlib.suppress(OSError):
                stream.feed(os.read(master, 65536))

    def checked_stamps() -> set[str]:
        read()
        text = "\n".join(screen.display)
        drawn[:] = [text]
        return set(re.findall(r"checked (\d\d:\d\d:\d\d) UTC", text))

    try:
        wait_for(lambda: bool(checked_stamps()), "the first screen")
        first = checked_stamps()
        # Redrawn in place: a later check replaces the stamp, and the table is there once.
        wait_for(lambda: checked_stamps() - first != set(), "a refresh")
        text = drawn[0]
        assert text.count("migrate status:") == 1, text
        assert re.search(r"0/1 +│ finished +│", text), text
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        read()
        assert "Traceback" not in "\n".join(screen.display)
        assert "error" not in "\n".join(screen.display)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)


def test_lag_counts_an_aggregate_fixed_and_migrated_since_its_quarantine(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """Shard 0/1's latest run quarantined an aggregate; once fixed, runs of shards 0/2 and 1/2
    migrated it. 0/1's run still lists it in esctl.quarantine, but it is migrated now: the
    events the service saves to it afterwards are lag, not left out as quarantined."""
    truth = iw.write_store(
        redis_client, app=app_name, aggregates=12, seed=6, defects=("missing_payload",)
    )
    where = {"redis_url": redis_test_url, "pg_dsn": pg_dsn, "app": app_name}
    assert migrate(**where).returncode == 3
    (defect,) = truth.defects_of("missing_payload")
    fixed = truth.aggregate(defect.aggregate_id)
    (event,) = [e for e in fixed.events if e.commit_id == defect.commit_id]
    redis_client.hset(event.hash_key, event.commit_id, event.payload)  # as an operator would
    fixed.defects.clear()
    for shard in ("0/2", "1/2"):
        assert migrate("--shard", shard, **where).returncode == 0
    _, level = status("--lag", **where)
    assert level["lag"]["events_behind"] == 0

    iw.append_events(redis_client, truth, 3, aggregate_ids=[fixed.aggregate_id])
    _, behind = status("--lag", **where)
    assert {s["shard"] for s in behind["shards"]} == {"0/1", "0/2", "1/2"}
    assert behind["lag"]["events_behind"] == 3
    assert behind["lag"]["aggregates_behind"] == 1
