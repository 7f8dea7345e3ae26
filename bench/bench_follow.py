"""Benchmark: how far PostgreSQL trails a live Redis writer, with ``esctl migrate redis-to-pg
--follow`` and with a loop of today's incremental runs, measured in one run.

    python bench/bench_follow.py [--aggregates 20000] [--rates 100,1000,5000] [--seconds 10]
                                 [--layouts partitioned,legacy] [--modes loop,follow] [--json]

A store of --aggregates aggregates (tests/bulk_store.py: ~6.5 events each, 30% gzip+base64,
10% legacy layout) is migrated once; then, for each mode, layout and rate:

- a **writer** process appends to random aggregates at the rate for --seconds, the way the .NET
  library saves: HSET of the payload (30% over 1000 bytes, so gzip+base64; the rest plain) into
  the partition hash (``partitioned``) or the legacy hash with the next integer commit id
  (``legacy``), then RPUSH of the commit id. Its formats are tests/independent_writer.py's (no
  esctl code). Saves are sent in pipelines every 5 ms (HSET before RPUSH for each event), and an
  event's commit time is when its pipeline's reply arrived (CLOCK_MONOTONIC);
- the migrator runs beside it: ``loop``, ``esctl migrate redis-to-pg`` rerun back to back (the
  baseline: how a cut-over is done without --follow), or ``follow``, one
  ``esctl migrate redis-to-pg --follow --enable-notifications`` started before the first rate
  and stopped with SIGTERM after the last (its exit code is reported);
- a **probe** measures each event's lag without asking esctl: a statement-level trigger on the
  ``event`` table (AFTER INSERT, transition table) sends the inserted rows' (aggregate_key,
  version) with ``pg_notify`` — delivered when the inserting transaction commits — to a LISTENing
  process that stamps each notification as it arrives (CLOCK_MONOTONIC, the writer's clock).
  Lag = that stamp - the commit time: it errs by the pipeline's reply time plus the
  notification's delivery, both counted as lag (together below the 2 ms p50 a follower showed on
  a quiet 2-core machine, which bounds them). The trigger's work is in PostgreSQL's CPU figures
  in both modes.

Per mode, layout and rate it prints the lag distribution (p50/p90/p99/max, all events and split
into compressed and plain payloads), the time from the writer's last commit until PostgreSQL
holds every committed event ("drain"), and the exit code of ``esctl migrate verify`` run after
that; and CPU per written event of esctl, the PostgreSQL backends of the bench database and
Redis while the writer runs (a "writer only" line per rate, no migrator, is Redis' cost of the
writes themselves). Targets (issue #16): follow p99 < 0.5 s at 1,000 events/s and below the
loop's; drain <= 2 s; verify exit 0. ``follow`` is left out (and said so) when this esctl has
no ``--follow``.

By default it starts throwaway Redis and PostgreSQL servers; --redis-url / --pg-dsn point it at
your own (it FLUSHes that Redis database, sets notify-keyspace-events through the follower's
--enable-notifications, and creates/drops PostgreSQL databases named esctl_bench_*). The
machine drifts 10-30% over an hour: compare the figures of one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from _common import (
    Meter,
    add_json_option,
    bench_servers,
    database,
    json_output,
    process_tree_cpu,
    write_bulk_store,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import independent_writer as iw

APP = "Bench.Follow"
ESCTL = str(Path(sys.executable).parent / "esctl")
CHANNEL = "esctl_bench_seen"
TICK_S = 0.005
DRAIN_TIMEOUT_S = 60.0

PROBE_SQL = f"""
CREATE FUNCTION esctl_bench_seen() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    chunk text;
BEGIN
    FOR chunk IN
        SELECT string_agg(aggregate_key || ':' || version, ',')
          FROM (SELECT aggregate_key, version, (row_number() OVER ()) / 400 AS part
                  FROM fresh) rows
         GROUP BY part
    LOOP
        PERFORM pg_notify('{CHANNEL}', chunk);
    END LOOP;
    RETURN NULL;
