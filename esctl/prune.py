"""``migrate prune``: free Redis memory by deleting events that PostgreSQL holds identically.

Only aggregates that verify identical right now are deleted, each behind an atomic guard on its
commit list, journalled in ``esctl.prune_pending`` and, with a backup file, backed up first;
queues and snapshots are never touched. Run it only once services read from PostgreSQL.
Design: docs/design/prune.md.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from esctl import layout, pg, redisio, units
from esctl.backupfile import BackupWriter
from esctl.config import redact
from esctl.documents import document
from esctl.errors import ConfigError, EsctlError, Interrupted, Refused, ServerError, UsageError
from esctl.locks import prune_lock
from esctl.pgevents import PgEvent, other_transforms, pg_page, transforms_words
from esctl.shard import Shard
from esctl.streams import Stream, checked_as_migrate, read_streams
from esctl.transforms import Rules, load_rules
from esctl.verify import (
    VerifyOptions,
    VerifySummary,
    compare_stream,
    compare_transformed,
)

GUARD_SCRIPT = """
-- KEYS[1]: a commit list. ARGV: the verified length, first and last commit id.
-- Deletes the list only if it is still exactly what was verified; 1 if deleted, else 0.
if redis.acl_check_cmd and not redis.acl_check_cmd('DEL', KEYS[1]) then
  return redis.error_reply('NOPERM this user has no permissions to run the DEL command on '
    .. KEYS[1] .. '; nothing was deleted')
end
if redis.call('LLEN', KEYS[1]) == tonumber(ARGV[1])
    and redis.call('LINDEX', KEYS[1], 0) == ARGV[2]
    and redis.call('LINDEX', KEYS[1], -1) == ARGV[3] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

HDEL_CHUNK = 1000
"""Fields per HDEL command."""
GUARDS_PER_ROUND_TRIP = redisio.PIPELINE_CHUNK
"""Guarded deletes sent in one round trip; their replies are read (and a failed one stops the
run) before the next round trip is sent."""

# Mismatches that are expected while a migration is partial or a service is writing.
_NOT_MIGRATED_KINDS = frozenset({"not_migrated_new_events"})


@dataclass(frozen=True)
class PruneOptions(pg.PgTarget):
    dry_run: bool = False
    backup_file: str | None = None
    shard: Shard = field(default_factory=Shard)
    scan_count: int = 1000
    transforms: str | None = None
    """--transforms FILE: the rules the migration used; compare as verify --transforms does."""
    include_left_out: bool = False
    """--include-left-out: also delete aggregates whose events the rules all leave out (needs
    ``backup_file``)."""


@dataclass
class PruneSummary:
    dry_run: bool
    aggregates_examined: int = 0
    aggregates_pruned: int = 0
    """Commit lists deleted (in a dry run: that would be deleted)."""
    events_deleted: int = 0
    payload_fields_deleted: int = 0
    skipped_not_identical: int = 0
    skipped_not_migrated: int = 0
    """Not in PostgreSQL yet, or with newer events than PostgreSQL holds (expected)."""
    skipped_unmigratable: int = 0
    """The Redis stream has problems (migrate quarantines it)."""
    skipped_mismatch: int = 0
    """PostgreSQL holds other data than Redis (reported as problems)."""
    changed_since_verify: int = 0
    aggregates_left_out_pruned: int = 0
    """With transforms: aggregates whose events were all left out, deleted (--include-left-out;
    counted in aggregates_pruned too)."""
    aggregates_left_out_kept: int = 0
    """With transforms: aggregates whose events were all left out, kept (no --include-left-out,
    or migrate has not recorded all their commits)."""
    transforms: str | None = None
    """The rules' fingerprint (with transforms)."""
    orphan_fields_cleaned: int = 0
    """Fields left by an interrupted earlier prune, deleted at the start of this one."""
    used_memory_before: int = 0
    used_memory_after: int = 0
    backup_file: str | None = None
    backup_events: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    max_problems_listed: int = 1000
    under_way: str | None = None
    """What the run was deleting, while it was (for the error that stops it; not in the JSON
    document)."""

    def add_problem(self, kind: str, key: str, detail: str) -> None:
        if len(self.problems) < self.max_problems_listed:
            self.problems.append({"kind": kind, "key": key, "detail": detail})

    @property
    def found_problems(self) -> bool:
        """Exit 3: PostgreSQL disagrees with Redis, or an aggregate changed under the run."""
        return bool(self.skipped_mismatch or self.changed_since_verify)

    def as_dict(self) -> dict[str, Any]:
        return document(
            self,
            "dry_run aggregates_examined aggregates_pruned events_deleted payload_fields_deleted"
            " skipped_not_identical skipped_not_migrated skipped_unmigratable skipped_mismatch"
            " changed_since_verify aggregates_left_out_pruned aggregates_left_out_kept"
            " transforms orphan_fields_cleaned used_memory_before used_memory_after"
            " backup_file backup_events problems elapsed_s",
        )


