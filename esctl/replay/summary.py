"""What a replay reports: :class:`ReplaySummary` at the end (its ``as_dict`` is the ``--json``
document), :class:`ReplayProgress` on the way."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from esctl.documents import document
from esctl.problems import DEFAULT_LISTED
from esctl.replay.options import ReplayOptions
from esctl.shard import Shard

MAX_LISTED_PROBLEMS = DEFAULT_LISTED
"""Problems listed one by one in a summary (the rest are counted by kind)."""


@dataclass
class ReplayProgress:
    events: int = 0
    """Events replayed (published, printed, or committed by the projection)."""
    messages: int = 0
    total: int | None = None
    """Events the run will replay, when a planning pass counted them."""


@dataclass
class ReplaySummary:
    dry_run: bool
    source: str
    target: str
    order: str
    events: int = 0
    """Events replayed (for a dry run: that would be). Projection: in committed batches."""
    by_type: dict[str, int] = field(default_factory=dict)
    published: dict[str, dict[str, int]] = field(default_factory=dict)
    """--to queue: subscriber -> event type -> messages LPUSHed (dry run: that would be)."""
    messages: int = 0
    notifications: int = 0
    unpublished: dict[str, int] = field(default_factory=dict)
    """--to queue: event type -> events no chosen subscriber takes (not published)."""
    checkpoint: dict[str, Any] | None = None
    dead_lettered: int = 0
    waited_s: float = 0.0
    """Time spent waiting for --max-queue-length."""
    stopped: dict[str, Any] | None = None
    """Set when the replay stopped on an error before the end: what failed, where."""
    in_doubt: int = field(default=0, repr=False, compare=False)
    """Events sent whose outcome is not known: a second Ctrl-C or SIGTERM stopped the wait for
    the server's answer (a COMMIT, a batch of transactions). Not in ``as_dict``: the
    interrupted run's error says it."""
    failure: BaseException | None = field(default=None, repr=False, compare=False)
    """The projection's exception that stopped the run (for its traceback; not in ``as_dict``)."""
    problems: list[dict[str, str]] = field(default_factory=list)
    problems_not_listed: int = 0
    problem_counts: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    events_per_s: float = 0.0
    shard: Shard = field(default_factory=Shard)
    transforms: dict[str, Any] | None = None
    """--transforms: the rules file, its fingerprint and the events the rules left out."""

    @classmethod
    def start(cls, options: ReplayOptions) -> ReplaySummary:
        """An empty summary of a run with ``options``."""
        return cls(
            dry_run=options.dry_run,
            source=options.source,
            target=options.target,
            order=options.order,
            shard=options.shard,
            transforms=None
            if options.transforms is None
            else {
                "file": options.transforms.path,
                "fingerprint": options.transforms.fingerprint,
                "events_left_out": 0,
            },
        )

    @property
    def found_problems(self) -> bool:
        return bool(self.problems) or self.problems_not_listed > 0

    @property
    def problems_total(self) -> int:
        return len(self.problems) + self.problems_not_listed

    def add_problem(self, kind: str, key: str, detail: str) -> None:
        self.problem_counts[kind] = self.problem_counts.get(kind, 0) + 1
        if len(self.problems) < MAX_LISTED_PROBLEMS:
            self.problems.append({"kind": kind, "key": key, "detail": detail})
        else:
            self.problems_not_listed += 1

    def add_problems(
        self, problems: Iterable[tuple[str, str, str]], unlisted: dict[str, int] | None = None
    ) -> None:
        """Add (kind, key, detail) problems: a source's, at the end of a run; ``unlisted``:
        more of them, by kind, that the source counted without keeping them."""
        for kind, key, detail in problems:
            self.add_problem(kind, key, detail)
        for kind, n in (unlisted or {}).items():
            if n:
                self.problem_counts[kind] = self.problem_counts.get(kind, 0) + n
                self.problems_not_listed += n

    def counted(self, counts: Mapping[str, int]) -> None:
        """A dry run's figures: the selected events per type, as a planning pass counted them."""
        self.by_type = dict(counts)
        self.events = sum(counts.values())

    def finish(self, started: float, source: Any) -> ReplaySummary:
        """The end of a run: the problems ``source`` found and what its rules left out, the
        elapsed time and the rate since ``started`` (``time.monotonic()``)."""
        self.add_problems(source.problems(), source.unlisted())
        if self.transforms is not None:
            self.transforms["events_left_out"] = getattr(source, "left_out", 0)
        self.elapsed_s = time.monotonic() - started
        self.events_per_s = self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return self

    def as_dict(self) -> dict[str, Any]:
        return document(
            self,
            "dry_run source target order shard transforms events by_type published messages notifications"
            " unpublished checkpoint dead_lettered waited_s stopped elapsed_s events_per_s problems"
            " problems_not_listed problem_counts problems_total problems_omitted problems_where",
            problem_counts=dict(sorted(self.problem_counts.items())),
            problems_omitted=self.problems_not_listed,
            problems_where=None,
            shard=str(self.shard),
            by_type=dict(sorted(self.by_type.items())),
            published={s: dict(sorted(t.items())) for s, t in sorted(self.published.items())},
            unpublished=dict(sorted(self.unpublished.items())),
        )