END;
$fn$;
CREATE TRIGGER esctl_bench_seen AFTER INSERT ON event REFERENCING NEW TABLE AS fresh
    FOR EACH STATEMENT EXECUTE FUNCTION esctl_bench_seen();
"""

_FILLER = (
    "Très bien, continuez ainsi ! Größenordnung: „Äpfel“ und Birnen. 学習の進捗は順調です。"
    " Прогресс хороший, молодец! Ação concluída com êxito — parabéns 🎉 "
) * 12
_ASM = "Learning.ScoringService.Domain"


# --- the writer (a process of its own) ------------------------------------------------------


def _payload(
    rng: random.Random, aggregate_id: str, aggregate_type: str, version: int, big: bool
) -> str:
    """An event as the library serialises it (Newtonsoft, TypeNameHandling.All), TimeStamp now."""
    ticks = (iw.ticks_of(datetime.now(UTC)) + rng.randrange(10)) | 1
    if aggregate_type == "Order":
        line = f"{_ASM}.Models.OrderLine, {_ASM}"
        event_type = "OrderLineAdded"
        fields: dict[str, Any] = {
            "Lines": {
                "$type": f"System.Collections.Generic.List`1[[{line}]], mscorlib",
                "$values": [{"$type": line, "Sku": f"SKU-{version}", "Quantity": 1}],
            }
        }
    else:
        event_type = "ItemScoreUpdated"
        fields = {"Score": rng.randrange(11), "ScoredBy": "Þórunn Ævarsdóttir"}
    document: dict[str, Any] = {
        "$type": f"{_ASM}.Events.{event_type}, {_ASM}",
        "Id": aggregate_id,
        "TimeStamp": iw.timestamp_text(ticks, 0),
        "Version": version,
        "AggregateType": aggregate_type,
        **fields,
    }
    if big:
        document["Comment"] = _FILLER[: rng.randrange(1200, len(_FILLER))]
    return iw.to_json(document)


def run_writer(
    redis_url: str,
    targets: list[tuple[str, str, int]],
    layout: str,
    rate: int,
    seconds: float,
    compressed_share: float,
    seed: int,
    out: multiprocessing.connection.Connection,
) -> None:
    """Append ``rate`` events/s for ``seconds`` to random ``targets`` (aggregate id, type, next
    version); send back [(aggregate id, version, compressed, commit time)]."""
    client = redis.Redis.from_url(redis_url)
    rng = random.Random(seed)
    versions = [t[2] for t in targets]
    legacy_key = iw.legacy_hash_key(APP)
    legacy_next = int(client.hlen(legacy_key)) + 1
    records: list[tuple[str, int, bool, float]] = []
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(rate * elapsed) + 1 - len(records)
        pipe = client.pipeline(transaction=False)
        batch: list[tuple[str, int, bool]] = []
        for _ in range(max(0, due)):
            index = rng.randrange(len(targets))
            aggregate_id, aggregate_type, _ = targets[index]
            version = versions[index]
            versions[index] += 1
            text = _payload(
                rng, aggregate_id, aggregate_type, version, rng.random() < compressed_share
            )
            value, compressed = iw.stored_value(text)
            if layout == "legacy":
                commit_id = str(legacy_next)
                legacy_next += 1
                pipe.hset(legacy_key, commit_id, value)
            else:
                commit_id = str(uuid.uuid4())  # as Guid.NewGuid(): never one of the store's
                pipe.hset(iw.event_hash_key(APP, commit_id), commit_id, value)
            pipe.rpush(iw.commit_list_key(APP, aggregate_id), commit_id)
            batch.append((aggregate_id, version, compressed))
        if batch:
            pipe.execute()
            at = time.perf_counter()
            records.extend((a, v, c, at) for a, v, c in batch)
        time.sleep(max(0.0, TICK_S - (time.perf_counter() - started - elapsed)))
    out.send(records)
    out.close()


def load_targets(client: redis.Redis) -> list[tuple[str, str, int]]:
    """Every aggregate of the bulk store: (id, type, next version). The bulk store's integer
    ids are Orders, its GUIDs ItemScores."""
    keys = [k.decode() for k in client.scan_iter(match=iw.commit_list_key(APP, "*"), count=1000)]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.llen(key)
    lengths = pipe.execute()
    prefix = len(iw.commit_list_key(APP, ""))
    return [
        (key[prefix:], "Order" if key[prefix:].isdigit() else "ItemScore", int(n) + 1)
        for key, n in zip(keys, lengths, strict=True)
    ]


# --- the probe (a process of its own) -------------------------------------------------------


def run_probe(
    dsn: str,
    seen: Any,
    stop: Any,
    out: multiprocessing.connection.Connection,
) -> None:
    """LISTEN on CHANNEL; stamp each notification as it arrives; count the rows in ``seen``;
    at ``stop`` send back [(stamp, payload)]."""
    received: list[tuple[float, str]] = []
    with psycopg.connect(dsn, autocommit=True, application_name="esctl-bench-probe") as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        out.send("listening")
        while not stop.is_set():
            for note in conn.notifies(timeout=0.2):
                received.append((time.perf_counter(), note.payload))
                with seen.get_lock():
                    seen.value += note.payload.count(",") + 1
    out.send(received)
    out.close()


# --- the migrators ----------------------------------------------------------------------------


def esctl_command(*args: str, redis_url: str, dsn: str) -> list[str]:
    return [ESCTL, *args, "--app", APP, "--redis-url", redis_url, "--pg-dsn", dsn]


class RunLoop:
    """``esctl migrate redis-to-pg`` rerun back to back in a thread, until stopped."""

    def __init__(self, redis_url: str, dsn: str) -> None:
        self.command = esctl_command(
            "migrate", "redis-to-pg", "--json", "--no-progress", redis_url=redis_url, dsn=dsn
        )
        self.done_cpu = 0.0
        self.runs: list[tuple[float, int]] = []
        self.elapsed: list[float] = []
        """Each run's own ``elapsed_s`` (its summary): the rest of its wall time is start-up."""
        self.pid: int | None = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-run-loop", daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            started = time.perf_counter()
            with tempfile.TemporaryFile() as out:
                proc = subprocess.Popen(self.command, stdout=out)
                with self.lock:
                    self.pid = proc.pid
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                out.seek(0)
                with suppress(ValueError, KeyError):
                    self.elapsed.append(float(json.loads(out.read())["elapsed_s"]))
            with self.lock:
                self.pid = None
                self.done_cpu += usage.ru_utime + usage.ru_stime
                self.runs.append((time.perf_counter() - started, proc.returncode))

    def cpu(self) -> float:
        with self.lock:
            return self.done_cpu + (process_tree_cpu(self.pid) if self.pid else 0.0)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> str:
        self.stopping.set()
        self.thread.join()
        codes = sorted({code for _, code in self.runs})
        seconds = sorted(s for s, _ in self.runs)
        own = sorted(self.elapsed)
        return (
            f"{len(self.runs)} runs, median {_median(seconds):.2f} s each (of which "
            f"{_median(own):.2f} s by their own elapsed_s), exit codes {codes}"
        )


