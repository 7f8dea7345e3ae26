"""Benchmark: ``migrate redis-to-pg --transforms`` against the same migration without rules,
measured in one run on one store.

    python bench/bench_transforms.py [--events 50000] [--rounds 2]

Migrates the bulk store (bench/_common.py) into a fresh database per measurement, in rounds of
three (alternating, so the machine's drift hits all three alike), and prints the best events/s
of each and the ratios to the run without rules:
- declarative: a ``rename_assembly`` and a ``rename_namespace`` that rewrite every ``$type`` of
  every event, a ``rename_type`` of one type and a ``leave_out`` that matches nothing (every
  event kept, so the rows written are the same; issue target >= 0.9);
- identity callable: a ``[[python]]`` callable returning each event unchanged (target >= 0.75).

By default it starts throwaway Redis and PostgreSQL servers (esctl.servers); --redis-url /
--pg-dsn point it at servers of your own (it FLUSHes that Redis database and creates/drops
PostgreSQL databases named esctl_bench_*).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import redis
from _common import Meter, add_json_option, bench_servers, database, json_output, write_store

from esctl.migrate import MigrateOptions, migrate_redis_to_pg

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--redis-url")
    parser.add_argument("--pg-dsn", help="an admin DSN: databases are created and dropped")
    add_json_option(parser)
    args = parser.parse_args()
    with json_output(args.json, "bench_transforms") as document:
        run(args, document)


def run(args: argparse.Namespace, document: dict[str, object]) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="esctl-bench-") as folder,
        bench_servers(args.redis_url, args.pg_dsn) as (redis_url, admin_dsn),
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
        meter = Meter([redis_url], admin_dsn)
        best = dict.fromkeys(runs, 0.0)
        for round_ in range(args.rounds):
            for name, transforms in runs.items():
                rate = migrate(client, admin_dsn, transforms, events, meter, name)
                print(f"round {round_ + 1}: {name:>17}: {rate:>9,.0f} events/s")
                best[name] = max(best[name], rate)
        base = best["no rules"]
        print()
        print(f"declarative / no rules      : {best['declarative'] / base:5.2f}x (target >= 0.9)")
        print(
            f"identity callable / no rules: {best['identity callable'] / base:5.2f}x "
            "(target >= 0.75)"
        )
        meter.print_table(list(runs))
        esctl_us = {k: meter.costs[k].per_event_us(meter.costs[k].esctl_s) or 0.0 for k in runs}
        print(
            "esctl CPU per event, extra over no rules: "
            f"declarative +{esctl_us['declarative'] - esctl_us['no rules']:.1f} µs, "
            f"identity callable +{esctl_us['identity callable'] - esctl_us['no rules']:.1f} µs"
        )
        document.update(
            events=events,
            costs=meter.as_json(),
            events_per_s={k: round(v) for k, v in best.items()},
            ratios={
                "declarative/no_rules": round(best["declarative"] / base, 3),
                "identity/no_rules": round(best["identity callable"] / base, 3),
            },
        )


if __name__ == "__main__":
    main()
