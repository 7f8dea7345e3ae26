"""queue restore reads its backup file twice, keeping little of it: its memory does not grow with
the file, files whose records are not in the order a drain writes them restore as before, and a
file changed between the readings is noticed, never restored from both."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis_bytes as rb
from helpers import cli_env, queued_message

from esctl import errors, queues
from esctl.backupfile import BackupWriter
from esctl.queues import scripts
from esctl.queues.backup import create_backup, record_complete, record_outcome

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SUB = "Learning.ReportingService.Worker-Test"
TYPE = "ItemScoreCreated"


def message(number: int, pad: int = 0, tag: str = "m", *, noise: bool = False) -> bytes:
    return queued_message(number, tag, event_type=TYPE, pad=pad, noise=noise)


def fill(client: redis.Redis, key: str, consumption_order: list[bytes]) -> None:
    """``key`` holds these values, the first one at the tail (taken next)."""
    client.delete(key)
    for start in range(0, len(consumption_order), 5000):
        client.lpush(key, *consumption_order[start : start + 5000])


def contents(client: redis.Redis, key: str) -> list[bytes]:
    """The list in consumption order (tail first)."""
    return list(reversed(rb.lrange(client, key)))


def drained_file(path: Path, q: queues.QueueRef, values: list[bytes]) -> str:
    """A backup file as a drain of all of ``values`` (consumption order) from ``q``'s dead
    letters writes it, every removal recorded (as a drain removes them: from the head, the
    last records first); its backup id."""
    writer, backup_id = create_backup(
        path, q, "dead", len(values), len(values), enumerate(values), {}, NOW
    )
    for end in range(len(values), 0, -1000):
        record_outcome(writer, list(range(end - 1, max(0, end - 1000) - 1, -1)), [])
    record_complete(writer, len(values), 0)
    writer.close()
    return backup_id


def written(path: Path, frames: list[list[dict[str, Any]]]) -> None:
    writer = BackupWriter(path, option="--to-file", nothing_done="")
    for frame in frames:
        writer.write_frame(frame)
    writer.close()


def header(q: queues.QueueRef, backup_id: str, count: int) -> dict[str, Any]:
    return {
        "format": queues.BACKUP_FORMAT,
        "version": queues.BACKUP_FORMAT_VERSION,
        "backup_id": backup_id,
        "created_at": NOW.isoformat(),
        "esctl_version": "test",
        "subscriber": q.subscriber,
        "env": q.env,
        "event_type": q.event_type,
        "list": "dead",
        "key": q.key("dead"),
        "length": count,
        "selected": count,
        "selection": {},
    }


def record(q: queues.QueueRef, which: str, number: int, position: int, value: bytes) -> Any:
    return {
        "n": number,
        "key": q.key(which),
        "subscriber": q.subscriber,
        "env": q.env,
        "event_type": q.event_type,
        "list": which,
        "position": position,
        "value": value.decode(),
        "encoding": "utf-8",
    }


# --- memory ----------------------------------------------------------------------------------


LAUNCHER = """
import json, resource, subprocess, sys
code = subprocess.call(sys.argv[1:], stdin=subprocess.DEVNULL)
print(json.dumps({"exit": code, "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""
"""Runs the CLI from a small process of its own and prints its peak RSS: a child started
straight from the test process would count the test process's memory (inherited at fork) as
its own peak."""


def launched_restore(url: str, path: Path) -> tuple[int, int, bytes, bytes]:
    """Run `queue restore PATH --yes --json` as a process: its exit code, its peak RSS (KiB),
    and what it wrote to stdout and to stderr."""
    args = ["queue", "restore", str(path), "--yes", "--json", "--redis-url", url]
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, sys.executable, "-m", "esctl", *args],
        stdin=subprocess.DEVNULL, capture_output=True, env=cli_env(), cwd=path.parent,
        check=False, timeout=300,
    )  # fmt: skip
    *output, report = done.stdout.splitlines()
    launcher = orjson.loads(report)
    return int(launcher["exit"]), int(launcher["peak_kib"]), b"\n".join(output), done.stderr


def peak_rss_kib(url: str, path: Path) -> int:
    """Run `queue restore PATH --yes --json` as a process; its peak RSS (KiB)."""
    code, peak_kib, output, errors = launched_restore(url, path)
    assert code == 0, (output, errors)
    assert orjson.loads(output)["failed"] == 0
    return peak_kib


def test_a_restores_memory_does_not_grow_with_its_backup_file(
    redis_client: redis.Redis, redis_test_url: str, env_name: str, tmp_path: Path
) -> None:
    """Ten times the records (50,000 of ~1 KB) take no more memory than 5,000 (within 25%):
    the file is read twice, the second time as the batches are sent, and only a byte per
    record is kept between. Reading it whole (as before) took about 3x."""
    q = queues.QueueRef(SUB, env_name, TYPE)
    small, large = tmp_path / "small.jsonl.zst", tmp_path / "large.jsonl.zst"
    drained_file(small, q, [message(n, 1000, "s") for n in range(5_000)])
    values = [message(n, 1000) for n in range(50_000)]
    drained_file(large, q, values)

    small_kib = peak_rss_kib(redis_test_url, small)
    redis_client.delete(q.key("dead"))
    large_kib = peak_rss_kib(redis_test_url, large)

    assert redis_client.llen(q.key("dead")) == 50_000
    head = rb.as_bytes(redis_client.lindex(q.key("dead"), 0))
    assert head == values[-1]  # the head: taken last
    assert large_kib <= small_kib * 1.25, (small_kib, large_kib)


def prune_like_file(path: Path, count: int) -> None:
    """A backup file that is not a queue backup: ``count`` lines as `migrate prune
    --backup-file` writes them (no header), in frames of 10,000."""
    writer = BackupWriter(path, option="--backup-file", nothing_done="")
    for start in range(0, count, 10_000):
        writer.write_frame(
            {
                "app": "Learning",
                "aggregate_id": f"agg-{n}",
                "list_key": f"Learning:agg-{n}",
                "index": n % 50,
                "list_length": 50,
                "commit_id": f"{n:032x}",
                "hash_key": "Learning:commits",
                "version": 1,
                "value": queued_message(n, "p", event_type=TYPE, pad=300).decode(),
            }
            for n in range(start, min(count, start + 10_000))
        )
    writer.close()


def test_a_file_that_is_not_a_queue_backup_is_refused_without_holding_it(
    redis_test_url: str, tmp_path: Path
) -> None:
    """A large file of JSON lines without a queue backup's header (here as `migrate prune
    --backup-file` writes one) is refused with the message it always had, and ten times the
    lines (200,000 of ~600 bytes) take no more memory than 20,000 (within 25%): what is wrong
    with the file is found reading it as a restore does, not held. Reading it whole to say
    so (as before) took 3.8x (82 MiB, then 317)."""
    small, large = tmp_path / "small.jsonl.zst", tmp_path / "large.jsonl.zst"
    prune_like_file(small, 20_000)
    prune_like_file(large, 200_000)

    peaks = []
    for path in (small, large):
        code, peak_kib, output, errors = launched_restore(redis_test_url, path)
        said = f"{path} is not a complete esctl queue backup"
        hint = "pass a file written by `esctl queue drain --to-file`"
        assert orjson.loads(output) == {
            "error": {"kind": "usage", "message": said, "hint": hint},
            "exit_code": 2,
        }
        assert (code, errors.decode()) == (2, f"error: {said}\n  what to do: {hint}\n")
        peaks.append(peak_kib)
    small_kib, large_kib = peaks
    assert large_kib <= small_kib * 1.25, (small_kib, large_kib)


def test_the_first_reading_keeps_a_byte_per_record_of_a_drains_file(
    env_name: str, tmp_path: Path
) -> None:
    """Outcomes recorded last record first (as a drain removes from the head), of more
    records than a first guess covers (65,536), still take a byte per record (not a dict
    entry), and a drain's numbers and single key take nothing."""
    from esctl.queues.backup import REMOVED, survey_backup  # (here: the module loads without)

    q = queues.QueueRef(SUB, env_name, TYPE)
    path = tmp_path / "d.jsonl.zst"
    count = 70_000
    drained_file(path, q, [message(n) for n in range(count)])
    with path.open("rb") as handle:
        survey = survey_backup(path, handle)
    assert survey.records == count and survey.complete
    assert len(survey.outcomes.dense) == count and not survey.outcomes.sparse
    assert set(survey.outcomes.dense) == {REMOVED}
    assert survey.numbers.values is None and survey.key_ids.values is None
    assert [(k.name, k.first, k.last, k.in_order) for k in survey.keys] == [
        (q.key("dead"), 0, count - 1, True)
    ]


# --- files not in a drain's order --------------------------------------------------------------


def test_records_out_of_order_restore_as_in_order_with_every_outcome(
    redis_client: redis.Redis, env_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same records, outcomes and Redis outcome record, in a drain's order and shuffled:
    both restores put back the same list (each removed message at its place, the gone ones
    closed up, the kept ones left, arrivals newer), with the same summary."""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 7)
    q = queues.QueueRef(SUB, env_name, TYPE)
    values = [message(n) for n in range(40)]
    gone, kept, unmarked = {5, 17}, set(range(35, 40)), set(range(30, 40))
    arrivals = [message(n, tag="new") for n in range(3)]
    records = [record(q, "dead", n, n, v) for n, v in enumerate(values)]
    removed = [n for n in range(40) if n not in gone | unmarked]
    outcome = {"outcome": {"removed": removed, "gone": sorted(gone)}}
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    results = []
    for name, lines in (("ordered", records), ("shuffled", shuffled)):
        path = tmp_path / f"{name}.jsonl.zst"
        backup_id = f"{name}0000"
        written(path, [[header(q, backup_id, 40), *lines], [outcome]])
        # the last batch's outcome, in Redis only: 30-34 removed, 35-39 never (kept)
        last = {"removed": [30, 31, 32, 33, 34], "gone": []}
        redis_client.set(q.drain_outcome_key("dead", backup_id), orjson.dumps(last))
        fill(redis_client, q.key("dead"), [*(values[n] for n in sorted(kept)), *arrivals])
        summary = queues.restore(redis_client, path, queues.RestoreOptions())
        results.append((contents(redis_client, q.key("dead")), summary))
    (ordered, first), (shuffled_list, second) = results
    expected = [v for n, v in enumerate(values) if n not in gone] + arrivals
    assert ordered == shuffled_list == expected
    assert (first.records, first.restored, first.gone, first.kept, first.unknown) == (
        40,
        33,
        2,
        5,
        0,
    )
    assert (second.records, second.restored, second.gone, second.kept) == (40, 33, 2, 5)


def test_interleaved_lists_restore_each_in_turn_to_another_queue(
    redis_client: redis.Redis, env_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose records of two lists alternate (a drain writes one list per file): with
    `--to Q --list published` the records of the list met first come first, each list's by
    position, at the tail; without --list each goes to its own list of Q."""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 4)
    q = queues.QueueRef(SUB, env_name, TYPE)
    other = queues.QueueRef("Other", env_name, TYPE)
    dead = [message(n, tag="d") for n in range(10)]
    processing = [message(n, tag="p") for n in range(10)]
    lines = []
    for n in range(10):  # positions going down, lists alternating
        lines.append(record(q, "dead", 2 * n, 9 - n, dead[9 - n]))
        lines.append(record(q, "processing", 2 * n + 1, 9 - n, processing[9 - n]))
    path = tmp_path / "mixed.jsonl.zst"
    written(
        path, [[header(q, "mixed0000", 20), *lines], [{"outcome": {"removed": list(range(20))}}]]
    )

    fill(redis_client, other.key("published"), [b"waiting"])
    options = queues.RestoreOptions(target=other, target_list="published")
    summary = queues.restore(redis_client, path, options)
    assert summary.restored == 20
    assert contents(redis_client, other.key("published")) == [*dead, *processing, b"waiting"]

    summary = queues.restore(redis_client, path, queues.RestoreOptions(target=other))
    assert [t.key for t in summary.targets] == [other.key("dead"), other.key("processing")]
    assert contents(redis_client, other.key("dead")) == dead
    assert contents(redis_client, other.key("processing")) == processing


def test_the_records_of_a_frame_cut_short_are_not_restored(
    redis_client: redis.Redis, env_name: str, tmp_path: Path
) -> None:
    """Records in a last frame cut short (a crash while appending) are not read, as before,
    while those of the complete frames before it are, whatever frame holds them."""
    q = queues.QueueRef(SUB, env_name, TYPE)
    values = [message(n) for n in range(15)]
    path = tmp_path / "cut.jsonl.zst"
    frames = [
        [header(q, "cut00000", 15), *(record(q, "dead", n, n, values[n]) for n in range(8))],
        [record(q, "dead", n, n, values[n]) for n in range(8, 10)],
        [{"outcome": {"removed": list(range(15))}}],
        [*(record(q, "dead", n, n, values[n]) for n in range(10, 15)), {"outcome": {}}],
    ]
    written(path, frames)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 3)
    summary = queues.restore(redis_client, path, queues.RestoreOptions())
    assert (summary.records, summary.restored) == (10, 10)
    assert contents(redis_client, q.key("dead")) == values[:10]


