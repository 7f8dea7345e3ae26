"""The independent writer (tests/independent_writer.py) agrees with esctl's layout and codec.

Later acceptance tests trust its ground truth; these tests make sure the two implementations
of docs/layout.md (written separately) say the same thing, byte for byte where they must."""

from __future__ import annotations

import base64
import copy
import gzip
import re
import threading

import independent_writer as iw
import pytest
import redis
import redis_bytes as rb
from hypothesis import given, settings
from hypothesis import strategies as st

from esctl import codec, layout, storereads

# Keys and ids may hold anything but NUL-free text is what Redis keys usually are.
names = st.text(min_size=1, max_size=40)


@given(names)
def test_partition_agrees_with_layout(identifier: str) -> None:
    assert iw.partition(identifier) == layout.partition(identifier)


def test_partition_known_values() -> None:
    # CRC-32 (IEEE) check value of "123456789" is 0xCBF43926.
    assert iw.partition("123456789") == 0xCBF43926 % 655360
    assert iw.partition("1") == layout.partition("1")


@given(app=names, aggregate_id=names, commit_id=names)
def test_keys_agree_with_layout(app: str, aggregate_id: str, commit_id: str) -> None:
    assert iw.commit_list_key(app, aggregate_id) == layout.commit_list_key(app, aggregate_id)
    assert iw.event_hash_key(app, commit_id) == layout.event_hash_key(app, commit_id)
    assert iw.legacy_hash_key(app) == layout.legacy_event_hash_key(app)
    assert iw.snapshot_hash_key(app, aggregate_id) == layout.snapshot_hash_key(app, aggregate_id)


@settings(max_examples=200)
@given(st.text(max_size=3000))
def test_gzip_base64_round_trips_through_both(text: str) -> None:
    ours = iw.gzip_base64(text)
    assert ours.startswith(b"H4sI")
    decoded = codec.decode_value(ours)
    assert decoded.problem is None
    assert decoded.compressed == "gzip"
    assert decoded.text == text
    assert iw.gunzip_base64(codec.gzip_base64(text)) == text


