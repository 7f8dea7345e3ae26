"""The event store checks (``--app``): memory held per key family, payloads left
uncompressed, growth since an earlier run. An app with no keys here at all (a typo in --app,
the wrong database) makes each of them a warning naming the apps that do have keys, with no
figures in the metrics file: the check's status says it, and a 0 would look like a store."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from esctl import compress, inspect, layout, redisio, storereads
from esctl.config import APP_SETTING
from esctl.doctor.readings import Comparison, Readings
from esctl.doctor.report import Check, DoctorOptions, Status, declare, guarded
from esctl.errors import EsctlError
from esctl.metrics import Metric
from esctl.units import counted, format_bytes, format_duration, format_percent

# Thresholds (documented in each check's ``why``).
EVENT_DATA_WARN_SHARE = 0.5
GROWTH_WARN_DAYS = 30
GROWTH_FAIL_DAYS = 7


EVENT_DATA_FAMILIES = ("event_hashes", "legacy_hash", "commit_lists", "snapshots")

NO_KEYS_WHY = (
    "A warning too when the app has no commit list, event hash or snapshot here (a typo in "
    "--app, the wrong database): there is nothing of it to judge."
)


@dataclass(frozen=True)
class NoKeys:
    """``--app`` names an app with no commit list, event hash or snapshot in this database (a
    typo, or the wrong database): the store checks have nothing of it to judge, and say so as
    a warning, so that doctor run from cron with a mistyped app does not report all is well."""

    app: str
    apps_here: str | None
    """The apps that do have keys here (:meth:`esctl.storereads.NamesHere.text`); None when
    that SCAN failed."""
    check: str = APP_SETTING
    """Where the app name was set (:meth:`esctl.config.Settings.where_set`)."""

    @property
    def observed(self) -> str:
        return (
            f"app {redisio.printable(self.app)} has no commit list, event hash or snapshot "
            "in this database"
        )

    @property
    def action(self) -> str:
        return self.apps_here or f"check {self.check}, and --redis-url (and its database number)"


STORE_MEMORY = declare(
    "store.memory",
    "memory held by the event store",
    why=(
        "Event data only grows in Redis; the share of memory it holds says how urgent the move "
        "to PostgreSQL is (a warning when it holds over half the memory limit). MEMORY USAGE "
        f"of a sample of keys per family, scaled to all keys. {NO_KEYS_WHY}"
    ),
    metrics={
        "esctl_doctor_store_memory_bytes": "Estimated memory of a key family (MEMORY USAGE sample).",
        "esctl_doctor_store_memory_share": "Estimated share of used_memory of a key family.",
        "esctl_doctor_store_events": "Commit ids in the commit lists (committed events).",
    },
)


def check_store_memory(
    app: str, stats: inspect.StatsReport, limit: int | None, missing: NoKeys | None = None
) -> Check:
    """``missing``: the app has no store keys here at all: a warning naming the apps that do,
    and none of the check's figures in the metrics file (its status says it)."""
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
                f" ({format_percent(m.share_of_used_memory)})"
                if m.share_of_used_memory is not None
                else ""
            )
            shown.append(f"{m.family.replace('_', ' ')} {format_bytes(m.estimated_bytes)}{share}")
    metrics.append(Metric("esctl_doctor_store_events", stats.commit_ids, {"app": app}))
    event_data = sum(families[f].estimated_bytes for f in EVENT_DATA_FAMILIES if f in families)
    of_used = f" of used_memory {format_bytes(used)}" if used else ""
    if missing is not None:
        observed = missing.observed + (f"; {', '.join(shown)}{of_used}" if shown else "")
    else:
        observed = (", ".join(shown) or "no keys of this app") + of_used
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
    if missing is not None:
        return STORE_MEMORY.result("warn", observed, action=missing.action, values=values)
    heavy = limit is not None and event_data > EVENT_DATA_WARN_SHARE * limit
    return STORE_MEMORY.result(
        "warn" if heavy else "ok",
        observed,
        action=f"event data is {format_percent(event_data / limit)} of the memory limit: migrate it "
        f"(`esctl migrate redis-to-pg --app {shlex.quote(app)}`) and prune it once services read "
        "from PostgreSQL; `esctl compress` first if payloads are plain"
        if heavy and limit
        else None,
        values=values,
        metrics=metrics,
    )


