"""``esctl replay`` end to end (a real subprocess): option parsing, output shapes, exit codes,
the confirmation rule, and the demo tour's replay steps."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import independent_writer as iw
import lostlock
import psycopg
import pytest
import redis
from helpers import run_cli, started_cli

from esctl import layout, queues, redisio, servers
from esctl.cli import replay as cli_replay
from esctl.cli.output import Output
from esctl.demo import REPORTING, DemoSummary
from esctl.migrate import MigrateOptions, migrate_redis_to_pg
from esctl.replay import ReplayOptions, ReplaySummary, Selection, replay_lock

SUB = "Learning.ReportingService.Worker-Test"


@pytest.fixture
def store(redis_client: redis.Redis, app_name: str, env_name: str) -> iw.GroundTruth:
    truth = iw.write_store(redis_client, app=app_name, aggregates=30, seed=8)
    for event_type in ("EnrollmentCreated", "InvoiceIssued"):
        redis_client.sadd(layout.subscribers_key(env_name, event_type), SUB)
    return truth


def base(redis_url: str, app: str, *extra: str) -> list[str]:
    return ["replay", "--from", "redis", "--redis-url", redis_url, "--app", app, *extra]


def assert_clean_error(result: Any) -> None:
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--to", "stdout"], "--all"),
        (["--to", "queue", "--all", "--env", "e", "--projection", "x:y"], "--projection"),
        (["--to", "projection", "--all"], "--projection"),
        (["--to", "stdout", "--all", "--checkpoint", "c"], "--checkpoint"),
        (["--to", "projection", "--all", "--projection", "m:f", "--reset"], "--reset"),
        (["--to", "stdout", "--since", "yesterday"], "--since"),
        (["--to", "stdout", "--where", "Score>>"], "--where"),
        (["--to", "queue", "--all", "--env", "e", "--force"], "--force needs --subscriber"),
        (["--to", "nowhere", "--all"], "nowhere"),
        (["--to", "projection", "--all", "--projection", "no_such_module_x:f"], "cannot import"),
    ],
)
def test_usage_errors_exit_2(
    redis_test_url: str, app_name: str, extra: list[str], message: str
) -> None:
    result = run_cli(*base(redis_test_url, app_name, *extra))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert_clean_error(result)


def test_queue_needs_an_env(redis_test_url: str, app_name: str) -> None:
    result = run_cli(*base(redis_test_url, app_name, "--to", "queue", "--all"))
    assert result.returncode == 1
    assert "--env" in result.stderr and "ESCTL_ENV" in result.stderr


def test_stdout_json_lines_and_a_summary_on_stderr(
    store: iw.GroundTruth, redis_test_url: str, app_name: str
) -> None:
    aggregate = next(a for a in store.aggregates if len(a.events) > 2)
    result = run_cli(
        *base(redis_test_url, app_name, "--to", "stdout", "--aggregate", aggregate.aggregate_id),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    events = sorted(aggregate.events, key=lambda e: e.version)
    assert [(d["aggregate_id"], d["version"]) for d in lines] == [
        (e.aggregate_id, e.version) for e in events
    ]
    assert [d["data"] for d in lines] == [json.loads(e.payload) for e in events]
    assert all(
        set(d) == {"aggregate_id", "version", "event_type", "aggregate_type", "timestamp",
                   "commit_id", "data"}
        for d in lines
    )  # fmt: skip
    # the exact payload text is spliced in
    assert events[0].payload in result.stdout.splitlines()[0]
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    assert summary["events"] == len(events) and summary["target"] == "stdout"


def test_queue_dry_run_json_document(
    store: iw.GroundTruth,
    redis_test_url: str,
    redis_client: redis.Redis,
    app_name: str,
    env_name: str,
) -> None:
    result = run_cli(
        *base(redis_test_url, app_name, "--to", "queue", "--all", "--env", env_name),
        "--dry-run",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    for key in ("dry_run", "events", "published", "checkpoint", "elapsed_s", "events_per_s",
                "problems"):  # fmt: skip
        assert key in document
    created = sum(
        1 for a in store.aggregates for e in a.events if e.event_type == "EnrollmentCreated"
    )
    issued = sum(1 for a in store.aggregates for e in a.events if e.event_type == "InvoiceIssued")
    assert document["dry_run"] is True
    assert document["published"] == {SUB: {"EnrollmentCreated": created, "InvoiceIssued": issued}}
    assert document["events"] == sum(len(a.events) for a in store.aggregates)
    assert not list(redis_client.scan_iter(match="*PublishedEvents"))


def test_publishing_more_than_confirm_over_without_a_terminal_is_refused(
    store: iw.GroundTruth,
    redis_test_url: str,
    redis_client: redis.Redis,
    app_name: str,
    env_name: str,
) -> None:
    args = base(redis_test_url, app_name, "--to", "queue", "--all", "--env", env_name, "--json")
    refused = run_cli(*args, "--confirm-over", "5")
    assert refused.returncode == 2
    assert json.loads(refused.stdout)["error"]["kind"] == "refused"
    assert "--yes" in refused.stderr
    assert not list(redis_client.scan_iter(match="*PublishedEvents"))

    small = run_cli(*args, "--confirm-over", "100000")  # under the threshold: no question
    assert small.returncode == 0, small.stderr
    first = json.loads(small.stdout)
    assert first["notifications"] == sum(first["published"][SUB].values()) > 5

    yes = run_cli(*args, "--confirm-over", "5", "--yes")
    assert yes.returncode == 0, yes.stderr
    key = layout.queue_key(SUB, env_name, "EnrollmentCreated", "published")
    assert redis_client.llen(key) == 2 * first["published"][SUB]["EnrollmentCreated"]


def test_a_replay_holding_the_queue_makes_the_second_exit_75(
    store: iw.GroundTruth,
    redis_test_url: str,
    redis_client: redis.Redis,
    app_name: str,
    env_name: str,
) -> None:
    with replay_lock(redis_client, [queues.QueueRef(SUB, env_name, "InvoiceIssued")]):
        result = run_cli(
            *base(redis_test_url, app_name, "--to", "queue", "--all", "--env", env_name, "--yes")
        )
    assert result.returncode == 75, result.stderr
    assert "esctl:replay-lock:" in result.stderr
    assert not list(redis_client.scan_iter(match="*PublishedEvents"))


def test_unreadable_events_exit_3(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    iw.write_store(redis_client, app=app_name, aggregates=10, defects=["missing_payload"], seed=2)
    result = run_cli(*base(redis_test_url, app_name, "--to", "stdout", "--all"))
    assert result.returncode == 3
    assert "unreadable" in result.stderr
    assert "; 1 problem:" in result.stderr  # the unreadable events are one problem
    assert (
        "1 event could not be read (no payload, undecodable, or no envelope fields) and was "
        in (result.stderr)
    )


def test_a_replay_of_one_event_says_it_in_the_singular(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    iw.write_store(redis_client, app=app_name, aggregates=1, events_per_aggregate=(1, 1), seed=4)
    result = run_cli(*base(redis_test_url, app_name, "--to", "stdout", "--all"))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert "replayed 1 event to stdout in " in result.stderr, result.stderr


def test_a_failing_projection_exits_1_naming_the_event(
    store: iw.GroundTruth,
    redis_test_url: str,
    app_name: str,
    pg_dsn: str,
    tmp_path: Any,
) -> None:
    projection = tmp_path / "fails.py"
    projection.write_text(
        "def project(event):\n"
        "    if event.version == 2:\n"
        "        raise ValueError('no version 2 please')\n"
    )
    result = run_cli(
        *base(redis_test_url, app_name, "--to", "projection", "--all"),
        "--projection", f"{projection}:project", "--pg-dsn", pg_dsn, "--checkpoint", "f",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "version 2" in result.stderr and "ValueError: no version 2 please" in result.stderr
    assert "checkpoint 'f' stays at the last committed batch" in result.stderr
    assert_clean_error(result)


def test_help_documents_the_protocol_and_an_example() -> None:
    result = run_cli("replay", "--help")
    assert result.returncode == 0
    for word in ("--from", "--to", "--checkpoint", "--subscriber", "--all", "Example"):
        assert word in result.stdout


# --- the demo tour's steps -----------------------------------------------------------------


def test_demo_tour_replay_steps(
    demo_store: DemoSummary,
    redis_client: redis.Redis,
    redis_test_url: str,
    pg_dsn: str,
) -> None:
    """Replay one aggregate to one subscriber, then rebuild the example projection."""
    app, env = demo_store.app, demo_store.env
    aggregate = demo_store.samples["aggregate"]
    connection = ["--redis-url", redis_test_url, "--pg-dsn", pg_dsn, "--app", app, "--env", env]
    before = {
        k: redis_client.lrange(k, 0, -1)
        for k in redis_client.scan_iter(match=f"*{{{env}:*}}:PublishedEvents")
    }
    one = run_cli(
        "replay", "--from", "redis", "--aggregate", aggregate, "--to", "queue",
        "--subscriber", REPORTING, "--json", *connection,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    document = json.loads(one.stdout)
    published = document["published"]
    assert set(published) == {REPORTING} and sum(published[REPORTING].values()) >= 2
    after = {
        k: redis_client.lrange(k, 0, -1)
        for k in redis_client.scan_iter(match=f"*{{{env}:*}}:PublishedEvents")
    }
    grown = {k.decode() for k in after if len(after[k]) != len(before.get(k, []))}
    assert grown and all(k.startswith(REPORTING + ":") for k in grown)

    migrate_redis_to_pg(redis_client, MigrateOptions(app=app, pg_dsn=pg_dsn, init_schema=True))
    rebuild = [
        "replay", "--from", "pg", "--all", "--to", "projection",
        "--projection", "esctl.projections.event_counts", "--checkpoint", "event-counts",
        "--reset", *connection,
    ]  # fmt: skip
    for _ in range(2):
        result = run_cli(*rebuild)
        assert result.returncode == 0, result.stderr
    with psycopg.connect(pg_dsn) as conn:
        counted = conn.execute("SELECT sum(events) FROM projections.event_counts").fetchone()
        migrated = conn.execute("SELECT count(*) FROM event").fetchone()
    assert counted is not None and migrated is not None and counted[0] == migrated[0] > 0


def test_stdout_into_a_closed_pipe_stops_quietly(
    store: iw.GroundTruth, redis_test_url: str, app_name: str
) -> None:
    import subprocess
    import sys

    from helpers import cli_env

    command = [
        sys.executable,
        "-m",
        "esctl",
        *base(redis_test_url, app_name, "--to", "stdout", "--all"),
    ]
    shell = subprocess.run(
        f"{' '.join(command)} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        env=cli_env(),
        executable="/bin/bash",
        timeout=120,
    )
    assert shell.returncode == 0
    assert json.loads(shell.stdout)["aggregate_id"]
    assert "Traceback" not in shell.stderr and "error" not in shell.stderr


def test_redis_out_of_memory_mid_replay_stops_it_and_says_what_was_published(
    fresh_redis: servers.LocalRedis, app_name: str, env_name: str
) -> None:
    """A Redis at its maxmemory refuses the pushes (OOM): the replay stops with exit 1, its
    summary counts exactly what the lists hold, names each event that failed, and says that
    nothing more was sent once its answer was read."""
    client = redis.Redis.from_url(fresh_redis.url)
    try:
        truth = iw.write_store(client, app=app_name, aggregates=400, seed=81)
        for event_type in {e.event_type for e in truth.events()}:
            client.sadd(layout.subscribers_key(env_name, event_type), SUB)
        payload_bytes = sum(len(e.payload) for e in truth.events())
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + payload_bytes // 2)
        client.config_set("maxmemory-policy", "noeviction")
        args = base(fresh_redis.url, app_name, "--to", "queue", "--all", "--env", env_name)
        result = run_cli(*args, "--yes", "--json")
        assert result.returncode == 1, result.stderr
        document = json.loads(result.stdout)
        stopped = document["stopped"]
        assert stopped["kind"] == "publish_failed" and "OOM" in stopped["error"]
        queued = sum(
            client.llen(layout.queue_key(SUB, env_name, t, "published"))
            for t in {e.event_type for e in truth.events()}
        )
        assert 0 < queued == document["messages"] == document["notifications"]
        assert queued + stopped["failed"] <= len(truth.events())
        assert document["problem_counts"] == {"publish_failed": stopped["failed"]}
        message = " ".join(result.stderr.split())
        assert "the events before it were published" in message
        others = stopped["failed"] - 1
        if others or stopped["published_after"]:
            assert f"{others} failed too" in message and "nothing after them was sent" in message
        else:
            assert "it and the rest were not" in message
    finally:
        client.close()


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        ("OOM command not allowed when used memory > 'maxmemory'.", redisio.OOM_CAUSE),
        ("You can't write against a read only replica.", redisio.READONLY_CAUSE),
        ("ERR something else", "fix the cause"),
    ],
)
def test_a_publish_refused_mid_replay_says_what_to_fix_before_replaying_the_rest(
    capsys: pytest.CaptureFixture[str], error: str, cause: str
) -> None:
    """A failover mid-replay makes the primary a replica that refuses the pushes (READONLY), as
    a full Redis does (OOM): the error's hint says what to fix for either, then how to go on."""
    options = ReplayOptions(
        source="redis", target="queue", app="A", selection=Selection(all_events=True)
    )
    summary = ReplaySummary.start(options)
    summary.stopped = {
        "kind": "publish_failed",
        "event_type": "OrderPlaced",
        "aggregate_id": "a-1",
        "version": 3,
        "error": error,
    }
    cli_replay._render_stopped(Output(), summary, options)
    hint = " ".join(capsys.readouterr().err.split()).partition("what to do: ")[2]
    assert hint == f"{cause}, then replay the rest (e.g. with --since or --aggregate)"


