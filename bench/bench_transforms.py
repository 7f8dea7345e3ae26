"""Benchmark: ``migrate redis-to-pg --transforms`` against the same migration without rules,
measured in one run on one store.

    python bench/bench_transforms.py [--events 50000] [--rounds 2]

Migrates the bulk store (bench/_common.py) into a fresh database per measurement, in rounds of
three (alternating, so the machine's drift hits all three alike), and prints the best events/s
of each and the ratios to the run without rules (best to best, and the range and median of the
ratios within a round, steadier when the machine is shared):
- declarative: a ``rename_assembly`` and a ``rename_namespace`` that rewrite every ``$type`` of
  every event, a ``rename_type`` of one type and a ``leave_out`` that matches nothing (every
  event kept, so the rows written are the same; issue target >= 0.9);
- identity callable: a ``[[python]]`` callable returning each event unchanged (target >= 0.75).

Then it measures the engine alone, in the same alternating rounds: the CPU per event of
turning the store's checked payloads (esctl.streams.clean_payloads, done beforehand) into
COPY rows, as the plain reader does (no rules) and as the transforming reader does (each rule
set), and prints what each rule set adds per event. ``--engine-only`` skips the migrations (no
PostgreSQL needed); ``--profile-engine RULES`` runs the declarative (or identity) engine
in a loop for a profiler (py-spy, ``python -m cProfile``).

By default it starts throwaway Redis and PostgreSQL servers (esctl.servers); --redis-url /
--pg-dsn point it at servers of your own (it FLUSHes that Redis database and creates/drops
PostgreSQL databases named esctl_bench_*).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis
from _common import Meter, add_json_option, bench_servers, database, json_output, write_store

from esctl import layout
from esctl.migrate import MigrateOptions, migrate_redis_to_pg
from esctl.migrate.rows import binary_row
from esctl.migrate.transformed import transformed_rows
from esctl.streams import CleanPayload, clean_payloads
from esctl.transforms import Numbering, load_rules, transform_checked

APP = "Bench.Transforms"
ASM = "Learning.ScoringService.Domain"

DECLARATIVE = f"""
[[leave_out]]
event_type = "NoSuchEventType*"

[[rename_type]]
from = "{ASM}.Events.ItemScoreCreated"
to = "Learning.Scoring.Events.ScoreCreated"

[[rename_namespace]]
from = "{ASM}.Models"
to = "Learning.Scoring.Models"

