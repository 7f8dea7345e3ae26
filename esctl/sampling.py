"""A uniform random sample of a stream of items whose length is not known in advance."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Reservoir(Generic[T]):
    """At most ``size`` of the items offered, every one equally likely to be kept, in memory
    bounded by ``size`` (reservoir sampling, Vitter's Algorithm R). The same ``rng`` state and
    items give the same sample."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.rng = rng
        self.items: list[T] = []
        self.seen = 0
        """How many items were offered."""

    def offer(self, items: Iterable[T]) -> None:
        for item in items:
            self.seen += 1
            if len(self.items) < self.size:
                self.items.append(item)
            else:
                j = self.rng.randrange(self.seen)
                if j < self.size:
                    self.items[j] = item
