"""The PostgreSQL side of a migration: :class:`BatchWriter` writes one :class:`Batch` per
transaction on its own connection: the events, the aggregates' migrated commit counts, the
quarantine records and the batch's SCAN position, committed together.

New events go in by COPY; when some are there already, through a staging table with ``INSERT …
ON CONFLICT DO NOTHING``, comparing what exists. Why, and how conflicts and rejected values
quarantine one aggregate only: docs/design/migrate.md, "Writing".
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql

from esctl import layout, pg, redisio
from esctl.migrate.options import MigrateOptions
from esctl.migrate.rows import (
    COPY_BINARY_HEADER,
    COPY_BINARY_TRAILER,
    AggregateRows,
    Batch,
    BatchResult,
    Quarantined,
    copy_escape,
    copy_field,
)
from esctl.streams import StreamProblem

MAX_DEADLOCK_RETRIES = 5

STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS esctl_stage (
    aggregate_id text NOT NULL,
    aggregate_type text NOT NULL,
    time_stamp timestamptz NOT NULL,
    version int NOT NULL,
    event_type text NOT NULL,
    event_data jsonb NOT NULL
) ON COMMIT DELETE ROWS
"""

COPY_CHUNK_BYTES = 4_000_000


def _lines(prefix: bytes, rows: list[str] | list[bytes]) -> bytes:
    """An aggregate's COPY rows, each behind ``prefix``: one join, no per-row call. (Text
    rows end in a newline; binary rows need nothing between them.)"""
    if not rows:
        return b""
    if isinstance(rows[0], bytes):
        return prefix.join([b"", *rows])  # (``prefix + prefix.join(rows)`` copies it all twice)
    return prefix.join([b"", *(row.encode("utf-8") for row in rows)])


def _copy(
    cur: psycopg.Cursor[Any], statement: Any, chunks: Iterable[bytes], *, binary: bool
) -> None:
    """COPY data in large buffers (per-row writes measured 15-30% slower); ``binary``: the
    chunks are binary COPY rows (the header and trailer are added here)."""
    if binary:
        statement = sql.SQL("{} (FORMAT BINARY)").format(
            statement if isinstance(statement, sql.Composable) else sql.SQL(statement)
        )
    with cur.copy(statement) as copy:
        buffer: list[bytes] = [COPY_BINARY_HEADER] if binary else []
        size = 0
        for chunk in chunks:
            buffer.append(chunk)
            size += len(chunk)
            if size > COPY_CHUNK_BYTES:
                # a memoryview: psycopg hands it to libpq in slices, which of bytes are copies
                copy.write(memoryview(b"".join(buffer)))
                buffer, size = [], 0
        if binary:
            buffer.append(COPY_BINARY_TRAILER)
        if buffer:
            copy.write(memoryview(b"".join(buffer)))


def _by_format(
    clean: dict[str, AggregateRows],
) -> tuple[list[tuple[str, AggregateRows]], list[tuple[str, AggregateRows]]]:
    """The groups with binary rows (the reader's) and those with text lines (--transforms)."""
    binary: list[tuple[str, AggregateRows]] = []
    text: list[tuple[str, AggregateRows]] = []
    for aggregate_id, group in clean.items():
        if group.rows:
            (binary if isinstance(group.rows[0], bytes) else text).append((aggregate_id, group))
    return binary, text


_EVENT_KEY = struct.Struct(">hiq").pack
_STAGE_FIELDS = struct.Struct(">h").pack


