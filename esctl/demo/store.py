"""Writes the demo event store into Redis as a live service writes it (``docs/layout.md``), in
time order, and says exactly what it wrote.

:func:`write_demo_store` writes a few hundred events of four aggregate types (a scoring
service's ``ItemScore``, ``Assessment``, ``Order`` and ``Gradebook``) in both storage layouts,
with compressed and plain payloads, snapshots, subscriber sets, queued / stuck / dead-lettered
messages and one of each kind of defect operators meet in real stores. It returns a
:class:`DemoSummary` that says exactly what it wrote, so tests use it as ground truth.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.exceptions

from esctl import codec, layout, redisio
from esctl.defaults import DEMO_SEED as DEFAULT_SEED
from esctl.demo.domain import (
    AGGREGATE_TYPES,
    DEFAULT_NOW,
    HISTORY_END,
    NOTIFICATION,
    REPORTING,
    SUBSCRIPTIONS,
)
from esctl.demo.plan import DemoPlan
from esctl.demo.queues import queue_commands, queue_counts
from esctl.demo.records import Event
from esctl.demo.summary import DEFECT_KINDS, DemoSummary, PlantedDefect
from esctl.errors import Refused

DEFAULT_AGGREGATES = 60
MIN_AGGREGATES = 20
"""The demo needs this many aggregates to hold every special case."""


def write_demo_store(
    client: redisio.RedisClient,
    *,
    app: str,
    env: str,
    seed: int = DEFAULT_SEED,
    aggregates: int = DEFAULT_AGGREGATES,
    now: datetime | None = None,
    check_empty: bool = True,
) -> DemoSummary:
    """Write the demo event store of ``app`` / ``env`` into Redis and say what was written.

    Deterministic for a given ``seed``, ``aggregates`` and ``now`` (default DEFAULT_NOW; the
    recent events and queued messages are timestamped relative to it, everything else lies
    between 2017 and HISTORY_END). Writes are made as a live service makes them, in time order:
    HSET of the payload (gzip+base64 above 1000 bytes) into its hash, then RPUSH of the commit
    id; queue messages are LPUSHed uncompressed. Sent in pipelined round trips (not atomic).

    With ``check_empty`` (default) it refuses (``Refused``) to write into a store that already
    has this app's legacy hash or this env's subscriber sets: appending a second demo to the
    same keys would make the summary wrong.
    """
    if aggregates < MIN_AGGREGATES:
        raise ValueError(f"the demo store needs at least {MIN_AGGREGATES} aggregates")
    moment = now or DEFAULT_NOW
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if moment < HISTORY_END + timedelta(days=4):
        raise ValueError(f"now must be after {HISTORY_END + timedelta(days=4):%Y-%m-%d}")
    plan = DemoPlan(app, env, seed, aggregates, moment.astimezone(UTC))
    if check_empty:
        probe = [layout.legacy_event_hash_key(app)]
        probe += [layout.subscribers_key(env, t) for t in SUBSCRIPTIONS]
        try:
            existing = client.exists(*probe)
        except redis.exceptions.RedisError as exc:
            raise redisio.wrap_errors(client, exc) from exc
        if existing:
            raise Refused(
                f"Redis {redisio.describe(client)} already holds data of app {app!r} or env "
                f"{env!r}; the demo writes only into an empty store",
                hint="use an empty database (or another --app / --env)",
            )
    plan.build()
    commands = _commands(plan)
    redisio.pipelined(client, commands)
    return _summary(plan, commands)


def _commands(plan: DemoPlan) -> list[tuple[Any, ...]]:
    """Every write, in the order a live system would have made them."""
    timed: list[tuple[int, int, list[tuple[Any, ...]]]] = []
    order = 0
    for event in plan.events_in_save_order():
        save: list[tuple[Any, ...]] = []
        if event.value is not None:
            save.append(("HSET", plan.hash_key(event), event.commit_id, event.value))
        save.append(("RPUSH", plan.list_key(event.aggregate), event.commit_id))
        timed.append((event.ticks, order, save))
        order += 1
    assert plan.orphan is not None
    orphan = plan.orphan
    timed.append(
        (orphan.ticks, order, [("HSET", plan.hash_key(orphan), orphan.commit_id, orphan.value)])
    )
    timed.sort(key=lambda item: (item[0], item[1]))
    commands = [command for _, _, save in timed for command in save]
    for aggregate, _, text in plan.snapshots:
        key = layout.snapshot_hash_key(plan.app, aggregate.id)
        commands.append(("HSET", key, aggregate.id, codec.encode_value(text)))
    for event_type, subscribers in SUBSCRIPTIONS.items():
        commands.append(("SADD", layout.subscribers_key(plan.env, event_type), *subscribers))
    commands += queue_commands(plan)
    return commands


def _summary(plan: DemoPlan, commands: Sequence[tuple[Any, ...]]) -> DemoSummary:
    app = plan.app
    committed = [e for a in plan.aggregates for e in a.events]
    stored = [e for e in committed if e.value is not None]
    readable = [e for e in committed if e.readable]
    list_keys = {plan.list_key(a) for a in plan.aggregates}
    assert plan.orphan is not None
    hash_keys = {plan.hash_key(e) for e in stored} | {plan.hash_key(plan.orphan)}
    legacy_aggregates = [a for a in plan.aggregates if any(e.legacy for e in a.events)]
    by_type: dict[str, list[str]] = {t: [] for t in AGGREGATE_TYPES}
    for aggregate in plan.aggregates:
        by_type[aggregate.type].append(aggregate.id)

    queues, retry_data = queue_counts(plan)

    written_keys = {str(command[1]) for command in commands}
    compressed = [e for e in readable if e.value is not None and e.value.startswith(b"H4sI")]
    snapshot_values = [codec.encode_value(text) for _, _, text in plan.snapshots]
    return DemoSummary(
        app=app,
        env=plan.env,
        seed=plan.seed,
        now=plan.now.isoformat(),
        aggregates=len(plan.aggregates),
        commit_lists=len(list_keys),
        commit_ids=len(committed),
        events=len(stored),
        readable_events=len(readable),
        compressed_events=len(compressed),
        legacy_events=sum(1 for e in stored if e.legacy),
        partitioned_events=sum(1 for e in stored if not e.legacy),
        hash_fields=len(stored) + 1,
        event_hashes=len(hash_keys),
        legacy_only_aggregates=sum(1 for a in legacy_aggregates if all(e.legacy for e in a.events)),
        mixed_layout_aggregates=sum(
            1 for a in legacy_aggregates if not all(e.legacy for e in a.events)
        ),
        aggregates_by_type={t: len(ids) for t, ids in by_type.items()},
        events_by_aggregate_type=dict(sorted(Counter(e.aggregate.type for e in readable).items())),
        events_by_event_type=dict(sorted(Counter(e.kind for e in readable).items())),
        aggregate_ids=by_type,
        snapshots=len(plan.snapshots),
        compressed_snapshots=sum(1 for v in snapshot_values if v.startswith(b"H4sI")),
        subscribers={t: sorted(s) for t, s in SUBSCRIPTIONS.items()},
        queues=queues,
        published_messages=sum(q.published for q in queues),
        processing_messages=sum(q.processing for q in queues),
        stuck_messages=sum(q.stuck for q in queues),
        dead_letters=sum(q.dead_letters for q in queues),
        retry_data=retry_data,
        keys=len(written_keys),
        defects=_defects(plan),
        samples=_samples(plan, compressed),
    )


def _defects(plan: DemoPlan) -> list[PlantedDefect]:
    found: list[PlantedDefect] = []
    assert plan.orphan is not None
    orphan = plan.orphan
    found.append(
        PlantedDefect(
            "orphan", plan.hash_key(orphan), orphan.aggregate.id, (orphan.aggregate.type,),
            orphan.commit_id,
            f"payload of {orphan.aggregate.type} version {orphan.version} that no commit "
            "list names (a save that died between HSET and RPUSH)",
        )
    )  # fmt: skip
    for aggregate in plan.aggregates:
        last = aggregate.events[-1]
        if aggregate.role == "missing_payload":
            found.append(
                PlantedDefect(
                    "missing_payload", plan.list_key(aggregate), aggregate.id,
                    (aggregate.type,), last.commit_id,
                    f"version {last.version} has no payload in either hash",
                )
            )  # fmt: skip
        elif aggregate.role == "invalid_compressed":
            found.append(
                PlantedDefect(
                    "invalid_compressed", plan.hash_key(last), aggregate.id, (aggregate.type,),
                    last.commit_id,
                    f"version {last.version} starts with H4sI but is not valid gzip",
                )
            )  # fmt: skip
        elif aggregate.role == "version_gap":
            versions = [e.version for e in aggregate.events]
            missing = sorted(set(range(1, versions[-1] + 1)) - set(versions))
            found.append(
                PlantedDefect(
                    "version_gap", plan.list_key(aggregate), aggregate.id, (aggregate.type,),
                    None,
                    f"versions {versions}: {', '.join(map(str, missing))} missing",
                )
            )  # fmt: skip
    shared = [a for a in plan.aggregates if a.role == "shared"]
    found.append(
        PlantedDefect(
            "shared_commit_list", plan.list_key(shared[0]), shared[0].id,
            tuple(a.type for a in shared), None,
            f"{' and '.join(a.type for a in shared)} {shared[0].id} both append to one "
            "commit list",
        )
    )  # fmt: skip
    order = {kind: i for i, kind in enumerate(DEFECT_KINDS)}
    return sorted(found, key=lambda d: order[d.kind])


def _samples(plan: DemoPlan, compressed: list[Event]) -> dict[str, str]:
    sample = next(e for e in compressed if not e.legacy)
    legacy = next(a for a in plan.aggregates if a.role == "mixed")
    recent = next(a for a in plan.aggregates if a.role == "recent_a")
    invalid = next(a for a in plan.aggregates if a.role == "invalid_compressed").events[-1]
    legacy_event = legacy.events[0]
    return {
        "app": plan.app,
        "env": plan.env,
        "compressed_hash": plan.hash_key(sample),
        "compressed_commit": sample.commit_id,
        "invalid_hash": plan.hash_key(invalid),
        "invalid_commit": invalid.commit_id,
        "legacy_hash": plan.hash_key(legacy_event),
        "legacy_commit": legacy_event.commit_id,
        "aggregate": recent.id,
        "legacy_aggregate": legacy.id,
        "stuck_subscriber": REPORTING,
        "stuck_event_type": "ItemScoreUpdated",
        "dead_subscriber": NOTIFICATION,
        "dead_event_type": "ItemScoreCreated",
    }
