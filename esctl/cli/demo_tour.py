"""The tour ``esctl demo`` prints: commands to try on the demo store, in order, each with what
it shows. Each capability appends its own steps to TOUR."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from esctl.demo import DemoSummary


@dataclass(frozen=True)
class TourStep:
    """A command to try on the demo store. ``command`` may name ``{placeholders}`` from
    :attr:`DemoSummary.samples` (filled in shell-quoted; write literal braces as ``{{ }}``)."""

    command: str
    description: str


TOUR: list[TourStep] = [
    TourStep("esctl config show", "the settings the exported variables give (passwords as ***)"),
    TourStep(
        '{redis_cli} -u "$ESCTL_REDIS_URL" --raw HGET {compressed_hash} {compressed_commit} '
        "| esctl events decode --pretty -",
        "decode a gzip+base64 ('H4sI…') payload into its JSON",
    ),
    TourStep(
        '{redis_cli} -u "$ESCTL_REDIS_URL" --raw HGET {invalid_hash} {invalid_commit} '
        "| esctl events decode -",
        "a corrupt 'H4sI…' value: reported on stderr, exit code 3",
    ),
    TourStep(
        '{redis_cli} -u "$ESCTL_REDIS_URL" --raw HGET {legacy_hash} {legacy_commit} '
        "| esctl events decode --text -",
        "an event of the legacy (pre-October-2017) layout",
    ),
    TourStep(
        "esctl inspect aggregate {legacy_aggregate}",
        "an aggregate whose early events are in the legacy hash and later ones in partitions, "
        "decoded, with its snapshot version",
    ),
    TourStep(
        "esctl inspect event {compressed_commit}",
        "one event by commit id: where it is stored, whether a commit list names it, its JSON",
    ),
    TourStep(
        "esctl inspect integrity",
        "scan the whole store: the planted orphan, missing payload, invalid gzip value, version "
        "gap and shared commit list, and nothing else (exit code 3)",
    ),
    TourStep(
        "esctl inspect stats",
        "where the memory goes: keys and MEMORY USAGE per family, compressed share, event types "
        "by stored bytes",
    ),
    TourStep(
        "esctl events query --type OrderPlaced --where 'ShippingAddress.Country=DE'",
        "find events by type and by a field inside the payload, gzip or not",
    ),
    TourStep(
        "esctl events query --where 'Lines.Sku=BK-1042' --since 2019-01-01 --limit 5",
        "fields inside $values lists are looked through",
    ),
    TourStep(
        "printf '%s\\n' '[[leave_out]]' 'event_type = \"Envelope*\"' '[[rename_assembly]]' "
        "'from = \"Learning.ScoringService.Domain\"' 'to = \"Learning.Scoring.Domain\"' "
        "> demo-rules.toml",
        "a transforms file: leave out the Envelope`1 messages (one-off messages, not worth "
        "keeping) and rename the events' assembly, as after a refactoring",
    ),
    TourStep(
        "esctl events query --transforms demo-rules.toml --aggregate-type Gradebook --json "
        "| jq -r '.[].data[\"$type\"]'",
        "preview the rules on the Redis events, nothing written: the Gradebooks' Envelope`1 "
        "events are gone (counted on stderr, versions renumbered), every $type names the new "
        "assembly",
    ),
    TourStep(
        "esctl migrate plan --transforms demo-rules.toml",
        "what the rules would do to a migration: per rule, the events and bytes left out and "
        "the events changed",
    ),
    TourStep(
        "esctl migrate redis-to-pg --init-schema",
        "copy the committed events into the demo PostgreSQL; the defective aggregates are "
        "quarantined and reported (exit code 3)",
    ),
    TourStep(
        "esctl events query --source pg --type OrderPlaced --where 'ShippingAddress.Country=DE'",
        "the same question asked of PostgreSQL: the same events (commit_id is null there)",
    ),
    TourStep("esctl migrate verify", "compare Redis with PostgreSQL aggregate by aggregate"),
    TourStep(
        "esctl queue list",
        "every subscriber's queue: waiting, processing (with the age of the oldest), dead "
        "letters, RetryData",
    ),
    TourStep(
        "esctl queue peek {dead_subscriber} {dead_event_type} --list dead",
        "dead letters, next first, with their RetryData (retry count, last exception)",
    ),
    TourStep(
        "esctl queue requeue {stuck_subscriber} {stuck_event_type} --older-than 5m --dry-run",
        "which stuck processing messages would go back to PublishedEvents",
    ),
    TourStep(
        "esctl queue requeue {stuck_subscriber} {stuck_event_type} --older-than 5m --yes",
        "requeue them: atomic moves to the tail (taken next), then one notification",
    ),
    TourStep(
        "esctl queue drain {dead_subscriber} {dead_event_type} --list dead "
        "--to-file dead.jsonl.zst --yes",
        "back the dead letters up to a file (0600, fsynced), then remove exactly those",
    ),
    TourStep(
        "esctl queue restore dead.jsonl.zst --yes", "put them back where they were, byte for byte"
    ),
    TourStep(
        "esctl replay --from redis --aggregate {aggregate} --to queue "
        "--subscriber {stuck_subscriber} --dry-run",
        "what replaying one aggregate to one read model would publish, per subscriber and type",
    ),
    TourStep(
        "esctl replay --from redis --aggregate {aggregate} --to queue "
        "--subscriber {stuck_subscriber}",
        "republish it: uncompressed JSON in version order, one transaction and notification per "
        "event",
    ),
    TourStep(
        "esctl replay --from pg --all --to projection --projection esctl.projections.event_counts "
        "--checkpoint event-counts --reset",
        "rebuild the example projection from PostgreSQL (rerun without --reset: it resumes)",
    ),
    TourStep(
        '{psql} "$ESCTL_PG_DSN" -c "SELECT * FROM projections.event_counts ORDER BY day DESC LIMIT 10"',
        "the projection's table: events per type per day",
    ),
    TourStep(
        "esctl doctor",
        "the demo Redis runs with maxmemory-policy allkeys-lru: doctor fails it (events could be "
        "evicted) with why and what to do, and flags no persistence, stuck messages, dead "
        "letters and the aggregates migrate quarantined (exit code 3)",
    ),
    TourStep(
        '{redis_cli} -u "$ESCTL_REDIS_URL" CONFIG SET maxmemory-policy noeviction',
        "the fix doctor names for the eviction policy",
    ),
    TourStep(
        'esctl doctor --json | jq -r \'.checks[] | select(.id == "redis.maxmemory_policy") '
        "| .status'",
        "ok now",
    ),
    TourStep(
        "esctl compress --threshold 500 --dry-run",
        "the demo's payloads over 1,000 bytes are compressed already; with a 500-byte threshold "
        "compress finds the plain ones and shows what it would rewrite",
    ),
    TourStep(
        "esctl compress --threshold 500 --yes",
        "rewrite them in place as gzip+base64, one compare-and-set per value",
    ),
]
"""Commands to try on the demo store, in order. Each capability appends its own steps."""


def tour(summary: DemoSummary, tools: Mapping[str, str] | None = None) -> list[TourStep]:
    """TOUR with the placeholders filled in from ``summary.samples`` and ``tools`` (how to run
    ``{psql}`` and ``{redis_cli}``; by default their bare names)."""
    values = {"psql": "psql", "redis_cli": "redis-cli", **(tools or {})}
    values = {name: shlex.quote(value) for name, value in values.items()}
    values.update((name, shlex.quote(value)) for name, value in summary.samples.items())
    return [TourStep(step.command.format(**values), step.description) for step in TOUR]
