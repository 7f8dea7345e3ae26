"""What every replay source is asked alike: :class:`Window`, the order, where to resume, how
many and which shard."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from esctl.shard import Shard


@dataclass
class Window:
    """The part of a source's selection that is not a filter: ``order`` (docs/design/replay.md,
    "Order"), strictly after the position ``after`` when given, at most ``limit`` events, only
    the aggregates of ``shard``. Keyword-only, after each source's own positional fields."""

    _: KW_ONLY
    order: str = "aggregate"
    after: tuple[Any, ...] | None = None
    limit: int | None = None
    shard: Shard = field(default_factory=Shard)
