"""``doctor``: the Redis settings, latency and memory that hurt event stores, in one report.

Each :class:`Check` has a status (``ok``, ``warn``, ``fail``, or ``unavailable`` when it cannot
run: a command renamed away or denied on a managed Redis, a server that is down), the observed
value, why it matters for an event store, and what to do. Checks never raise: whatever goes
wrong while one runs becomes its ``unavailable`` status, and the others still run.

Groups (a group whose scope is not given is skipped and listed in ``skipped``):

- ``redis`` (always): reachable and round-trip time, version, role and replicas,
  ``maxmemory-policy``, ``maxmemory`` headroom, persistence (and where it runs: the primary or
  only its replicas, which are asked with the same credentials), ``appendfsync``,
  ``no-appendfsync-on-rewrite``, ``latency-monitor-threshold``, ``LATENCY LATEST`` / ``LATENCY
  DOCTOR``, ``SLOWLOG`` entries of the commands the library uses, fragmentation. Settings come
  from ``CONFIG GET``, falling back to ``INFO`` where it carries them (``maxmemory``,
  ``maxmemory_policy``, ``aof_enabled``).

  On a Redis Cluster each of these is evaluated on every primary (a setting is per node: one
  primary with ``allkeys-lru`` can evict the events of its slots while the others are fine),
  and :func:`combine` makes one check of them: the worst status, each primary's status in
  ``servers``, and observation and action naming the primaries concerned. ``redis.cluster``
  (only on cluster nodes) adds each primary's ``CLUSTER INFO`` (state, slots served), and fails
  when a cluster node was given without ``--cluster``: esctl would then see that node alone.
  Memory for growth and the event data's share is the primaries' sum (their ``maxmemory``, or
  a host's memory counted once per host); the ``event_store`` and ``queues`` groups read every
  primary's keys through the cluster client, as on a single server.
- ``event_store`` (``app``): memory shares of event hashes, commit lists, snapshots and queues
  (:func:`esctl.inspect.inspect_stats`: ``MEMORY USAGE`` of a sample of keys per family, scaled
  to the family), plain payloads over the compression threshold (a sample, classified as
  :func:`esctl.compress.compress` would), growth in bytes per day since an earlier run.
- ``queues`` (``env``): stuck processing messages, dead letters, subscribers nobody drains
  (:func:`esctl.queues.list_queues`, compared with an earlier run).
- ``postgresql`` (only when a DSN is configured explicitly): reachable, schema compatible
  (:func:`esctl.pg.check_event_store_schema`), unique constraints, the last migration run and
  an estimate of the Redis events not migrated yet.

**Readings.** Growth and draining compare with an earlier run. Each run stores its figures in
Redis, as JSON with a 90-day expiry: ``esctl:doctor:{APP}`` (used_memory, commit ids, event
store bytes) and ``esctl:doctor:env:{ENV}`` (each queue's published length and a digest of the
message at its tail); each is one key read and written with plain GET and SET, so on a cluster
it lives on whichever primary serves its slot. Each key keeps two readings, so that a run
always compares with one at least :data:`GROWTH_MIN_INTERVAL` (queues:
:data:`QUEUE_MIN_INTERVAL`) old and at most twice that, however often doctor runs.
``read_only`` stores nothing. Readings live in Redis rather than PostgreSQL so that doctor works
the same without a DSN; they are the only thing doctor writes.

Exit codes are the CLI's business: :attr:`DoctorReport.failed` / :attr:`DoctorReport.warned`.
"""

from __future__ import annotations

import functools
import hashlib
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import redis
import redis.cluster
import redis.exceptions

from esctl import codec, compress, inspect, layout, pg, queues, redisio
from esctl.config import redact
from esctl.defaults import DOCTOR_SAMPLE as DEFAULT_SAMPLE
from esctl.errors import ConnectionFailed, EsctlError, SchemaIncompatible
from esctl.metrics import Metric, render, write_textfile

Status = Literal["ok", "warn", "fail", "unavailable"]
STATUSES: tuple[Status, ...] = ("ok", "warn", "fail", "unavailable")
STATUS_VALUE: dict[Status, int] = {"ok": 0, "warn": 1, "fail": 2, "unavailable": -1}
"""The number ``esctl_doctor_check_status`` carries for each status."""
_SEVERITY: dict[Status, int] = {"ok": 0, "unavailable": 1, "warn": 2, "fail": 3}

DEFAULT_STUCK_AFTER = timedelta(minutes=5)
GROWTH_MIN_INTERVAL = timedelta(hours=1)
QUEUE_MIN_INTERVAL = timedelta(seconds=60)
READING_TTL_S = 90 * 86400
PING_COUNT = 5
SLOWLOG_LENGTH = 128
LIBRARY_COMMANDS = ("RPOPLPUSH", "HGET", "LRANGE", "EXEC")
"""The commands the library's hot paths use (consume, load, load, save/publish)."""
CONFIG_PARAMETERS = (
    "maxmemory",
    "maxmemory-policy",
    "appendonly",
    "appendfsync",
    "no-appendfsync-on-rewrite",
    "save",
    "latency-monitor-threshold",
    "slowlog-log-slower-than",
)
REPLICA_TIMEOUT_S = 2.0

# Thresholds (documented in each check's ``why``).
PING_WARN_MS = 10.0
HEADROOM_WARN = 0.75
HEADROOM_FAIL = 0.90
FRAGMENTATION_WARN = 1.5
FRAGMENTATION_MIN_USED = 100 << 20
LATENCY_RECENT_S = 86400
EVENT_DATA_WARN_SHARE = 0.5
GROWTH_WARN_DAYS = 30
GROWTH_FAIL_DAYS = 7
MIGRATION_STALE = timedelta(days=2)
COMMIT_LIST_SAMPLE_MAX = 1000


# --- the report ----------------------------------------------------------------------------


@dataclass
class Check:
    id: str
    """``group.name``, stable (scripts and alerts key on it)."""
    title: str
    status: Status
    observed: str
    why: str
    action: str | None = None
    """What to do; None when there is nothing to do."""
    values: dict[str, Any] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    servers: dict[str, Status] | None = None
    """A check run on each primary of a cluster: every primary's own status (None for a check
    of one server or of the whole store), so a script can tell which node a finding is about."""

    @property
    def group(self) -> str:
        return GROUPS[self.id.split(".", 1)[0]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group": self.group,
            "title": self.title,
            "status": self.status,
            "observed": self.observed,
            "why": self.why,
            "action": self.action,
            "values": self.values,
            "details": self.details,
            "servers": self.servers,
        }


GROUPS = {"redis": "redis", "store": "event_store", "queues": "queues", "pg": "postgresql"}


@dataclass
class DoctorReport:
    generated_at: str
    redis: str
    app: str | None
    env: str | None
    postgresql: str | None
    checks: list[Check]
    skipped: list[dict[str, str]]
    readings: list[dict[str, Any]]
    """Where the readings were stored (or why not)."""
    elapsed_s: float

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for c in self.checks if c.status == s) for s in STATUSES}

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    @property
    def warned(self) -> bool:
        return any(c.status == "warn" for c in self.checks)

    @property
    def status(self) -> Status:
        return "fail" if self.failed else "warn" if self.warned else "ok"

    def check(self, check_id: str) -> Check:
        return next(c for c in self.checks if c.id == check_id)

    def as_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at,
            "redis": self.redis,
            "app": self.app,
            "env": self.env,
            "postgresql": self.postgresql,
            "status": self.status,
            "counts": self.counts(),
            "checks": [c.as_dict() for c in self.checks],
            "skipped": self.skipped,
            "readings": self.readings,
            "elapsed_s": round(self.elapsed_s, 3),
        }


@dataclass
class DoctorOptions:
    redis_url: str
    cluster: bool = False
    app: str | None = None
    env: str | None = None
    pg_dsn: str | None = None
    """Only a DSN the operator configured (option, environment, config file): never the
    default, so doctor does not report on a PostgreSQL nobody asked about."""
    pg_schema: str = "public"
    sample: int = DEFAULT_SAMPLE
    stuck_after: timedelta = DEFAULT_STUCK_AFTER
    compression_threshold: int = codec.DEFAULT_COMPRESSION_THRESHOLD
    read_only: bool = False
    now: datetime | None = None
    growth_min_interval: timedelta = GROWTH_MIN_INTERVAL
    queue_min_interval: timedelta = QUEUE_MIN_INTERVAL


# --- what each check is about ---------------------------------------------------------------

TITLES = {
    "redis.reachable": "Redis reachable",
    "redis.version": "Redis version",
    "redis.role": "role and replicas",
    "redis.maxmemory_policy": "maxmemory-policy",
    "redis.maxmemory": "maxmemory headroom",
    "redis.persistence": "persistence",
    "redis.appendfsync": "appendfsync",
    "redis.aof_rewrite": "no-appendfsync-on-rewrite",
    "redis.latency_monitor": "latency-monitor-threshold",
    "redis.latency": "latency spikes (LATENCY LATEST / DOCTOR)",
    "redis.slowlog": "slow library commands (SLOWLOG)",
    "redis.fragmentation": "memory fragmentation",
    "redis.cluster": "Redis Cluster state",
    "store.memory": "memory held by the event store",
    "store.uncompressed": "payloads left uncompressed",
    "store.growth": "growth since an earlier run",
    "queues.stuck": "stuck processing messages",
    "queues.dead_letters": "dead letters",
    "queues.draining": "subscribers draining their queues",
    "pg.reachable": "PostgreSQL reachable",
    "pg.schema": "event store schema",
    "pg.constraints": "unique constraints",
    "pg.migration": "migration progress",
}

