"""Benchmark: memory and summary size flat in the number of problems, measured in one run.

    python bench/bench_problems.py [--events 260000] [--bad-share 0.2]

Writes the bulk store (bench/_common.write_store), runs as child processes, each on a new
PostgreSQL database,
- ``esctl migrate redis-to-pg --init-schema --json``,
- ``esctl migrate verify --json``,
- ``esctl inspect integrity --json``,
then damages a tenth of ``--bad-share`` of the aggregates (every payload of each replaced by
invalid JSON: one problem per event, so migrate quarantines them, verify reports them
unmigratable and integrity reports each payload) and runs the same commands again, then
damages more, up to ``--bad-share``, and runs them once more. Prints, per command, the peak RSS
of the process tree (the CLI and its worker processes, summed, sampled every 20 ms; or the CLI
process's own VmHWM at exit, when larger) and the size
of the ``--json`` document for the three stores, and the ratios of the damaged store's to the
clean store's (target: peak RSS within 25%) and to the lightly damaged store's (the document
bounded: the same size whatever the number of problems, once there are more than it lists).

By default it starts throwaway Redis and PostgreSQL servers (esctl.servers); --redis-url /
--pg-dsn point it at servers of your own (it FLUSHes that Redis database and creates/drops
PostgreSQL databases named esctl_bench_*). Compare only the ratios printed by one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
from _common import add_json_option, bench_servers, database, json_output, write_store

from esctl import layout, redisio, storereads

APP = "Bench.Problems"
FIGURES = ("peak_rss_kib", "json_bytes", "problems", "s")


def damage(client: redis.Redis, share: float) -> tuple[int, int]:
    """Replace every payload of ``share`` of the aggregates (every k-th commit list SCAN
    returns: a smaller share's are among a larger one's when k divides) with invalid JSON;
    returns (aggregates, events) damaged."""
    every = max(1, round(1 / share))
    seen = aggregates = events = 0
    for _, keys in redisio.scan_pages(client, layout.commit_list_pattern(APP), type_="list"):
        chosen = []
        for key in keys:
            seen += 1
            if seen % every == 0:
                chosen.append(key)
        if not chosen:
            continue
        lists = storereads.commit_lists(client, chosen)
        commit_ids = [c for commits in lists for c in commits]
        _, where = storereads.fetch_values(client, APP, commit_ids)
        pipe = client.pipeline(transaction=False)
        for commit_id, key in zip(commit_ids, where, strict=True):
            assert key is not None
            pipe.hset(key, commit_id, b'{"Id": "broken", ')
        pipe.execute()
        aggregates += len(chosen)
        events += len(commit_ids)
    return aggregates, events


def _tree_rss_kb(root: int) -> int:
    """The summed VmRSS of ``root`` and its descendants (kB), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


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
"""The CLI, reporting its own peak RSS (VmHWM) as it exits: a peak shorter than the sampling
interval (building and printing the summary at the end) is not missed."""


def run_cli(args: list[str]) -> tuple[int, int, dict[str, object], float]:
    """Run ``esctl ARGS --json``; returns (peak RSS in kB: the larger of the process tree's
    sampled sum and the CLI process's own VmHWM, bytes of the document, the document,
    seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _REPORT_HWM, *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss_kb(proc.pid))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode not in (0, 3):
        raise SystemExit(f"esctl {' '.join(args)} exited {proc.returncode}: {err[-2000:]!r}")
    for line in err.decode("utf-8", "replace").splitlines():
        if line.startswith("ESCTL_BENCH_VmHWM:"):
            peak = max(peak, int(line.split()[1]))
    return peak, len(out), json.loads(out), time.monotonic() - started


def commands(redis_url: str, dsn: str) -> dict[str, list[str]]:
    store = ["--app", APP, "--redis-url", redis_url]
    return {
        "migrate redis-to-pg": [
            "migrate",
            "redis-to-pg",
            *store,
            "--pg-dsn",
            dsn,
            "--init-schema",
            "--no-progress",
        ],
        "migrate verify": ["migrate", "verify", *store, "--pg-dsn", dsn],
        "inspect integrity": ["inspect", "integrity", *store, "--no-progress"],
    }


def measure(redis_url: str, admin_dsn: str) -> dict[str, tuple[int, int, int, float]]:
    """(peak RSS kB, document bytes, problems_total, seconds) per command, on a new database."""
    out: dict[str, tuple[int, int, int, float]] = {}
    with database(admin_dsn) as dsn:
        for name, args in commands(redis_url, dsn).items():
            peak, size, document, seconds = run_cli(args)
            total = document.get("problems_total", -1)  # -1: a version without the key
            assert isinstance(total, int), name
            out[name] = (peak, size, total, seconds)
            print(
                f"  {name:<20} {peak / 1024:7.0f} MiB  {size:>9,} B  {total:>9,} problems"
                f"  {seconds:6.1f} s",
                flush=True,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=260_000)
    parser.add_argument("--bad-share", type=float, default=0.2)
    parser.add_argument("--redis-url")
    parser.add_argument(
        "--pg-dsn", help="an admin DSN: databases are created and dropped through it"
    )
    add_json_option(parser)
    args = parser.parse_args()
    with json_output(args.json, "bench_problems") as document:
        run(args, document)


def run(args: argparse.Namespace, document: dict[str, object]) -> None:
    with bench_servers(args.redis_url, args.pg_dsn) as (redis_url, admin_dsn):
        client = redis.Redis.from_url(redis_url)
        events = write_store(client, APP, args.events)
        print(f"store: {events:,} events written to {APP}; no problems:", flush=True)
        runs = {"clean": measure(redis_url, admin_dsn)}
        damaged: dict[str, tuple[int, int]] = {}
        for label, share in (("light", args.bad_share / 10), ("damaged", args.bad_share)):
            aggregates, bad = damage(client, share)  # the light damage is part of the heavy
            damaged[label] = (aggregates, bad)
            print(
                f"same store, {aggregates:,} aggregates ({share:.0%}) damaged, "
                f"{bad:,} payloads invalid:",
                flush=True,
            )
            runs[label] = measure(redis_url, admin_dsn)
        print()
        print(
            f"{'command':<20} {'peak RSS damaged/clean':>23} {'--json damaged/clean':>21}"
            f" {'--json damaged/light':>21}"
        )
        ratios = {}
        for name, (peak, size, _, _) in runs["clean"].items():
            peak2, size2, _, _ = runs["damaged"][name]
            size_light = runs["light"][name][1]
            ratios[name] = {
                "peak_rss": round(peak2 / peak, 3),
                "json_bytes": round(size2 / size, 3),
                "json_bytes_vs_light": round(size2 / size_light, 3),
            }
            print(
                f"{name:<20} {peak2 / peak:22.2f}x {size2 / size:20.2f}x"
                f" {size2 / size_light:20.2f}x"
            )
        print(
            "(target: peak RSS damaged/clean < 1.25; the --json size is bounded: "
            "damaged/light about 1)"
        )
        document.update(
            events=events,
            damaged={k: {"aggregates": a, "events": e} for k, (a, e) in damaged.items()},
            runs={
                label: {k: dict(zip(FIGURES, v, strict=True)) for k, v in figures.items()}
                for label, figures in runs.items()
            },
            ratios=ratios,
        )


if __name__ == "__main__":
    main()