def _median(values: Sequence[float]) -> float:
    return values[len(values) // 2] if values else 0.0


class Follower:
    """One ``esctl migrate redis-to-pg --follow`` process; its JSON lines are kept."""

    def __init__(self, redis_url: str, dsn: str) -> None:
        command = esctl_command(
            "migrate",
            "redis-to-pg",
            "--follow",
            "--enable-notifications",
            "--json",
            "--no-progress",
            redis_url=redis_url,
            dsn=dsn,
        )
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.lines: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"unparsed": line})

    def wait_following(self, timeout: float = 30.0) -> None:
        """Until its first sweep (the catch-up) has finished, or it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(
                line.get("event") == "sweep" and line.get("phase") == "finished"
                for line in self.lines
            ):
                return
            time.sleep(0.05)
        if self.proc.poll() is not None:
            raise SystemExit(f"the follower exited with {self.proc.returncode}: {self.lines[-3:]}")

    def cpu(self) -> float:
        return process_tree_cpu(self.proc.pid)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.reader.join()
        return f"SIGTERM -> exit {code}"


def follow_available() -> bool:
    help_text = subprocess.run(
        [ESCTL, "migrate", "redis-to-pg", "--help"], capture_output=True, text=True, check=True
    ).stdout
    return "--follow" in help_text


# --- one phase: a rate under a running migrator -------------------------------------------------


@dataclass
class Phase:
    mode: str
    layout: str
    rate: int
    written: int = 0
    achieved_rate: float = 0.0
    lag_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    unseen: int = 0
    drain_s: float | None = None
    verify_exit: int | None = None
    verify_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.mode} {self.layout} {self.rate}/s"


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {"n": len(ordered), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)}


@contextmanager
def probe(dsn: str) -> Iterator[tuple[Any, list[tuple[float, str]]]]:
    """The LISTENing probe process while the body runs: (its row counter, the list its
    notifications are put in when the body ends). Spawned, not forked: a forked child would
    hold the run loop's half-made subprocess pipes open and stall it."""
    ctx = multiprocessing.get_context("spawn")
    seen = ctx.Value("q", 0)
    stop = ctx.Event()
    mine, theirs = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_probe, args=(dsn, seen, stop, theirs), daemon=True)
    proc.start()
    if mine.recv() != "listening":
        raise SystemExit("the probe did not start")
    received: list[tuple[float, str]] = []
    try:
        yield seen, received
    finally:
        stop.set()
        received.extend(mine.recv())
        proc.join()


