"""Benchmark: ``esctl queue requeue`` of stuck messages against a naive client loop, in one run.

    python bench/bench_requeue.py [--messages 100000] [--naive-messages 20000] [--redis-url URL]

Fills a subscriber's ProcessingEvents with --messages stuck messages (library-shaped JSON,
about 400 bytes each) and prints messages/s of
- naive: LRANGE the list once, then per message LREM (count 1) + LPUSH from the client, one
  round trip each (on the first --naive-messages messages; its rate does not depend on the
  list's size because each LREM finds its value at the head);
- esctl: ``queues.requeue`` (batched atomic server-side moves), no filter;
- esctl --older-than: the same with a TimeStamp filter, so every message is decoded;
- drain / restore: ``queues.drain`` to a zstd backup file, then ``queues.restore``;
and the ratio esctl / naive (target >= 10). Every run checks that all messages arrived in
order.

By default it starts a throwaway Redis (esctl.servers), so nothing else on the machine is
touched; --redis-url points it at a server of your own, where it writes only keys of a new
environment ``bench-<hex>`` and deletes them at the end. The machine's speed drifts: compare
only the ratios printed by one run.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import redis
from _common import Meter, add_json_option, json_output

from esctl import layout, queues, redisio, servers

SUBSCRIBER = "Learning.ReportingService.Worker-Bench"
EVENT_TYPE = "ItemScoreUpdated"


def messages(count: int) -> list[bytes]:
    """``count`` distinct messages, the first the oldest (taken first)."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    out = []
    for number in range(count):
        stamp = start + timedelta(seconds=number)
        out.append(
            orjson.dumps(
                {
                    "$type": "Learning.ScoringService.Domain.Events.ItemScoreUpdated, "
                    "Learning.ScoringService.Domain",
                    "Id": f"{number:08d}-5a1c-4f7e-9b0d-3c2e1f0a9b8c",
                    "TimeStamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%f") + "3+00:00",
                    "Version": 2 + number % 7,
                    "AggregateType": "ItemScore",
                    "Score": number % 11,
                    "ScoredBy": "Søren Kierkegård",
                    "Comment": "Révisé après relecture — 見直し済み",
                }
            )
        )
    return out


def fill(client: redis.Redis, key: str, values: list[bytes]) -> None:
    """``key`` holds ``values``, values[0] at the tail (as a consumer would have taken them)."""
    client.delete(key)
    for start in range(0, len(values), 5000):
        client.lpush(key, *values[start : start + 5000])


def check_published(client: redis.Redis, key: str, values: list[bytes]) -> None:
    got = client.lrange(key, 0, -1)
    got.reverse()  # consumption order
    if got != values:
        raise SystemExit(f"{key}: wrong contents after the run ({len(got)} values)")


def naive_requeue(client: redis.Redis, source: str, destination: str) -> int:
    moved = 0
    for value in client.lrange(source, 0, -1):
        if client.lrem(source, 1, value):
            client.lpush(destination, value)
            moved += 1
    return moved


@contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    server = servers.start_redis()
    try:
        yield server.url
    finally:
        server.stop()


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--naive-messages", type=int, default=20_000)
    parser.add_argument("--redis-url", help="use this Redis instead of a throwaway one")
    add_json_option(parser)
    args = parser.parse_args()
    with json_output(args.json, "bench_requeue") as document:
        run(args, document)


def run(args: argparse.Namespace, document: dict[str, object]) -> None:
    env = f"bench-{secrets.token_hex(4)}"
    ref = queues.QueueRef(SUBSCRIBER, env, EVENT_TYPE)
    processing, published = ref.key("processing"), ref.key("published")
    values = messages(args.messages)
    naive_values = values[: min(args.naive_messages, args.messages)]

    with redis_server(args.redis_url) as url:
        client = redisio.connect(url)
        assert isinstance(client, redis.Redis), "the benchmark runs on a single server"
        plain = redis.Redis.from_url(url)
        meter = Meter([url])
        print(
            f"Redis {redisio.describe(client)}, env {env}, {args.messages:,} stuck messages "
            f"of ~{sum(map(len, values[:100])) // 100} bytes"
        )
        try:
            client.sadd(layout.subscribers_key(env, EVENT_TYPE), SUBSCRIBER)

            fill(plain, processing, naive_values)
            client.delete(published)
            with meter.measure("naive loop") as cost:
                started = time.perf_counter()
                moved = naive_requeue(plain, processing, published)
                naive_s = time.perf_counter() - started
                cost.events += moved
            assert moved == len(naive_values)
            naive = rate(moved, naive_s)
            print(
                f"naive loop (LRANGE + LREM + LPUSH per message): {naive:>12,.0f} msg/s "
                f"({moved:,} in {naive_s:.2f} s)"
            )

            results: list[tuple[str, float]] = []
            for label, selection in (
                ("esctl queue requeue", queues.Selection()),
                (
                    "esctl queue requeue --older-than 1d",
                    queues.Selection(older_than=timedelta(days=1)),
                ),
            ):
                fill(plain, processing, values)
                client.delete(published)
                with meter.measure(label) as cost:
                    started = time.perf_counter()
                    summary = queues.requeue(
                        client, ref, queues.RequeueOptions(selection=selection)
                    )
                    seconds = time.perf_counter() - started
                    cost.events += summary.requeued
                assert summary.requeued == args.messages and summary.failed == 0, summary.problems
                check_published(plain, published, values)
                results.append((label, rate(args.messages, seconds)))
                print(f"{label + ':':<48}{results[-1][1]:>12,.0f} msg/s ({seconds:.2f} s)")

            fill(plain, processing, values)
            with tempfile.TemporaryDirectory(prefix="esctl-bench-") as folder:
                backup = Path(folder) / "processing.jsonl.zst"
                with meter.measure("esctl queue drain") as cost:
                    started = time.perf_counter()
                    drained = queues.drain(
                        client, ref, queues.DrainOptions(which="processing", to_file=backup)
                    )
                    drain_s = time.perf_counter() - started
                    cost.events += drained.drained
                with meter.measure("esctl queue restore") as cost:
                    started = time.perf_counter()
                    restored = queues.restore(client, backup, queues.RestoreOptions())
                    restore_s = time.perf_counter() - started
                    cost.events += restored.restored
                assert drained.drained == restored.restored == args.messages
                check_published(plain, processing, values)
                print(
                    f"{'esctl queue drain (to a backup file):':<48}"
                    f"{rate(args.messages, drain_s):>12,.0f} msg/s ({drain_s:.2f} s, "
                    f"{backup.stat().st_size / 1e6:.1f} MB file)"
                )
                print(
                    f"{'esctl queue restore:':<48}"
                    f"{rate(args.messages, restore_s):>12,.0f} msg/s ({restore_s:.2f} s)"
                )
            print()
            for label, value in results:
                print(f"ratio {label} / naive: {value / naive:6.1f}x  (target >= 10x)")
            meter.print_table()
            document.update(
                messages=args.messages,
                messages_per_s={"naive loop": round(naive)}
                | {label: round(value) for label, value in results}
                | {
                    "esctl queue drain": round(rate(args.messages, drain_s)),
                    "esctl queue restore": round(rate(args.messages, restore_s)),
                },
                ratios={f"{label} / naive": round(value / naive, 2) for label, value in results},
                cost=meter.as_json(),
            )
        finally:
            for key in (
                processing,
                published,
                ref.key("dead"),
                layout.subscribers_key(env, EVENT_TYPE),
            ):
                plain.delete(key)
            plain.close()
            client.close()


if __name__ == "__main__":
    main()