# --- the file between the two readings ---------------------------------------------------------


@pytest.mark.parametrize("broken", [{"position": None}, {"n": "x"}, {"key": None}])
def test_a_record_lacking_a_field_is_named_and_nothing_is_restored(
    redis_client: redis.Redis, env_name: str, tmp_path: Path, broken: dict[str, Any]
) -> None:
    """A record without its number, list key or position (or with one of another kind) stops
    the restore before anything is sent, naming the record and the fields a record needs."""
    q = queues.QueueRef(SUB, env_name, TYPE)
    values = [message(n) for n in range(3)]
    records = [record(q, "dead", n, n, v) for n, v in enumerate(values)]
    for name, value in broken.items():
        if value is None:
            del records[1][name]
        else:
            records[1][name] = value
    path = tmp_path / "broken.jsonl.zst"
    written(path, [[header(q, "broken0000", 3), *records]])
    with pytest.raises(errors.UsageError) as raised:
        queues.restore(redis_client, path, queues.RestoreOptions())
    assert str(raised.value) == (
        f"{path}: record 2 lacks n, key or position, or holds one that is not of its kind"
    )
    assert raised.value.hint == "pass a file written by `esctl queue drain --to-file`"
    assert redis_client.exists(q.key("dead")) == 0


def test_a_file_renamed_or_deleted_after_it_was_read_first_is_restored_whole(
    redis_client: redis.Redis, env_name: str, tmp_path: Path
) -> None:
    q = queues.QueueRef(SUB, env_name, TYPE)
    values = [message(n) for n in range(2500)]
    path = tmp_path / "d.jsonl.zst"
    drained_file(path, q, values)

    def phase(p: queues.QueuePhase) -> None:
        if p.name == "preparing" and path.exists():
            path.unlink()  # the restore keeps the file it opened

    summary = queues.restore(
        redis_client, path, queues.RestoreOptions(), queues.Hooks(on_phase=phase)
    )
    assert summary.restored == 2500 and not path.exists()
    assert contents(redis_client, q.key("dead")) == values


