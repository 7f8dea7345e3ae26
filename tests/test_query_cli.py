"""``esctl events query`` end to end (a real subprocess): formats, sources, exit codes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import independent_writer as iw
import redis
from helpers import cli_env, run_cli

from esctl.migrate import MigrateOptions, migrate_redis_to_pg

FIELDS = ["aggregate_id", "version", "event_type", "aggregate_type", "timestamp", "commit_id",
          "data"]  # fmt: skip


def test_jsonl_is_the_default_off_a_terminal(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=25, seed=7)
    paid = sorted(
        (e.aggregate_id, e.version) for e in truth.events() if e.event_type == "InvoicePaid"
    )
    common = ("--app", app_name, "--redis-url", redis_test_url)
    result = run_cli("events", "query", "--type", "InvoicePaid", *common)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted((r["aggregate_id"], r["version"]) for r in rows) == paid
    assert all(list(r) == FIELDS for r in rows)
    texts = {e.commit_id: e.payload for e in truth.events()}
    for line, row in zip(result.stdout.splitlines(), rows, strict=True):
        assert line.endswith(',"data":' + texts[row["commit_id"]] + "}")  # the exact payload

    result = run_cli("events", "query", "--type", "InvoicePaid", "--format", "json", *common)
    assert result.returncode == 0, result.stderr
    assert sorted((r["aggregate_id"], r["version"]) for r in json.loads(result.stdout)) == paid

    result = run_cli("events", "query", "--format", "table", "--limit", "3", *common)
    assert result.returncode == 0, result.stderr
    assert "event type" in result.stdout and len(result.stdout.splitlines()) >= 5

    result = run_cli("events", "query", "--where", "Nope=1", "--format", "json", *common)
    assert result.returncode == 0 and json.loads(result.stdout) == []


def test_bad_filters_are_usage_errors(redis_test_url: str) -> None:
    common = ("--app", "X", "--redis-url", redis_test_url)
    result = run_cli("events", "query", "--where", "Score >> 5", *common)
    assert result.returncode == 2
    assert "column 8" in result.stderr and "Score >> 5" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("events", "query", "--since", "last tuesday", *common)
    assert result.returncode == 2 and "--since" in result.stderr
    result = run_cli("events", "query", "--format", "xml", *common)
    assert result.returncode == 2
    result = run_cli("events", "query", "--where", "x=", "--format", "json", *common)
    assert result.returncode == 2 and json.loads(result.stdout)["error"]["kind"] == "usage"


def test_the_caret_points_at_the_bad_part_after_wide_characters(redis_test_url: str) -> None:
    # 東京 takes four cells on a terminal, two characters: the caret under the second '>'
    # (column 19) stands 20 cells in, not 18 (which is under 京).
    common = ("--app", "X", "--redis-url", redis_test_url, "--format", "json")
    result = run_cli("events", "query", "--where", "Adresse.Straße.東京>>1", *common)
    assert result.returncode == 2
    hint = json.loads(result.stdout)["error"]["hint"]
    assert hint.endswith("\nAdresse.Straße.東京>>1\n" + " " * 20 + "^")
    assert result.stderr.endswith("\n" + " " * 20 + "^\n")


def test_a_full_type_name_is_refused_naming_the_class_name(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    # event_type is .NET's Type.Name: a $type or a namespace-qualified name (as transforms
    # rules write them) matched nothing, exit 0, without a word.
    truth = iw.write_store(redis_client, app=app_name, aggregates=5, seed=7)
    common = ("--app", app_name, "--redis-url", redis_test_url, "--json")
    for given, short in (
        ("Ns.Events.InvoicePaid", "InvoicePaid"),
        ("Ns.Events.InvoicePaid, Ns.Domain", "InvoicePaid"),
        ("Ns.Envelope`1[[Ns.X, Asm]], Asm", "'Envelope`1'"),
    ):
        for command in (("events", "query"), ("replay", "--from", "redis", "--to", "stdout")):
            result = run_cli(*command, "--type", "InvoiceCreated", "--type", given, *common)
            assert result.returncode == 2, result.stdout
            error = json.loads(result.stdout)["error"]
            assert error["kind"] == "usage" and repr(given) in error["message"]
            assert error["hint"].startswith(f"`--type {short}`")
    stored = next(iter(truth.events())).event_type
    result = run_cli("events", "query", "--type", stored, *common)
    assert result.returncode == 0 and json.loads(result.stdout)


def test_a_relative_time_before_the_year_1_is_a_usage_error(redis_test_url: str) -> None:
    # 999999d ago is before datetime.min: an OverflowError, exit 1 "a bug in esctl", before
    common = ("--app", "X", "--redis-url", redis_test_url, "--json")
    for command in (("events", "query"), ("replay", "--from", "redis", "--to", "stdout")):
        for option, value in (("--since", "999999d"), ("--until", "99999999999h")):
            result = run_cli(*command, option, value, *common)
            assert result.returncode == 2, result.stdout
            error = json.loads(result.stdout)["error"]
            assert error["kind"] == "usage"
            assert error["message"] == f"{option} {value!r} reaches back before the year 1"


def test_exists_right_after_a_quoted_key_says_it_needs_a_space(redis_test_url: str) -> None:
    # It said "expected an operator (… or exists), found 'exists'".
    common = ("--app", "X", "--redis-url", redis_test_url, "--json")
    result = run_cli("events", "query", "--where", '"Some.Key"exists', *common)
    assert result.returncode == 2
    message = json.loads(result.stdout)["error"]["message"]
    assert (
        message == "bad --where '\"Some.Key\"exists': 'exists' needs a space before it (column 11)"
    )


def test_relative_times_take_every_duration_form(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=5, seed=3)  # 2017 and 2018
    common = ("--app", app_name, "--redis-url", redis_test_url, "--format", "json")
    every = run_cli("events", "query", "--until", "1.5h", *common)
    assert every.returncode == 0, every.stderr
    assert len(json.loads(every.stdout)) == len(list(truth.events()))
    recent = run_cli("events", "query", "--since", "500ms", *common)
    assert recent.returncode == 0, recent.stderr
    assert json.loads(recent.stdout) == []
    bare = run_cli("events", "query", "--since", "7", *common)  # seconds? days? the year 7?
    assert bare.returncode == 2 and "--since '7'" in json.loads(bare.stdout)["error"]["message"]


def test_unreadable_events_are_reported_on_stderr(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    iw.write_store(redis_client, app=app_name, aggregates=10, defects=["missing_payload"], seed=1)
    result = run_cli("events", "query", "--app", app_name, "--redis-url", redis_test_url)
    assert result.returncode == 0, result.stderr
    assert "1 committed event could not be read (no payload or undecodable) and was skipped;" in (
        result.stderr
    )


def test_source_pg(
    redis_client: redis.Redis, redis_test_url: str, app_name: str, pg_dsn: str
) -> None:
    iw.write_store(redis_client, app=app_name, aggregates=25, seed=7)
    migrate_redis_to_pg(redis_client, MigrateOptions(app=app_name, pg_dsn=pg_dsn, init_schema=True))
    question = (
        "--type",
        "InvoiceLineAdded",
        "--where",
        "Lines.Amount>100",
        "--since",
        "2017-01-01",
    )
    common = ("--app", app_name, "--redis-url", redis_test_url, "--pg-dsn", pg_dsn)
    from_redis = run_cli("events", "query", *question, *common)
    from_pg = run_cli("events", "query", *question, *common, "--source", "pg")
    assert from_redis.returncode == from_pg.returncode == 0, from_pg.stderr
    redis_rows = [json.loads(line) for line in from_redis.stdout.splitlines()]
    pg_rows = [json.loads(line) for line in from_pg.stdout.splitlines()]
    assert redis_rows
    assert all(r["commit_id"] is None for r in pg_rows)

    def strip(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
        return sorted(tuple(v for k, v in r.items() if k != "commit_id") for r in rows)

    assert strip(pg_rows) == strip(redis_rows)


def test_sigterm_stops_a_background_query_blocked_on_a_full_pipe(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    # Started in the background (Ctrl-C ignored), blocked writing to a pipe nobody reads: the
    # SIGTERM held across the write was passed on to the ignored Ctrl-C and lost, and the query
    # went on to its end, exit 0, once the pipe was read.
    iw.write_store(redis_client, app=app_name, aggregates=300, seed=3)
    process = subprocess.Popen(
        [sys.executable, "-m", "esctl", "events", "query", "--format", "jsonl",
         "--app", app_name, "--redis-url", redis_test_url],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=cli_env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        wchan = Path(f"/proc/{process.pid}/wchan")
        while wchan.read_text() not in ("anon_pipe_write", "pipe_write"):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert lines[-1]["error"]["kind"] == "interrupted" and "SIGTERM" in stderr.decode()
    assert all("error" not in line for line in lines[:-1])
    # a query changes nothing: a rerun does not continue, it finds every result again
    error = lines[-1]["error"]
    assert error["message"].endswith(
        "the results written before it stopped are whole, none cut short"
    )
    assert "the same command finds every result again" in error["hint"]
    assert "continue" not in error["hint"]
