"""``inspect integrity`` (esctl.inspect.check_integrity): finds every planted defect and nothing
else, on the demo store and on the independent writer's stores."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections import Counter
from pathlib import Path

import independent_writer as iw
import pytest
import redis
from helpers import cli_env

from esctl import demo, inspect
from esctl.inspect import CommitIndex, IntegrityProgress, check_integrity


def example_ids(report: inspect.IntegrityReport, kind: str) -> set[str | None]:
    return {p["commit_id"] for p in report.examples.get(kind, [])}


def test_demo_store(demo_store: demo.DemoSummary, redis_client: redis.Redis) -> None:
    report = check_integrity(redis_client, demo_store.app)
    assert report.counts == {kind: 1 for kind in demo.DEFECT_KINDS}
    assert not report.ok
    assert report.commit_lists == demo_store.commit_lists
    assert report.commits == demo_store.commit_ids
    assert report.hash_fields + report.legacy_fields == demo_store.hash_fields
    assert report.legacy_fields == demo_store.legacy_events
    assert report.aggregates_with_problems == len(demo_store.defects) - 1  # not the orphan's
    for defect in demo_store.defects:
        [problem] = report.examples[defect.kind]
        assert problem["key"] == defect.key, defect
        if defect.commit_id is not None:
            assert problem["commit_id"] == defect.commit_id
        # Every finding names its aggregate, the one whose commit list points at the value
        # (invalid_compressed included); an orphan has none: no commit list names it.
        expected = None if defect.kind == "orphan" else defect.aggregate_id
        assert problem["aggregate_id"] == expected, defect
    orphan = report.examples["orphan"][0]["detail"]
    assert demo_store.defect("orphan").aggregate_id in orphan and "version" in orphan
    document = report.as_dict()
    assert document["counts"] == report.counts
    assert {p["kind"] for p in document["problems"]} == set(demo.DEFECT_KINDS)
    assert all(
        {"kind", "key", "aggregate_id", "commit_id", "detail"} <= set(p)
        for p in document["problems"]
    )


def test_independent_writer_every_kind(redis_client: redis.Redis, app_name: str) -> None:
    kinds = [*iw.DEFECT_KINDS, "orphan", "version_gap", "missing_payload"]
    truth = iw.write_store(redis_client, app=app_name, aggregates=70, defects=kinds, seed=17)
    report = check_integrity(redis_client, app_name, examples=5)
    assert report.counts == dict(Counter(kinds))
    assert example_ids(report, "orphan") == {o.commit_id for o in truth.orphans}
    assert example_ids(report, "missing_payload") == {
        d.commit_id for d in truth.defects_of("missing_payload")
    }
    assert example_ids(report, "invalid_compressed") == {
        d.commit_id for d in truth.defects_of("invalid_compressed")
    }
    assert example_ids(report, "id_mismatch") == {
        d.commit_id for d in truth.defects_of("id_mismatch")
    }
    gap_keys = {p["key"] for p in report.examples["version_gap"]}
    assert gap_keys == {d.key for d in truth.defects_of("version_gap")}
    assert report.commits == sum(len(ids) for ids in truth.commit_lists.values())
    assert report.commit_lists == len(truth.commit_lists)
    # every defect but the orphans sits on its own commit list
    assert report.aggregates_with_problems == len(kinds) - 2


def test_clean_store(redis_client: redis.Redis, app_name: str) -> None:
    iw.write_store(redis_client, app=app_name, aggregates=30, legacy_share=0.3, seed=4)
    report = check_integrity(redis_client, app_name)
    assert report.ok and report.counts == {} and report.problems == []
    assert report.legacy_fields > 0


def test_misplaced_payloads(redis_client: redis.Redis, app_name: str) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=10, legacy_share=0, seed=6)
    event = truth.aggregates[3].events[-1]
    value = redis_client.hget(event.hash_key, event.commit_id)
    assert value is not None
    wrong = f"EventStore:{app_name}:{(iw.partition(event.commit_id) + 1) % iw.PARTITIONS}"
    redis_client.hdel(event.hash_key, event.commit_id)
    redis_client.hset(wrong, event.commit_id, value)
    stray = "5f2b8c1e-0000-4000-8000-000000000001"
    redis_client.hset(wrong, stray, value)  # misplaced and never committed
    report = check_integrity(redis_client, app_name)
    assert report.counts == {"missing_payload": 1, "misplaced_payload": 2}
    by_commit = {p["commit_id"]: p for p in report.examples["misplaced_payload"]}
    assert by_commit[event.commit_id]["key"] == wrong
    assert "commit list" in by_commit[event.commit_id]["detail"]
    assert "no commit list names it" in by_commit[stray]["detail"]


def test_a_field_name_that_is_not_utf8_is_a_finding_not_a_crash(
    redis_client: redis.Redis, app_name: str
) -> None:
    """Bytes no .NET writer produces, but a store may hold them (a bug, a hand-made key)."""
    truth = iw.write_store(redis_client, app=app_name, aggregates=4, legacy_share=0, seed=2)
    event = truth.aggregates[0].events[0]
    redis_client.hset(event.hash_key, b"\xffnot-utf8", b"{}")
    report = check_integrity(redis_client, app_name)
    assert sum(report.counts.values()) == 1, report.counts
    [(kind, [example])] = report.examples.items()
    assert kind in ("orphan_payload", "misplaced_payload")
    assert example["key"] == event.hash_key
    assert example["commit_id"] == "\\xffnot-utf8"  # printable: the byte as \xNN


def test_a_save_committed_during_the_scan_is_not_an_orphan(
    redis_client: redis.Redis, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=12, defects=["orphan"], seed=8)
    orphan = truth.orphans[0]
    list_key = iw.commit_list_key(app_name, orphan.aggregate_id)

    def commit_it(progress: IntegrityProgress) -> None:
        # The service's RPUSH lands after the commit lists were read, before the recheck.
        if progress.phase == "event hashes" and redis_client.llen(list_key) == len(
            truth.commit_lists[list_key]
        ):
            redis_client.rpush(list_key, orphan.commit_id)

    report = check_integrity(redis_client, app_name, on_progress=commit_it)
    assert report.counts == {}


def test_a_failed_save_cleaned_up_during_the_scan_is_not_an_orphan(
    redis_client: redis.Redis, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=12, defects=["orphan"], seed=8)
    orphan = truth.orphans[0]

    def clean_up(progress: IntegrityProgress) -> None:
        if progress.phase == "recheck":
            redis_client.hdel(orphan.hash_key, orphan.commit_id)

    assert check_integrity(redis_client, app_name, on_progress=clean_up).counts == {}


def turn_into_list(client: redis.Redis, key: str) -> None:
    """Replace ``key`` with a list (a bad manual fix: the hash is gone, a list in its place)."""
    client.delete(key)
    client.rpush(key, b"oops")


def test_keys_of_another_redis_type_are_findings_not_skipped(
    redis_client: redis.Redis, app_name: str
) -> None:
    """Keys named as a commit list, a partition hash or the legacy hash but of another Redis
    type: each a ``wrong_key_type`` finding naming its type, what the library expects and what
    to do; the committed events the library cannot read because of one are missing payloads
    saying why (the check used to skip such keys, or stop on the first WRONGTYPE)."""
    truth = iw.write_store(redis_client, app=app_name, aggregates=12, legacy_share=0.3, seed=9)
    events = [e for a in truth.aggregates for e in a.events]
    legacy = f"EventStore:{app_name}"
    read_there = next(e for e in events if not e.commit_id.isdigit() and e.hash_key is not None)
    assert read_there.hash_key is not None
    used = {iw.partition(e.commit_id) for e in events}
    unused = next(p for p in range(1, iw.PARTITIONS) if p not in used)
    wrong = {
        f"{{EventStore:{app_name}}}:stray-string": ("string", "list"),
        f"{{EventStore:{app_name}}}:stray-hash": ("hash", "list"),
        f"EventStore:{app_name}:{unused}": ("list", "hash"),
        read_there.hash_key: ("list", "hash"),
        legacy: ("string", "hash"),
    }
    redis_client.set(f"{{EventStore:{app_name}}}:stray-string", b"x")
    redis_client.hset(f"{{EventStore:{app_name}}}:stray-hash", b"f", b"v")
    redis_client.rpush(f"EventStore:{app_name}:{unused}", b"x")
    turn_into_list(redis_client, read_there.hash_key)
    redis_client.delete(legacy)
    redis_client.set(legacy, b"x")
    unreadable = {
        e.commit_id: e.hash_key if e.hash_key == read_there.hash_key else legacy
        for e in events
        if e.hash_key in (read_there.hash_key, legacy)
    }
    assert any(k == legacy for k in unreadable.values())

    report = check_integrity(redis_client, app_name, examples=100)
    assert report.counts == {"wrong_key_type": 5, "missing_payload": len(unreadable)}
    assert not report.ok
    found = {p["key"]: p for p in report.examples["wrong_key_type"]}
    assert set(found) == set(wrong)
    for key, (actual, expected) in wrong.items():
        detail = found[key]["detail"]
        assert f"{key} is a {actual}, not a {expected}" in detail and "WRONGTYPE" in detail
        assert "RENAME" in detail and "backup" in detail  # what to do
    assert found[f"{{EventStore:{app_name}}}:stray-string"]["aggregate_id"] == "stray-string"
    missing = {p["commit_id"]: p for p in report.examples["missing_payload"]}
    assert set(missing) == set(unreadable)
    for commit_id, key in unreadable.items():
        detail = missing[commit_id]["detail"]
        assert f"looked up in {key}, a " in detail and "WRONGTYPE" in detail, detail


def test_large_hashes_are_read_with_hscan(
    demo_store: demo.DemoSummary, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inspect.integrity, "HKEYS_LIMIT", 0)
    report = check_integrity(redis_client, demo_store.app, scan_count=3)
    assert report.counts == {kind: 1 for kind in demo.DEFECT_KINDS}
    assert report.hash_fields + report.legacy_fields == demo_store.hash_fields


def test_commit_index_dedupes_and_cleans_up() -> None:
    with CommitIndex() as index:
        directory = index._dir.name
        assert index.new_keys(["a", "b", "a"]) == ["a", "b"]
        assert index.new_keys(["b", "c"]) == ["c"]
        index.add_commits([("c1", "agg1"), ("c2", "agg2"), ("c1", "agg1")])
        assert index.committed(["c1", "c3", "c2"]) == {"c1": "agg1", "c2": "agg2"}
        many = [f"x{i}" for i in range(2000)]
        index.add_commits((c, "agg") for c in many)
        assert len(index.committed([*many, "nope"])) == 2000
        index.add_finding("orphan", "k", "c9", "")
        index.add_finding("orphan", "k", "c9", "")  # HSCAN may return a field twice
        assert index.finding_counts() == {"orphan": 1}
        assert os.path.isdir(directory)
    assert not os.path.exists(directory)


def test_a_full_temporary_folder_stops_the_check_saying_so(
    redis_client: redis.Redis, redis_test_url: str, app_name: str, tmp_path: Path
) -> None:
    """The index of commit ids is an SQLite file in TMPDIR: when it cannot grow (a full disk;
    here a file size limit), the check exits 1 naming the folder and what to do (before: an
    "unexpected OperationalError ... this is a bug in esctl")."""
    iw.write_store(redis_client, app=app_name, aggregates=400, events_per_aggregate=3, seed=4)
    folder = tmp_path / "tmp"
    folder.mkdir()

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))

    result = subprocess.run(
        [sys.executable, "-m", "esctl", "inspect", "integrity", "--app", app_name,
         "--redis-url", redis_test_url, "--json"],
        env=cli_env({"TMPDIR": str(folder)}), capture_output=True, text=True, timeout=120,
        preexec_fn=limited, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "error", error
    assert error["message"].startswith(
        f"cannot write the check's index of commit ids to a temporary file in {folder}: "
    ), error
    assert error["message"].endswith("; the check stopped (it changes nothing)")
    assert error["hint"].startswith(f"free space in {folder}, or point TMPDIR at a folder")