WHY = {
    "redis.reachable": "Every save, load and queue operation of the services is a round trip to "
    "this server; a slow round trip (over 10 ms here) multiplies into slow requests and client "
    "timeouts.",
    "redis.version": "Redis before 6.2 is past its end of life (no security fixes); 7.0 "
    "rewrites the AOF in parts, which makes rewrites cheaper on a persistent event store.",
    "redis.role": "A primary without a replica holds the only copy of every event: a lost disk "
    "or host loses events. A replica is also where persistence can run without slowing the "
    "primary.",
    "redis.maxmemory_policy": "Any policy but noeviction lets Redis delete keys when memory "
    "runs out: commit lists, payloads or queued messages vanish silently and aggregates "
    "cannot be loaded again. With noeviction a full Redis refuses writes loudly instead.",
    "redis.maxmemory": "Event data only grows. Without maxmemory Redis grows until the kernel's "
    "OOM killer ends it (losing what was not yet persisted); with a limit and noeviction, "
    "writes fail once it is reached (warn at 75%, fail at 90%). Forks for persistence also "
    "need copy-on-write headroom.",
    "redis.persistence": "Redis keeps events in memory only: without persistence a restart "
    "loses every event, with RDB snapshots alone it loses what was written since the last one. "
    "Persistence costs latency (fsyncs, and forks for rewrites and snapshots that stall the "
    "main thread on slow disks: client timeouts on RPOPLPUSH). Running it only on replicas "
    "keeps the primary fast, but then the primary must never restart empty (it would wipe its "
    "replicas): disable its automatic restart.",
    "redis.appendfsync": "appendfsync decides how much the AOF can lose and how often writes "
    "wait for the disk: always fsyncs every write (slow on ordinary disks), everysec loses at "
    "most about a second, no leaves it to the kernel (up to ~30 s lost).",
    "redis.aof_rewrite": "With no-appendfsync-on-rewrite no, the AOF fsync keeps running while "
    "a rewrite or snapshot child writes the whole dataset; on slow disks fsync then blocks "
    "Redis's main thread for seconds, and consumers time out on RPOPLPUSH. yes pauses the "
    "fsync during rewrites (up to ~30 s of writes at risk if Redis crashes then).",
    "redis.latency_monitor": "With latency-monitor-threshold 0, Redis records no latency "
    "spikes: LATENCY LATEST and LATENCY DOCTOR have nothing to tell when clients time out.",
    "redis.latency": "Latency spikes over the monitor's threshold (fsync, fork, AOF writes, "
    "slow commands) are what services see as timeouts; a spike in the last 24 h is a warning.",
    "redis.slowlog": "Slow RPOPLPUSH, HGET, LRANGE or EXEC calls are the library's own "
    "consume, load and save paths being slow (large values, huge commit lists, blocked main "
    "thread).",
    "redis.fragmentation": "A fragmentation ratio over 1.5 means Redis holds much more RSS "
    "than data (wasted memory, judged from 100 MiB of data); under 1 it may be swapping, "
    "which makes every command slow.",
    "redis.cluster": "In a Redis Cluster every key lives on the primary serving its hash slot: "
    "while a slot has no working primary (cluster_state fail), the events and queues stored in "
    "it can be neither read nor written, and with the default cluster-require-full-coverage "
    "the whole cluster refuses commands. Pointed at one node without --cluster, doctor sees "
    "only that node's keys and settings (the other esctl commands refuse such a URL).",
    "store.memory": "Event data only grows in Redis; the share of memory it holds says how "
    "urgent the move to PostgreSQL is (a warning when it holds over half the memory limit). "
    "MEMORY USAGE of a sample of keys per family, scaled to all keys.",
    "store.uncompressed": "The library compresses payloads over the threshold only when it "
    "writes them, and only with its setting on; plain ones take about twice the memory. "
    "Estimated from a sample of payload hashes.",
    "store.growth": "Memory growth per day says when the limit is reached (a warning within "
    "30 days, a failure within 7); measured against a reading at least an hour old.",
    "queues.stuck": "A message stays in ProcessingEvents when its consumer died between "
    "RPOPLPUSH and LREM; nothing delivers it unless it is requeued.",
    "queues.dead_letters": "Dead letters are messages whose handler failed; the library "
    "retries them with backoff and drops them after their time-to-live, so events can go "
    "unhandled for good.",
    "queues.draining": "A published list that keeps its oldest message and does not shrink "
    "between two runs has no consumer: messages pile up in memory and, past the publisher's "
    "cap, publishing waits.",
    "pg.reachable": "The PostgreSQL event store is the migration's target and, after the "
    "switch, where services read and write their events.",
    "pg.schema": "Services on the SQL provider and esctl migrate need the library's tables, "
    "columns and functions exactly as its contract says (docs/layout.md §5).",
    "pg.constraints": "The unique constraints on aggregate (id, application, type) and event "
    "(aggregate_key, version) keep events from being saved twice and make migration reruns "
    "idempotent.",
    "pg.migration": "Events saved to Redis after the last migration exist only in Redis until "
    "the next run; a failed or old last run means the gap grows.",
}

METRIC_HELP = {
    "esctl_doctor_check_status": "Status of a doctor check: 0 ok, 1 warn, 2 fail, -1 unavailable.",
    "esctl_doctor_checks": "Doctor checks per status.",
    "esctl_doctor_timestamp_seconds": "When esctl doctor ran.",
    "esctl_doctor_duration_seconds": "How long esctl doctor took.",
    "esctl_doctor_redis_up": "1 when Redis answered PING.",
    "esctl_doctor_redis_ping_seconds": "Median PING round-trip time.",
    "esctl_doctor_redis_version_info": "The Redis version (label), always 1.",
    "esctl_doctor_redis_connected_replicas": "Replicas connected to the primary.",
    "esctl_doctor_redis_noeviction": "1 when maxmemory-policy is noeviction.",
    "esctl_doctor_redis_used_memory_bytes": "INFO used_memory.",
    "esctl_doctor_redis_maxmemory_bytes": "maxmemory (0: no limit).",
    "esctl_doctor_redis_memory_limit_usage_ratio": "used_memory / (maxmemory, else system memory).",
    "esctl_doctor_redis_aof_enabled": "1 when appendonly is on.",
    "esctl_doctor_redis_rdb_enabled": "1 when an RDB save schedule is set.",
    "esctl_doctor_redis_replicas_persisting": "Replicas found persisting (AOF or RDB).",
    "esctl_doctor_redis_appendfsync_always": "1 when appendfsync is always.",
    "esctl_doctor_redis_no_appendfsync_on_rewrite": "1 when no-appendfsync-on-rewrite is yes.",
    "esctl_doctor_redis_latency_monitor_threshold_seconds": "latency-monitor-threshold.",
    "esctl_doctor_redis_latency_spike_max_seconds": "Worst latency spike of an event (LATENCY LATEST).",
    "esctl_doctor_redis_latency_spike_age_seconds": "Age of an event's latest spike.",
    "esctl_doctor_redis_slowlog_entries": "SLOWLOG entries of a library command.",
    "esctl_doctor_redis_slowlog_max_seconds": "Slowest SLOWLOG entry of a library command.",
    "esctl_doctor_redis_mem_fragmentation_ratio": "INFO mem_fragmentation_ratio.",
    "esctl_doctor_redis_cluster_state_ok": "1 when the node reports cluster_state ok.",
    "esctl_doctor_redis_cluster_slots_ok": "Hash slots the node sees served (of 16384).",
    "esctl_doctor_store_memory_bytes": "Estimated memory of a key family (MEMORY USAGE sample).",
    "esctl_doctor_store_memory_share": "Estimated share of used_memory of a key family.",
    "esctl_doctor_store_events": "Commit ids in the commit lists (committed events).",
    "esctl_doctor_store_uncompressed_payloads": "Estimated plain payloads over the threshold.",
    "esctl_doctor_store_uncompressed_bytes": "Estimated stored bytes of those payloads.",
    "esctl_doctor_store_compress_saving_bytes": "Estimated bytes esctl compress would save.",
    "esctl_doctor_store_growth_bytes_per_day": "Memory growth per day since an earlier reading.",
    "esctl_doctor_store_growth_events_per_day": "Committed events per day since an earlier reading.",
    "esctl_doctor_store_days_to_limit": "Days until the memory limit at the measured growth.",
    "esctl_doctor_queue_messages": "Messages in a queue list.",
    "esctl_doctor_queue_oldest_processing_age_seconds": "Age of the oldest processing message.",
    "esctl_doctor_queue_draining": "1 when the queue was drained since the earlier reading.",
    "esctl_doctor_pg_up": "1 when PostgreSQL answered.",
    "esctl_doctor_pg_ping_seconds": "Round-trip time of SELECT 1.",
    "esctl_doctor_pg_unmigrated_events": "Estimated Redis events not migrated yet.",
    "esctl_doctor_pg_last_migration_timestamp_seconds": "Start of the last migration run.",
}


def _check(
    check_id: str,
    status: Status,
    observed: str,
    *,
    action: str | None = None,
    values: dict[str, Any] | None = None,
    details: list[str] | None = None,
    metrics: list[Metric] | None = None,
) -> Check:
    return Check(
        check_id,
        TITLES[check_id],
        status,
        observed,
        WHY[check_id],
        action,
        values or {},
        details or [],
        metrics or [],
    )


def unavailable(check_id: str, reason: str, action: str | None = None) -> Check:
    return _check(check_id, "unavailable", reason, action=action)


def _guarded(check_id: str, evaluate: Callable[[], Check]) -> Check:
    """Run one check; anything it raises makes it ``unavailable`` (doctor never crashes)."""
    try:
        return evaluate()
    except EsctlError as exc:
        return unavailable(check_id, f"could not run: {exc.message}", exc.hint)
    except Exception as exc:
        return unavailable(check_id, f"could not run: {type(exc).__name__}: {redact(str(exc))}")


# --- formatting helpers --------------------------------------------------------------------


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_duration(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.0f}%" if ratio >= 0.01 else f"{ratio * 100:.2f}%"


# --- Redis facts ---------------------------------------------------------------------------


@dataclass
class ReplicaFacts:
    address: str
    reachable: bool
    aof: bool | None = None
    rdb: bool | None = None
    error: str | None = None

    @property
    def persists(self) -> bool | None:
        if self.aof:
            return True
        if self.aof is None or self.rdb is None:
            return None
        return self.rdb


@dataclass
class SlowEntry:
    command: str
    duration_us: int
    started_at: int


@dataclass
class ServerFacts:
    """What doctor read from one server; each ``*_error`` says why a part is missing."""

    name: str
    ping_ms: list[float]
    info: dict[str, Any]
    info_error: str | None = None
    config: dict[str, str] = field(default_factory=dict)
    config_error: str | None = None
    server_time: float | None = None
    latency_latest: list[tuple[str, int, int, int]] | None = None
    latency_doctor: str | None = None
    latency_error: str | None = None
    slowlog: list[SlowEntry] | None = None
    slowlog_error: str | None = None
    replicas: list[ReplicaFacts] = field(default_factory=list)
    cluster_info: dict[str, str] | None = None
    """CLUSTER INFO of a cluster node (None on a standalone server, or when refused)."""
    cluster_error: str | None = None

    @property
    def in_cluster(self) -> bool:
        """INFO says cluster mode is on (the server is a Redis Cluster node)."""
        return self.info_int("cluster_enabled") == 1

    def info_int(self, name: str) -> int | None:
        value = self.info.get(name)
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    @property
    def is_primary(self) -> bool:
        return self.info.get("role", "master") == "master"

    @property
    def now(self) -> float:
        return self.server_time if self.server_time is not None else time.time()

    def setting(self, name: str) -> str | None:
        """A setting from CONFIG GET, else from INFO where INFO carries it."""
        if name in self.config:
            return self.config[name]
        fallback = {"maxmemory": "maxmemory", "maxmemory-policy": "maxmemory_policy"}.get(name)
        if fallback and fallback in self.info:
            return str(self.info[fallback])
        if name == "appendonly" and "aof_enabled" in self.info:
            return "yes" if self.info_int("aof_enabled") else "no"
        return None

    def config_unavailable(self, name: str) -> str:
        why = self.config_error or "the server did not return it"
        return f"cannot read {name}: {why}"


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _reply_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _error_text(exc: Any) -> str:
    text = redact(str(exc)).strip()
    lowered = text.lower()
    if "unknown command" in lowered:
        text = text.split(", with args beginning with")[0]
        return f"{text} (renamed or disabled, as on managed Redis)"
    if "noperm" in lowered:
        return f"{text} (the user's ACL does not allow it)"
    return text


