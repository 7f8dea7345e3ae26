"""Benchmark: peak memory of ``esctl queue requeue``, ``esctl queue drain`` and ``esctl queue
restore`` as the list grows, and requeue's speed against a naive client loop, in one run.

    python bench/bench_queue_memory.py [--sizes 100000,1000000] [--naive-messages 20000]
        [--redis-url URL] [--old-src PATH]

For each size: fills a subscriber's ProcessingEvents with that many stuck messages (~400 bytes,
library-shaped JSON), runs ``esctl queue requeue --from processing --yes --json`` as a process,
then ``esctl queue drain --list published --to-file ... --yes --json`` on the requeued messages,
then ``esctl queue restore FILE --yes --json`` (all of them back into PublishedEvents, checked
in order), and prints each process's peak RSS (``wait4``'s ``ru_maxrss``: the process and
anything it waited for), messages/s and the restore's own seconds. The acceptance: each
command's peak at the largest size within 25% of its peak at the smallest, and requeue >= 10x
the naive loop (LRANGE, then LREM + LPUSH per message, on --naive-messages messages).

``--old-src PATH`` also runs the CLI from another checkout's source folder (PYTHONPATH=PATH),
e.g. ``git archive BASE | tar -x -C /tmp/old``: a before/after in the same run. By default it
starts a throwaway Redis; --redis-url uses yours (keys of a new env ``bench-<hex>``, deleted at
the end).
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import redis
from _common import add_json_option, json_output

from esctl import layout, queues, servers

SUBSCRIBER = "Learning.ReportingService.Worker-Bench"
EVENT_TYPE = "ItemScoreUpdated"
START = datetime(2025, 1, 1, tzinfo=UTC)


def message(number: int) -> bytes:
    stamp = START + timedelta(seconds=number)
    return orjson.dumps(
        {
            "$type": "Learning.ScoringService.Domain.Events.ItemScoreUpdated, "
            "Learning.ScoringService.Domain",
            "Id": f"{number:08d}-5a1c-4f7e-9b0d-3c2e1f0a9b8c",
            "TimeStamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%f") + "3+00:00",
            "Version": 2 + number % 7,
            "AggregateType": "ItemScore",
            "Score": number % 11,
            "ScoredBy": "Søren Kierkegård",
            "Comment": "Révisé après relecture — 見直し済み " + "x" * 180,
        }
    )


def fill(client: redis.Redis, key: str, count: int) -> None:
    """``key`` holds ``count`` messages, number 0 at the tail (taken first), written in chunks
    so the benchmark itself stays small."""
    client.delete(key)
    for start in range(0, count, 5000):
        client.lpush(key, *(message(n) for n in range(start, min(count, start + 5000))))


def naive_requeue(client: redis.Redis, source: str, destination: str) -> int:
    moved = 0
    for value in client.lrange(source, 0, -1):
        if client.lrem(source, 1, value):
            client.lpush(destination, value)
            moved += 1
    return moved


def assert_restored(client: redis.Redis, key: str, count: int) -> None:
    """``key`` holds the ``count`` messages :func:`fill` wrote, in their order (number 0 at the
    tail), read a chunk at a time."""
    assert client.llen(key) == count
    for start in range(0, count, 5000):
        end = min(count, start + 5000)
        chunk = client.lrange(key, -end, -start - 1)
        assert chunk == [message(n) for n in range(end - 1, start - 1, -1)], start


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


LAUNCHER = """
import json, resource, subprocess, sys
code = subprocess.call(sys.argv[1:], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"exit": code, "peak_kib": peak}), file=sys.stderr)
"""
"""Runs the CLI from a small process of its own: a child forked straight from this benchmark
would count the benchmark's own memory (inherited at fork) in its peak."""


