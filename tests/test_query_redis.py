"""``events query --source redis`` (esctl.query.RedisQuery) against real Redis stores: the demo
store and stores of the independent writer, whose ground truth is computed here without
esctl's code."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import independent_writer as iw
import pytest
import redis

from esctl import demo, query, readahead
from esctl.query import QueryFilters, QueryResult, RedisQuery, Selectors

Key = tuple[str, int, str, str, str, str | None]


def run(
    client: redis.Redis, app: str, *, limit: int | None = None, **selectors: Any
) -> tuple[list[QueryResult], RedisQuery]:
    q = RedisQuery(client, app, Selectors(**selectors).filters(limit=limit), scan_count=7)
    return list(q), q


def keys(results: list[QueryResult]) -> list[Key]:
    return sorted(
        (r.aggregate_id, r.version, r.event_type, r.aggregate_type, r.timestamp, r.commit_id)
        for r in results
    )


def truth_key(e: iw.TruthEvent) -> Key:
    return (e.aggregate_id, e.version, e.event_type, e.aggregate_type, e.timestamp, e.commit_id)


_STAMP = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?([+-])(\d\d):(\d\d)$")


def moment(text: str) -> datetime:
    """A TimeStamp text as an instant, truncated to the microsecond (independent of esctl)."""
    m = _STAMP.match(text)
    assert m, text
    y, mo, d, h, mi, s = (int(m[i]) for i in range(1, 7))
    micro = int((m[7] or "").ljust(6, "0")[:6])
    sign = 1 if m[8] == "+" else -1
    offset = timedelta(hours=int(m[9]), minutes=int(m[10])) * sign
    return datetime(y, mo, d, h, mi, s, micro, tzinfo=UTC) - offset


def test_everything_readable_comes_back_with_its_exact_text(
    redis_client: redis.Redis, app_name: str
) -> None:
    truth = iw.write_store(
        redis_client, app=app_name, aggregates=45, defects=list(iw.DEFECT_KINDS), seed=5
    )
    results, q = run(redis_client, app_name)
    readable = [e for e in truth.events() if e.readable]
    assert keys(results) == sorted(truth_key(e) for e in readable)
    payloads = {e.commit_id: e.payload for e in readable}
    for r in results:
        assert r.commit_id is not None
        assert r.text == payloads[r.commit_id]
        assert r.data == json.loads(payloads[r.commit_id])
        line = r.json_line()
        assert line.endswith(b',"data":' + payloads[r.commit_id].encode() + b"}")
        assert json.loads(line) == {**r.as_dict(), "data": json.loads(payloads[r.commit_id])}
    unreadable = [e for e in truth.events() if not e.readable]
    assert q.stats.unreadable == len(unreadable) == 2  # the missing and the invalid payload
    assert q.stats.events == len(truth.events())
    assert q.stats.matched == len(results)
    assert q.stats.aggregates == len(truth.commit_lists)


def test_type_time_and_where_filters_match_the_ground_truth(
    redis_client: redis.Redis, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=60, seed=9)
    events = truth.events()

    def expect(predicate: Any) -> list[Key]:
        return sorted(truth_key(e) for e in events if predicate(e, json.loads(e.payload)))

    since = datetime(2017, 6, 1, tzinfo=UTC)
    until = datetime(2018, 3, 1, tzinfo=UTC)
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"types": ("InvoicePaid",)}, lambda e, d: e.event_type == "InvoicePaid"),
        (
            {"types": ("ModuleAdded", "Audited`1")},
            lambda e, d: e.event_type in ("ModuleAdded", "Audited`1"),
        ),
        ({"aggregate_type": "Course"}, lambda e, d: e.aggregate_type == "Course"),
        (
            {"since": "2017-06-01", "until": "2018-03-01"},
            lambda e, d: since <= moment(e.timestamp) < until,
        ),
        (
            {"where": ("Lines.Amount>250",)},
            lambda e, d: any(
                line["Amount"] > 250 for line in d.get("Lines", {}).get("$values", [])
            ),
        ),
        (
            {"where": ("Owner.Address.City=Zürich",)},
            lambda e, d: d.get("Owner", {}).get("Address", {}).get("City") == "Zürich",
        ),
        ({"where": ("Inner.Tags=β",)}, lambda e, d: "Inner" in d),
        ({"where": ("Note~🦄",)}, lambda e, d: "🦄" in d.get("Note", "")),
        ({"where": ("Comment exists",)}, lambda e, d: "Comment" in d),
        ({"where": ("Progress>=50", "Progress<60")}, lambda e, d: 50 <= d.get("Progress", -1) < 60),
        (
            {"types": ("EnrollmentProgressed",), "where": ("Progress!=0",)},
            lambda e, d: e.event_type == "EnrollmentProgressed" and d["Progress"] != 0,
        ),
    ]
    for spec, predicate in cases:
        results, _ = run(redis_client, app_name, **spec)
        expected = expect(predicate)
        assert expected, f"{spec} selects nothing: a weak test"
        assert keys(results) == expected, spec


def test_aggregates_filter_reads_only_those_lists(redis_client: redis.Redis, app_name: str) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=30, seed=3)
    chosen = [truth.aggregates[4], truth.aggregates[17]]
    results, q = run(redis_client, app_name, aggregates=tuple(a.aggregate_id for a in chosen))
    assert keys(results) == sorted(truth_key(e) for a in chosen for e in a.events)
    assert q.stats.aggregates == 2
    assert q.stats.events == sum(len(a.events) for a in chosen)
    # in commit order within an aggregate
    first = [r.commit_id for r in results if r.aggregate_id == chosen[0].aggregate_id]
    assert first == [e.commit_id for e in chosen[0].events]
    none, _ = run(redis_client, app_name, aggregates=("no-such-aggregate",))
    assert none == []


def test_reading_ahead_in_a_second_process_changes_nothing_but_speed(
    redis_client: redis.Redis, app_name: str
) -> None:
    """The read-ahead child (on by default with two CPUs) and the one-process read give the
    same results in the same order, with the same counts, for every kind of filter."""
    truth = iw.write_store(
        redis_client, app=app_name, aggregates=70, defects=list(iw.DEFECT_KINDS), seed=12
    )
    some = truth.events()[3]
    for filters in (
        QueryFilters(),
        Selectors(types=(some.event_type,)).filters(),
        Selectors(since="2017-06-01", where=("Version>=2",)).filters(),
        Selectors(aggregate_type=some.aggregate_type).filters(limit=9),
    ):
        answers = []
        for ahead in (True, False):
            q = RedisQuery(redis_client, app_name, filters, scan_count=5)
            q.read_ahead = ahead
            answers.append(([r.json_line() for r in q], q.stats))
        assert answers[0][0], f"{filters} selects nothing: a weak test"
        assert answers[0] == answers[1], filters


def test_a_redis_failure_while_reading_ahead_is_the_usual_connection_error(
    app_name: str,
) -> None:
    from esctl import servers
    from esctl.errors import ConnectionFailed

    local = servers.start_redis()
    try:
        client = redis.Redis.from_url(local.url)
        iw.write_store(client, app=app_name, aggregates=400, seed=4)
        q = RedisQuery(client, app_name, QueryFilters(), scan_count=10)
        assert q.read_ahead or not readahead.available()
        q.read_ahead = True
        results = iter(q)
        next(results)
        local.stop()
        with pytest.raises(ConnectionFailed):
            for _ in results:
                pass
    finally:
        local.stop()


def test_limit_stops_the_scan(redis_client: redis.Redis, app_name: str) -> None:
    iw.write_store(redis_client, app=app_name, aggregates=80, seed=2)
    results, q = run(redis_client, app_name, limit=5)
    assert len(results) == 5
    assert q.stats.events < 200  # stopped on an early page
    assert run(redis_client, app_name, limit=0)[0] == []


def test_demo_store_counts(demo_store: demo.DemoSummary, redis_client: redis.Redis) -> None:
    app = demo_store.app
    results, q = run(redis_client, app)
    assert len(results) == demo_store.readable_events
    assert q.stats.unreadable == demo_store.commit_ids - demo_store.readable_events
    for event_type, count in demo_store.events_by_event_type.items():
        assert len(run(redis_client, app, types=(event_type,))[0]) == count, event_type
    for aggregate_type, count in demo_store.events_by_aggregate_type.items():
        assert len(run(redis_client, app, aggregate_type=aggregate_type)[0]) == count
    # a gzip-compressed event is found by a field deep inside it
    value = redis_client.hget(
        demo_store.samples["compressed_hash"], demo_store.samples["compressed_commit"]
    )
    assert isinstance(value, bytes) and value.startswith(b"H4sI")
    commit = demo_store.samples["compressed_commit"]
    [hit] = [r for r in results if r.commit_id == commit]
    key = next(k for k, v in hit.data.items() if isinstance(v, str) and len(v) > 20 and k != "Id")
    text = hit.data[key][5:25]
    found, _ = run(redis_client, app, where=(f"{key}~{text}",))
    assert commit in {r.commit_id for r in found}


def test_escaped_text_is_still_found(redis_client: redis.Redis, app_name: str) -> None:
    """A payload written with \\u escapes (another JSON writer, or StringEscapeHandling) does
    not contain the needle bytes literally: the substring pre-filter must not drop it."""
    text = (
        '{"$type":"Ns.\\u004frderPlaced, Asm","Id":"42","TimeStamp":"2020-01-01T00:00:00.1234567'
        '+00:00","Version":1,"AggregateType":"Order","City":"M\\u00fcnchen","Url":"a\\/b"}'
    )
    redis_client.rpush(iw.commit_list_key(app_name, "42"), "c-1")
    redis_client.hset(iw.event_hash_key(app_name, "c-1"), "c-1", text)
    assert len(run(redis_client, app_name, types=("OrderPlaced",))[0]) == 1
    assert len(run(redis_client, app_name, where=("City=München",))[0]) == 1
    assert len(run(redis_client, app_name, where=("Url~a/b",))[0]) == 1
    big = text.replace('"Url"', '"Pad":"' + "x" * 1200 + '","Url"')
    redis_client.hset(iw.event_hash_key(app_name, "c-1"), "c-1", iw.gzip_base64(big))
    assert len(run(redis_client, app_name, types=("OrderPlaced",))[0]) == 1
    assert len(run(redis_client, app_name, types=("OrderShipped",))[0]) == 0


def test_head_event_type_reads_only_the_start() -> None:
    payload = (
        '{"$type":"Learning.Messaging.Envelope`1[[Ns.GradePublished, Asm]], Learning.Messaging",'
        '"Id":"1","Big":"' + "é" * 5000 + '"}'
    )
    value = iw.gzip_base64(payload)
    assert query.head_event_type(value) == "Envelope`1"
    assert query.head_event_type(iw.gzip_base64('{"Id":"1","$type":"Ns.X, A"}')) is None
    assert query.head_event_type(b"H4sIAAAA!!") is None
    assert query.head_event_type(iw.invalid_gzip_base64(random.Random(1))) is None


def test_head_envelope_finds_only_the_top_level_timestamp() -> None:
    stamp = "2019-03-04T05:06:07.1234567-05:00"
    pad = '"Pad":"' + "x" * 3000 + '"'
    compact = f'{{"$type":"Ns.A, X","Id":"7","TimeStamp":"{stamp}","Version":1,{pad}}}'
    assert query.head_envelope(iw.gzip_base64(compact)) == ("Ns.A, X", stamp)
    nested = f'{{"$type":"Ns.A, X","Inner":{{"TimeStamp":"{stamp}"}},"TimeStamp":"x",{pad}}}'
    assert query.head_envelope(iw.gzip_base64(nested)) == ("Ns.A, X", None)
    escaped = f'{{"$type":"Ns.A, X","Id":"a\\"b","TimeStamp":"{stamp}",{pad}}}'
    assert query.head_envelope(iw.gzip_base64(escaped)) == ("Ns.A, X", None)


def test_unreadable_payloads_are_counted_not_returned(
    redis_client: redis.Redis, app_name: str
) -> None:
    stamp = "2020-01-01T00:00:00.1234567+00:00"
    good = f'{{"$type":"Ns.A, X","Id":"1","TimeStamp":"{stamp}","Version":1,"AggregateType":"T"}}'
    bad = [
        b"not json",
        b"[1, 2]",
        b'{"$type":"Ns.A, X","Id":"1","Version":2,"AggregateType":"T"}',  # no TimeStamp
        f'{{"$type":"Ns.A, X","Id":"1","TimeStamp":"{stamp}","Version":0,"AggregateType":"T"}}'.encode(),
        b'{"a":"\xff"}',
    ]
    ids = [f"c{i}" for i in range(len(bad) + 2)]
    redis_client.rpush(iw.commit_list_key(app_name, "1"), *ids)
    redis_client.hset(iw.event_hash_key(app_name, ids[0]), ids[0], good)
    for commit_id, value in zip(ids[1:], bad, strict=False):
        redis_client.hset(iw.event_hash_key(app_name, commit_id), commit_id, value)
    results, q = run(redis_client, app_name)
    assert [r.commit_id for r in results] == ["c0"]
    assert q.stats.unreadable == len(bad) + 1  # and the last id has no payload at all
