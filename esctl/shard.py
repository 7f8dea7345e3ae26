"""Splitting a store between processes: ``--shard I/N``."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from esctl.errors import UsageError


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based). An aggregate belongs to shard
    ``CRC-32(UTF-8 aggregate id) mod count`` — stable across runs, machines and versions."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if not text:
            return cls()
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m:
            raise UsageError(f"--shard {text!r} is not of the form I/N (for example 0/4)")
        index, count = int(m[1]), int(m[2])
        if count < 1 or index >= count:
            raise UsageError(
                f"--shard {text}: the shard number must be below the shard count "
                f"(0 to {count - 1} for {count} shards)"
                if count >= 1
                else f"--shard {text}: the shard count must be at least 1",
                hint="for example --shard 0/4 … --shard 3/4 split a store four ways",
            )
        return cls(index, count)

    def owns(self, aggregate_id: str) -> bool:
        if self.count == 1:
            return True
        return (
            zlib.crc32(aggregate_id.encode("utf-8", "surrogateescape")) % self.count == self.index
        )

    def split(self, parts: int) -> list[Shard]:
        """This shard cut into ``parts`` shards of ``count * parts``: together they own exactly
        the aggregates this one owns (``crc % (n*k) == i + j*n`` implies ``crc % n == i``)."""
        return [Shard(self.index + j * self.count, self.count * parts) for j in range(parts)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
