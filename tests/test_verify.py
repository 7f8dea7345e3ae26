"""``migrate verify``: Redis against PostgreSQL, per aggregate, after a real migration.

Each test migrates a store written by the independent writer, then changes one side the way an
accident would (a deleted or extra row, changed content, new Redis events) and checks the kind
verify reports, its counts and the CLI's exit code. JSON equality is checked against
PostgreSQL's own jsonb ``=`` as the oracle.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import independent_writer as iw
import orjson
import psycopg
import pytest
import redis
from helpers import assert_clean, child_processes, cli_env, run_cli, started_cli, wait_gone
from hypothesis import given
from hypothesis import strategies as st
from test_migrate import (
    expected_timestamp,
    init_event_store,
    migrate,
    payload,
    write_clean_store,
    write_defect_store,
    write_events,
    write_non_utf8_key,
)

from esctl import redisio
from esctl.jsoncompare import _BOOL, _loose, _loose_both, same_json
from esctl.pgevents import binary_column_loaders, jsonb_text
from esctl.shard import Shard
from esctl.verify import MISMATCH_KINDS, VerifyOptions, VerifySummary, verify, verify_parallel


def run_verify(url: str, dsn: str, app: str, **options: Any) -> VerifySummary:
    client = redisio.connect(url)
    try:
        return verify(client, VerifyOptions(app=app, pg_dsn=dsn, **options))
    finally:
        client.close()


def verify_cli(url: str, dsn: str, app: str, *extra: str) -> tuple[int, dict[str, Any]]:
    args = ["--redis-url", url, "--pg-dsn", dsn, "--app", app]
    result = run_cli("migrate", "verify", *args, "--json", *extra)
    assert "Traceback" not in result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def only(summary: VerifySummary, kind: str, n: int) -> None:
    """``summary`` found ``n`` mismatches of ``kind`` and nothing else."""
    expected = dict.fromkeys(MISMATCH_KINDS, 0)
    expected[kind] = n
    assert summary.counts == expected, summary.problems
    assert [p["kind"] for p in summary.problems] == [kind] * n


def migrated_store(client: redis.Redis, url: str, dsn: str, app: str, **kw: Any) -> iw.GroundTruth:
    truth = write_clean_store(client, app, aggregates=60, **kw)
    summary = migrate(url, dsn, app, init_schema=True)
    assert summary.events_migrated == len(truth.events())
    return truth


def execute(dsn: str, query: str, params: Any = ()) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).rowcount


# --- identical -----------------------------------------------------------------------------


def test_an_identical_store_verifies_clean_exits_0_and_writes_nothing(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = migrated_store(redis_client, redis_test_url, pg_dsn, app_name)
    snapshot = "SELECT count(*), sum(hashtext(e.event_data::text)) FROM event e"
    with psycopg.connect(pg_dsn) as conn:
        before = conn.execute(snapshot).fetchone()
    keys_before = sorted(redis_client.keys("*"))

    summary = run_verify(redis_test_url, pg_dsn, app_name)
    assert summary.mismatches == 0, summary.problems
    assert summary.aggregates == summary.aggregates_identical == len(truth.commit_lists)
    assert summary.events_compared == len(truth.events())

    code, doc = verify_cli(redis_test_url, pg_dsn, app_name)
    assert code == 0
    assert {
        "aggregates",
        "aggregates_identical",
        "events_compared",
        "problems",
        *MISMATCH_KINDS,
    } <= set(doc)
    assert doc["aggregates"] == len(truth.commit_lists) and doc["problems"] == []
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute(snapshot).fetchone() == before
    assert sorted(redis_client.keys("*")) == keys_before


# --- missing, extra and changed rows ------------------------------------------------------

# Accidents on the PostgreSQL side, one aggregate each: (SQL on ``event e`` / ``aggregate a``
# with the aggregate id and a version as parameters, the mismatch kind verify must report).
OF_EVENT = "a.aggregate_key = e.aggregate_key AND a.aggregate_id = %s AND e.version = %s"
ACCIDENTS = {
    "deleted_middle_row": (
        "DELETE FROM event e USING aggregate a WHERE " + OF_EVENT,
        2,
        "missing_in_pg",
    ),
    "deleted_last_row": (
        "DELETE FROM event e USING aggregate a WHERE " + OF_EVENT,
        -1,
        "missing_in_pg",
    ),
    "deleted_all_rows": (
        "DELETE FROM event e USING aggregate a WHERE a.aggregate_key = e.aggregate_key"
        " AND a.aggregate_id = %s AND e.version >= %s",
        1,
        "missing_in_pg",
    ),
    "extra_row": (None, 0, "extra_in_pg"),
    "event_data_changed": (
        "UPDATE event e SET event_data = jsonb_set(e.event_data, '{Comment}', '\"changed\"')"
        " FROM aggregate a WHERE " + OF_EVENT,
        2,
        "content_differs",
    ),
    "type_name_changed": (
        "UPDATE event e SET event_data = jsonb_set(e.event_data, '{$type}', '\"Ns.Other, Asm\"')"
        " FROM aggregate a WHERE " + OF_EVENT,
        3,
        "content_differs",
    ),
    "event_type_changed": (
        "UPDATE event e SET event_type = 'SomethingElse' FROM aggregate a WHERE " + OF_EVENT,
        1,
        "content_differs",
    ),
    "time_stamp_changed": (
        "UPDATE event e SET time_stamp = e.time_stamp + interval '1 microsecond'"
        " FROM aggregate a WHERE " + OF_EVENT,
        2,
        "content_differs",
    ),
    "aggregate_type_changed": (
        "UPDATE aggregate a SET aggregate_type = 'Renamed' WHERE a.aggregate_id = %s AND %s > 0",
        1,
        "content_differs",
    ),
}


def test_each_accident_in_postgresql_is_reported_with_its_kind(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = migrated_store(redis_client, redis_test_url, pg_dsn, app_name)
    victims = [a for a in truth.clean_aggregates() if len(a.events) >= 3]
    expected: dict[str, str] = {}
    reports: dict[str, int] = {}  # mismatches per aggregate: one, or one per changed event
    with psycopg.connect(pg_dsn) as conn:
        for (name, (query, version, kind)), a in zip(
            sorted(ACCIDENTS.items()), victims, strict=False
        ):
            if query is None:  # a row PostgreSQL has and Redis has not, saved as a service would
                last = a.events[-1]
                extra = json.loads(last.payload)
                extra["Version"] = a.last_version + 1
                conn.execute(
                    "SELECT save_event_for_aggregate(%s, %s, %s, %s, %s, %s, %s)",
                    (a.aggregate_id, a.aggregate_type, app_name, a.last_version + 1,
                     expected_timestamp(last.payload), last.event_type, json.dumps(extra)),
                )  # fmt: skip
            else:
                at = a.last_version if version == -1 else version
                assert conn.execute(query, (a.aggregate_id, at)).rowcount >= 1, name
            expected[a.list_key] = kind
            reports[a.list_key] = len(a.events) if name == "aggregate_type_changed" else 1
    assert len(expected) == len(ACCIDENTS)

    summary = run_verify(redis_test_url, pg_dsn, app_name)
    assert {p["key"]: p["kind"] for p in summary.problems} == expected
    assert Counter(p["key"] for p in summary.problems) == reports
    assert summary.counts == {
        kind: sum(n for key, n in reports.items() if expected[key] == kind)
        for kind in MISMATCH_KINDS
    }
    assert summary.aggregates_identical == len(truth.commit_lists) - len(expected)
    changed = [p for p in summary.problems if p["kind"] == "content_differs"]
    assert all("version" in p["detail"] for p in changed)

    # A lost row is never excused as "not migrated yet", even the last one.
    allowed = run_verify(redis_test_url, pg_dsn, app_name, allow_new_events=True)
    assert allowed.counts == summary.counts
    code, doc = verify_cli(redis_test_url, pg_dsn, app_name, "--allow-new-events")
    assert code == 3
    assert {k: doc[k] for k in MISMATCH_KINDS} == summary.counts


# --- Redis ahead, Redis unmigratable -------------------------------------------------------


def test_appended_redis_events_are_not_migrated_new_events(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = migrated_store(redis_client, redis_test_url, pg_dsn, app_name)
    ids = [a.aggregate_id for a in truth.clean_aggregates()[:3]]
    added = iw.append_events(redis_client, truth, 7, aggregate_ids=ids, seed=2)
    touched = {e.aggregate_id for e in added}

    summary = run_verify(redis_test_url, pg_dsn, app_name)
    only(summary, "not_migrated_new_events", len(touched))
    code, doc = verify_cli(redis_test_url, pg_dsn, app_name)
    assert code == 3 and doc["not_migrated_new_events"] == len(touched)
    code, doc = verify_cli(redis_test_url, pg_dsn, app_name, "--allow-new-events")
    assert code == 0 and doc["not_migrated_new_events"] == 0

    migrate(redis_test_url, pg_dsn, app_name)
    assert run_verify(redis_test_url, pg_dsn, app_name).mismatches == 0


def test_a_quarantined_aggregate_is_unmigratable_in_redis(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_defect_store(redis_client, app_name, seed=31)
    migrate(redis_test_url, pg_dsn, app_name, init_schema=True)
    bad_keys = {a.list_key for a in truth.defective_aggregates()}
    summary = run_verify(redis_test_url, pg_dsn, app_name)
    only(summary, "unmigratable_in_redis", len(bad_keys))
    assert {p["key"] for p in summary.problems} == bad_keys
    assert summary.aggregates_identical == len(truth.commit_lists) - len(bad_keys)
    code, doc = verify_cli(redis_test_url, pg_dsn, app_name)
    assert code == 3 and doc["unmigratable_in_redis"] == len(bad_keys)


def test_a_commit_list_key_that_is_not_utf8_is_unmigratable_not_fatal(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = migrated_store(redis_client, redis_test_url, pg_dsn, app_name)
    write_non_utf8_key(redis_client, app_name)
    code, doc = verify_cli(redis_test_url, pg_dsn, app_name)
    assert code == 3
    assert doc["unmigratable_in_redis"] == 1
    assert doc["aggregates_identical"] == len(truth.commit_lists)


def test_an_aggregate_postgresql_cannot_hold_is_unmigratable_in_redis(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = migrated_store(redis_client, redis_test_url, pg_dsn, app_name)
    write_events(redis_client, app_name, "nul", [payload("nul", 1, Text="a\u0000b")])
    assert migrate(redis_test_url, pg_dsn, app_name).aggregates_quarantined == 1
    summary = run_verify(redis_test_url, pg_dsn, app_name)
    only(summary, "unmigratable_in_redis", 1)
    assert summary.aggregates_identical == len(truth.commit_lists)


# --- sampling and shards -------------------------------------------------------------------


def test_sample_compares_n_aggregates(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = migrated_store(redis_client, redis_test_url, pg_dsn, app_name)
    summary = run_verify(redis_test_url, pg_dsn, app_name, sample=10)
    assert summary.aggregates == summary.aggregates_identical == 10
    assert 10 <= summary.events_compared < len(truth.events())
    everything = run_verify(redis_test_url, pg_dsn, app_name, sample=10_000)
    assert everything.aggregates == len(truth.commit_lists)


def test_cli_sample_compares_exactly_n_aggregates(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    migrated_store(redis_client, redis_test_url, pg_dsn, app_name)
    for n in (7, 1):
        code, doc = verify_cli(
            redis_test_url, pg_dsn, app_name, "--sample", str(n), "--workers", "2"
        )
        assert code == 0 and doc["sample"] == n
        assert doc["aggregates"] == doc["aggregates_identical"] == n


def test_sampled_mismatches_are_found_when_sampled(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = migrated_store(redis_client, redis_test_url, pg_dsn, app_name)
    execute(pg_dsn, "UPDATE event SET event_type = 'X' WHERE version = 1")
    summary = run_verify(redis_test_url, pg_dsn, app_name, sample=5)
    only(summary, "content_differs", 5)
    assert len(truth.commit_lists) > 5


def test_shards_split_the_aggregates(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = migrated_store(redis_client, redis_test_url, pg_dsn, app_name)
    execute(pg_dsn, "UPDATE event SET event_type = 'X' WHERE version = 1")
    parts = [run_verify(redis_test_url, pg_dsn, app_name, shard=Shard(i, 3)) for i in range(3)]
    assert sum(p.aggregates for p in parts) == len(truth.commit_lists)
    for i, part in enumerate(parts):
        assert all(Shard(i, 3).owns(p["key"].split("}:", 1)[1]) for p in part.problems)
    assert sum(p.counts["content_differs"] for p in parts) == len(truth.commit_lists)


def test_workers_share_one_scan_and_find_every_mismatch(
    fresh_redis: Any, pg_dsn: str, app_name: str
) -> None:
    """``--workers 2``: this process scans the keyspace once and hands the pages out (each
    worker scanning all of it for its sub-shard was twice the SCANs, and the first to finish
    waited for the other). On a Redis of its own: SCANs are counted server-wide, and a shared
    server's other tests scan too."""
    redis_client = redis.Redis.from_url(fresh_redis.url)
    truth = migrated_store(redis_client, fresh_redis.url, pg_dsn, app_name)
    execute(pg_dsn, "UPDATE event SET event_type = 'X' WHERE version = 1")
    scans = []
    for workers in (1, 2):
        before = redis_client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0)
        summary = verify_parallel(
            redisio.RedisTarget(fresh_redis.url),
            VerifyOptions(app=app_name, pg_dsn=pg_dsn, page_size=7),
            workers=workers,
        )
        scans.append(redis_client.info("commandstats")["cmdstat_scan"]["calls"] - before)
        assert summary.aggregates == len(truth.commit_lists)
        assert summary.counts["content_differs"] == summary.mismatches == len(truth.commit_lists)
    assert scans[1] == scans[0]


