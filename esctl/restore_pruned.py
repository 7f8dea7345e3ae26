"""``migrate restore-pruned``: put the events a ``migrate prune --backup-file`` deleted back into
Redis (a rollback after a cut-over), safe to rerun at any point, a kill -9 included.

Per aggregate the payload fields come first, then the commit list, so an aggregate is never
visible with a payload missing. Nothing in Redis is ever overwritten: a field or a list that
holds other content than the backup's is a conflict, reported and left as it is.
"""

from __future__ import annotations

import base64
import contextlib
import shlex
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from esctl import layout, pg, redisio
from esctl.backupfile import FIELD_ERRORS, lacking, read_lines
from esctl.documents import document
from esctl.errors import EsctlError, Interrupted, ServerError, UsageError
from esctl.locks import restore_pruned_lock
from esctl.problems import ProblemTally

LIST_SCRIPT = """
-- KEYS[1]: a commit list. ARGV: the backup's commit ids, oldest first.
-- 1: the list did not exist and now holds them; 0: it already starts with exactly them;
-- 2: it held other commit ids only, and they are now put in front of those, in order;
-- -1: it holds some of them, not as its first ones (a conflict); -2: it is not a list.
-- Nothing is changed for 0, -1 and -2.
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then
  for i = 1, #ARGV, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  return 1
end
if t ~= 'list' then return -2 end
local n = #ARGV
if redis.call('LLEN', KEYS[1]) >= n then
  local head = redis.call('LRANGE', KEYS[1], 0, n - 1)
  local same = true
  for i = 1, n do
    if head[i] ~= ARGV[i] then same = false; break end
  end
  if same then return 0 end
end
local mine = {}
for i = 1, n do mine[ARGV[i]] = true end
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if mine[id] then return -1 end
end
-- LPUSH puts each argument at the head in turn: the last one pushed comes first.
for i = n, 1, -1000 do
  local chunk = {}
  for j = i, math.max(i - 999, 1), -1 do chunk[#chunk + 1] = ARGV[j] end
  redis.call('LPUSH', KEYS[1], unpack(chunk))
end
return 2
"""

# The script's answers, and what classify_list (its dry-run twin) returns.
WRITTEN, ALREADY, PUT_IN_FRONT, OVERLAPS, NOT_A_LIST = 1, 0, 2, -1, -2

WRITTEN_BY = "esctl migrate prune --backup-file"

BATCH_EVENTS = 5000
"""Events per batch: one pipelined round of reads, of field writes and of list scripts."""


@dataclass(frozen=True)
class RestorePrunedOptions(pg.PgTarget):
    dry_run: bool = False
    batch_events: int = BATCH_EVENTS


@dataclass
class PrunedAggregate:
    """One aggregate of a prune backup: its commit list and its payload fields, as bytes."""

    list_key: bytes
    length: int
    """The list's length when prune read it (the commits the file must hold)."""
    commit_ids: list[bytes]
    fields: list[tuple[bytes, bytes, bytes]]
    """``(hash key, commit id, value)`` per event, in list order."""


@dataclass
class RestorePrunedSummary:
    dry_run: bool
    backup_file: str
    aggregates: int = 0
    """Aggregates in the backup file."""
    events: int = 0
    aggregates_restored: int = 0
    """Commit lists written (in a dry run: that would be), those put in front included."""
    aggregates_put_in_front: int = 0
    """Lists a service had started anew after the prune: the backup's ids put before theirs."""
    aggregates_already_present: int = 0
    events_restored: int = 0
    already_present: int = 0
    """Events already back in Redis (restored by an earlier run, or never deleted)."""
    payload_fields_written: int = 0
    conflicts: int = 0
    """Aggregates left as they are: Redis holds other content for them (see problems)."""
    backup_cut_short: bool = False
    """The file's last frame is incomplete (a prune killed while writing it, before it deleted
    what the frame held): that frame is ignored."""
    tally: ProblemTally = field(default_factory=ProblemTally)
    elapsed_s: float = 0.0
    lists_in_flight: int = 0
    """Commit lists whose restore was sent and not yet answered (what an interrupted run may
    have restored beyond its counts)."""

    @property
    def found_problems(self) -> bool:
        return self.conflicts > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            **document(
                self,
                "dry_run backup_file aggregates events aggregates_restored"
                " aggregates_put_in_front aggregates_already_present events_restored"
                " already_present payload_fields_written conflicts backup_cut_short",
            ),
            **self.tally.as_dict(),
            "elapsed_s": round(self.elapsed_s, 3),
        }