def _server_nodes(client: redisio.RedisClient) -> list[tuple[str, redis.Redis]]:
    if isinstance(client, redis.cluster.RedisCluster):
        return [
            (f"{node.host}:{node.port}", client.get_redis_connection(node))
            for node in client.get_primaries()
        ]
    return [(redisio.describe(client), client)]


def gather_facts(name: str, node: redis.Redis, *, probe_replicas: bool = True) -> ServerFacts:
    """Read everything the Redis checks need from one server. Commands the server refuses
    (renamed away, denied by an ACL) leave their part empty with the reason; connection errors
    raise (the caller marks the server unreachable)."""
    pings: list[float] = []
    for _ in range(PING_COUNT):
        started = time.perf_counter()
        node.ping()
        pings.append((time.perf_counter() - started) * 1000)
    facts = ServerFacts(name, pings, {})
    try:
        facts.info = dict(node.info())
    except redis.exceptions.ResponseError as exc:
        facts.info_error = _error_text(exc)

    commands: list[tuple[Any, ...]] = [("CONFIG", "GET", p) for p in CONFIG_PARAMETERS]
    commands += [
        ("TIME",),
        ("LATENCY", "LATEST"),
        ("LATENCY", "DOCTOR"),
        ("SLOWLOG", "GET", SLOWLOG_LENGTH),
    ]
    replies = redisio.pipelined(node, commands)
    for parameter, reply in zip(CONFIG_PARAMETERS, replies, strict=False):
        if isinstance(reply, Exception):
            facts.config_error = facts.config_error or _error_text(reply)
        elif isinstance(reply, list) and len(reply) >= 2:
            facts.config[parameter] = _reply_text(reply[1])
    time_reply, latest, doctor_text, slowlog = replies[len(CONFIG_PARAMETERS) :]
    if isinstance(time_reply, list) and len(time_reply) == 2:
        facts.server_time = int(time_reply[0]) + int(time_reply[1]) / 1e6
    if isinstance(latest, Exception):
        facts.latency_error = _error_text(latest)
    else:
        facts.latency_latest = [
            (_reply_text(e[0]), int(e[1]), int(e[2]), int(e[3])) for e in latest
        ]
        if not isinstance(doctor_text, Exception):
            facts.latency_doctor = _reply_text(doctor_text)
    if isinstance(slowlog, Exception):
        facts.slowlog_error = _error_text(slowlog)
    else:
        facts.slowlog = [
            SlowEntry(_reply_text(e[3][0]).upper() if e[3] else "", int(e[2]), int(e[1]))
            for e in slowlog
        ]
    if facts.in_cluster:
        (cluster_info,) = redisio.pipelined(node, [("CLUSTER", "INFO")])
        if isinstance(cluster_info, Exception):
            facts.cluster_error = _error_text(cluster_info)
        else:
            facts.cluster_info = _parse_cluster_info(_reply_text(cluster_info))
    if probe_replicas and facts.is_primary:
        facts.replicas = [_probe_replica(node, r) for r in _replica_addresses(facts.info)]
    return facts


def _parse_cluster_info(text: str) -> dict[str, str]:
    """CLUSTER INFO's ``field:value`` lines."""
    pairs = (line.partition(":") for line in text.splitlines() if ":" in line)
    return {name.strip(): value.strip() for name, _, value in pairs}


def _replica_addresses(info: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        v
        for k, v in sorted(info.items())
        if k.startswith("slave") and k[5:].isdigit() and isinstance(v, dict)
    ]


def _probe_replica(primary: redis.Redis, entry: dict[str, Any]) -> ReplicaFacts:
    """Ask a replica (with the primary's credentials, a short timeout) whether it persists."""
    host, port = str(entry.get("ip")), int(entry.get("port", 0))
    address = f"{host}:{port}"
    pool = primary.connection_pool
    kwargs = {
        k: v for k, v in pool.connection_kwargs.items() if k not in ("path", "host", "port", "db")
    }
    connection_class = pool.connection_class
    if connection_class is redis.connection.UnixDomainSocketConnection:
        connection_class = redis.connection.Connection
    kwargs.update(
        host=host,
        port=port,
        socket_timeout=REPLICA_TIMEOUT_S,
        socket_connect_timeout=REPLICA_TIMEOUT_S,
    )
    replica = redis.Redis(
        connection_pool=redis.ConnectionPool(connection_class=connection_class, **kwargs)
    )
    try:
        facts = ReplicaFacts(address, True)
        info = replica.info("persistence")
        facts.aof = bool(int(info.get("aof_enabled", 0)))
        try:
            save = replica.config_get("save").get("save")
            facts.rdb = bool(save and str(save).strip())
        except redis.exceptions.ResponseError as exc:
            facts.error = f"CONFIG GET save: {_error_text(exc)}"
        return facts
    except redis.exceptions.RedisError as exc:
        return ReplicaFacts(address, False, error=_error_text(exc))
    finally:
        replica.close()


# --- Redis checks (one server each; combined over a cluster's primaries) -------------------


def _info_unavailable(check_id: str, f: ServerFacts) -> Check:
    return unavailable(
        check_id,
        f"INFO unavailable: {f.info_error or 'the field is missing'}",
        "grant INFO to esctl's user (read-only)",
    )


def check_reachable(f: ServerFacts) -> Check:
    median = statistics.median(f.ping_ms)
    status: Status = "warn" if median > PING_WARN_MS else "ok"
    return _check(
        "redis.reachable",
        status,
        f"PING {median:.2f} ms (min {min(f.ping_ms):.2f}, max {max(f.ping_ms):.2f}, "
        f"{len(f.ping_ms)} tries)",
        action="run esctl close to Redis (same zone); check network and Redis CPU load"
        if status != "ok"
        else None,
        values={"ping_ms": round(median, 3), "ping_ms_max": round(max(f.ping_ms), 3)},
        metrics=[
            Metric("esctl_doctor_redis_up", 1),
            Metric("esctl_doctor_redis_ping_seconds", round(median / 1000, 6)),
        ],
    )


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_version(f: ServerFacts) -> Check:
    version = f.info.get("redis_version")
    if version is None:
        return _info_unavailable("redis.version", f)
    old = _version_tuple(str(version)) < (6, 2)
    return _check(
        "redis.version",
        "warn" if old else "ok",
        f"{version}",
        action="upgrade Redis (7.x)" if old else None,
        values={"version": str(version)},
        metrics=[Metric("esctl_doctor_redis_version_info", 1, {"version": str(version)})],
    )


def check_role(f: ServerFacts) -> Check:
    role = f.info.get("role")
    if role is None:
        return _info_unavailable("redis.role", f)
    if role != "master":
        link = f.info.get("master_link_status")
        master = f"{f.info.get('master_host')}:{f.info.get('master_port')}"
        status: Status = "ok" if link == "up" else "fail"
        return _check(
            "redis.role",
            status,
            f"replica of {master}, link {link}; doctor reports this replica's settings",
            action=None
            if status == "ok"
            else "bring the link to the primary back (see the replica's log); point "
            "--redis-url at the primary to check it",
            values={"role": "replica", "master": master, "master_link_status": link},
        )
    entries = _replica_addresses(f.info)
    count = f.info_int("connected_slaves") or 0
    lagging = [
        f"{e.get('ip')}:{e.get('port')} ({e.get('state')}, lag {e.get('lag')} s)"
        for e in entries
        if e.get("state") != "online" or int(e.get("lag", 0) or 0) > 10
    ]
    if count == 0:
        status, observed = "warn", "primary without replicas"
        action = (
            "add a replica (REPLICAOF on a second host): a second copy of every event, and the "
            "place to run persistence without slowing the primary"
        )
    elif lagging:
        status, observed = "warn", f"primary with {count} replica(s); behind: {', '.join(lagging)}"
        action = "check the replicas' links and load (INFO replication on each)"
    else:
        status, observed = "ok", f"primary with {count} replica(s), all online"
        action = None
    return _check(
        "redis.role",
        status,
        observed,
        action=action,
        values={
            "role": "primary",
            "replicas": [
                {
                    "address": f"{e.get('ip')}:{e.get('port')}",
                    "state": e.get("state"),
                    "lag": e.get("lag"),
                }
                for e in entries
            ],
        },
        metrics=[Metric("esctl_doctor_redis_connected_replicas", count)],
    )


def check_maxmemory_policy(f: ServerFacts, data: DataPresence) -> Check:
    policy = f.setting("maxmemory-policy")
    if policy is None:
        return unavailable(
            "redis.maxmemory_policy",
            f.config_unavailable("maxmemory-policy"),
            "check the setting in your provider's console or grant CONFIG GET",
        )
    source = "CONFIG" if "maxmemory-policy" in f.config else "INFO"
    metrics = [Metric("esctl_doctor_redis_noeviction", int(policy == "noeviction"))]
    if policy == "noeviction":
        return _check(
            "redis.maxmemory_policy",
            "ok",
            "noeviction",
            values={"policy": policy, "source": source},
            metrics=metrics,
        )
    status: Status = "warn" if data.known_empty else "fail"
    scope = (
        "no event data or queues found in the given scope, but any key stored later is at risk"
        if data.known_empty
        else data.description
    )
    volatile = (
        " (volatile-* policies evict only keys with a TTL, but fall back to refusing writes "
        "like noeviction only by luck of what has a TTL)"
        if policy.startswith("volatile")
        else ""
    )
    return _check(
        "redis.maxmemory_policy",
        status,
        f"{policy}: {scope}{volatile}",
        action="CONFIG SET maxmemory-policy noeviction (and set it in redis.conf or your "
        "provider's parameter group so a restart keeps it)",
        values={"policy": policy, "source": source},
        metrics=metrics,
    )


