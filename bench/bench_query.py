"""Benchmark: ``esctl events query`` scan throughput and ``esctl inspect integrity`` memory.

    python bench/bench_query.py [--events 200000] [--rss-events 1000000] [--runs 3] [--pg]

Prints, on one store (tests/bulk_store.py: ~6.5 events per aggregate, 30% gzip+base64,
10% legacy layout), the events/s of
- plain read: SCAN of the commit lists + pipelined LRANGE + HGET of every payload, no decoding
  (redisio.scan_pages, storereads.commit_lists / fetch_values, the reads every query makes);
- ``events query`` (esctl.query.RedisQuery, iterated to the end, reading ahead in a second
  process as the command does on a machine with two CPUs or more) for questions that must
  look at every event: by event type, by a payload field, by time, by a substring, and one
  that matches everything (every result built); then that last one again read in one process
  (``read_ahead=False``), to show what the second process adds;
and each query's ratio to the plain read timed just before it (median over --runs; target
>= 0.5). A last line gives the rate of decoding alone (gunzip + JSON parse of every value,
in memory, one process): what one process spends besides reading.

With --pg it also migrates the store into PostgreSQL and checks that ``--source pg`` gives
the same number of results for each question, with its time.

With --rss-events it runs ``esctl inspect integrity --json`` as a child process on the base
store and on a store of that many events and prints both peak RSS figures (target: differ by
less than 25%).

By default it starts a throwaway Redis (and PostgreSQL with --pg) through esctl.servers;
--redis-url / --pg-dsn point it at servers of your own (it FLUSHes that Redis database and
creates/drops PostgreSQL databases named esctl_bench_*). The machine drifts 10-30% over an
hour: compare only the ratios printed by one run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import orjson
import redis
from _common import Meter, add_json_option, database, json_output, write_store

from esctl import codec, layout, redisio, servers, storereads
from esctl.query import PgQuery, QueryFilters, RedisQuery, Selectors

APP = "Bench.Query"

QUESTIONS: dict[str, Selectors] = {
    "--type OrderPlaced": Selectors(types=("OrderPlaced",)),
    "--where 'Score>=7'": Selectors(where=("Score>=7",)),
    "--since 2020-01-01 --until 2021-01-01": Selectors(since="2020-01-01", until="2021-01-01"),
    "--where 'Lines.Description~Füller'": Selectors(where=("Lines.Description~Füller",)),
    "(no filter: every event)": Selectors(),
}
ONE_PROCESS = "(no filter), read in one process"
"""The last question again without the read-ahead child: what the second process adds."""


def plain_read(client: redisio.RedisClient) -> int:
    """SCAN + LRANGE + HGET of every committed event, values not looked at."""
    events = 0
    for _, keys in redisio.scan_pages(client, layout.commit_list_pattern(APP), type_="list"):
        lists = storereads.commit_lists(client, keys)
        flat = [c for ids in lists for c in ids]
        values, _ = storereads.fetch_values(client, APP, flat)
        events += len(values)
    return events


def run_query(
    client: redisio.RedisClient, filters: QueryFilters, *, read_ahead: bool | None = None
) -> tuple[int, int]:
    """(events scanned, results) of one full query (read ahead in a second process as the
    command does by default, unless ``read_ahead`` is False)."""
    query = RedisQuery(client, APP, filters, read_ahead=read_ahead)
    matched = sum(1 for _ in query)
    return query.stats.events, matched


def rate_of(work: Callable[[], int]) -> float:
    started = time.perf_counter()
    events = work()
    return events / (time.perf_counter() - started)


def decode_only_rate(client: redisio.RedisClient, runs: int) -> float:
    """Events/s of decoding alone: every stored value (read beforehand) gunzipped when
    compressed and parsed, as the query path does: the floor under any query that cannot rule
    events out before decoding them."""
    values: list[bytes] = []
    for _, keys in redisio.scan_pages(client, layout.commit_list_pattern(APP), type_="list"):
        lists = storereads.commit_lists(client, keys)
        found, _ = storereads.fetch_values(client, APP, [c for ids in lists for c in ids])
        values.extend(v for v in found if v is not None)

    def work() -> int:
        for value in values:
            orjson.loads(codec.gunzip_base64(value) if value.startswith(b"H4sI") else value)
        return len(values)

    return statistics.median(rate_of(work) for _ in range(runs))


_MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_rss_kb(redis_url: str) -> int:
    """Peak RSS of ``esctl inspect integrity`` run as a child process.

    Measured through a small intermediate interpreter: a child forked straight from this
    (large) process would report this process's RSS as its peak (the pages it shares until
    exec count as its own), whatever the command itself uses."""
    command = [
        sys.executable,
        "-m",
        "esctl",
        "inspect",
        "integrity",
        "--app",
        APP,
        "--redis-url",
        redis_url,
        "--json",
        "--no-progress",
    ]
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, check=True
    )
    code, peak = (int(x) for x in result.stdout.split())
    if code != 0:
        raise SystemExit(f"esctl inspect integrity exited with {code} (a clean store expected)")
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--rss-events",
        type=int,
        default=0,
        help="also compare inspect integrity's peak RSS with a store this big (e.g. 1000000)",
    )
    parser.add_argument("--pg", action="store_true", help="also compare with --source pg")
    parser.add_argument("--redis-url")
    parser.add_argument(
        "--pg-dsn", help="an admin DSN: databases are created and dropped through it"
    )
    add_json_option(parser)
    args = parser.parse_args()
    with json_output(args.json, "bench_query") as document:
        run(args, document)


def run(args: argparse.Namespace, document: dict[str, object]) -> None:
    started: list[servers.LocalRedis | servers.LocalPostgres] = []
    try:
        redis_url = args.redis_url
        if redis_url is None:
            local_redis = servers.start_redis()
            started.append(local_redis)
            redis_url = local_redis.url
        client = redisio.connect(redis_url)
        assert isinstance(client, redis.Redis)
        events = write_store(client, APP, args.events)
        print(f"store: {events:,} events written to {APP}")

        # Each query is timed right after a plain read, and compared with it: the machine's
        # speed drifts, a ratio of neighbours does not.
        plain_rates: list[float] = []
        labels = [*QUESTIONS, ONE_PROCESS]
        rates: dict[str, list[float]] = {label: [] for label in labels}
        ratios: dict[str, list[float]] = {label: [] for label in labels}
        results: dict[str, int] = {}
        meter = Meter([redis_url])
        for _ in range(args.runs):
            for label in labels:
                with meter.measure("plain read (no decoding)") as cost:
                    plain = rate_of(lambda: plain_read(client))
                    cost.events += events
                filters = QUESTIONS.get(label, Selectors()).filters()

                def work(filters: QueryFilters = filters, label: str = label) -> int:
                    scanned, matched = run_query(
                        client, filters, read_ahead=False if label == ONE_PROCESS else None
                    )
                    results[label] = matched
                    return scanned

                with meter.measure(f"events query {label}") as cost:
                    rate = rate_of(work)
                    cost.events += events
                plain_rates.append(plain)
                rates[label].append(rate)
                ratios[label].append(rate / plain)
        median = statistics.median
        print(f"\n{'plain read (no decoding)':<46} {median(plain_rates):>9,.0f} events/s")
        for label in labels:
            print(
                f"{'events query ' + label:<46} {median(rates[label]):>9,.0f} events/s  "
                f"{median(ratios[label]):5.2f}x  ({results[label]:,} results)"
            )
        decode = decode_only_rate(client, args.runs)
        print(
            f"{'(gzip+base64 and JSON parse of every value, in memory)':<46} {decode:>9,.0f} events/s"
        )
        print("\nratio = query events/s / plain read events/s, median of the runs (target >= 0.5)")
        meter.print_table()
        document.update(
            events=events,
            runs=args.runs,
            events_per_s={"plain read": round(median(plain_rates))}
            | {f"events query {label}": round(median(rates[label])) for label in labels},
            ratios={f"events query {label}": round(median(ratios[label]), 3) for label in labels},
            decode_only_events_per_s=round(decode),
            results={label: results[label] for label in labels},
        )

        if args.pg:
            from esctl.migrate import MigrateOptions, migrate_redis_to_pg

            admin_dsn = args.pg_dsn
            if admin_dsn is None:
                local_pg = servers.start_postgres(fast=False)
                started.append(local_pg)
                admin_dsn = local_pg.dsn
            meter.admin_dsn = admin_dsn
            pg_seconds: dict[str, float] = {}
            with database(admin_dsn) as dsn:
                summary = migrate_redis_to_pg(
                    client, MigrateOptions(app=APP, pg_dsn=dsn, init_schema=True)
                )
                assert summary.events_migrated == events, summary.problems[:3]
                print()
                for label, selectors in QUESTIONS.items():
                    filters = selectors.filters()
                    with meter.measure(f"events query --source pg {label}", dsn) as cost:
                        t0 = time.perf_counter()
                        matched = sum(1 for _ in PgQuery(dsn, "public", APP, filters))
                        elapsed = time.perf_counter() - t0
                        cost.events += events
                    pg_seconds[label] = round(elapsed, 3)
                    same = "same" if matched == results[label] else "DIFFERENT"
                    print(
                        f"{'--source pg ' + label:<42} {elapsed:8.2f} s  "
                        f"{matched:,} results ({same} as Redis)"
                    )
                meter.print_table([f"events query --source pg {label}" for label in QUESTIONS])
                document["source_pg_seconds"] = pg_seconds

        document["cost"] = meter.as_json()

        if args.rss_events:
            small = peak_rss_kb(redis_url)
            big_events = write_store(client, APP, args.rss_events)
            big = peak_rss_kb(redis_url)
            print(
                f"\ninspect integrity peak RSS at {events:,} events: {small / 1024:.0f} MiB; at "
                f"{big_events:,}: {big / 1024:.0f} MiB ({(big - small) / small * 100:+.0f}%, "
                "target within 25%)"
            )
            document["inspect_integrity_peak_rss_kib"] = {str(events): small, str(big_events): big}
    finally:
        for server in reversed(started):
            server.stop()


if __name__ == "__main__":
    main()
