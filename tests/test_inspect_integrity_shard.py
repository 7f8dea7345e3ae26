"""``inspect integrity --shard I/N``: the N shards' reports together are exactly the unsharded
report (every finding in exactly one shard), aggregate findings follow the aggregate id's shard,
hash-field findings the partition hash's."""

from __future__ import annotations

import json
import zlib
from collections import Counter
from typing import Any

import independent_writer as iw
import pytest
import redis
from helpers import run_cli

from esctl.inspect import IntegrityReport, check_integrity, owns_commit_id
from esctl.shard import Shard

STRAY = "5f2b8c1e-0000-4000-8000-000000000002"
"""A misplaced payload no commit list names."""
COUNTED = ("commit_lists", "commits", "event_hashes", "hash_fields", "legacy_fields")


def findings(report: IntegrityReport | dict[str, Any]) -> list[tuple[str, str, str | None, str]]:
    problems = report.problems if isinstance(report, IntegrityReport) else report["problems"]
    return [(p["kind"], p["key"], p["commit_id"], p["detail"]) for p in problems]


def misplace(client: redis.Redis, app: str, event: iw.TruthEvent, to_partition: int) -> str:
    """Move ``event``'s payload into partition hash ``to_partition`` (a misplaced payload; its
    commit list still names it, so it is also a missing payload). Returns the hash key."""
    value = client.hget(event.hash_key, event.commit_id)
    assert value is not None
    wrong = f"EventStore:{app}:{to_partition}"
    client.hdel(event.hash_key, event.commit_id)
    client.hset(wrong, event.commit_id, value)
    return wrong


@pytest.fixture
def defective_store(redis_client: redis.Redis, app_name: str) -> iw.GroundTruth:
    """Every kind of defect the writer plants (orphans three times), legacy fields, and
    misplaced payloads whose commit ids are of another shard's partitions than the hash's."""
    kinds = [*iw.DEFECT_KINDS, "orphan", "orphan", "version_gap", "missing_payload"]
    truth = iw.write_store(
        redis_client, app=app_name, aggregates=80, defects=kinds, legacy_share=0.2, seed=23
    )
    partitioned = [
        e
        for a in truth.clean_aggregates()
        for e in a.events
        if not e.commit_id.isdigit() and e.hash_key is not None
    ]
    # Two committed, misplaced into a hash of the next shard (mod 4); one never committed.
    for event in partitioned[:2]:
        misplace(redis_client, app_name, event, (iw.partition(event.commit_id) + 1) % iw.PARTITIONS)
    redis_client.hset(
        f"EventStore:{app_name}:{(iw.partition(STRAY) + 3) % iw.PARTITIONS}", STRAY, b"{}"
    )
    # Keys of another Redis type: commit lists' names (aggregate ids of several shards), a
    # partition hash no commit names, and one that committed events are looked up in.
    for name in ("stray-1", "stray-2", "stray-3", "stray-4"):
        redis_client.set(f"{{EventStore:{app_name}}}:{name}", b"x")
    used = {iw.partition(e.commit_id) for a in truth.aggregates for e in a.events}
    unused = [p for p in range(1, iw.PARTITIONS) if p not in used][:4]
    for part in unused:
        redis_client.rpush(f"EventStore:{app_name}:{part}", b"x")
    read_there = partitioned[5].hash_key
    assert read_there is not None
    redis_client.delete(read_there)
    redis_client.rpush(read_there, b"x")
    return truth


def test_four_shards_add_up_to_the_unsharded_report(
    defective_store: iw.GroundTruth, redis_client: redis.Redis, app_name: str
) -> None:
    whole = check_integrity(redis_client, app_name, examples=1000)
    assert whole.counts["orphan"] == 3 and whole.counts["misplaced_payload"] == 3
    assert whole.counts["wrong_key_type"] == 9
    assert sum(whole.counts.values()) == len(whole.problems)  # every finding is listed
    shards = [
        check_integrity(redis_client, app_name, examples=1000, shard=Shard(i, 4)) for i in range(4)
    ]
    union = [f for s in shards for f in findings(s)]
    assert Counter(union) == Counter(findings(whole))  # each finding once, details equal
    assert sum((Counter(s.counts) for s in shards), Counter()) == Counter(whole.counts)
    for name in COUNTED:
        assert sum(getattr(s, name) for s in shards) == getattr(whole, name), name
    assert sum(s.aggregates_with_problems for s in shards) == whole.aggregates_with_problems
    assert sum(1 for s in shards if s.counts) >= 2  # the findings really are spread
    assert [s.as_dict()["shard"] for s in shards] == ["0/4", "1/4", "2/4", "3/4"]
    assert whole.as_dict()["shard"] == "0/1"


