"""Benchmark: ``esctl replay`` throughput against a plain read of the same events.

    python bench/bench_replay.py [--events 200000] [--runs 3] [--redis-url URL] [--pg-dsn DSN]

Builds one store (tests/bulk_store.py: ~6.5 events per aggregate, 30% gzip+base64,
10% legacy layout), migrates it into PostgreSQL (esctl.migrate.migrate_redis_to_pg), subscribes
one read model to its four event types, and prints events/s of

- plain read from PostgreSQL: ``events query --source pg`` over every event (esctl.query.PgQuery,
  the server-side cursor every PostgreSQL read uses), each payload touched;
- ``replay --from pg --all --to projection`` with a trivial projection (an object counting
  events) and ``--checkpoint`` (a transaction and a checkpoint row per 1,000 events);
- ``replay --from pg --all --to queue --yes``: per event MULTI, LPUSH, PUBLISH, EXEC, pipelined;
  every payload gets Newtonsoft's metadata first again (esctl.codec.newtonsoft_metadata_first),
  and the same replay with that step left out shows what it costs;
- plain read from Redis: ``events query`` over every event (esctl.query.RedisQuery);
- ``replay --from redis --all --to queue --yes`` and ``--to projection``;

and each replay's ratio to the plain read of its source, measured in the same run (target
>= 0.5). Medians of --runs runs; the queues are emptied between runs.

By default it starts a throwaway Redis and PostgreSQL through esctl.servers; --redis-url /
--pg-dsn point it at servers of your own (it FLUSHes that Redis database and creates/drops a
PostgreSQL database named esctl_bench_*). The machine drifts 10-30% over an hour: compare only
the ratios printed by one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import redis
from _common import (
    Meter,
    add_json_option,
    bench_servers,
    database,
    json_output,
    write_bulk_store,
)

from esctl import codec, layout, redisio
from esctl.migrate import MigrateOptions, migrate_redis_to_pg
from esctl.projections import Event, ProjectionAdapter, ProjectionContext
from esctl.query import PgQuery, QueryFilters, RedisQuery
from esctl.replay import ReplayOptions, Selection, replay

APP = "Bench.Replay"
ENV = "bench"
SUBSCRIBER = "Bench.ReadModel"
EVENT_TYPES = ("ItemScoreCreated", "ItemScoreUpdated", "OrderPlaced", "OrderLineAdded")


class Trivial:
    """The trivial projection: counts events."""

    def __init__(self) -> None:
        self.events = 0

    def handle(self, event: Event) -> None:
        self.events += 1

    def flush(self, ctx: ProjectionContext) -> None:
        pass


METER = Meter()
"""Set up in run(): the cost of each label, measured around every run of it."""


def median_rate(
    runs: int,
    work: Callable[[], int],
    reset: Callable[[], None] | None = None,
    *,
    label: str = "",
    dsn: str | None = None,
) -> float:
    rates = []
    for _ in range(runs):
        if reset is not None:
            reset()
        with METER.measure(label, dsn) as cost:
            started = time.perf_counter()
            events = work()
            rates.append(events / (time.perf_counter() - started))
            cost.events += events
    return statistics.median(rates)


def plain_read_pg(dsn: str) -> int:
    size = events = 0
    for result in PgQuery(dsn, "public", APP, QueryFilters()):
        size += len(result.payload)
        events += 1
    return events


def plain_read_redis(client: redisio.RedisClient) -> int:
    size = events = 0
    for result in RedisQuery(client, APP, QueryFilters()):
        size += len(result.payload)
        events += 1
    return events


def jsonb_order(work: Callable[[], int]) -> int:
    """``work`` with the metadata reorder of ``--from pg`` left out (its cost, by difference)."""
    with mock.patch.object(codec, "newtonsoft_metadata_first", lambda payload: payload):
        return work()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis-url")
    parser.add_argument(
        "--pg-dsn", help="an admin DSN: a database is created and dropped through it"
    )
    add_json_option(parser)
    args = parser.parse_args()
    with json_output(args.json, "bench_replay") as document:
        run(args, document)


def run(args: argparse.Namespace, document: dict[str, object]) -> None:
    with bench_servers(args.redis_url, args.pg_dsn) as (redis_url, admin_dsn):
        client = redisio.connect(redis_url)
        assert isinstance(client, redis.Redis)
        METER.redis = [client]
        METER.admin_dsn = admin_dsn
        client.flushdb()
        events = write_bulk_store(
            client,
            app=APP,
            aggregates=max(1, args.events * 2 // 13 + args.events // 200),
            events_per_aggregate=(1, 12),
        )
        for event_type in EVENT_TYPES:
            client.sadd(layout.subscribers_key(ENV, event_type), SUBSCRIBER)
        queue_keys = [layout.queue_key(SUBSCRIBER, ENV, t, "published") for t in EVENT_TYPES]

        def empty_queues() -> None:
            client.delete(*queue_keys)

        with database(admin_dsn) as dsn:
            migrated = migrate_redis_to_pg(
                client, MigrateOptions(app=APP, pg_dsn=dsn, init_schema=True)
            )
            assert migrated.events_migrated == events, migrated.problems[:3]
            print(f"store: {events:,} events in Redis and PostgreSQL ({APP})\n")

            def replay_run(source: str, target: str, **extra: Any) -> int:
                options = ReplayOptions(
                    source=source,
                    target=target,
                    app=APP,
                    env=ENV,
                    pg_dsn=dsn,
                    selection=Selection(all_events=True),
                    **extra,
                )
                projection = Trivial() if target == "projection" else None
                summary = replay(
                    options,
                    redis_client=client,
                    projection=ProjectionAdapter(projection, "trivial") if projection else None,
                )
                assert summary.events == events and not summary.problems, summary.as_dict()
                if projection is not None:
                    assert projection.events == events
                if target == "queue":
                    assert summary.notifications == events
                    assert sum(client.llen(k) for k in queue_keys) == events
                return summary.events

            rows: list[tuple[str, float, float | None]] = []
            pg_label = "plain read, PostgreSQL (events query --source pg)"
            pg_read = median_rate(args.runs, lambda: plain_read_pg(dsn), label=pg_label, dsn=dsn)
            rows.append((pg_label, pg_read, None))
            for label, work, reset in (
                (
                    "replay --from pg --to projection --checkpoint",
                    lambda: replay_run("pg", "projection", checkpoint="bench", reset=True),
                    None,
                ),
                (
                    "replay --from pg --to projection --order time",
                    lambda: replay_run("pg", "projection", order="time"),
                    None,
                ),
                ("replay --from pg --to queue", lambda: replay_run("pg", "queue"), empty_queues),
                (
                    "  the same, payloads in jsonb's key order",
                    lambda: jsonb_order(lambda: replay_run("pg", "queue")),
                    empty_queues,
                ),
            ):
                rate = median_rate(args.runs, work, reset, label=label, dsn=dsn)
                rows.append((label, rate, rate / pg_read))
            empty_queues()
            redis_label = "plain read, Redis (events query)"
            redis_read = median_rate(args.runs, lambda: plain_read_redis(client), label=redis_label)
            rows.append((redis_label, redis_read, None))
            for label, work, reset in (
                (
                    "replay --from redis --to queue",
                    lambda: replay_run("redis", "queue"),
                    empty_queues,
                ),
                (
                    "replay --from redis --to projection",
                    lambda: replay_run("redis", "projection"),
                    None,
                ),
            ):
                rate = median_rate(args.runs, work, reset, label=label)
                rows.append((label, rate, rate / redis_read))
            empty_queues()
            for label, rate, ratio in rows:
                shown = f"{ratio:5.2f}x of the plain read" if ratio is not None else ""
                print(f"{label:<52} {rate:>10,.0f} events/s  {shown}")
            worst = min(r for _, _, r in rows if r is not None)
            print(f"\nworst replay / plain read of its source: {worst:.2f}x   (target >= 0.5)")
            METER.print_table()
            document.update(
                events=events,
                runs=args.runs,
                events_per_s={label: round(rate) for label, rate, _ in rows},
                ratios={label: round(r, 3) for label, _, r in rows if r is not None},
                cost=METER.as_json(),
            )


if __name__ == "__main__":
    main()