# --- Redis helpers -------------------------------------------------------------------------


def guarded_delete(
    client: redisio.RedisClient, guards: Sequence[tuple[str, int, str, str]]
) -> list[bool]:
    """Run the guard script for each ``(commit list key, length, first commit id, last commit
    id)``, pipelined (EVALSHA, EVAL where the server lacks the script). True where the list was
    still exactly that and is now deleted. Raises ServerError (PermissionDenied for a NOPERM)
    for the first guard that failed, after the round trip that carried it; nothing is sent
    after it (:func:`guard_round_trips` tells what the others did)."""
    out: list[bool] = []
    for outcomes in guard_round_trips(client, guards):
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise guard_error(client, guards[len(out)][0], outcome)
            out.append(outcome)
    return out


def guard_round_trips(
    client: redisio.RedisClient, guards: Sequence[tuple[str, int, str, str]]
) -> Iterator[list[bool | Exception]]:
    """The outcome of each guard (:func:`guarded_delete`), one list per round trip of
    :data:`GUARDS_PER_ROUND_TRIP`: True (deleted), False (changed since verified: kept) or the
    error reply of a guard that failed (a NOPERM included). No round trip is sent after one in
    which a guard failed."""
    for part in redisio.chunked(guards, GUARDS_PER_ROUND_TRIP):
        replies = redisio.eval_pipelined(
            client, GUARD_SCRIPT, [(1, *g) for g in part], until_failure=True
        )
        outcomes: list[bool | Exception] = [
            reply if isinstance(reply, Exception) else int(reply) == 1 for reply in replies
        ]
        yield outcomes
        if any(isinstance(o, Exception) for o in outcomes):
            return


def guard_error(client: redisio.RedisClient, key: str, reply: Exception) -> ServerError:
    """The error for a guarded delete of ``key`` that Redis answered with ``reply``."""
    if redisio.is_denied(reply):
        return redisio.permission_denied(
            redisio.describe(client), reply, command="EVALSHA", key=key
        )
    return ServerError(
        f"the guarded delete of {key} failed: {redact(str(reply))}",
        hint=redisio.error_hint(reply),
    )


def delete_fields(
    client: redisio.RedisClient, fields: Iterable[tuple[str | bytes, str | bytes]]
) -> int:
    """HDEL ``(hash key, field)`` pairs, grouped per hash, pipelined. Returns fields deleted."""
    by_hash: dict[str | bytes, list[str | bytes]] = {}
    for hash_key, name in fields:
        by_hash.setdefault(hash_key, []).append(name)
    commands: list[tuple[Any, ...]] = []
    for hash_key, names in by_hash.items():
        for start in range(0, len(names), HDEL_CHUNK):
            commands.append(("HDEL", hash_key, *names[start : start + HDEL_CHUNK]))
    deleted = 0
    for command, reply in zip(commands, redisio.pipelined(client, commands), strict=True):
        if isinstance(reply, Exception):
            raise ServerError(f"HDEL {redisio.key_str(command[1])} failed: {reply}")
        deleted += int(reply)
    return deleted


# --- backup --------------------------------------------------------------------------------


def _put(document: dict[str, Any], name: str, data: str | bytes) -> None:
    """``name``: the text when the bytes are UTF-8, else ``name_b64``: their base64."""
    raw = redisio.key_bytes(data) if isinstance(data, str) else data
    try:
        document[name] = raw.decode("utf-8")
    except UnicodeDecodeError:
        document[name + "_b64"] = base64.b64encode(raw).decode("ascii")


