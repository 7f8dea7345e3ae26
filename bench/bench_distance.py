"""Benchmark: esctl with its servers at a distance, through a latency-adding TCP relay.

    python bench/bench_distance.py [--events 200000] [--messages 100000] [--delay-ms 1]
                                   [--rounds 1] [--only migrate,verify,query,...] [--json]

Starts a throwaway Redis and PostgreSQL (esctl.servers) and, for each delay (0 ms, then
--delay-ms), one relay process per server (bench/relay.py: every chunk delivered "arrival time +
delay" later, in order, so a round trip costs two delays but a pipelined stream pays once).
esctl reaches both servers only through the relays; the benchmark writes the store and fills
the queue directly. Through each pair of relays it runs, in process, as the commands do:

- ``migrate redis-to-pg`` (defaults) into a new database;
- ``migrate verify`` (the CLI's default workers) of that database;
- ``events query`` over every event from Redis (read ahead as the command does), and with
  ``--source pg``;
- ``replay --all --to projection`` (a trivial projection) from PostgreSQL and from Redis;
- ``replay --all --to projection --checkpoint`` from PostgreSQL into the example projection
  (``esctl.projections.event_counts``: a table written in each batch's transaction);
- ``replay --all --to queue`` from PostgreSQL to a subscriber of every event type (the
  library's transaction per event);
- ``queue requeue`` of --messages stuck messages (~400 bytes each);

and prints events/s (messages/s) of each at each delay and the ratio delay/0 ms per command
(acceptance: >= 0.85x for migrate, verify, events query and replay; >= 0.8x for requeue at
1 ms each way). The 0 ms run goes through the same relay code, so the relay's own cost cancels
out of the ratio. Also printed: the CPU per event of esctl, of PostgreSQL's backends and of
Redis (bench/_common.Meter), and the relays' CPU-s per command (the relays share the machine).

--rounds alternates the delays that many times (medians). --only runs (and prints) just the named
commands (the short names of :data:`SHORT`); migrate still runs untimed when a PostgreSQL command
needs its database. One round takes about a minute on a 2-core machine.

The default store is large enough for each command to run for seconds: a run pays a fixed
number of round trips (connections, the schema and run bookkeeping, the first and last pages;
about sixty for a migration), which at 1 ms each way are ~0.15 s: a sixth of a one-second run
over 50,000 events, a few percent of one over 200,000. The ratio is about throughput, so the
runs must be long enough for the fixed part not to decide it; a smaller --events measures
mostly the start-up.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from _common import Meter, add_json_option, database, json_output, proc_cpu, write_store
from bench_requeue import fill, messages

from esctl import layout, queues, redisio, servers
from esctl.demo.domain import EVENT_TYPES
from esctl.migrate import MigrateOptions, migrate_redis_to_pg
from esctl.projections import Event, ProjectionAdapter, ProjectionContext, load_projection
from esctl.query import PgQuery, QueryFilters, RedisQuery
from esctl.replay import ReplayOptions, ReplaySummary, Selection, replay
from esctl.verify import VerifyOptions, verify_parallel, verify_workers_default

APP = "Bench.Distance"
ENV = "bench"
SUBSCRIBER = "Learning.ReportingService.Worker-Bench"
QUEUE_SUBSCRIBER = "Learning.ReplayTarget.Worker-Bench"
"""The subscriber ``replay --to queue`` publishes to (every event type)."""
EVENT_TYPE = "ItemScoreUpdated"
RELAY = Path(__file__).resolve().parent / "relay.py"

COMMANDS = (
    "migrate redis-to-pg",
    "migrate verify",
    "events query",
    "events query --source pg",
    "replay --from pg --to projection",
    "replay --from pg --to projection --checkpoint",
    "replay --from pg --to queue",
    "replay --from redis --to projection",
    "queue requeue",
)
SHORT = {
    "migrate": "migrate redis-to-pg",
    "verify": "migrate verify",
    "query": "events query",
    "query-pg": "events query --source pg",
    "replay-pg": "replay --from pg --to projection",
    "replay-pg-checkpoint": "replay --from pg --to projection --checkpoint",
    "replay-pg-queue": "replay --from pg --to queue",
    "replay-redis": "replay --from redis --to projection",
    "requeue": "queue requeue",
}
"""--only's names for the commands."""
PG_COMMANDS = frozenset(
    (
        "migrate verify",
        "events query --source pg",
        "replay --from pg --to projection",
        "replay --from pg --to projection --checkpoint",
        "replay --from pg --to queue",
    )
)
"""The commands that read the database migrate writes."""
TARGETS = {"queue requeue": 0.8}
"""Acceptance per command (ratio at 1 ms / 0 ms); 0.85 for the others."""