UNCOMPRESSED = declare(
    "store.uncompressed",
    "payloads left uncompressed",
    why=(
        "The library compresses payloads over the threshold only when it writes them, and only "
        "with its setting on; plain ones take about twice the memory. Estimated from a sample "
        f"of payload hashes. {NO_KEYS_WHY}"
    ),
    metrics={
        "esctl_doctor_store_uncompressed_payloads": "Estimated plain payloads over the threshold.",
        "esctl_doctor_store_uncompressed_bytes": "Estimated stored bytes of those payloads.",
        "esctl_doctor_store_compress_saving_bytes": "Estimated bytes esctl compress would save.",
    },
)


def check_uncompressed(
    app: str,
    samples: dict[str, compress.PayloadSample],
    totals: dict[str, int | None],
    threshold: int,
    missing: NoKeys | None = None,
) -> Check:
    """``missing``: the app has no store keys here at all: with no payload found, a warning
    naming the apps that do, and none of the check's figures in the metrics file."""
    examined = sum(s.counts.values_examined for s in samples.values())
    found = sum(s.counts.plain_over_threshold for s in samples.values())
    values: dict[str, Any] = {"threshold": threshold, "families": {}}
    estimate_count = estimate_bytes = estimate_saving = 0.0
    exact = True
    for name, sample in samples.items():
        s = sample.counts
        total = totals.get(name)
        scale = (total / s.values_examined) if total is not None and s.values_examined else None
        if scale is None and s.plain_over_threshold:
            exact = False
        factor = scale if scale is not None else 1.0
        family = {
            "hashes_sampled": sample.hashes_sampled,
            "values_examined": s.values_examined,
            "values_total": total,
            "compressed": s.already_compressed,
            "plain_over_threshold": s.plain_over_threshold,
            "estimated_plain_over_threshold": round(s.plain_over_threshold * factor),
            "estimated_bytes": round(s.bytes_before * factor),
            "estimated_saving_bytes": round((s.bytes_before - s.bytes_after) * factor),
        }
        values["families"][name] = family
        estimate_count += s.plain_over_threshold * factor
        estimate_bytes += s.bytes_before * factor
        estimate_saving += (s.bytes_before - s.bytes_after) * factor
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
    if not examined and missing is not None:
        return UNCOMPRESSED.result(
            "warn",
            f"no payloads to sample: {missing.observed}",
            action=missing.action,
            values=values,
        )
    if not examined:
        return UNCOMPRESSED.result(
            "ok",
            "no payloads of this app found",
            values=values,
            metrics=metrics,
        )
    if not found:
        return UNCOMPRESSED.result(
            "ok",
            f"none of {examined:,} sampled payloads is plain over {threshold:,} bytes",
            values=values,
            metrics=metrics,
        )
    about = "about " if exact else "at least "
    return UNCOMPRESSED.result(
        "warn",
        f"{found:,} of {examined:,} sampled payloads are plain over {threshold:,} bytes: "
        f"{about}{estimate_count:,.0f} in the store ({format_bytes(estimate_bytes)}; compressing "
        f"saves ~{format_bytes(estimate_saving)})",
        action=f"`esctl compress --app {shlex.quote(app)} --dry-run`, then `esctl compress --app "
        f"{shlex.quote(app)} --yes` (gzip+base64 in place, as the library writes; safe while "
        "services run); turn the library's compression setting on for new writes",
        values=values,
        metrics=metrics,
    )


