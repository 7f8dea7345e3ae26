"""The Redis checks of the server itself: reachable (PING round trip), version, role and
replicas, the latency monitor and its spikes, slow library commands, Redis Cluster state. Each
judges what was read from one server (:class:`~esctl.doctor.redis_facts.ServerFacts`)."""

from __future__ import annotations

import statistics
from typing import Any

from esctl.doctor.redis_facts import ServerFacts, SlowEntry, as_int, grant, replica_addresses
from esctl.doctor.report import Check, Status, declare
from esctl.metrics import Metric
from esctl.units import counted, format_duration

# Thresholds (documented in each check's ``why``).
PING_WARN_MS = 10.0
LATENCY_RECENT_S = 86400

LIBRARY_COMMANDS = ("RPOPLPUSH", "HGET", "LRANGE", "EXEC")
"""The commands the library's hot paths use (consume, load, load, save/publish)."""
CLUSTER_SLOTS = 16384


REACHABLE = declare(
    "redis.reachable",
    "Redis reachable",
    why=(
        "Every save, load and queue operation of the services is a round trip to this server; "
        "a slow round trip (over 10 ms here) multiplies into slow requests and client "
        "timeouts."
    ),
    metrics={
        "esctl_doctor_redis_up": "1 when Redis answered PING.",
        "esctl_doctor_redis_ping_seconds": "Median PING round-trip time.",
    },
)


