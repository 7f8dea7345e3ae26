"""``migrate status``: where each shard's latest run of ``migrate redis-to-pg`` stands, read
from esctl's bookkeeping in PostgreSQL, whether the run's lock holder is alive now (its
advisory lock in pg_locks), and, when asked, the lag: how far PostgreSQL is behind Redis now.

The definitions (what "interrupted" and the lag mean, and what measuring the lag costs):
docs/design/migrate.md, "Status and lag".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from esctl import codec, layout, metrics, pg, redisio, storereads
from esctl.locks import HOLDERS_SQL
from esctl.migrate.reader import migrated_streams
from esctl.migrate.run import lock_name
from esctl.pgevents import still_quarantined
from esctl.shard import Shard


@dataclass(frozen=True)
class StatusOptions:
    app: str
    pg_dsn: str
    pg_schema: str
    lag: bool = False
    """Measure the lag (reads every commit list's length in Redis)."""
    scan_count: int = 1000


@dataclass
class Lag:
    """How far PostgreSQL is behind Redis: the events in commit lists past what
    esctl.migrated_stream says was migrated (aggregates still quarantined left out), and the
    TimeStamp of the oldest such event, the first one missing of its aggregate."""

    aggregates_behind: int = 0
    events_behind: int = 0
    oldest_missing_at: datetime | None = None
    undated: int = 0
    """Aggregates behind whose first missing event could not be read or has no TimeStamp
    (migrate will quarantine them); not in ``oldest_missing_at``."""

    def add(self, events: int, missing_at: datetime | None) -> None:
        self.aggregates_behind += 1
        self.events_behind += events
        if missing_at is None:
            self.undated += 1
        elif self.oldest_missing_at is None or missing_at < self.oldest_missing_at:
            self.oldest_missing_at = missing_at

    def seconds(self, now: datetime) -> float:
        """The age of the oldest missing event at ``now`` (0 when level; never negative)."""
        if self.oldest_missing_at is None:
            return 0.0
        return max(0.0, (now - self.oldest_missing_at).total_seconds())

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "events_behind": self.events_behind,
            "aggregates_behind": self.aggregates_behind,
            "oldest_missing_at": self.oldest_missing_at,
            "seconds": self.seconds(now),
            "undated_aggregates": self.undated,
        }


@dataclass
class LockHolder:
    pid: int
    application_name: str | None
    client_addr: str | None
    backend_start: datetime | None


@dataclass
class ShardStatus:
    """One shard's latest run."""

    shard: str
    run_id: str
    status: str
    """``running`` exactly when the run's lock holder is alive; a run recorded as running
    whose holder is gone (killed) is ``interrupted``; else the recorded status."""
    recorded_status: str
    started_at: datetime
    finished_at: datetime | None
    last_batch_at: datetime | None
    batches: int
    events_migrated: int
    events_already_present: int
    aggregates_quarantined: int
    events_quarantined: int
    holder: LockHolder | None
    lag: Lag | None = None

    @property
    def lock_alive(self) -> bool:
        return self.holder is not None

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "run_id": self.run_id,
            "status": self.status,
            "recorded_status": self.recorded_status,
            "lock_alive": self.lock_alive,
            "lock_holder": self.holder,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "last_batch_at": self.last_batch_at,
            "batches": self.batches,
            "events_migrated": self.events_migrated,
            "events_already_present": self.events_already_present,
            "aggregates_quarantined": self.aggregates_quarantined,
            "events_quarantined": self.events_quarantined,
            "lag": self.lag.as_dict(now) if self.lag is not None else None,
        }