# --- JSON equality, with PostgreSQL's jsonb "=" as the oracle ------------------------------

ORIGINAL: dict[str, Any] = {
    "Zeta": 1,
    "alpha": {"b": [True, {"y": 1, "x": 2}], "a": None},
    "Flag": True,
    "Count": 1,
    "Ratio": 0.1,
    "Text": "1",
    "List": [1, 2],
    "Amount": "AMOUNT",  # written as the number 12345678901234567890.12 (a .NET decimal)
}
# (path, new jsonb value): jsonb ``=`` decides whether it is a difference.
EDITS = {
    "true_to_1": ("{Flag}", "1"),
    "nested_true_to_1": ("{alpha,b,0}", "1"),
    "null_to_false": ("{alpha,a}", "false"),
    "int_to_string": ("{Count}", '"1"'),
    "string_to_int": ("{Text}", "1"),
    "list_order": ("{List}", "[2, 1]"),
    "int_to_decimal": ("{Count}", "1.0"),
    "exponent": ("{Count}", "1e0"),
    "decimal_zeros": ("{Ratio}", "0.1000"),
    "same_value": ("{Zeta}", "1"),
}


def write_json_store(
    client: redis.Redis, dsn: str, url: str, app: str, ids: list[str]
) -> dict[str, str]:
    """One-event aggregates whose payload has keys in an order jsonb does not keep, nested
    objects, lists, booleans, null and numbers; migrated. Returns id -> payload text."""
    raws = {}
    for aggregate_id in ids:
        text = payload(aggregate_id, 1, **ORIGINAL)
        assert text.index('"$type"') < text.index('"Id"')  # jsonb sorts "Id" first
        raws[aggregate_id] = text.replace('"AMOUNT"', "12345678901234567890.12")
        write_events(client, app, aggregate_id, [raws[aggregate_id]])
    init_event_store(dsn)
    assert migrate(url, dsn, app).events_migrated == len(ids)
    return raws