KEY_TYPES = declare(
    "store.key_types",
    "keys of another Redis type",
    why=(
        "A key named as a commit list, a partition hash or the legacy hash that holds another "
        "Redis type (a stray SET or HSET, a bad manual fix) makes the library fail (WRONGTYPE) on "
        "every read and write of it: the aggregate it names, or whose payloads are looked up "
        "there, can be neither loaded nor saved, and migrate quarantines it (a failure). Found "
        f"by the scans the memory figures make, so every such key is. {NO_KEYS_WHY}"
    ),
    metrics={
        "esctl_doctor_store_wrong_type_keys": "Keys named as commit lists or event hashes that "
        "hold another Redis type.",
    },
)

KEY_TYPES_LISTED = 10
"""Keys of another type a store.key_types finding names at most (its details and values)."""


def check_key_types(app: str, wrong: inspect.WrongTypes, missing: NoKeys | None = None) -> Check:
    """The keys of ``app`` named as commit lists or event hashes that hold another Redis type,
    as :func:`esctl.inspect.inspect_stats` met them: a failure naming them and what to do.
    ``missing``: the app has no store keys here at all (a warning, no figures)."""
    found = wrong.keys | wrong.hashes
    listed = list(found.items())[:KEY_TYPES_LISTED]
    legacy = layout.legacy_event_hash_key(app)
    lists = layout.commit_list_prefix(app)

    def family(key: str) -> str:
        if key == legacy:
            return layout.LEGACY_HASH
        return layout.COMMIT_LIST if key.startswith(lists) else layout.EVENT_HASH

    values: dict[str, Any] = {
        "keys": len(found),
        "listed": [
            {
                "key": redisio.printable(key),
                "type": kind,
                "expected": storereads.KEY_TYPES[family(key)][0],
            }
            for key, kind in listed
        ],
    }
    if missing is not None and not found:
        return KEY_TYPES.result("warn", missing.observed, action=missing.action, values=values)
    metrics = [Metric("esctl_doctor_store_wrong_type_keys", len(found), {"app": app})]
    if not found:
        return KEY_TYPES.result(
            "ok",
            "every commit list and event hash of this app is of the type the library expects",
            values=values,
            metrics=metrics,
        )
    named = ", ".join(redisio.printable(key) for key, _ in listed[:3])
    if len(found) > 3:
        named += f" and {len(found) - 3:,} more"
    details = [storereads.wrong_type_text(key, kind, family(key)) for key, kind in listed]
    if len(found) > len(listed):
        details.append(f"{len(found) - len(listed):,} more: `esctl inspect integrity` lists them")
    return KEY_TYPES.result(
        "fail",
        f"{counted(len(found), 'key')} of another Redis type: {named}",
        action=f"{storereads.WRONG_TYPE_ACTION} (docs/layout.md §1); `esctl inspect integrity "
        f"--app {shlex.quote(app)}` lists every such key and the aggregates it keeps from "
        "loading",
        values=values,
        details=details,
        metrics=metrics,
    )


GROWTH = declare(
    "store.growth",
    "growth since an earlier run",
    why=(
        "Memory growth per day says when the limit is reached (a warning within 30 days, a "
        "failure within 7); measured against a reading at least an hour old, which is stored "
        f"only for an app with keys here. {NO_KEYS_WHY}"
    ),
    metrics={
        "esctl_doctor_store_growth_bytes_per_day": "Memory growth per day since an earlier reading.",
        "esctl_doctor_store_growth_events_per_day": "Committed events per day since an earlier reading.",
        "esctl_doctor_store_days_to_limit": "Days until the memory limit at the measured growth.",
    },
)