def write(
    redis_url: str,
    targets: list[tuple[str, str, int]],
    layout: str,
    rate: int,
    args: argparse.Namespace,
    seed: int,
) -> list[tuple[str, int, bool, float]]:
    """Run the writer process and return its records; the aggregates' next versions in
    ``targets`` are advanced. The process is joined by the caller's next start, outside any
    measured span (a waited-for child counts in this process's CPU)."""
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=run_writer,
        args=(redis_url, targets, layout, rate, args.seconds, args.compressed_share, seed, theirs),
        daemon=True,
    )
    proc.start()
    records: list[tuple[str, int, bool, float]] = mine.recv()
    _WRITERS.append(proc)
    index = {t[0]: i for i, t in enumerate(targets)}
    for aggregate_id, version, _, _ in records:
        i = index[aggregate_id]
        targets[i] = (aggregate_id, targets[i][1], max(targets[i][2], version + 1))
    return records


_WRITERS: list[Any] = []


def reap_writers() -> None:
    while _WRITERS:
        _WRITERS.pop().join()


def run_phase(
    phase: Phase,
    *,
    redis_url: str,
    dsn: str,
    targets: list[tuple[str, str, int]],
    keys: dict[int, str],
    meter: Meter,
    esctl_cpu: Any,
    args: argparse.Namespace,
    seed: int,
) -> None:
    with probe(dsn) as (seen, received):
        with meter.measure(phase.label, dsn, esctl_cpu=esctl_cpu) as cost:
            records = write(redis_url, targets, phase.layout, phase.rate, args, seed)
            cost.events += len(records)
        last_commit = records[-1][3]
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while seen.value < len(records) and time.monotonic() < deadline:
            time.sleep(0.01)
    reap_writers()
    first_seen: dict[tuple[str, int], float] = {}
    for stamp, payload in received:
        for item in payload.split(","):
            key, _, version = item.partition(":")
            first_seen.setdefault((keys[int(key)], int(version)), stamp)
    lags: dict[str, list[float]] = {"all": [], "compressed": [], "plain": []}
    seen_times = []
    for aggregate_id, version, compressed, committed in records:
        stamp = first_seen.get((aggregate_id, version))
        if stamp is None:
            phase.unseen += 1
            continue
        seen_times.append(stamp)
        lags["all"].append(stamp - committed)
        lags["compressed" if compressed else "plain"].append(stamp - committed)
    phase.written = len(records)
    phase.achieved_rate = len(records) / max(1e-9, records[-1][3] - records[0][3])
    phase.lag_ms = {kind: percentiles(values) for kind, values in lags.items()}
    if not phase.unseen:
        phase.drain_s = round(max(seen_times) - last_commit, 3)
    verify = subprocess.run(
        esctl_command("migrate", "verify", "--json", redis_url=redis_url, dsn=dsn),
        capture_output=True,
        text=True,
    )
    phase.verify_exit = verify.returncode
    try:
        document = json.loads(verify.stdout)
        phase.verify_summary = {
            k: document.get(k)
            for k in ("aggregates", "events_compared", "problem_counts", "problems_total")
        }
    except ValueError:
        phase.verify_summary = {"stderr": verify.stderr[-500:]}


