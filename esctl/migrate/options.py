"""What a migration is asked to do (:class:`MigrateOptions`) and what it reports: the running
figures (:class:`Progress`) and the outcome (:class:`MigrationSummary`, with
:class:`Invocation` for what one invocation of a resumed run did)."""

from __future__ import annotations

from dataclasses import asdict, astuple, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from esctl.defaults import MIGRATE_BATCH_SIZE as DEFAULT_BATCH_SIZE
from esctl.documents import document
from esctl.pg import PgTarget
from esctl.shard import Shard

if TYPE_CHECKING:
    from esctl.migrate.rows import BatchResult


@dataclass(frozen=True)
class MigrateOptions(PgTarget):
    batch_size: int = DEFAULT_BATCH_SIZE
    init_schema: bool = False
    dry_run: bool = False
    shard: Shard = field(default_factory=Shard)
    restart: bool = False
    max_problems: int | None = None
    rate: float | None = None
    max_redis_latency_ms: float | None = None
    writers: int = 2
    toast_compression: str | None = "lz4"
    scan_count: int = 1000
    transforms: str | None = None
    """--transforms FILE: the rules file (esctl.transforms), read by each process."""
    confirm_restart: bool = False
    """--yes: a --restart may delete what runs with other transforms migrated."""
    transforms_fingerprint: str | None = None
    """Set by the run from the rules file it read (the writers record it per aggregate)."""


@dataclass
class Progress:
    """Cumulative figures of the running invocation (reported after each batch)."""

    aggregates: int = 0
    events_read: int = 0
    events_migrated: int = 0
    events_already_present: int = 0
    aggregates_quarantined: int = 0
    events_quarantined: int = 0
    commits_seen: int = 0
    """Commit-list entries looked at, including unchanged aggregates (for progress bars)."""

    def add_committed(self, result: BatchResult) -> None:
        """Add what one committed batch did (the writers' side of the figures)."""
        self.events_migrated += result.inserted
        self.events_already_present += result.already_present
        self.aggregates_quarantined += len(result.quarantined)
        self.events_quarantined += sum(q.events for q in result.quarantined)


@dataclass(frozen=True)
class MigrationCounts:
    """The aggregates a migration examined and the events it migrated and quarantined: what
    an :class:`Invocation` did, and the figures of a :class:`MigrationSummary`."""

    aggregates: int
    aggregates_unchanged: int
    events_migrated: int
    events_already_present: int
    aggregates_quarantined: int
    events_quarantined: int


@dataclass(frozen=True)
class Invocation(MigrationCounts):
    """What one invocation of a run did (a resumed run's summary also holds the whole run's)."""

    def __add__(self, other: Invocation) -> Invocation:
        return Invocation(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


@dataclass(frozen=True)
class MigrationSummary(MigrationCounts):
    """The outcome of a migration. The event and quarantine counts and ``problems`` cover the
    whole run: for a resumed run they include the interrupted invocations, and
    ``this_invocation`` says what this invocation did (``aggregates`` and
    ``aggregates_unchanged`` are this invocation's: a resume rereads part of a SCAN page, so
    they cannot be summed over invocations)."""

    run_id: str | None
    """The run in esctl.migration_run (``--workers``: the workers' runs, comma-separated);
    None when nothing was recorded: the app has no key in Redis and no earlier run (a typo in
    --app, :func:`esctl.migrate.run.unknown_app`)."""
    dry_run: bool
    resumed: bool
    problems: list[dict[str, str]]
    """The first problems (``esctl.problems.DEFAULT_LISTED``); all of them are counted below
    and listed by the query in ``problems_where``."""
    elapsed_s: float
    events_per_s: float
    stopped_early: str | None = None
    toast_compression: str | None = None
    this_invocation: Invocation | None = None
    """Set when the run was resumed."""
    problem_counts: dict[str, int] = field(default_factory=dict)
    problems_total: int = 0
    problems_where: str | None = None
    """The SQL query that lists every problem of the run from esctl.quarantine (None for a
    dry run: it records nothing)."""
    transforms: dict[str, Any] | None = None
    """With --transforms: the fingerprint, the file, and this invocation's
    ``aggregates_left_out``, ``events_left_out``, ``events_added_by_split`` and
    ``aggregates_deleted_by_restart``."""

    def as_dict(self) -> dict[str, Any]:
        return document(
            self,
            "run_id dry_run aggregates aggregates_unchanged events_migrated events_already_present"
            " aggregates_quarantined events_quarantined problems problem_counts problems_total"
            " problems_omitted problems_where elapsed_s events_per_s resumed"
            " this_invocation stopped_early transforms",
            problem_counts=dict(sorted(self.problem_counts.items())),
            this_invocation=asdict(self.this_invocation) if self.this_invocation else None,
        )

    @property
    def problems_omitted(self) -> int:
        """Problems counted but not listed in ``problems``."""
        return self.problems_total - len(self.problems)

    def invocation(self) -> Invocation:
        """What this invocation did (the whole summary when the run was not resumed)."""
        if self.this_invocation is not None:
            return self.this_invocation
        return Invocation(*(getattr(self, f.name) for f in fields(MigrationCounts)))