def backup_records(app: str, stream: Stream) -> list[dict[str, Any]]:
    """One JSON line per event of ``stream``: what a restore needs to put it back exactly
    (RPUSH ``list_key`` the commit ids in ``index`` order, HSET ``hash_key`` ``commit_id``
    ``value``). Text fields that are not UTF-8 appear as ``<name>_b64``."""
    lines: list[dict[str, Any]] = []
    for e in stream.events:
        assert e.hash_key is not None and e.stored is not None
        document: dict[str, Any] = {}
        _put(document, "app", app)
        _put(document, "aggregate_id", stream.aggregate_id)
        _put(document, "list_key", stream.key)
        document["index"] = e.position
        document["list_length"] = len(stream.events)
        _put(document, "commit_id", e.commit_id)
        _put(document, "hash_key", e.hash_key)
        document["version"] = e.event.version if e.event else None
        _put(document, "value", e.stored)
        lines.append(document)
    return lines


# --- the journal ---------------------------------------------------------------------------


def _journal(conn: psycopg.Connection, opts: PruneOptions, candidates: list[Stream]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO esctl.prune_pending AS p (target_schema, application_name,"
            " aggregate_id, first_commit_id, hash_keys, commit_ids)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (target_schema, application_name, aggregate_id) DO UPDATE"
            "   SET first_commit_id = excluded.first_commit_id, hash_keys = excluded.hash_keys,"
            "       commit_ids = excluded.commit_ids, recorded_at = now()",
            [
                (
                    opts.pg_schema,
                    opts.app,
                    s.aggregate_id,
                    redisio.key_bytes(s.events[0].commit_id),
                    [redisio.key_bytes(e.hash_key or "") for e in s.events],
                    [redisio.key_bytes(e.commit_id) for e in s.events],
                )
                for s in candidates
            ],
        )
    conn.commit()


def _unjournal(conn: psycopg.Connection, opts: PruneOptions, ids: list[str]) -> None:
    conn.execute(
        "DELETE FROM esctl.prune_pending WHERE target_schema = %s AND application_name = %s"
        " AND aggregate_id = ANY(%s)",
        (opts.pg_schema, opts.app, ids),
    )
    conn.commit()


def _recover(client: redisio.RedisClient, conn: psycopg.Connection, opts: PruneOptions) -> int:
    """Finish what an interrupted prune left: delete the recorded fields of every aggregate
    whose commit list is gone (or was started anew), forget the others. Returns fields deleted."""
    rows = pg.read_ended(
        conn,
        "SELECT aggregate_id, first_commit_id, hash_keys, commit_ids FROM esctl.prune_pending"
        " WHERE target_schema = %s AND application_name = %s",
        (opts.pg_schema, opts.app),
    )
    rows = [r for r in rows if opts.shard.owns(r[0])]
    cleaned = 0
    for chunk in redisio.chunked(rows, 1000):
        keys = [layout.commit_list_key(opts.app, r[0]) for r in chunk]
        firsts = redisio.pipelined(client, [("LINDEX", k, 0) for k in keys])
        orphans: list[tuple[str | bytes, str | bytes]] = []
        for (_, first, hash_keys, commit_ids), reply in zip(chunk, firsts, strict=True):
            if isinstance(reply, Exception):
                raise ServerError(f"cannot read a commit list: {reply}")
            if reply is not None and bytes(reply) == bytes(first):
                continue  # the list was never deleted: its fields are still events
            orphans.extend(zip(map(bytes, hash_keys), map(bytes, commit_ids), strict=True))
        cleaned += delete_fields(client, orphans)
        _unjournal(conn, opts, [r[0] for r in chunk])
    return cleaned


# --- transforms ----------------------------------------------------------------------------


def check_transforms(
    conn: psycopg.Connection, opts: PruneOptions, rules: Rules | None, bookkeeping: bool
) -> None:
    """Refuse (exit 2) a prune whose rules are not those migrate recorded for this app's
    aggregates (esctl.migrated_stream.transforms): without rules on a transformed migration,
    with rules on one made without them or with other rules."""
    mine = rules.fingerprint if rules is not None else None
    theirs: list[str | None] | None = None
    if bookkeeping:
        theirs = other_transforms(conn, opts.pg_schema, opts.app, mine, most=2)
    if theirs is None:  # no bookkeeping, or one from before transforms: none were used
        theirs = [None] if mine is not None else []
    if not theirs:
        return
    recorded = ", ".join(transforms_words(t) for t in theirs)
    given = transforms_words(mine, rules.path if rules is not None else None)
    raise Refused(
        f"{opts.app} (schema {opts.pg_schema}) was migrated {recorded}; this prune runs {given}: "
        "it would compare Redis with PostgreSQL by other rules than the migration's",
        hint="run prune with the --transforms file the migration used (nothing was deleted)",
    )


# --- the operation -------------------------------------------------------------------------


def _classify(
    stream: Stream,
    pg_rows: list[PgEvent],
    migrated: int | None,
    check: VerifySummary,
    summary: PruneSummary,
) -> None:
    """Count a stream that did not compare identical, and report it when it is a mismatch.
    Not in PostgreSQL at all (and not recorded as migrated) is "not migrated yet"."""
    summary.skipped_not_identical += 1
    kinds = {k for k, n in check.counts.items() if n}
    if "unmigratable_in_redis" in kinds:
        summary.skipped_unmigratable += 1
    elif kinds <= _NOT_MIGRATED_KINDS or (
        kinds == {"missing_in_pg"} and not pg_rows and not migrated
    ):
        summary.skipped_not_migrated += 1
    else:
        summary.skipped_mismatch += 1
        for p in check.problems:
            if p["kind"] not in _NOT_MIGRATED_KINDS:
                summary.add_problem(p["kind"], p["key"], p["detail"])


def prune(
    client: redisio.RedisClient,
    opts: PruneOptions,
    *,
    before_delete: Callable[[list[str]], None] | None = None,
) -> PruneSummary:
    """Delete from Redis the events of every aggregate of ``opts.app`` (in ``opts.shard``) that
    is identical in PostgreSQL; see the module docstring for what it promises.

    ``before_delete`` is called with each page's candidate aggregate ids after they were
    verified (and backed up), right before their guarded deletes: for tests of the guard.

    Raises LockHeld when another prune of this app/schema whose shard shares aggregates with
    ``opts.shard`` (the same shard, another shard count, unsharded beside sharded) or a
    restore-pruned of it runs (:func:`esctl.locks.prune_lock`), SchemaIncompatible when
    the event tables are missing, Refused when the backup file exists, ConnectionFailed when
    a server goes away (rerunning is safe).
    """
    started = time.monotonic()
    summary = PruneSummary(dry_run=opts.dry_run)
    if opts.include_left_out and opts.transforms is None:
        raise UsageError(
            "--include-left-out needs --transforms: without rules nothing is left out",
            hint="add the --transforms file the migration used (nothing was deleted)",
        )
    if opts.include_left_out and not opts.dry_run and not opts.backup_file:
        raise UsageError(
            "--include-left-out deletes aggregates PostgreSQL does not hold at all and needs "
            "--backup-file",
            hint="add `--backup-file NEW_FILE` (nothing was deleted)",
        )
    lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if not opts.dry_run:
        lock = prune_lock(opts.pg_dsn, opts.pg_schema, opts.app, opts.shard)
    with lock:
        _prune_locked(client, opts, summary, before_delete)
    summary.elapsed_s = time.monotonic() - started
    return summary


def _prune_locked(
    client: redisio.RedisClient,
    opts: PruneOptions,
    summary: PruneSummary,
    before_delete: Callable[[list[str]], None] | None,
) -> None:
    dsn = opts.pg_dsn
    conn: psycopg.Connection | None = None
    backup: BackupWriter | None = None
    bookkeeping = False
    rules = load_rules(opts.transforms) if opts.transforms is not None else None
    try:
        conn = pg.connect(dsn, application_name="esctl prune")
        with pg.translate_errors(dsn):
            pg.require_event_tables(conn, opts.pg_schema, opts.app)
            conn.commit()
            if not opts.dry_run:
                pg.ensure_state_schema(conn)
                conn.commit()
            bookkeeping = pg.state_schema_present(conn)
            conn.commit()
            check_transforms(conn, opts, rules, bookkeeping)
            summary.transforms = rules.fingerprint if rules is not None else None
        summary.used_memory_before = redisio.used_memory(client)
        if opts.backup_file and not opts.dry_run:
            backup = BackupWriter(
                opts.backup_file, option="--backup-file", nothing_done="nothing was deleted"
            )
            summary.backup_file = opts.backup_file
        try:
            _prune_pages(client, conn, opts, rules, bookkeeping, summary, backup, before_delete)
        except EsctlError as exc:  # a lost connection, a failed write: say what was deleted
            if not opts.dry_run:
                exc.add(_deleted(summary))
                if summary.under_way is not None:
                    exc.add(summary.under_way)
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM: the same words
            if opts.dry_run or isinstance(exc, Interrupted):
                raise
            state = _deleted(summary)
            if summary.under_way is not None:
                state += f"; {summary.under_way}"
            raise Interrupted(
                state,
                hint="rerun the same command to prune the rest",
                done={
                    "aggregates_pruned": summary.aggregates_pruned,
                    "events_deleted": summary.events_deleted,
                    "payload_fields_deleted": summary.payload_fields_deleted,
                },
            ) from exc
        summary.used_memory_after = redisio.used_memory(client)
    finally:
        if backup is not None:
            backup.close()
        if conn is not None:
            conn.close()


def _prune_pages(
    client: redisio.RedisClient,
    conn: psycopg.Connection,
    opts: PruneOptions,
    rules: Rules | None,
    bookkeeping: bool,
    summary: PruneSummary,
    backup: BackupWriter | None,
    before_delete: Callable[[list[str]], None] | None,
) -> None:
    """The orphans of an earlier run, then every SCAN page of commit lists."""
    page_opts = VerifyOptions(app=opts.app, pg_dsn=opts.pg_dsn, pg_schema=opts.pg_schema)
    with pg.translate_errors(opts.pg_dsn):
        if not opts.dry_run:
            summary.under_way = (
                "the payload fields an earlier prune left behind (no longer events) were "
                "being deleted; the next prune finishes that first"
            )
            summary.orphan_fields_cleaned = _recover(client, conn, opts)
            summary.under_way = None
        # SCAN's TYPE list: a key named as a commit list but of another type is never read,
        # let alone deleted (migrate quarantines it, verify reports it: wrong_key_type).
        pages = redisio.scan_pages(
            client,
            layout.commit_list_pattern(opts.app),
            type_="list",
            count=opts.scan_count,
        )
        with ThreadPoolExecutor(1, thread_name_prefix="esctl-prune-pg") as pool:
            for _, keys in pages:
                ids = [layout.aggregate_id_from_commit_list_key(opts.app, k) for k in keys]
                ids = [a for a in ids if opts.shard.owns(a)]
                if not ids:
                    continue
                # PostgreSQL answers for the page while Redis is read for it.
                pending = pool.submit(pg_page, conn, page_opts, ids, bookkeeping)
                # An event hash of another type makes its aggregates unmigratable: kept, counted.
                wrong_hashes: dict[str, str] = {}
                try:
                    streams = read_streams(client, opts.app, ids, wrong_types=wrong_hashes)
                finally:
                    rows, migrated = pending.result()
                candidates, left_out = _candidates(opts, rules, streams, rows, migrated, summary)
                _prune_page(
                    client, conn, opts, candidates, left_out, summary, backup, before_delete
                )


def _candidates(
    opts: PruneOptions,
    rules: Rules | None,
    streams: list[Stream],
    rows: dict[str, list[PgEvent]],
    migrated: dict[str, int],
    summary: PruneSummary,
) -> tuple[list[Stream], set[str]]:
    """One page's streams that compare identical (with ``rules``: as the rules make them);
    the others counted. A stream the rules leave out whole is a candidate only with
    --include-left-out, and only once migrate recorded all its commits (the ids of those are
    returned beside the candidates)."""
    candidates: list[Stream] = []
    left_out: set[str] = set()
    for stream in streams:
        if not stream.events:
            continue  # deleted since the SCAN
        summary.aggregates_examined += 1
        checked_as_migrate(stream, opts.app)
        pg_rows = rows.get(stream.aggregate_id, [])
        check = VerifySummary()
        done = migrated.get(stream.aggregate_id)
        if rules is None:
            identical = compare_stream(stream, pg_rows, check, done)
        else:
            identical = compare_transformed(stream, pg_rows, check, rules, done)
        if not identical:
            _classify(stream, pg_rows, done, check, summary)
        elif rules is not None and not pg_rows:
            # Identical with no rows: the rules leave every event out.
            if opts.include_left_out and done is not None and done >= len(stream.events):
                left_out.add(stream.aggregate_id)
                candidates.append(stream)
            else:
                summary.aggregates_left_out_kept += 1
        else:
            candidates.append(stream)
    return candidates, left_out


def _prune_page(
    client: redisio.RedisClient,
    conn: psycopg.Connection,
    opts: PruneOptions,
    candidates: list[Stream],
    left_out: set[str],
    summary: PruneSummary,
    backup: BackupWriter | None,
    before_delete: Callable[[list[str]], None] | None,
) -> None:
    """Back up and delete one page's candidates (``left_out``: the ids of those the rules
    leave out whole)."""
    if not candidates:
        return
    if opts.dry_run:
        summary.aggregates_left_out_pruned += len(left_out)
        summary.aggregates_pruned += len(candidates)
        summary.events_deleted += sum(len(s.events) for s in candidates)
        return
    if backup is not None:
        lines = [line for s in candidates for line in backup_records(opts.app, s)]
        try:
            backup.write_frame(lines)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the backup file {backup.path}: {exc.strerror}",
                hint="free disk space and rerun; nothing of this page was deleted",
            ) from None
        summary.backup_events += len(lines)
    _journal(conn, opts, candidates)
    summary.under_way = _under_way(len(candidates), 0)
    if before_delete is not None:
        before_delete([s.aggregate_id for s in candidates])
    guards = [
        (s.key, len(s.events), s.events[0].commit_id, s.events[-1].commit_id) for s in candidates
    ]
    trips: list[list[bool | Exception]] = []
    for trip in guard_round_trips(client, guards):
        trips.append(trip)
        summary.under_way = _under_way(len(candidates), sum(t.count(True) for t in trips))
    gone: list[Stream] = []
    failed: list[tuple[Stream, Exception]] = []
    outcomes = [outcome for trip in trips for outcome in trip]
    for stream, outcome in zip(candidates, outcomes, strict=False):
        if isinstance(outcome, Exception):
            failed.append((stream, outcome))
        elif outcome:
            gone.append(stream)
        else:
            summary.changed_since_verify += 1
            summary.add_problem(
                "changed_since_verify",
                stream.key,
                f"the commit list changed after it verified identical ({len(stream.events)} "
                "events); left untouched: run migrate, then prune again",
            )
    # The lists are gone: nothing names these fields any more. (After a failed guard too: the
    # aggregates its round trip deleted are finished, nothing else is touched.)
    summary.payload_fields_deleted += delete_fields(
        client, [(e.hash_key or "", e.commit_id) for s in gone for e in s.events]
    )
    summary.aggregates_pruned += len(gone)
    summary.aggregates_left_out_pruned += sum(1 for s in gone if s.aggregate_id in left_out)
    summary.events_deleted += sum(len(s.events) for s in gone)
    _unjournal(conn, opts, [s.aggregate_id for s in candidates])
    summary.under_way = None
    if failed:  # the run stops; prune() adds what it deleted in all
        stream, reply = failed[0]
        last = trips[-1]
        ran = len(last) - len(failed)
        kept = sum(1 for outcome in last if outcome is False)
        error = guard_error(client, stream.key, reply)
        error.add(
            f"prune stopped there: {len(failed):,} of the {len(last):,} guarded deletes of "
            "that round trip failed (those aggregates are left as they are)"
            + (f", the other {ran:,} ran" if ran else "")
            + (f" ({kept:,} of them found the list changed and kept it)" if kept else "")
            + "; after that round trip only the payload fields of the lists it deleted were "
            "deleted, nothing else was sent"
        )
        raise error


def _under_way(aggregates: int, lists_deleted: int) -> str:
    """The deletes of a page's ``aggregates`` under way, ``lists_deleted`` of whose commit
    lists are known gone."""
    known = f"{lists_deleted:,} of their commit lists known deleted, " if lists_deleted else ""
    return (
        f"the deletes of {units.counted(aggregates, 'more aggregate')} were under way ({known}each list "
        "deleted whole or not at all): what of them was deleted is recorded in "
        "esctl.prune_pending, and the next prune deletes their payload fields first"
    )


def _deleted(summary: PruneSummary) -> str:
    """What a prune that stops on an error had deleted (and backed up)."""
    if not (summary.aggregates_pruned or summary.orphan_fields_cleaned or summary.under_way):
        return "this prune deleted nothing"
    text = (
        f"this prune deleted {summary.aggregates_pruned:,} aggregates "
        f"({summary.events_deleted:,} events, {summary.payload_fields_deleted:,} payload "
        "fields) in all"
    )
    if summary.orphan_fields_cleaned:
        text += f" and {summary.orphan_fields_cleaned:,} orphan fields of an earlier run"
    if summary.backup_file:
        text += f", each event written to {summary.backup_file} before it was deleted"
    return text
