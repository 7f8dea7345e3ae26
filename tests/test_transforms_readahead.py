"""A transforming migrate reader's pages read ahead (issue 17 with issue 15): each page keeps
the renumbering its own bookkeeping lookup found. Pages are looked up on threads before the
batches ahead of them are written, so the same aggregate (SCAN may return one twice) can be
looked up again, and find a newer numbering, before an earlier page that holds it is checked."""

from __future__ import annotations

from pathlib import Path

import independent_writer as iw
import psycopg
import redis
from test_transforms_migrate import migrate

from esctl import pg, redisio
from esctl.migrate import MigrateOptions
from esctl.migrate.rows import Batch
from esctl.migrate.transformed import TransformingReader
from esctl.transforms import load_rules


def test_a_page_read_ahead_keeps_the_numbering_of_its_own_lookup(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str, tmp_path: Path
) -> None:
    truth = iw.write_store(
        redis_client, app=app_name, aggregates=12, events_per_aggregate=(4, 6), seed=3,
        legacy_share=0.0,
    )  # fmt: skip
    # An aggregate whose second event's type is left out: its versions are renumbered.
    target = next(a for a in truth.clean_aggregates() if a.events[1].event_type not in {
        a.events[0].event_type, a.events[-1].event_type})  # fmt: skip
    left_out = target.events[1].event_type
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(f'[[leave_out]]\nevent_type = "{left_out}"\n')
    code, summary, _ = migrate(redis_test_url, pg_dsn, app_name, "--init-schema",
                               "--transforms", str(rules_file))  # fmt: skip
    assert code == 0, summary

    # One new event the rules keep (appended, and migrated, until one is not left out).
    for seed in range(1, 50):
        (new,) = iw.append_events(
            redis_client, truth, 1, seed=seed, aggregate_ids=[target.aggregate_id]
        )
        if new.event_type != left_out:
            break
        code, summary, _ = migrate(
            redis_test_url, pg_dsn, app_name, "--transforms", str(rules_file)
        )
        assert code == 0, summary
    assert new.event_type != left_out

    opts = MigrateOptions(app=app_name, pg_dsn=pg_dsn, transforms=str(rules_file))
    client = redisio.connect(redis_test_url)
    conn = psycopg.connect(pg_dsn)
    try:
        reader = TransformingReader(
            client, opts, conn, pg.state_schema_present(conn), rules=load_rules(rules_file)
        )
        key = iw.commit_list_key(app_name, target.aggregate_id)
        first = reader._read_page([key])  # a page read ahead ...
        # ... while the batches before it are written: another run migrates the new event
        code, summary, _ = migrate(
            redis_test_url, pg_dsn, app_name, "--transforms", str(rules_file)
        )
        assert code == 0 and summary["events_migrated"] == 1, summary
        with conn.cursor() as cur:
            cur.execute(
                "SELECT last_source_version, last_version FROM esctl.migrated_stream"
                " WHERE application_name = %s AND aggregate_id = %s",
                (app_name, target.aggregate_id),
            )
            written = cur.fetchone()
        conn.commit()
        reader._read_page([key])  # the same aggregate again, in a later page (SCAN's repeat)

        reader._seq, reader._batch = 0, Batch(0, "")
        list(reader._add_read_page(first, ""))
        rows = reader._batch.clean[target.aggregate_id]
        # The first page renumbers the new event from its own lookup: what the run wrote.
        assert rows.numbering == written
        assert len(rows.rows) == 1
    finally:
        conn.close()
        client.close()