def check_growth(app: str, compared: Comparison, limit: int | None) -> Check:
    reading, baseline = compared.reading, compared.baseline
    if baseline is None:
        return compared.too_soon(GROWTH)
    elapsed = compared.elapsed_s
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
    observed = f"used_memory {format_bytes(memory_rate)}/day"
    if store_rate is not None:
        observed += f", event store ~{format_bytes(store_rate)}/day"
    if events_rate is not None:
        observed += f", {events_rate:,.0f} events/day"
    observed += f" (over {format_duration(elapsed)})"
    if days_left == 0:
        observed += "; the memory limit is reached"
    elif days_left is not None:
        # Under two days in hours and minutes: '0 days away' was said of 1h 12m.
        away = format_duration(days_left * 86400) if days_left < 2 else f"{days_left:,.0f} days"
        observed += f"; the memory limit is {away} away at this rate"
    status: Status = "ok"
    if days_left is not None and days_left < GROWTH_FAIL_DAYS:
        status = "fail"
    elif days_left is not None and days_left < GROWTH_WARN_DAYS:
        status = "warn"
    return GROWTH.result(
        status,
        observed,
        action=None
        if status == "ok"
        else f"free memory before the limit: `esctl compress --app {shlex.quote(app)}`; migrate "
        "events to PostgreSQL and prune them; or raise maxmemory",
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


def check_growth_without_keys(missing: NoKeys) -> Check:
    """Growth of an app with no store keys here: nothing to measure, and no reading stored (it
    would only create a key, with a 90-day expiry, for a name that has no data)."""
    return GROWTH.result(
        "warn",
        f"{missing.observed}: no reading taken or stored",
        action=missing.action,
    )


def no_keys(client: redisio.RedisClient, app: str, check: str = APP_SETTING) -> NoKeys | None:
    """For an app whose statistics found no store key: :class:`NoKeys` with the apps that have
    some here (a bounded SCAN; None in its text when the SCAN failed), or None when that SCAN
    sees keys of the app after all (written meanwhile). ``check``: where the app was set."""
    try:
        here = storereads.apps_with_keys(client)
    except (EsctlError, *redisio.REDIS_ERRORS):
        return NoKeys(app, None, check)
    return None if here.has(app) else NoKeys(app, here.text(app, check), check)


def run_store_checks(
    client: redisio.RedisClient,
    opts: DoctorOptions,
    taken_at: float,
    limit: int | None,
    readings: Readings,
) -> tuple[list[Check], inspect.StatsReport | None]:
    """The event store checks of ``opts.app``, and the statistics they read (None when
    sampling failed): the PostgreSQL checks and the eviction policy's verdict use them."""
    app = opts.app
    assert app is not None
    stats: inspect.StatsReport | None = None
    missing: NoKeys | None = None
    wrong = inspect.WrongTypes()
    try:
        stats = inspect.inspect_stats(client, app, env=opts.env, sample=opts.sample, wrong=wrong)
    except EsctlError as exc:
        memory = STORE_MEMORY.unavailable(f"could not sample memory: {exc.message}", exc.hint)
        key_types = KEY_TYPES.unavailable(f"could not scan the keys: {exc.message}", exc.hint)
    else:
        found = stats
        missing = no_keys(client, app, opts.app_setting) if not stats.store_keys else None
        memory = guarded("store.memory", lambda: check_store_memory(app, found, limit, missing))
        key_types = guarded("store.key_types", lambda: check_key_types(app, wrong, missing))

    def uncompressed() -> Check:
        samples = compress.sample_payloads(
            client, app, threshold=opts.compression_threshold, hashes=opts.sample
        )
        totals: dict[str, int | None] = {
            compress.EVENTS: stats.partitioned_fields + stats.legacy_fields if stats else None,
            compress.SNAPSHOTS: stats.snapshots if stats else None,
        }
        return check_uncompressed(app, samples, totals, opts.compression_threshold, missing)

    def growth() -> Check:
        if missing is not None:
            readings.skip(layout.doctor_reading_key(app), "the app has no keys here")
            return check_growth_without_keys(missing)
        reading = {
            "taken_at": taken_at,
            "used_memory": redisio.used_memory(client),
            "events": stats.commit_ids if stats else None,
            "event_store_bytes": stats.event_store_bytes if stats else None,
        }
        key = layout.doctor_reading_key(app)
        return check_growth(app, readings.exchange(key, reading, opts.growth_min_interval), limit)

    return [
        memory,
        guarded("store.uncompressed", uncompressed),
        guarded("store.growth", growth),
        key_types,
    ], stats
