"""Benchmark: what TLS costs esctl, and what its raw fast paths save over TLS.

    python bench/bench_tls.py [--events 100000] [--runs 3] [--cluster]

Starts its own servers (esctl.servers): a plain Redis and a TLS-only Redis (``--port 0
--tls-port``, certificates of a throwaway CA made here), a plain PostgreSQL and one with
``ssl = on`` that refuses connections without SSL; writes the same bulk store (tests/
bulk_store.py) into both Redis servers (with --cluster: a plain and a TLS-only (``tls-cluster
yes``) three-primary Redis Cluster instead); then, per workload, three configurations:

- plain: ``redis://`` and PostgreSQL ``sslmode=disable`` (the baseline);
- TLS, raw: ``rediss://...?ssl_ca_certs=CA`` and ``sslmode=verify-full sslrootcert=CA``, with
  esctl's raw RESP connections speaking TLS themselves (``esctl.redisio.resp.RAW_TLS``, the
  default);
- TLS, redis-py: the same servers with ``RAW_TLS`` off, so pipelined reads and the publisher
  go through redis-py's pipelines (what esctl did over TLS before; on a cluster, redis-py's
  cluster pipeline instead of esctl's per-node pipelines).

Workloads: ``migrate redis-to-pg`` (into a new database each run), ``replay --from redis --to
queue`` (the publisher's fast path; queues emptied between runs) and a plain read of every
event (``events query``). Prints events/s, the ratio to the plain baseline measured in the
same run, and CPU microseconds per event of esctl (this process and its reaped children: the
read-ahead process), Redis (every node) and PostgreSQL (postmaster with its reaped backends). Medians of
--runs runs. The machine drifts 10-30% over an hour: compare only the ratios of one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from _common import database, write_bulk_store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster import start_cluster
from tls_servers import make_pki, start_tls_cluster

from esctl import layout, redisio, servers
from esctl.migrate import MigrateOptions, migrate_redis_to_pg
from esctl.query import QueryFilters, RedisQuery
from esctl.redisio import resp
from esctl.replay import ReplayOptions, Selection, replay

APP = "Bench.Tls"
ENV = "bench"
SUBSCRIBER = "Bench.ReadModel"
EVENT_TYPES = ("ItemScoreCreated", "ItemScoreUpdated", "OrderPlaced", "OrderLineAdded")
QUEUE_KEYS = [layout.queue_key(SUBSCRIBER, ENV, t, "published") for t in EVENT_TYPES]
TICKS = os.sysconf("SC_CLK_TCK")


class Target(NamedTuple):
    name: str
    redis_url: str
    redis_pids: tuple[int, ...]
    admin_dsn: str
    pg_pid: int
    raw_tls: bool


class Sample(NamedTuple):
    rate: float
    esctl_us: float
    redis_us: float
    pg_us: float


def process_cpu(pid: int, *, children: bool = False) -> float:
    """CPU seconds of ``pid`` (with ``children``: plus those of its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS


def own_cpu() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def empty_queues(client: redisio.RedisClient) -> None:
    for key in QUEUE_KEYS:  # one by one: on a cluster they live in different slots
        client.delete(key)


def redis_cpu(target: Target) -> float:
    return sum(process_cpu(pid) for pid in target.redis_pids)


def measure(
    target: Target, runs: int, work: Callable[[], int], reset: Callable[[], None] | None
) -> Sample:
    samples = []
    for _ in range(runs):
        if reset is not None:
            reset()
        resp.RAW_TLS = target.raw_tls
        before = (
            own_cpu(),
            redis_cpu(target),
            process_cpu(target.pg_pid, children=True),
        )
        started = time.perf_counter()
        events = work()
        elapsed = time.perf_counter() - started
        time.sleep(0.2)  # the postmaster reaps the backends that just ended
        after = (
            own_cpu(),
            redis_cpu(target),
            process_cpu(target.pg_pid, children=True),
        )
        resp.RAW_TLS = True
        spent = [(b - a) * 1e6 / events for a, b in zip(before, after, strict=True)]
        samples.append(Sample(events / elapsed, *spent))
    return Sample(*(statistics.median(column) for column in zip(*samples, strict=True)))


@contextmanager
def started_servers(workdir: Path, cluster: bool) -> Iterator[tuple[Target, Target, Target]]:
    pki = make_pki(workdir / "pki")
    files = pki.server_files()
    running: list[servers.LocalRedis | servers.LocalPostgres] = []
    try:
        if cluster:
            plain_nodes = start_cluster(3).nodes
            running += plain_nodes
            tls_nodes = start_tls_cluster(pki)
            running += tls_nodes
            plain_url = f"redis+cluster://127.0.0.1:{plain_nodes[0].port}"
            tls_url = f"rediss+cluster://localhost:{tls_nodes[0].port}?ssl_ca_certs={pki.ca}"
        else:
            plain_nodes = [servers.start_redis()]
            running += plain_nodes
            tls_nodes = [servers.start_redis(tls=files)]
            running += tls_nodes
            plain_url = plain_nodes[0].url
            tls_url = f"rediss://localhost:{tls_nodes[0].port}/0?ssl_ca_certs={pki.ca}"
        plain_pids = tuple(n.pid for n in plain_nodes)
        tls_pids = tuple(n.pid for n in tls_nodes)
        plain_pg = servers.start_postgres(fast=False)
        running.append(plain_pg)
        tls_pg = servers.start_postgres(fast=False, tls=files)
        running.append(tls_pg)
        tls_dsn = (
            f"postgresql://postgres@localhost:{tls_pg.port}/postgres"
            f"?sslmode=verify-full&sslrootcert={pki.ca}"
        )
        plain = Target(
            "plain",
            plain_url,
            plain_pids,
            plain_pg.dsn + "?sslmode=disable",
            plain_pg.pid,
            True,
        )
        raw = Target("TLS, raw", tls_url, tls_pids, tls_dsn, tls_pg.pid, True)
        fallback = Target("TLS, redis-py", tls_url, tls_pids, tls_dsn, tls_pg.pid, False)
        yield plain, raw, fallback
    finally:
        for server in reversed(running):
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cluster", action="store_true", help="three-primary clusters")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="esctl-bench-tls-") as tmp,
        started_servers(Path(tmp), args.cluster) as targets,
    ):
        clients: dict[str, redisio.RedisClient] = {}
        events = 0
        for target in targets[:2]:
            client = redisio.connect(target.redis_url)  # a new, empty server or cluster
            events = write_bulk_store(
                client,
                app=APP,
                aggregates=max(1, args.events * 2 // 13),
                events_per_aggregate=(1, 12),
                seed=1,
            )
            for event_type in EVENT_TYPES:
                client.sadd(layout.subscribers_key(ENV, event_type), SUBSCRIBER)
            clients[target.redis_url] = client
        print(f"store: {events:,} events in each Redis ({APP})\n")

        rows: list[tuple[str, str, Sample, Sample]] = []
        for workload in (
            "migrate redis-to-pg",
            "replay --from redis --to queue",
            "events query (plain read)",
        ):
            baseline: Sample | None = None
            for target in targets:
                client = clients[target.redis_url]

                def migrate(target: Target = target, client: redisio.RedisClient = client) -> int:
                    with database(target.admin_dsn) as dsn:
                        summary = migrate_redis_to_pg(
                            client, MigrateOptions(app=APP, pg_dsn=dsn, init_schema=True)
                        )
                    assert summary.events_migrated == events, summary.problems[:3]
                    return summary.events_migrated

                def publish(client: redisio.RedisClient = client) -> int:
                    options = ReplayOptions(
                        source="redis",
                        target="queue",
                        app=APP,
                        env=ENV,
                        selection=Selection(all_events=True),
                    )
                    summary = replay(options, redis_client=client)
                    assert summary.notifications == events, summary.as_dict()
                    return summary.events

                def read(client: redisio.RedisClient = client) -> int:
                    return sum(1 for _ in RedisQuery(client, APP, QueryFilters()))

                def empty(client: redisio.RedisClient = client) -> None:
                    empty_queues(client)

                work, reset = {
                    "migrate redis-to-pg": (migrate, None),
                    "replay --from redis --to queue": (publish, empty),
                    "events query (plain read)": (read, None),
                }[workload]
                sample = measure(target, args.runs, work, reset)
                baseline = baseline or sample
                rows.append((workload, target.name, sample, baseline))
            empty_queues(clients[targets[0].redis_url])
            empty_queues(clients[targets[1].redis_url])

        print(
            f"{'workload':<32} {'config':<14} {'events/s':>10} {'x plain':>8}   "
            f"{'CPU us/event: esctl':>19} {'redis':>6} {'pg':>6}"
        )
        for workload, name, sample, baseline in rows:
            print(
                f"{workload:<32} {name:<14} {sample.rate:>10,.0f} {sample.rate / baseline.rate:>8.2f}   "
                f"{sample.esctl_us:>19.1f} {sample.redis_us:>6.1f} {sample.pg_us:>6.1f}"
            )


if __name__ == "__main__":
    main()
