"""The one grammar of durations (``--older-than``, ``--grace``, ``--stuck-after``) and times
(``--since``, ``--until``): esctl.durations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from esctl.durations import parse_duration, parse_time
from esctl.errors import UsageError

NOW = datetime(2025, 1, 15, 9, 30, tzinfo=UTC)

# Every form of a duration with a unit, and its length; a time accepts each of them too.
WITH_UNITS = [
    ("90s", 90),
    ("5m", 300),
    ("2h", 7200),
    ("1d", 86400),
    ("1h30m", 5400),
    ("500ms", 0.5),
    ("1.5h", 5400),
    ("1w", 604800),
    ("2w", 1209600),
    ("1d12h", 129600),
    ("1.5d", 129600),
    ("1m30s", 90),
    ("7D", 604800),
]


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("2.5", 2.5), *WITH_UNITS])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5x", "m5", "5m 3", "-5m", "5mm", "1.h", "tomorrow"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError, match="cannot read the duration") as caught:
        parse_duration(text)
    assert caught.value.hint is not None and "1h30m" in caught.value.hint


@pytest.mark.parametrize("text", ["1000000000d", "99999999999999999999999", "9999999999999w"])
def test_durations_longer_than_a_timedelta_are_usage_errors(text: str) -> None:
    """An OverflowError came out as "unexpected OverflowError … a bug in esctl" (exit 1) from
    --older-than, --grace, --max-lag and the other duration options."""
    with pytest.raises(UsageError, match="is too long to count") as caught:
        parse_duration(text)
    assert caught.value.hint is not None and "999999999d" in caught.value.hint


@pytest.mark.parametrize(("text", "seconds"), WITH_UNITS)
def test_a_relative_time_is_a_duration_back_from_now(text: str, seconds: float) -> None:
    assert parse_time(text, now=NOW) == NOW - timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01T12:30", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
        ("2024-05-01T12:30:00Z", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
        (
            "2024-05-01T12:30:00.1234567+02:00",
            datetime(2024, 5, 1, 10, 30, 0, 123456, tzinfo=UTC),
        ),
        (" 2024-05-01 ", datetime(2024, 5, 1, tzinfo=UTC)),
    ],
)
def test_iso_times(text: str, expected: datetime) -> None:
    assert parse_time(text, now=NOW) == expected


def test_a_relative_time_counts_back_from_the_clock_without_now() -> None:
    before = datetime.now(UTC)
    moment = parse_time("1.5h")
    after = datetime.now(UTC)
    assert before - timedelta(hours=1.5) <= moment <= after - timedelta(hours=1.5)


# A bare number is a duration in seconds, but not a time: "2024" could mean the year.
@pytest.mark.parametrize("text", ["", "7", "2024", "7y", "d7", "2024-13-01", "tomorrow", "-1h"])
def test_bad_times(text: str) -> None:
    with pytest.raises(UsageError, match=r"--until .* is neither an ISO 8601") as caught:
        parse_time(text, option="--until", now=NOW)
    assert caught.value.hint is not None and "1.5h" in caught.value.hint
