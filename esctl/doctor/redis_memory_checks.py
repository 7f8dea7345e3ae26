"""The Redis checks of memory and persistence: eviction policy, maxmemory headroom,
persistence (here or on the replicas), appendfsync, no-appendfsync-on-rewrite, fragmentation.
Each judges what was read from one server (:class:`~esctl.doctor.redis_facts.ServerFacts`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from esctl.doctor.redis_facts import ServerFacts
from esctl.doctor.report import Check, CheckSpec, Status, declare
from esctl.metrics import Metric
from esctl.units import counted, format_bytes, format_percent

# Thresholds (documented in each check's ``why``).
HEADROOM_WARN = 0.75
HEADROOM_FAIL = 0.90
FRAGMENTATION_WARN = 1.5
FRAGMENTATION_MIN_USED = 100 << 20


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


MAXMEMORY_POLICY = declare(
    "redis.maxmemory_policy",
    "maxmemory-policy",
    why=(
        "Any policy but noeviction lets Redis delete keys when memory runs out: commit lists, "
        "payloads or queued messages vanish silently and aggregates cannot be loaded again. "
        "With noeviction a full Redis refuses writes loudly instead."
    ),
    metrics={
        "esctl_doctor_redis_noeviction": "1 when maxmemory-policy is noeviction.",
    },
)


def check_maxmemory_policy(f: ServerFacts, data: DataPresence) -> Check:
    policy = f.needed_setting("maxmemory-policy")
    source = "CONFIG" if "maxmemory-policy" in f.config else "INFO"
    metrics = [Metric("esctl_doctor_redis_noeviction", int(policy == "noeviction"))]
    if policy == "noeviction":
        return MAXMEMORY_POLICY.result(
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
    return MAXMEMORY_POLICY.result(
        status,
        f"{policy}: {scope}{volatile}",
        action="`CONFIG SET maxmemory-policy noeviction` (and set it in redis.conf or your "
        "provider's parameter group so a restart keeps it)",
        values={"policy": policy, "source": source},
        metrics=metrics,
    )


MAXMEMORY = declare(
    "redis.maxmemory",
    "maxmemory headroom",
    why=(
        "Event data only grows. Without maxmemory Redis grows until the kernel's OOM killer "
        "ends it (losing what was not yet persisted); with a limit and noeviction, writes fail "
        "once it is reached (warn at 75%, fail at 90%). Forks for persistence also need "
        "copy-on-write headroom."
    ),
    metrics={
        "esctl_doctor_redis_used_memory_bytes": "INFO used_memory.",
        "esctl_doctor_redis_maxmemory_bytes": "maxmemory (0: no limit).",
        "esctl_doctor_redis_memory_limit_usage_ratio": "used_memory / (maxmemory, else system memory).",
    },
)


def check_maxmemory(f: ServerFacts) -> Check:
    used = f.needed_info_int("used_memory")
    maxmemory = f.needed_setting_int("maxmemory")
    system = f.info_int("total_system_memory") or None
    metrics = [
        Metric("esctl_doctor_redis_used_memory_bytes", used),
        Metric("esctl_doctor_redis_maxmemory_bytes", maxmemory),
    ]
    values: dict[str, Any] = {"used_memory": used, "maxmemory": maxmemory, "system_memory": system}
    if maxmemory == 0:
        observed = f"no maxmemory; used {format_bytes(used)}"
        if system:
            observed += (
                f" of {format_bytes(system)} system memory ({format_percent(used / system)})"
            )
            metrics.append(Metric("esctl_doctor_redis_memory_limit_usage_ratio", used / system))
        return MAXMEMORY.result(
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
    return MAXMEMORY.result(
        status,
        f"used {format_bytes(used)} of maxmemory {format_bytes(maxmemory)} ({format_percent(ratio)})",
        action=None
        if status == "ok"
        else "free memory (`esctl compress`; migrate the events to PostgreSQL and prune them) "
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
    pairs = [
        f"{parts[i + 1]} {'change' if parts[i + 1] == '1' else 'changes'} in {parts[i]} s"
        for i in range(0, len(parts) - 1, 2)
    ]
    return "after " + " or ".join(pairs)


PERSISTENCE = declare(
    "redis.persistence",
    "persistence",
    why=(
        "Redis keeps events in memory only: without persistence a restart loses every event, "
        "with RDB snapshots alone it loses what was written since the last one. Persistence "
        "costs latency (fsyncs, and forks for rewrites and snapshots that stall the main "
        "thread on slow disks: client timeouts on RPOPLPUSH). Running it only on replicas "
        "keeps the primary fast, but then the primary must never restart empty (it would wipe "
        "its replicas): disable its automatic restart."
    ),
    metrics={
        "esctl_doctor_redis_aof_enabled": "1 when appendonly is on.",
        "esctl_doctor_redis_rdb_enabled": "1 when an RDB save schedule is set.",
        "esctl_doctor_redis_replicas_persisting": "Replicas found persisting (AOF or RDB).",
    },
)


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
        return PERSISTENCE.result(
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
    persist = "persists" if len(persisting) == 1 else "persist"
    where = f"primary: {here}; {len(persisting)} of {counted(len(replicas), 'replica')} {persist}"
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
            "turn on appendonly (`appendfsync everysec`) here or on a replica: a crash now loses "
            "every event written since the last snapshot"
        )
    elif unknown or aof is None or rdb is None:
        reasons = [
            f.config_unavailable(n) for n, v in (("appendonly", aof), ("save", rdb)) if v is None
        ]
        if unknown:
            reasons.append(f"{counted(len(unknown), 'replica')} could not be asked")
        return PERSISTENCE.result(
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
            "turn on persistence: `appendonly yes` with `appendfsync everysec` on the primary, or "
            "on a replica (then disable the primary's automatic restart)"
        )
        where += ": a restart loses every event"
    return PERSISTENCE.result(
        status,
        where,
        action=action,
        values=values,
        details=details,
        metrics=metrics,
    )


APPENDFSYNC = declare(
    "redis.appendfsync",
    "appendfsync",
    why=(
        "appendfsync decides how much the AOF can lose and how often writes wait for the disk: "
        "always fsyncs every write (slow on ordinary disks), everysec loses at most about a "
        "second, no leaves it to the kernel (up to ~30 s lost)."
    ),
    metrics={
        "esctl_doctor_redis_appendfsync_always": "1 when appendfsync is always.",
    },
)


def _aof_off(spec: CheckSpec, f: ServerFacts, name: str) -> Check | None:
    """The verdict on the AOF setting ``name`` when the AOF is off here: ``ok``, the setting
    does not apply. None when it may."""
    if f.setting("appendonly") == "no":
        return spec.result("ok", f"AOF off here ({name} does not apply)")
    return None


def check_appendfsync(f: ServerFacts) -> Check:
    off = _aof_off(APPENDFSYNC, f, "appendfsync")
    if off is not None:
        return off
    fsync = f.needed_setting("appendfsync")
    return APPENDFSYNC.warn_unless(
        fsync == "everysec",
        fsync,
        action="`appendfsync everysec` (at most about a second of writes at risk), unless the "
        "disk is fast enough that every write may wait for an fsync"
        if fsync == "always"
        else "`appendfsync everysec`: with 'no' a crash can lose about 30 s of events",
        values={"appendfsync": fsync},
        metrics=[Metric("esctl_doctor_redis_appendfsync_always", int(fsync == "always"))],
    )


AOF_REWRITE = declare(
    "redis.aof_rewrite",
    "no-appendfsync-on-rewrite",
    why=(
        "With no-appendfsync-on-rewrite no, the AOF fsync keeps running while a rewrite or "
        "snapshot child writes the whole dataset; on slow disks fsync then blocks Redis's main "
        "thread for seconds, and consumers time out on RPOPLPUSH. yes pauses the fsync during "
        "rewrites (up to ~30 s of writes at risk if Redis crashes then)."
    ),
    metrics={
        "esctl_doctor_redis_no_appendfsync_on_rewrite": "1 when no-appendfsync-on-rewrite is yes.",
    },
)


def check_aof_rewrite(f: ServerFacts) -> Check:
    off = _aof_off(AOF_REWRITE, f, "no-appendfsync-on-rewrite")
    if off is not None:
        return off
    aof = f.setting("appendonly")
    setting = f.needed_setting("no-appendfsync-on-rewrite")
    return AOF_REWRITE.warn_unless(
        setting == "yes",
        "yes (fsync pauses during rewrites)"
        if setting == "yes"
        else f"no, with appendonly {aof}: fsyncs compete with every AOF rewrite and RDB snapshot",
        action="`CONFIG SET no-appendfsync-on-rewrite yes` (and in redis.conf); if timeouts "
        "persist, give the disk more IOPS or run persistence only on replicas",
        values={"no_appendfsync_on_rewrite": setting},
        metrics=[Metric("esctl_doctor_redis_no_appendfsync_on_rewrite", int(setting == "yes"))],
    )


FRAGMENTATION = declare(
    "redis.fragmentation",
    "memory fragmentation",
    why=(
        "A fragmentation ratio over 1.5 means Redis holds much more RSS than data (wasted "
        "memory, judged from 100 MiB of data); under 1 it may be swapping, which makes every "
        "command slow."
    ),
    metrics={
        "esctl_doctor_redis_mem_fragmentation_ratio": "INFO mem_fragmentation_ratio.",
    },
)


def check_fragmentation(f: ServerFacts) -> Check:
    used = f.needed_info_int("used_memory")
    ratio = float(f.needed_info("mem_fragmentation_ratio"))
    metrics = [Metric("esctl_doctor_redis_mem_fragmentation_ratio", ratio)]
    values = {"mem_fragmentation_ratio": ratio, "used_memory": used}
    if used < FRAGMENTATION_MIN_USED:
        return FRAGMENTATION.result(
            "ok",
            f"{ratio:.2f} with {format_bytes(used)} of data (too little to judge)",
            values=values,
            metrics=metrics,
        )
    if ratio > FRAGMENTATION_WARN:
        return FRAGMENTATION.result(
            "warn",
            f"{ratio:.2f}: RSS is {ratio:.1f} times the {format_bytes(used)} of data",
            action="`CONFIG SET activedefrag yes` (jemalloc builds), or restart a replica and fail "
            "over to it",
            values=values,
            metrics=metrics,
        )
    if ratio < 1.0:
        return FRAGMENTATION.result(
            "warn",
            f"{ratio:.2f}: less RSS than data, Redis may be swapping",
            action="check swap on the host (`free -m`, vmstat); give Redis more memory",
            values=values,
            metrics=metrics,
        )
    return FRAGMENTATION.result("ok", f"{ratio:.2f}", values=values, metrics=metrics)
