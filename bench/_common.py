"""What the benchmarks share: a scratch PostgreSQL database and the standard bulk store.
(The benchmarks run as scripts, ``python bench/bench_x.py``, so this folder is on sys.path; the
bulk store's writer is the tests' ``tests/bulk_store.py``, so that folder is put there too.)"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from esctl import servers
from esctl.cli.app import GC_THRESHOLDS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bulk_store import write_bulk_store

# The benchmarks run esctl's operations in this process: with the garbage collector set as in
# an esctl command's process (esctl.cli.app.main), so the figures are the command's.
gc.set_threshold(*GC_THRESHOLDS)

__all__ = [
    "Meter",
    "add_json_option",
    "bench_servers",
    "database",
    "json_output",
    "process_tree_cpu",
    "write_bulk_store",
    "write_store",
]


@contextmanager
def bench_servers(redis_url: str | None, admin_dsn: str | None) -> Iterator[tuple[str, str]]:
    """The Redis URL and PostgreSQL admin DSN a benchmark runs against: those given, else
    throwaway servers started here (PostgreSQL with fsync, as production runs) and stopped
    afterwards."""
    started: list[servers.LocalRedis | servers.LocalPostgres] = []
    try:
        if redis_url is None:
            local_redis = servers.start_redis()
            started.append(local_redis)
            redis_url = local_redis.url
        if admin_dsn is None:
            local_pg = servers.start_postgres(fast=False)
            started.append(local_pg)
            admin_dsn = local_pg.dsn
        yield redis_url, admin_dsn
    finally:
        for server in reversed(started):
            server.stop()


@contextmanager
def database(admin_dsn: str) -> Iterator[str]:
    """A new database ``esctl_bench_<hex>`` created through ``admin_dsn``, dropped afterwards."""
    name = f"esctl_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin_dsn)
    dsn = urlunsplit(parts._replace(path="/" + name))
    try:
        yield dsn
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write_store(client: redis.Redis, app: str, events: int) -> int:
    """FLUSHDB, then the bulk store of about ``events`` events (~6.5 per aggregate, 30%
    gzip+base64 of 1-6 KB, 10% legacy layout: PERF-NOTES' store)."""
    client.flushdb()
    return write_bulk_store(
        client, app=app, aggregates=max(1, events * 2 // 13), events_per_aggregate=(1, 12)
    )


# --- What each component spends: CPU-seconds of esctl, PostgreSQL and Redis per measured run ---

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY_S = 0.025
"""How often the PostgreSQL backends of the watched database are listed (pg_stat_activity)."""


def proc_cpu(pid: int) -> tuple[float, float, int] | None:
    """(own CPU-s, CPU-s of its reaped children, parent pid) of ``pid`` from /proc, or None
    when it is gone or not readable (a server on another machine)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime fields 14-17.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS, int(fields[1])


def process_tree_cpu(pid: int) -> float:
    """CPU-s of process ``pid``, of its children it has waited for, and of its live
    descendants (with theirs): what a long-running esctl and its workers have spent so far
    (0 when it is gone)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            got = proc_cpu(int(entry))
            if got is not None:
                parents[int(entry)] = got[2]
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        got = proc_cpu(current)
        if got is None:
            continue
        total += got[0] + got[1]
        todo.extend(child for child, parent in parents.items() if parent == current)
    return total


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _own_cpu() -> float:
    """CPU-s of this process and of the children it has waited for (forked workers, read-ahead
    processes, subprocesses): everything esctl runs when the benchmark calls it."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass
class Cost:
    """The accumulated cost of one measured label (summed over its runs)."""

    label: str
    events: int = 0
    wall_s: float = 0.0
    esctl_s: float = 0.0
    pg_backends_s: float | None = None
    pg_server_s: float | None = None
    redis_s: float | None = None
    runs: int = 0
    backends_gone: int = 0
    """Backends that had exited before the final read: their last sample was used."""

    def per_event_us(self, seconds: float | None) -> float | None:
        if seconds is None or not self.events:
            return None
        return seconds / self.events * 1e6

    def as_dict(self) -> dict[str, Any]:
        pe = self.per_event_us
        ratio = (
            self.esctl_s / self.pg_backends_s
            if self.pg_backends_s and self.pg_backends_s > 0
            else None
        )
        return {
            "label": self.label,
            "runs": self.runs,
            "events": self.events,
            "wall_s": round(self.wall_s, 3),
            "events_per_s": round(self.events / self.wall_s) if self.wall_s else None,
            "cpu_s": {
                "esctl": round(self.esctl_s, 3),
                "pg_backends": _round(self.pg_backends_s),
                "pg_server": _round(self.pg_server_s),
                "redis": _round(self.redis_s),
            },
            "cpu_us_per_event": {
                "esctl": _round(pe(self.esctl_s), 1),
                "pg_backends": _round(pe(self.pg_backends_s), 1),
                "pg_server": _round(pe(self.pg_server_s), 1),
                "redis": _round(pe(self.redis_s), 1),
            },
            "esctl_per_pg_backends": _round(ratio, 2),
            "esctl_per_pg_server": _round(
                self.esctl_s / self.pg_server_s if self.pg_server_s else None, 2
            ),
            "pg_backends_gone_before_final_read": self.backends_gone,
        }


def _ratio(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.2f}"


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class _PgWatch:
    """Samples the backends of one database (pg_stat_activity, from a connection to the admin
    database, so not one of them) every SAMPLE_EVERY_S and reads their CPU from /proc; also the
    whole server's CPU: the postmaster's reaped children plus its live ones."""

    def __init__(self, admin_dsn: str, dbname: str) -> None:
        self.dbname = dbname
        self.conn = psycopg.connect(admin_dsn, autocommit=True, application_name="bench-meter")
        row = self.conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        self.own_pid = int(row[0])
        own = proc_cpu(self.own_pid)
        # The server must run on this machine: the pid of our backend is a postgres process.
        self.local = own is not None and _comm(self.own_pid).startswith("postgres")
        self.postmaster = own[2] if own is not None and self.local else None
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.thread_cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-pg-watch", daemon=True)

    def server_cpu(self) -> float | None:
        """All CPU of the server so far: postmaster + its reaped children + live children,
        less this watcher's own backend."""
        if self.postmaster is None:
            return None
        top = proc_cpu(self.postmaster)
        if top is None:
            return None
        total = top[0] + top[1]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                got = proc_cpu(int(entry))
                if got is not None and got[2] == self.postmaster:
                    total += got[0]
        own = proc_cpu(self.own_pid)
        return total - (own[0] if own else 0.0)

    def sample(self, *, at_start: bool = False) -> None:
        if not self.local:
            return
        pids = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.dbname,),
        ).fetchall()
        for (pid,) in pids:
            got = proc_cpu(pid)
            if got is None:
                continue
            # A backend already there at the start counts from there; one that appears later
            # was started by the run: all of its CPU is the run's.
            self.first.setdefault(pid, got[0] if at_start else 0.0)
            self.last[pid] = got[0]

    def _run(self) -> None:
        started = time.thread_time()
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.sample()
        self.thread_cpu = time.thread_time() - started

    def start(self) -> float | None:
        self.sample(at_start=True)
        self._thread.start()
        return self.server_cpu()

    def finish(self) -> tuple[float, int]:
        """(CPU-s of the watched backends, how many had gone before the final read)."""
        self._stop.set()
        self._thread.join()
        gone = 0
        total = 0.0
        for pid, first in self.first.items():
            got = proc_cpu(pid)
            if got is None:
                gone += 1
                end = self.last[pid]
            else:
                end = got[0]
            total += end - first
        return total, gone

    def wait_quiet(self, timeout: float = 3.0) -> None:
        """Wait until the watched database has no backends left (a closed connection's backend
        exits a moment later): the server's total is then read with their CPU in it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.dbname,)
            ).fetchone()
            # A backend leaves pg_stat_activity before its process exits and is reaped (only
            # then are its CPU-s in the postmaster's cutime): wait for the processes too.
            alive = [pid for pid in self.first if os.path.exists(f"/proc/{pid}")]
            if (row is None or row[0] == 0) and not alive:
                return
            time.sleep(0.02)

    def close(self) -> None:
        self.conn.close()


class Meter:
    """Measures, around each run of a labelled piece of work, the CPU-seconds of esctl (this
    process and its waited-for children), of the PostgreSQL backends of the watched database and
    the whole PostgreSQL server (when it runs on this machine: /proc), and of Redis (INFO cpu
    of every node given); accumulates them by label."""

    def __init__(self, redis_urls: Sequence[str] = (), admin_dsn: str | None = None) -> None:
        self.redis = [redis.Redis.from_url(url) for url in redis_urls]
        self.admin_dsn = admin_dsn
        self.costs: dict[str, Cost] = {}

    @contextmanager
    def measure(
        self, label: str, dsn: str | None = None, esctl_cpu: Callable[[], float] | None = None
    ) -> Iterator[Cost]:
        """Measure the body; the caller adds the events it handled to the yielded
        ``Cost.events`` (``cost.events += n``). ``dsn``: the database whose backends count.
        ``esctl_cpu``: where esctl runs as processes of its own beside the body (a follower,
        a loop of runs), a reading of their CPU-s so far; esctl's figure is then its change
        over the body, instead of this process's."""
        cost = self.costs.setdefault(label, Cost(label))
        watch = None
        if dsn is not None and self.admin_dsn is not None:
            watch = _PgWatch(self.admin_dsn, urlsplit(dsn).path.lstrip("/"))
        try:
            redis_before = [_redis_cpu(c) for c in self.redis]
            server_before = watch.start() if watch else None
            read_own = esctl_cpu or _own_cpu
            own_before = read_own()
            started = time.perf_counter()
            yield cost
            cost.wall_s += time.perf_counter() - started
            own_after = read_own()
            if watch is not None and watch.local:
                backends, gone = watch.finish()
                watch.wait_quiet()
                server_after = watch.server_cpu()
                cost.pg_backends_s = (cost.pg_backends_s or 0.0) + backends
                cost.backends_gone += gone
                if server_before is not None and server_after is not None:
                    cost.pg_server_s = (cost.pg_server_s or 0.0) + server_after - server_before
                if esctl_cpu is None:
                    own_after -= watch.thread_cpu
            cost.esctl_s += own_after - own_before
            if self.redis:
                spent = sum(_redis_cpu(c) for c in self.redis) - sum(redis_before)
                cost.redis_s = (cost.redis_s or 0.0) + spent
            cost.runs += 1
        finally:
            if watch is not None:
                watch._stop.set()
                watch.close()

    def print_table(self, labels: Sequence[str] | None = None) -> None:
        """CPU per event of each component beside events/s (totals over the runs)."""
        rows = [self.costs[k] for k in (labels or list(self.costs)) if k in self.costs]
        if not rows:
            return
        width = max(len(c.label) for c in rows)

        def us(value: float | None) -> str:
            return "      -" if value is None else f"{value:7.1f}"

        print(
            f"\n{'CPU per event (µs)':<{width}} {'per s':>10} {'esctl':>7} {'PG bk':>7} "
            f"{'PG all':>7} {'Redis':>7} {'esctl/PG bk':>11} {'esctl/PG all':>12}"
        )
        for c in rows:
            d = c.as_dict()
            ratio = d["esctl_per_pg_backends"]
            rate = d["events_per_s"] or 0
            print(
                f"{c.label:<{width}} {rate:>10,} {us(c.per_event_us(c.esctl_s))} "
                f"{us(c.per_event_us(c.pg_backends_s))} {us(c.per_event_us(c.pg_server_s))} "
                f"{us(c.per_event_us(c.redis_s))} {_ratio(ratio, 11)} "
                f"{_ratio(d['esctl_per_pg_server'], 12)}"
            )
        gone = sum(c.backends_gone for c in rows)
        print(
            "esctl: this process + waited-for children (getrusage); PG bk: backends of the bench "
            "database (pg_stat_activity sampled every "
            f"{SAMPLE_EVERY_S * 1000:.0f} ms, /proc/<pid>/stat){'' if not gone else f'; {gone} had exited before the final read (their last sample counted)'}; "
            "PG all: the whole PostgreSQL server incl. WAL writer, checkpointer, autovacuum; "
            "Redis: INFO cpu. Totals over all runs of a line."
        )

    def as_json(self) -> list[dict[str, Any]]:
        return [c.as_dict() for c in self.costs.values()]


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document of the figures on stdout (the human output goes to stderr)",
    )


@contextmanager
def json_output(enabled: bool, name: str) -> Iterator[dict[str, Any]]:
    """With ``enabled``: the body's prints go to stderr and the dict yielded (filled by the
    body) is printed as one JSON document on stdout at the end, with the machine's load."""
    document: dict[str, Any] = {"benchmark": name, "loadavg_start": os.getloadavg()}
    if not enabled:
        yield document
        return
    with redirect_stdout(sys.stderr):
        yield document
    document["loadavg_end"] = os.getloadavg()
    document["cpus"] = os.cpu_count()
    print(json.dumps(document, indent=2))