class Trivial:
    """The trivial projection: counts events."""

    def __init__(self) -> None:
        self.events = 0

    def handle(self, event: Event) -> None:
        self.events += 1

    def flush(self, ctx: ProjectionContext) -> None:
        pass


class RelayProcess:
    """bench/relay.py in its own process (so its work does not share this interpreter's GIL)."""

    def __init__(self, target: tuple[str, int], delay_ms: float) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(RELAY),
                "--target",
                f"{target[0]}:{target[1]}",
                "--delay-ms",
                str(delay_ms),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise SystemExit(f"the relay did not start: {line!r}")
        self.port = int(line.split()[-1])

    def cpu(self) -> float:
        got = proc_cpu(self.process.pid)
        return got[0] if got else 0.0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def through(url: str, port: int) -> str:
    """``url`` with its host:port replaced by the relay's (user and password kept)."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


@contextmanager
def relays(redis_url: str, admin_dsn: str, delay_ms: float) -> Iterator[list[RelayProcess]]:
    started = []
    try:
        for url in (redis_url, admin_dsn):
            started.append(RelayProcess(host_port(url), delay_ms))
        yield started
    finally:
        for relay in started:
            relay.stop()


def ping_ms(client: redisio.RedisClient, count: int = 200) -> float:
    """The median round trip of a PING, ms: what the relay really adds (2 x delay + its own)."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.ping()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def one_round(
    delay_ms: float,
    direct_redis: redis.Redis,
    redis_url: str,
    admin_dsn: str,
    events: int,
    values: list[bytes],
    meter: Meter,
    rates: dict[str, dict[float, list[float]]],
    relay_cpu: dict[str, dict[float, float]],
    rtts: dict[float, list[float]],
    only: frozenset[str],
) -> None:
    with relays(redis_url, admin_dsn, delay_ms) as (redis_relay, pg_relay):
        far_redis_url = through(redis_url, redis_relay.port)
        client = redisio.connect(far_redis_url)

        def timed(command: str, dsn: str | None, work: Callable[[], int]) -> None:
            if command not in only:
                if command == COMMANDS[0] and only & PG_COMMANDS:
                    work()  # the database the PostgreSQL commands read
                return
            before = redis_relay.cpu() + pg_relay.cpu()
            with meter.measure(f"{command} @ {delay_ms:g} ms", dsn) as cost:
                started = time.perf_counter()
                done = work()
                elapsed = time.perf_counter() - started
                cost.events += done
            spent = redis_relay.cpu() + pg_relay.cpu() - before
            rates.setdefault(command, {}).setdefault(delay_ms, []).append(done / elapsed)
            per = relay_cpu.setdefault(command, {})
            per[delay_ms] = per.get(delay_ms, 0.0) + spent
            print(f"  {command:<38} {done / elapsed:>10,.0f} /s  ({elapsed:.2f} s)")

        with database(admin_dsn) as direct_dsn:
            dsn = through(direct_dsn, pg_relay.port)

            def migrate() -> int:
                summary = migrate_redis_to_pg(
                    client, MigrateOptions(app=APP, pg_dsn=dsn, init_schema=True)
                )
                assert summary.events_migrated == events, summary.problems[:3]
                return summary.events_migrated

            def verify() -> int:
                summary = verify_parallel(
                    redisio.RedisTarget(far_redis_url),
                    VerifyOptions(app=APP, pg_dsn=dsn),
                    workers=verify_workers_default(),
                )
                assert summary.mismatches == 0 and summary.events_compared == events
                return summary.events_compared

            def query_redis() -> int:
                query = RedisQuery(client, APP, QueryFilters())
                found = sum(1 for _ in query)
                assert found == events, (found, events)
                return query.stats.events

            def query_pg() -> int:
                found = sum(1 for _ in PgQuery(dsn, "public", APP, QueryFilters()))
                assert found == events, (found, events)
                return found

            def replay_all(
                source: str, target: str, projection: ProjectionAdapter | None = None, **more: Any
            ) -> ReplaySummary:
                """``replay --from SOURCE --all --to TARGET``, through the relays."""
                return replay(
                    ReplayOptions(
                        source=source,
                        target=target,
                        app=APP,
                        env=ENV,
                        pg_dsn=dsn,
                        selection=Selection(all_events=True),
                        **more,
                    ),
                    redis_client=client,
                    projection=projection,
                )

            def replay_from(source: str) -> int:
                trivial = Trivial()
                summary = replay_all(source, "projection", ProjectionAdapter(trivial, "trivial"))
                assert summary.events == trivial.events == events, summary.as_dict()
                return summary.events

            def replay_to_queue() -> int:
                # One subscriber for every event type: every event is published (the
                # library's transaction per event), the lists emptied after each run.
                for event_type in EVENT_TYPES:
                    direct_redis.sadd(layout.subscribers_key(ENV, event_type), QUEUE_SUBSCRIBER)
                try:
                    summary = replay_all(
                        "pg", "queue", confirm_over=events + 1, subscribers=(QUEUE_SUBSCRIBER,)
                    )
                finally:
                    for event_type in EVENT_TYPES:
                        direct_redis.srem(layout.subscribers_key(ENV, event_type), QUEUE_SUBSCRIBER)
                        direct_redis.delete(
                            layout.queue_key(QUEUE_SUBSCRIBER, ENV, event_type, "published")
                        )
                published = sum(sum(n.values()) for n in summary.published.values())
                assert published == events, summary.as_dict()
                return published

            def replay_checkpointed() -> int:
                # The example projection (a table of counts, written in each batch's
                # transaction with the checkpoint), a new checkpoint each run.
                summary = replay_all(
                    "pg",
                    "projection",
                    load_projection("esctl.projections.event_counts"),
                    checkpoint=f"bench-{time.monotonic_ns()}",
                )
                assert summary.events == events, summary.as_dict()
                return summary.events

            rtt = ping_ms(client)
            rtts.setdefault(delay_ms, []).append(rtt)
            print(
                f"through the relays at {delay_ms:g} ms each way "
                f"(Redis PING round trip through the relay: {rtt:.2f} ms, median of 200):"
            )
            timed("migrate redis-to-pg", direct_dsn, migrate)
            timed("migrate verify", direct_dsn, verify)
            timed("events query", None, query_redis)
            timed("events query --source pg", direct_dsn, query_pg)
            timed("replay --from pg --to projection", direct_dsn, lambda: replay_from("pg"))
            timed("replay --from pg --to projection --checkpoint", direct_dsn, replay_checkpointed)
            timed("replay --from pg --to queue", direct_dsn, replay_to_queue)
            timed("replay --from redis --to projection", None, lambda: replay_from("redis"))

        if COMMANDS[-1] not in only:
            client.close()
            return
        ref = queues.QueueRef(SUBSCRIBER, ENV, EVENT_TYPE)
        processing, published = ref.key("processing"), ref.key("published")
        direct_redis.sadd(layout.subscribers_key(ENV, EVENT_TYPE), SUBSCRIBER)
        fill(direct_redis, processing, values)
        direct_redis.delete(published)

        def requeue() -> int:
            summary = queues.requeue(
                client, ref, queues.RequeueOptions(selection=queues.Selection())
            )
            assert summary.requeued == len(values) and summary.failed == 0, summary.problems
            return summary.requeued

        timed("queue requeue", None, requeue)
        if direct_redis.llen(published) != len(values):
            raise SystemExit("queue requeue: not every message arrived")
        direct_redis.delete(processing, published, ref.key("dead"))
        # the next round's queue replay must find only its own subscriber
        direct_redis.srem(layout.subscribers_key(ENV, EVENT_TYPE), SUBSCRIBER)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--delay-ms", type=float, default=1.0, help="one-way delay per relay")
    parser.add_argument("--rounds", type=int, default=1, help="0 ms / delay alternations")
    parser.add_argument(
        "--only",
        default=",".join(SHORT),
        help=f"comma-separated commands to run, of: {', '.join(SHORT)} (default: all)",
    )
    add_json_option(parser)
    args = parser.parse_args()
    unknown = [name for name in args.only.split(",") if name not in SHORT]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)} (use {', '.join(SHORT)})")
    with json_output(args.json, "bench_distance") as document:
        run(args, document)


