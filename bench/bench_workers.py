"""Benchmark: ``esctl migrate redis-to-pg --workers 2`` against ``--workers 1``, as a ratio.

    python bench/bench_workers.py [--events 200000] [--rounds 2] [--cluster]

Writes one store (``tests/bulk_store.py``), then migrates it into a new PostgreSQL database
per run with ``migrate_parallel`` (workers 1, then 2, alternating ``--rounds`` times) and prints
each run's events/s and the ratio of the medians. With ``--cluster`` the store is in a local
three-primary Redis Cluster (tests/cluster.py) instead of a single server.

By default it starts throwaway servers (esctl.servers) so nothing else on the machine is
touched; --pg-dsn points it at an admin DSN of your own (databases esctl_bench_* are created
and dropped). Compare only the ratio printed by one run: the machine drifts over an hour.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import Meter, add_json_option, database, json_output, write_bulk_store

from esctl import redisio, servers
from esctl.migrate import MigrateOptions, migrate_parallel

APP = "Bench.Workers"


def run(redis_url: str, admin_dsn: str, workers: int, events: int, meter: Meter) -> float:
    with (
        database(admin_dsn) as dsn,
        meter.measure(f"migrate redis-to-pg --workers {workers}", dsn) as cost,
    ):
        started = time.perf_counter()
        summary = migrate_parallel(
            redisio.RedisTarget(redis_url),
            MigrateOptions(app=APP, pg_dsn=dsn, init_schema=True),
            workers=workers,
        )
        elapsed = time.perf_counter() - started
        cost.events += summary.events_migrated
    assert summary.events_migrated == events, (summary.events_migrated, events)
    return events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cluster", action="store_true", help="a local 3-primary cluster")
    parser.add_argument("--pg-dsn", help="an admin DSN: databases are created and dropped")
    add_json_option(parser)
    args = parser.parse_args()
    with json_output(args.json, "bench_workers") as document:
        run_all(args, document)


def run_all(args: argparse.Namespace, document: dict[str, object]) -> None:
    stop: list[Callable[[], None]] = []
    try:
        if args.cluster:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from cluster import start_cluster

            local_cluster = start_cluster(3, 0)
            stop.append(local_cluster.stop)
            redis_url = local_cluster.url
        else:
            local_redis = servers.start_redis()
            stop.append(local_redis.stop)
            redis_url = local_redis.url
        admin_dsn = args.pg_dsn
        if admin_dsn is None:
            local_pg = servers.start_postgres(fast=False)
            stop.append(local_pg.stop)
            admin_dsn = local_pg.dsn
        if args.cluster:
            meter = Meter(
                [f"redis://127.0.0.1:{n.port}" for n in local_cluster.primaries()], admin_dsn
            )
        else:
            meter = Meter([redis_url], admin_dsn)
        client = redisio.connect(redis_url)
        events = write_bulk_store(
            client, app=APP, aggregates=max(1, args.events * 2 // 13), events_per_aggregate=(1, 12)
        )
        print(f"store: {events:,} events in {APP} ({'cluster' if args.cluster else 'single'})")
        rates: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.rounds):
            for workers in (1, 2):
                rate = run(redis_url, admin_dsn, workers, events, meter)
                rates[workers].append(rate)
                print(f"--workers {workers}: {rate:>10,.0f} events/s")
        one, two = statistics.median(rates[1]), statistics.median(rates[2])
        print(f"\nworkers 2 / workers 1: {two / one:5.2f}x  (medians of {args.rounds} rounds)")
        meter.print_table()
        document.update(
            events=events,
            cluster=args.cluster,
            events_per_s={"workers 1": round(one), "workers 2": round(two)},
            ratios={"workers 2 / workers 1": round(two / one, 3)},
            cost=meter.as_json(),
        )
    finally:
        for stop_server in reversed(stop):
            stop_server()


if __name__ == "__main__":
    main()
