"""``--rate``: at most so many events per second, for every target."""

from __future__ import annotations

import time
from collections.abc import Callable


class Pacer:
    """At most ``rate`` events per second; ``wait(n)`` before n events."""

    def __init__(
        self,
        rate: float | None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.sleep = sleep
        self.clock = clock
        self.next_at = clock()

    def wait(self, events: int) -> None:
        if not self.rate:
            return
        now = self.clock()
        if self.next_at > now:
            self.sleep(self.next_at - now)
        self.next_at = max(self.next_at, now) + events / self.rate

    def batch(self, default: int) -> int:
        """A batch size that keeps bursts to a tenth of a second's worth."""
        if not self.rate:
            return default
        return max(1, min(default, int(self.rate / 10)))