def test_findings_go_to_the_aggregate_or_the_hash_they_are_about(
    defective_store: iw.GroundTruth, redis_client: redis.Redis, app_name: str
) -> None:
    prefix = f"EventStore:{app_name}:"
    for i in range(4):
        shard = Shard(i, 4)
        report = check_integrity(redis_client, app_name, examples=1000, shard=shard)
        for kind, key, commit_id, detail in findings(report):
            if kind in ("orphan", "misplaced_payload") or (
                kind == "wrong_key_type" and key.startswith(prefix)
            ):
                partition = key[len(prefix) :]
                if partition.isdigit():
                    assert int(partition) % 4 == i, (kind, key)
                else:
                    assert commit_id is not None and owns_commit_id(shard, commit_id)
            elif key.startswith("{EventStore:"):
                aggregate_id = key[len(f"{{EventStore:{app_name}}}:") :]
                assert zlib.crc32(aggregate_id.encode()) % 4 == i, (kind, key)
            if kind == "misplaced_payload":
                # the commit ids are of another shard's partitions: named all the same
                named = commit_id != STRAY
                assert ("no commit list names it" in detail) != named, detail
                assert (f"commit list {{EventStore:{app_name}}}:" in detail) == named


def test_each_shard_reads_only_its_own_partition_hashes(
    defective_store: iw.GroundTruth, redis_client: redis.Redis, app_name: str
) -> None:
    whole = check_integrity(redis_client, app_name)
    shard = check_integrity(redis_client, app_name, shard=Shard(2, 4))
    assert 0 < shard.event_hashes < whole.event_hashes
    assert 0 < shard.commit_lists < whole.commit_lists


def test_cli_union_of_shards_equals_unsharded(
    defective_store: iw.GroundTruth, redis_test_url: str, app_name: str
) -> None:
    common = ["inspect", "integrity", "--redis-url", redis_test_url, "--app", app_name]
    common += ["--json", "--examples", "1000"]
    whole = run_cli(*common)
    assert whole.returncode == 3, whole.stderr
    whole_doc = json.loads(whole.stdout)
    docs = []
    for i in range(4):
        result = run_cli(*common, "--shard", f"{i}/4")
        assert result.returncode in (0, 3), result.stderr
        docs.append(json.loads(result.stdout))
        assert docs[-1]["shard"] == f"{i}/4"
        assert (result.returncode == 3) == (not docs[-1]["ok"])
    assert Counter(f for d in docs for f in findings(d)) == Counter(findings(whole_doc))
    counts: Counter[str] = Counter()
    for d in docs:
        counts.update(d["counts"])
    assert counts == Counter(whole_doc["counts"])
    for name in COUNTED:
        assert sum(d[name] for d in docs) == whole_doc[name], name


@pytest.mark.parametrize("spec", ["4/4", "1/0", "a/4", "1-4"])
def test_cli_bad_shard_is_a_usage_error(redis_test_url: str, app_name: str, spec: str) -> None:
    result = run_cli(
        "inspect", "integrity", "--redis-url", redis_test_url, "--app", app_name, "--shard", spec
    )
    assert result.returncode == 2, result.stderr
    assert "--shard" in result.stderr


def test_owns_commit_id_matches_partition_hash_shard() -> None:
    for n in range(200):
        commit_id = f"00000000-0000-4000-8000-{n:012d}"
        owners = [i for i in range(3) if owns_commit_id(Shard(i, 3), commit_id)]
        assert owners == [iw.partition(commit_id) % 3]
    assert owns_commit_id(Shard(), "anything")