# --- the backup file -------------------------------------------------------------------------


def _bytes(line: dict[str, Any], name: str) -> bytes:
    if name in line:
        return str(line[name]).encode("utf-8")
    return base64.b64decode(line[name + "_b64"], validate=True)


@dataclass
class BackupSurvey:
    """What the first pass over a backup keeps: per aggregate its list's length, not its
    events."""

    lengths: dict[bytes, int] = field(default_factory=dict)
    """The length of each aggregate's last copy, in the file, whole."""
    open: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    """``(length, lines seen)`` of copies not whole at the end of a frame."""
    copies: dict[bytes, int] = field(default_factory=dict)
    """Aggregates the file holds more than once (index 0 again): their number of copies."""
    frames: int = 0
    """Complete frames."""
    cut_short: bool = False

    def check(
        self,
        frame: dict[bytes, list[int]],
        key: bytes,
        index: int,
        length: int,
        source: Path,
        number: int,
    ) -> None:
        """Count line ``number`` in ``frame`` (``[length, seen, copies]`` per aggregate of
        the frame); UsageError when it is not the next commit of its aggregate."""
        state = frame.get(key)
        if state is None:
            before = self.open.get(key)
            if before is None and key in self.lengths:
                before = (self.lengths[key], self.lengths[key])
            state = frame[key] = [*(before or (length, 0)), 0]
        if index == 0:  # index 0 again: a later, longer copy wins
            state[0], state[1] = length, 0
            state[2] += 1
        if index != state[1] or length != state[0]:
            raise _out_of_order(source, number, index, key, state[1])
        state[1] += 1

    def add(self, frame: dict[bytes, list[int]]) -> None:
        """Count a whole frame's aggregates."""
        for key, (length, seen, zeros) in frame.items():
            copies = self.copies.get(key, int(key in self.lengths or key in self.open)) + zeros
            if copies > 1:
                self.copies[key] = copies
            if seen == length:
                self.lengths[key] = length
                self.open.pop(key, None)
            else:
                self.open[key] = (length, seen)
                self.lengths.pop(key, None)