class BatchWriter:
    """One PostgreSQL connection; writes batches, one transaction each.

    Fast path (new events, the bulk of a first run): COPY straight into ``event``; when a row
    exists already, the batch is redone through the staging table, which also compares the
    existing rows' content. Dry runs always take the staging path and roll back.
    """

    def __init__(self, opts: MigrateOptions, run_id: str, *, target_exists: bool = True) -> None:
        self.opts = opts
        self.run_id = run_id
        self.target_exists = target_exists
        """False in a dry run before --init-schema created anything: nothing can be present."""
        self.conn = pg.connect(opts.pg_dsn, application_name="esctl migrate writer")
        self.toast_compression: str | None = None
        with pg.translate_errors(opts.pg_dsn):
            self._set_up_session()
        self._prepare_statements(sql.Identifier(opts.pg_schema))

    def _set_up_session(self) -> None:
        """In one round trip after the BEGIN: the session's TOAST compression when the server
        has that method (PostgreSQL 14 and later; lz4 when built with it; else the server's
        default stays), the staging table, and whether ``event.version`` is ``integer``
        (binary rows carry 4 bytes; the library's schema) rather than ``bigint``, which
        pg.REQUIRED_COLUMNS accepts too."""
        method = self.opts.toast_compression
        with (
            pg.pipelined(self.conn) as sync,
            self.conn.cursor() as toast,
            self.conn.cursor() as cur,
        ):
            if method:
                toast.execute(
                    "SELECT set_config('default_toast_compression', %s, false) FROM pg_settings"
                    " WHERE name = 'default_toast_compression' AND %s = ANY(enumvals)",
                    (method, method),
                )
            cur.execute(STAGE_DDL)
            cur.execute(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = 'event' AND column_name = 'version'",
                (self.opts.pg_schema,),
            )
            self.conn.commit()
            sync()
            row = cur.fetchone()
            was_set = bool(method) and toast.fetchone() is not None
        self.toast_compression = method if was_set else None
        self.version_int4 = row is None or row[0] == "integer"

    def _prepare_statements(self, s: sql.Identifier) -> None:
        self.sql_upsert_aggregates = sql.SQL(
            "INSERT INTO {s}.aggregate (aggregate_id, aggregate_type, application_name)"
            " SELECT u.id, u.type, %(app)s FROM unnest(%(ids)s::text[], %(types)s::text[])"
            "   AS u(id, type)"
            " ON CONFLICT DO NOTHING"
        ).format(s=s)
        # LATERAL + OFFSET 0: an index lookup per id, never a hash of the whole (growing) table.
        self.sql_aggregate_keys = sql.SQL(
            "SELECT u.id, a.aggregate_type, a.aggregate_key"
            "  FROM unnest(%(ids)s::text[]) AS u(id) CROSS JOIN LATERAL ("
            "    SELECT aggregate_type, aggregate_key FROM {s}.aggregate"
            "     WHERE aggregate_id = u.id AND application_name = %(app)s OFFSET 0) a"
        ).format(s=s)
        self.sql_copy_events = sql.SQL(
            "COPY {s}.event (aggregate_key, time_stamp, version, event_type, event_data) FROM STDIN"
        ).format(s=s)
        self.sql_insert_staged = sql.SQL(
            "INSERT INTO {s}.event (aggregate_key, time_stamp, version, event_type, event_data)"
            " SELECT a.aggregate_key, st.time_stamp, st.version, st.event_type, st.event_data"
            "   FROM esctl_stage st JOIN {s}.aggregate a"
            "     ON a.aggregate_id = st.aggregate_id AND a.application_name = %(app)s"
            "    AND a.aggregate_type = st.aggregate_type"
            " ON CONFLICT DO NOTHING"
        ).format(s=s)
        # Staged rows whose version already exists with other content.
        self.sql_conflicts = sql.SQL(
            "SELECT st.aggregate_id, st.version,"
            "       e.event_type <> st.event_type, e.time_stamp <> st.time_stamp,"
            "       e.event_data <> st.event_data"
            "  FROM esctl_stage st"
            "  JOIN {s}.aggregate a ON a.aggregate_id = st.aggregate_id"
            "   AND a.application_name = %(app)s AND a.aggregate_type = st.aggregate_type"
            "  JOIN {s}.event e ON e.aggregate_key = a.aggregate_key AND e.version = st.version"
            " WHERE e.event_type <> st.event_type OR e.time_stamp <> st.time_stamp"
            "    OR e.event_data <> st.event_data"
        ).format(s=s)
        self.sql_present = sql.SQL(
            "SELECT count(*) FROM esctl_stage st"
            "  JOIN {s}.aggregate a ON a.aggregate_id = st.aggregate_id"
            "   AND a.application_name = %(app)s AND a.aggregate_type = st.aggregate_type"
            "  JOIN {s}.event e ON e.aggregate_key = a.aggregate_key AND e.version = st.version"
        ).format(s=s)

    def close(self) -> None:
        self.conn.close()

    def write(self, batch: Batch) -> BatchResult:
        """Write one batch in one transaction (retrying deadlocks). A value PostgreSQL rejects
        quarantines only the aggregate holding it."""
        for attempt in range(MAX_DEADLOCK_RETRIES + 1):
            try:
                return self._write_batch(batch, batch.clean)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                self.conn.rollback()
                if attempt == MAX_DEADLOCK_RETRIES:
                    raise
                time.sleep(0.05 * (attempt + 1))
            except psycopg.errors.DataError:
                self.conn.rollback()
                return self._write_isolating(batch)
        raise AssertionError("unreachable")

    def _write_batch(self, batch: Batch, clean: dict[str, AggregateRows]) -> BatchResult:
        quarantined = list(batch.quarantined)
        with self.conn.cursor() as cur:
            writable = clean
            if self.opts.transforms is not None:
                # An aggregate whose new events were all left out gets no rows (and no
                # aggregate row), only its bookkeeping.
                writable = {a: g for a, g in clean.items() if g.rows}
            inserted, present, rejected = self.write_groups(cur, writable)
            for aggregate_id, (kind, details) in rejected.items():
                quarantined.append(self._quarantine(clean, aggregate_id, kind, details))
            self._finish(cur, batch, clean, quarantined, inserted, present)
        return BatchResult(batch.seq, batch.aggregates, inserted, present, quarantined)

    def write_groups(
        self, cur: psycopg.Cursor[Any], clean: dict[str, AggregateRows]
    ) -> tuple[int, int, dict[str, tuple[str, list[str]]]]:
        """Insert the aggregates' events. Returns (inserted, already present, rejected
        aggregates: id -> (kind, details)). Rejected ones are removed from ``clean``'s
        effect: nothing of theirs stays written."""
        rejected: dict[str, tuple[str, list[str]]] = {}
        if not clean:
            return 0, 0, rejected
        if not self.target_exists:
            return sum(len(g.rows) for g in clean.values()), 0, rejected
        params: dict[str, Any] = {"app": self.opts.app}
        keys, clashes = self._aggregate_keys(cur, clean, params)
        if clashes:
            # Undo the aggregate rows just added for them and try again without them.
            cur.execute("ROLLBACK TO SAVEPOINT esctl_batch")
            return self._write_without(cur, clean, clashes, rejected)
        if not self.opts.dry_run and self._copy_new(cur, clean, keys):
            return sum(len(g.rows) for g in clean.values()), 0, rejected
        inserted, present, conflicts = self._write_staged(cur, clean, params)
        if conflicts:
            if not self.opts.dry_run:
                cur.execute("ROLLBACK TO SAVEPOINT esctl_batch")
            cur.execute("TRUNCATE esctl_stage")
            return self._write_without(cur, clean, conflicts, rejected)
        return inserted, present, rejected

    def _write_without(
        self,
        cur: psycopg.Cursor[Any],
        clean: dict[str, AggregateRows],
        conflicts: dict[str, list[str]],
        rejected: dict[str, tuple[str, list[str]]],
    ) -> tuple[int, int, dict[str, tuple[str, list[str]]]]:
        """:meth:`write_groups` again without the conflicting aggregates, rejected as such."""
        rejected.update({a: ("conflict", d) for a, d in conflicts.items()})
        remaining = {a: g for a, g in clean.items() if a not in conflicts}
        inserted, present, more = self.write_groups(cur, remaining)
        rejected.update(more)
        return inserted, present, rejected

    def _copy_new(
        self, cur: psycopg.Cursor[Any], clean: dict[str, AggregateRows], keys: dict[str, int]
    ) -> bool:
        """COPY the events straight into ``event``; False (and nothing written) when one of
        them is there already, or when binary rows cannot go in as they are (a ``bigint``
        version column: the staging table converts them)."""
        binary, text = _by_format(clean)
        if binary and not self.version_int4:
            return False
        try:  # (the savepoint esctl_copy was set by _aggregate_keys)
            if binary:
                _copy(
                    cur,
                    self.sql_copy_events,
                    (_lines(_EVENT_KEY(5, 8, keys[a]), g.rows) for a, g in binary),
                    binary=True,
                )
            if text:
                _copy(
                    cur,
                    self.sql_copy_events,
                    (_lines(f"{keys[a]}\t".encode(), g.rows) for a, g in text),
                    binary=False,
                )
            return True
        except psycopg.errors.UniqueViolation:
            # Some rows exist already: compare them through the staging table.
            cur.execute("ROLLBACK TO SAVEPOINT esctl_copy")
            return False

    def _aggregate_keys(
        self, cur: psycopg.Cursor[Any], clean: dict[str, AggregateRows], params: dict[str, Any]
    ) -> tuple[dict[str, int], dict[str, list[str]]]:
        """Set the savepoint ``esctl_batch``, add missing aggregate rows (not in a dry run) and
        set the savepoint ``esctl_copy``; return the aggregates' keys and the ids PostgreSQL
        already holds under another aggregate type (the library's read function would mix both
        streams). One round trip: the statements go in one pipeline."""
        params = params | {
            "ids": pg.text_array(list(clean)),
            "types": pg.text_array([g.aggregate_type for g in clean.values()]),
        }
        with pg.pipelined(self.conn) as sync, self.conn.cursor() as lookup:
            cur.execute("SAVEPOINT esctl_batch")
            if not self.opts.dry_run:
                cur.execute(self.sql_upsert_aggregates, params)
            lookup.execute(self.sql_aggregate_keys, params)
            if not self.opts.dry_run:
                cur.execute("SAVEPOINT esctl_copy")
            sync()
            found = lookup.fetchall()
        keys: dict[str, int] = {}
        clashes: dict[str, list[str]] = {}
        # (fetchall: iterating the cursor costs a Python call per row, ~0.4 us each)
        for aggregate_id, aggregate_type, key in found:
            if aggregate_type == clean[aggregate_id].aggregate_type:
                keys[aggregate_id] = key
            else:
                clashes.setdefault(aggregate_id, []).append(
                    f"PostgreSQL already holds aggregate {aggregate_id!r} of {self.opts.app} "
                    f"as type {aggregate_type!r}"
                )
        return keys, clashes

    def _write_staged(
        self, cur: psycopg.Cursor[Any], clean: dict[str, AggregateRows], params: dict[str, Any]
    ) -> tuple[int, int, dict[str, list[str]]]:
        """COPY into the staging table, then insert what is missing. Returns (inserted, already
        present, conflicting aggregates). In a dry run only counts."""
        binary, text = _by_format(clean)
        stage = (
            "COPY esctl_stage (aggregate_id, aggregate_type, time_stamp, version, event_type,"
            " event_data) FROM STDIN"
        )
        if binary:
            _copy(
                cur,
                stage,
                (
                    _lines(_STAGE_FIELDS(6) + copy_field(a) + copy_field(g.aggregate_type), g.rows)
                    for a, g in binary
                ),
                binary=True,
            )
        if text:
            _copy(
                cur,
                stage,
                (
                    _lines(f"{copy_escape(a)}\t{copy_escape(g.aggregate_type)}\t".encode(), g.rows)
                    for a, g in text
                ),
                binary=False,
            )
        # Fresh statistics so the joins below stay index lookups as the tables grow.
        cur.execute("ANALYZE esctl_stage (aggregate_id, aggregate_type, version)")
        staged = sum(len(g.rows) for g in clean.values())
        conflicts: dict[str, list[str]] = {}
        if self.opts.dry_run:
            present = _count(cur, self.sql_present, params)
            inserted = staged - present
        else:
            cur.execute(self.sql_insert_staged, params)
            inserted = cur.rowcount
            present = staged - inserted
        if present:
            for aggregate_id, version, t, ts, d in cur.execute(self.sql_conflicts, params):
                conflicts.setdefault(aggregate_id, []).append(_conflict_detail(version, t, ts, d))
        return inserted, present, conflicts

    def _quarantine(
        self, clean: dict[str, AggregateRows], aggregate_id: str, kind: str, details: list[str]
    ) -> Quarantined:
        group = clean.get(aggregate_id)
        return Quarantined(
            aggregate_id,
            layout.commit_list_key(self.opts.app, aggregate_id),
            len(group.rows) if group else 0,
            [StreamProblem(kind, d) for d in details[:20]],
            group.commits if group else None,
        )

    def _finish(
        self,
        cur: psycopg.Cursor[Any],
        batch: Batch,
        clean: dict[str, AggregateRows],
        quarantined: list[Quarantined],
        inserted: int,
        present: int,
    ) -> None:
        """Bookkeeping in the batch's transaction, then commit (a dry run rolls back)."""
        if self.opts.dry_run:
            self.conn.rollback()
            return
        done = {q.aggregate_id for q in quarantined}
        with pg.pipelined(self.conn):  # one round trip: the statements and the COMMIT
            self._record_migrated(cur, clean, [a for a in clean if a not in done])
            self._record_quarantined(cur, quarantined)
            cur.execute(
                "INSERT INTO esctl.migration_batch (run_id, seq, scan_position, aggregates,"
                " events_migrated, events_already_present, aggregates_quarantined,"
                " events_quarantined) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    self.run_id,
                    batch.seq,
                    batch.position,
                    batch.aggregates,
                    inserted,
                    present,
                    len(quarantined),
                    sum(q.events for q in quarantined),
                ),
            )
            self.conn.commit()

    def _record_migrated(
        self, cur: psycopg.Cursor[Any], clean: dict[str, AggregateRows], ids: list[str]
    ) -> None:
        """The commits migrated of each aggregate written (esctl.migrated_stream)."""
        if not ids:
            return
        if self.opts.transforms is not None:
            self._record_transformed(cur, clean, ids)
            return
        cur.execute(
            "INSERT INTO esctl.migrated_stream AS m (target_schema, application_name,"
            " aggregate_id, aggregate_type, commits, last_commit_id)"
            " SELECT %s, %s, u.id, u.type, u.commits, u.last"
            "   FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[])"
            "     AS u(id, type, commits, last)"
            " ON CONFLICT (target_schema, application_name, aggregate_id) DO UPDATE"
            "   SET commits = excluded.commits, last_commit_id = excluded.last_commit_id,"
            "       aggregate_type = excluded.aggregate_type, updated_at = now()"
            " WHERE m.commits < excluded.commits",
            (
                self.opts.pg_schema,
                self.opts.app,
                pg.text_array(ids),
                pg.text_array([clean[a].aggregate_type for a in ids]),
                pg.int_array([clean[a].commits for a in ids]),
                pg.text_array([clean[a].last_commit_id for a in ids]),
            ),
        )

    def _record_transformed(
        self, cur: psycopg.Cursor[Any], clean: dict[str, AggregateRows], ids: list[str]
    ) -> None:
        """:meth:`_record_migrated` with --transforms: also the fingerprint and where the
        renumbering stands (docs/design/transforms.md, the renumbering contract)."""
        numbering = [clean[a].numbering or (0, 0) for a in ids]
        cur.execute(
            "INSERT INTO esctl.migrated_stream AS m (target_schema, application_name,"
            " aggregate_id, aggregate_type, commits, last_commit_id, transforms,"
            " last_source_version, last_version)"
            " SELECT %s, %s, u.id, u.type, u.commits, u.last, %s, u.source, u.version"
            "   FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[], %s::int[], %s::int[])"
            "     AS u(id, type, commits, last, source, version)"
            " ON CONFLICT (target_schema, application_name, aggregate_id) DO UPDATE"
            "   SET commits = excluded.commits, last_commit_id = excluded.last_commit_id,"
            "       aggregate_type = excluded.aggregate_type, transforms = excluded.transforms,"
            "       last_source_version = excluded.last_source_version,"
            "       last_version = excluded.last_version, updated_at = now()"
            " WHERE m.commits < excluded.commits",
            (
                self.opts.pg_schema,
                self.opts.app,
                self.opts.transforms_fingerprint,
                pg.text_array(ids),
                pg.text_array([clean[a].source_type or clean[a].aggregate_type for a in ids]),
                pg.int_array([clean[a].commits for a in ids]),
                pg.text_array([clean[a].last_commit_id for a in ids]),
                pg.int_array([n[0] for n in numbering]),
                pg.int_array([n[1] for n in numbering]),
            ),
        )

    def _record_quarantined(self, cur: psycopg.Cursor[Any], quarantined: list[Quarantined]) -> None:
        """One esctl.quarantine row per problem of each quarantined aggregate."""
        records = [
            (
                self.run_id,
                self.opts.pg_schema,
                self.opts.app,
                q.aggregate_id,
                p.commit_id if p.commit_id is None else redisio.printable(p.commit_id),
                p.kind,
                redisio.printable(p.detail),
                p.stored,
                q.events,
            )
            for q in quarantined
            for p in q.problems
        ]
        if records:
            cur.executemany(
                "INSERT INTO esctl.quarantine (run_id, target_schema, application_name,"
                " aggregate_id, commit_id, kind, detail, stored_value, events)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                records,
            )

    def _write_isolating(self, batch: Batch) -> BatchResult:
        """Slow path after PostgreSQL rejected a value: one savepoint per aggregate, so only
        the aggregate holding the value is quarantined."""
        quarantined = list(batch.quarantined)
        inserted = present = 0
        with self.conn.cursor() as cur:
            for aggregate_id, group in batch.clean.items():
                if not group.rows:  # all left out by --transforms: bookkeeping only
                    continue
                cur.execute("SAVEPOINT esctl_one")
                try:
                    i, p, rejected = self.write_groups(cur, {aggregate_id: group})
                except psycopg.errors.DataError as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT esctl_one")
                    detail = f"PostgreSQL rejected a value: {str(exc).strip()}"
                    rejected = {aggregate_id: ("rejected_by_postgres", [detail])}
                    i = p = 0
                for rejected_id, (kind, details) in rejected.items():
                    quarantined.append(self._quarantine(batch.clean, rejected_id, kind, details))
                inserted += i
                present += p
                cur.execute("TRUNCATE esctl_stage")
                cur.execute("RELEASE SAVEPOINT esctl_one")
            self._finish(cur, batch, batch.clean, quarantined, inserted, present)
        return BatchResult(batch.seq, batch.aggregates, inserted, present, quarantined)


def _count(cur: psycopg.Cursor[Any], query: Any, params: Any = None) -> int:
    row = cur.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def _conflict_detail(version: int, type_differs: bool, ts_differs: bool, data_differs: bool) -> str:
    what = [
        name
        for name, differs in (
            ("event_type", type_differs),
            ("time_stamp", ts_differs),
            ("event_data", data_differs),
        )
        if differs
    ]
    return f"version {version}: PostgreSQL already holds it with another {', '.join(what)}"