def run(args: argparse.Namespace, document: dict[str, object]) -> None:
    local_redis = servers.start_redis()
    try:
        local_pg = servers.start_postgres(fast=False)
        try:
            direct = redis.Redis.from_url(local_redis.url)
            events = write_store(direct, APP, args.events)
            values = messages(args.messages)
            print(f"store: {events:,} events in {APP}; {len(values):,} stuck messages\n")
            meter = Meter([local_redis.url], local_pg.dsn)
            rates: dict[str, dict[float, list[float]]] = {}
            relay_cpu: dict[str, dict[float, float]] = {}
            rtts: dict[float, list[float]] = {}
            delays = (0.0, args.delay_ms)
            only = frozenset(SHORT[name] for name in args.only.split(","))
            for _ in range(args.rounds):
                for delay in delays:
                    one_round(
                        delay,
                        direct,
                        local_redis.url,
                        local_pg.dsn,
                        events,
                        values,
                        meter,
                        rates,
                        relay_cpu,
                        rtts,
                        only,
                    )
            direct_rtt = ping_ms(direct)
            print(f"\nRedis PING round trip without a relay: {direct_rtt:.3f} ms")
            document["ping_ms"] = {"direct": round(direct_rtt, 3)} | {
                f"relay {d:g} ms": round(statistics.median(v), 3) for d, v in rtts.items()
            }
            report(args, rates, relay_cpu, meter, document, events)
        finally:
            local_pg.stop()
    finally:
        local_redis.stop()


