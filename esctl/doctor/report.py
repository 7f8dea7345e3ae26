"""The doctor's report: each check's result (:class:`Check`), the whole run's
(:class:`DoctorReport`) and its options, and how a check is declared (:class:`CheckSpec`,
:func:`declare`: its id, title, why it matters and its metrics' help, beside the function that
runs it). How checks are declared and added: docs/design/doctor.md."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from esctl import codec
from esctl.config import APP_SETTING, redact
from esctl.defaults import DOCTOR_SAMPLE as DEFAULT_SAMPLE
from esctl.documents import document
from esctl.errors import EsctlError
from esctl.metrics import Metric

Status = Literal["ok", "warn", "fail", "unavailable"]
STATUSES: tuple[Status, ...] = ("ok", "warn", "fail", "unavailable")
STATUS_VALUE: dict[Status, int] = {"ok": 0, "warn": 1, "fail": 2, "unavailable": -1}
"""The number ``esctl_doctor_check_status`` carries for each status."""
SEVERITY: dict[Status, int] = {"ok": 0, "unavailable": 1, "warn": 2, "fail": 3}


DEFAULT_STUCK_AFTER = timedelta(minutes=5)
GROWTH_MIN_INTERVAL = timedelta(hours=1)
QUEUE_MIN_INTERVAL = timedelta(seconds=60)


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
        return document(self, "id group title status observed why action values details servers")


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
        return document(
            self,
            "generated_at redis app env postgresql status counts checks skipped readings elapsed_s",
            counts=self.counts(),
            checks=[c.as_dict() for c in self.checks],
        )


@dataclass
class DoctorOptions:
    redis_url: str
    cluster: bool = False
    app: str | None = None
    app_setting: str = APP_SETTING
    """Where ``app`` was set, for the action of an app with no keys here
    (:meth:`esctl.config.Settings.where_set`)."""
    env: str | None = None
    env_setting: str = "--env / ESCTL_ENV"
    """Where ``env`` was set, for the action of an env with no queues here."""
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


# --- declaring a check ----------------------------------------------------------------------


@dataclass(frozen=True)
class CheckSpec:
    """What one check is about, declared with :func:`declare` beside the function that runs it."""

    id: str
    """``group.name``, stable (scripts and alerts key on it)."""
    title: str
    why: str
    """Why it matters for an event store, with the thresholds the check applies: shown with
    every finding, in the text report and in --json."""
    metrics: Mapping[str, str] = field(default_factory=dict)
    """The HELP text of each Prometheus metric the check emits."""

    def result(
        self,
        status: Status,
        observed: str,
        *,
        action: str | None = None,
        values: dict[str, Any] | None = None,
        details: list[str] | None = None,
        metrics: list[Metric] | None = None,
    ) -> Check:
        """This check's finding: ``observed`` is what was seen, ``action`` what to do (None
        when there is nothing to do). ``observed`` is made one line: a server's error text can
        span lines (libpq's "…refused\n\tIs the server running…?"), which would break the
        table's row and the one line per prose item a pipe gets."""
        return Check(
            self.id,
            self.title,
            status,
            " ".join(observed.split()),
            self.why,
            action,
            values or {},
            details or [],
            metrics or [],
        )

    def warn_unless(
        self,
        good: bool,
        observed: str,
        *,
        action: str,
        values: dict[str, Any] | None = None,
        details: list[str] | None = None,
        metrics: list[Metric] | None = None,
    ) -> Check:
        """``ok`` when what was read is ``good``; otherwise a warning with ``action``."""
        return self.result(
            "ok" if good else "warn",
            observed,
            action=None if good else action,
            values=values,
            details=details,
            metrics=metrics,
        )

    def unavailable(self, reason: str, action: str | None = None) -> Check:
        """This check could not run; ``reason`` is the observation."""
        return self.result("unavailable", reason, action=action)


SPECS: dict[str, CheckSpec] = {}
"""Every declared check by id, in declaration order. The check modules declare theirs when they
are imported, and importing :mod:`esctl.doctor` imports them all."""


def declare(
    check_id: str, title: str, *, why: str, metrics: Mapping[str, str] | None = None
) -> CheckSpec:
    """Declare a check: its spec joins :data:`SPECS`. An id or a metric name declared twice,
    or an id outside the :data:`GROUPS`, is a programming error (ValueError on import)."""
    spec = CheckSpec(check_id, title, why, dict(metrics or {}))
    if check_id.split(".", 1)[0] not in GROUPS:
        raise ValueError(f"check {check_id}: no group {check_id.split('.', 1)[0]!r}")
    if check_id in SPECS:
        raise ValueError(f"check {check_id} declared twice")
    taken = {name for other in SPECS.values() for name in other.metrics}.intersection(spec.metrics)
    if taken:
        raise ValueError(f"check {check_id}: metric(s) {sorted(taken)} declared by another check")
    SPECS[check_id] = spec
    return spec


class Unjudgeable(Exception):
    """Raised by a check that lacks a fact it cannot judge without (an INFO field, a setting):
    :func:`guarded` makes the check ``unavailable``, ``reason`` its observation."""

    def __init__(self, reason: str, action: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.action = action


def unavailable(check_id: str, reason: str, action: str | None = None) -> Check:
    """The declared check ``check_id`` could not run, and why."""
    return SPECS[check_id].unavailable(reason, action)


def guarded(check_id: str, evaluate: Callable[[], Check]) -> Check:
    """Run one check; anything it raises makes it ``unavailable`` (doctor never crashes)."""
    try:
        return evaluate()
    except Unjudgeable as exc:
        return unavailable(check_id, exc.reason, exc.action)
    except EsctlError as exc:
        return unavailable(check_id, f"could not run: {exc.message}", exc.hint)
    except Exception as exc:
        return unavailable(check_id, f"could not run: {type(exc).__name__}: {redact(str(exc))}")