def test_a_file_rewritten_between_its_readings_is_not_restored_from_both(
    redis_client: redis.Redis, env_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another backup of the same queue copied over the file (the same inode) after it was
    read, before or after the first batch: the restore stops there (restore_failed, the rest
    not restored) instead of sending the other file's messages at this one's places. (After
    the first batch, those of the 32 KiB read in hand go first: they are this file's.)"""
    monkeypatch.setattr(scripts, "MOVE_BATCH", 100)
    q = queues.QueueRef(SUB, env_name, TYPE)
    values = [message(n, 200, noise=True) for n in range(3000)]
    others = [message(n, 200, "other", noise=True) for n in range(3000)]
    path, other = tmp_path / "d.jsonl.zst", tmp_path / "other.jsonl.zst"
    drained_file(other, q, others)

    def overwrite() -> None:
        with path.open("r+b") as f:  # the same file, rewritten: cp other d
            f.write(other.read_bytes())
            f.truncate()

    drained_file(path, q, values)
    calls: list[str] = []

    def phase(p: queues.QueuePhase) -> None:
        if p.name == "preparing" and not calls:
            calls.append("overwritten")
            overwrite()

    summary = queues.restore(
        redis_client, path, queues.RestoreOptions(), queues.Hooks(on_phase=phase)
    )
    assert (summary.restored, summary.failed) == (0, 3000)
    [stopped] = [p for p in summary.problems if p["kind"] == "restore_failed"]
    assert "changed while it was read" in stopped["detail"], stopped
    assert not redis_client.exists(q.key("dead"))

    path.unlink()
    drained_file(path, q, values)

    def progress(p: queues.QueueProgress) -> None:
        if p.moved and not calls[1:]:
            calls.append("overwritten after a batch")
            overwrite()

    summary = queues.restore(
        redis_client, path, queues.RestoreOptions(), queues.Hooks(on_progress=progress)
    )
    assert 0 < summary.restored < 3000 and summary.failed == 3000 - summary.restored
    assert contents(redis_client, q.key("dead")) == values[: summary.restored]
