"""``migrate plan``: estimate what a migration of one application will move, how large it will
be in PostgreSQL and how long it will take, before running it.

Read-only on Redis (one SCAN with LLEN, then a random sample read whole); the sample is written
by the migration's own writer into a scratch schema inside a transaction that is rolled back.
Design: docs/design/plan.md.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from esctl import codec, layout, migrate, pg, redisio, storereads
from esctl.defaults import PLAN_SAMPLE as DEFAULT_SAMPLE
from esctl.defaults import PLAN_TRIAL_EVENTS as DEFAULT_TRIAL_EVENTS
from esctl.documents import document
from esctl.sampling import Reservoir
from esctl.streams import (
    Stream,
    StreamProblem,
    build_stream,
    checked_as_migrate,
)
from esctl.transforms import RuleEffect, Rules, SourceEvent, transform_stream

MAX_PROBLEMS_LISTED = 20


@dataclass(frozen=True)
class PlanOptions(pg.PgTarget):
    sample: int = DEFAULT_SAMPLE
    trial: bool = True
    """Write the sample into PostgreSQL (rolled back) to measure size and throughput."""
    trial_events: int = DEFAULT_TRIAL_EVENTS
    """At most this many sampled events (whole aggregates) go into the trial."""
    toast_compression: str | None = "lz4"
    """As ``migrate redis-to-pg --toast-compression`` (its default): it changes the size."""
    page_size: int = 1000
    scan_count: int = 1000
    seed: int | None = None
    transforms: Rules | None = None
    """--transforms: the sample goes through the rules (per-rule effects), the trial writes
    the transformed rows."""


@dataclass
class PlanSummary:
    app: str
    pg_schema: str
    aggregates: int = 0
    events: int = 0
    sample_aggregates: int = 0
    sample_events: int = 0
    exact: bool = False
    """The sample covered every aggregate: the byte figures are measured, not estimated."""
    stored_bytes_estimate: int = 0
    """Payload values as stored in Redis (gzip+base64 where compressed); no key overhead."""
    json_bytes_estimate: int = 0
    """Payload JSON, decompressed, UTF-8."""
    compressed_share: float = 0.0
    """Share of events stored compressed."""
    legacy_share: float = 0.0
    """Share of events stored in the legacy hash."""
    problems_in_sample: dict[str, int] = field(default_factory=dict)
    """Sampled aggregates that migrate would quarantine, per problem kind."""
    aggregates_with_problems_in_sample: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)
    """A few examples, ``{"kind", "key", "detail"}``."""
    target_tables_present: bool | None = None
    trial_aggregates: int = 0
    trial_events: int = 0
    trial_note: str | None = None
    """Why there are no PostgreSQL figures (no trial, nothing clean in the sample, ...)."""
    pg_bytes_estimate: int | None = None
    """Both tables with indexes and TOAST after a first load of every event."""
    pg_event_data_bytes_estimate: int | None = None
    """``pg_column_size(event_data)`` summed: the jsonb as stored (TOAST-compressed)."""
    pg_bytes_per_event: float | None = None
    trial_events_per_s: float | None = None
    """Events/s of the trial end to end: read and decode (the migration's reader path) plus
    write (its writer, one connection), one after the other. The run time is estimated at it."""
    read_events_per_s: float | None = None
    """Events/s of reading and decoding the sample alone."""
    write_events_per_s: float | None = None
    """Events/s of the trial write alone."""
    estimated_seconds: float | None = None
    toast_compression: str | None = None
    elapsed_s: float = 0.0
    transforms: dict[str, Any] | None = None
    """--transforms: the file, its fingerprint, what each rule did to the sample, and the
    sample's events and aggregates after the rules (the estimates above are after them)."""

    def as_dict(self) -> dict[str, Any]:
        return document(
            self,
            "app pg_schema aggregates events sample_aggregates sample_events exact"
            " stored_bytes_estimate json_bytes_estimate compressed_share legacy_share"
            " pg_bytes_estimate pg_event_data_bytes_estimate pg_bytes_per_event"
            " target_tables_present toast_compression trial_aggregates trial_events"
            " trial_events_per_s read_events_per_s write_events_per_s estimated_seconds trial_note"
            " problems_in_sample aggregates_with_problems_in_sample problems transforms elapsed_s",
            compressed_share=round(self.compressed_share, 4),
            legacy_share=round(self.legacy_share, 4),
            pg_bytes_per_event=_tenths(self.pg_bytes_per_event),
            estimated_seconds=_tenths(self.estimated_seconds),
        )


def _tenths(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass
class _SampleFigures:
    events: int = 0
    stored_bytes: int = 0
    json_bytes: int = 0
    compressed: int = 0
    legacy: int = 0
    read_seconds: float = 0.0
    clean: dict[str, migrate.AggregateRows] = field(default_factory=dict)
    """Clean sampled aggregates as the migration would COPY them (for the trial)."""
    effects: list[RuleEffect] = field(default_factory=list)
    """--transforms: what each rule did to the clean sampled aggregates."""
    events_after: int = 0
    """--transforms: the sample's events after the rules (of its clean aggregates)."""
    clean_events: int = 0
    """--transforms: the sample's events in clean aggregates, before the rules."""
    aggregates_left_out: int = 0

    def measure(self, stream: Stream, legacy_key: str) -> None:
        """Add a sampled stream's events: their stored and JSON bytes, how many are
        compressed and how many sit in the legacy hash."""
        for e in stream.events:
            self.events += 1
            if e.stored is None or e.decoded is None:
                continue
            self.stored_bytes += len(e.stored)
            self.json_bytes += len(e.decoded.text.encode("utf-8", "surrogatepass"))
            if e.decoded.compressed is not None:
                self.compressed += 1
            if e.hash_key == legacy_key:
                self.legacy += 1


def _scan(
    client: redisio.RedisClient, opts: PlanOptions, rng: random.Random
) -> tuple[int, int, list[str], list[tuple[str, str]]]:
    """(aggregates, events, reservoir sample of aggregate ids, (key, Redis type) of every key
    named as a commit list that holds another type): one SCAN, pipelined LLEN. Those keys
    count as aggregates (migrate quarantines each) but are not offered to the sample: the
    LLEN found every one of them."""
    app = opts.app
    events = 0
    sample: Reservoir[str] = Reservoir(opts.sample, rng)
    wrong: list[tuple[str, str]] = []
    pattern = layout.commit_list_pattern(app)
    # Not SCAN's TYPE list: a commit list's key of another type is migrate's wrong_key_type.
    for _, keys in redisio.scan_pages(client, pattern, count=opts.scan_count):
        if not keys:
            continue
        lengths = storereads.list_lengths_or_types(client, keys)
        lists = []
        for key, length in zip(keys, lengths, strict=True):
            if isinstance(length, str):
                wrong.append((key, length))
            else:
                events += length
                lists.append(key)
        sample.offer(layout.aggregate_id_from_commit_list_key(app, key) for key in lists)
    return sample.seen + len(wrong), events, sample.items, wrong


def _read_sample(
    client: redisio.RedisClient, opts: PlanOptions, ids: list[str], summary: PlanSummary
) -> _SampleFigures:
    """Read the sampled aggregates the way the migration's reader does (pipelined LRANGE and
    HGETs, then the hot-path decoder) and take their measurements."""
    app = opts.app
    legacy_key = layout.legacy_event_hash_key(app)
    figures = _SampleFigures()
    if opts.transforms is not None:
        figures.effects = RuleEffect.of(opts.transforms.rules)
    for page in redisio.chunked(ids, opts.page_size):
        keys = [layout.commit_list_key(app, a) for a in page]
        started = time.perf_counter()
        lists = storereads.commit_lists(client, keys)
        wrong_hashes: dict[str, str] = {}
        values, where = storereads.fetch_values(
            client, app, [c for ids_ in lists for c in ids_], wrong_types=wrong_hashes
        )
        fast: list[tuple[str, list[str] | list[bytes]] | None] = []
        offset = 0
        for aggregate_id, commit_ids in zip(page, lists, strict=True):
            fast.append(
                migrate.fast_rows(aggregate_id, values[offset : offset + len(commit_ids)])
                if commit_ids
                else None
            )
            offset += len(commit_ids)
        figures.read_seconds += time.perf_counter() - started

        offset = 0
        for aggregate_id, key, commit_ids, rows in zip(page, keys, lists, fast, strict=True):
            end = offset + len(commit_ids)
            if not commit_ids:
                offset = end
                continue  # deleted since the SCAN
            summary.sample_aggregates += 1
            stream = build_stream(
                aggregate_id,
                key,
                commit_ids,
                values[offset:end],
                where[offset:end],
                wrong_types=wrong_hashes,
            )
            offset = end
            figures.measure(stream, legacy_key)
            if rows is None:
                checked_as_migrate(stream, app)
                if stream.ok:  # the reader's general path (clean_rows is the hot path)
                    general = migrate.stream_rows(stream)
                    if isinstance(general, list):
                        rows = (stream.aggregate_type or "", general)
                    else:
                        stream.problems.append(general)
            if rows is not None and opts.transforms is not None:
                rows = _transformed(opts.transforms, stream, figures)
            if rows is not None:
                figures.clean[aggregate_id] = migrate.AggregateRows(
                    rows[0], rows[1], len(commit_ids), commit_ids[-1]
                )
                continue
            _record_problems(summary, key, stream)
    return figures


def _transformed(
    rules: Rules, stream: Stream, figures: _SampleFigures
) -> tuple[str, list[str] | list[bytes]] | None:
    """A clean sampled stream through the rules, as migrate writes it: its aggregate type and
    COPY lines (none when every event was left out), or None when a rule failed (the failure
    joins ``stream.problems``: migrate quarantines the aggregate)."""
    sources = []
    for e in stream.by_version():
        assert e.event is not None and e.event.version is not None
        sources.append(SourceEvent(e.commit_id, e.event.version, e.event.text, e.event.data))
    outcome = transform_stream(rules.rules, stream.aggregate_id, sources, effects=figures.effects)
    if outcome.failure is not None:
        stream.problems.append(outcome.failure.as_problem())
        return None
    figures.clean_events += len(sources)
    figures.events_after += len(outcome.events)
    if not outcome.events:
        figures.aggregates_left_out += 1
    lines = [
        f"{codec.parse_timestamp(t.timestamp).isoformat()}\t{t.version}\t"
        f"{migrate.copy_escape(t.event_type)}\t{migrate.copy_escape(t.text)}\n"
        for t in outcome.events
    ]
    aggregate_type = outcome.events[0].aggregate_type if outcome.events else ""
    return aggregate_type, lines


def _record_wrong_keys(summary: PlanSummary, wrong: list[tuple[str, str]]) -> None:
    """Count the keys named as a commit list that hold another Redis type (every one the
    SCAN found: they are in the sample whatever its size) as aggregates migrate quarantines."""
    for key, kind in wrong:
        summary.sample_aggregates += 1
        stream = Stream(layout.aggregate_id_from_commit_list_key(summary.app, key), key, [])
        detail = storereads.wrong_type_detail(key, kind, layout.COMMIT_LIST)
        stream.problems.append(StreamProblem("wrong_key_type", detail))
        _record_problems(summary, key, stream)


def _record_problems(summary: PlanSummary, key: str, stream: Stream) -> None:
    """Count a sampled stream with problems in ``summary``: once per kind, each listed up to
    :data:`MAX_PROBLEMS_LISTED`."""
    summary.aggregates_with_problems_in_sample += 1
    for kind in sorted({p.kind for p in stream.problems}):
        summary.problems_in_sample[kind] = summary.problems_in_sample.get(kind, 0) + 1
    for p in stream.problems:
        if len(summary.problems) < MAX_PROBLEMS_LISTED:
            summary.problems.append({"kind": p.kind, "key": key, "detail": p.detail})


@dataclass
class _Trial:
    aggregates: int
    events: int
    seconds: float
    event_table_bytes: int
    aggregate_table_bytes: int
    event_data_bytes: int
    toast_compression: str | None


def _table_sizes(conn: psycopg.Connection, schema: str) -> tuple[int, int]:
    """pg_total_relation_size (heap, TOAST, indexes) of ``schema``'s aggregate and event."""
    row = conn.execute(
        "SELECT pg_total_relation_size(%s::regclass), pg_total_relation_size(%s::regclass)",
        (
            sql.Identifier(schema, "aggregate").as_string(conn),
            sql.Identifier(schema, "event").as_string(conn),
        ),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _trial(opts: PlanOptions, clean: dict[str, migrate.AggregateRows]) -> _Trial | str:
    """Write ``clean`` with the migration's writer into a throwaway copy of the tables, measure,
    roll back. Returns the measurements, or why there are none."""
    trial_schema = f"esctl_plan_{uuid.uuid4().hex[:12]}"
    writer_opts = migrate.MigrateOptions(
        app=opts.app,
        pg_dsn=opts.pg_dsn,
        pg_schema=trial_schema,
        toast_compression=opts.toast_compression,
    )
    writer = migrate.BatchWriter(writer_opts, run_id="plan-trial")
    conn = writer.conn
    try:
        with pg.translate_errors(opts.pg_dsn):
            allowed = conn.execute(
                "SELECT has_database_privilege(current_database(), 'CREATE')"
            ).fetchone()
            if not (allowed and allowed[0]):  # a read-only role: do not even try
                conn.rollback()
                return (
                    "no trial: this PostgreSQL user may not create a schema (CREATE on the "
                    "database) for the rolled-back trial; pass --no-trial or use the migrate "
                    "role for PostgreSQL figures"
                )
            try:
                # Created inside the transaction rolled back below: nothing of it stays.
                pg.ensure_event_store_schema(conn, trial_schema, create=True)
            except psycopg.errors.InsufficientPrivilege as exc:
                conn.rollback()
                return (
                    "no trial: this PostgreSQL user may not create a schema for the rolled-back "
                    f"trial ({str(exc).strip()})"
                )
            empty_aggregate, empty_event = _table_sizes(conn, trial_schema)
            events = sum(len(g.rows) for g in clean.values())
            started = time.perf_counter()
            try:
                with conn.cursor() as cur:
                    # The writer's own insert path (fast COPY path on empty tables), without
                    # its bookkeeping and commit.
                    writer.write_groups(cur, clean)
            except psycopg.errors.DataError as exc:
                conn.rollback()
                return f"no trial: PostgreSQL rejected a sampled value ({str(exc).strip()})"
            seconds = time.perf_counter() - started
            aggregate_bytes, event_bytes = _table_sizes(conn, trial_schema)
            row = conn.execute(
                sql.SQL("SELECT coalesce(sum(pg_column_size(event_data)), 0) FROM {}").format(
                    sql.Identifier(trial_schema, "event")
                )
            ).fetchone()
            data_bytes = int(row[0]) if row else 0
            conn.rollback()
        return _Trial(
            aggregates=len(clean),
            events=events,
            seconds=seconds,
            event_table_bytes=max(0, event_bytes - empty_event),
            aggregate_table_bytes=max(0, aggregate_bytes - empty_aggregate),
            event_data_bytes=data_bytes,
            toast_compression=writer.toast_compression,
        )
    finally:
        writer.close()


def plan(client: redisio.RedisClient, opts: PlanOptions) -> PlanSummary:
    """Estimate a migration of ``opts.app`` (see the module docstring). Read-only on Redis;
    leaves PostgreSQL as it was. Raises SchemaIncompatible when the target schema exists but
    migrate would refuse it."""
    started = time.monotonic()
    rng = random.Random(opts.seed)
    summary = PlanSummary(app=opts.app, pg_schema=opts.pg_schema)
    summary.aggregates, summary.events, sampled, wrong = _scan(client, opts, rng)
    summary.exact = len(sampled) >= summary.aggregates - len(wrong)
    _record_wrong_keys(summary, wrong)
    figures = _read_sample(client, opts, sampled, summary)
    summary.sample_events = figures.events
    if figures.events:
        scale = summary.events / figures.events
        summary.stored_bytes_estimate = round(figures.stored_bytes * scale)
        summary.json_bytes_estimate = round(figures.json_bytes * scale)
        summary.compressed_share = figures.compressed / figures.events
        summary.legacy_share = figures.legacy / figures.events
        if figures.read_seconds > 0:
            summary.read_events_per_s = figures.events / figures.read_seconds

    events_after, aggregates_after = summary.events, summary.aggregates
    if opts.transforms is not None:
        events_after, aggregates_after = _transforms_figures(summary, opts.transforms, figures)
    if not opts.trial:
        summary.trial_note = "no trial (--no-trial): no PostgreSQL figures"
        return _finish(summary, started)
    conn = pg.connect(opts.pg_dsn, application_name="esctl plan")
    try:
        with pg.translate_errors(opts.pg_dsn):
            summary.target_tables_present = pg.check_event_store_schema(
                conn, opts.pg_schema
            ).tables_present
            conn.rollback()
    finally:
        conn.close()
    if not figures.clean:
        summary.trial_note = "no trial: no clean aggregate in the sample"
        return _finish(summary, started)

    chosen = _choose_trial(figures, opts, rng)
    if not chosen:
        summary.trial_note = "no trial: the rules leave out every event of the sample"
        return _finish(summary, started)
    result = _trial(opts, chosen)
    if isinstance(result, str):
        summary.trial_note = result
        return _finish(summary, started)
    summary.trial_aggregates = result.aggregates
    summary.trial_events = result.events
    summary.toast_compression = result.toast_compression
    if result.events:
        # Event rows (heap, TOAST, indexes) scale with events, aggregate rows with aggregates.
        per_event = result.event_table_bytes / result.events
        per_aggregate = result.aggregate_table_bytes / result.aggregates
        summary.pg_bytes_estimate = round(
            per_event * events_after + per_aggregate * aggregates_after
        )
        summary.pg_bytes_per_event = (
            summary.pg_bytes_estimate / events_after if events_after else per_event
        )
        summary.pg_event_data_bytes_estimate = round(
            result.event_data_bytes / result.events * events_after
        )
    if result.seconds > 0:
        summary.write_events_per_s = result.events / result.seconds
    if summary.write_events_per_s and summary.read_events_per_s:
        # Reading, decoding and writing one after the other. The migrator overlaps them and
        # writes on two connections, but on a small machine they compete for the same CPUs:
        # measured on a 195k-event store this estimate was ~15% long, while the faster of
        # the two alone (assuming perfect overlap) was ~40% short.
        summary.trial_events_per_s = 1 / (
            1 / summary.read_events_per_s + 1 / summary.write_events_per_s
        )
        summary.estimated_seconds = summary.events / summary.trial_events_per_s
    return _finish(summary, started)


def _choose_trial(
    figures: _SampleFigures, opts: PlanOptions, rng: random.Random
) -> dict[str, migrate.AggregateRows]:
    """Whole clean aggregates with rows, in random order, up to the trial's size."""
    chosen: dict[str, migrate.AggregateRows] = {}
    trial_events = 0
    ids = list(figures.clean)
    rng.shuffle(ids)
    for aggregate_id in ids:
        group = figures.clean[aggregate_id]
        if not group.rows:
            continue  # every event left out by the rules: migrate writes no row
        if chosen and trial_events + len(group.rows) > opts.trial_events:
            break
        chosen[aggregate_id] = group
        trial_events += len(group.rows)
    return chosen


def _transforms_figures(
    summary: PlanSummary, rules: Rules, figures: _SampleFigures
) -> tuple[int, int]:
    """``summary.transforms`` from the sample, and the store's events and aggregates after the
    rules, extrapolated from the sample's clean aggregates (the PostgreSQL estimates use
    them)."""
    clean = len(figures.clean)
    events_ratio = figures.events_after / figures.clean_events if figures.clean_events else 1.0
    aggregates_ratio = (clean - figures.aggregates_left_out) / clean if clean else 1.0
    events_after = round(summary.events * events_ratio)
    aggregates_after = round(summary.aggregates * aggregates_ratio)
    summary.transforms = {
        "file": rules.path,
        "fingerprint": rules.fingerprint,
        "sample_events_before": figures.clean_events,
        "sample_events_after": figures.events_after,
        "sample_aggregates_left_out": figures.aggregates_left_out,
        "events_after_estimate": events_after,
        "aggregates_after_estimate": aggregates_after,
        "rules": [
            {
                "rule": e.rule,
                "kind": e.kind,
                "events_left_out": e.events_left_out,
                "bytes_left_out": e.bytes_left_out,
                "events_changed": e.events_changed,
                "events_added": e.events_added,
                "aggregates_failed": e.aggregates_failed,
            }
            for e in figures.effects
        ],
    }
    return events_after, aggregates_after


def _finish(summary: PlanSummary, started: float) -> PlanSummary:
    summary.elapsed_s = time.monotonic() - started
    return summary