def report(
    args: argparse.Namespace,
    rates: dict[str, dict[float, list[float]]],
    relay_cpu: dict[str, dict[float, float]],
    meter: Meter,
    document: dict[str, object],
    events: int,
) -> None:
    near, far = 0.0, args.delay_ms
    print(
        f"\n{'command (medians of ' + str(args.rounds) + ' rounds)':<38} {'0 ms':>10} "
        f"{f'{far:g} ms':>10} {'ratio':>6} {'target':>6}  relay CPU-s 0 / {far:g} ms"
    )
    figures = {}
    for command in COMMANDS:
        if command not in rates:
            continue
        at_near = statistics.median(rates[command][near])
        at_far = statistics.median(rates[command][far])
        target = TARGETS.get(command, 0.85)
        ratio = at_far / at_near
        verdict = "ok" if ratio >= target else "BELOW"
        cpu = relay_cpu[command]
        print(
            f"{command:<38} {at_near:>10,.0f} {at_far:>10,.0f} {ratio:6.2f} {target:6.2f} "
            f"{verdict:<5}  {cpu[near]:.2f} / {cpu[far]:.2f}"
        )
        figures[command] = {
            "per_s_0ms": round(at_near),
            f"per_s_{far:g}ms": round(at_far),
            "ratio": round(ratio, 3),
            "target": target,
            "relay_cpu_s": {"0ms": round(cpu[near], 3), f"{far:g}ms": round(cpu[far], 3)},
        }
    meter.print_table()
    document.update(
        events=events,
        messages=args.messages,
        delay_ms=far,
        rounds=args.rounds,
        commands=figures,
        cost=meter.as_json(),
    )


if __name__ == "__main__":
    main()