@dataclass
class StatusReport:
    app: str
    pg_schema: str
    postgresql: str
    checked_at: datetime
    shards: list[ShardStatus] = field(default_factory=list)
    lag: Lag | None = None
    """The whole app's lag (every aggregate, whichever shard), when measured."""
    aggregates_scanned: int = 0
    lag_elapsed_s: float | None = None
    aggregates_quarantined: int = 0
    """Aggregates the shards' latest runs quarantined, each once: shards of other counts
    (``0/2`` beside ``0/3``) share aggregates, so their counts do not add up."""

    def lag_seconds(self) -> float | None:
        return None if self.lag is None else self.lag.seconds(self.checked_at)

    def behind_more_than(self, seconds: float) -> list[str]:
        """The shards (``all`` for the whole app) whose lag is over ``seconds``."""
        if self.lag is None:
            return []
        over = [
            s.shard
            for s in self.shards
            if s.lag is not None and s.lag.seconds(self.checked_at) > seconds
        ]
        if self.lag.seconds(self.checked_at) > seconds and not over:
            over.append("all")  # behind in aggregates no run's shard owns
        return over

    def as_dict(self) -> dict[str, Any]:
        now = self.checked_at
        return {
            "app": self.app,
            "pg_schema": self.pg_schema,
            "postgresql": self.postgresql,
            "checked_at": now,
            "lag_measured": self.lag is not None,
            "lag": self.lag.as_dict(now) if self.lag is not None else None,
            "aggregates_scanned": self.aggregates_scanned if self.lag is not None else None,
            "lag_elapsed_s": self.lag_elapsed_s,
            "shards": [s.as_dict(now) for s in self.shards],
        }


# --- the bookkeeping -----------------------------------------------------------------------

_LATEST_RUNS = """
SELECT DISTINCT ON (r.shard) r.run_id, r.shard, r.status, r.started_at, r.finished_at
  FROM esctl.migration_run r
 WHERE r.target_schema = %s AND r.application_name = %s
 ORDER BY r.shard, r.started_at DESC
"""

_BATCHES = """
SELECT run_id, count(*), max(committed_at), coalesce(sum(events_migrated), 0),
       coalesce(sum(events_already_present), 0)
  FROM esctl.migration_batch WHERE run_id = ANY(%s) GROUP BY run_id
"""

# An aggregate quarantined again after a resume counts once (as runs.run_totals counts it).
_QUARANTINED = """
SELECT run_id, count(*), coalesce(sum(events), 0)
  FROM (SELECT run_id, aggregate_id, max(events) AS events FROM esctl.quarantine
         WHERE run_id = ANY(%s) GROUP BY run_id, aggregate_id) q
 GROUP BY run_id
"""

_QUARANTINED_WHOLE = (
    "SELECT count(DISTINCT aggregate_id) FROM esctl.quarantine WHERE run_id = ANY(%s)"
)


def read_runs(conn: psycopg.Connection, pg_schema: str, app: str) -> list[ShardStatus]:
    """Each shard's latest run of ``app`` into ``pg_schema``, with its batches' totals and
    its lock holder (none when esctl's bookkeeping does not exist yet)."""
    if not pg.state_schema_present(conn):
        return []
    runs = conn.execute(_LATEST_RUNS, (pg_schema, app)).fetchall()
    ids = [r[0] for r in runs]
    batches = {r[0]: r[1:] for r in conn.execute(_BATCHES, (ids,))}
    quarantined = {r[0]: r[1:] for r in conn.execute(_QUARANTINED, (ids,))}
    names = {lock_name(pg_schema, app, r[1]): r[1] for r in runs}
    holders = {
        names[name]: LockHolder(pid, application, addr, start)
        for name, pid, application, addr, start, *_ in conn.execute(HOLDERS_SQL, (list(names),))
    }
    conn.commit()
    shards = []
    for run_id, shard, recorded, started_at, finished_at in runs:
        count, last_at, migrated, present = batches.get(run_id, (0, None, 0, 0))
        q_aggregates, q_events = quarantined.get(run_id, (0, 0))
        holder = holders.get(shard)
        status = recorded
        if holder is not None:
            status = "running"
        elif recorded == "running":
            status = "interrupted"
        shards.append(
            ShardStatus(
                shard=shard,
                run_id=run_id,
                status=status,
                recorded_status=recorded,
                started_at=started_at,
                finished_at=finished_at,
                last_batch_at=last_at,
                batches=int(count),
                events_migrated=int(migrated),
                events_already_present=int(present),
                aggregates_quarantined=int(q_aggregates),
                events_quarantined=int(q_events),
                holder=holder,
            )
        )
    return shards


# --- the lag -------------------------------------------------------------------------------


