"""``run_doctor``: every check the options give a scope for, in one report. Never raises for
what it finds: an unreachable server is a failed check, a refused command an unavailable one."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from esctl import inspect, redisio
from esctl.config import redact
from esctl.doctor.pg_checks import run_pg_checks
from esctl.doctor.queue_checks import run_queue_checks
from esctl.doctor.readings import Readings
from esctl.doctor.redis_checks import redis_unavailable, run_redis_checks
from esctl.doctor.redis_facts import ServerFacts, memory_limit, read_servers
from esctl.doctor.redis_memory_checks import DataPresence
from esctl.doctor.redis_server_checks import REACHABLE
from esctl.doctor.report import Check, DoctorOptions, DoctorReport
from esctl.doctor.store_checks import run_store_checks
from esctl.errors import ConnectionFailed
from esctl.metrics import Metric


def run_doctor(opts: DoctorOptions) -> DoctorReport:
    """Run every check the options give a scope for. Never raises for what it finds: an
    unreachable server is a failed check, a refused command an unavailable one."""
    started = time.monotonic()
    moment = opts.now or datetime.now(UTC)
    checks: list[Check] = []
    skipped: list[dict[str, str]] = []
    # Named as redisio.describe names a reached server, so the JSON and the metrics' labels
    # are the same whether it answered or not.
    server = redisio.describe_url(opts.redis_url, cluster=opts.cluster)
    client: redisio.RedisClient | None = None
    stats: inspect.StatsReport | None = None
    notes: list[dict[str, Any]] = []
    try:
        # A lone cluster node, or a server loading its data set, is a finding: reported as it
        # is now (how far it got), not refused or waited for.
        client = redisio.connect(opts.redis_url, cluster=opts.cluster, diagnosing=True)
        server = redisio.describe(client)
    except ConnectionFailed as exc:
        checks.append(
            REACHABLE.result(
                "fail",
                exc.message,
                action=exc.hint,
                metrics=[Metric("esctl_doctor_redis_up", 0, {"server": server})],
            )
        )
        checks += redis_unavailable("Redis unreachable")
    try:
        if client is not None:
            readings = Readings(client, opts.read_only)
            redis_checks, stats = _redis_side(client, opts, moment, readings, skipped)
            checks += redis_checks
            notes = readings.notes
        else:
            for group, scope in (("event_store", opts.app), ("queues", opts.env)):
                if scope:
                    skipped.append({"group": group, "reason": "Redis unreachable"})
        if opts.pg_dsn:
            checks += run_pg_checks(opts, client, stats)
        else:
            skipped.append(
                {
                    "group": "postgresql",
                    "reason": "no PostgreSQL DSN configured (--pg-dsn, ESCTL_PG_DSN or pg_dsn "
                    "in the config file)",
                }
            )
    finally:
        if client is not None:
            client.close()
    return DoctorReport(
        generated_at=moment.isoformat(),
        redis=server,
        app=opts.app,
        env=opts.env,
        postgresql=redact(opts.pg_dsn) if opts.pg_dsn else None,
        checks=checks,
        skipped=skipped,
        readings=notes,
        elapsed_s=time.monotonic() - started,
    )


def _redis_side(
    client: redisio.RedisClient,
    opts: DoctorOptions,
    moment: datetime,
    readings: Readings,
    skipped: list[dict[str, str]],
) -> tuple[list[Check], inspect.StatsReport | None]:
    taken_at = moment.timestamp()
    facts = read_servers(client)
    read = [f for f in facts.values() if isinstance(f, ServerFacts)]
    # Growth and the event data's share compare with the whole cluster's room: data spreads
    # over every primary (a node short of memory shows in its own redis.maxmemory line).
    limit = memory_limit(read) if read and len(read) == len(facts) else None

    # The scoped data first: the eviction policy's verdict depends on what is stored.
    presence = DataPresence()
    store_checks: list[Check] = []
    queue_checks: list[Check] = []
    stats: inspect.StatsReport | None = None
    if opts.app:
        store_checks, stats = run_store_checks(client, opts, taken_at, limit, readings)
        if stats is not None:
            presence.events = stats.commit_ids
    else:
        skipped.append({"group": "event_store", "reason": "no --app given"})
    if opts.env:
        queue_checks, presence.queues = run_queue_checks(client, opts, moment, readings)
    else:
        skipped.append({"group": "queues", "reason": "no --env given"})
    return run_redis_checks(client, facts, presence) + store_checks + queue_checks, stats