# --- the run ---------------------------------------------------------------------------------


def prepare_database(redis_url: str, dsn: str) -> dict[int, str]:
    """The first migration (untimed), then the probe's trigger; aggregate_key -> aggregate id."""
    subprocess.run(
        esctl_command(
            "migrate", "redis-to-pg", "--init-schema", "--json", "--no-progress",
            redis_url=redis_url, dsn=dsn,
        ),
        stdout=subprocess.DEVNULL,
        check=True,
    )  # fmt: skip
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(PROBE_SQL)
        rows = conn.execute(
            "SELECT aggregate_key, aggregate_id FROM aggregate WHERE application_name = %s", (APP,)
        ).fetchall()
    return {int(key): str(aggregate_id) for key, aggregate_id in rows}


def print_phases(phases: Sequence[Phase]) -> None:
    print(
        f"\n{'lag (ms) from commit in Redis to visible in PG':<46} {'events':>7} {'ev/s':>6} "
        f"{'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} {'p99 gz':>7} {'p99 pl':>7} "
        f"{'drain s':>7} {'verify':>6}"
    )

    def ms(value: float | None) -> str:
        return f"{'-':>7}" if value is None else f"{value:7.0f}"

    for p in phases:
        a, gz, pl = p.lag_ms["all"], p.lag_ms["compressed"], p.lag_ms["plain"]
        drain = (
            f"{p.drain_s:7.2f}"
            if p.drain_s is not None
            else f"{'>' + str(int(DRAIN_TIMEOUT_S)):>7}"
        )
        print(
            f"{p.label:<46} {p.written:>7,} {p.achieved_rate:>6.0f} {ms(a['p50'])} {ms(a['p90'])} "
            f"{ms(a['p99'])} {ms(a['max'])} {ms(gz['p99'])} {ms(pl['p99'])} {drain} "
            f"{p.verify_exit!s:>6}" + (f"  ({p.unseen} never seen)" if p.unseen else "")
        )
    print(
        "p99 gz / p99 pl: compressed / plain payloads; drain: the writer's last commit until PG "
        "held every event; verify: exit code of 'migrate verify' after the drain."
    )