def test_json_differences_are_exactly_those_jsonb_sees(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    """One aggregate per edit; verify reports content_differs exactly where PostgreSQL's jsonb
    ``=`` says the edited row differs from the Redis payload."""
    raws = write_json_store(redis_client, pg_dsn, redis_test_url, app_name, sorted(EDITS))
    summary = run_verify(redis_test_url, pg_dsn, app_name)
    assert summary.mismatches == 0, summary.problems  # key order never counts
    differs: dict[str, bool] = {}
    with psycopg.connect(pg_dsn) as conn:
        for name, raw in raws.items():
            path, value = EDITS[name]
            row = conn.execute(
                "UPDATE event e SET event_data = jsonb_set(e.event_data, %s, %s::jsonb)"
                "  FROM aggregate a WHERE a.aggregate_key = e.aggregate_key AND a.aggregate_id = %s"
                " RETURNING e.event_data = %s::jsonb",
                (path, value, name, raw),
            ).fetchone()
            assert row is not None
            differs[name] = not row[0]
    assert any(differs.values()) and not all(differs.values())  # the oracle sees both
    summary = run_verify(redis_test_url, pg_dsn, app_name)
    reported = {p["key"].split("}:", 1)[1] for p in summary.problems}
    assert {p["kind"] for p in summary.problems} <= {"content_differs"}
    assert reported == {name for name, d in differs.items() if d}


# (what PostgreSQL holds, the Redis payload): pairs where Python's == on the parsed values is
# looser than jsonb's = (bools against numbers, numbers that parse to one double), and pairs
# that are the same JSON written differently.
JSON_PAIRS = [
    ('{"a": 1, "b": "x"}', '{"b":"x","a":1}'),
    ('{"a": true}', '{"a":1}'),
    ('{"a": 1}', '{"a":true}'),
    ('{"a": [1, {"b": false}]}', '{"a":[1,{"b":0}]}'),
    ('{"a": [1, {"b": 0.0}]}', '{"a":[1,{"b":false}]}'),
    ('{"a": 9223372036854775808.4}', '{"a":9223372036854775808}'),
    ('{"a": 0.1}', '{"a":0.10000000000000001}'),
    ('{"a": 0.10000000000000001}', '{"a":0.1}'),
    ('{"a": 0.1, "b": true}', '{"b":true,"a":0.1}'),
    ('{"a": 1.5, "b": [2.25]}', '{"b":[2.25],"a":1.50}'),
    ('{"a": 1.5}', '{"a":1.25}'),
    ('{"a": 100000000000000000000}', '{"a":1E+20}'),
    ('{"a": 1.0}', '{"a":1}'),
    ('{"a": null}', '{"a":false}'),
    ('{"a": "1"}', '{"a":1}'),
    ('{"a": [2, 1]}', '{"a":[1,2]}'),
    ('{"a": {"b": {"c": 12345678901234567890}}}', '{"a":{"b":{"c":12345678901234567891}}}'),
]


@pytest.mark.parametrize(("stored", "raw"), JSON_PAIRS)
def test_same_json_is_jsonb_equality(stored: str, raw: str, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT convert_to(%s::jsonb::text, 'UTF8'), %s::jsonb = %s::jsonb",
            (stored, stored, raw),
        ).fetchone()
    assert row is not None
    pg_text, equal = row
    assert same_json(bytes(pg_text), orjson.loads(raw), raw.encode()) is equal


@pytest.mark.parametrize(
    "changed",
    [
        "12345678901234567890.13",
        # 17 significant digits split by the point: one double, no run of 16 digits
        "1234567890.1234568",
    ],
)
def test_high_precision_decimals_that_differ_are_content_differs(
    changed: str, redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    raw = write_json_store(redis_client, pg_dsn, redis_test_url, app_name, ["amount"])["amount"]
    if changed == "1234567890.1234568":
        raw = raw.replace("12345678901234567890.12", "1234567890.1234567")
        redis_client.flushdb()
        write_events(redis_client, app_name, "amount", [raw])
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("UPDATE event SET event_data = %s::jsonb", (raw,))
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "UPDATE event SET event_data = jsonb_set(event_data, '{Amount}', %s::jsonb)",
            (changed,),
        )
        row = conn.execute("SELECT event_data = %s::jsonb FROM event", (raw,)).fetchone()
    assert row == (False,)  # jsonb: a different amount
    only(run_verify(redis_test_url, pg_dsn, app_name), "content_differs", 1)


def test_jsonb_in_binary_is_its_text_after_a_version_byte(pg_dsn: str) -> None:
    """verify reads jsonb in binary, unparsed (esctl.pgevents.pg_streams): the text after the
    format's version byte must be the ``::text`` the comparison was built on."""
    values = ['{"b": 1, "a": [1.50, true, null]}', '{"é": "\\u00e9\\n\\"", "n": 1E+20}', "[]"]
    with psycopg.connect(pg_dsn) as conn:
        for value in values:
            cur = conn.cursor()
            binary_column_loaders(cur)
            cur.execute(
                "SELECT %s::jsonb, convert_to(%s::jsonb::text, 'UTF8')", (value,) * 2, binary=True
            )
            row = cur.fetchone()
            assert row is not None
            assert jsonb_text(row[0]) == bytes(row[1])
    with pytest.raises(ValueError, match="jsonb binary format version"):
        jsonb_text(b'\x02{"a": 1}')


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-3, 3) | st.text(max_size=2),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=12,
)


