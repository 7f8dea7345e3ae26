"""``doctor``: the Redis settings, latency and memory that hurt event stores, in one report.

Each check says ``ok``, ``warn``, ``fail`` or ``unavailable`` (it could not run), what it
observed, why that matters and what to do; checks never raise. Redis checks always run; ``app``
adds the event store's, ``env`` the queues', a configured PostgreSQL DSN the PostgreSQL ones.
Each check is declared beside the function that runs it (:func:`declare`); how checks are
declared and added, and how readings compare runs: docs/design/doctor.md. The check functions
are used from their modules (``redis_server_checks``, ``store_checks``, …); this package
exports the runner, the report types, the specs and the thresholds.
"""

from __future__ import annotations

from esctl.doctor.pg_checks import COMMIT_LIST_SAMPLE_MAX, MIGRATION_STALE
from esctl.doctor.prometheus import (
    REPORT_METRIC_HELP,
    metric_help,
    render_prometheus,
    report_metrics,
    write_metrics_file,
)
from esctl.doctor.queue_checks import queue_reading, queue_tails
from esctl.doctor.readings import READING_TTL_S, rotate_readings
from esctl.doctor.redis_checks import REDIS_CHECKS, combine
from esctl.doctor.redis_facts import (
    CONFIG_PARAMETERS,
    PING_COUNT,
    REPLICA_TIMEOUT_S,
    SLOWLOG_LENGTH,
    ReplicaFacts,
    ServerFacts,
    SlowEntry,
    gather_facts,
    memory_limit,
)
from esctl.doctor.redis_memory_checks import (
    FRAGMENTATION_MIN_USED,
    FRAGMENTATION_WARN,
    HEADROOM_FAIL,
    HEADROOM_WARN,
    DataPresence,
)
from esctl.doctor.redis_server_checks import (
    CLUSTER_SLOTS,
    LATENCY_RECENT_S,
    LIBRARY_COMMANDS,
    PING_WARN_MS,
)
from esctl.doctor.report import (
    DEFAULT_SAMPLE,
    DEFAULT_STUCK_AFTER,
    GROUPS,
    GROWTH_MIN_INTERVAL,
    QUEUE_MIN_INTERVAL,
    SPECS,
    STATUS_VALUE,
    STATUSES,
    Check,
    CheckSpec,
    DoctorOptions,
    DoctorReport,
    Status,
    declare,
    unavailable,
)
from esctl.doctor.runner import run_doctor
from esctl.doctor.store_checks import (
    EVENT_DATA_FAMILIES,
    EVENT_DATA_WARN_SHARE,
    GROWTH_FAIL_DAYS,
    GROWTH_WARN_DAYS,
)

__all__ = [
    "CLUSTER_SLOTS",
    "COMMIT_LIST_SAMPLE_MAX",
    "CONFIG_PARAMETERS",
    "DEFAULT_SAMPLE",
    "DEFAULT_STUCK_AFTER",
    "EVENT_DATA_FAMILIES",
    "EVENT_DATA_WARN_SHARE",
    "FRAGMENTATION_MIN_USED",
    "FRAGMENTATION_WARN",
    "GROUPS",
    "GROWTH_FAIL_DAYS",
    "GROWTH_MIN_INTERVAL",
    "GROWTH_WARN_DAYS",
    "HEADROOM_FAIL",
    "HEADROOM_WARN",
    "LATENCY_RECENT_S",
    "LIBRARY_COMMANDS",
    "MIGRATION_STALE",
    "PING_COUNT",
    "PING_WARN_MS",
    "QUEUE_MIN_INTERVAL",
    "READING_TTL_S",
    "REDIS_CHECKS",
    "REPLICA_TIMEOUT_S",
    "REPORT_METRIC_HELP",
    "SLOWLOG_LENGTH",
    "SPECS",
    "STATUSES",
    "STATUS_VALUE",
    "Check",
    "CheckSpec",
    "DataPresence",
    "DoctorOptions",
    "DoctorReport",
    "ReplicaFacts",
    "ServerFacts",
    "SlowEntry",
    "Status",
    "combine",
    "declare",
    "gather_facts",
    "memory_limit",
    "metric_help",
    "queue_reading",
    "queue_tails",
    "render_prometheus",
    "report_metrics",
    "rotate_readings",
    "run_doctor",
    "unavailable",
    "write_metrics_file",
]