def print_ratios(phases: Sequence[Phase]) -> dict[str, float]:
    ratios: dict[str, float] = {}
    by = {(p.mode, p.layout, p.rate): p for p in phases}
    for (mode, layout, rate), p in by.items():
        base = by.get(("loop", layout, rate))
        if mode != "follow" or base is None:
            continue
        fp99, lp99 = p.lag_ms["all"]["p99"], base.lag_ms["all"]["p99"]
        if fp99 and lp99:
            ratios[f"{layout} {rate}/s"] = round(lp99 / fp99, 2)
    if ratios:
        print("\np99 lag, loop / follow (same run):")
        for key, value in ratios.items():
            print(f"  {key:<24} {value:6.1f}x")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--aggregates", type=int, default=20_000)
    parser.add_argument("--rates", default="100,1000,5000", help="events/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="writer time per rate")
    parser.add_argument("--layouts", default="partitioned,legacy")
    parser.add_argument("--modes", default="loop,follow")
    parser.add_argument("--compressed-share", type=float, default=0.3)
    parser.add_argument("--redis-url")
    parser.add_argument(
        "--pg-dsn", help="an admin DSN: databases are created and dropped through it"
    )
    add_json_option(parser)
    args = parser.parse_args()
    with json_output(args.json, "bench_follow") as document:
        run(args, document)


def run(args: argparse.Namespace, document: dict[str, Any]) -> None:
    rates = [int(r) for r in args.rates.split(",")]
    layouts = args.layouts.split(",")
    modes = args.modes.split(",")
    if "follow" in modes and not follow_available():
        print("follow: this esctl has no 'migrate redis-to-pg --follow': measuring the loop only")
        modes = [m for m in modes if m != "follow"]
    with bench_servers(args.redis_url, args.pg_dsn) as (redis_url, admin_dsn):
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        events = write_bulk_store(
            client, app=APP, aggregates=args.aggregates, events_per_aggregate=(1, 12)
        )
        targets = load_targets(client)
        print(f"store: {events:,} events in {len(targets):,} aggregates of {APP}")
        print("load average at the start: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
        meter = Meter([redis_url], admin_dsn)
        seed = 1
        for rate in rates:
            with meter.measure(f"writer only {rate}/s") as cost:
                cost.events += len(write(redis_url, targets, "partitioned", rate, args, seed))
            reap_writers()
            seed += 1
        phases: list[Phase] = []
        migrators: dict[str, str] = {}
        for mode in modes:
            for layout in layouts:
                with database(admin_dsn) as dsn:
                    keys = prepare_database(redis_url, dsn)
                    migrator: RunLoop | Follower
                    if mode == "loop":
                        migrator = RunLoop(redis_url, dsn)
                        migrator.start()
                    else:
                        migrator = Follower(redis_url, dsn)
                        migrator.wait_following()
                    for rate in rates:
                        phase = Phase(mode, layout, rate)
                        run_phase(
                            phase, redis_url=redis_url, dsn=dsn, targets=targets, keys=keys,
                            meter=meter, esctl_cpu=migrator.cpu, args=args, seed=seed,
                        )  # fmt: skip
                        seed += 1
                        phases.append(phase)
                        print(
                            f"{phase.label}: p99 {phase.lag_ms['all']['p99']} ms, drain "
                            f"{phase.drain_s} s, verify exit {phase.verify_exit}",
                            flush=True,
                        )
                    migrators[f"{mode} {layout}"] = migrator.stop()
        print_phases(phases)
        ratios = print_ratios(phases)
        print("\nmigrators: " + "; ".join(f"{k}: {v}" for k, v in migrators.items()))
        print("load average at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
        meter.print_table()
        print(
            "Per written event while the writer ran. esctl: the loop's runs or the follower "
            "(process tree, /proc); PG bk includes the probe's trigger and LISTEN backend; Redis "
            "includes the writes themselves (see the writer-only lines)."
        )
        document.update(
            store_events=events,
            aggregates=len(targets),
            seconds_per_rate=args.seconds,
            phases=[p.__dict__ | {"label": p.label} for p in phases],
            p99_loop_per_follow=ratios,
            migrators=migrators,
            cost=meter.as_json(),
        )


if __name__ == "__main__":
    main()
