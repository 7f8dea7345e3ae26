"""``migrate verify``: compare what Redis holds with what PostgreSQL holds, per aggregate.

Per aggregate found in Redis (the commit lists), the committed events are compared with the
PostgreSQL rows of (aggregate id, application): versions, event type, aggregate type, time
stamp (to the microsecond) and content (JSON compared semantically: jsonb reorders keys,
:mod:`esctl.jsoncompare`; the rows read by :mod:`esctl.pgevents`). Aggregates that exist only
in PostgreSQL are not looked at (after ``migrate prune`` that is expected).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from esctl import fastpath, inflight, layout, pg, redisio, storereads
from esctl.codec import ParsedEvent, event_type_from_type_name, parse_event
from esctl.defaults import verify_workers_default as verify_workers_default
from esctl.documents import document
from esctl.jsoncompare import same_json
from esctl.pgevents import (
    _JSONB_V1,
    MICROSECOND,
    PG_EPOCH,
    PgEvent,
    PgStream,
    migrated_commits,
    pg_stream_page,
)
from esctl.problems import (
    DEFAULT_LISTED,
    ProblemsFile,
    append_problems_file,
    open_problems_file,
)
from esctl.sampling import Reservoir
from esctl.shard import Shard
from esctl.streams import (
    Stream,
    build_stream,
    checked_as_migrate,
    clean_payloads,
    postgres_problem,
    versions_phrase,
)
from esctl.transforms import Rules, SourceEvent, transform_stream
from esctl.units import counted

MISMATCH_KINDS = (
    "missing_in_pg",
    "extra_in_pg",
    "content_differs",
    "not_migrated_new_events",
    "unmigratable_in_redis",
)


@dataclass(frozen=True)
class VerifyOptions:
    app: str
    pg_dsn: str
    pg_schema: str = "public"
    shard: Shard = field(default_factory=Shard)
    sample: int | None = None
    allow_new_events: bool = False
    page_size: int = 1000
    problems_file: str | None = None
    """Where every problem goes, one JSON line each, as found (the summary lists the first
    few); :func:`verify_parallel` empties it first, :func:`verify` appends."""
    transforms: str | None = None
    """--transforms FILE: compare PostgreSQL with the Redis streams as these rules make them."""


@dataclass
class VerifySummary:
    aggregates: int = 0
    aggregates_identical: int = 0
    events_compared: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MISMATCH_KINDS, 0))
    problems: list[dict[str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    sample: int | None = None
    max_problems_listed: int = DEFAULT_LISTED
    ignored: frozenset[str] = frozenset()
    problems_where: str | None = None
    """The --problems-file holding every problem (None: only counted)."""
    migrated_with_transforms: str | None = None
    """Set when verify without --transforms found differences in a migration made with
    transforms: their fingerprint and rules file."""
    sink: ProblemsFile | None = field(default=None, repr=False, compare=False)

    @property
    def mismatches(self) -> int:
        return sum(self.counts.values())

    def add(self, kind: str, key: str, detail: str) -> None:
        if kind in self.ignored:
            return
        self.counts[kind] += 1
        problem = {"kind": kind, "key": key, "detail": detail}
        if len(self.problems) < self.max_problems_listed:
            self.problems.append(problem)
        if self.sink is not None:
            self.sink.add(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            **document(self, "aggregates aggregates_identical events_compared sample"),
            **self.counts,
            **document(self, "problems"),
            "problem_counts": {k: n for k, n in sorted(self.counts.items()) if n},
            "problems_total": self.mismatches,
            "problems_omitted": self.mismatches - len(self.problems),
            "problems_where": self.problems_where,
            "migrated_with_transforms": self.migrated_with_transforms,
            **document(self, "elapsed_s"),
            "events_per_s": round(self.events_compared / self.elapsed_s, 1)
            if self.elapsed_s
            else 0.0,
        }


def compare_stream(
    stream: Stream, rows: list[PgEvent], summary: VerifySummary, migrated: int | None = None
) -> bool:
    """Compare one validated Redis stream with its PostgreSQL rows; record mismatches.
    ``migrated`` is the number of commits esctl recorded as migrated, when known: versions up to
    it that PostgreSQL lacks are ``missing_in_pg``, later ones ``not_migrated_new_events``
    (without it, versions past PostgreSQL's last one count as not migrated yet).
    Returns True when identical."""
    key = stream.key
    unstorable = postgres_problem(stream) if stream.ok else None
    if unstorable is not None:
        summary.add(
            "unmigratable_in_redis",
            key,
            f"{unstorable.detail}; migrate quarantines it as {unstorable.kind}",
        )
        return False
    if not stream.ok:
        kinds = sorted({p.kind for p in stream.problems})
        # A key of another type is named: it is what to fix (the kinds alone do not say which).
        wrong = next((p.detail for p in stream.problems if p.kind == "wrong_key_type"), None)
        summary.add(
            "unmigratable_in_redis",
            key,
            f"the Redis stream has problems ({', '.join(kinds)}); migrate quarantines it"
            + (f": {wrong}" if wrong else ""),
        )
        return False
    events = stream.by_version()
    summary.events_compared += len(events)
    by_version = {r.version: r for r in rows}
    redis_versions = {e.event.version for e in events if e.event and e.event.version is not None}
    identical = True
    pg_max = max(by_version, default=0)
    missing = [v for v in sorted(redis_versions) if v not in by_version]
    if missing:
        identical = False
        if not by_version and not migrated:
            summary.add("missing_in_pg", key, f"none of its {len(events)} events is in PostgreSQL")
        else:
            last_migrated = pg_max if migrated is None else migrated
            tail = [v for v in missing if v > last_migrated]
            inner = [v for v in missing if v <= last_migrated]
            if tail:
                summary.add(
                    "not_migrated_new_events",
                    key,
                    f"{counted(len(tail), 'event')} newer than the last migrated version {last_migrated} "
                    "(run migrate again)",
                )
            if inner:
                summary.add(
                    "missing_in_pg", key, f"{versions_phrase(inner)} missing from PostgreSQL"
                )
    extra = sorted(v for v in by_version if v not in redis_versions)
    if extra:
        identical = False
        summary.add(
            "extra_in_pg", key, f"PostgreSQL has {versions_phrase(extra)} that Redis does not"
        )
    for e in events:
        ev = e.event
        assert ev is not None
        row = by_version.get(ev.version or 0)
        if row is None:
            continue
        differs = _differences(row, ev)
        if differs:
            identical = False
            summary.add(
                "content_differs",
                key,
                f"version {ev.version} (commit {e.commit_id}): {'; '.join(differs)}",
            )
    return identical


def compare_transformed(
    stream: Stream,
    rows: list[PgEvent],
    summary: VerifySummary,
    rules: Rules,
    migrated: int | None = None,
) -> bool:
    """:func:`compare_stream` against what ``rules`` make of the Redis stream: the versions
    renumbered as migrate numbers them, left-out events expected nowhere. ``migrated`` (commits
    esctl recorded as migrated) tells events not migrated yet from missing ones."""
    if not stream.ok or postgres_problem(stream) is not None:
        return compare_stream(stream, rows, summary, migrated)
    key = stream.key
    sources = []
    for e in stream.by_version():
        assert e.event is not None and e.event.version is not None
        sources.append(SourceEvent(e.commit_id, e.event.version, e.event.text, e.event.data))
    outcome = transform_stream(rules.rules, stream.aggregate_id, sources)
    if outcome.failure is not None:
        summary.add(
            "unmigratable_in_redis",
            key,
            f"{outcome.failure.detail}; migrate quarantines it as transform_failed",
        )
        return False
    summary.events_compared += len(outcome.events)
    by_version = {r.version: r for r in rows}
    expected = {t.version: t for t in outcome.events}
    identical = True
    missing = [t for t in outcome.events if t.version not in by_version]
    tail = [t.version for t in missing if migrated is not None and t.source_version > migrated]
    inner = [t.version for t in missing if t.version not in tail]
    if tail:
        summary.add(
            "not_migrated_new_events",
            key,
            f"{counted(len(tail), 'transformed event')} of Redis versions past the last migrated one "
            f"{migrated} (run migrate again)",
        )
    if inner:
        kind_detail = (
            f"none of its {len(outcome.events)} transformed events is in PostgreSQL"
            if not rows and not migrated
            else f"{versions_phrase(inner)} missing from PostgreSQL"
        )
        summary.add("missing_in_pg", key, kind_detail)
    extra = sorted(v for v in by_version if v not in expected)
    if extra:
        summary.add(
            "extra_in_pg",
            key,
            f"PostgreSQL has {versions_phrase(extra)} that the transformed stream does not",
        )
    identical = not (missing or extra)
    for version, t in expected.items():
        row = by_version.get(version)
        if row is None:
            continue
        differs = _differences(row, parse_event(t.text))
        if differs:
            identical = False
            summary.add(
                "content_differs",
                key,
                f"version {version} (commit {t.commit_id}, Redis version {t.source_version}, "
                f"transformed): {'; '.join(differs)}",
            )
    return identical


def _differences(row: PgEvent, ev: ParsedEvent) -> list[str]:
    """How one PostgreSQL row differs from the Redis event of the same version (empty: not)."""
    differs = []
    if row.event_type != ev.event_type:
        differs.append(f"event_type {row.event_type!r} != {ev.event_type!r}")
    if row.aggregate_type != ev.aggregate_type:
        differs.append(f"aggregate_type {row.aggregate_type!r} != {ev.aggregate_type!r}")
    if row.time_stamp != ev.timestamp:
        differs.append(f"time_stamp {row.time_stamp.isoformat()} != {ev.timestamp_text}")
    if not same_json(row.event_data, ev.data, ev.text):
        differs.append("event_data differs")
    return differs


def fast_identical(
    aggregate_id: str, values: Sequence[bytes | None], theirs: PgStream | None
) -> bool:
    """True when a stream with nothing wrong (:func:`clean_payloads`) matches its PostgreSQL
    events exactly; False means "look closer" (:func:`compare_stream` decides and reports).
    Compares a column at a time (versions, types, time stamps: list equality, in C), then the
    payloads."""
    if theirs is None or len(values) != len(theirs.versions):
        return False
    if fastpath.identical(aggregate_id, values, theirs):
        return True
    clean = clean_payloads(aggregate_id, values)
    if clean is None:
        return False
    aggregate_type, events = clean
    # clean_payloads gives the events in version order, versions 1..n; so are PostgreSQL's
    if (
        aggregate_type != theirs.aggregate_type
        or theirs.versions != [e.version for e in events]
        or theirs.time_stamps != [(e.moment - PG_EPOCH) // MICROSECOND for e in events]
        or theirs.event_types != [event_type_from_type_name(e.type_name) for e in events]
    ):
        return False
    for raw, e in zip(theirs.event_data, events, strict=True):
        if raw[:1] != _JSONB_V1 or not same_json(raw[1:], e.data, e.payload):
            return False
    return True


def _aggregate_pages(client: redisio.RedisClient, opts: VerifyOptions) -> Iterator[list[str]]:
    app = opts.app
    # Not SCAN's TYPE list: a commit list's key of another type is unmigratable (its LRANGE
    # tells), as migrate quarantines it (wrong_key_type).
    pages = redisio.scan_pages(client, layout.commit_list_pattern(app))
    if opts.sample is None:
        for _, keys in pages:
            ids = [layout.aggregate_id_from_commit_list_key(app, k) for k in keys]
            owned = [a for a in ids if opts.shard.owns(a)]
            if owned:
                yield owned
        return
    # Reservoir sample: memory bounded by --sample, every aggregate equally likely.
    sample: Reservoir[str] = Reservoir(opts.sample, random.Random())
    for _, keys in pages:
        found = (layout.aggregate_id_from_commit_list_key(app, k) for k in keys)
        sample.offer(a for a in found if opts.shard.owns(a))
    reservoir = sample.items
    for start in range(0, len(reservoir), opts.page_size):
        yield reservoir[start : start + opts.page_size]


def _utf8_pages(pages: Iterable[list[str]]) -> Iterator[tuple[list[str], list[str]]]:
    """Each page of aggregate ids split into those PostgreSQL can hold and the non-UTF-8 ones."""
    for ids in pages:
        yield [a for a in ids if redisio.is_utf8(a)], [a for a in ids if not redisio.is_utf8(a)]


@dataclass(slots=True)
class _Page:
    """One page as read from both sides."""

    ids: list[str]
    unreadable_ids: list[str]
    """Aggregate ids that are not UTF-8 (not read)."""
    keys: list[str] = field(default_factory=list)
    lists: list[list[str]] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    where: list[str | None] = field(default_factory=list)
    wrong_lists: dict[str, str] = field(default_factory=dict)
    """Commit lists' keys of another Redis type (key -> its type): their lists are empty."""
    wrong_hashes: dict[str, str] = field(default_factory=dict)
    """Event hashes of another Redis type met reading the payloads (key -> its type)."""
    rows: dict[str, PgStream] = field(default_factory=dict)
    migrated: dict[str, int] | None = None
    """Commits esctl recorded as migrated, by aggregate id (esctl.migrated_stream): read with
    the page for --transforms, else afterwards for the aggregates that did not compare
    identical (:func:`_compare_page`); None: not read yet."""

    def stream(self, aggregate_id: str, key: str, commit_ids: list[str], start: int) -> Stream:
        """The stream of one aggregate of the page, its values from ``start`` on, unchecked."""
        end = start + len(commit_ids)
        return build_stream(
            aggregate_id,
            key,
            commit_ids,
            self.values[start:end],
            self.where[start:end],
            wrong_types=self.wrong_hashes or None,
        )


def _read_page(
    client: redisio.RedisClient,
    conn: psycopg.Connection,
    pg_pool: ThreadPoolExecutor,
    opts: VerifyOptions,
    bookkeeping: bool,
    ids_and_unreadable: tuple[list[str], list[str]],
) -> _Page:
    """Read one page's commit lists and payloads from Redis while PostgreSQL (one connection,
    its own thread) answers for the same aggregates; with ``bookkeeping``, also what esctl
    recorded as migrated of each."""
    page = _Page(*ids_and_unreadable)
    if not page.ids:
        return page
    pending = pg_pool.submit(pg_stream_page, conn, opts, page.ids, bookkeeping)
    try:
        page.keys = [layout.commit_list_key(opts.app, a) for a in page.ids]
        page.lists = storereads.commit_lists(client, page.keys, wrong_types=page.wrong_lists)
        page.values, page.where = storereads.fetch_values(
            client,
            opts.app,
            [c for commit_ids in page.lists for c in commit_ids],
            wrong_types=page.wrong_hashes,
        )
    finally:
        page.rows, migrated = pending.result()
    if bookkeeping:
        page.migrated = migrated
    return page


def _compare_page(
    page: _Page,
    opts: VerifyOptions,
    rules: Rules | None,
    summary: VerifySummary,
    migrated_of: Callable[[list[str]], dict[str, int]] | None = None,
) -> None:
    """Compare one page and record what differs. ``migrated_of``: reads esctl's bookkeeping
    of the given aggregates, when the page was read without it: only the aggregates the fast
    comparison did not settle need it, read in one query (esctl.migrated_stream left out of
    the page's query took 1.1 µs of PostgreSQL's CPU per event off verify, measured)."""
    for aggregate_id in page.unreadable_ids:
        summary.aggregates += 1
        summary.add(
            "unmigratable_in_redis",
            redisio.printable(layout.commit_list_key(opts.app, aggregate_id)),
            "the commit list key is not UTF-8: PostgreSQL text cannot hold its "
            "aggregate id, so migrate quarantines it",
        )
    values = page.values
    settled = 0
    looks: list[tuple[str, str, list[str], int]] = []  # (id, key, commit ids, offset)
    offset = 0
    for aggregate_id, key, commit_ids in zip(page.ids, page.keys, page.lists, strict=True):
        end = offset + len(commit_ids)
        if (
            rules is None
            and key not in page.wrong_lists
            and fast_identical(aggregate_id, values[offset:end], page.rows.get(aggregate_id))
        ):
            settled += 1
            summary.events_compared += len(commit_ids)
        else:
            looks.append((aggregate_id, key, commit_ids, offset))
        offset = end
    summary.aggregates += settled
    summary.aggregates_identical += settled
    migrated = page.migrated
    if migrated is None:
        wanted = [a for a, key, _, _ in looks if key not in page.wrong_lists]
        migrated = migrated_of(wanted) if migrated_of is not None and wanted else {}
    for aggregate_id, key, commit_ids, offset in looks:
        summary.aggregates += 1
        if key in page.wrong_lists:
            detail = storereads.wrong_type_detail(key, page.wrong_lists[key], layout.COMMIT_LIST)
            summary.add(
                "unmigratable_in_redis", key, f"migrate quarantines it as wrong_key_type: {detail}"
            )
            continue
        theirs = page.rows.get(aggregate_id)
        rows = theirs.rows(aggregate_id) if theirs is not None else []
        stream = page.stream(aggregate_id, key, commit_ids, offset)
        if rules is not None:
            identical = compare_transformed(
                checked_as_migrate(stream, opts.app),
                rows,
                summary,
                rules,
                migrated.get(aggregate_id),
            )
        else:
            identical = compare_stream(
                checked_as_migrate(stream, opts.app), rows, summary, migrated.get(aggregate_id)
            )
        if identical:
            summary.aggregates_identical += 1


def verify(
    client: redisio.RedisClient,
    opts: VerifyOptions,
    pages: Iterable[list[str]] | None = None,
) -> VerifySummary:
    """Compare every (or a sample of) aggregate(s) between Redis and PostgreSQL. Read-only on
    both sides. ``pages``: the aggregate ids to compare, a page at a time (by default found
    here: SCAN, ``opts.shard`` and ``opts.sample``)."""
    started = time.monotonic()
    rules = None
    if opts.transforms is not None:
        from esctl.transforms import load_rules

        rules = load_rules(opts.transforms)
    summary = VerifySummary(
        sample=opts.sample,
        ignored=frozenset({"not_migrated_new_events"}) if opts.allow_new_events else frozenset(),
        problems_where=opts.problems_file,
        sink=append_problems_file(opts.problems_file),
    )
    conn = pg.connect(opts.pg_dsn, application_name="esctl verify")
    try:
        with pg.translate_errors(opts.pg_dsn):
            pg.require_event_tables(conn, opts.pg_schema, opts.app)
            bookkeeping = pg.state_schema_present(conn)
            conn.commit()
            # Each read is its own transaction either way: autocommit spares the COMMIT's
            # round trip after each (docs/design/distance.md).
            conn.autocommit = True
            # PostgreSQL answers for a page while Redis is read for it (libpq releases the GIL),
            # and several pages are read at once, as many as the round trips call for.
            with ThreadPoolExecutor(1, thread_name_prefix="esctl-verify-pg") as pool:
                # --transforms compares every aggregate the slow way: its bookkeeping comes
                # with the page; without, only that of aggregates not found identical.
                with_page = bookkeeping and rules is not None

                def read(page: tuple[list[str], list[str]]) -> _Page:
                    return _read_page(client, conn, pool, opts, with_page, page)

                def migrated_of(ids: list[str]) -> dict[str, int]:
                    schema, app = opts.pg_schema, opts.app
                    return pool.submit(migrated_commits, conn, schema, app, ids).result()

                ids = _aggregate_pages(client, opts) if pages is None else pages
                ahead = inflight.prefetched(_utf8_pages(ids))
                with contextlib.closing(inflight.ordered_map(read, ahead)) as read_pages:
                    for page in read_pages:
                        _compare_page(
                            page, opts, rules, summary, migrated_of if bookkeeping else None
                        )
            if rules is None and summary.mismatches and bookkeeping:
                summary.migrated_with_transforms = _migrated_with_transforms(conn, opts)
    finally:
        conn.close()
        if summary.sink is not None:
            summary.sink.close()
            summary.sink = None
    summary.elapsed_s = time.monotonic() - started
    return summary


def _migrated_with_transforms(conn: psycopg.Connection, opts: VerifyOptions) -> str | None:
    """When verify without --transforms found differences: the fingerprint (and rules file) of
    transforms the migration of this app used, if it used any (a hint, not a verdict)."""
    try:
        row = conn.execute(
            "SELECT m.transforms, (SELECT r.transforms_file FROM esctl.migration_run r"
            "   WHERE r.target_schema = m.target_schema AND r.application_name ="
            "   m.application_name AND r.transforms = m.transforms"
            "   ORDER BY r.started_at DESC LIMIT 1)"
            "  FROM esctl.migrated_stream m WHERE m.target_schema = %s"
            "   AND m.application_name = %s AND m.transforms IS NOT NULL LIMIT 1",
            (opts.pg_schema, opts.app),
        ).fetchone()
    except psycopg.errors.UndefinedColumn:  # bookkeeping of an esctl from before transforms
        conn.rollback()
        return None
    conn.commit()
    if row is None:
        return None
    return f"{row[0][:16]} ({row[1]})" if row[1] else row[0][:16]


_pages_queue: Any = None
"""In a worker of :func:`verify_parallel`: the queue it takes pages of aggregate ids from."""


def _take_pages_from(pages: Any) -> None:
    global _pages_queue
    _pages_queue = pages


def _queued_pages() -> Iterator[list[str]]:
    while True:
        ids = _pages_queue.get()
        if ids is None:
            return
        yield ids


def _put(pages: Any, item: list[str] | None, futures: list[Future[VerifySummary]]) -> bool:
    """Put ``item`` in the workers' queue once there is room; False (not put) when every
    worker has ended (an error: raised by their results)."""
    while True:
        try:
            pages.put(item, timeout=PUT_EVERY_S)
            return True
        except queue.Full:
            if all(f.done() for f in futures):
                return False


def _verify_in_process(redis: redisio.RedisTarget, opts: VerifyOptions) -> VerifySummary:
    client = redis.connect()
    try:
        return verify(client, opts, _queued_pages())
    finally:
        client.close()


def _hand_out(
    redis: redisio.RedisTarget,
    opts: VerifyOptions,
    pages: Any,
    futures: list[Future[VerifySummary]],
) -> None:
    """Find the aggregates and put their pages in the workers' queue, then one end mark for
    each worker (also after an error here, so that they end; not after a stop, which ends
    their parts)."""
    stopped = False
    client = redis.connect()
    try:
        for ids in _aggregate_pages(client, opts):
            if not _put(pages, ids, futures):
                break
    except KeyboardInterrupt:
        stopped = True
        raise
    finally:
        client.close()
        if not stopped:
            for _ in futures:
                _put(pages, None, futures)


PUT_EVERY_S = 0.2
"""How often :func:`verify_parallel` looks whether its workers still run while it waits for
room in their queue."""


def verify_parallel(
    redis: redisio.RedisTarget, opts: VerifyOptions, *, workers: int
) -> VerifySummary:
    """:func:`verify` over ``workers`` processes (the work is Python CPU: decoding and comparing
    JSON). This process finds the aggregates (SCAN, ``opts.shard``, ``opts.sample``) and hands
    out their pages to whichever worker is ready for one: none waits while another still has
    work (with one sub-shard each, the first to finish did, ~20% of the run on a busy machine),
    and the keyspace is scanned once, not once per worker. Counts add up, problems are
    concatenated."""
    emptied = open_problems_file(opts.problems_file)
    if emptied is not None:
        emptied.close()
    if workers <= 1:
        client = redis.connect()
        try:
            return verify(client, opts)
        finally:
            client.close()
    started = time.monotonic()
    # Bounded: pages wait here, not in memory, while the workers are busy.
    pages: Any = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn").Queue(
        maxsize=2 * workers
    )
    with inflight.worker_processes(workers, _take_pages_from, (pages,)) as pool:
        # The workers are forked at the first submit: before this process connects.
        futures = [pool.submit(_verify_in_process, redis, opts) for _ in range(workers)]
        try:
            _hand_out(redis, opts, pages, futures)
            inflight.wait_for_parts(futures)
        except KeyboardInterrupt:
            # Passed on to the workers: their parts stop at once, not after the pages queued
            # for them. Pages they will not take stay unsent.
            pages.cancel_join_thread()
            inflight.wait_through_stops(futures)
            raise
        results = [f.result() for f in futures]
    pages.close()
    total = VerifySummary(
        sample=opts.sample, ignored=results[0].ignored, problems_where=opts.problems_file
    )
    for r in results:
        total.aggregates += r.aggregates
        total.aggregates_identical += r.aggregates_identical
        total.events_compared += r.events_compared
        for kind, n in r.counts.items():
            total.counts[kind] += n
        total.problems.extend(r.problems[: total.max_problems_listed - len(total.problems)])
        total.migrated_with_transforms = (
            total.migrated_with_transforms or r.migrated_with_transforms
        )
    total.elapsed_s = time.monotonic() - started
    return total
