"""``inspect aggregate`` and ``inspect event`` (esctl.inspect) against real Redis stores, checked
against the independent writer's ground truth and the demo store's planted defects."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import independent_writer as iw
import pytest
import redis

from esctl import demo, redisio
from esctl.errors import NotFound
from esctl.inspect import inspect_aggregate, inspect_event
from esctl.redisio import resp as redisio_resp

EXPECTED_KIND = {
    "missing_payload": "missing_payload",
    "invalid_compressed": "invalid_compressed",
    "version_gap": "version_gap",
    "duplicate_version": "duplicate_version",
    "id_mismatch": "id_mismatch",
    "aggregate_type_changed": "aggregate_type_changed",
    "shared_commit_list": "shared_commit_list",
}


@pytest.fixture
def truth(redis_client: redis.Redis, app_name: str) -> iw.GroundTruth:
    return iw.write_store(
        redis_client,
        app=app_name,
        aggregates=40,
        defects=[*iw.DEFECT_KINDS, "version_gap"],
        seed=13,
    )


def test_clean_aggregates_come_back_exactly(
    truth: iw.GroundTruth, redis_client: redis.Redis, app_name: str
) -> None:
    clean = truth.clean_aggregates()
    assert any(e.legacy for a in clean for e in a.events)
    assert any(e.compressed for a in clean for e in a.events)
    for aggregate in clean:
        report = inspect_aggregate(redis_client, app_name, aggregate.aggregate_id)
        assert report.ok, report.problems
        assert report.key == aggregate.list_key
        assert report.commits == len(aggregate.events)
        assert report.aggregate_types == [aggregate.aggregate_type]
        document = json.loads(json.dumps(report.as_dict(raw=True)))
        assert document["ok"] is True and document["problems"] == []
        events = document["events"]
        assert [e["commit_id"] for e in events] == [e.commit_id for e in aggregate.events]
        for got, want in zip(events, aggregate.events, strict=True):
            assert got["text"] == want.payload  # the original JSON text, not re-serialised
            assert got["data"] == json.loads(want.payload)
            assert got["version"] == want.version
            assert got["event_type"] == want.event_type
            assert got["aggregate_type"] == want.aggregate_type
            assert got["timestamp"] == want.timestamp
            assert got["layout"] == ("legacy" if want.legacy else "partitioned")
            assert got["hash_key"] == want.hash_key
            assert got["partition"] == (None if want.legacy else iw.partition(want.commit_id))
            assert got["compressed"] == ("gzip" if want.compressed else None)
            assert want.stored is not None
            assert got["stored_bytes"] == len(want.stored)
            assert got["stored"] == want.stored.decode()
        stamps = sorted(aggregate.events, key=lambda e: datetime.fromisoformat(e.timestamp))
        assert report.first_timestamp == stamps[0].timestamp
        assert report.last_timestamp == stamps[-1].timestamp
        assert report.stored_bytes == sum(len(e.stored or b"") for e in aggregate.events)
        assert report.compressed_events == sum(e.compressed for e in aggregate.events)


def test_each_planted_defect_is_reported_with_its_kind(
    truth: iw.GroundTruth, redis_client: redis.Redis, app_name: str
) -> None:
    for defect in truth.defects:
        report = inspect_aggregate(redis_client, app_name, defect.aggregate_id)
        kinds = [p["kind"] for p in report.problems]
        if defect.kind == "orphan":
            assert report.ok, report.problems  # an orphan is not an event of the aggregate
            assert defect.commit_id not in [e.commit_id for e in report.events]
            continue
        assert kinds == [EXPECTED_KIND[defect.kind]], (defect, report.problems)
        problem = report.problems[0]
        assert problem["key"] == defect.key  # the hash of an invalid value, else the list
        assert problem["blocks_migration"] is True
        if defect.kind in ("missing_payload", "invalid_compressed", "id_mismatch"):
            assert problem["commit_id"] == defect.commit_id
            [row] = [e for e in report.events if e.commit_id == defect.commit_id]
            assert row.problems == [defect.kind]
        if defect.kind == "missing_payload":
            [row] = [e for e in report.events if e.commit_id == defect.commit_id]
            assert row.layout is None and row.stored_bytes is None and row.data is None
        if defect.kind == "shared_commit_list":
            assert sorted(report.aggregate_types) == ["Course", "Invoice"]


def test_version_order_and_from_version(redis_client: redis.Redis, app_name: str) -> None:
    ids = ["c-b", "c-a", "c-c"]
    for commit_id, version in zip(ids, (2, 1, 3), strict=True):
        payload = (
            f'{{"$type":"Ns.Ev, A","Id":"agg","TimeStamp":"2020-01-0{version}T00:00:00.1234567'
            f'+00:00","Version":{version},"AggregateType":"T"}}'
        )
        redis_client.hset(iw.event_hash_key(app_name, commit_id), commit_id, payload)
    redis_client.rpush(iw.commit_list_key(app_name, "agg"), *ids)
    report = inspect_aggregate(redis_client, app_name, "agg")
    assert [p["kind"] for p in report.problems] == ["version_order"]
    assert report.problems[0]["blocks_migration"] is False  # the library sorts by Version
    assert report.first_timestamp is not None and report.first_timestamp.startswith("2020-01-01")
    later = inspect_aggregate(redis_client, app_name, "agg", from_version=2)
    assert [e.version for e in later.events] == [2, 3]
    assert later.commits == 3 and later.problems == report.problems


def test_snapshot_version(redis_client: redis.Redis, app_name: str) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=2, seed=1)
    aggregate = truth.aggregates[0]
    assert inspect_aggregate(redis_client, app_name, aggregate.aggregate_id).snapshot is None
    snapshot = json.dumps(
        {"$type": "Ns.Snap, A", "Id": aggregate.aggregate_id, "Version": 2, "Pad": "x" * 2000}
    )
    key = iw.snapshot_hash_key(app_name, aggregate.aggregate_id)
    redis_client.hset(key, aggregate.aggregate_id, iw.gzip_base64(snapshot))
    report = inspect_aggregate(redis_client, app_name, aggregate.aggregate_id)
    assert report.snapshot is not None
    assert (report.snapshot.key, report.snapshot.version) == (key, 2)
    assert report.snapshot.compressed == "gzip"
    assert report.as_dict()["snapshot"]["version"] == 2


def test_missing_aggregate_names_the_key(redis_client: redis.Redis, app_name: str) -> None:
    with pytest.raises(NotFound) as caught:
        inspect_aggregate(redis_client, app_name, "no-such-id")
    assert f"{{EventStore:{app_name}}}:no-such-id" in caught.value.message


def test_ten_thousand_events_take_a_dozen_round_trips(
    redis_client: redis.Redis, redis_test_url: str, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 10_000
    pipe = redis_client.pipeline(transaction=False)
    commit_ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(n)]
    for version, commit_id in enumerate(commit_ids, start=1):
        payload = (
            f'{{"$type":"Ns.Ev, A","Id":"big","TimeStamp":"2020-01-01T00:00:00.1234567+00:00",'
            f'"Version":{version},"AggregateType":"T"}}'
        )
        pipe.hset(iw.event_hash_key(app_name, commit_id), commit_id, payload)
    pipe.rpush(iw.commit_list_key(app_name, "big"), *commit_ids)
    pipe.execute()

    trips: list[int] = []
    original = redisio_resp._RawConnection.execute

    def counting(self: Any, commands: Any) -> Any:
        trips.append(len(commands))
        return original(self, commands)

    monkeypatch.setattr(redisio_resp._RawConnection, "execute", counting)
    client = redisio.connect(redis_test_url)
    report = inspect_aggregate(client, app_name, "big")
    assert report.ok and len(report.events) == n
    assert 10 <= len(trips) <= 15, trips  # 1 (list + snapshot) + 10 (payloads) + connection setup


# --- inspect event ---------------------------------------------------------------------------


def test_inspect_event(truth: iw.GroundTruth, redis_client: redis.Redis, app_name: str) -> None:
    legacy = next(e for a in truth.clean_aggregates() for e in a.events if e.legacy)
    compressed = next(
        e for a in truth.clean_aggregates() for e in a.events if e.compressed and not e.legacy
    )
    for event in (legacy, compressed):
        report = inspect_event(redis_client, app_name, event.commit_id)
        assert report.ok and report.committed is True
        assert report.text == event.payload
        assert report.hash_key == event.hash_key
        assert report.layout == ("legacy" if event.legacy else "partitioned")
        assert report.compressed == ("gzip" if event.compressed else None)
        assert report.aggregate_id == event.aggregate_id
        list_ids = truth.commit_lists[iw.commit_list_key(app_name, event.aggregate_id)]
        assert report.position == list_ids.index(event.commit_id)
        assert json.loads(json.dumps(report.as_dict()))["data"] == json.loads(event.payload)

    orphan = truth.orphans[0]
    report = inspect_event(redis_client, app_name, orphan.commit_id)
    assert report.committed is False
    assert [p["kind"] for p in report.problems] == ["orphan"]

    invalid = truth.defects_of("invalid_compressed")[0]
    assert invalid.commit_id is not None
    report = inspect_event(redis_client, app_name, invalid.commit_id)
    assert [p["kind"] for p in report.problems] == ["invalid_compressed"]
    assert report.committed is None  # no Id to ask a commit list with

    missing = truth.defects_of("missing_payload")[0]
    assert missing.commit_id is not None
    with pytest.raises(NotFound) as caught:
        inspect_event(redis_client, app_name, missing.commit_id)
    assert iw.event_hash_key(app_name, missing.commit_id) in caught.value.message
    assert iw.legacy_hash_key(app_name) in caught.value.message


def test_demo_defects(demo_store: demo.DemoSummary, redis_client: redis.Redis) -> None:
    app = demo_store.app
    for defect in demo_store.defects:
        if defect.kind == "orphan":
            continue
        report = inspect_aggregate(redis_client, app, defect.aggregate_id)
        assert [p["kind"] for p in report.problems] == [defect.kind]
    clean = inspect_aggregate(redis_client, app, demo_store.samples["legacy_aggregate"])
    assert clean.ok
    assert {e.layout for e in clean.events} == {"legacy", "partitioned"}
