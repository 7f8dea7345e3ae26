"""Benchmark: reading and migrating from a three-primary Redis Cluster against one server, and
esctl's per-node pipelines against redis-py's ClusterPipeline, as ratios of one run.

    python bench/bench_cluster.py [--events 100000] [--rounds 2] [--pg-dsn DSN] [--what scan]

Writes the same bulk store (``tests/bulk_store.py``, PERF-NOTES' shape) into a throwaway
single server and a throwaway local cluster (tests/cluster.py), then, alternating ``--rounds``
times, measures
- read: the Redis side of a migration alone (SCAN of the commit lists, LRANGE, HGET of every
  payload through ``redisio``), events/s;
- migrate: ``migrate_redis_to_pg`` with its defaults into a new database, events/s;
- scan: ``redisio.scan_pages`` alone over the commit lists (one hash tag: one node) and over
  the event hashes (every node), keys/s; the cluster's two setups differ only in pipelines,
  so compare this one across code versions (a quiet cluster's SCAN must not get slower);
each on the single server, on the cluster with the per-node path (``esctl.redisio.pipelines.BY_NODE_PIPELINES``,
the default) and on the cluster through redis-py's ClusterPipeline (the path before it), and
prints the ratios of the medians. Compare only ratios printed by one run: the machine drifts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import Meter, add_json_option, database, json_output, write_bulk_store

from esctl import layout, redisio, servers, storereads
from esctl.migrate import MigrateOptions, migrate_redis_to_pg
from esctl.redisio import pipelines as redisio_pipelines

APP = "Bench.Cluster"
SETUPS = ("single", "cluster", "cluster-old")
"""cluster-old: the cluster through redis-py's ClusterPipeline (BY_NODE_PIPELINES off)."""
WHAT = ("read", "migrate", "scan")


def read_all(client: redisio.RedisClient) -> int:
    """Everything a migration reads from Redis, read and thrown away; returns events read."""
    events = 0
    pattern = layout.commit_list_pattern(APP)
    for _, keys in redisio.scan_pages(client, pattern, type_="list"):
        lists = storereads.commit_lists(client, keys)
        flat = [commit for commits in lists for commit in commits]
        for start in range(0, len(flat), 10_000):
            values, _ = storereads.fetch_values(client, APP, flat[start : start + 10_000])
            assert all(v is not None for v in values)
        events += len(flat)
    return events


def scan_all(client: redisio.RedisClient) -> int:
    """SCAN the commit lists and the event hashes; returns the keys handed out."""
    keys = 0
    for pattern, type_ in (
        (layout.commit_list_pattern(APP), "list"),
        (layout.event_hash_pattern(APP), "hash"),
    ):
        for _, page in redisio.scan_pages(client, pattern, type_=type_):
            keys += len(page)
    return keys


def measure(setup: str, url: str, admin_dsn: str, events: int, what: str, meter: Meter) -> float:
    redisio_pipelines.BY_NODE_PIPELINES = setup != "cluster-old"
    client = redisio.connect(url)
    label = f"{what} {setup}"
    try:
        if what == "scan":
            with meter.measure(label) as cost:
                started = time.perf_counter()
                keys = scan_all(client)
                cost.events += keys
            return keys / (time.perf_counter() - started)
        if what == "read":
            with meter.measure(label) as cost:
                started = time.perf_counter()
                assert read_all(client) == events
                cost.events += events
            return events / (time.perf_counter() - started)
        with database(admin_dsn) as dsn, meter.measure(label, dsn) as cost:
            started = time.perf_counter()
            summary = migrate_redis_to_pg(
                client, MigrateOptions(app=APP, pg_dsn=dsn, init_schema=True)
            )
            elapsed = time.perf_counter() - started
            cost.events += summary.events_migrated
        assert summary.events_migrated == events, (summary.events_migrated, events)
        return events / elapsed
    finally:
        client.close()
        redisio_pipelines.BY_NODE_PIPELINES = True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pg-dsn", help="an admin DSN: databases are created and dropped")
    parser.add_argument(
        "--what",
        default=",".join(WHAT),
        help=f"what to measure, comma-separated (default {','.join(WHAT)})",
    )
    add_json_option(parser)
    args = parser.parse_args()
    measured = [w for w in args.what.split(",") if w]
    if not set(measured) <= set(WHAT):
        parser.error(f"--what takes {', '.join(WHAT)}")
    with json_output(args.json, "bench_cluster") as document:
        run(args, measured, document)


def run(args: argparse.Namespace, measured: list[str], document: dict[str, object]) -> None:

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from cluster import start_cluster

    stop: list[Callable[[], None]] = []
    try:
        single = servers.start_redis()
        stop.append(single.stop)
        cluster = start_cluster(3, 0)
        stop.append(cluster.stop)
        admin_dsn = args.pg_dsn
        if admin_dsn is None:
            local_pg = servers.start_postgres(fast=False)
            stop.append(local_pg.stop)
            admin_dsn = local_pg.dsn
        urls = {"single": single.url, "cluster": cluster.url, "cluster-old": cluster.url}
        # One meter per Redis deployment (the cluster's: INFO cpu of every primary).
        single_meter = Meter([single.url], admin_dsn)
        cluster_meter = Meter(
            [f"redis://127.0.0.1:{n.port}" for n in cluster.primaries()], admin_dsn
        )
        meters = {"single": single_meter, "cluster": cluster_meter, "cluster-old": cluster_meter}
        aggregates = max(1, args.events * 2 // 13)
        counts = {
            write_bulk_store(
                redisio.connect(url), app=APP, aggregates=aggregates, events_per_aggregate=(1, 12)
            )
            for url in (single.url, cluster.url)
        }
        assert len(counts) == 1, counts
        events = counts.pop()
        print(f"store: {events:,} events in {APP}, on one server and on a 3-primary cluster")
        rates: dict[tuple[str, str], list[float]] = {}
        for round_number in range(args.rounds):
            for what in measured:
                for setup in SETUPS:
                    rate = measure(setup, urls[setup], admin_dsn, events, what, meters[setup])
                    rates.setdefault((what, setup), []).append(rate)
                    unit = "keys/s" if what == "scan" else "events/s"
                    print(f"round {round_number + 1} {what:8} {setup:12} {rate:>10,.0f} {unit}")
        print(f"\nmedians of {args.rounds} rounds:")
        for what in measured:
            med = {s: statistics.median(rates[(what, s)]) for s in SETUPS}
            print(
                f"{what:8} cluster / single {med['cluster'] / med['single']:5.2f}x   "
                f"cluster-old / single {med['cluster-old'] / med['single']:5.2f}x   "
                f"cluster / cluster-old {med['cluster'] / med['cluster-old']:5.2f}x"
            )
        single_meter.print_table()
        cluster_meter.print_table()
        document.update(
            events=events,
            rounds=args.rounds,
            per_s={
                f"{w} {s}": round(statistics.median(rates[(w, s)]))
                for w in measured
                for s in SETUPS
            },
            cost=single_meter.as_json() + cluster_meter.as_json(),
        )
    finally:
        for stop_server in reversed(stop):
            stop_server()


if __name__ == "__main__":
    main()
