"""Splitting a store between processes: ``--shard I/N``, or ``--shard auto`` in a Kubernetes
Indexed Job (docs/deploy/kubernetes.md)."""

from __future__ import annotations

import math
import os
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from esctl.errors import UsageError

INDEX_VAR = "JOB_COMPLETION_INDEX"
"""``--shard auto`` takes I from this variable: Kubernetes sets it in every pod of an Indexed
Job (``completionMode: Indexed``) to the pod's completion index, 0 to completions - 1."""
COUNT_VAR = "ESCTL_SHARD_COUNT"
"""``--shard auto`` takes N from this variable. Kubernetes does not give a pod its Job's
completion count, so the manifest sets it to the same number as ``spec.completions``."""
_AUTO_DOC = "docs/deploy/kubernetes.md"


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
            raise UsageError(
                f"--shard {text!r} is not of the form I/N (for example 0/4) or auto",
                hint="auto takes I and N from a Kubernetes Indexed Job's environment "
                f"({INDEX_VAR}, {COUNT_VAR}; see {_AUTO_DOC})",
            )
        index, count = int(m[1]), int(m[2])
        if count < 1 or index >= count:
            raise UsageError(
                f"--shard {text}: the shard number must be below the shard count "
                f"(0 to {count - 1} for {count} shards)"
                if count >= 1
                else f"--shard {text}: the shard count must be at least 1",
                hint="for example `--shard 0/4` … `--shard 3/4` split a store four ways",
            )
        return cls(index, count)

    @classmethod
    def from_option(cls, text: str | None, environ: Mapping[str, str] | None = None) -> Shard:
        """The value of a ``--shard`` option: ``I/N`` (:meth:`parse`), or ``auto``
        (:meth:`auto`, from ``environ``, default ``os.environ``)."""
        if text is not None and text.strip().lower() == "auto":
            return cls.auto(environ)
        return cls.parse(text)

    @classmethod
    def auto(cls, environ: Mapping[str, str] | None = None) -> Shard:
        """Shard ``$JOB_COMPLETION_INDEX/$ESCTL_SHARD_COUNT``. Raises UsageError naming the
        variable when one is missing, not a whole number, or out of range."""
        env = os.environ if environ is None else environ
        index = _whole_number(
            env,
            INDEX_VAR,
            missing_hint="Kubernetes sets it in each pod of an Indexed Job (`completionMode: "
            f"Indexed`); anywhere else give `--shard I/N` (see {_AUTO_DOC})",
        )
        count = _whole_number(
            env,
            COUNT_VAR,
            missing_hint=f"set {COUNT_VAR} in the pod template to the Job's spec.completions "
            f"(Kubernetes does not pass the completion count to the pod; see {_AUTO_DOC})",
        )
        if count < 1:
            raise UsageError(
                f"--shard auto: {COUNT_VAR} is {count}; the shard count must be at least 1",
                hint=f"set {COUNT_VAR} to the Job's spec.completions",
            )
        if index >= count:
            raise UsageError(
                f"--shard auto: {INDEX_VAR} is {index} but {COUNT_VAR} is {count}; the index "
                f"must be below the count (0 to {count - 1})",
                hint=f"set {COUNT_VAR} to the same number as the Job's spec.completions "
                f"(completion indexes run from 0 to completions - 1)",
            )
        return cls(index, count)

    def owns(self, aggregate_id: str) -> bool:
        if self.count == 1:
            return True
        return (
            zlib.crc32(aggregate_id.encode("utf-8", "surrogateescape")) % self.count == self.index
        )

    def overlaps(self, other: Shard) -> bool:
        """Whether some aggregate belongs to both shards: ``crc % n == i`` and ``crc % m == j``
        have a common solution exactly when ``i`` and ``j`` agree modulo gcd(n, m). Shards of
        one count overlap only themselves; the whole (``0/1``) overlaps every shard; ``0/2``
        overlaps ``0/4`` and ``2/4`` but not ``1/4``."""
        return (self.index - other.index) % math.gcd(self.count, other.count) == 0

    def split(self, parts: int) -> list[Shard]:
        """This shard cut into ``parts`` shards of ``count * parts``: together they own exactly
        the aggregates this one owns (``crc % (n*k) == i + j*n`` implies ``crc % n == i``)."""
        return [Shard(self.index + j * self.count, self.count * parts) for j in range(parts)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _whole_number(env: Mapping[str, str], name: str, *, missing_hint: str) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        raise UsageError(
            f"--shard auto: the environment variable {name} is not set", hint=missing_hint
        )
    text = raw.strip()
    if not re.fullmatch(r"\d+", text):
        raise UsageError(
            f"--shard auto: {name} is {raw!r}, not a whole number (0, 1, 2, …)",
            hint=f"set {name} to the number it stands for (see {_AUTO_DOC})",
        )
    return int(text)