def test_gzip_header_is_dotnet_like() -> None:
    raw = base64.b64decode(iw.gzip_base64("x" * 2000))
    assert raw[:4] == b"\x1f\x8b\x08\x00"
    assert raw[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert raw[9] == 0x0A  # OS byte
    assert gzip.decompress(raw) == b"x" * 2000


@given(st.text(max_size=1500))
def test_compression_rule_agrees_with_codec(text: str) -> None:
    value, compressed = iw.stored_value(text)
    esctl_value = codec.encode_value(text)
    assert compressed == esctl_value.startswith(b"H4sI")
    assert compressed == (len(text.encode("utf-8")) > 1000)
    if not compressed:
        assert value == esctl_value == text.encode("utf-8")
    assert codec.decode_value(value).text == text


def test_invalid_value_is_invalid_for_codec_and_gzip() -> None:
    import random

    value = iw.invalid_gzip_base64(random.Random(1))
    assert value.startswith(b"H4sI")
    assert codec.decode_value(value).problem is not None
    assert codec.decode_value(value).problem.kind == "invalid_compressed"  # type: ignore[union-attr]
    with pytest.raises(Exception):  # noqa: B017 - zlib.error / BadGzipFile / EOFError
        iw.gunzip_base64(value)


@pytest.mark.parametrize(
    ("ticks", "offset", "trim", "expected"),
    [
        (15_317_606_521_234_567, 0, False, "2018-07-16T17:04:12.1234567+00:00"),
        (15_317_606_521_234_567, -300, False, "2018-07-16T12:04:12.1234567-05:00"),
        (15_317_606_521_234_567, 330, False, "2018-07-16T22:34:12.1234567+05:30"),
        (15_317_606_521_200_000, 0, True, "2018-07-16T17:04:12.12+00:00"),
        (15_317_606_520_000_000, 60, True, "2018-07-16T18:04:12+01:00"),
    ],
)
def test_timestamp_text(ticks: int, offset: int, trim: bool, expected: str) -> None:
    assert iw.timestamp_text(ticks, offset, trim=trim) == expected
    parsed = codec.parse_timestamp(expected)
    assert parsed.timestamp() * 1_000_000 == pytest.approx(ticks // 10, abs=1)


def _read_back(client: redis.Redis, truth: iw.GroundTruth) -> None:
    """Everything the ground truth says is what esctl's reader finds in Redis."""
    app = truth.app
    for key, commit_ids in truth.commit_lists.items():
        assert [c.decode() for c in rb.lrange(client, key)] == commit_ids
    listed = {c for ids in truth.commit_lists.values() for c in ids}
    for aggregate in truth.aggregates:
        assert aggregate.list_key == layout.commit_list_key(app, aggregate.aggregate_id)
        own = [e.commit_id for e in aggregate.events]
        stored_list = truth.commit_lists[aggregate.list_key]
        assert [c for c in stored_list if c in set(own)] == own
        payloads = storereads.fetch_payloads(client, app, own)
        for event, found in zip(aggregate.events, payloads, strict=True):
            assert found.commit_id == event.commit_id
            if event.legacy:
                assert event.hash_key == layout.legacy_event_hash_key(app)
                assert event.commit_id.isdigit()
            else:
                assert event.hash_key == layout.event_hash_key(app, event.commit_id)
            if event.stored is None:
                assert found.value is None
                assert event.defect == "missing_payload"
                continue
            assert found.hash_key == event.hash_key
            assert found.value == event.stored
            decoded, parsed = codec.decode_event(found.value)
            if event.defect == "invalid_compressed":
                assert decoded.problem is not None
                assert decoded.problem.kind == "invalid_compressed"
                continue
            assert decoded.problem is None
            assert decoded.text == event.payload
            assert (decoded.compressed == "gzip") == event.compressed
            assert parsed.ok, parsed.problems
            assert parsed.event_type == event.event_type
            assert parsed.type_name == event.type_name
            assert parsed.version == event.version
            assert parsed.aggregate_id == event.payload_id
            assert parsed.aggregate_type == event.aggregate_type
            assert parsed.timestamp_text == event.timestamp
            assert next(iter(parsed.data or {})) == "$type"
    for orphan in truth.orphans:
        assert orphan.commit_id not in listed
        assert client.hget(orphan.hash_key, orphan.commit_id) == orphan.stored


def test_store_reads_back_with_esctl(redis_client: redis.Redis, app_name: str) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=120, seed=11)
    events = truth.events()
    assert not truth.defects and all(a.clean for a in truth.aggregates)
    _read_back(redis_client, truth)

    compressed = sum(e.compressed for e in events) / len(events)
    legacy = sum(e.legacy for e in events) / len(events)
    assert 0.2 < compressed < 0.45
    assert 0.03 < legacy < 0.2
    legacy_ids = sorted(int(e.commit_id) for e in events if e.legacy)
    assert legacy_ids == list(range(1, len(legacy_ids) + 1))
    assert any(e.compressed for e in events if e.legacy)
    # every aggregate: versions 1..n in commit order, legacy events first, before October 2017
    for aggregate in truth.aggregates:
        assert [e.version for e in aggregate.events] == list(range(1, len(aggregate.events) + 1))
        flags = [e.legacy for e in aggregate.events]
        assert flags == sorted(flags, reverse=True)
        for event in aggregate.events:
            moment = codec.parse_timestamp(event.timestamp)
            assert (moment < iw.LEGACY_CUTOFF) == event.legacy
    texts = "".join(e.payload for e in events)
    assert "$values" in texts and "+ModuleAdded" in texts and "Audited`1[[" in texts
    assert re.search(r"[^\x00-\x7f]", texts)
    assert "\\n" in texts and '\\"' in texts  # JSON escapes
    stamps = [e.timestamp for e in events]
    assert any(re.search(r"\.\d{7}[+-]", s) for s in stamps)
    assert any(not re.search(r"\.\d{7}[+-]", s) for s in stamps)  # trimmed, as Newtonsoft does
    assert any(not s.endswith("+00:00") for s in stamps)
    types = {e.aggregate_type for e in events}
    assert types == {"Enrollment", "Invoice", "Course"}


def test_is_deterministic(redis_client: redis.Redis, app_name: str) -> None:
    first = iw.write_store(redis_client, app=app_name, aggregates=30, seed=4)
    second = iw.write_store(redis_client, app=app_name + "-again", aggregates=30, seed=4)
    assert [e.payload for e in first.events()] == [e.payload for e in second.events()]
    assert [e.commit_id for e in first.events()] == [e.commit_id for e in second.events()]


def test_planted_defects(redis_client: redis.Redis, app_name: str) -> None:
    kinds = [*iw.DEFECT_KINDS, "orphan", "version_gap"]
    truth = iw.write_store(redis_client, app=app_name, aggregates=80, defects=kinds, seed=2)
    _read_back(redis_client, truth)
    assert sorted(d.kind for d in truth.defects) == sorted(kinds)
    assert len(truth.orphans) == 2

    for defect in truth.defects:
        kind = defect.kind
        if kind == "orphan":
            orphan = next(o for o in truth.orphans if o.commit_id == defect.commit_id)
            assert defect.key == orphan.hash_key
            assert truth.aggregate(defect.aggregate_id).clean  # an orphan is not an event
            assert orphan.version == truth.aggregate(defect.aggregate_id).last_version + 1
            continue
        if kind == "shared_commit_list":
            invoice = truth.aggregate(defect.aggregate_id, "Invoice")
            course = truth.aggregate(defect.aggregate_id, "Course")
            assert invoice.list_key == course.list_key == defect.key
            stored = truth.commit_lists[defect.key]
            assert sorted(stored) == sorted(
                [e.commit_id for e in invoice.events] + [e.commit_id for e in course.events]
            )
            assert not invoice.clean and not course.clean
            continue
        aggregate = truth.aggregate(defect.aggregate_id)
        assert aggregate.defects == [kind]
        assert defect.key in (aggregate.list_key, *(e.hash_key for e in aggregate.events))
        event = next(e for e in aggregate.events if e.commit_id == defect.commit_id)
        versions = [e.version for e in aggregate.events]
        if kind == "missing_payload":
            assert (
                event.stored is None and redis_client.hget(event.hash_key, event.commit_id) is None
            )
            assert (
                redis_client.hget(layout.legacy_event_hash_key(app_name), event.commit_id) is None
            )
        elif kind == "invalid_compressed":
            assert event.stored is not None and event.stored.startswith(b"H4sI")
            assert defect.key == event.hash_key
        elif kind == "version_gap":
            assert event.version - 1 not in versions
            assert max(versions) == len(versions) + 1
        elif kind == "duplicate_version":
            assert versions.count(event.version) == 2
        elif kind == "id_mismatch":
            assert event.payload_id != aggregate.aggregate_id
            assert f'"Id":"{event.payload_id}"' in event.payload
        elif kind == "aggregate_type_changed":
            assert event.aggregate_type != aggregate.aggregate_type
            assert f'"AggregateType":"{event.aggregate_type}"' in event.payload
    with pytest.raises(ValueError, match="unknown defect"):
        iw.write_store(redis_client, app=app_name, defects=["nonsense"])


def test_legacy_ids_continue_after_existing_store(redis_client: redis.Redis, app_name: str) -> None:
    first = iw.write_store(redis_client, app=app_name, aggregates=40, legacy_share=0.5, seed=1)
    second = iw.write_store(redis_client, app=app_name, aggregates=0, seed=2)
    assert second.legacy_counter == first.legacy_counter > 0


def test_append_events(redis_client: redis.Redis, app_name: str) -> None:
    truth = iw.write_store(
        redis_client, app=app_name, aggregates=20, defects=["version_gap"], seed=8
    )
    before = {a.list_key: len(a.events) for a in truth.aggregates}
    added = iw.append_events(redis_client, truth, 25, seed=3)
    assert len(added) == 25
    assert all(e.aggregate_id != truth.defects[0].aggregate_id for e in added)
    _read_back(redis_client, truth)
    for aggregate in truth.aggregates:
        grown = len(aggregate.events) - before[aggregate.list_key]
        assert redis_client.llen(aggregate.list_key) == len(aggregate.events)
        if aggregate.clean:
            assert [e.version for e in aggregate.events] == list(
                range(1, len(aggregate.events) + 1)
            )
        else:
            assert grown == 0


def test_append_events_concurrently_with_another_writer(
    redis_client: redis.Redis, app_name: str
) -> None:
    """Two appenders on one aggregate: the conditioned RPUSH keeps every commit id (their
    versions collide, which is not what this test is about)."""
    truth = iw.write_store(redis_client, app=app_name, aggregates=3, events_per_aggregate=2, seed=1)
    target = truth.aggregates[0].aggregate_id
    rival_truth = copy.deepcopy(truth)
    rival = threading.Thread(
        target=iw.append_events,
        args=(redis_client, rival_truth, 30),
        kwargs={"seed": 5, "aggregate_ids": [target]},
    )
    rival.start()
    mine = iw.append_events(redis_client, truth, 30, seed=6, aggregate_ids=[target])
    rival.join()
    key = truth.aggregates[0].list_key
    stored = [c.decode() for c in rb.lrange(redis_client, key)]
    assert len(stored) == 2 + 60
    theirs = rival_truth.aggregates[0].events[2:]
    assert {e.commit_id for e in mine} | {e.commit_id for e in theirs} == set(stored[2:])