def _parse(
    source: Path, app: str, raw: bytes, number: int
) -> tuple[bytes, int, int, bytes, bytes, bytes]:
    """``(list key, index, list length, hash key, commit id, value)`` of line ``number``;
    UsageError for a line that is not JSON, of a queue backup, of another app, or with keys
    that are not of ``app``'s event store."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{source} holds a line that is not JSON: {exc}") from None
    if not isinstance(line, dict) or "format" in line or "subscriber" in line:
        raise UsageError(
            f"{source} is a queue backup (`esctl queue drain --to-file`), not a prune backup",
            hint=f"restore it with `esctl queue restore {source}`",
        )
    try:
        their_app = _bytes(line, "app")
        list_key = _bytes(line, "list_key")
        commit_id = _bytes(line, "commit_id")
        hash_key = _bytes(line, "hash_key")
        value = _bytes(line, "value")
        index = int(line["index"])
        length = int(line["list_length"])
    except FIELD_ERRORS:
        fields = "app, list_key, commit_id, hash_key, value, index or list_length"
        raise lacking(source, f"line {number}", fields, written_by=WRITTEN_BY) from None
    if their_app != app.encode("utf-8", "surrogateescape"):
        raise UsageError(
            f"{source} holds events of app {redisio.key_str(their_app)!r}, not of --app "
            f"{app!r}; nothing was restored",
            hint=f"pass `--app {shlex.quote(redisio.key_str(their_app))}` to restore it into that app",
        )
    partitioned = redisio.key_bytes(
        layout.event_hash_key_for_partition(app, layout.partition(redisio.key_str(commit_id)))
    )
    legacy = redisio.key_bytes(layout.legacy_event_hash_key(app))
    if not list_key.startswith(redisio.key_bytes(layout.commit_list_prefix(app))) or (
        hash_key not in (partitioned, legacy)
    ):
        raise UsageError(
            f"{source} line {number}: {redisio.key_str(list_key)} / "
            f"{redisio.key_str(hash_key)} are not keys of app {app!r}'s event store",
            hint="the file was altered; nothing was restored",
        )
    return list_key, index, length, hash_key, commit_id, value


def _out_of_order(source: Path, number: int, index: int, key: bytes, seen: int) -> UsageError:
    return UsageError(
        f"{source} line {number}: commit {index} of {redisio.key_str(key)} "
        f"comes after {seen} of its commits",
        hint="the file was altered; nothing was restored",
    )


def survey_pruned(path: str | Path, app: str) -> BackupSurvey:
    """The first pass: every check of the file, before anything is written, keeping per
    aggregate only its list's length. A frame's lines count only once the frame is whole: a
    cut-short last frame is ignored, errors in it included. UsageError for a queue drain file,
    another app's backup, a file that is not a prune backup or not as prune wrote it;
    NotFound when it cannot be read."""
    source = Path(path)
    survey = BackupSurvey()
    frame: dict[bytes, list[int]] = {}  # this frame's aggregates: [length, seen, copies]
    failed: UsageError | None = None
    number = 0
    for item in read_lines(source, kind="an esctl prune backup", written_by=WRITTEN_BY):
        if item is None:
            survey.cut_short = True
            break
        if isinstance(item, int):
            if failed is not None:
                raise failed
            survey.frames = item
            survey.add(frame)
            frame.clear()
            continue
        if failed is not None:
            continue  # raised at the frame's end, unless the frame is cut short
        number += 1
        try:
            survey.check(frame, *_parse(source, app, item, number)[:3], source, number)
        except UsageError as exc:
            failed = exc
    if survey.open:
        key = next(iter(survey.open))
        raise UsageError(
            f"{source}: {redisio.key_str(key)} lacks commits the file should "
            "hold (it is not as prune wrote it); nothing was restored",
            hint="pass a file written by `esctl migrate prune --backup-file`",
        )
    return survey


def pruned_aggregates(
    path: str | Path, app: str, survey: BackupSurvey
) -> Iterator[PrunedAggregate]:
    """The second pass: each aggregate of the file (its last copy) as soon as its last line is
    read, from the frames ``survey`` found whole. Holds only the aggregates being read."""
    source = Path(path)
    copies = dict(survey.copies)
    building: dict[bytes, PrunedAggregate] = {}
    number = 0
    frames = 0
    for item in (
        read_lines(source, kind="an esctl prune backup", written_by=WRITTEN_BY)
        if survey.frames
        else ()
    ):
        if item is None:
            break
        if isinstance(item, int):
            frames = item
            if frames == survey.frames:
                break
            continue
        number += 1
        key, index, length, hash_key, commit_id, value = _parse(source, app, item, number)
        if index == 0:
            building.pop(key, None)
            if key in copies:
                copies[key] -= 1
                if copies[key]:
                    continue  # a later copy wins
            building[key] = PrunedAggregate(key, length, [], [])
        aggregate = building.get(key)
        if aggregate is None:
            continue  # a line of an earlier copy
        if index != len(aggregate.commit_ids) or length != aggregate.length:
            raise _out_of_order(source, number, index, key, len(aggregate.commit_ids))
        aggregate.commit_ids.append(commit_id)
        aggregate.fields.append((hash_key, commit_id, value))
        if len(aggregate.commit_ids) == aggregate.length:
            yield building.pop(key)
    if frames != survey.frames or building:
        raise UsageError(
            f"{source} changed while it was read (it is not as the first pass found it)",
            hint="rerun with the file as prune wrote it",
        )


# --- Redis -----------------------------------------------------------------------------------


def classify_list(existing: list[bytes] | None, commit_ids: list[bytes]) -> int:
    """What :data:`LIST_SCRIPT` does with a list holding ``existing`` (None: not a list)."""
    if existing is None:
        return NOT_A_LIST
    if not existing:
        return WRITTEN
    if existing[: len(commit_ids)] == commit_ids:
        return ALREADY
    mine = set(commit_ids)
    return OVERLAPS if any(c in mine for c in existing) else PUT_IN_FRONT


def _replies(client: redisio.RedisClient, commands: list[tuple[Any, ...]], what: str) -> list[Any]:
    replies = redisio.pipelined(client, commands)
    for command, reply in zip(commands, replies, strict=True):
        if isinstance(reply, Exception) and not str(reply).startswith("WRONGTYPE"):
            raise ServerError(
                f"{what} {redisio.key_str(command[1])} failed: {reply}",
                hint=redisio.error_hint(reply),
            )
    return replies


def restore_pruned(
    client: redisio.RedisClient,
    path: str | Path,
    opts: RestorePrunedOptions,
    *,
    after_step: Callable[[str, int], None] | None = None,
) -> RestorePrunedSummary:
    """Put the events of a prune backup back: for each aggregate the payload fields that are
    absent (HSETNX; a field holding the same value is already there, another value a conflict),
    then, unless a field conflicted, its commit list by :data:`LIST_SCRIPT` (atomic, one key).
    Rerunning, after any failure or kill, restores nothing twice and overwrites nothing.

    Holds the prune lock of the app and schema (LockHeld while a prune or another restore runs)
    unless ``dry_run``, which only reads. ``after_step(step, batch)`` is called after each
    batch's ``"fields"`` and ``"lists"`` (for tests of an interrupted run)."""
    started = time.monotonic()
    summary = RestorePrunedSummary(dry_run=opts.dry_run, backup_file=str(path))
    # Two passes over the file, each holding little of it: all checks first (nothing is
    # written when one fails), then the restore, batch by batch as the file is read.
    survey = survey_pruned(path, opts.app)
    summary.backup_cut_short = survey.cut_short
    summary.aggregates = len(survey.lengths)
    summary.events = sum(survey.lengths.values())
    aggregates = pruned_aggregates(path, opts.app, survey)
    lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if not opts.dry_run:
        lock = restore_pruned_lock(opts.pg_dsn, opts.pg_schema, opts.app)
    with lock:
        try:
            for number, batch in enumerate(_batches(aggregates, opts.batch_events), 1):
                _restore_batch(client, batch, opts.dry_run, summary, number, after_step)
        except EsctlError as exc:
            if not opts.dry_run:
                exc.add(_done(summary))
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM
            if opts.dry_run or isinstance(exc, Interrupted):
                raise
            in_flight = summary.lists_in_flight
            raise Interrupted(
                f"this run restored {summary.aggregates_restored:,} aggregates "
                f"({summary.events_restored:,} events) before it stopped, each whole"
                + (
                    f"; the {in_flight:,} commit lists sent last may have been restored too "
                    "(each whole or not at all)"
                    if in_flight
                    else ""
                ),
                hint="rerun the same command to finish (nothing is restored twice)",
                done={
                    "aggregates_restored": summary.aggregates_restored,
                    "events_restored": summary.events_restored,
                },
            ) from exc
    summary.elapsed_s = time.monotonic() - started
    return summary