def test_a_replay_that_loses_its_lock_exits_1_saying_what_was_published(
    redis_client: redis.Redis,
    redis_test_url: str,
    store: iw.GroundTruth,
    app_name: str,
    env_name: str,
) -> None:
    """Another run takes the replay lock once the second batch was sent: exit 1, the summary
    counting exactly what the lists hold and stopping on the lost lock (its key, the first
    event not published); the message says so and how to replay the rest."""
    types = sorted({e.event_type for e in store.events()})
    for event_type in types:
        redis_client.sadd(layout.subscribers_key(env_name, event_type), SUB)
    args = base(redis_test_url, app_name, "--to", "queue", "--all", "--env", env_name)
    result = lostlock.run_cli_losing_the_lock(
        redis_test_url,
        "esctl.replay.publisher:Publisher._send",
        2,
        [*args, "--yes", "--json"],
        settings=("esctl.replay.to_queue:PUBLISH_BATCH=5",),
    )
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    stopped = document["stopped"]
    assert stopped["kind"] == "lock_lost"
    assert stopped["key"] in {layout.replay_lock_key(SUB, env_name, t) for t in types}
    queued = sum(redis_client.llen(layout.queue_key(SUB, env_name, t, "published")) for t in types)
    assert 10 <= queued == document["messages"] == document["notifications"]
    assert queued < len(store.events())
    assert stopped["event_type"] in types and stopped["aggregate_id"]
    message = " ".join(result.stderr.split())
    assert f"lost the replay lock: {stopped['key']} was taken or deleted by someone else" in message
    assert f"{queued:,} events published" in message
    assert f"the first not published: {stopped['event_type']} {stopped['aggregate_id']}" in message
    assert "replay the rest" in message


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_an_interrupted_replay_to_stdout_says_its_lines_are_whole_and_how_to_go_on(
    store: iw.GroundTruth, redis_test_url: str, app_name: str, stop: signal.Signals
) -> None:
    """Ctrl-C or SIGTERM mid-stream: the lines before the error document are whole events, and
    the hint says a rerun writes the whole selection again (it said 'rerun the same command to
    continue', which prints everything a second time)."""
    args = base(redis_test_url, app_name, "--to", "stdout", "--all", "--rate", "40", "--json")
    with started_cli(*args) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # writing: past its imports and its connection
        os.kill(proc.pid, stop)
        # (read() and not communicate(): the bytes readline() took ahead are in its buffer)
        rest = proc.stdout.read()
        err = proc.stderr.read() if proc.stderr else b""
        proc.wait(timeout=60)
    lines = (first + rest).split(b"\n")[:-1]  # (payloads hold U+2028, which splitlines cuts at)
    error = json.loads(lines[-1])
    assert proc.returncode == error["exit_code"] == 130, err
    assert 1 <= len(lines) - 1 < len(store.events())
    assert all(json.loads(line)["aggregate_id"] for line in lines[:-1])
    assert error["error"]["message"].endswith(
        "; the events written before it stopped are whole lines, none cut short"
    )
    assert "the same command writes every event of the selection again" in error["error"]["hint"]


def test_missing_event_tables_say_which_command_creates_them(pg_dsn: str) -> None:
    # A reader has no --init-schema: its hint names the migration that creates the tables,
    # and --pg-schema for a schema that is not the one a migration wrote.
    for command in (
        ("events", "query", "--source", "pg", "--json"),
        ("replay", "--from", "pg", "--all", "--to", "stdout", "--json"),
        ("replay", "--from", "pg", "--all", "--to", "queue", "--env", "t", "--dry-run", "--json"),
    ):
        result = run_cli(*command, "--app", "X", "--pg-dsn", pg_dsn, "--pg-schema", "nope")
        assert result.returncode == 1, result.stderr
        error = json.loads(result.stdout)["error"]
        assert error["kind"] == "schema"
        assert error["message"] == "the event tables nope.aggregate and nope.event do not exist"
        assert "`esctl migrate redis-to-pg --app X --init-schema`" in error["hint"]
        assert "--pg-schema" in error["hint"]
        assert "run with --init-schema" not in result.stderr