def check_maxmemory(f: ServerFacts) -> Check:
    used = f.info_int("used_memory")
    maxmemory = _int(f.setting("maxmemory"))
    if used is None:
        return _info_unavailable("redis.maxmemory", f)
    if maxmemory is None:
        return unavailable(
            "redis.maxmemory",
            f.config_unavailable("maxmemory"),
            "check the setting in your provider's console or grant CONFIG GET",
        )
    system = f.info_int("total_system_memory") or None
    metrics = [
        Metric("esctl_doctor_redis_used_memory_bytes", used),
        Metric("esctl_doctor_redis_maxmemory_bytes", maxmemory),
    ]
    values: dict[str, Any] = {"used_memory": used, "maxmemory": maxmemory, "system_memory": system}
    if maxmemory == 0:
        observed = f"no maxmemory; used {human_bytes(used)}"
        if system:
            observed += f" of {human_bytes(system)} system memory ({_percent(used / system)})"
            metrics.append(Metric("esctl_doctor_redis_memory_limit_usage_ratio", used / system))
        return _check(
            "redis.maxmemory",
            "warn",
            observed,
            action="set maxmemory (with noeviction) to leave the host room for forks, e.g. "
            "60-70% of its memory on a persistent primary",
            values=values,
            metrics=metrics,
        )
    ratio = used / maxmemory
    metrics.append(Metric("esctl_doctor_redis_memory_limit_usage_ratio", round(ratio, 4)))
    status: Status = (
        "fail" if ratio >= HEADROOM_FAIL else "warn" if ratio >= HEADROOM_WARN else "ok"
    )
    return _check(
        "redis.maxmemory",
        status,
        f"used {human_bytes(used)} of maxmemory {human_bytes(maxmemory)} ({_percent(ratio)})",
        action=None
        if status == "ok"
        else "free memory (esctl compress; migrate the events to PostgreSQL and prune them) "
        "or raise maxmemory on a bigger host",
        values=values | {"usage": round(ratio, 4)},
        metrics=metrics,
    )


def _rdb_schedule(save: str | None) -> str:
    if save is None:
        return "unknown"
    parts = save.split()
    if not parts:
        return "off"
    pairs = [f"{parts[i + 1]} change(s) in {parts[i]} s" for i in range(0, len(parts) - 1, 2)]
    return "after " + " or ".join(pairs)


def check_persistence(f: ServerFacts) -> Check:
    aof_setting = f.setting("appendonly")
    aof = None if aof_setting is None else aof_setting == "yes"
    save = f.config.get("save")
    rdb = None if save is None else bool(save.split())
    metrics: list[Metric] = []
    if aof is not None:
        metrics.append(Metric("esctl_doctor_redis_aof_enabled", int(aof)))
    if rdb is not None:
        metrics.append(Metric("esctl_doctor_redis_rdb_enabled", int(rdb)))
    values: dict[str, Any] = {"appendonly": aof, "rdb_save": save}
    here = (
        f"AOF {'on' if aof else 'off' if aof is not None else 'unknown'}, RDB {_rdb_schedule(save)}"
    )
    details: list[str] = []
    if not f.is_primary:
        status: Status = (
            "ok" if aof or rdb else "unavailable" if aof is None or rdb is None else "warn"
        )
        return _check(
            "redis.persistence",
            status,
            f"this replica: {here}",
            action=None
            if status == "ok"
            else "point --redis-url at the primary to see where persistence runs",
            values=values,
            metrics=metrics,
        )
    replicas = f.replicas
    persisting = [r for r in replicas if r.persists]
    unknown = [r for r in replicas if r.persists is None]
    for r in replicas:
        state = (
            f"AOF {'on' if r.aof else 'off'}, RDB "
            f"{'on' if r.rdb else 'off' if r.rdb is not None else 'unknown'}"
            if r.reachable
            else "could not be asked"
        )
        details.append(f"replica {r.address}: {state}" + (f" ({r.error})" if r.error else ""))
    metrics.append(Metric("esctl_doctor_redis_replicas_persisting", len(persisting)))
    values["replicas"] = [
        {"address": r.address, "aof": r.aof, "rdb": r.rdb, "error": r.error} for r in replicas
    ]
    where = f"primary: {here}; {len(persisting)} of {len(replicas)} replica(s) persist"
    action: str | None = None
    if aof:
        status = "ok"
        if replicas:
            details.append(
                "if AOF rewrites or fsyncs cause client timeouts, persistence can run on the "
                "replicas only (appendonly no and save '' here; then disable the primary's "
                "automatic restart)"
            )
    elif persisting:
        status = "ok"
        details.append(
            "persistence runs only on replicas: make sure the primary never restarts "
            "automatically with an empty dataset (it would wipe its replicas); fail over instead"
        )
    elif rdb:
        status = "warn"
        action = (
            "turn on appendonly (appendfsync everysec) here or on a replica: a crash now loses "
            "every event written since the last snapshot"
        )
    elif unknown or aof is None or rdb is None:
        reasons = [
            f.config_unavailable(n) for n, v in (("appendonly", aof), ("save", rdb)) if v is None
        ]
        if unknown:
            reasons.append(f"{len(unknown)} replica(s) could not be asked")
        return _check(
            "redis.persistence",
            "unavailable",
            f"{where}; {'; '.join(reasons)}",
            action="check persistence in your provider's console (most managed services keep "
            "AOF or snapshots themselves)",
            values=values,
            details=details,
            metrics=metrics,
        )
    else:
        status = "fail"
        action = (
            "turn on persistence: appendonly yes with appendfsync everysec on the primary, or "
            "on a replica (then disable the primary's automatic restart)"
        )
        where += ": a restart loses every event"
    return _check(
        "redis.persistence",
        status,
        where,
        action=action,
        values=values,
        details=details,
        metrics=metrics,
    )


def check_appendfsync(f: ServerFacts) -> Check:
    aof = f.setting("appendonly")
    fsync = f.config.get("appendfsync")
    if aof == "no":
        return _check("redis.appendfsync", "ok", "AOF off here (appendfsync does not apply)")
    if fsync is None:
        return unavailable(
            "redis.appendfsync",
            f.config_unavailable("appendfsync"),
            "check the setting in your provider's console or grant CONFIG GET",
        )
    metrics = [Metric("esctl_doctor_redis_appendfsync_always", int(fsync == "always"))]
    if fsync == "everysec":
        return _check(
            "redis.appendfsync", "ok", "everysec", values={"appendfsync": fsync}, metrics=metrics
        )
    if fsync == "always":
        action = (
            "appendfsync everysec (at most about a second of writes at risk), unless the disk "
            "is fast enough that every write may wait for an fsync"
        )
    else:
        action = "appendfsync everysec: with 'no' a crash can lose about 30 s of events"
    return _check(
        "redis.appendfsync",
        "warn",
        fsync,
        action=action,
        values={"appendfsync": fsync},
        metrics=metrics,
    )


def check_aof_rewrite(f: ServerFacts) -> Check:
    aof = f.setting("appendonly")
    setting = f.config.get("no-appendfsync-on-rewrite")
    if aof == "no":
        return _check(
            "redis.aof_rewrite", "ok", "AOF off here (no-appendfsync-on-rewrite does not apply)"
        )
    if setting is None:
        return unavailable(
            "redis.aof_rewrite",
            f.config_unavailable("no-appendfsync-on-rewrite"),
            "check the setting in your provider's console or grant CONFIG GET",
        )
    metrics = [Metric("esctl_doctor_redis_no_appendfsync_on_rewrite", int(setting == "yes"))]
    if setting == "yes":
        return _check(
            "redis.aof_rewrite",
            "ok",
            "yes (fsync pauses during rewrites)",
            values={"no_appendfsync_on_rewrite": setting},
            metrics=metrics,
        )
    return _check(
        "redis.aof_rewrite",
        "warn",
        f"no, with appendonly {aof}: fsyncs compete with every AOF rewrite and RDB snapshot",
        action="CONFIG SET no-appendfsync-on-rewrite yes (and in redis.conf); if timeouts "
        "persist, give the disk more IOPS or run persistence only on replicas",
        values={"no_appendfsync_on_rewrite": setting},
        metrics=metrics,
    )


def check_latency_monitor(f: ServerFacts) -> Check:
    threshold = _int(f.config.get("latency-monitor-threshold"))
    if threshold is None:
        return unavailable(
            "redis.latency_monitor",
            f.config_unavailable("latency-monitor-threshold"),
            "check the setting in your provider's console or grant CONFIG GET",
        )
    metrics = [Metric("esctl_doctor_redis_latency_monitor_threshold_seconds", threshold / 1000)]
    if threshold == 0:
        return _check(
            "redis.latency_monitor",
            "warn",
            "0 (latency monitor off)",
            action="CONFIG SET latency-monitor-threshold 100 (and in redis.conf): records "
            "spikes over 100 ms at no measurable cost",
            values={"latency_monitor_threshold_ms": threshold},
            metrics=metrics,
        )
    return _check(
        "redis.latency_monitor",
        "ok",
        f"{threshold} ms",
        values={"latency_monitor_threshold_ms": threshold},
        metrics=metrics,
    )


def _doctor_summary(text: str | None) -> list[str]:
    """The numbered findings and the advice bullets of LATENCY DOCTOR, one line each."""
    if not text:
        return []
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line[:1].isdigit() or line.startswith("- ")]


def check_latency(f: ServerFacts) -> Check:
    if f.latency_latest is None:
        return unavailable(
            "redis.latency",
            f"LATENCY LATEST failed: {f.latency_error}",
            "grant LATENCY to the user",
        )
    threshold = _int(f.config.get("latency-monitor-threshold"))
    if not f.latency_latest:
        # Without CONFIG, LATENCY DOCTOR still says whether the monitor is off.
        off = threshold == 0 or (
            threshold is None and "monitoring is disabled" in (f.latency_doctor or "")
        )
        if off:
            return unavailable(
                "redis.latency",
                "no spikes recorded: the latency monitor is off (latency-monitor-threshold 0)",
                "CONFIG SET latency-monitor-threshold 100",
            )
        return _check("redis.latency", "ok", "no latency spike recorded")
    now = f.now
    events = sorted(f.latency_latest, key=lambda e: -e[3])
    recent = [e for e in events if now - e[1] <= LATENCY_RECENT_S]
    observed = ", ".join(
        f"{name} max {worst} ms (latest {latest} ms, {human_duration(now - at)} ago)"
        for name, at, latest, worst in events[:5]
    )
    metrics: list[Metric] = []
    for name, at, _, worst in events:
        metrics.append(
            Metric("esctl_doctor_redis_latency_spike_max_seconds", worst / 1000, {"event": name})
        )
        metrics.append(
            Metric("esctl_doctor_redis_latency_spike_age_seconds", round(max(0.0, now - at), 3),
                   {"event": name})
        )  # fmt: skip
    return _check(
        "redis.latency",
        "warn" if recent else "ok",
        observed,
        action="read LATENCY DOCTOR's advice below; aof-* and fork events point at "
        "persistence (see redis.aof_rewrite, redis.persistence), command at slow commands "
        "(see redis.slowlog)"
        if recent
        else None,
        values={
            "events": [
                {"event": n, "at": at, "latest_ms": latest, "max_ms": worst}
                for n, at, latest, worst in events
            ]
        },
        details=_doctor_summary(f.latency_doctor),
        metrics=metrics,
    )