def _batches(aggregates: Iterable[PrunedAggregate], size: int) -> Iterator[list[PrunedAggregate]]:
    batch: list[PrunedAggregate] = []
    events = 0
    for aggregate in aggregates:
        batch.append(aggregate)
        events += len(aggregate.commit_ids)
        if events >= size:
            yield batch
            batch, events = [], 0
    if batch:
        yield batch


def _restore_batch(
    client: redisio.RedisClient,
    batch: list[PrunedAggregate],
    dry_run: bool,
    summary: RestorePrunedSummary,
    number: int,
    after_step: Callable[[str, int], None] | None,
) -> None:
    fields = [f for a in batch for f in a.fields]
    current = _replies(client, [("HGET", h, c) for h, c, _ in fields], "HGET")
    found = dict(zip(((h, c) for h, c, _ in fields), current, strict=True))
    clear: list[PrunedAggregate] = []
    for aggregate in batch:
        if _field_conflict(aggregate, found, summary):
            continue
        clear.append(aggregate)
    absent = [(h, c, v) for a in clear for h, c, v in a.fields if found[h, c] is None]
    if not dry_run and absent:
        replies = _replies(client, [("HSETNX", h, c, v) for h, c, v in absent], "HSETNX")
        summary.payload_fields_written += sum(1 for r in replies if r == 1)
        raced = [(h, c, v) for (h, c, v), r in zip(absent, replies, strict=True) if r != 1]
        if raced:  # written by someone else since read: compare what is there now
            now = _replies(client, [("HGET", h, c) for h, c, _ in raced], "HGET")
            found.update({(h, c): r for (h, c, _), r in zip(raced, now, strict=True)})
            clear = [a for a in clear if not _field_conflict(a, found, summary)]
    elif dry_run:
        summary.payload_fields_written += len(absent)
    if after_step is not None:
        after_step("fields", number)
    if clear:
        _restore_lists(client, clear, dry_run, summary)
    if after_step is not None:
        after_step("lists", number)


