"""Readings: the figures a run stores in Redis for a later run to compare with (growth of the
event store, queues nobody drains), two per key so that a run always has one old enough. How
they rotate and where they live: docs/design/doctor.md."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import orjson
import redis

from esctl import redisio
from esctl.doctor.redis_facts import error_text
from esctl.doctor.report import Check, CheckSpec
from esctl.units import format_duration

READING_TTL_S = 90 * 86400
READ_ONLY = "read-only run"
"""The note of a reading a ``--read-only`` run did not store."""


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


@dataclass(frozen=True)
class Comparison:
    """This run's reading beside the stored one a check compares it with, as
    :meth:`Readings.exchange` gives them."""

    reading: dict[str, Any]
    baseline: dict[str, Any] | None
    """The stored reading between ``min_interval`` and twice that old; None: none yet."""
    min_interval: timedelta
    unstored: str | None = None
    """Why this run's reading was not stored (its note's detail); None when it was."""
    refused: bool = False
    """The user's ACL refused the GET or SET: running again later changes nothing."""

    @property
    def elapsed_s(self) -> float:
        """Seconds from the baseline to this reading (there is a baseline)."""
        assert self.baseline is not None
        return float(self.reading["taken_at"]) - float(self.baseline["taken_at"])

    def too_soon(self, spec: CheckSpec) -> Check:
        """``spec`` has no reading old enough to compare with yet: n/a, saying why and what
        to do."""
        needed = format_duration(self.min_interval.total_seconds())
        if self.unstored == READ_ONLY:
            return spec.unavailable(
                "no reading old enough to compare with (--read-only: this run stored none); "
                f"comparisons need one at least {needed} old, stored by a run without "
                "--read-only",
                "run doctor without --read-only now and then (from cron, for example): a "
                "--read-only run compares with the readings those runs store",
            )
        stored = (
            "this run's was stored"
            if self.unstored is None
            else f"this run's was not: {self.unstored}"
        )
        return spec.unavailable(
            f"no reading old enough to compare with yet ({stored}); comparisons need one at "
            f"least {needed} old",
            # A later run is refused alike: it said to run again later.
            "let the user in --redis-url store doctor's readings: `ACL SETUSER USER +get +set "
            "~esctl:doctor:*`; or run doctor with --read-only, and a run with those rights "
            "stores them"
            if self.refused
            else "run doctor again later (from cron, for example)",
        )


@dataclass
class Readings:
    """One run's readings: :meth:`exchange` gives a check its baseline and stores this run's
    reading; ``notes`` says what was stored where (the report's ``readings``)."""

    client: redisio.RedisClient
    read_only: bool
    notes: list[dict[str, Any]] = field(default_factory=list)

    def exchange(self, key: str, reading: dict[str, Any], min_interval: timedelta) -> Comparison:
        """``reading`` beside its baseline (see :func:`rotate_readings`); stores the rotated
        document unless read-only. A failed read or store is noted, never raised."""
        try:
            raw = self.client.get(key)
        except redisio.REDIS_ERRORS as exc:
            refused = isinstance(exc, redis.exceptions.NoPermissionError)
            unread = Comparison(reading, None, min_interval, refused=refused)
            return self._noted(key, f"GET failed: {exc}", unread)
        stored = None
        if raw:
            try:
                stored = orjson.loads(raw)
            except orjson.JSONDecodeError:
                stored = None
        baseline, document = rotate_readings(stored, reading, min_interval.total_seconds())
        compared = Comparison(reading, baseline, min_interval)
        if document is None or self.read_only:
            why = READ_ONLY if self.read_only else "the newer stored reading is recent"
            return self._noted(key, why, compared)
        try:
            self.client.set(key, orjson.dumps(document), ex=READING_TTL_S)
        except redisio.REDIS_ERRORS as exc:
            refused = isinstance(exc, redis.exceptions.NoPermissionError)
            compared = replace(compared, refused=refused)
            return self._noted(key, f"SET failed: {error_text(exc)}", compared)
        self.notes.append({"key": key, "stored": True, "detail": None})
        return compared

    def _noted(self, key: str, why: str, compared: Comparison) -> Comparison:
        """``compared``, this run's reading at ``key`` not stored because of ``why`` (noted)."""
        self.notes.append({"key": key, "stored": False, "detail": why})
        return replace(compared, unstored=why)

    def skip(self, key: str, why: str) -> None:
        """A reading not taken, neither read nor stored at ``key``: noted with ``why``."""
        self.notes.append({"key": key, "stored": False, "detail": why})
