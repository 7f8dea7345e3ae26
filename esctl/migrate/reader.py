"""The Redis side of a migration: :class:`Reader` turns SCAN pages of commit lists into
batches of checked, whole aggregates, reading only what is new since the last run; and
:func:`count_commits`, the quick count behind a progress bar.

Which SCAN position a batch carries, when the per-page lookup of what was migrated is skipped,
and how payloads are read in chunks: docs/design/migrate.md, "Reading".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg

from esctl import inflight, layout, pg, redisio, storereads
from esctl.migrate.options import MigrateOptions
from esctl.migrate.rows import AggregateRows, Batch, Quarantined, fast_rows, stream_rows
from esctl.pgevents import any_migrated
from esctl.shard import Shard
from esctl.streams import (
    Stream,
    StreamProblem,
    build_stream,
    checked_as_migrate,
)

Migrated = tuple[int, str, str]
"""What esctl.migrated_stream holds of an aggregate: (commits migrated, last commit id,
aggregate type)."""

READ_AHEAD_BATCHES = 2
"""A SCAN page's payloads are read ahead of its checks when it names at most this many batches'
worth of events; a larger page's are fetched a batch at a time as its checks reach them."""


@dataclass(slots=True)
class AggregateRead:
    """One aggregate as the reader has it: its commit-list entries from entry ``start``, their
    payloads and the hash each was found in (None: missing), and what esctl.migrated_stream
    holds of it (None: nothing migrated yet)."""

    aggregate_id: str
    key: str
    start: int
    commit_ids: list[str]
    values: list[bytes | None]
    where: list[str | None]
    known: Migrated | None
    wrong_types: dict[str, str] | None = None
    """Event hashes of another Redis type met reading ``values`` (key -> its type): the events
    looked up there have no value and that key in ``where``."""


@dataclass
class ReadPage:
    """What one SCAN page needs from Redis and esctl's bookkeeping, read before (or, ahead of
    the checks, while an earlier page is) checked: nothing in it changes the reader's state
    until :meth:`Reader._add_read_page` applies it."""

    unreadable: list[str] = field(default_factory=list)
    """Aggregate ids that are not UTF-8 (not read)."""
    wrong: list[tuple[str, str, int]] = field(default_factory=list)
    """(aggregate id, Redis type, commits migrated before) of commit lists' keys that hold
    another Redis type (not read: the library fails on them)."""
    known: dict[str, Migrated] = field(default_factory=dict)
    numbering: dict[str, Any] = field(default_factory=dict)
    """A transforming reader's renumbering of the aggregates in ``known``, from the same lookup
    (esctl.migrate.transformed): it travels with its page, so a page read ahead cannot hand
    another page's (older or newer) numbering to an aggregate SCAN returns twice."""
    todo: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    unchanged: int = 0
    unchanged_commits: int = 0
    shrunk: list[tuple[str, int, int]] = field(default_factory=list)
    """(aggregate id, commit list length, commits migrated) of lists shorter than migrated."""
    lists: list[list[str]] = field(default_factory=list)
    values: list[bytes | None] | None = None
    """The payloads of every commit of ``lists`` when read ahead (else fetched in chunks)."""
    where: list[str | None] = field(default_factory=list)
    wrong_types: dict[str, str] = field(default_factory=dict)
    """Event hashes of another Redis type met reading ``values`` (key -> its type)."""


def migrated_streams(
    conn: psycopg.Connection, pg_schema: str, app: str, ids: Sequence[str]
) -> dict[str, Migrated]:
    """What esctl.migrated_stream holds of each of ``ids`` that was migrated: aggregate id ->
    (commits migrated, last commit id, aggregate type). Ends the transaction it reads in."""
    rows = pg.read_ended(
        conn,
        # LATERAL with OFFSET 0 (which the planner may not flatten): one index lookup per
        # id whatever the statistics say (docs/design/migrate.md, "Reading").
        "SELECT u.id, m.commits, m.last_commit_id, m.aggregate_type"
        "  FROM unnest(%s::text[]) AS u(id) CROSS JOIN LATERAL ("
        "    SELECT commits, last_commit_id, aggregate_type FROM esctl.migrated_stream"
        "     WHERE target_schema = %s AND application_name = %s AND aggregate_id = u.id"
        "    OFFSET 0) m",
        (pg.text_array(list(ids)), pg_schema, app),
    )
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


