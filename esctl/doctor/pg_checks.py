"""The PostgreSQL checks (only with a DSN the operator configured): reachable, the event
store schema, its unique constraints, the last migration run, the Redis events waiting for the
next run and the aggregates quarantined (left out until fixed by hand)."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from esctl import inspect, layout, pg, redisio
from esctl.config import redact
from esctl.doctor.report import Check, DoctorOptions, Status, Unjudgeable, declare, guarded
from esctl.errors import ConnectionFailed, SchemaIncompatible
from esctl.metrics import Metric
from esctl.units import format_duration

if TYPE_CHECKING:
    from esctl.pgevents import StillQuarantined

MIGRATION_STALE = timedelta(days=2)
COMMIT_LIST_SAMPLE_MAX = 1000


PG_REACHABLE = declare(
    "pg.reachable",
    "PostgreSQL reachable",
    why=(
        "The PostgreSQL event store is the migration's target and, after the switch, where "
        "services read and write their events."
    ),
    metrics={
        "esctl_doctor_pg_up": "1 when PostgreSQL answered.",
        "esctl_doctor_pg_ping_seconds": "Round-trip time of SELECT 1.",
    },
)


def _ssl_description(conn: Any) -> str | None:
    """``SSL TLSv1.3, sslmode=verify-full`` when the connection uses SSL, None when not."""
    row = conn.execute(
        "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    ).fetchone()
    if row is None or not row[0]:
        return None
    mode = next(
        (o.val.decode() for o in conn.pgconn.info if o.keyword == b"sslmode" and o.val), "?"
    )
    return f"SSL {row[1]}, sslmode={mode}"


def _pg_reachable(conn: Any, started: float) -> Check:
    ping_started = time.perf_counter()
    conn.execute("SELECT 1").fetchone()
    ping = time.perf_counter() - ping_started
    version = conn.info.parameter_status("server_version") or str(conn.info.server_version)
    ssl = _ssl_description(conn)
    return PG_REACHABLE.result(
        "ok",
        f"PostgreSQL {version}, SELECT 1 in {ping * 1000:.2f} ms (connect "
        f"{(ping_started - started) * 1000:.0f} ms), {ssl or 'no SSL'}",
        values={
            "server_version": version,
            "ping_ms": round(ping * 1000, 3),
            "ssl": ssl is not None,
        },
        metrics=[
            Metric("esctl_doctor_pg_up", 1),
            Metric("esctl_doctor_pg_ping_seconds", round(ping, 6)),
        ],
    )


PG_SCHEMA = declare(
    "pg.schema",
    "event store schema",
    why=(
        "Services on the SQL provider and esctl migrate need the library's tables, columns and "
        "functions exactly as its contract says (docs/layout.md §5)."
    ),
)


def _pg_schema(conn: Any, schema: str, app: str) -> Check:
    try:
        state = pg.check_event_store_schema(conn, schema)
    except SchemaIncompatible as exc:
        return PG_SCHEMA.result(
            "fail",
            f"incompatible: {exc.message}",
            action=exc.hint,
            values={"schema": schema, "compatible": False},
        )
    values = {
        "schema": schema,
        "tables_present": state.tables_present,
        "functions": list(state.functions_present),
    }
    if not state.tables_present:
        hidden = _hidden_tables(conn, schema)
        if hidden is not None:
            return PG_SCHEMA.unavailable(*hidden)
        return PG_SCHEMA.result(
            "warn",
            f"no event tables in schema {schema} yet",
            action="create them with the first migration: `esctl migrate redis-to-pg --app "
            f"{shlex.quote(app)} --init-schema`",
            values=values,
        )
    missing = sorted(
        {"save_event_for_aggregate", "get_events_for_aggregate"} - set(state.functions_present)
    )
    if missing:
        return PG_SCHEMA.result(
            "warn",
            f"tables compatible; {'function' if len(missing) == 1 else 'functions'} "
            f"{', '.join(missing)} missing in {schema}",
            action="services on the SQL provider call them: `esctl migrate redis-to-pg --app "
            f"{shlex.quote(app)} --init-schema` creates what is missing (never alters what "
            "exists)",
            values=values,
        )
    return PG_SCHEMA.result(
        "ok",
        f"{schema}.aggregate and {schema}.event compatible, both functions present",
        values=values,
    )


def _hidden_tables(conn: Any, schema: str) -> tuple[str, str] | None:
    """When information_schema showed no event table but pg_catalog has them: the role may not
    read them (information_schema lists only what it may use). Its observation and the grants
    to paste; None when the tables are really absent."""
    found = conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname IN ('aggregate', 'event')",
        (schema,),
    ).fetchone()[0]
    if not found:
        return None
    return (
        f"the event tables of schema {schema} exist, but role {conn.info.user} may not read them",
        _grant_read(conn, schema),
    )


def _grant_read(conn: Any, schema: str) -> str:
    """The grants that let the connection's role read the event tables and esctl's own, to
    paste (README's read-only role)."""
    role = sql.Identifier(conn.info.user).as_string(conn)
    schemas = f"{sql.Identifier(schema).as_string(conn)}, esctl"
    return (
        f"grant it read access ({pg.GRANTS_DOCS}): `GRANT USAGE ON SCHEMA {schemas} TO {role}; "
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {schemas} TO {role}`"
    )


def _refused_as_unjudgeable(conn: Any, schema: str, evaluate: Callable[[], Check]) -> Check:
    """``evaluate``, a privilege PostgreSQL refused making the check unavailable with the
    grants to paste (it was 'could not run: InsufficientPrivilege: …' and no action)."""
    try:
        return evaluate()
    except psycopg.errors.InsufficientPrivilege as exc:
        refused = redact(str(exc)).strip()
        raise Unjudgeable(
            f"role {conn.info.user} may not read what this check needs: {refused}",
            _grant_read(conn, schema),
        ) from exc


PG_CONSTRAINTS = declare(
    "pg.constraints",
    "unique constraints",
    why=(
        "The unique constraints on aggregate (id, application, type) and event (aggregate_key, "
        "version) keep events from being saved twice and make migration reruns idempotent."
    ),
)


def _pg_constraints(conn: Any, schema: str) -> Check:
    tables = {
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
            " AND table_name IN ('aggregate', 'event')",
            (schema,),
        ).fetchall()
    }
    if not tables:
        return PG_CONSTRAINTS.unavailable(
            *(_hidden_tables(conn, schema) or (f"no event tables in schema {schema} yet",))
        )
    present = {}
    for table, columns in pg.REQUIRED_UNIQUE.items():
        present[f"{table}({', '.join(columns)})"] = table in tables and pg._has_unique(
            conn, schema, table, columns
        )
    missing = [name for name, ok in present.items() if not ok]
    if missing:
        return PG_CONSTRAINTS.result(
            "fail",
            f"no UNIQUE constraint or index on {', '.join(f'{schema}.{m}' for m in missing)}",
            action="add them as in docs/layout.md §5 (`CREATE UNIQUE INDEX CONCURRENTLY …` on a "
            "live table), after removing duplicates",
            values={"unique": present},
        )
    return PG_CONSTRAINTS.result(
        "ok",
        ", ".join(f"{schema}.{name} unique" for name in present),
        values={"unique": present},
    )


def _still_quarantined(
    conn: Any, opts: DoctorOptions, *, ids: list[str] | None = None, limit: int | None = None
) -> StillQuarantined:
    """:func:`esctl.pgevents.still_quarantined` of the app (or of ``ids`` as read from Redis
    keys, matched as esctl.quarantine stores them)."""
    from esctl.pgevents import still_quarantined

    assert opts.app is not None
    printable = None if ids is None else [redisio.printable(i) for i in ids]
    return still_quarantined(conn, opts.pg_schema, opts.app, ids=printable, limit=limit)


@dataclass(frozen=True)
class Unmigrated:
    """The Redis events of ``APP`` past what esctl.migrated_stream records as migrated, told
    apart: ``waiting`` for the next run (estimated from a sample of commit lists) and
    ``quarantined``, of the aggregates still quarantined (read for up to
    :data:`COMMIT_LIST_SAMPLE_MAX` of them). ``exact`` when nothing was scaled."""

    waiting: int
    quarantined: int
    sampled: int
    exact: bool

    @property
    def total(self) -> int:
        return self.waiting + self.quarantined


def _missing(
    conn: Any, opts: DoctorOptions, client: redisio.RedisClient, ids: list[str]
) -> list[int]:
    """Each aggregate's events in Redis past what esctl.migrated_stream records as migrated
    (a list shorter than that, one that is gone, counts 0)."""
    from esctl.pgevents import migrated_commits

    assert opts.app is not None
    lengths = redisio.list_lengths(client, [layout.commit_list_key(opts.app, i) for i in ids])
    # A key that is not UTF-8 was never migrated (migrate quarantines it).
    readable = [i for i in ids if redisio.is_utf8(i)]
    migrated = migrated_commits(conn, opts.pg_schema, opts.app, readable) if readable else {}
    return [max(0, n - migrated.get(i, 0)) for i, n in zip(ids, lengths, strict=True)]


def _unmigrated_estimate(
    conn: Any,
    opts: DoctorOptions,
    client: redisio.RedisClient,
    lists: int,
    quarantine: StillQuarantined,
) -> Unmigrated:
    """Reads the first :data:`COMMIT_LIST_SAMPLE_MAX` commit lists in SCAN order, compares
    their length with esctl.migrated_stream and scales the events of those not quarantined
    to every commit list (``waiting``); reads the lists of the first
    :data:`COMMIT_LIST_SAMPLE_MAX` aggregates of ``quarantine`` the same way and scales them to
    all of it (``quarantined``). Two bounded reads, however big the store or the quarantine."""
    assert opts.app is not None
    keys: list[str] = []
    for _, page in redisio.scan_pages(client, layout.commit_list_pattern(opts.app), type_="list"):
        keys.extend(page[: COMMIT_LIST_SAMPLE_MAX - len(keys)])
        if len(keys) >= COMMIT_LIST_SAMPLE_MAX:
            break
    waiting, exact = 0, True
    if keys:
        ids = [layout.aggregate_id_from_commit_list_key(opts.app, k) for k in keys]
        # (all of them already at hand unless there are more than the first ids read)
        held = set(
            quarantine.ids
            if len(quarantine.ids) == quarantine.aggregates
            else _still_quarantined(conn, opts, ids=ids).ids
        )
        missing = _missing(conn, opts, client, ids)
        waiting = sum(
            n for i, n in zip(ids, missing, strict=True) if redisio.printable(i) not in held
        )
        exact = len(keys) >= lists
        if not exact:
            waiting = round(waiting / len(keys) * lists)
    quarantined = 0
    if quarantine.ids:
        quarantined = sum(_missing(conn, opts, client, quarantine.ids))
        if len(quarantine.ids) < quarantine.aggregates:
            exact = False
            quarantined = round(quarantined / len(quarantine.ids) * quarantine.aggregates)
    return Unmigrated(waiting, quarantined, len(keys), exact)


PG_MIGRATION = declare(
    "pg.migration",
    "migration progress",
    why=(
        "Events saved to Redis after the last migration exist only in Redis until the next "
        "run; a failed or old last run means the gap grows. Aggregates a run quarantined "
        "(esctl.quarantine: unloadable streams, values PostgreSQL refused) stay only in Redis "
        "until someone fixes them: reruns leave them out again."
    ),
    metrics={
        "esctl_doctor_pg_unmigrated_events": (
            "Estimated Redis events not in PostgreSQL: waiting for the next run, and those "
            "of quarantined aggregates (esctl_doctor_pg_quarantined_events)."
        ),
        "esctl_doctor_pg_quarantined_events": (
            "Estimated Redis events of the aggregates counted by "
            "esctl_doctor_pg_quarantined_aggregates (a rerun leaves them out until fixed)."
        ),
        "esctl_doctor_pg_quarantined_aggregates": (
            "Aggregates the latest run of a shard quarantined and no run migrated since."
        ),
        "esctl_doctor_pg_last_migration_timestamp_seconds": "Start of the last migration run.",
    },
)


def _pg_migration(
    conn: Any,
    opts: DoctorOptions,
    client: redisio.RedisClient | None,
    stats: inspect.StatsReport | None,
) -> Check:
    if opts.app is None:
        return PG_MIGRATION.unavailable("needs --app (migration runs are per application)")
    if not pg.state_schema_present(conn):
        return PG_MIGRATION.result(
            "warn",
            "no migration has run (esctl's bookkeeping schema is absent)",
            action=f"`esctl migrate redis-to-pg --app {shlex.quote(opts.app)} --init-schema`",
        )
    row = conn.execute(
        "SELECT r.run_id, r.status, r.shard, r.started_at, r.finished_at,"
        "       (SELECT max(b.committed_at) FROM esctl.migration_batch b WHERE b.run_id = r.run_id),"
        "       (SELECT coalesce(sum(b.events_migrated), 0) FROM esctl.migration_batch b"
        "         WHERE b.run_id = r.run_id)"
        "  FROM esctl.migration_run r"
        " WHERE r.target_schema = %s AND r.application_name = %s"
        " ORDER BY r.started_at DESC LIMIT 1",
        (opts.pg_schema, opts.app),
    ).fetchone()
    if row is None:
        if stats is not None and not stats.store_keys:
            # A typo in --app: a migration would record no run of it either (migrate.run.
            # unknown_app); the store checks name the apps that have keys.
            return PG_MIGRATION.result(
                "warn",
                f"no migration run of {opts.app} into schema {opts.pg_schema}, and no key of "
                "it in Redis",
                action=f"check {opts.app_setting}: the store checks name the apps that have "
                "keys (a migration of an app with no key records no run)",
            )
        return PG_MIGRATION.result(
            "warn",
            f"no migration run of {opts.app} into schema {opts.pg_schema}",
            action=f"`esctl migrate redis-to-pg --app {shlex.quote(opts.app)} --init-schema`",
        )
    run_id, status_text, shard, started_at, finished_at, last_batch, migrated = row
    now = opts.now or datetime.now(UTC)
    quarantine = _still_quarantined(conn, opts, limit=COMMIT_LIST_SAMPLE_MAX)
    values: dict[str, Any] = {
        "run_id": run_id,
        "status": status_text,
        "shard": shard,
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat() if finished_at else None,
        "last_batch_at": last_batch.isoformat() if last_batch else None,
        "events_migrated": int(migrated),
        "quarantined_aggregates": quarantine.aggregates,
        "quarantine_run_ids": quarantine.run_ids,
    }
    metrics = [
        Metric(
            "esctl_doctor_pg_last_migration_timestamp_seconds",
            round(started_at.timestamp(), 3),
            {"app": opts.app, "status": status_text},
        ),
        Metric("esctl_doctor_pg_quarantined_aggregates", quarantine.aggregates, {"app": opts.app}),
    ]
    unmigrated = None
    if client is not None and stats is not None:
        unmigrated = _unmigrated_estimate(conn, opts, client, stats.commit_lists, quarantine)
        values |= {
            "unmigrated_events": unmigrated.total,
            "unmigrated_waiting_events": unmigrated.waiting,
            "unmigrated_quarantined_events": unmigrated.quarantined,
            "unmigrated_exact": unmigrated.exact,
            "commit_lists_sampled": unmigrated.sampled,
        }
        metrics += [
            Metric("esctl_doctor_pg_unmigrated_events", unmigrated.total, {"app": opts.app}),
            Metric("esctl_doctor_pg_quarantined_events", unmigrated.quarantined, {"app": opts.app}),
        ]
    age = now - (finished_at or last_batch or started_at)
    observed = (
        f"last run {status_text} (shard {shard}), started {format_duration((now - started_at).total_seconds())} ago"
        + (f", {int(migrated):,} events migrated" if migrated else "")
    )
    about = "" if unmigrated is None or unmigrated.exact else "~"
    if unmigrated is not None:
        observed += f"; {about}{unmigrated.waiting:,} Redis events waiting for the next run"
    if quarantine.aggregates:
        events = f" ({about}{unmigrated.quarantined:,} events)" if unmigrated is not None else ""
        noun = "aggregate" if quarantine.aggregates == 1 else "aggregates"
        observed += (
            f"; {quarantine.aggregates:,} {noun} quarantined{events}, which a rerun leaves out "
            "until fixed"
        )
    status: Status = "ok"
    actions = []
    if status_text in ("failed", "interrupted", "stopped"):
        actions.append(
            f"rerun `esctl migrate redis-to-pg --app {shlex.quote(opts.app)}`: it resumes from the "
            "last committed batch"
        )
    elif (
        status_text == "finished"
        and unmigrated is not None
        and unmigrated.waiting
        and age > MIGRATION_STALE
    ):
        actions.append(
            f"schedule `esctl migrate redis-to-pg --app {shlex.quote(opts.app)}` (nightly from "
            "cron: it only moves what is new)"
        )
    if quarantine.aggregates:
        from esctl.migrate.runs import quarantine_query

        actions.append(
            "fix the quarantined aggregates by hand (what and why: `esctl migrate status --app "
            f"{shlex.quote(opts.app)}`, `{quarantine_query(quarantine.run_ids)}`); the next "
            "run migrates them once fixed"
        )
    if actions:
        status = "warn"
    return PG_MIGRATION.result(
        status, observed, action="; ".join(actions) or None, values=values, metrics=metrics
    )


def run_pg_checks(
    opts: DoctorOptions, redis_client: redisio.RedisClient | None, stats: inspect.StatsReport | None
) -> list[Check]:
    """The PostgreSQL checks of ``opts.pg_dsn``; with the Redis client and the event store's
    statistics (when they were read), the migration check also estimates what is left."""
    assert opts.pg_dsn is not None
    dsn, schema = opts.pg_dsn, opts.pg_schema
    try:
        started = time.perf_counter()
        conn = pg.connect(dsn, autocommit=True, application_name="esctl doctor")
    except ConnectionFailed as exc:
        reason = "PostgreSQL unreachable"
        return [
            PG_REACHABLE.result(
                "fail",
                exc.message,
                action=exc.hint,
                metrics=[Metric("esctl_doctor_pg_up", 0)],
            ),
            PG_SCHEMA.unavailable(reason),
            PG_CONSTRAINTS.unavailable(reason),
            PG_MIGRATION.unavailable(reason),
        ]
    try:
        return [
            guarded("pg.reachable", lambda: _pg_reachable(conn, started)),
            guarded("pg.schema", lambda: _pg_schema(conn, schema, opts.app or "APP")),
            guarded("pg.constraints", lambda: _pg_constraints(conn, schema)),
            guarded(
                "pg.migration",
                lambda: _refused_as_unjudgeable(
                    conn, schema, lambda: _pg_migration(conn, opts, redis_client, stats)
                ),
            ),
        ]
    finally:
        conn.close()
