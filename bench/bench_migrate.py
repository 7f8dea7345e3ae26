"""Benchmark: ``esctl migrate redis-to-pg`` against its baselines, measured in one run.

    python bench/bench_migrate.py [--events 200000] [--rss-events 1000000] [--naive-events 20000]

Prints events/s of
- naive: per event HGET + a parameterised INSERT through the library's
  ``save_event_for_aggregate``, autocommit (on the first --naive-events events, then stopped);
- floor: COPY of the already-decoded rows into the same indexed tables, one connection, server
  default settings, no Redis involved (the bare ingest limit);
- esctl: ``migrate_redis_to_pg`` with its defaults (2 writers, lz4 TOAST compression);
- python path: the same with the compiled hot path (esctl/_fastrows_src/) switched off, as an
  install without a C compiler runs it (its CPU per event is the baseline of the compiled one);
- verify: ``migrate verify`` over the migrated store, with the CLI's default workers;
and the ratios esctl/naive (target >= 10), esctl/floor (target >= 1.2), verify/esctl (>= 1.3),
and esctl's CPU per event over PostgreSQL's backends' (target <= 0.6; issue 17's acceptance)
beside the per-component table (bench/_common.py Meter).
With --rss-events it also runs the CLI as a child process on the base store and on a store of
that many events and prints both peak RSS figures (target: differ by < 25%).

By default it starts throwaway Redis and PostgreSQL servers (esctl.servers) so nothing else on
the machine is touched; --redis-url / --pg-dsn point it at servers of your own (it FLUSHes
that Redis database and creates/drops PostgreSQL databases named esctl_bench_*). The machine
drifts 10-30% over an hour: compare only the ratios printed by one run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import psycopg
import redis
from _common import Meter, add_json_option, bench_servers, database, json_output, write_store

from esctl import codec, fastpath, layout, pg, redisio, storereads
from esctl.migrate import MigrateOptions, migrate_redis_to_pg
from esctl.verify import VerifyOptions, verify_parallel, verify_workers_default

APP = "Bench.Migrate"


def decoded_rows(
    client: redis.Redis,
) -> tuple[list[tuple[str, str]], list[tuple[int, str, str, int, str, str]]]:
    """All committed events decoded, as (aggregate rows, event rows keyed by aggregate index)."""
    aggregates: list[tuple[str, str]] = []
    events: list[tuple[int, str, str, int, str, str]] = []
    for _, keys in redisio.scan_pages(client, layout.commit_list_pattern(APP), type_="list"):
        ids = [layout.aggregate_id_from_commit_list_key(APP, k) for k in keys]
        lists = storereads.commit_lists(client, keys)
        flat = [c for commits in lists for c in commits]
        payloads = iter(storereads.fetch_payloads(client, APP, flat))
        for aggregate_id, commits in zip(ids, lists, strict=True):
            index = len(aggregates)
            aggregate_type = ""
            for _ in commits:
                stored = next(payloads)
                assert stored.value is not None
                _, ev = codec.decode_event(stored.value)
                assert ev.ok and ev.timestamp is not None
                aggregate_type = ev.aggregate_type or ""
                events.append(
                    (
                        index,
                        ev.timestamp.isoformat(),
                        ev.event_type or "",
                        ev.version or 0,
                        ev.text,
                        stored.commit_id,
                    )
                )
            aggregates.append((aggregate_id, aggregate_type))
    return aggregates, events


def run_floor(
    dsn: str, aggregates: list[tuple[str, str]], events: list[tuple[int, str, str, int, str, str]]
) -> float:
    """COPY of decoded rows into aggregate and event, one connection; returns events/s."""
    with psycopg.connect(dsn) as conn:
        pg.ensure_event_store_schema(conn, "public", create=True)
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur:
            with cur.copy(
                "COPY aggregate (aggregate_id, aggregate_type, application_name) FROM STDIN"
            ) as copy:
                for aggregate_id, aggregate_type in aggregates:
                    copy.write_row((aggregate_id, aggregate_type, APP))
            keys = dict(
                cur.execute(
                    "SELECT aggregate_id, aggregate_key FROM aggregate WHERE application_name = %s",
                    (APP,),
                ).fetchall()
            )
            key_of = [keys[a] for a, _ in aggregates]

            def esc(text: str) -> str:
                return (
                    text.replace("\\", "\\\\")
                    .replace("\t", "\\t")
                    .replace("\n", "\\n")
                    .replace("\r", "\\r")
                )

            with cur.copy(
                "COPY event (aggregate_key, time_stamp, version, event_type, event_data) FROM STDIN"
            ) as copy:
                chunk: list[str] = []
                for index, ts, event_type, version, text, _ in events:
                    chunk.append(
                        f"{key_of[index]}\t{ts}\t{version}\t{esc(event_type)}\t{esc(text)}\n"
                    )
                    if len(chunk) >= 10_000:
                        copy.write("".join(chunk))
                        chunk = []
                if chunk:
                    copy.write("".join(chunk))
        conn.commit()
        return len(events) / (time.perf_counter() - started)


def run_naive(client: redis.Redis, dsn: str, limit: int) -> tuple[float, int]:
    """Per event: HGET (partitioned, then legacy) and save_event_for_aggregate, autocommit;
    (events/s, events)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pg.ensure_event_store_schema(conn, "public", create=True)
        done = 0
        started = time.perf_counter()
        for key in client.scan_iter(
            match=layout.commit_list_pattern(APP), _type="list", count=1000
        ):
            for commit_id in client.lrange(key, 0, -1):
                cid = commit_id.decode()
                value = client.hget(layout.event_hash_key(APP, cid), cid)
                if value is None:
                    value = client.hget(layout.legacy_event_hash_key(APP), cid)
                assert value is not None
                _, ev = codec.decode_event(value)
                conn.execute(
                    "SELECT save_event_for_aggregate(%s, %s, %s, %s, %s, %s, %s)",
                    (
                        ev.aggregate_id,
                        ev.aggregate_type,
                        APP,
                        ev.version,
                        ev.timestamp,
                        ev.event_type,
                        ev.text,
                    ),
                )
                done += 1
            if done >= limit:
                break
        return done / (time.perf_counter() - started), done


