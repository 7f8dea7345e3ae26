"""``migrate redis-to-pg --transforms FILE``: the rules (esctl.transforms) applied per aggregate
between the reader and the writers, the renumbering kept per aggregate in esctl.migrated_stream
so an incremental run continues it, and the check that PostgreSQL never holds events of two
transforms (``--restart`` with ``--yes`` deletes what earlier runs wrote first).

Without ``--transforms`` none of this runs except :func:`check_transforms` (one query per run):
the reader's hot path is :class:`~esctl.migrate.reader.Reader` unchanged. The design:
docs/design/migrate.md, "Transforms".
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from esctl import codec, fastpath, layout, pg, redisio, storereads
from esctl.errors import Refused, UsageError
from esctl.migrate.options import MigrateOptions
from esctl.migrate.reader import (
    AggregateRead,
    Migrated,
    Reader,
    ReadPage,
    checked_stream,
    resume_point,
)
from esctl.migrate.rows import INT4_MAX, AggregateRows, Batch, Quarantined, binary_row
from esctl.pgevents import any_migrated, other_transforms, transforms_words
from esctl.streams import CleanPayload, StreamProblem, clean_payloads, postgres_problem
from esctl.transforms import CheckedOutcome, Numbering, Rules, load_rules, transform_checked


@dataclass
class TransformCounts:
    """What the rules did in one invocation."""

    aggregates_left_out: int = 0
    events_left_out: int = 0
    events_added_by_split: int = 0


class TransformingReader(Reader):
    """The reader with the rules applied to each aggregate's new events, checked as they are
    in Redis first (the plain reader's hot path, else its general one), written as the same
    binary COPY rows (an event no rule changed keeps its payload's bytes as read)."""

    def __init__(self, *args: object, rules: Rules, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rules = rules
        self.counts = TransformCounts()
        self.numbering: dict[str, Numbering] = {}

    def migrated(self, ids: Sequence[str], numbering: dict[str, Any]) -> dict[str, Migrated]:
        if not self.lookups or not ids:
            return {}
        rows = pg.read_ended(
            self.conn,
            "SELECT u.id, m.commits, m.last_commit_id, m.aggregate_type,"
            "       m.last_source_version, m.last_version"
            "  FROM unnest(%s::text[]) AS u(id) CROSS JOIN LATERAL ("
            "    SELECT commits, last_commit_id, aggregate_type, last_source_version,"
            "           last_version FROM esctl.migrated_stream"
            "     WHERE target_schema = %s AND application_name = %s AND aggregate_id = u.id"
            "    OFFSET 0) m",
            (pg.text_array(list(ids)), self.opts.pg_schema, self.opts.app),
        )
        for r in rows:
            # No numbering recorded: migrated without rules (check_transforms refused or
            # deleted that); the identity numbering is then the right one.
            numbering[r[0]] = Numbering(
                r[4] if r[4] is not None else r[1], r[5] if r[5] is not None else r[1]
            )
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def _add_read_page(self, page: ReadPage, page_start: str) -> Iterator[Batch]:
        # The numbering its own lookup found (a page read ahead keeps its own): only this page's
        # is kept, so a follower's does not grow with every aggregate it has seen.
        self.numbering = page.numbering
        yield from super()._add_read_page(page, page_start)

    def _add_aggregate(self, batch: Batch, read: AggregateRead) -> None:
        aggregate_id, key, commit_ids = read.aggregate_id, read.key, read.commit_ids
        done, known_type, skip, continuous = resume_point(read.known, commit_ids)
        fast = None
        if continuous:
            values, first = read.values[skip:], done + 1
            fast = fastpath.clean_payloads(
                aggregate_id, values, first, known_type
            ) or clean_payloads(aggregate_id, values, first_version=first, known_type=known_type)
        if fast is not None:
            # Nothing wrong with the stream (the checks of the general path, done fast): its
            # payloads go to the rules as they are (parsed where the rules need them).
            source_type, clean = fast
            numbering = self.numbering.get(aggregate_id) or _fresh(done)
            outcome = transform_checked(
                self.rules.rules, aggregate_id, commit_ids[skip:], clean, numbering, source_type
            )
            self._add(batch, aggregate_id, key, commit_ids, done, source_type, outcome, numbering)
            return
        stream, new_events = checked_stream(read, self.opts.app, continuous=continuous)
        if stream.ok:
            problem = postgres_problem(stream)
            if problem is not None:
                stream.problems.append(problem)
        if not stream.ok:
            batch.quarantined.append(Quarantined(aggregate_id, key, new_events, stream.problems))
            return
        commits, clean = [], []
        for e in stream.by_version():
            ev = e.event
            assert ev is not None and ev.version is not None and ev.data is not None
            assert ev.event_type is not None and ev.timestamp is not None
            commits.append(e.commit_id)
            assert ev.type_name is not None and ev.timestamp_text is not None
            clean.append(
                CleanPayload(
                    ev.version,
                    ev.type_name,
                    ev.timestamp_text,
                    ev.timestamp,
                    ev.text.encode("utf-8"),
                    ev.data,
                )
            )
        source_type = stream.aggregate_type or known_type or ""
        numbering = self.numbering.get(aggregate_id) or _fresh(done)
        outcome = transform_checked(self.rules.rules, aggregate_id, commits, clean, numbering)
        self._add(batch, aggregate_id, key, commit_ids, done, source_type, outcome, numbering)

    def _add(
        self,
        batch: Batch,
        aggregate_id: str,
        key: str,
        commit_ids: list[str],
        done: int,
        source_type: str,
        outcome: CheckedOutcome,
        numbering: Numbering,
    ) -> None:
        """One aggregate's transformed events into the batch (or its failure, quarantined)."""
        new_events = len(commit_ids) - (1 if done else 0)
        if outcome.failure is not None:
            problem = outcome.failure.as_problem()
            batch.quarantined.append(Quarantined(aggregate_id, key, new_events, [problem]))
            return
        count = outcome.count
        self.counts.events_left_out += outcome.left_out
        self.counts.events_added_by_split += count - (new_events - outcome.left_out)
        if not count and numbering.last_version == 0:
            self.counts.aggregates_left_out += 1
        try:
            rows = transformed_rows(outcome)
        except struct.error:  # a version beyond an integer column (splits without end)
            detail = f"a version beyond {INT4_MAX} does not fit an integer column"
            problem = StreamProblem("rejected_by_postgres", detail)
            batch.quarantined.append(Quarantined(aggregate_id, key, new_events, [problem]))
            return
        batch.events += len(rows)
        batch.clean[aggregate_id] = AggregateRows(
            outcome.events[0].aggregate_type if outcome.events else source_type,
            rows,
            done + new_events,
            commit_ids[-1],
            source_type=source_type,
            numbering=(outcome.numbering.last_source_version, outcome.numbering.last_version),
        )


def with_rules(opts: MigrateOptions) -> tuple[MigrateOptions, Rules | None]:
    """A run's options and rules: ``--transforms`` read once, its fingerprint recorded in
    the options (the writers record it per aggregate); without it, no rules."""
    if opts.transforms is None:
        return opts, None
    rules = load_rules(opts.transforms)
    return replace(opts, transforms_fingerprint=rules.fingerprint), rules


def open_reader(
    client: redisio.RedisClient,
    opts: MigrateOptions,
    control: psycopg.Connection,
    rules: Rules | None,
    *,
    state_present: bool,
) -> Reader:
    """A run's reader: the plain :class:`Reader`, or with ``rules`` a :class:`TransformingReader`."""
    if rules is None:
        return Reader(client, opts, control, state_present)
    return TransformingReader(client, opts, control, state_present, rules=rules)


_FRESH = Numbering()


def _fresh(done: int) -> Numbering:
    """The numbering of an aggregate with ``done`` events migrated and none recorded: the
    identity one (migrated without rules; check_transforms refused or deleted that)."""
    return Numbering(done, done) if done else _FRESH


def transformed_rows(outcome: CheckedOutcome) -> list[bytes]:
    """The binary COPY rows of transformed events (:func:`esctl.transforms.transform_checked`):
    an event no rule changed with its payload's bytes as read. Raises struct.error for a
    version beyond an integer column."""
    if outcome.plain is not None:
        return fastpath.binary_rows(*outcome.plain) or list(map(binary_row, *outcome.plain))
    columns = (
        [t.moment or codec.parse_timestamp(t.timestamp) for t in outcome.events],
        [t.version for t in outcome.events],
        [t.type_name for t in outcome.events],
        [t.raw if t.raw is not None else t.utf8() for t in outcome.events],
    )
    return fastpath.binary_rows(*columns) or list(map(binary_row, *columns))


def check_transforms(
    client: redisio.RedisClient,
    conn: psycopg.Connection,
    opts: MigrateOptions,
    rules: Rules | None,
) -> int:
    """Refuse (exit 2) a run whose transforms differ from those PostgreSQL's migrated events
    were written with, unless ``--restart`` (with ``--yes``): then delete what earlier runs
    wrote for this app and shard first, so the result equals a fresh run. Returns the
    aggregates deleted. Ends the transaction."""
    mine = rules.fingerprint if rules is not None else None
    other = other_transforms(conn, opts.pg_schema, opts.app, mine, most=1)
    if other is None:
        # The bookkeeping of an esctl from before transforms, not upgraded (a dry run alters
        # nothing): everything in it was migrated without transforms.
        if mine is None:
            return 0
        if not any_migrated(conn, opts.pg_schema, opts.app):
            return 0
        other, source = [None], None
    else:
        if not other:
            return 0
        latest = pg.read_ended(
            conn,
            "SELECT transforms_file, run_id FROM esctl.migration_run WHERE target_schema = %s"
            " AND application_name = %s AND transforms IS NOT DISTINCT FROM %s"
            " ORDER BY started_at DESC LIMIT 1",
            (opts.pg_schema, opts.app, other[0]),
        )
        source = latest[0] if latest else None
    theirs = other[0]
    before = transforms_words(theirs)
    if theirs is not None and source is not None and source[0]:
        before += f" (from {source[0]}, run {source[1]})"
    now = transforms_words(mine, rules.path if rules is not None else None)
    what = (
        f"PostgreSQL schema {opts.pg_schema!r} holds events of {opts.app} migrated {before}; "
        f"this run would add events {now}"
    )
    if not opts.restart:
        raise UsageError(
            what + ": PostgreSQL would hold a mix of two transforms",
            hint="run with the same --transforms file as before, or add `--restart --yes` to "
            "delete what earlier runs migrated and migrate everything again",
        )
    if opts.dry_run:
        raise UsageError(
            what + "; --restart would delete what earlier runs migrated, which a dry run "
            "cannot show",
            hint="drop --dry-run to restart, or use the earlier --transforms",
        )
    if not opts.confirm_restart:
        raise Refused(
            what + "; --restart deletes the events earlier runs migrated for this app (and "
            "shard) from PostgreSQL and migrates everything again",
            hint="add --yes to confirm (nothing was done)",
        )
    # (the migration lock keeps other runs from changing what is read once here)
    migrated = _migrated_with_other_transforms(conn, opts, mine)
    check_sources_whole(client, opts, migrated)
    return _delete_migrated(conn, opts, [a for a, _ in migrated])


def _migrated_with_other_transforms(
    conn: psycopg.Connection, opts: MigrateOptions, mine: str | None
) -> list[tuple[str, int]]:
    """(aggregate id, commits migrated) of each aggregate of this app and shard that
    esctl.migrated_stream records as migrated with other transforms than ``mine``. Ends the
    transaction."""
    rows = pg.read_ended(
        conn,
        "SELECT aggregate_id, commits FROM esctl.migrated_stream WHERE target_schema = %s"
        " AND application_name = %s AND transforms IS DISTINCT FROM %s",
        (opts.pg_schema, opts.app, mine),
    )
    return [(a, n) for a, n in rows if opts.shard.owns(a)]


def _delete_migrated(conn: psycopg.Connection, opts: MigrateOptions, ids: list[str]) -> int:
    """Delete the events, aggregate rows and bookkeeping of these aggregates of this app, in
    one transaction."""
    s = sql.Identifier(opts.pg_schema)
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        conn.execute(
            sql.SQL(
                "DELETE FROM {s}.event e USING {s}.aggregate a"
                " WHERE e.aggregate_key = a.aggregate_key AND a.application_name = %s"
                "   AND a.aggregate_id = ANY(%s)"
            ).format(s=s),
            (opts.app, chunk),
        )
        conn.execute(
            sql.SQL(
                "DELETE FROM {s}.aggregate WHERE application_name = %s AND aggregate_id = ANY(%s)"
            ).format(s=s),
            (opts.app, chunk),
        )
        conn.execute(
            "DELETE FROM esctl.migrated_stream WHERE target_schema = %s"
            " AND application_name = %s AND aggregate_id = ANY(%s)",
            (opts.pg_schema, opts.app, chunk),
        )
    conn.commit()
    return len(ids)


def check_sources_whole(
    client: redisio.RedisClient, opts: MigrateOptions, owned: list[tuple[str, int]]
) -> None:
    """Before a ``--restart`` deletes: every aggregate to delete (aggregate id, commits
    migrated) must still have all its migrated commits in Redis (``migrate prune`` removes
    them), or its events would be lost."""
    for start in range(0, len(owned), 1000):
        chunk = owned[start : start + 1000]
        keys = [layout.commit_list_key(opts.app, a) for a, _ in chunk]
        for (aggregate_id, commits), length in zip(
            chunk, storereads.list_lengths_or_types(client, keys), strict=True
        ):
            if isinstance(length, str):
                key = layout.commit_list_key(opts.app, aggregate_id)
                raise Refused(
                    f"--restart would delete the events of aggregate {aggregate_id!r} from "
                    f"PostgreSQL, but its commit list cannot be read again: "
                    f"{storereads.wrong_type_text(key, length, layout.COMMIT_LIST)}",
                    hint="keep the earlier --transforms for this app (nothing was done), or "
                    f"restore the commit list first: {storereads.WRONG_TYPE_ACTION}",
                )
            if length < commits:
                raise Refused(
                    f"--restart would delete the events of aggregate {aggregate_id!r} from "
                    f"PostgreSQL, but Redis holds {length} of its {commits} migrated commits "
                    "(pruned?): they would be lost",
                    hint="keep the earlier --transforms for this app (nothing was done)",
                )
