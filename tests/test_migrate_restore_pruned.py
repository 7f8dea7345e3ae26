"""``migrate restore-pruned``: a prune backup put back gives the store that was pruned, byte for
byte; rerunning it (after a finished, interrupted or killed run) restores nothing twice; other
content in Redis is reported, never overwritten (real Redis and PostgreSQL)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from cluster import LocalCluster, redis_cluster
from helpers import cli_env, run_cli
from independent_writer import write_store
from test_migrate_prune import (
    Scenario,
    field_bytes,
    read_backup,
    redis_contents,
    run_migration,
    scenario,
    without_events,
)

from esctl import layout, prune, redisio
from esctl.backupfile import BackupWriter
from esctl.errors import Interrupted, UsageError
from esctl.locks import AdvisoryLock, prune_lock_name
from esctl.restore_pruned import (
    ALREADY,
    LIST_SCRIPT,
    OVERLAPS,
    PUT_IN_FRONT,
    WRITTEN,
    PrunedAggregate,
    RestorePrunedOptions,
    classify_list,
    pruned_aggregates,
    restore_pruned,
    survey_pruned,
)

__all__ = ["redis_cluster", "scenario"]  # fixtures, imported for pytest


def read_pruned(path: Path, app: str) -> tuple[list[PrunedAggregate], bool]:
    """The aggregates of a prune backup as the restore reads them (both passes), and whether
    its last frame was cut short."""
    survey = survey_pruned(path, app)
    return list(pruned_aggregates(path, app, survey)), survey.cut_short


def pruned(s: Scenario, tmp_path: Path) -> Path:
    """Prune ``s`` with a backup file; the file."""
    path = tmp_path / "pruned.jsonl.zst"
    summary = prune.prune(s.client, s.options(backup_file=str(path)))
    assert summary.aggregates_pruned == len(s.expected) > 5
    assert redis_contents(s.raw) == without_events(s.before, s.expected)
    return path


def options(s: Scenario, **kw: Any) -> RestorePrunedOptions:
    return RestorePrunedOptions(app=s.app, pg_dsn=s.dsn, **kw)


def cli(s: Scenario, *args: str) -> Any:
    return run_cli(
        "migrate", "restore-pruned", *args,
        "--app", s.app, "--redis-url", s.url, "--pg-dsn", s.dsn,
    )  # fmt: skip


def events(s: Scenario) -> int:
    return sum(len(a.events) for a in s.expected)


def test_restore_gives_back_the_pruned_store_byte_for_byte_and_a_rerun_is_a_no_op(
    scenario: Scenario, tmp_path: Path
) -> None:
    s = scenario
    path = pruned(s, tmp_path)

    summary = restore_pruned(s.client, path, options(s))

    assert redis_contents(s.raw) == s.before
    assert summary.aggregates == summary.aggregates_restored == len(s.expected)
    assert summary.events == summary.events_restored == events(s)
    assert summary.payload_fields_written == events(s)
    assert summary.already_present == summary.conflicts == 0
    assert not summary.found_problems

    again = restore_pruned(s.client, path, options(s))

    assert redis_contents(s.raw) == s.before
    assert again.aggregates_restored == again.events_restored == 0
    assert again.payload_fields_written == 0
    assert again.aggregates_already_present == len(s.expected)
    assert again.already_present == events(s)


@pytest.mark.parametrize("step", ["fields", "lists"])
def test_a_restore_interrupted_after_some_batches_is_finished_by_a_rerun(
    scenario: Scenario, tmp_path: Path, step: str
) -> None:
    s = scenario
    path = pruned(s, tmp_path)

    def stop(at: str, batch: int) -> None:
        if (at, batch) == (step, 2):
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as stopped:
        restore_pruned(s.client, path, options(s, batch_events=20), after_step=stop)
    middle = redis_contents(s.raw)
    assert middle != s.before and middle != without_events(s.before, s.expected)

    summary = restore_pruned(s.client, path, options(s, batch_events=20))

    assert redis_contents(s.raw) == s.before  # no commit id twice, no payload missing
    assert summary.already_present > 0 and summary.events_restored > 0
    assert summary.already_present + summary.events_restored == events(s)
    # What the interrupted run said it restored is what the rerun found there.
    assert stopped.value.done == {
        "aggregates_restored": summary.aggregates_already_present,
        "events_restored": summary.already_present,
    }
    assert stopped.value.state == (
        f"this run restored {summary.aggregates_already_present} aggregates "
        f"({summary.already_present} events) before it stopped, each whole"
    )


KILLER = """
import os, signal, sys
from esctl import redisio
from esctl.restore_pruned import RestorePrunedOptions, restore_pruned