def check_slowlog(f: ServerFacts) -> Check:
    if f.slowlog is None:
        return unavailable(
            "redis.slowlog", f"SLOWLOG GET failed: {f.slowlog_error}", "grant SLOWLOG to the user"
        )
    slower_than = _int(f.config.get("slowlog-log-slower-than"))
    entries = [e for e in f.slowlog if e.command in LIBRARY_COMMANDS]
    by_command: dict[str, list[SlowEntry]] = {}
    for entry in entries:
        by_command.setdefault(entry.command, []).append(entry)
    metrics = []
    for command in LIBRARY_COMMANDS:
        found = by_command.get(command, [])
        metrics.append(
            Metric("esctl_doctor_redis_slowlog_entries", len(found), {"command": command})
        )
        if found:
            metrics.append(
                Metric("esctl_doctor_redis_slowlog_max_seconds",
                       max(e.duration_us for e in found) / 1e6, {"command": command})
            )  # fmt: skip
    scope = f"in the slow log ({len(f.slowlog)} entries read" + (
        f"; it keeps commands over {slower_than / 1000:g} ms)" if slower_than is not None else ")"
    )
    values = {
        "entries": len(f.slowlog),
        "slowlog_log_slower_than_us": slower_than,
        "commands": {
            c: {"count": len(v), "max_ms": max(e.duration_us for e in v) / 1000}
            for c, v in by_command.items()
        },
    }
    if not entries:
        return _check(
            "redis.slowlog",
            "ok",
            f"none of {', '.join(LIBRARY_COMMANDS)} {scope}",
            values=values,
            metrics=metrics,
        )
    observed = ", ".join(
        f"{c} {len(v)} (slowest {max(e.duration_us for e in v) / 1000:.1f} ms)"
        for c, v in sorted(by_command.items())
    )
    return _check(
        "redis.slowlog",
        "warn",
        f"{observed} {scope}",
        action="SLOWLOG GET 128 shows the calls; slow HGET/LRANGE mean large values or long "
        "commit lists (esctl compress; snapshots), slow RPOPLPUSH/EXEC a blocked main thread "
        "(see redis.latency)",
        values=values,
        metrics=metrics,
    )


def check_fragmentation(f: ServerFacts) -> Check:
    ratio = f.info.get("mem_fragmentation_ratio")
    used = f.info_int("used_memory")
    if ratio is None or used is None:
        return _info_unavailable("redis.fragmentation", f)
    ratio = float(ratio)
    metrics = [Metric("esctl_doctor_redis_mem_fragmentation_ratio", ratio)]
    values = {"mem_fragmentation_ratio": ratio, "used_memory": used}
    if used < FRAGMENTATION_MIN_USED:
        return _check(
            "redis.fragmentation",
            "ok",
            f"{ratio:.2f} with {human_bytes(used)} of data (too little to judge)",
            values=values,
            metrics=metrics,
        )
    if ratio > FRAGMENTATION_WARN:
        return _check(
            "redis.fragmentation",
            "warn",
            f"{ratio:.2f}: RSS is {ratio:.1f} times the {human_bytes(used)} of data",
            action="CONFIG SET activedefrag yes (jemalloc builds), or restart a replica and fail "
            "over to it",
            values=values,
            metrics=metrics,
        )
    if ratio < 1.0:
        return _check(
            "redis.fragmentation",
            "warn",
            f"{ratio:.2f}: less RSS than data, Redis may be swapping",
            action="check swap on the host (free -m, vmstat); give Redis more memory",
            values=values,
            metrics=metrics,
        )
    return _check("redis.fragmentation", "ok", f"{ratio:.2f}", values=values, metrics=metrics)


CLUSTER_SLOTS = 16384


def check_cluster(f: ServerFacts, *, through_cluster_client: bool) -> Check:
    """One cluster node's view of the cluster: its state and the slots it sees served. Also
    fails when the node was reached through a plain URL: esctl then sees that node alone."""
    if not through_cluster_client:
        return _check(
            "redis.cluster",
            "fail",
            "this server is a node of a Redis Cluster, but was checked alone: the settings "
            "above are this node's only, and the --app and --env checks see only the keys "
            "stored on it",
            action="rerun with --redis-url redis+cluster://HOST:PORT (or add --cluster): esctl "
            "then finds every primary and checks the whole cluster",
            values={"cluster_enabled": True, "checked_as_cluster": False},
        )
    if f.cluster_info is None:
        return unavailable(
            "redis.cluster",
            f"CLUSTER INFO failed: {f.cluster_error or 'no reply'}",
            "grant CLUSTER INFO to esctl's user (read-only)",
        )
    info = f.cluster_info
    state = info.get("cluster_state", "?")
    counts = {
        name: _int(info.get(f"cluster_slots_{name}")) or 0
        for name in ("assigned", "ok", "pfail", "fail")
    }
    known = _int(info.get("cluster_known_nodes"))
    size = _int(info.get("cluster_size"))
    values: dict[str, Any] = {"cluster_state": state, "slots": counts,
                              "known_nodes": known, "cluster_size": size}  # fmt: skip
    metrics = [
        Metric("esctl_doctor_redis_cluster_state_ok", int(state == "ok")),
        Metric("esctl_doctor_redis_cluster_slots_ok", counts["ok"]),
    ]
    observed = (
        f"cluster_state {state}; {counts['ok']:,} of {CLUSTER_SLOTS:,} slots served"
        f" ({counts['assigned']:,} assigned, {counts['pfail']:,} possibly failing, "
        f"{counts['fail']:,} failing) by {size} primaries; {known} nodes known"
    )
    if state != "ok" or counts["assigned"] < CLUSTER_SLOTS or counts["fail"]:
        return _check(
            "redis.cluster",
            "fail",
            observed,
            action="bring the failed primaries back or promote their replicas (CLUSTER "
            "FAILOVER on a replica); redis-cli --cluster check HOST:PORT shows unserved slots, "
            "redis-cli --cluster fix HOST:PORT assigns them",
            values=values,
            metrics=metrics,
        )
    if counts["pfail"]:
        return _check(
            "redis.cluster",
            "warn",
            observed,
            action="a node does not answer the others in time: check it (CLUSTER NODES shows "
            "which, flagged fail?); if it stays down the cluster fails it over or stops",
            values=values,
            metrics=metrics,
        )
    return _check("redis.cluster", "ok", observed, values=values, metrics=metrics)


REDIS_CHECKS: tuple[tuple[str, Callable[..., Check]], ...] = (
    ("redis.reachable", check_reachable),
    ("redis.version", check_version),
    ("redis.role", check_role),
    ("redis.maxmemory_policy", check_maxmemory_policy),
    ("redis.maxmemory", check_maxmemory),
    ("redis.persistence", check_persistence),
    ("redis.appendfsync", check_appendfsync),
    ("redis.aof_rewrite", check_aof_rewrite),
    ("redis.latency_monitor", check_latency_monitor),
    ("redis.latency", check_latency),
    ("redis.slowlog", check_slowlog),
    ("redis.fragmentation", check_fragmentation),
)


def combine(check_id: str, results: Sequence[tuple[str, Check]]) -> Check:
    """One check over several servers (a cluster's primaries): the worst status; the servers'
    observations worst first, servers that saw the same thing named together; the worst
    finding's action naming the servers it is about (``on every primary`` when it is all of
    them); every server's status in ``servers`` and its metrics (labelled ``server``)."""
    for name, check in results:
        for metric in check.metrics:
            metric.labels.setdefault("server", name)
    if len(results) == 1:
        return results[0][1]
    ordered = sorted(results, key=lambda r: -_SEVERITY[r[1].status])  # stable: worst first
    worst = ordered[0][1]
    seen: dict[tuple[Status, str], list[str]] = {}
    for name, check in ordered:
        seen.setdefault((check.status, check.observed), []).append(name)
    observed = "; ".join(f"{', '.join(names)}: {text}" for (_, text), names in seen.items())
    action = worst.action
    if action is not None and worst.status != "ok":
        concerned = [name for name, c in results if c.status == worst.status]
        where = "every primary" if len(concerned) == len(results) else ", ".join(concerned)
        action = f"on {where}: {action}"
    return Check(
        check_id,
        TITLES[check_id],
        worst.status,
        observed,
        WHY[check_id],
        action,
        {name: c.values for name, c in results},
        [f"{name}: {d}" for name, c in ordered for d in c.details],
        [m for _, c in results for m in c.metrics],
        {name: c.status for name, c in results},
    )


def memory_limit(facts: Sequence[ServerFacts]) -> int | None:
    """What the servers can hold together: the sum of their ``maxmemory``; a server without
    one is bounded by its host's memory, counted once per host (cluster nodes often share a
    host, and then share its memory). None when a server's limit is unknown."""
    total = 0
    hosts: dict[str, int] = {}
    for f in facts:
        maxmemory = _int(f.setting("maxmemory"))
        if maxmemory:
            total += maxmemory
            continue
        system = f.info_int("total_system_memory")
        if not system:
            return None
        hosts[f.name.rpartition(":")[0] or f.name] = system
    return total + sum(hosts.values())


@dataclass
class DataPresence:
    """What doctor knows about the data in this Redis (for the eviction policy's verdict)."""

    events: int | None = None
    """Committed events of --app (None: not looked at)."""
    queues: int | None = None
    """Queues of --env (None: not looked at)."""

    @property
    def known_empty(self) -> bool:
        return self.events == 0 and self.queues == 0

    @property
    def description(self) -> str:
        parts = []
        if self.events:
            parts.append(f"{self.events:,} events stored")
        if self.queues:
            parts.append(f"{self.queues:,} queues")
        if not parts:
            return "event data and queued messages can be evicted"
        return f"{' and '.join(parts)} can be evicted"


# --- readings (growth and draining) ---------------------------------------------------------