class Reader:
    """Turns SCAN pages of commit lists into batches of checked, whole aggregates."""

    def __init__(
        self,
        client: redisio.RedisClient,
        opts: MigrateOptions,
        conn: psycopg.Connection,
        state_present: bool,
    ) -> None:
        self.client = client
        self.opts = opts
        self.conn = conn
        self.state_present = state_present
        self.pacer = redisio.LatencyPacer(client, opts.rate, opts.max_redis_latency_ms)
        self._conn_lock = threading.Lock()
        self.unchanged = 0
        self.commits_seen = 0
        self.held: dict[str, int | str | None] | None = None
        """A follower's aggregates quarantined in its run, with their commit lists' length then
        (or the Redis type of a key that is no list): passed over while the list keeps that
        length (the key that type; None: always). A plain run reads each aggregate once and
        keeps none."""
        # A first run skips the per-page lookup of what was migrated (docs/design/migrate.md).
        self.lookups = state_present and any_migrated(conn, opts.pg_schema, opts.app)

    def migrated(self, ids: Sequence[str], numbering: dict[str, Any]) -> dict[str, Migrated]:
        """aggregate id -> (commits migrated, last commit id, aggregate type). ``numbering``:
        where a transforming reader puts what the same lookup found of the renumbering."""
        if not self.lookups or not ids:
            return {}
        return migrated_streams(self.conn, self.opts.pg_schema, self.opts.app, ids)

    def batches(self, start: redisio.ScanPosition, first_seq: int) -> Iterator[Batch]:
        """Batches of whole aggregates holding about ``batch_size`` events each. A batch that
        ends inside a SCAN page carries the position before that page; the one that ends the
        page carries the position after it (docs/design/migrate.md, "Reading")."""
        self._seq = first_seq
        self._batch = Batch(self._seq, start.encode())
        # the next SCAN page is asked for while this one is read (docs/design/distance.md).
        # Not SCAN's TYPE list: a key named as a commit list but of another type is quarantined
        # (wrong_key_type), not skipped; its LRANGE (or LLEN) tells (docs/design/migrate.md).
        pages = inflight.prefetched(
            redisio.scan_pages(
                self.client,
                layout.commit_list_pattern(self.opts.app),
                count=self.opts.scan_count,
                start=start,
            )
        )
        # and the next pages' Redis reads while this one is checked, unless they are paced
        paced = self.opts.rate or self.opts.max_redis_latency_ms
        reads = (
            ((position, self._read_page(keys, ahead=False)) for position, keys in pages)
            if paced
            else inflight.ordered_map(lambda item: (item[0], self._read_page(item[1])), pages)
        )
        before = start.encode()
        try:
            for position, page in reads:
                yield from self._add_read_page(page, before)
                before = replace(position, epoch=start.epoch).encode()
                self._batch.position = before
                if self._full():
                    yield self._seal(before)
        finally:
            reads.close()
        if self._batch.aggregates or self._batch.position != start.encode():
            yield self._batch

    def batches_of(self, keys: list[str], position: str) -> Iterator[Batch]:
        """Batches of the aggregates of these commit-list keys (a follower's, named by
        notifications), read and checked as a SCAN page's are; each carries ``position``.
        Unchanged aggregates are in none of them. The seqs are the caller's to set."""
        self._seq = 0
        self._batch = Batch(0, position)
        yield from self._add_page(keys, position)
        if self._batch.aggregates:
            yield self._batch

    def _full(self) -> bool:
        size = self.opts.batch_size
        return self._batch.events >= size or self._batch.aggregates >= size

    def _seal(self, position: str) -> Batch:
        """Hand out the current batch (at ``position``) and start the next one."""
        sealed = self._batch
        sealed.position = position
        self._seq += 1
        self._batch = Batch(self._seq, position)
        return sealed

    def _quarantine_whole(
        self, aggregate_id: str, key: str, problem: StreamProblem, commits: int | str | None
    ) -> None:
        """Count an aggregate whose commit list is not read at all, with its problem."""
        self._batch.aggregates += 1
        self._batch.quarantined.append(Quarantined(aggregate_id, key, 0, [problem], commits))

    def _add_page(self, keys: list[str], page_start: str) -> Iterator[Batch]:
        yield from self._add_read_page(self._read_page(keys, ahead=False), page_start)

    def _read_page(self, keys: list[str], *, ahead: bool = True) -> ReadPage:
        """The Redis reads (and bookkeeping lookup) of one page; on a thread of
        :func:`esctl.inflight.ordered_map` when ``ahead``, so it changes nothing of the
        reader's. ``ahead``: also its payloads, when there are not too many of them."""
        app = self.opts.app
        page = ReadPage()
        ids = [layout.aggregate_id_from_commit_list_key(app, k) for k in keys]
        ids = [a for a in ids if self.opts.shard.owns(a)]
        page.unreadable = [a for a in ids if not redisio.is_utf8(a)]
        if page.unreadable:
            ids = [a for a in ids if redisio.is_utf8(a)]
        if not ids:
            return page
        with self._conn_lock:  # (pages read ahead share the reader's connection)
            page.known = self.migrated(ids, page.numbering)
        self._to_read(page, ids)
        if not page.todo:
            return page
        keys_todo = [layout.commit_list_key(app, a) for a in page.todo]
        wrong: dict[str, str] = {}
        page.lists = storereads.commit_lists(self.client, keys_todo, page.starts, wrong_types=wrong)
        if wrong:
            self._set_aside(page, keys_todo, wrong)
        if ahead and sum(map(len, page.lists)) <= READ_AHEAD_BATCHES * self.opts.batch_size:
            page.values, page.where = storereads.fetch_values(
                self.client,
                app,
                [c for commit_ids in page.lists for c in commit_ids],
                wrong_types=page.wrong_types,
            )
        return page

    @staticmethod
    def _set_aside(page: ReadPage, keys: list[str], wrong: dict[str, str]) -> None:
        """Move the aggregates whose commit list's key LRANGE found of another Redis type
        (``wrong``: key -> type) from ``page.todo`` to ``page.wrong``."""
        kept = [i for i, key in enumerate(keys) if key not in wrong]
        for i, key in enumerate(keys):
            if key in wrong:
                page.wrong.append((page.todo[i], wrong[key], 0))
        page.todo = [page.todo[i] for i in kept]
        page.starts = [page.starts[i] for i in kept]
        page.lists = [page.lists[i] for i in kept]

    def _add_read_page(self, page: ReadPage, page_start: str) -> Iterator[Batch]:
        """Check a page read by :meth:`_read_page` into batches."""
        app = self.opts.app
        for aggregate_id in page.unreadable:
            if self.held is not None and redisio.printable(aggregate_id) in self.held:
                continue
            self._quarantine_whole(
                redisio.printable(aggregate_id),
                redisio.printable(layout.commit_list_key(app, aggregate_id)),
                StreamProblem(
                    "unsupported_by_postgres",
                    "the commit list key is not UTF-8: PostgreSQL text cannot hold "
                    "its aggregate id",
                ),
                None,
            )
        self.unchanged += page.unchanged
        self.commits_seen += page.unchanged_commits
        for aggregate_id, kind, done in page.wrong:
            key = layout.commit_list_key(app, aggregate_id)
            detail = storereads.wrong_type_detail(key, kind, layout.COMMIT_LIST)
            if done:
                detail += f" ({done} of its commits were migrated before it was)"
            self._quarantine_whole(aggregate_id, key, StreamProblem("wrong_key_type", detail), kind)
        for aggregate_id, length, done in page.shrunk:
            self._quarantine_whole(
                aggregate_id,
                layout.commit_list_key(app, aggregate_id),
                StreamProblem(
                    "commit_list_shrunk",
                    f"the commit list has {length} entries but {done} were migrated",
                ),
                length,
            )
        if not page.todo:
            return
        todo, starts, lists = page.todo, page.starts, page.lists
        keys_todo = [layout.commit_list_key(app, a) for a in todo]
        self.commits_seen += sum(starts)
        # Payloads are fetched in chunks of about a batch, so memory stays bounded by the batch
        # size (or the largest aggregate) rather than by what one SCAN page names.
        chunk: list[int] = []
        chunk_events = 0
        offset = 0
        for index, commit_ids in enumerate(lists):
            chunk.append(index)
            chunk_events += len(commit_ids)
            if chunk_events >= self.opts.batch_size or index == len(lists) - 1:
                fetched = None
                if page.values is not None:
                    end = offset + chunk_events
                    fetched = (page.values[offset:end], page.where[offset:end], page.wrong_types)
                    offset = end
                yield from self._add_chunk(
                    [todo[i] for i in chunk],
                    [keys_todo[i] for i in chunk],
                    [starts[i] for i in chunk],
                    [lists[i] for i in chunk],
                    page.known,
                    page_start,
                    fetched,
                )
                chunk, chunk_events = [], 0

    def _to_read(self, page: ReadPage, ids: list[str]) -> None:
        """The aggregates of a page to read (``page.todo``), and the commit-list entry to read
        each from (``page.starts``); the unchanged and shrunk ones. Only aggregates migrated
        before, or held (quarantined earlier by this follower), need their length first (to
        skip unchanged ones); the others are read whole."""
        app = self.opts.app
        held = self.held or {}
        known = page.known
        measured = [a for a in ids if a in known or a in held]
        lengths = dict(
            zip(
                measured,
                storereads.list_lengths_or_types(
                    self.client, [layout.commit_list_key(app, a) for a in measured]
                ),
                strict=True,
            )
        )
        for aggregate_id in ids:
            # (the follower's writer threads add to ``held`` meanwhile: one lookup each)
            length = lengths.get(aggregate_id)
            if length is not None and held.get(aggregate_id, -1) == length:
                page.unchanged += 1  # quarantined by this follower, and unchanged since
                page.unchanged_commits += length if isinstance(length, int) else 0
                continue
            if isinstance(length, str):  # a key of another Redis type: no list to read
                done = known[aggregate_id][0] if aggregate_id in known else 0
                page.wrong.append((aggregate_id, length, done))
                continue
            if aggregate_id not in known:
                page.todo.append(aggregate_id)
                page.starts.append(0)
                continue
            done, length = known[aggregate_id][0], lengths[aggregate_id]
            assert isinstance(length, int)
            if length == done:
                page.unchanged += 1
                page.unchanged_commits += length
            elif length < done:
                page.shrunk.append((aggregate_id, length, done))
            else:
                page.todo.append(aggregate_id)
                page.starts.append(done - 1)  # the last migrated commit, to check continuity

    def _add_chunk(
        self,
        ids: list[str],
        keys: list[str],
        starts: list[int],
        lists: list[list[str]],
        known: dict[str, Migrated],
        page_start: str,
        fetched: tuple[list[bytes | None], list[str | None], dict[str, str]] | None = None,
    ) -> Iterator[Batch]:
        flat = [c for commit_ids in lists for c in commit_ids]
        self.commits_seen += len(flat)
        if fetched is None:
            self.pacer.wait(len(flat))
            wrong_types: dict[str, str] = {}
            values, where = storereads.fetch_values(
                self.client, self.opts.app, flat, wrong_types=wrong_types
            )
        else:
            values, where, wrong_types = fetched
        offset = 0
        for aggregate_id, key, start, commit_ids in zip(ids, keys, starts, lists, strict=True):
            if not commit_ids and not start:
                continue  # deleted since SCAN named it (which SCAN allows): not an aggregate
            end = offset + len(commit_ids)
            self._batch.aggregates += 1
            self._add_aggregate(
                self._batch,
                AggregateRead(
                    aggregate_id,
                    key,
                    start,
                    commit_ids,
                    values[offset:end],
                    where[offset:end],
                    known.get(aggregate_id),
                    wrong_types or None,
                ),
            )
            quarantined = self._batch.quarantined
            if quarantined and quarantined[-1].aggregate_id == aggregate_id:
                quarantined[-1].commits = start + len(commit_ids)  # the list's length as read
            offset = end
            if self._full():
                yield self._seal(page_start)

    def _add_aggregate(self, batch: Batch, read: AggregateRead) -> None:
        aggregate_id, commit_ids = read.aggregate_id, read.commit_ids
        done, known_type, skip, continuous = resume_point(read.known, commit_ids)
        if continuous:
            fast = fast_rows(
                aggregate_id, read.values[skip:], first_version=done + 1, known_type=known_type
            )
            if fast is not None:
                aggregate_type, new_rows = fast
                batch.events += len(new_rows)
                batch.clean[aggregate_id] = AggregateRows(
                    aggregate_type, new_rows, done + len(new_rows), commit_ids[-1]
                )
                return
        # The general path finds and describes whatever kept the fast path from taking it.
        stream, new_events = checked_stream(read, self.opts.app, continuous=continuous)
        if stream.ok:
            rows = stream_rows(stream)
            if isinstance(rows, StreamProblem):
                stream.problems.append(rows)
            else:
                batch.events += len(rows)
                stream_type = stream.aggregate_type
                if stream_type is None:
                    stream_type = known_type or ""
                batch.clean[aggregate_id] = AggregateRows(
                    stream_type, rows, done + new_events, commit_ids[-1]
                )
                return
        batch.quarantined.append(Quarantined(aggregate_id, read.key, new_events, stream.problems))