def run_esctl(client: redis.Redis, dsn: str, *, compiled: bool = True) -> tuple[float, int]:
    """``migrate_redis_to_pg`` with its defaults; ``compiled=False``: without the compiled hot
    path, as an install without a C compiler runs it."""
    saved = fastpath._compiled
    if not compiled:
        fastpath._compiled = None
    try:
        summary = migrate_redis_to_pg(client, MigrateOptions(app=APP, pg_dsn=dsn, init_schema=True))
    finally:
        fastpath._compiled = saved
    assert not summary.problems, summary.problems[:3]
    return summary.events_per_s, summary.events_migrated


def run_verify(redis_url: str, dsn: str) -> float:
    """``migrate verify`` as the CLI runs it by default (verify_workers_default() processes)."""
    summary = verify_parallel(
        redisio.RedisTarget(redis_url),
        VerifyOptions(app=APP, pg_dsn=dsn),
        workers=verify_workers_default(),
    )
    assert summary.mismatches == 0, summary.problems[:3]
    return summary.events_compared / summary.elapsed_s


_REPORT_HWM = (
    "import atexit, sys\n"
    "def report():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            sys.stderr.write('ESCTL_BENCH_' + line)\n"
    "atexit.register(report)\n"
    "from esctl.cli.app import main\n"
    "sys.argv[0] = 'esctl'\n"
    "main()\n"
)


