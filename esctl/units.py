"""How esctl writes figures for people: counts of things, bytes (IEC units), durations and
percentages. One formatter each, used by the CLI's output and by the reports the core words
(doctor). JSON keeps the raw numbers."""

from __future__ import annotations


def counted(n: int, one: str, many: str | None = None, *, separators: bool = True) -> str:
    """``n`` and the noun that agrees with it: ``1 event``, ``0 events``, ``1,234 events``.
    ``many`` is the plural where it is not ``one`` + s (``counted(n, "hash", "hashes")``);
    ``separators=False`` writes the number without thousands separators, for the phrases
    that never had them."""
    number = f"{n:,}" if separators else f"{n}"
    return f"{number} {one if n == 1 else (many or one + 's')}"


def format_bytes(n: float | None) -> str:
    """Bytes in IEC units, the largest that keeps the number at 1 or more: ``512 B``,
    ``1.5 KiB``, ``3.2 MiB`` … ``TiB``; ``-`` for None; negative with a sign. (JSON keeps the
    integer.)"""
    if n is None:
        return "-"
    value = float(abs(n))
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{round(n):,} B"
    return f"{'-' if n < 0 else ''}{value:,.1f} {unit}"


def format_duration(seconds: float | None) -> str:
    """A duration for people: ``0.4 s``, ``59.2 s`` under a minute, else its two largest
    units: ``5m 6s``, ``2h 5m``, ``3d 4h``; ``-`` for None; negative (a TimeStamp in the
    future) with a sign. (JSON keeps the seconds.)"""
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    if abs(seconds) < 60:
        return f"{sign}{abs(seconds):.1f} s"
    minutes, secs = divmod(round(abs(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes}m"
    return f"{sign}{minutes}m {secs}s"


def format_percent(ratio: float) -> str:
    """``42%``; ``0.25%`` below one percent (so a small share does not read as 0%)."""
    return f"{ratio * 100:.0f}%" if ratio >= 0.01 else f"{ratio * 100:.2f}%"