def resume_point(
    known: Migrated | None, commit_ids: list[str]
) -> tuple[int, str | None, int, bool]:
    """Where reading one aggregate's commit list resumes: (events migrated before, their
    aggregate type, how many of ``commit_ids`` to skip (the last migrated commit, read again),
    whether the list still continues from that commit)."""
    done, last_commit, known_type = known if known else (0, "", None)
    continuous = not done or (bool(commit_ids) and commit_ids[0] == last_commit)
    return done, known_type, 1 if done else 0, continuous


def checked_stream(read: AggregateRead, app: str, *, continuous: bool) -> tuple[Stream, int]:
    """The general path's view of one aggregate's commits from ``read.start``: the stream with
    every problem found (a rewritten commit list when not ``continuous``; else the checks of
    :func:`checked_as_migrate` from the version after the ``known`` migrated ones, an event hash
    of another Redis type as ``wrong_key_type``), its events cut to the new ones when it is ok,
    and the number of new events."""
    start, known = read.start, read.known
    done, known_type, skip, _ = resume_point(known, read.commit_ids)
    stream = build_stream(
        read.aggregate_id,
        read.key,
        read.commit_ids,
        read.values,
        read.where,
        first_position=start,
        wrong_types=read.wrong_types,
    )
    if not continuous:
        stream.problems.append(
            StreamProblem(
                "commit_list_changed",
                f"entry {start} of the commit list is not the last migrated commit "
                f"{known[1] if known else ''}: the list was rewritten",
            )
        )
    else:
        checked_as_migrate(stream, app, first_version=done + 1, known_type=known_type, skip=skip)
    new_events = len(stream.events) - skip
    if stream.ok:
        stream.events = stream.events[skip:]
    return stream, new_events


def count_commits(client: redisio.RedisClient, app: str, shard: Shard) -> tuple[int, int]:
    """A quick count for progress bars: (commit lists, commit-list entries) of ``app`` in
    ``shard``. SCAN plus pipelined LLEN; reads no payloads. A key named as a commit list but of
    another Redis type counts as a list without entries (the run examines and quarantines it)."""
    lists = entries = 0
    for _, keys in redisio.scan_pages(client, layout.commit_list_pattern(app)):
        keys = [k for k in keys if shard.owns(layout.aggregate_id_from_commit_list_key(app, k))]
        lists += len(keys)
        lengths = storereads.list_lengths_or_types(client, keys)
        entries += sum(n for n in lengths if isinstance(n, int))
    return lists, entries