def _first_missing_times(
    client: redisio.RedisClient, app: str, behind: Sequence[tuple[str, str, int, int]]
) -> list[datetime | None]:
    """The TimeStamp of each aggregate's first event not migrated (LINDEX at the migrated
    count, then the payload); None where it cannot be read or has none (also where its hash
    holds another Redis type: migrate quarantines the aggregate, wrong_key_type)."""
    replies = redisio.pipelined(
        client, [("LINDEX", key, done) for _, key, done, _ in behind], retry_reads=True
    )
    commit_ids = [redisio.key_str(r) if isinstance(r, bytes | str) else None for r in replies]
    found = [c for c in commit_ids if c is not None]
    read = storereads.fetch_values(client, app, found, wrong_types={})[0]
    values = dict(zip(found, read, strict=True))
    times: list[datetime | None] = []
    for commit_id in commit_ids:
        value = values.get(commit_id) if commit_id is not None else None
        times.append(codec.decode_event(value)[1].timestamp if value is not None else None)
    return times


def measure_lag(
    client: redisio.RedisClient,
    conn: psycopg.Connection,
    opts: StatusOptions,
    shards: Sequence[str],
    *,
    quarantined: set[str],
    on_page: Callable[[int], None] | None = None,
) -> tuple[Lag, dict[str, Lag], int]:
    """The whole app's lag, each of ``shards``' lag, and the aggregates scanned: one SCAN of
    the app's commit lists, an LLEN of each (pipelined), one lookup in esctl.migrated_stream
    per page, and for each aggregate behind its first missing event (LINDEX + HGET).
    Aggregates in ``quarantined`` are left out; so are keys that are not UTF-8 (migrate
    quarantines them). ``on_page`` is told the aggregates scanned so far."""
    app = opts.app
    state_present = pg.state_schema_present(conn)
    conn.commit()
    owners = {name: Shard.parse(name) for name in shards}
    total = Lag()
    per_shard = {name: Lag() for name in shards}
    counted: set[str] = set()  # SCAN may return a key twice: count an aggregate behind once
    scanned = 0
    # Not SCAN's TYPE list: a key named as a commit list but of another type is scanned (as
    # migrate examines it) but has no length to be behind by; migrate quarantines it
    # (wrong_key_type), and quarantined aggregates are left out of the lag.
    pages = redisio.scan_pages(client, layout.commit_list_pattern(app), count=opts.scan_count)
    for _, keys in pages:
        scanned += len(keys)
        ids = [layout.aggregate_id_from_commit_list_key(app, k) for k in keys]
        lengths = storereads.list_lengths_or_types(client, keys)
        done = migrated_streams(conn, opts.pg_schema, app, ids) if state_present else {}
        behind = [
            (aggregate_id, key, done[aggregate_id][0] if aggregate_id in done else 0, length)
            for aggregate_id, key, length in zip(ids, keys, lengths, strict=True)
            if isinstance(length, int)
            and redisio.is_utf8(aggregate_id)
            and aggregate_id not in quarantined
            and aggregate_id not in counted
            and length > (done[aggregate_id][0] if aggregate_id in done else 0)
        ]
        if behind:
            times = _first_missing_times(client, app, behind)
            for (aggregate_id, _, migrated, length), missing_at in zip(behind, times, strict=True):
                counted.add(aggregate_id)
                total.add(length - migrated, missing_at)
                for name, shard in owners.items():
                    if shard.owns(aggregate_id):
                        per_shard[name].add(length - migrated, missing_at)
        if on_page is not None:
            on_page(scanned)
    return total, per_shard, scanned


