"""The one grammar of every option that takes a duration (``--older-than 1h30m``) or a time
(``--since 2024-05-01``, or a duration counted back from now: ``--since 1.5h``)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from esctl.errors import UsageError

_NUMBER = r"\d+(?:\.\d+)?"
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _with_units(text: str) -> timedelta | None:
    """``500ms``, ``30s``, ``5m``, ``1.5h``, ``1d``, ``2w`` or a sequence of them (``1h30m``),
    case-insensitive; None for anything else."""
    cleaned = text.strip().lower()
    position = 0
    seconds = 0.0
    for match in _DURATION_PART.finditer(cleaned):
        if match.start() != position:
            return None
        seconds += float(match[1]) * _UNIT_SECONDS[match[2]]
        position = match.end()
    if not cleaned or position != len(cleaned):
        return None
    return timedelta(seconds=seconds)


def parse_duration(text: str) -> timedelta:
    """``90`` (seconds), ``500ms``, ``30s``, ``5m``, ``2h``, ``1d``, ``1w``, or combinations such
    as ``1h30m``. Raises UsageError otherwise."""
    cleaned = text.strip()
    try:
        if re.fullmatch(_NUMBER, cleaned):
            return timedelta(seconds=float(cleaned))
        duration = _with_units(cleaned)
    except OverflowError:  # longer than a timedelta holds (999,999,999 days)
        raise UsageError(
            f"the duration {text!r} is too long to count",
            hint="give at most 999999999d (about 2.7 million years)",
        ) from None
    if duration is None:
        raise UsageError(
            f"cannot read the duration {text!r}",
            hint="write it like 90s, 5m, 2h, 1d or 1h30m (a bare number is seconds)",
        )
    return duration


def parse_time(text: str, *, option: str = "--since", now: datetime | None = None) -> datetime:
    """An instant from ISO 8601 (``2024-05-01``, ``2024-05-01T12:00``, ``…+02:00``, ``…Z``) or a
    duration counted back from ``now`` (:func:`parse_duration`'s forms with a unit: ``7d``,
    ``12h``, ``1.5h``, ``500ms``, ``1d12h``). A bare number is refused: as a time it could be
    meant as a year as well as seconds. Dates and times without an offset are UTC. Raises
    UsageError."""
    value = text.strip()
    try:
        ago = _with_units(value)
        if ago is not None:
            return (now or datetime.now(UTC)) - ago
    except OverflowError:  # a timedelta or a datetime out of range: before year 1
        raise UsageError(
            f"{option} {text!r} reaches back before the year 1",
            hint="give a shorter time, e.g. 7d or 5000d, or a date such as 2024-05-01",
        ) from None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{option} {text!r} is neither an ISO 8601 date/time nor a relative time",
            hint="use e.g. 2024-05-01, 2024-05-01T12:00:00+02:00, 7d, 12h, 1.5h, 30m or 1d12h",
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
