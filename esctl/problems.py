"""The problems a command found, in bounded memory: exact counts by kind, the first few listed,
and where the whole list is (README, "Commands", what a script can rely on with ``--json``:
``problems``, ``problem_counts``, ``problems_total``, ``problems_omitted``, ``problems_where``).

Nothing else is kept per problem: a summary is as big with a million problems as with twenty.
The whole list is wherever the command recorded it as it went (``esctl.quarantine`` for a
migration, a ``--problems-file`` of JSON lines for ``migrate verify`` and ``inspect
integrity``), and ``where`` names it.
"""

from __future__ import annotations

import errno
from typing import Any

import orjson

from esctl.errors import EsctlError

DEFAULT_LISTED = 20
"""Problems listed one by one in a summary; the rest are counted."""


class ProblemTally:
    """Counts by kind, the total, and the first ``listed`` problems (dicts with at least a
    ``kind``). With ``sink``, every problem is also written to it as one JSON line when added
    (and then forgotten)."""

    def __init__(
        self,
        listed: int = DEFAULT_LISTED,
        *,
        where: str | None = None,
        sink: ProblemsFile | None = None,
    ) -> None:
        self.limit = listed
        self.where = where
        self.sink = sink
        self.counts: dict[str, int] = {}
        self.total = 0
        self.listed: list[dict[str, Any]] = []

    def add(self, problem: dict[str, Any]) -> None:
        kind = problem["kind"]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.total += 1
        if len(self.listed) < self.limit:
            self.listed.append(problem)
        if self.sink is not None:
            self.sink.add(problem)

    def count(self, kind: str, n: int) -> None:
        """Count ``n`` problems of ``kind`` that are listed elsewhere (not one by one here)."""
        if n:
            self.counts[kind] = self.counts.get(kind, 0) + n
            self.total += n

    def merge(self, other: ProblemTally) -> None:
        """Add another tally's counts and as many of its listed problems as still fit."""
        for kind, n in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + n
        self.total += other.total
        self.listed.extend(other.listed[: max(0, self.limit - len(self.listed))])

    @property
    def omitted(self) -> int:
        """Problems counted but not listed."""
        return self.total - len(self.listed)

    def as_dict(self) -> dict[str, Any]:
        """The summary's problem keys (the same in every command's ``--json`` document)."""
        return {
            "problems": self.listed,
            "problem_counts": dict(sorted(self.counts.items())),
            "problems_total": self.total,
            "problems_omitted": self.omitted,
            "problems_where": self.where,
        }


class ProblemsFile:
    """A ``--problems-file``: one JSON line per problem, written at once (unbuffered, one
    write per line, so workers appending to one file never interleave). A write that fails (a
    full disk) is an error naming the file."""

    def __init__(self, path: str, mode: str) -> None:
        self.path = path
        try:
            self.file = open(path, mode, buffering=0)  # noqa: SIM115
        except OSError as exc:
            raise self._failed(exc) from None

    def add(self, problem: dict[str, Any]) -> None:
        try:
            self.file.write(orjson.dumps(problem) + b"\n")
        except OSError as exc:
            raise self._failed(exc) from None

    def close(self) -> None:
        self.file.close()

    def _failed(self, exc: OSError) -> EsctlError:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        return EsctlError(
            f"cannot write the problems file {self.path}: {exc.strerror or exc}",
            hint=("free space there" if full else "check that its folder exists and is writable")
            + ", or choose another --problems-file, then rerun",
        )


def open_problems_file(path: str | None) -> ProblemsFile | None:
    """A ``--problems-file``, emptied, for appending JSON lines; None without a path."""
    return None if path is None else ProblemsFile(path, "wb")


def append_problems_file(path: str | None) -> ProblemsFile | None:
    """A ``--problems-file`` another process emptied, for appending (a worker's)."""
    return None if path is None else ProblemsFile(path, "ab")