def migration_status(
    opts: StatusOptions,
    client: Callable[[], redisio.RedisClient] | None = None,
    *,
    on_page: Callable[[int], None] | None = None,
) -> StatusReport:
    """Each shard's latest run of the app into the schema; with ``opts.lag`` also the lag,
    read from Redis (``client`` opens it; it is opened only then). Read-only on both sides.
    Raises ConnectionFailed when a server does not answer."""
    with pg.translate_errors(opts.pg_dsn):
        conn = pg.connect(opts.pg_dsn, application_name="esctl migrate status")
        try:
            report = StatusReport(
                app=opts.app,
                pg_schema=opts.pg_schema,
                postgresql=pg.describe_dsn(opts.pg_dsn),
                checked_at=datetime.now(UTC),
                shards=read_runs(conn, opts.pg_schema, opts.app),
            )
            quarantining = [s.run_id for s in report.shards if s.aggregates_quarantined]
            if quarantining:
                row = conn.execute(_QUARANTINED_WHOLE, (quarantining,)).fetchone()
                report.aggregates_quarantined = int(row[0]) if row else 0
                conn.commit()
            if opts.lag and client is not None:
                started = time.monotonic()
                ids = [s.run_id for s in report.shards]
                # Left out: those a latest run quarantined and nothing migrated since (one
                # fixed and migrated since, by a follower or another shard's run, counts).
                quarantined = (
                    set(still_quarantined(conn, opts.pg_schema, opts.app).ids) if ids else set()
                )
                conn.commit()
                total, per_shard, scanned = measure_lag(
                    client(),
                    conn,
                    opts,
                    [s.shard for s in report.shards],
                    quarantined=quarantined,
                    on_page=on_page,
                )
                report.checked_at = datetime.now(UTC)
                report.lag = total
                report.aggregates_scanned = scanned
                report.lag_elapsed_s = time.monotonic() - started
                for status in report.shards:
                    status.lag = per_shard[status.shard]
        finally:
            conn.close()
    return report


# --- Prometheus ----------------------------------------------------------------------------

METRIC_HELP = {
    "esctl_migrate_run_running": "1 when the shard's latest run holds its lock now (alive).",
    "esctl_migrate_run_status": "1 for the status of the shard's latest run (label status).",
    "esctl_migrate_run_started_timestamp_seconds": "When the shard's latest run started.",
    "esctl_migrate_last_batch_timestamp_seconds": "When the latest run's last batch committed.",
    "esctl_migrate_events_migrated": "Events the shard's latest run migrated.",
    "esctl_migrate_aggregates_quarantined": "Aggregates the shard's latest run quarantined.",
    "esctl_migrate_events_quarantined": "Events of the aggregates quarantined.",
    "esctl_migrate_lag_seconds": "Age of the oldest event in Redis not yet in PostgreSQL "
    '(shard="all": the whole app).',
    "esctl_migrate_lag_events": "Events in Redis not yet in PostgreSQL.",
    "esctl_migrate_lag_aggregates": "Aggregates with events in Redis not yet in PostgreSQL.",
    "esctl_migrate_status_timestamp_seconds": "When migrate status read these figures.",
}


def status_metrics(report: StatusReport) -> list[metrics.Metric]:
    """The report as gauges labelled app, schema and shard."""
    base = {"app": report.app, "schema": report.pg_schema}
    out: list[metrics.Metric] = []

    def gauge(name: str, value: float, shard: str, **extra: str) -> None:
        out.append(metrics.Metric(name, value, {**base, "shard": shard, **extra}))

    for s in report.shards:
        gauge("esctl_migrate_run_running", int(s.lock_alive), s.shard)
        gauge("esctl_migrate_run_status", 1, s.shard, status=s.status)
        gauge("esctl_migrate_run_started_timestamp_seconds", s.started_at.timestamp(), s.shard)
        if s.last_batch_at is not None:
            gauge(
                "esctl_migrate_last_batch_timestamp_seconds", s.last_batch_at.timestamp(), s.shard
            )
        gauge("esctl_migrate_events_migrated", s.events_migrated, s.shard)
        gauge("esctl_migrate_aggregates_quarantined", s.aggregates_quarantined, s.shard)
        gauge("esctl_migrate_events_quarantined", s.events_quarantined, s.shard)
    lags = [(s.shard, s.lag) for s in report.shards if s.lag is not None]
    if report.lag is not None:
        lags.append(("all", report.lag))
    for shard, lag in lags:
        gauge("esctl_migrate_lag_seconds", lag.seconds(report.checked_at), shard)
        gauge("esctl_migrate_lag_events", lag.events_behind, shard)
        gauge("esctl_migrate_lag_aggregates", lag.aggregates_behind, shard)
    out.append(
        metrics.Metric(
            "esctl_migrate_status_timestamp_seconds", report.checked_at.timestamp(), base
        )
    )
    return out


def render_prometheus(report: StatusReport) -> str:
    return metrics.render(status_metrics(report), METRIC_HELP)
