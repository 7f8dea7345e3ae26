"""An event's place in a replay order (``Event.position``, a tuple) and the JSON a checkpoint
stores for it; the four kinds of position are in docs/design/replay.md, "Positions and
checkpoints"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from esctl.projections import Event

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def encode_position(source: str, order: str, event: Event) -> dict[str, Any]:
    """The JSON a checkpoint stores for ``event``'s position."""
    p = event.position
    if source == "pg" and order == "aggregate":
        return {"aggregate_key": p[0], "version": p[1], "aggregate_id": event.aggregate_id}
    if source == "pg":
        return {
            "time": p[0].isoformat(),
            "aggregate_key": p[1],
            "version": p[2],
            "aggregate_id": event.aggregate_id,
        }
    if order == "aggregate":
        return {"aggregate_id": p[0], "version": p[1], "commit_id": p[2]}
    return {
        "time": (EPOCH + p[0] * MICROSECOND).isoformat(),
        "time_us": p[0],
        "aggregate_id": p[1],
        "version": p[2],
        "commit_id": p[3],
    }


def decode_position(source: str, order: str, stored: dict[str, Any]) -> tuple[Any, ...]:
    """The position :func:`encode_position` stored, as a source compares it."""
    if source == "pg" and order == "aggregate":
        return (int(stored["aggregate_key"]), int(stored["version"]))
    if source == "pg":
        return (
            datetime.fromisoformat(stored["time"]),
            int(stored["aggregate_key"]),
            int(stored["version"]),
        )
    if order == "aggregate":
        return (str(stored["aggregate_id"]), int(stored["version"]), str(stored["commit_id"]))
    return (
        int(stored["time_us"]),
        str(stored["aggregate_id"]),
        int(stored["version"]),
        str(stored["commit_id"]),
    )


def epoch_us(timestamp: str) -> int:
    """An ISO 8601 ``TimeStamp`` in µs since 1970 (the time of a Redis time-order position)."""
    return (datetime.fromisoformat(timestamp) - EPOCH) // MICROSECOND