def rotate_readings(
    stored: dict[str, Any] | None, reading: dict[str, Any], min_interval: float
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(baseline, document to store)``. The baseline is the older of the two stored readings
    when it is at least ``min_interval`` seconds old (else None); the newer one becomes the
    older once it is that old, and this reading the newer (else nothing is stored). So a run
    compares with a reading between ``min_interval`` and twice that old, however often it
    runs."""
    now = float(reading["taken_at"])
    try:
        older, newer = stored["older"], stored["newer"]  # type: ignore[index]
        older_at, newer_at = float(older["taken_at"]), float(newer["taken_at"])
    except (KeyError, TypeError, ValueError):
        return None, {"older": reading, "newer": reading}
    if newer_at > now or older_at > newer_at:  # a clock moved backwards: start over
        return None, {"older": reading, "newer": reading}
    baseline = older if now - older_at >= min_interval else None
    document = {"older": newer, "newer": reading} if now - newer_at >= min_interval else None
    return baseline, document


@dataclass
class _Readings:
    client: redisio.RedisClient
    read_only: bool
    notes: list[dict[str, Any]] = field(default_factory=list)

    def exchange(
        self, key: str, reading: dict[str, Any], min_interval: timedelta
    ) -> dict[str, Any] | None:
        """The baseline for ``reading`` (see :func:`rotate_readings`); stores the rotated
        document unless read-only. A failed store is noted, never raised."""
        try:
            raw = self.client.get(key)
        except redisio.REDIS_ERRORS as exc:
            self.notes.append({"key": key, "stored": False, "detail": f"GET failed: {exc}"})
            return None
        stored = None
        if raw:
            try:
                stored = orjson.loads(raw)
            except orjson.JSONDecodeError:
                stored = None
        baseline, document = rotate_readings(stored, reading, min_interval.total_seconds())
        if document is None or self.read_only:
            why = "read-only run" if self.read_only else "the newer stored reading is recent"
            self.notes.append({"key": key, "stored": False, "detail": why})
            return baseline
        try:
            self.client.set(key, orjson.dumps(document), ex=READING_TTL_S)
            self.notes.append({"key": key, "stored": True, "detail": None})
        except redisio.REDIS_ERRORS as exc:
            self.notes.append(
                {"key": key, "stored": False, "detail": f"SET failed: {_error_text(exc)}"}
            )
        return baseline


def _too_soon(check_id: str, baseline_needed: timedelta) -> Check:
    return unavailable(
        check_id,
        "no reading old enough to compare with yet (this run's was stored); comparisons need "
        f"one at least {human_duration(baseline_needed.total_seconds())} old",
        "run doctor again later (from cron, for example)",
    )


# --- event store checks --------------------------------------------------------------------

EVENT_DATA_FAMILIES = ("event_hashes", "legacy_hash", "commit_lists", "snapshots")


def check_store_memory(app: str, stats: inspect.StatsReport, limit: int | None) -> Check:
    used = stats.used_memory
    families = {m.family: m for m in stats.memory}
    metrics = []
    shown = []
    for m in stats.memory:
        labels = {"app": app, "family": m.family}
        metrics.append(Metric("esctl_doctor_store_memory_bytes", m.estimated_bytes, labels))
        if m.share_of_used_memory is not None:
            metrics.append(
                Metric("esctl_doctor_store_memory_share", m.share_of_used_memory, dict(labels))
            )
        if m.keys:
            share = (
                f" ({_percent(m.share_of_used_memory)})"
                if m.share_of_used_memory is not None
                else ""
            )
            shown.append(f"{m.family.replace('_', ' ')} {human_bytes(m.estimated_bytes)}{share}")
    metrics.append(Metric("esctl_doctor_store_events", stats.commit_ids, {"app": app}))
    event_data = sum(families[f].estimated_bytes for f in EVENT_DATA_FAMILIES if f in families)
    observed = (", ".join(shown) or "no keys of this app") + (
        f" of used_memory {human_bytes(used)}" if used else ""
    )
    values = {
        "used_memory": used,
        "events": stats.commit_ids,
        "aggregates": stats.commit_lists,
        "event_data_bytes": event_data,
        "families": {
            m.family: {
                "keys": m.keys,
                "sampled": m.sampled,
                "estimated_bytes": m.estimated_bytes,
                "share_of_used_memory": m.share_of_used_memory,
            }
            for m in stats.memory
        },
    }
    heavy = limit is not None and event_data > EVENT_DATA_WARN_SHARE * limit
    return _check(
        "store.memory",
        "warn" if heavy else "ok",
        observed,
        action=f"event data is {_percent(event_data / limit)} of the memory limit: migrate it "
        f"(esctl migrate redis-to-pg --app {app}) and prune it once services read from "
        "PostgreSQL; esctl compress first if payloads are plain"
        if heavy and limit
        else None,
        values=values,
        metrics=metrics,
    )


def check_uncompressed(
    app: str,
    samples: dict[str, compress.PayloadSample],
    totals: dict[str, int | None],
    threshold: int,
) -> Check:
    examined = sum(s.values_examined for s in samples.values())
    found = sum(s.plain_over_threshold for s in samples.values())
    values: dict[str, Any] = {"threshold": threshold, "families": {}}
    estimate_count = estimate_bytes = estimate_saving = 0.0
    exact = True
    for name, s in samples.items():
        total = totals.get(name)
        scale = (total / s.values_examined) if total is not None and s.values_examined else None
        if scale is None and s.plain_over_threshold:
            exact = False
        factor = scale if scale is not None else 1.0
        family = {
            "hashes_sampled": s.hashes_sampled,
            "values_examined": s.values_examined,
            "values_total": total,
            "compressed": s.compressed,
            "plain_over_threshold": s.plain_over_threshold,
            "estimated_plain_over_threshold": round(s.plain_over_threshold * factor),
            "estimated_bytes": round(s.plain_over_bytes * factor),
            "estimated_saving_bytes": round(
                (s.plain_over_bytes - s.plain_over_compressed_bytes) * factor
            ),
        }
        values["families"][name] = family
        estimate_count += s.plain_over_threshold * factor
        estimate_bytes += s.plain_over_bytes * factor
        estimate_saving += (s.plain_over_bytes - s.plain_over_compressed_bytes) * factor
    labels = {"app": app}
    metrics = [
        Metric("esctl_doctor_store_uncompressed_payloads", round(estimate_count), labels),
        Metric("esctl_doctor_store_uncompressed_bytes", round(estimate_bytes), dict(labels)),
        Metric("esctl_doctor_store_compress_saving_bytes", round(estimate_saving), dict(labels)),
    ]
    values |= {
        "values_examined": examined,
        "plain_over_threshold": found,
        "estimated_plain_over_threshold": round(estimate_count),
        "estimated_bytes": round(estimate_bytes),
        "estimated_saving_bytes": round(estimate_saving),
    }
    if not examined:
        return _check(
            "store.uncompressed",
            "ok",
            "no payloads of this app found",
            values=values,
            metrics=metrics,
        )
    if not found:
        return _check(
            "store.uncompressed",
            "ok",
            f"none of {examined:,} sampled payloads is plain over {threshold:,} bytes",
            values=values,
            metrics=metrics,
        )
    about = "about " if exact else "at least "
    return _check(
        "store.uncompressed",
        "warn",
        f"{found:,} of {examined:,} sampled payloads are plain over {threshold:,} bytes: "
        f"{about}{estimate_count:,.0f} in the store ({human_bytes(estimate_bytes)}; compressing "
        f"saves ~{human_bytes(estimate_saving)})",
        action=f"esctl compress --app {app} --dry-run, then esctl compress --app {app} --yes "
        "(gzip+base64 in place, as the library writes; safe while services run); turn the "
        "library's compression setting on for new writes",
        values=values,
        metrics=metrics,
    )


def check_growth(
    app: str,
    reading: dict[str, Any],
    baseline: dict[str, Any] | None,
    limit: int | None,
    min_interval: timedelta,
) -> Check:
    if baseline is None:
        return _too_soon("store.growth", min_interval)
    elapsed = float(reading["taken_at"]) - float(baseline["taken_at"])
    per_day = 86400 / elapsed
    memory_rate = (reading["used_memory"] - baseline["used_memory"]) * per_day
    events_rate = (
        (reading["events"] - baseline["events"]) * per_day
        if reading.get("events") is not None and baseline.get("events") is not None
        else None
    )
    store_rate = (
        (reading["event_store_bytes"] - baseline["event_store_bytes"]) * per_day
        if reading.get("event_store_bytes") is not None
        and baseline.get("event_store_bytes") is not None
        else None
    )
    labels = {"app": app}
    metrics = [
        Metric(
            "esctl_doctor_store_growth_bytes_per_day",
            round(memory_rate),
            labels | {"measure": "used_memory"},
        )
    ]
    if store_rate is not None:
        metrics.append(
            Metric("esctl_doctor_store_growth_bytes_per_day", round(store_rate),
                   labels | {"measure": "event_store"})
        )  # fmt: skip
    if events_rate is not None:
        metrics.append(
            Metric("esctl_doctor_store_growth_events_per_day", round(events_rate), dict(labels))
        )
    days_left = None
    if limit and memory_rate > 0:
        days_left = max(0.0, (limit - reading["used_memory"]) / memory_rate)
        metrics.append(
            Metric("esctl_doctor_store_days_to_limit", round(days_left, 1), dict(labels))
        )
    observed = f"used_memory {human_bytes(memory_rate)}/day"
    if store_rate is not None:
        observed += f", event store ~{human_bytes(store_rate)}/day"
    if events_rate is not None:
        observed += f", {events_rate:,.0f} events/day"
    observed += f" (over {human_duration(elapsed)})"
    if days_left is not None:
        observed += f"; the memory limit is {days_left:,.0f} days away at this rate"
    status: Status = "ok"
    if days_left is not None and days_left < GROWTH_FAIL_DAYS:
        status = "fail"
    elif days_left is not None and days_left < GROWTH_WARN_DAYS:
        status = "warn"
    return _check(
        "store.growth",
        status,
        observed,
        action=None
        if status == "ok"
        else f"free memory before the limit: esctl compress --app {app}; migrate events to "
        "PostgreSQL and prune them; or raise maxmemory",
        values={
            "interval_s": round(elapsed, 1),
            "used_memory_bytes_per_day": round(memory_rate),
            "event_store_bytes_per_day": round(store_rate) if store_rate is not None else None,
            "events_per_day": round(events_rate) if events_rate is not None else None,
            "days_to_limit": round(days_left, 1) if days_left is not None else None,
            "baseline_taken_at": baseline["taken_at"],
        },
        metrics=metrics,
    )


# --- queue checks --------------------------------------------------------------------------


def _queue_labels(env: str, q: queues.QueueStatus) -> dict[str, str]:
    return {"env": env, "subscriber": q.subscriber, "event_type": q.event_type}


def check_stuck(env: str, listing: queues.QueueListing, stuck_after: timedelta) -> Check:
    limit = stuck_after.total_seconds()
    stuck = [
        q
        for q in listing.queues
        if q.oldest_processing_age_s is not None and q.oldest_processing_age_s > limit
    ]
    metrics = [
        Metric("esctl_doctor_queue_oldest_processing_age_seconds", round(q.oldest_processing_age_s, 3), _queue_labels(env, q))
        for q in listing.queues
        if q.oldest_processing_age_s is not None
    ]  # fmt: skip
    details = [
        f"{q.subscriber} {q.event_type}: {q.processing:,} processing, oldest "
        f"{human_duration(q.oldest_processing_age_s or 0)} old"
        for q in stuck
    ]
    values = {
        "threshold_s": limit,
        "queues": [
            {"subscriber": q.subscriber, "event_type": q.event_type, "processing": q.processing,
             "oldest_processing_age_s": round(q.oldest_processing_age_s or 0, 3)}
            for q in stuck
        ],
    }  # fmt: skip
    if not stuck:
        busy = sum(q.processing for q in listing.queues)
        return _check(
            "queues.stuck",
            "ok",
            f"no processing message older than {human_duration(limit)} in {len(listing.queues)} "
            f"queue(s) ({busy:,} being processed)",
            values=values,
            metrics=metrics,
        )
    first = stuck[0]
    return _check(
        "queues.stuck",
        "fail",
        f"{len(stuck)} queue(s) hold processing messages older than {human_duration(limit)}",
        action=f"requeue them: esctl queue requeue SUB TYPE --env {env} --grace 2m --yes (e.g. "
        f"esctl queue requeue {first.subscriber} {first.event_type} --env {env} --grace 2m "
        "--dry-run first); check why the consumer died",
        values=values,
        details=details,
        metrics=metrics,
    )


def check_dead_letters(env: str, listing: queues.QueueListing) -> Check:
    dead = [q for q in listing.queues if q.dead]
    total = sum(q.dead for q in dead)
    values = {
        "dead_letters": total,
        "queues": [
            {"subscriber": q.subscriber, "event_type": q.event_type, "dead": q.dead} for q in dead
        ],
    }
    metrics = [
        Metric("esctl_doctor_queue_messages", count, _queue_labels(env, q) | {"list": which})
        for q in listing.queues
        for which, count in (("published", q.published), ("processing", q.processing),
                             ("dead", q.dead))
    ]  # fmt: skip
    if not dead:
        return _check(
            "queues.dead_letters", "ok", "no dead letters", values=values, metrics=metrics
        )
    first = max(dead, key=lambda q: q.dead)
    return _check(
        "queues.dead_letters",
        "warn",
        f"{total:,} dead letter(s) in {len(dead)} queue(s)",
        action=f"see why: esctl queue peek {first.subscriber} {first.event_type} --list dead "
        f"--env {env}; after a fix, esctl queue requeue ... --from dead, or back them up and "
        "remove them with esctl queue drain",
        values=values,
        details=[f"{q.subscriber} {q.event_type}: {q.dead:,} dead" for q in dead],
        metrics=metrics,
    )


def queue_reading(
    listing: queues.QueueListing, tails: dict[tuple[str, str], str | None], taken_at: float
) -> dict[str, Any]:
    return {
        "taken_at": taken_at,
        "queues": [
            [q.subscriber, q.event_type, q.published, tails.get((q.subscriber, q.event_type))]
            for q in listing.queues
        ],
    }


def queue_tails(
    client: redisio.RedisClient, env: str, listing: queues.QueueListing
) -> dict[tuple[str, str], str | None]:
    """A digest of the message each published list will give next (its tail)."""
    busy = [q for q in listing.queues if q.published]
    replies = redisio.pipelined(
        client,
        [
            ("LINDEX", layout.queue_key(q.subscriber, env, q.event_type, "published"), -1)
            for q in busy
        ],
    )
    out: dict[tuple[str, str], str | None] = {}
    for q, reply in zip(busy, replies, strict=True):
        out[(q.subscriber, q.event_type)] = (
            hashlib.sha1(reply).hexdigest()[:16] if isinstance(reply, bytes) else None
        )
    return out


def check_draining(
    env: str,
    listing: queues.QueueListing,
    reading: dict[str, Any],
    baseline: dict[str, Any] | None,
    min_interval: timedelta,
) -> Check:
    if baseline is None:
        return _too_soon("queues.draining", min_interval)
    elapsed = float(reading["taken_at"]) - float(baseline["taken_at"])
    before = {(r[0], r[1]): (int(r[2]), r[3]) for r in baseline.get("queues", [])}
    now = {(r[0], r[1]): (int(r[2]), r[3]) for r in reading["queues"]}
    stalled_subscribed: list[str] = []
    stalled_leftover: list[str] = []
    metrics = []
    rows = []
    for q in listing.queues:
        pair = (q.subscriber, q.event_type)
        if pair not in before:
            continue
        (old_len, old_tail), (new_len, new_tail) = before[pair], now[pair]
        stalled = (
            old_len > 0 and new_len >= old_len and old_tail is not None and new_tail == old_tail
        )
        metrics.append(
            Metric("esctl_doctor_queue_draining", int(not stalled), _queue_labels(env, q))
        )
        rows.append({"subscriber": q.subscriber, "event_type": q.event_type,
                     "published_before": old_len, "published_now": new_len,
                     "draining": not stalled, "subscribed": q.subscribed})  # fmt: skip
        if stalled:
            line = f"{q.subscriber} {q.event_type}: {old_len:,} → {new_len:,} published, same oldest message"
            (stalled_subscribed if q.subscribed else stalled_leftover).append(line)
    values = {"interval_s": round(elapsed, 1), "queues": rows}
    over = f"over {human_duration(elapsed)}"
    if stalled_subscribed:
        return _check(
            "queues.draining",
            "fail",
            f"{len(stalled_subscribed)} subscribed queue(s) not drained {over}",
            action="start (or fix) the subscriber's consumer service; its messages wait in "
            "PublishedEvents and are taken as soon as it runs",
            values=values,
            details=stalled_subscribed + [f"(not subscribed) {line}" for line in stalled_leftover],
            metrics=metrics,
        )
    if stalled_leftover:
        return _check(
            "queues.draining",
            "warn",
            f"{len(stalled_leftover)} queue(s) of services no longer subscribed hold messages "
            f"nobody takes ({over})",
            action="if the service is gone for good, back the messages up and remove them: "
            f"esctl queue drain SUB TYPE --list published --to-file PATH.jsonl.zst --env {env}",
            values=values,
            details=stalled_leftover,
            metrics=metrics,
        )
    compared = len(rows)
    return _check(
        "queues.draining",
        "ok",
        f"{compared} queue(s) compared {over}: none stalled",
        values=values,
        metrics=metrics,
    )


# --- PostgreSQL checks ---------------------------------------------------------------------


def _pg_checks(
    opts: DoctorOptions, redis_client: redisio.RedisClient | None, stats: inspect.StatsReport | None
) -> list[Check]:
    assert opts.pg_dsn is not None
    dsn, schema = opts.pg_dsn, opts.pg_schema
    try:
        started = time.perf_counter()
        conn = pg.connect(dsn, autocommit=True, application_name="esctl doctor")
    except ConnectionFailed as exc:
        reason = "PostgreSQL unreachable"
        return [
            _check(
                "pg.reachable",
                "fail",
                exc.message,
                action=exc.hint,
                metrics=[Metric("esctl_doctor_pg_up", 0)],
            ),
            unavailable("pg.schema", reason),
            unavailable("pg.constraints", reason),
            unavailable("pg.migration", reason),
        ]
    try:
        return [
            _guarded("pg.reachable", lambda: _pg_reachable(conn, started)),
            _guarded("pg.schema", lambda: _pg_schema(conn, schema, opts.app or "APP")),
            _guarded("pg.constraints", lambda: _pg_constraints(conn, schema)),
            _guarded("pg.migration", lambda: _pg_migration(conn, opts, redis_client, stats)),
        ]
    finally:
        conn.close()


def _pg_reachable(conn: Any, started: float) -> Check:
    ping_started = time.perf_counter()
    conn.execute("SELECT 1").fetchone()
    ping = time.perf_counter() - ping_started
    version = conn.info.parameter_status("server_version") or str(conn.info.server_version)
    return _check(
        "pg.reachable",
        "ok",
        f"PostgreSQL {version}, SELECT 1 in {ping * 1000:.2f} ms (connect "
        f"{(ping_started - started) * 1000:.0f} ms)",
        values={"server_version": version, "ping_ms": round(ping * 1000, 3)},
        metrics=[
            Metric("esctl_doctor_pg_up", 1),
            Metric("esctl_doctor_pg_ping_seconds", round(ping, 6)),
        ],
    )


def _pg_schema(conn: Any, schema: str, app: str) -> Check:
    try:
        state = pg.check_event_store_schema(conn, schema)
    except SchemaIncompatible as exc:
        return _check(
            "pg.schema",
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
        return _check(
            "pg.schema",
            "warn",
            f"no event tables in schema {schema} yet",
            action=f"create them with the first migration: esctl migrate redis-to-pg --app {app} "
            "--init-schema",
            values=values,
        )
    missing = sorted(
        {"save_event_for_aggregate", "get_events_for_aggregate"} - set(state.functions_present)
    )
    if missing:
        return _check(
            "pg.schema",
            "warn",
            f"tables compatible; function(s) {', '.join(missing)} missing in {schema}",
            action="services on the SQL provider call them: esctl migrate redis-to-pg --app "
            f"{app} --init-schema creates what is missing (never alters what exists)",
            values=values,
        )
    return _check(
        "pg.schema",
        "ok",
        f"{schema}.aggregate and {schema}.event compatible, both functions present",
        values=values,
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
        return unavailable("pg.constraints", f"no event tables in schema {schema} yet")
    present = {}
    for table, columns in pg.REQUIRED_UNIQUE.items():
        present[f"{table}({', '.join(columns)})"] = table in tables and pg._has_unique(
            conn, schema, table, columns
        )
    missing = [name for name, ok in present.items() if not ok]
    if missing:
        return _check(
            "pg.constraints",
            "fail",
            f"no UNIQUE constraint or index on {', '.join(f'{schema}.{m}' for m in missing)}",
            action="add them as in docs/layout.md §5 (CREATE UNIQUE INDEX CONCURRENTLY … on a live "
            "table), after removing duplicates",
            values={"unique": present},
        )
    return _check(
        "pg.constraints",
        "ok",
        ", ".join(f"{schema}.{name} unique" for name in present),
        values={"unique": present},
    )


def _unmigrated_estimate(
    conn: Any, opts: DoctorOptions, client: redisio.RedisClient, lists: int
) -> tuple[int, int, bool]:
    """(estimated events not migrated, commit lists sampled, exact). Reads the first
    :data:`COMMIT_LIST_SAMPLE_MAX` commit lists in SCAN order, compares their length with
    esctl.migrated_stream, scales to every commit list."""
    from esctl.verify import migrated_commits

    assert opts.app is not None
    keys: list[str] = []
    for _, page in redisio.scan_pages(client, layout.commit_list_pattern(opts.app), type_="list"):
        keys.extend(page[: COMMIT_LIST_SAMPLE_MAX - len(keys)])
        if len(keys) >= COMMIT_LIST_SAMPLE_MAX:
            break
    if not keys:
        return 0, 0, True
    lengths = redisio.list_lengths(client, keys)
    ids = [layout.aggregate_id_from_commit_list_key(opts.app, k) for k in keys]
    migrated = migrated_commits(conn, opts.pg_schema, opts.app, ids)
    missing = sum(max(0, n - migrated.get(i, 0)) for i, n in zip(ids, lengths, strict=True))
    exact = len(keys) >= lists
    scaled = missing if exact else round(missing / len(keys) * lists)
    return scaled, len(keys), exact


def _pg_migration(
    conn: Any,
    opts: DoctorOptions,
    client: redisio.RedisClient | None,
    stats: inspect.StatsReport | None,
) -> Check:
    if opts.app is None:
        return unavailable("pg.migration", "needs --app (migration runs are per application)")
    if not pg.state_schema_present(conn):
        return _check(
            "pg.migration",
            "warn",
            "no migration has run (esctl's bookkeeping schema is absent)",
            action=f"esctl migrate redis-to-pg --app {opts.app} --init-schema",
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
        return _check(
            "pg.migration",
            "warn",
            f"no migration run of {opts.app} into schema {opts.pg_schema}",
            action=f"esctl migrate redis-to-pg --app {opts.app} --init-schema",
        )
    run_id, status_text, shard, started_at, finished_at, last_batch, migrated = row
    now = opts.now or datetime.now(UTC)
    values: dict[str, Any] = {
        "run_id": run_id,
        "status": status_text,
        "shard": shard,
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat() if finished_at else None,
        "last_batch_at": last_batch.isoformat() if last_batch else None,
        "events_migrated": int(migrated),
    }
    metrics = [
        Metric(
            "esctl_doctor_pg_last_migration_timestamp_seconds",
            round(started_at.timestamp(), 3),
            {"app": opts.app, "status": status_text},
        )
    ]
    unmigrated = None
    if client is not None and stats is not None:
        unmigrated, sampled, exact = _unmigrated_estimate(conn, opts, client, stats.commit_lists)
        values |= {
            "unmigrated_events": unmigrated,
            "unmigrated_exact": exact,
            "commit_lists_sampled": sampled,
        }
        metrics.append(Metric("esctl_doctor_pg_unmigrated_events", unmigrated, {"app": opts.app}))
    age = now - (finished_at or last_batch or started_at)
    observed = (
        f"last run {status_text} (shard {shard}), started {human_duration((now - started_at).total_seconds())} ago"
        + (f", {int(migrated):,} events migrated" if migrated else "")
    )
    if unmigrated is not None:
        observed += f"; {'' if values['unmigrated_exact'] else '~'}{unmigrated:,} Redis events not migrated yet"
    status: Status = "ok"
    action = None
    if status_text in ("failed", "interrupted", "stopped"):
        status = "warn"
        action = f"rerun esctl migrate redis-to-pg --app {opts.app}: it resumes from the last committed batch"
    elif status_text == "finished" and unmigrated and age > MIGRATION_STALE:
        status = "warn"
        action = f"schedule esctl migrate redis-to-pg --app {opts.app} (nightly from cron: it only moves what is new)"
    return _check("pg.migration", status, observed, action=action, values=values, metrics=metrics)


# --- the whole report ----------------------------------------------------------------------


def _redis_unavailable(reason: str) -> list[Check]:
    return [unavailable(check_id, reason) for check_id, _ in REDIS_CHECKS[1:]]


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
        client = redisio.connect(opts.redis_url, cluster=opts.cluster, allow_lone_cluster_node=True)
        server = redisio.describe(client)
    except ConnectionFailed as exc:
        checks.append(
            _check(
                "redis.reachable",
                "fail",
                exc.message,
                action=exc.hint,
                metrics=[Metric("esctl_doctor_redis_up", 0, {"server": server})],
            )
        )
        checks += _redis_unavailable("Redis unreachable")
    try:
        if client is not None:
            readings = _Readings(client, opts.read_only)
            redis_checks, stats = _redis_side(client, opts, moment, readings, skipped)
            checks += redis_checks
            notes = readings.notes
        else:
            for group, scope in (("event_store", opts.app), ("queues", opts.env)):
                if scope:
                    skipped.append({"group": group, "reason": "Redis unreachable"})
        if opts.pg_dsn:
            checks += _pg_checks(opts, client, stats)
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
    readings: _Readings,
    skipped: list[dict[str, str]],
) -> tuple[list[Check], inspect.StatsReport | None]:
    taken_at = moment.timestamp()
    facts: dict[str, ServerFacts | str] = {}
    """Per server: what was read from it, or why it could not be read."""
    for name, node in _server_nodes(client):
        try:
            facts[name] = gather_facts(name, node)
        except (redis.exceptions.RedisError, EsctlError) as exc:  # pipelined() wraps errors
            facts[name] = _error_text(exc)
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
        store_checks, stats = _store_checks(client, opts, taken_at, limit, readings)
        if stats is not None:
            presence.events = stats.commit_ids
    else:
        skipped.append({"group": "event_store", "reason": "no --app given"})
    if opts.env:
        queue_checks, presence.queues = _queue_checks(client, opts, moment, readings)
    else:
        skipped.append({"group": "queues", "reason": "no --env given"})

    checks: list[Check] = []
    for check_id, evaluate in REDIS_CHECKS:
        results: list[tuple[str, Check]] = []
        for name, f in facts.items():
            if isinstance(f, str):
                results.append(
                    (name, _unreachable_node(check_id, name, f, one_of_many=len(facts) > 1))
                )
                continue
            args = (f, presence) if evaluate is check_maxmemory_policy else (f,)
            results.append((name, _guarded(check_id, functools.partial(evaluate, *args))))
        checks.append(combine(check_id, results))
    if any(f.in_cluster for f in read):
        through_cluster = isinstance(client, redis.cluster.RedisCluster)
        evaluate_cluster = functools.partial(check_cluster, through_cluster_client=through_cluster)
        checks.append(
            combine(
                "redis.cluster",
                [
                    (name, _unreachable_node("redis.cluster", name, f, one_of_many=True))
                    if isinstance(f, str)
                    else (name, _guarded("redis.cluster", functools.partial(evaluate_cluster, f)))
                    for name, f in facts.items()
                ],
            )
        )
    return checks + store_checks + queue_checks, stats


def _unreachable_node(check_id: str, name: str, error: str, *, one_of_many: bool) -> Check:
    """A server that could not be read. Among a cluster's primaries :func:`combine` puts the
    node's name in front; a single server is named here."""
    if check_id != "redis.reachable":
        return unavailable(check_id, "Redis unreachable")
    return _check(
        "redis.reachable",
        "fail",
        error if one_of_many else f"{name}: {error}",
        action="check that the server runs and answers (a cluster primary that stays down "
        "is failed over to its replica, if it has one)",
        metrics=[Metric("esctl_doctor_redis_up", 0)],
    )


def _store_checks(
    client: redisio.RedisClient,
    opts: DoctorOptions,
    taken_at: float,
    limit: int | None,
    readings: _Readings,
) -> tuple[list[Check], inspect.StatsReport | None]:
    app = opts.app
    assert app is not None
    stats: inspect.StatsReport | None = None
    try:
        stats = inspect.inspect_stats(client, app, env=opts.env, sample=opts.sample)
    except EsctlError as exc:
        memory = unavailable("store.memory", f"could not sample memory: {exc.message}", exc.hint)
    else:
        found = stats
        memory = _guarded("store.memory", lambda: check_store_memory(app, found, limit))

    def uncompressed() -> Check:
        samples = compress.sample_payloads(
            client, app, threshold=opts.compression_threshold, hashes=opts.sample
        )
        totals: dict[str, int | None] = {
            compress.EVENTS: stats.partitioned_fields + stats.legacy_fields if stats else None,
            compress.SNAPSHOTS: stats.snapshots if stats else None,
        }
        return check_uncompressed(app, samples, totals, opts.compression_threshold)

    def growth() -> Check:
        reading = {
            "taken_at": taken_at,
            "used_memory": redisio.used_memory(client),
            "events": stats.commit_ids if stats else None,
            "event_store_bytes": stats.event_store_bytes if stats else None,
        }
        baseline = readings.exchange(
            layout.doctor_reading_key(app), reading, opts.growth_min_interval
        )
        return check_growth(app, reading, baseline, limit, opts.growth_min_interval)

    return [
        memory,
        _guarded("store.uncompressed", uncompressed),
        _guarded("store.growth", growth),
    ], stats


def _queue_checks(
    client: redisio.RedisClient, opts: DoctorOptions, moment: datetime, readings: _Readings
) -> tuple[list[Check], int | None]:
    env = opts.env
    assert env is not None
    try:
        listing = queues.list_queues(client, env, now=moment)
    except EsctlError as exc:
        return [
            unavailable(c, f"could not list the queues: {exc.message}", exc.hint)
            for c in ("queues.stuck", "queues.dead_letters", "queues.draining")
        ], None

    def draining() -> Check:
        tails = queue_tails(client, env, listing)
        reading = queue_reading(listing, tails, moment.timestamp())
        baseline = readings.exchange(
            layout.doctor_queue_reading_key(env), reading, opts.queue_min_interval
        )
        return check_draining(env, listing, reading, baseline, opts.queue_min_interval)

    return [
        _guarded("queues.stuck", lambda: check_stuck(env, listing, opts.stuck_after)),
        _guarded("queues.dead_letters", lambda: check_dead_letters(env, listing)),
        _guarded("queues.draining", draining),
    ], len(listing.queues)


# --- Prometheus textfile -------------------------------------------------------------------


def report_metrics(report: DoctorReport) -> list[Metric]:
    """Every figure of the report as Prometheus samples: each check's status, the counts per
    status, when and how long, and each check's own figures."""
    scope = {k: v for k, v in (("app", report.app), ("env", report.env)) if v}
    out = [
        Metric(
            "esctl_doctor_check_status", STATUS_VALUE[c.status], {"check": c.id, "group": c.group}
        )
        for c in report.checks
    ]
    counts = report.counts()
    out += [Metric("esctl_doctor_checks", counts[s], scope | {"status": s}) for s in STATUSES]
    generated = datetime.fromisoformat(report.generated_at).timestamp()
    out.append(Metric("esctl_doctor_timestamp_seconds", round(generated, 3), dict(scope)))
    out.append(Metric("esctl_doctor_duration_seconds", round(report.elapsed_s, 3), dict(scope)))
    for check in report.checks:
        out += check.metrics
    return out


def render_prometheus(report: DoctorReport) -> str:
    """The Prometheus text exposition format (node_exporter's textfile collector): one HELP and
    TYPE line per metric name, then its samples."""
    return render(report_metrics(report), METRIC_HELP)


def write_metrics_file(path: str, report: DoctorReport) -> None:
    """Write the report's metrics to ``path`` atomically (temporary file, fsync, rename)."""
    write_textfile(path, render_prometheus(report))