def check_reachable(f: ServerFacts) -> Check:
    median = statistics.median(f.ping_ms)
    return REACHABLE.warn_unless(
        median <= PING_WARN_MS,
        f"PING {median:.2f} ms (min {min(f.ping_ms):.2f}, max {max(f.ping_ms):.2f}, "
        f"{len(f.ping_ms)} tries), {f.tls or 'no TLS'}",
        action="run esctl close to Redis (same zone); check network and Redis CPU load",
        values={
            "ping_ms": round(median, 3),
            "ping_ms_max": round(max(f.ping_ms), 3),
            "tls": f.tls is not None,
        },
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


VERSION = declare(
    "redis.version",
    "Redis version",
    why=(
        "Redis before 6.2 is past its end of life (no security fixes); 7.0 rewrites the AOF in "
        "parts, which makes rewrites cheaper on a persistent event store."
    ),
    metrics={
        "esctl_doctor_redis_version_info": "The Redis version (label), always 1.",
    },
)


def check_version(f: ServerFacts) -> Check:
    version = f.needed_info("redis_version")
    return VERSION.warn_unless(
        _version_tuple(str(version)) >= (6, 2),
        f"{version}",
        action="upgrade Redis (7.x)",
        values={"version": str(version)},
        metrics=[Metric("esctl_doctor_redis_version_info", 1, {"version": str(version)})],
    )


ROLE = declare(
    "redis.role",
    "role and replicas",
    why=(
        "A primary without a replica holds the only copy of every event: a lost disk or host "
        "loses events. A replica is also where persistence can run without slowing the "
        "primary."
    ),
    metrics={
        "esctl_doctor_redis_connected_replicas": "Replicas connected to the primary.",
    },
)


def check_role(f: ServerFacts) -> Check:
    if f.needed_info("role") != "master":
        link = f.info.get("master_link_status")
        master = f"{f.info.get('master_host')}:{f.info.get('master_port')}"
        status: Status = "ok" if link == "up" else "fail"
        return ROLE.result(
            status,
            f"replica of {master}, link {link}; doctor reports this replica's settings",
            action=None
            if status == "ok"
            else "bring the link to the primary back (see the replica's log); point "
            "--redis-url at the primary to check it",
            values={"role": "replica", "master": master, "master_link_status": link},
        )
    entries = replica_addresses(f.info)
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
        replicas = counted(count, "replica")
        status, observed = "warn", f"primary with {replicas}; behind: {', '.join(lagging)}"
        action = "check the replicas' links and load (`INFO replication` on each)"
    else:
        status, observed = "ok", f"primary with {counted(count, 'replica')}, all online"
        action = None
    return ROLE.result(
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


LATENCY_MONITOR = declare(
    "redis.latency_monitor",
    "latency-monitor-threshold",
    why=(
        "With latency-monitor-threshold 0, Redis records no latency spikes: LATENCY LATEST and "
        "LATENCY DOCTOR have nothing to tell when clients time out."
    ),
    metrics={
        "esctl_doctor_redis_latency_monitor_threshold_seconds": "latency-monitor-threshold.",
    },
)


def check_latency_monitor(f: ServerFacts) -> Check:
    threshold = f.needed_setting_int("latency-monitor-threshold")
    return LATENCY_MONITOR.warn_unless(
        threshold != 0,
        f"{threshold} ms" if threshold else "0 (latency monitor off)",
        action="`CONFIG SET latency-monitor-threshold 100` (and in redis.conf): records "
        "spikes over 100 ms at no measurable cost",
        values={"latency_monitor_threshold_ms": threshold},
        metrics=[Metric("esctl_doctor_redis_latency_monitor_threshold_seconds", threshold / 1000)],
    )


def _doctor_summary(text: str | None) -> list[str]:
    """The numbered findings and the advice bullets of LATENCY DOCTOR, one line each."""
    if not text:
        return []
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line[:1].isdigit() or line.startswith("- ")]


LATENCY = declare(
    "redis.latency",
    "latency spikes (LATENCY LATEST / DOCTOR)",
    why=(
        "Latency spikes over the monitor's threshold (fsync, fork, AOF writes, slow commands) "
        "are what services see as timeouts; a spike in the last 24 h is a warning."
    ),
    metrics={
        "esctl_doctor_redis_latency_spike_max_seconds": "Worst latency spike of an event (LATENCY LATEST).",
        "esctl_doctor_redis_latency_spike_age_seconds": "Age of an event's latest spike.",
    },
)


def check_latency(f: ServerFacts) -> Check:
    if f.latency_latest is None:
        return LATENCY.unavailable(
            f"LATENCY LATEST failed: {f.latency_error}",
            grant("LATENCY LATEST and DOCTOR", "+latency|latest +latency|doctor"),
        )
    threshold = as_int(f.config.get("latency-monitor-threshold"))
    if not f.latency_latest:
        # Without CONFIG, LATENCY DOCTOR still says whether the monitor is off.
        off = threshold == 0 or (
            threshold is None and "monitoring is disabled" in (f.latency_doctor or "")
        )
        if off:
            return LATENCY.unavailable(
                "no spikes recorded: the latency monitor is off (latency-monitor-threshold 0)",
                "`CONFIG SET latency-monitor-threshold 100`",
            )
        return LATENCY.result("ok", "no latency spike recorded")
    now = f.now
    events = sorted(f.latency_latest, key=lambda e: -e[3])
    recent = [e for e in events if now - e[1] <= LATENCY_RECENT_S]
    observed = ", ".join(
        f"{name} max {worst} ms (latest {latest} ms, {format_duration(now - at)} ago)"
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
    return LATENCY.warn_unless(
        not recent,
        observed,
        action="read LATENCY DOCTOR's advice below; aof-* and fork events point at "
        "persistence (see redis.aof_rewrite, redis.persistence), command at slow commands "
        "(see redis.slowlog)",
        values={
            "events": [
                {"event": n, "at": at, "latest_ms": latest, "max_ms": worst}
                for n, at, latest, worst in events
            ]
        },
        details=_doctor_summary(f.latency_doctor),
        metrics=metrics,
    )


SLOWLOG = declare(
    "redis.slowlog",
    "slow library commands (SLOWLOG)",
    why=(
        "Slow RPOPLPUSH, HGET, LRANGE or EXEC calls are the library's own consume, load and "
        "save paths being slow (large values, huge commit lists, blocked main thread)."
    ),
    metrics={
        "esctl_doctor_redis_slowlog_entries": "SLOWLOG entries of a library command.",
        "esctl_doctor_redis_slowlog_max_seconds": "Slowest SLOWLOG entry of a library command.",
    },
)


def check_slowlog(f: ServerFacts) -> Check:
    if f.slowlog is None:
        return SLOWLOG.unavailable(
            f"SLOWLOG GET failed: {f.slowlog_error}", grant("SLOWLOG GET", "+slowlog|get")
        )
    slower_than = as_int(f.config.get("slowlog-log-slower-than"))
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
        return SLOWLOG.result(
            "ok",
            f"none of {', '.join(LIBRARY_COMMANDS)} {scope}",
            values=values,
            metrics=metrics,
        )
    observed = ", ".join(
        f"{c} {len(v)} (slowest {max(e.duration_us for e in v) / 1000:.1f} ms)"
        for c, v in sorted(by_command.items())
    )
    return SLOWLOG.result(
        "warn",
        f"{observed} {scope}",
        action="`SLOWLOG GET 128` shows the calls; slow HGET/LRANGE mean large values or long "
        "commit lists (`esctl compress`; snapshots), slow RPOPLPUSH/EXEC a blocked main thread "
        "(see redis.latency)",
        values=values,
        metrics=metrics,
    )


CLUSTER = declare(
    "redis.cluster",
    "Redis Cluster state",
    why=(
        "In a Redis Cluster every key lives on the primary serving its hash slot: while a slot "
        "has no working primary (cluster_state fail), the events and queues stored in it can "
        "be neither read nor written, and with the default cluster-require-full-coverage the "
        "whole cluster refuses commands. Pointed at one node without --cluster, doctor sees "
        "only that node's keys and settings (the other esctl commands refuse such a URL)."
    ),
    metrics={
        "esctl_doctor_redis_cluster_state_ok": "1 when the node reports cluster_state ok.",
        "esctl_doctor_redis_cluster_slots_ok": "Hash slots the node sees served (of 16384).",
    },
)


def check_cluster(f: ServerFacts, *, through_cluster_client: bool) -> Check:
    """One cluster node's view of the cluster: its state and the slots it sees served. Also
    fails when the node was reached through a plain URL: esctl then sees that node alone."""
    if not through_cluster_client:
        return CLUSTER.result(
            "fail",
            "this server is a node of a Redis Cluster, but was checked alone: the settings "
            "above are this node's only, and the --app and --env checks see only the keys "
            "stored on it",
            action="rerun with `--redis-url redis+cluster://HOST:PORT` (or add --cluster): esctl "
            "then finds every primary and checks the whole cluster",
            values={"cluster_enabled": True, "checked_as_cluster": False},
        )
    if f.cluster_info is None:
        return CLUSTER.unavailable(
            f"CLUSTER INFO failed: {f.cluster_error or 'no reply'}",
            "grant CLUSTER INFO to esctl's user (read-only)",
        )
    info = f.cluster_info
    state = info.get("cluster_state", "?")
    counts = {
        name: as_int(info.get(f"cluster_slots_{name}")) or 0
        for name in ("assigned", "ok", "pfail", "fail")
    }
    known = as_int(info.get("cluster_known_nodes"))
    size = as_int(info.get("cluster_size"))
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
        return CLUSTER.result(
            "fail",
            observed,
            action="bring the failed primaries back or promote their replicas (`CLUSTER "
            "FAILOVER` on a replica); `redis-cli --cluster check HOST:PORT` shows unserved "
            "slots, `redis-cli --cluster fix HOST:PORT` assigns them",
            values=values,
            metrics=metrics,
        )
    if counts["pfail"]:
        return CLUSTER.result(
            "warn",
            observed,
            action="a node does not answer the others in time: check it (`CLUSTER NODES` shows "
            "which, flagged fail?); if it stays down the cluster fails it over or stops",
            values=values,
            metrics=metrics,
        )
    return CLUSTER.result("ok", observed, values=values, metrics=metrics)