[[rename_assembly]]
from = "{ASM}"
to = "Learning.Scoring.Domain"
"""

IDENTITY = '[[python]]\ncallable = "bench_identity:identity"\n'
IDENTITY_MODULE = "def identity(event):\n    return event\n"


def migrate(
    client: redis.Redis,
    admin_dsn: str,
    transforms: str | None,
    events: int,
    meter: Meter,
    label: str,
) -> float:
    with database(admin_dsn) as dsn:
        opts = MigrateOptions(app=APP, pg_dsn=dsn, init_schema=True, transforms=transforms)
        with meter.measure(label, dsn) as cost:
            summary = migrate_redis_to_pg(client, opts)
            cost.events += summary.events_migrated
        assert not summary.problems, summary.problems[:3]
        assert summary.events_migrated == events, (summary.events_migrated, events)
        return summary.events_per_s


Stream = tuple[str, list[str], list[bytes | None]]
"""An aggregate as stored: its id, its commit ids, their stored values."""


def load_streams(client: redis.Redis) -> list[Stream]:
    """Every aggregate of the bench store with its stored values (partitioned or legacy)."""
    keys = sorted(k.decode() for k in client.scan_iter(layout.commit_list_pattern(APP), 1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.lrange(key, 0, -1)
    lists = [[c.decode() for c in ids] for ids in pipe.execute()]
    for ids in lists:
        for commit_id in ids:
            pipe.hget(layout.event_hash_key(APP, commit_id), commit_id)
            pipe.hget(layout.legacy_event_hash_key(APP), commit_id)
    values = iter(pipe.execute())
    streams: list[Stream] = []
    for key, ids in zip(keys, lists, strict=True):
        got = [(lambda a, b: a if a is not None else b)(next(values), next(values)) for _ in ids]
        streams.append((layout.aggregate_id_from_commit_list_key(APP, key), ids, got))
    return streams


Checked = list[tuple[str, list[str], list[CleanPayload]]]


def checked(streams: list[Stream]) -> Checked:
    """What the readers' hot path hands on: each stream's checked payloads (parsed)."""
    out: Checked = []
    for aggregate_id, ids, values in streams:
        clean = clean_payloads(aggregate_id, values)
        assert clean is not None, aggregate_id
        out.append((aggregate_id, ids, clean[1]))
    return out


def engine_pass(streams: Checked, rules_path: str | None) -> float:
    """CPU-seconds of turning ``streams`` into COPY rows: as the plain reader does (no rules),
    else as the transforming reader does (the rules, then the rows)."""
    if rules_path is None:
        started = time.process_time()
        for _, _, events in streams:
            [binary_row(e.moment, e.version, e.type_name, e.payload) for e in events]
        return time.process_time() - started
    rules = load_rules(rules_path).rules
    started = time.process_time()
    for aggregate_id, ids, events in streams:
        outcome = transform_checked(rules, aggregate_id, ids, events, Numbering())
        assert outcome.failure is None, outcome.failure
        transformed_rows(outcome)
    return time.process_time() - started


def engine_rounds(
    client: redis.Redis, runs: dict[str, str | None], rounds: int, events: int
) -> dict[str, float]:
    """The best CPU µs per event of each of ``runs`` (alternating rounds; each pass gets its
    payloads checked afresh, outside the measurement: the rules change them in place)."""
    streams = load_streams(client)
    best: dict[str, float] = {}
    for round_ in range(rounds):
        for name, path in runs.items():
            us = engine_pass(checked(streams), path) / events * 1e6
            print(f"engine round {round_ + 1}: {name:>17}: {us:6.2f} µs/event")
            best[name] = min(best.get(name, us), us)
    return best


def profile_engine(client: redis.Redis, path: str, seconds: float) -> None:
    """The engine over the store again and again for ``seconds`` (for a profiler)."""
    streams = load_streams(client)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        engine_pass(checked(streams), path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--redis-url")
    parser.add_argument("--pg-dsn", help="an admin DSN: databases are created and dropped")
    parser.add_argument("--engine-only", action="store_true", help="measure the engine alone")
    parser.add_argument(
        "--profile-engine",
        choices=["declarative", "identity"],
        help="run that engine for --seconds (under a profiler), measure nothing",
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    add_json_option(parser)
    args = parser.parse_args()
    with json_output(args.json, "bench_transforms") as document:
        run(args, document)


def run(args: argparse.Namespace, document: dict[str, object]) -> None:
    engine_only = args.engine_only or args.profile_engine is not None
    with (
        tempfile.TemporaryDirectory(prefix="esctl-bench-") as folder,
        # (the engine alone needs no PostgreSQL: "" keeps one from being started)
        bench_servers(args.redis_url, args.pg_dsn or ("" if engine_only else None)) as (
            redis_url,
            admin_dsn,
        ),
    ):
        declarative = Path(folder, "declarative.toml")
        declarative.write_text(DECLARATIVE, encoding="utf-8")
        identity = Path(folder, "identity.toml")
        identity.write_text(IDENTITY, encoding="utf-8")
        Path(folder, "bench_identity.py").write_text(IDENTITY_MODULE, encoding="utf-8")
        sys.path.insert(0, folder)
        client = redis.Redis.from_url(redis_url)
        events = write_store(client, APP, args.events)
        print(f"store: {events:,} events written to {APP}")
        runs = {
            "no rules": None,
            "declarative": str(declarative),
            "identity callable": str(identity),
        }
        if args.profile_engine is not None:
            profile_engine(client, str(Path(folder, f"{args.profile_engine}.toml")), args.seconds)
            return
        if not engine_only:
            migrations(client, redis_url, admin_dsn, runs, args.rounds, events, document)
        engine = engine_rounds(client, runs, args.rounds, events)
        print(
            "engine CPU per event (best), extra over no rules: "
            f"declarative +{engine['declarative'] - engine['no rules']:.2f} µs, "
            f"identity callable +{engine['identity callable'] - engine['no rules']:.2f} µs "
            f"(no rules: {engine['no rules']:.2f} µs, the rows alone)"
        )
        document.update(
            events=events, engine_us_per_event={k: round(v, 3) for k, v in engine.items()}
        )


def migrations(
    client: redis.Redis,
    redis_url: str,
    admin_dsn: str,
    runs: dict[str, str | None],
    rounds: int,
    events: int,
    document: dict[str, object],
) -> None:
    """The migrations, alternating, and their ratios to the one without rules."""
    meter = Meter([redis_url], admin_dsn)
    best = dict.fromkeys(runs, 0.0)
    paired: dict[str, list[float]] = {"declarative": [], "identity callable": []}
    for round_ in range(rounds):
        rates = {}
        for name, transforms in runs.items():
            rate = rates[name] = migrate(client, admin_dsn, transforms, events, meter, name)
            print(f"round {round_ + 1}: {name:>17}: {rate:>9,.0f} events/s")
            best[name] = max(best[name], rate)
        for name, ratios in paired.items():
            ratios.append(rates[name] / rates["no rules"])
    base = best["no rules"]
    print()
    for name, target in (("declarative", 0.9), ("identity callable", 0.75)):
        within = sorted(paired[name])
        print(
            f"{name + ' / no rules':<28}: {best[name] / base:5.2f}x (target >= {target}); "
            f"in each round {within[0]:.2f}x-{within[-1]:.2f}x, "
            f"median {statistics.median(within):.2f}x"
        )
    meter.print_table(list(runs))
    esctl_us = {k: meter.costs[k].per_event_us(meter.costs[k].esctl_s) or 0.0 for k in runs}
    print(
        "esctl CPU per event, extra over no rules: "
        f"declarative +{esctl_us['declarative'] - esctl_us['no rules']:.1f} µs, "
        f"identity callable +{esctl_us['identity callable'] - esctl_us['no rules']:.1f} µs"
    )
    # With both cores busy, events/s follow the CPU an event costs esctl and the backends
    # together: the ratio that CPU gives does not drift with what else runs on the machine.
    whole = {
        k: esctl_us[k] + (meter.costs[k].per_event_us(meter.costs[k].pg_backends_s) or 0.0)
        for k in runs
    }
    print(
        "ratio of CPU per event (esctl + PostgreSQL backends), no rules / with rules: "
        f"declarative {whole['no rules'] / whole['declarative']:.2f}x, "
        f"identity callable {whole['no rules'] / whole['identity callable']:.2f}x"
    )
    document.update(
        costs=meter.as_json(),
        events_per_s={k: round(v) for k, v in best.items()},
        ratios={
            "declarative/no_rules": round(best["declarative"] / base, 3),
            "identity/no_rules": round(best["identity callable"] / base, 3),
        },
        ratios_per_round={k: [round(r, 3) for r in v] for k, v in paired.items()},
        cpu_ratios={
            "declarative/no_rules": round(whole["no rules"] / whole["declarative"], 3),
            "identity/no_rules": round(whole["no rules"] / whole["identity callable"], 3),
        },
    )


if __name__ == "__main__":
    main()