def _restore_lists(
    client: redisio.RedisClient,
    clear: list[PrunedAggregate],
    dry_run: bool,
    summary: RestorePrunedSummary,
) -> None:
    """The commit lists of aggregates whose payload fields are all in place."""
    if dry_run:
        lists = _replies(client, [("LRANGE", a.list_key, 0, -1) for a in clear], "LRANGE")
        outcomes = [
            classify_list(None if isinstance(r, Exception) else list(r), a.commit_ids)
            for a, r in zip(clear, lists, strict=True)
        ]
    else:
        summary.lists_in_flight = len(clear)
        outcomes = redisio.eval_pipelined(
            client, LIST_SCRIPT, [(1, a.list_key, *a.commit_ids) for a in clear]
        )
        summary.lists_in_flight = 0
    for aggregate, outcome in zip(clear, outcomes, strict=True):
        if isinstance(outcome, Exception):
            raise ServerError(
                f"the restore of {redisio.key_str(aggregate.list_key)} failed: {outcome}"
            )
        _count_list(aggregate, int(outcome), summary)


def _field_conflict(
    aggregate: PrunedAggregate,
    found: dict[tuple[bytes, bytes], Any],
    summary: RestorePrunedSummary,
) -> bool:
    """Report the first field of ``aggregate`` that Redis holds with another value (or as
    another type). True when there is one: the aggregate is then left as it is."""
    for hash_key, commit_id, value in aggregate.fields:
        there = found[hash_key, commit_id]
        if there is None or (not isinstance(there, Exception) and bytes(there) == value):
            continue
        summary.conflicts += 1
        what = (
            f"{redisio.key_str(hash_key)} is not a hash"
            if isinstance(there, Exception)
            else f"Redis holds another value ({len(there):,} bytes) than the backup "
            f"({len(value):,} bytes) for commit {redisio.key_str(commit_id)}"
        )
        summary.tally.add(
            {
                "kind": "payload_differs",
                "key": redisio.key_str(hash_key),
                "detail": f"{what}; left as it is, and the commit list "
                f"{redisio.key_str(aggregate.list_key)} was not restored",
            }
        )
        return True
    return False


def _count_list(aggregate: PrunedAggregate, outcome: int, summary: RestorePrunedSummary) -> None:
    events = len(aggregate.commit_ids)
    key = redisio.key_str(aggregate.list_key)
    if outcome in (WRITTEN, PUT_IN_FRONT):
        summary.aggregates_restored += 1
        summary.events_restored += events
        summary.aggregates_put_in_front += outcome == PUT_IN_FRONT
    elif outcome == ALREADY:
        summary.aggregates_already_present += 1
        summary.already_present += events
    else:
        summary.conflicts += 1
        detail = (
            f"{key} is not a list; left as it is"
            if outcome == NOT_A_LIST
            else f"the list holds some of the backup's {events:,} commit ids but does not "
            "start with them; left as it is (compare it with the backup by hand)"
        )
        kind = "commit_list_not_a_list" if outcome == NOT_A_LIST else "commit_list_overlaps"
        summary.tally.add({"kind": kind, "key": key, "detail": detail})


def _done(summary: RestorePrunedSummary) -> str:
    """What a restore that stops on an error had done (every aggregate it counted is whole)."""
    return (
        f"this run restored {summary.aggregates_restored:,} aggregates "
        f"({summary.events_restored:,} events) before it stopped; rerun it to finish "
        "(nothing is restored twice)"
    )