def _loosened(value: Any, flips: st.DataObject) -> Any:
    """``value`` with some leaves swapped for equal ones of another type (1 -> 1.0 or True)."""
    if isinstance(value, dict):
        return {k: _loosened(v, flips) for k, v in value.items()}
    if isinstance(value, list):
        return [_loosened(v, flips) for v in value]
    if type(value) in (int, bool) and value in (0, 1) and flips.draw(st.booleans()):
        return flips.draw(st.sampled_from([int(value), float(value), bool(value)]))
    if type(value) is int and flips.draw(st.booleans()):
        return float(value)
    return value


@given(value=_json_values, flips=st.data())
def test_one_walk_over_both_sides_finds_what_two_walks_find(
    value: Any, flips: st.DataObject
) -> None:
    other = _loosened(value, flips)
    assert other == value
    both, two = _loose_both(value, other), _loose(value) | _loose(other)
    # a bool anywhere decides (the search ends there); else whether there is a float
    assert both & _BOOL == two & _BOOL
    assert two & _BOOL or both == two


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_kill_9_of_verify_with_two_workers_kills_its_workers(
    fresh_redis: Any, pg_dsn: str, app_name: str
) -> None:
    """Workers waiting for pages (Redis paused, so the first process cannot scan) die with the
    process that hands them out instead of waiting for pages forever. On a Redis of its own:
    CLIENT PAUSE holds every client of the server (a shared server's other tests timed out)."""
    redis_test_url = fresh_redis.url
    redis_client = redis.Redis.from_url(redis_test_url)
    migrated_store(redis_client, redis_test_url, pg_dsn, app_name)
    pause_s = 10.0  # the workers must start within 8 s of it, on a loaded machine too
    redis_client.execute_command("CLIENT", "PAUSE", str(int(pause_s * 1000)), "ALL")
    paused_until = time.monotonic() + pause_s
    proc = subprocess.Popen(
        [sys.executable, "-m", "esctl", "migrate", "verify", "--redis-url", redis_test_url,
         "--pg-dsn", pg_dsn, "--app", app_name, "--workers", "2", "--json"],
        env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    workers: list[int] = []
    try:
        while len(workers) < 2 and time.monotonic() < paused_until - 2 and proc.poll() is None:
            time.sleep(0.05)
            workers = child_processes(proc.pid)
        assert len(workers) == 2, proc.poll()
        proc.kill()
        proc.wait()
        while [w for w in workers if _alive(w)] and time.monotonic() < paused_until - 0.5:
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)]  # still paused: they were not done
    finally:
        proc.kill()
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)
        redis_client.close()  # (the server, still paused, is stopped with the test)


