"""The migrate reader's pages read ahead (issue 17): reading the next pages' commit lists and
payloads on threads while a page is checked gives exactly the batches of reading them in turn
(the same aggregates, rows, problems, SCAN positions and counts), with pages small and large
against the batch size, on a first run and on one that resumes from what was migrated."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import independent_writer as iw
import psycopg
import redis
from test_migrate import migrate, write_defect_store

from esctl import pg, redisio
from esctl.migrate import MigrateOptions
from esctl.migrate.reader import Reader
from esctl.migrate.rows import Batch


def batches(url: str, dsn: str, opts: MigrateOptions) -> tuple[list[tuple[Any, ...]], int, int]:
    """Every batch of one reader's pass as comparable tuples; its unchanged and seen counts."""
    client = redisio.connect(url)
    conn = psycopg.connect(dsn)
    try:
        reader = Reader(client, opts, conn, pg.state_schema_present(conn))
        start = replace(redisio.ScanPosition(), epoch=redisio.scan_epoch(client))
        seen = [describe(b) for b in reader.batches(start, 0)]
        return seen, reader.unchanged, reader.commits_seen
    finally:
        conn.close()
        client.close()


def describe(batch: Batch) -> tuple[Any, ...]:
    return (
        batch.seq,
        batch.position,
        batch.aggregates,
        batch.events,
        sorted(
            (a, g.aggregate_type, g.rows, g.commits, g.last_commit_id)
            for a, g in batch.clean.items()
        ),
        [
            (q.aggregate_id, q.events, [p.kind for p in q.problems], q.commits)
            for q in batch.quarantined
        ],
    )


def test_pages_read_ahead_give_the_batches_of_pages_read_in_turn(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = write_defect_store(redis_client, app_name)
    for batch_size in (7, 40, 10_000):  # pages of many batches (fetched in chunks), of few, of one
        opts = MigrateOptions(app=app_name, pg_dsn=pg_dsn, batch_size=batch_size, scan_count=25)
        # --rate reads pages in turn (its pacing is per read); too high to slow anything
        in_turn = batches(redis_test_url, pg_dsn, replace(opts, rate=1e9))
        ahead = batches(redis_test_url, pg_dsn, opts)
        assert ahead == in_turn
        assert sum(b[3] for b in ahead[0]) > 0 and any(b[5] for b in ahead[0])

    # A later run: what was migrated is looked up per page, new events are read from the last
    # migrated commit, an unchanged aggregate is counted, a shortened list is quarantined.
    migrate(redis_test_url, pg_dsn, app_name, batch_size=50, init_schema=True)
    clean = truth.clean_aggregates()
    iw.append_events(redis_client, truth, 5, aggregate_ids=[a.aggregate_id for a in clean[:2]])
    redis_client.rpop(clean[2].list_key)
    for batch_size in (3, 10_000):
        opts = MigrateOptions(app=app_name, pg_dsn=pg_dsn, batch_size=batch_size, scan_count=25)
        in_turn = batches(redis_test_url, pg_dsn, replace(opts, rate=1e9))
        ahead = batches(redis_test_url, pg_dsn, opts)
        assert ahead == in_turn
        assert ahead[1] > 0  # unchanged aggregates were counted
        kinds = {k for b in ahead[0] for q in b[5] for k in q[2]}
        assert "commit_list_shrunk" in kinds