def die(step, batch):
    if (step, batch) == ("fields", 3):
        os.kill(os.getpid(), signal.SIGKILL)

url, path, app, dsn = sys.argv[1:]
restore_pruned(redisio.connect(url), path, RestorePrunedOptions(app=app, pg_dsn=dsn,
    batch_events=20), after_step=die)
"""


def test_a_restore_killed_mid_run_then_rerun_gives_the_identical_store(
    scenario: Scenario, tmp_path: Path
) -> None:
    s = scenario
    path = pruned(s, tmp_path)

    killed = subprocess.run(
        [sys.executable, "-c", KILLER, s.url, str(path), s.app, s.dsn],
        env=cli_env({}),
        capture_output=True,
        timeout=60,
    )
    assert killed.returncode == -9, killed.stderr
    assert redis_contents(s.raw) != s.before

    result = cli(s, str(path), "--yes", "--json")

    assert result.returncode == 0, result.stderr
    document = orjson.loads(result.stdout)
    assert document["already_present"] > 0
    assert document["already_present"] + document["events_restored"] == events(s)
    assert redis_contents(s.raw) == s.before
    for a in s.expected:
        ids = s.raw.lrange(a.list_key, 0, -1)
        assert len(ids) == len(set(ids)) == len(a.events)


def test_conflicts_are_reported_and_nothing_is_overwritten(
    scenario: Scenario, tmp_path: Path
) -> None:
    s = scenario
    path = pruned(s, tmp_path)
    differs, overlaps, newer = s.expected[:3]
    # A payload field with another value; a list holding one of the backup's ids after a new
    # one; a list a service started anew with commits the backup does not hold.
    e = differs.events[0]
    s.raw.hset(e.hash_key, e.commit_id, b"another value")
    s.raw.rpush(overlaps.list_key, b"new-commit", overlaps.events[0].commit_id.encode())
    s.raw.rpush(newer.list_key, b"later-1", b"later-2")

    result = cli(s, str(path), "--yes", "--json")

    assert result.returncode == 3, result.stderr
    document = orjson.loads(result.stdout)
    assert document["conflicts"] == 2
    assert document["problems_total"] == 2
    assert document["problem_counts"] == {"commit_list_overlaps": 1, "payload_differs": 1}
    by_kind = {p["kind"]: p for p in document["problems"]}
    assert by_kind["payload_differs"]["key"] == e.hash_key
    assert e.commit_id in by_kind["payload_differs"]["detail"]
    assert by_kind["commit_list_overlaps"]["key"] == overlaps.list_key
    assert document["aggregates_put_in_front"] == 1
    assert document["aggregates_restored"] == len(s.expected) - 2
    # Nothing overwritten: the other value, the overlapping list, as they were.
    assert s.raw.hget(e.hash_key, e.commit_id) == b"another value"
    assert not s.raw.exists(differs.list_key)
    assert s.raw.lrange(overlaps.list_key, 0, -1) == [
        b"new-commit",
        overlaps.events[0].commit_id.encode(),
    ]
    # The backup's commits in front of the new ones, in order.
    assert s.raw.lrange(newer.list_key, 0, -1) == [
        *(x.commit_id.encode() for x in newer.events),
        b"later-1",
        b"later-2",
    ]
    rest = [a for a in s.expected if a not in (differs, overlaps, newer)]
    after = redis_contents(s.raw)
    for a in rest:
        assert after[a.list_key.encode()] == s.before[a.list_key.encode()]

    # A rerun changes nothing more and reports the same.
    again = cli(s, str(path), "--yes", "--json")
    assert again.returncode == 3
    assert orjson.loads(again.stdout)["conflicts"] == 2
    assert redis_contents(s.raw) == after


def test_dry_run_writes_nothing(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    path = pruned(s, tmp_path)

    result = cli(s, str(path), "--dry-run", "--json")

    assert result.returncode == 0, result.stderr
    document = orjson.loads(result.stdout)
    assert document["dry_run"] is True
    assert document["aggregates_restored"] == len(s.expected)
    assert document["events_restored"] == document["payload_fields_written"] == events(s)
    assert document["elapsed_s"] >= 0
    assert redis_contents(s.raw) == without_events(s.before, s.expected)


def test_another_apps_backup_is_refused(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    path = pruned(s, tmp_path)

    result = run_cli(
        "migrate", "restore-pruned", str(path), "--yes",
        "--app", "Other.App", "--redis-url", s.url, "--pg-dsn", s.dsn,
    )  # fmt: skip

    assert result.returncode == 2, result.stderr
    assert s.app in result.stderr and "Other.App" in result.stderr
    assert redis_contents(s.raw) == without_events(s.before, s.expected)

    # The hint quotes the option to copy in backticks, the app quoted for a shell.
    result = run_cli(
        "migrate", "restore-pruned", str(path), "--yes", "--json",
        "--app", "Other.App", "--redis-url", s.url, "--pg-dsn", s.dsn,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    hint = json.loads(result.stdout)["error"]["hint"]
    assert hint == f"pass `--app {shlex.quote(s.app)}` to restore it into that app"


def test_a_queue_drain_file_is_refused(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    path = tmp_path / "dead.jsonl.zst"
    drained = run_cli(
        "queue", "drain", "Other.Service", "EnrollmentCreated", "--list", "dead",
        "--env", "test", "--to-file", str(path), "--yes", "--redis-url", s.url,
    )  # fmt: skip
    assert drained.returncode == 0, drained.stderr
    before = redis_contents(s.raw)

    result = cli(s, str(path), "--yes", "--json")

    assert result.returncode == 2, result.stderr
    error = orjson.loads(result.stdout)["error"]
    assert "queue backup" in error["message"] and "queue restore" in error["hint"]
    assert redis_contents(s.raw) == before


def test_a_held_prune_lock_exits_75_and_without_yes_it_refuses(
    scenario: Scenario, tmp_path: Path
) -> None:
    s = scenario
    path = pruned(s, tmp_path)
    with AdvisoryLock(s.dsn, prune_lock_name("public", s.app), what="test"):
        result = cli(s, str(path), "--yes")
        assert result.returncode == 75, result.stderr
    whole = prune_lock_name("public", s.app)  # a sharded prune running: refused too
    with AdvisoryLock(s.dsn, f"{whole}:0/4", within=whole, what="migrate prune"):
        result = cli(s, str(path), "--yes")
        assert result.returncode == 75, result.stderr
        assert "esctl migrate prune (pid" in result.stderr

    refused = cli(s, str(path))
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert redis_contents(s.raw) == without_events(s.before, s.expected)


def test_cli_summary_and_help(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    path = pruned(s, tmp_path)

    human = cli(s, str(path), "--yes")

    assert human.returncode == 0, human.stderr
    assert "aggregates restored" in human.stdout
    assert redis_contents(s.raw) == s.before
    help_text = run_cli("migrate", "restore-pruned", "--help").stdout
    assert "Example: esctl migrate restore-pruned" in help_text
    assert "migrate restore-pruned" in run_cli("migrate", "prune", "--help").stdout


def test_the_list_script_handles_lists_longer_than_one_push(
    redis_client: Any, redis_test_url: str
) -> None:
    # Commands take at most 1,000 ids from the script (Lua's stack): longer lists in chunks.
    client = redisio.connect(redis_test_url)
    ids = [f"c{i:05}".encode() for i in range(2500)]
    redis_client.rpush("{EventStore:A}:new", b"n1", b"n2")

    replies = redisio.eval_pipelined(
        client,
        LIST_SCRIPT,
        [(1, "{EventStore:A}:gone", *ids), (1, "{EventStore:A}:new", *ids)],
    )

    assert replies == [WRITTEN, PUT_IN_FRONT]
    assert redis_client.lrange("{EventStore:A}:gone", 0, -1) == ids
    assert redis_client.lrange("{EventStore:A}:new", 0, -1) == [*ids, b"n1", b"n2"]
    assert redisio.eval_pipelined(client, LIST_SCRIPT, [(1, "{EventStore:A}:new", *ids)]) == [
        ALREADY
    ]


# --- pure parts ------------------------------------------------------------------------------


def test_classify_list_matches_the_scripts_rules() -> None:
    ids = [b"a", b"b"]
    assert classify_list([], ids) == WRITTEN
    assert classify_list([b"a", b"b"], ids) == ALREADY
    assert classify_list([b"a", b"b", b"c"], ids) == ALREADY
    assert classify_list([b"x", b"y"], ids) == PUT_IN_FRONT
    assert classify_list([b"a"], ids) == OVERLAPS
    assert classify_list([b"x", b"b"], ids) == OVERLAPS


def test_a_cut_short_last_frame_is_ignored(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    path = pruned(s, tmp_path)
    whole, cut_short = read_pruned(path, s.app)
    assert not cut_short
    data = path.read_bytes()
    path.write_bytes(data + data[:20])

    again, cut_short = read_pruned(path, s.app)

    assert cut_short and [a.list_key for a in again] == [a.list_key for a in whole]
    with pytest.raises(UsageError, match="not an esctl prune backup"):
        (tmp_path / "junk").write_bytes(b"junk")
        read_pruned(tmp_path / "junk", s.app)
    assert {field_bytes(d, "app") for d in read_backup(path)} == {s.app.encode()}


# --- memory ----------------------------------------------------------------------------------


def write_backup(path: Path, app: str, aggregates: int, per_aggregate: int = 10) -> int:
    """A prune backup of ``aggregates`` aggregates, 100 per frame, as prune writes it (the
    Redis state to match: none of them present); its number of events."""
    writer = BackupWriter(path, option="--backup-file", nothing_done="")
    prefix = layout.commit_list_prefix(app)
    for first in range(0, aggregates, 100):
        lines = []
        for number in range(first, min(first + 100, aggregates)):
            aggregate_id = f"{number:08d}-0000-4000-8000-000000000000"
            for index in range(per_aggregate):
                commit_id = f"{number:08d}-{index:04d}-4000-8000-000000000000"
                part = layout.partition(commit_id)
                lines.append(
                    {
                        "app": app,
                        "aggregate_id": aggregate_id,
                        "list_key": prefix + aggregate_id,
                        "index": index,
                        "list_length": per_aggregate,
                        "commit_id": commit_id,
                        "hash_key": layout.event_hash_key_for_partition(app, part),
                        "version": 1,
                        "value": f'{{"n":{number},"i":{index},"pad":"{commit_id * 3}"}}',
                    }
                )
        writer.write_frame(lines)
    writer.close()
    return aggregates * per_aggregate


def peak_rss_kib(s: Scenario, path: Path) -> int:
    """Run `migrate restore-pruned PATH` as a child of its own; its peak RSS (KiB)."""
    with (path.parent / f"{path.name}.out").open("w+b") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "esctl", "migrate", "restore-pruned", str(path), "--yes",
             "--json", "--app", s.app, "--redis-url", s.url, "--pg-dsn", s.dsn],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=cli_env(), cwd=path.parent,
        )  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read()
    assert child.returncode == 0, output
    assert orjson.loads(output)["events_restored"] > 0
    return usage.ru_maxrss


def test_the_restores_memory_does_not_grow_with_the_backup(
    redis_client: Any, redis_test_url: str, pg_dsn: str, app_name: str, tmp_path: Path
) -> None:
    s = Scenario.__new__(Scenario)  # no store: the backups' aggregates are all absent
    s.app, s.url, s.dsn = app_name, redis_test_url, pg_dsn
    small, large = tmp_path / "small.jsonl.zst", tmp_path / "large.jsonl.zst"
    assert write_backup(small, app_name, 2_000) == 20_000
    assert write_backup(large, app_name, 20_000) == 200_000

    small_kib = peak_rss_kib(s, small)
    redis_client.flushdb()
    large_kib = peak_rss_kib(s, large)

    assert (
        redis_client.llen(
            layout.commit_list_prefix(app_name) + "00019999-0000-4000-8000-000000000000"
        )
        == 10
    )
    assert large_kib <= small_kib * 1.25, (small_kib, large_kib)


# --- Redis Cluster ---------------------------------------------------------------------------


def test_restore_on_a_cluster_gives_back_the_pruned_store(
    redis_cluster: LocalCluster, pg_dsn: str, app_name: str, tmp_path: Path
) -> None:
    redis_cluster.flushall()
    raw = redis_cluster.client()
    write_store(raw, app=app_name, aggregates=60, seed=5)
    client = redisio.connect(redis_cluster.url, cluster=True)

    def contents() -> dict[bytes, Any]:
        return redis_contents(raw)  # type: ignore[arg-type]

    before = contents()
    run_migration(client, app_name, pg_dsn)
    path = tmp_path / "pruned.jsonl.zst"
    pruned_summary = prune.prune(
        client, prune.PruneOptions(app=app_name, pg_dsn=pg_dsn, backup_file=str(path))
    )
    assert pruned_summary.aggregates_pruned == 60
    assert contents() != before

    summary = restore_pruned(
        client, path, RestorePrunedOptions(app=app_name, pg_dsn=pg_dsn, batch_events=50)
    )
    again = restore_pruned(client, path, RestorePrunedOptions(app=app_name, pg_dsn=pg_dsn))

    assert summary.aggregates_restored == 60 and again.aggregates_already_present == 60
    assert contents() == before
    redis_cluster.flushall()


@pytest.mark.parametrize("dropped", ["index", "value", "app"])
def test_a_line_lacking_a_field_names_the_line_and_the_fields(
    tmp_path: Path, app_name: str, dropped: str
) -> None:
    """A prune backup line without one of its fields (or with one of another kind) stops the
    first reading, before anything is written, naming the line and the fields a line needs."""
    path = tmp_path / "whole.jsonl.zst"
    write_backup(path, app_name, aggregates=1, per_aggregate=3)
    lines = [orjson.loads(line) for line in zstandard.ZstdDecompressor().decompressobj()
             .decompress(path.read_bytes()).splitlines()]  # fmt: skip
    del lines[1][dropped]
    broken = tmp_path / "broken.jsonl.zst"
    written = BackupWriter(broken, option="--backup-file", nothing_done="")
    written.write_frame(lines)
    written.close()
    with pytest.raises(UsageError) as raised:
        survey_pruned(broken, app_name)
    assert str(raised.value) == (
        f"{broken}: line 2 lacks app, list_key, commit_id, hash_key, value, index or "
        "list_length, or holds one that is not of its kind"
    )
    assert raised.value.hint == "pass a file written by `esctl migrate prune --backup-file`"