def run_cli(src: str | None, args: list[str], folder: Path) -> tuple[dict[str, Any], float, int]:
    """The CLI's JSON document, the command's own time (``elapsed_s``, without the start-up)
    and its peak RSS in KiB."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    out_path = folder / "out.json"
    with out_path.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, sys.executable, "-m", "esctl", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.PIPE,
            env=env,
            cwd=folder,
            check=True,
        )
    launcher = orjson.loads(done.stderr.splitlines()[-1])
    document = orjson.loads(out_path.read_bytes())
    if launcher["exit"] != 0:
        raise SystemExit(f"{args[:2]} exited {launcher['exit']}: {document}")
    return document, float(document["elapsed_s"]), int(launcher["peak_kib"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--naive-messages", type=int, default=20_000)
    parser.add_argument("--redis-url", help="use this Redis instead of a throwaway one")
    parser.add_argument("--old-src", help="also run the CLI from this source folder")
    add_json_option(parser)
    args = parser.parse_args()
    with json_output(args.json, "bench_queue_memory") as document:
        run(args, document)


def run(args: argparse.Namespace, document: dict[str, Any]) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    env = f"bench-{secrets.token_hex(4)}"
    ref = queues.QueueRef(SUBSCRIBER, env, EVENT_TYPE)
    processing, published = ref.key("processing"), ref.key("published")
    sources: list[tuple[str, str | None]] = [("this esctl", None)]
    if args.old_src:
        sources.append(("old esctl", str(Path(args.old_src).resolve())))
    results: dict[str, Any] = {}
    with redis_server(args.redis_url) as url, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        client = redis.Redis.from_url(url)
        common = ["--redis-url", url, "--env", env, "--yes", "--json"]
        try:
            client.sadd(layout.subscribers_key(env, EVENT_TYPE), SUBSCRIBER)
            fill(client, processing, args.naive_messages)
            client.delete(published)
            started = time.perf_counter()
            moved = naive_requeue(client, processing, published)
            naive = moved / (time.perf_counter() - started)
            print(f"naive loop (LRANGE + LREM + LPUSH per message): {naive:>10,.0f} msg/s")
            results["naive msg/s"] = round(naive)
            for label, src in sources:
                for size in sizes:
                    client.delete(processing, published)
                    fill(client, processing, size)
                    requeue = ["queue", "requeue", SUBSCRIBER, EVENT_TYPE, "--from", "processing"]
                    summary, req_s, req_kib = run_cli(src, [*requeue, *common], folder)
                    assert summary["requeued"] == size, summary
                    assert client.llen(published) == size
                    backup = folder / f"drain-{secrets.token_hex(4)}.jsonl.zst"
                    drain = ["queue", "drain", SUBSCRIBER, EVENT_TYPE, "--list", "published"]
                    drain += ["--to-file", str(backup)]
                    summary, drain_s, drain_kib = run_cli(src, [*drain, *common], folder)
                    assert summary["drained"] == size, summary
                    assert client.llen(published) == 0
                    restore = ["queue", "restore", str(backup)]
                    summary, restore_s, restore_kib = run_cli(src, [*restore, *common], folder)
                    assert summary["restored"] == size, summary
                    assert_restored(client, published, size)
                    backup.unlink()
                    row = {
                        "requeue peak MiB": round(req_kib / 1024, 1),
                        "requeue msg/s": round(size / req_s),
                        "requeue / naive": round(size / req_s / naive, 1),
                        "drain peak MiB": round(drain_kib / 1024, 1),
                        "drain msg/s": round(size / drain_s),
                        "restore peak MiB": round(restore_kib / 1024, 1),
                        "restore msg/s": round(size / restore_s),
                        "restore s": round(restore_s, 2),
                    }
                    results[f"{label} {size}"] = row
                    print(
                        f"{label}, {size:>9,} messages: "
                        + ", ".join(f"{k} {v}" for k, v in row.items())
                    )
                small, large = results[f"{label} {sizes[0]}"], results[f"{label} {sizes[-1]}"]
                for what in ("requeue", "drain", "restore"):
                    growth = large[f"{what} peak MiB"] / small[f"{what} peak MiB"]
                    results[f"{label} {what} peak {sizes[-1]} / {sizes[0]}"] = round(growth, 2)
                    print(
                        f"{label}: {what} peak at {sizes[-1]:,} / at {sizes[0]:,}: {growth:.2f}x "
                        "(target <= 1.25x)"
                    )
        finally:
            client.delete(processing, published, ref.key("dead"))
            client.delete(layout.subscribers_key(env, EVENT_TYPE))
            client.close()
    document.update(results)


if __name__ == "__main__":
    main()
