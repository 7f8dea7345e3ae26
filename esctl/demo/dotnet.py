"""Values as the .NET library and Newtonsoft.Json write them, for the demo store: DateTimeOffset
round-trip text from 100-ns ticks, GUIDs, compact JSON, and the en-US time of RetryData."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

TICKS_PER_SECOND = 10_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ticks(moment: datetime) -> int:
    """100-ns ticks since the Unix epoch."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 10


def ticks_of(span: timedelta) -> int:
    """A duration in 100-ns ticks."""
    return span // timedelta(microseconds=1) * 10


def timestamp_text(ticks: int, offset_minutes: int) -> str:
    """A .NET DateTimeOffset round-trip string: 7 fractional digits, explicit offset."""
    seconds, fraction = divmod(ticks, TICKS_PER_SECOND)
    t = time.gmtime(seconds + offset_minutes * 60)  # ~2x faster than datetime (bulk stores)
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
        f"{t.tm_sec:02d}.{fraction:07d}{sign}{hours:02d}:{minutes:02d}"
    )


_UUID_VERSION_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)


def guid(rng: random.Random) -> str:
    """A random (version 4) GUID, lower case, as Guid.NewGuid().ToString() prints it; the same
    as ``str(uuid.UUID(int=rng.getrandbits(128), version=4))``, ~3x faster."""
    h = f"{rng.getrandbits(128) & _UUID_VERSION_CLEAR | _UUID_VERSION_4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def retry_time_text(moment: datetime) -> str:
    """``DateTimeOffset.UtcNow.ToString()`` under en-US, as the library writes LastRetryTime."""
    hour = moment.hour % 12 or 12
    half = "AM" if moment.hour < 12 else "PM"
    return f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment:%M:%S} {half} +00:00"


def to_json(document: dict[str, Any]) -> str:
    """Newtonsoft's default output: compact, keys in declaration order, non-ASCII unescaped."""
    return orjson.dumps(document).decode("utf-8")