def test_a_stop_sent_to_verify_alone_stops_its_workers_comparing(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str, tmp_path: Path
) -> None:
    """SIGTERM to the command alone (Kubernetes' to PID 1, ``kill PID``) while its workers wait
    for PostgreSQL (the event tables locked) with the store's page in hand: they stop there,
    as one process does. They were not told: they compared every page handed out (here, every
    aggregate: each is a problem, PostgreSQL holding no event) before the command could end."""
    truth = migrated_store(redis_client, redis_test_url, pg_dsn, app_name)
    execute(pg_dsn, "DELETE FROM event")
    problems = tmp_path / "problems.jsonl"
    with psycopg.connect(pg_dsn) as locker:
        locker.execute("LOCK TABLE aggregate, event IN ACCESS EXCLUSIVE MODE")
        with started_cli(
            "migrate", "verify", "--redis-url", redis_test_url, "--pg-dsn", pg_dsn,
            "--app", app_name, "--workers", "2", "--problems-file", str(problems), "--json",
        ) as proc:  # fmt: skip
            deadline = time.monotonic() + 30
            while _waiting_for_a_lock(pg_dsn) < 1:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.02)
            workers = child_processes(proc.pid)
            assert len(workers) == 2
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            locker.rollback()  # the page in hand is read, then not compared
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert_clean(out.decode(), err.decode())
    error = json.loads(out)["error"]
    assert error["message"] == "stopped by SIGTERM; the state was left consistent"
    assert error["hint"] == "rerun the same command"  # not "to continue": verify starts over
    assert wait_gone(workers, timeout=2) == []
    compared = problems.read_text().splitlines() if problems.exists() else []
    assert len(truth.aggregates) == 60
    assert compared == [], f"{len(compared)} aggregates compared after the stop"


def _waiting_for_a_lock(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.parametrize("command", [["verify"], ["prune", "--dry-run"]])
def test_without_the_event_tables_the_hint_names_the_command_that_creates_them(
    redis_test_url: str, pg_dsn: str, app_name: str, command: list[str]
) -> None:
    """verify and prune take no --init-schema: the hint said to run them with it."""
    result = run_cli(
        "migrate", *command, "--json",
        "--app", app_name, "--redis-url", redis_test_url, "--pg-dsn", pg_dsn,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["message"] == "the event tables public.aggregate and public.event do not exist"
    assert "run with --init-schema" not in error["hint"]
    assert f"`esctl migrate redis-to-pg --app {app_name} --init-schema`" in error["hint"]