def peak_rss_kb(redis_url: str, dsn: str) -> int:
    """Peak RSS of ``esctl migrate redis-to-pg`` run as a child process: its own VmHWM, read
    as it exits (wait4's ru_maxrss would count the pages it shared with this process before
    exec)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _REPORT_HWM,
            "migrate",
            "redis-to-pg",
            "--app",
            APP,
            "--redis-url",
            redis_url,
            "--pg-dsn",
            dsn,
            "--init-schema",
            "--json",
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"esctl migrate failed with exit code {proc.returncode}: {proc.stderr[-2000:]}"
        )
    for line in proc.stderr.splitlines():
        if line.startswith("ESCTL_BENCH_VmHWM:"):
            return int(line.split()[1])
    raise SystemExit("the child did not report its peak RSS")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--naive-events", type=int, default=20_000)
    parser.add_argument(
        "--rss-events",
        type=int,
        default=0,
        help="also compare peak RSS with a store this big (e.g. 1000000)",
    )
    parser.add_argument("--redis-url")
    parser.add_argument(
        "--pg-dsn", help="an admin DSN: databases are created and dropped through it"
    )
    add_json_option(parser)
    args = parser.parse_args()
    with json_output(args.json, "bench_migrate") as document:
        run(args, document)


def run(args: argparse.Namespace, document: dict[str, object]) -> None:
    with bench_servers(args.redis_url, args.pg_dsn) as (redis_url, admin_dsn):
        client = redis.Redis.from_url(redis_url)
        events = write_store(client, APP, args.events)
        print(f"store: {events:,} events written to {APP}")
        aggregates, rows = decoded_rows(client)
        assert len(rows) == events

        results: dict[str, float] = {}
        meter = Meter([redis_url], admin_dsn)
        with (
            database(admin_dsn) as dsn,
            meter.measure("naive (HGET + save_event_for_aggregate)", dsn) as cost,
        ):
            results["naive"], cost.events = run_naive(client, dsn, args.naive_events)
        with database(admin_dsn) as dsn, meter.measure("floor (COPY of decoded rows)", dsn) as cost:
            results["floor"] = run_floor(dsn, aggregates, rows)
            cost.events += len(rows)
        del rows
        with database(admin_dsn) as dsn:
            with meter.measure("migrate redis-to-pg", dsn) as cost:
                results["esctl"], migrated = run_esctl(client, dsn)
                cost.events += migrated
            assert migrated == events, (migrated, events)
            with meter.measure("migrate verify", dsn) as cost:
                results["verify"] = run_verify(redis_url, dsn)
                cost.events += events
        if fastpath.COMPILED:
            with (
                database(admin_dsn) as dsn,
                meter.measure("migrate, python path", dsn) as cost,
            ):
                results["python path"], migrated = run_esctl(client, dsn, compiled=False)
                cost.events += migrated

        print()
        for name, value in results.items():
            print(f"{name:>8}: {value:>10,.0f} events/s")
        print()
        print(f"esctl / naive : {results['esctl'] / results['naive']:6.2f}x   (target >= 10)")
        print(f"esctl / floor : {results['esctl'] / results['floor']:6.2f}x   (target >= 1.2)")
        print(f"verify / esctl: {results['verify'] / results['esctl']:6.2f}x   (target >= 1.3)")
        cpu_ratio = meter.costs["migrate redis-to-pg"].as_dict()["esctl_per_pg_backends"]
        if cpu_ratio is not None:
            print(f"esctl CPU / PG backends' CPU per event: {cpu_ratio:.2f}x   (target <= 0.6)")
        if "python path" in results:
            compiled_cpu = meter.costs["migrate redis-to-pg"].esctl_s / events
            python_cpu = meter.costs["migrate, python path"].esctl_s / events
            print(
                f"compiled / python path: {results['esctl'] / results['python path']:.2f}x "
                f"events/s, {compiled_cpu / python_cpu:.2f}x esctl CPU per event"
            )
        else:
            print("the compiled hot path is not built: every line ran the python path")
        meter.print_table()
        document.update(
            events=events,
            events_per_s={k: round(v) for k, v in results.items()},
            ratios={
                "esctl/naive": round(results["esctl"] / results["naive"], 3),
                "esctl/floor": round(results["esctl"] / results["floor"], 3),
                "verify/esctl": round(results["verify"] / results["esctl"], 3),
            },
            cost=meter.as_json(),
        )

        if args.rss_events:
            with database(admin_dsn) as dsn:
                small = peak_rss_kb(redis_url, dsn)
            big_events = write_store(client, APP, args.rss_events)
            with database(admin_dsn) as dsn:
                big = peak_rss_kb(redis_url, dsn)
            print()
            print(
                f"peak RSS at {events:,} events: {small / 1024:.0f} MiB; at {big_events:,}: {big / 1024:.0f} MiB "
                f"({(big - small) / small * 100:+.0f}%, target within 25%)"
            )
            document["peak_rss_kib"] = {str(events): small, str(big_events): big}


if __name__ == "__main__":
    main()
