"""``queue list --watch``: the listing read again and again, with the change of each list's
length per second between two readings. Read-only.

A rate is the *net* change of a list's length (pushed minus taken): the library keeps no
counters. The keys are scanned again only every :data:`RESCAN_S` (longer when scans are slow;
:data:`RESCAN_EMPTY_S` while no queue matches).
Design: docs/design/queues.md, "Watching".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from esctl import redisio
from esctl.queues.listing import (
    OLDEST_SAMPLE,
    FoundQueues,
    QueueListing,
    QueueStatus,
    find_queues,
    read_queues,
)

RESCAN_S = 30.0
"""The queues are found again (SCAN) once the last scan is this old..."""
RESCAN_EMPTY_S = 5.0
"""... or once it is this old when the last scan found no queue: a watch started before a
service makes its queues (or on a mistyped name) has no lengths to read meanwhile, and shows
them within seconds of their making..."""
SCAN_SHARE = 0.05
"""... or, when a scan takes long, once it is ``elapsed / SCAN_SHARE`` old (a 3 s scan: every
60 s), so that watching keeps scanning under this share of the time."""


@dataclass(frozen=True, slots=True)
class QueueRates:
    """Net change of each list's length per second since the previous reading (pushed minus
    taken; None: the queue was not in the previous reading)."""

    published: float | None
    processing: float | None
    dead: float | None


@dataclass(slots=True)
class WatchReading:
    listing: QueueListing
    rates: list[QueueRates]
    """One per queue of ``listing.queues``, in its order."""
    seconds_since_previous: float | None
    """Between this reading and the one before (None: the first)."""
    scanned: bool
    """The keys were scanned for this reading (else the queues of an earlier scan were read)."""
    scan_age_s: float
    """How old the scan whose queues were read is."""


@dataclass
class QueueWatch:
    """Readings of the queues of ``env``, each with the rates since the one before
    (:meth:`read`). ``clock``: seconds, monotonic (a test's own clock gives exact rates)."""

    client: redisio.RedisClient
    env: str
    event_types: Sequence[str] = ()
    subscribers: Sequence[str] = ()
    oldest_sample: int = OLDEST_SAMPLE
    rescan_s: float = RESCAN_S
    clock: Callable[[], float] = time.monotonic
    _found: FoundQueues | None = field(default=None, init=False)
    _scanned_at: float = field(default=0.0, init=False)
    _previous: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict, init=False)
    _previous_at: float | None = field(default=None, init=False)

    def due_for_scan(self, at: float) -> bool:
        if self._found is None:
            return True
        rescan = self.rescan_s if self._found.refs else min(self.rescan_s, RESCAN_EMPTY_S)
        every = max(rescan, self._found.elapsed_s / SCAN_SHARE)
        return at - self._scanned_at >= every

    def read(self, *, now: datetime | None = None) -> WatchReading:
        """One reading: the lengths now (the keys scanned first when :meth:`due_for_scan`),
        and the rates since the previous reading."""
        scanned = self.due_for_scan(self.clock())
        if scanned or self._found is None:
            self._found = find_queues(
                self.client, self.env, event_types=self.event_types, subscribers=self.subscribers
            )
            self._scanned_at = self.clock()
        at = self.clock()
        listing = read_queues(self.client, self._found, now=now, oldest_sample=self.oldest_sample)
        elapsed = None if self._previous_at is None else at - self._previous_at
        rates = [self._rates(q, elapsed) for q in listing.queues]
        self._previous = {
            (q.subscriber, q.event_type): (q.published, q.processing, q.dead)
            for q in listing.queues
        }
        self._previous_at = at
        return WatchReading(
            listing=listing,
            rates=rates,
            seconds_since_previous=elapsed,
            scanned=scanned,
            scan_age_s=at - self._scanned_at,
        )

    def _rates(self, status: QueueStatus, elapsed: float | None) -> QueueRates:
        before = self._previous.get((status.subscriber, status.event_type))
        if before is None or elapsed is None or elapsed <= 0:
            return QueueRates(None, None, None)
        now = (status.published, status.processing, status.dead)
        published, processing, dead = ((b - a) / elapsed for a, b in zip(before, now, strict=True))
        return QueueRates(published, processing, dead)
