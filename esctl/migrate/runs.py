"""A migration's runs in esctl.migration_run and esctl.migration_batch: open a new run or
resume the unfinished one (:func:`open_run`, from :func:`resume_point`), add up what a whole run
committed (:func:`run_totals`) and set its status (:func:`set_status`).

How a resume finds its SCAN position, and why a restarted Redis starts the scan over:
docs/design/migrate.md, "Runs".
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson
import psycopg

from esctl import layout, pg, redisio
from esctl.migrate.options import MigrateOptions
from esctl.problems import ProblemTally


@dataclass(frozen=True)
class RunStart:
    """Where an invocation of a run starts: a new run, or one resumed."""

    run_id: str
    position: redisio.ScanPosition
    first_seq: int
    """The seq of the invocation's first batch."""
    resumed: bool


@dataclass(frozen=True)
class RunTotals:
    """What a whole run's batches committed (every invocation of it)."""

    events_migrated: int
    events_already_present: int
    aggregates_quarantined: int
    events_quarantined: int
    problems: ProblemTally


def open_run(conn: psycopg.Connection, opts: MigrateOptions, epoch: str) -> RunStart:
    """Resume the unfinished run of this app, schema and shard (unless ``opts.restart``, which
    abandons it), or record a new one. A dry run records nothing."""
    job = (opts.pg_schema, opts.app, str(opts.shard))
    if opts.dry_run:
        return RunStart("dry-run-" + uuid.uuid4().hex[:12], redisio.ScanPosition(), 1, False)
    if opts.restart:
        conn.execute(
            "UPDATE esctl.migration_run SET status = 'abandoned', finished_at = now()"
            " WHERE target_schema = %s AND application_name = %s AND shard = %s"
            "   AND status <> 'finished'",
            job,
        )
    row = conn.execute(
        "SELECT run_id, transforms FROM esctl.migration_run"
        " WHERE target_schema = %s AND application_name = %s AND shard = %s"
        "   AND status NOT IN ('finished', 'abandoned')"
        " ORDER BY started_at DESC LIMIT 1",
        job,
    ).fetchone()
    if row is not None and row[1] != opts.transforms_fingerprint:
        # Begun with other transforms (what it migrated was checked before): a new run.
        conn.execute(
            "UPDATE esctl.migration_run SET status = 'abandoned', finished_at = now()"
            " WHERE run_id = %s",
            (row[0],),
        )
        row = None
    if row is not None:
        run_id = row[0]
        position, next_seq = resume_point(conn, run_id, epoch)
        conn.execute(
            "UPDATE esctl.migration_run SET status = 'running' WHERE run_id = %s", (run_id,)
        )
        conn.commit()
        return RunStart(run_id, position, next_seq, True)
    run_id = uuid.uuid4().hex
    conn.execute(
        "INSERT INTO esctl.migration_run (run_id, target_schema, application_name, shard,"
        " status, options, transforms, transforms_file)"
        " VALUES (%s, %s, %s, %s, 'running', %s, %s, %s)",
        (
            run_id,
            *job,
            orjson.dumps({"batch_size": opts.batch_size, "writers": opts.writers}).decode(),
            opts.transforms_fingerprint,
            opts.transforms,
        ),
    )
    conn.commit()
    return RunStart(run_id, redisio.ScanPosition(), 1, False)


def resume_point(
    conn: psycopg.Connection, run_id: str, epoch: str
) -> tuple[redisio.ScanPosition, int]:
    """The position reached by the gap-free prefix of committed batches, and the next seq;
    the start of the scan when Redis is not the one the position was taken on (``epoch``)."""
    rows = conn.execute(
        "SELECT seq, scan_position FROM esctl.migration_batch WHERE run_id = %s ORDER BY seq",
        (run_id,),
    ).fetchall()
    position = redisio.ScanPosition()
    expected = 1
    for seq, scan_position in rows:
        if seq != expected:
            break
        position = redisio.ScanPosition.decode(scan_position)
        expected += 1
    if position.epoch != epoch:
        position = redisio.ScanPosition()
    next_seq = (rows[-1][0] + 1) if rows else 1
    return position, next_seq


def run_totals(conn: psycopg.Connection, app: str, run_id: str) -> RunTotals:
    """Events migrated and already present, aggregates and events quarantined, and the problems
    of a whole run (counted by kind, the first few listed), from what its batches committed.
    An aggregate quarantined again after a resume (its batch lay past the resume point) counts
    once. Memory does not grow with the problems: PostgreSQL counts them."""
    tally = ProblemTally(where=quarantine_query([run_id]))
    # The four queries in one pipeline: one round trip.
    with (
        pg.pipelined(conn) as sync,
        conn.cursor() as sums,
        conn.cursor() as quarantined,
        conn.cursor() as kinds,
        conn.cursor() as first,
    ):
        sums.execute(
            "SELECT coalesce(sum(events_migrated), 0), coalesce(sum(events_already_present), 0)"
            "  FROM esctl.migration_batch WHERE run_id = %s",
            (run_id,),
        )
        quarantined.execute(
            "SELECT count(*), coalesce(sum(events), 0) FROM ("
            "  SELECT max(events) AS events FROM esctl.quarantine WHERE run_id = %s"
            "   GROUP BY aggregate_id) q",
            (run_id,),
        )
        kinds.execute(
            "SELECT kind, count(*) FROM ("
            "  SELECT DISTINCT aggregate_id, kind, detail FROM esctl.quarantine WHERE run_id = %s)"
            " q GROUP BY kind",
            (run_id,),
        )
        first.execute(
            "SELECT aggregate_id, kind, detail FROM ("
            "  SELECT DISTINCT ON (aggregate_id, kind, detail) aggregate_id, kind, detail,"
            "         quarantine_id FROM esctl.quarantine WHERE run_id = %s"
            "   ORDER BY aggregate_id, kind, detail, quarantine_id) q"
            " ORDER BY quarantine_id LIMIT %s",
            (run_id, tally.limit),
        )
        sync()
        row = sums.fetchone()
        migrated, present = (int(row[0]), int(row[1])) if row else (0, 0)
        row = quarantined.fetchone()
        aggregates, events = (int(row[0]), int(row[1])) if row else (0, 0)
        for kind, n in kinds.fetchall():
            tally.count(kind, int(n))
        for aggregate_id, kind, detail in first.fetchall():
            tally.listed.append(
                {"kind": kind, "key": layout.commit_list_key(app, aggregate_id), "detail": detail}
            )
    conn.commit()
    return RunTotals(migrated, present, aggregates, events, tally)


def quarantine_query(run_ids: list[str]) -> str:
    """The SQL that lists every problem of these runs, as esctl.quarantine holds them (the
    ``problems_where`` of a migration's summary)."""
    ids = ", ".join(f"'{r}'" for r in run_ids)
    where = f"run_id = {ids}" if len(run_ids) == 1 else f"run_id IN ({ids})"
    return (
        "SELECT DISTINCT aggregate_id, kind, detail FROM esctl.quarantine"
        f" WHERE {where} ORDER BY aggregate_id"
    )


def set_status(conn: psycopg.Connection, run_id: str, status: str) -> None:
    """Record the run's status (``finished`` also sets its end time). A connection that is
    gone leaves the run as it was: still resumable."""
    try:
        conn.rollback()
        conn.execute(
            "UPDATE esctl.migration_run SET status = %s,"
            " finished_at = CASE WHEN %s = 'finished' THEN now() END WHERE run_id = %s",
            (status, status, run_id),
        )
        conn.commit()
    except psycopg.Error:
        pass
