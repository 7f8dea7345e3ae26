"""What a replay reads (:class:`Selection`) and how it runs (:class:`ReplayOptions`), and which
of their combinations make sense (``check``, raising UsageError)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from esctl.defaults import REPLAY_CONFIRM_OVER as DEFAULT_CONFIRM_OVER
from esctl.errors import UsageError
from esctl.query import Selectors
from esctl.replay.time_order import SORT_RUN_BYTES
from esctl.shard import Shard
from esctl.transforms import Rules

SOURCES = ("redis", "pg")
TARGETS = ("queue", "stdout", "projection")
ORDERS = ("aggregate", "time")


@dataclass(frozen=True)
class Selection(Selectors):
    """The selectors as given on the command line (text: relative times are resolved against
    the moment a checkpoint was created, see :meth:`filters`), the ``--limit`` and ``--all``."""

    limit: int | None = None
    all_events: bool = False

    def check(self) -> None:
        if not self.has_selector and not self.all_events:
            raise UsageError(
                "say what to replay: --type, --aggregate-type, --aggregate, --since, --until "
                "or --where, or --all for every event",
                hint="replaying a whole store must be asked for with --all; --dry-run first "
                "shows how many events that is",
            )
        if self.limit is not None and self.limit < 0:
            raise UsageError("--limit must be 0 or more")
        self.filters(datetime.now(UTC))  # malformed selectors are usage errors now, not later

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint remembers of the selection (compared on resume)."""
        return {
            "types": sorted(set(self.types)),
            "aggregate_type": self.aggregate_type,
            "aggregates": sorted(set(self.aggregates)),
            "since": self.since,
            "until": self.until,
            "where": list(self.where),
            "limit": self.limit,
        }


@dataclass(frozen=True)
class ReplayOptions:
    source: str
    """``redis`` or ``pg``."""
    target: str
    """``queue``, ``stdout`` or ``projection``."""
    app: str
    selection: Selection
    order: str = "aggregate"
    env: str | None = None
    pg_dsn: str = "postgresql://localhost/postgres"
    pg_schema: str = "public"
    subscribers: tuple[str, ...] = ()
    """--to queue: only these subscribers."""
    force: bool = False
    """--to queue: publish to named subscribers even where they are not members."""
    max_queue_length: int | None = None
    rate: float | None = None
    """At most this many events per second (every target)."""
    confirm_over: int = DEFAULT_CONFIRM_OVER
    projection: str | None = None
    checkpoint: str | None = None
    reset: bool = False
    skip_errors: bool = False
    batch_size: int | None = None
    """Events per projection transaction; None: ``esctl.defaults.REPLAY_BATCH_SIZE``, more when
    PostgreSQL is at a distance (``esctl.inflight.BatchGrowth``)."""
    dry_run: bool = False
    sort_dir: str | None = None
    sort_run_bytes: int = SORT_RUN_BYTES
    now: datetime | None = None
    """The moment relative selectors count back from (default: now, or the checkpoint's)."""
    shard: Shard = field(default_factory=Shard)
    """Only the aggregates of this shard (docs/design/replay.md, "Shards")."""
    transforms: Rules | None = None
    """--transforms FILE: each aggregate's stream through the rules before the target sees it
    (``--from redis`` only; docs/design/replay.md, "Transforms")."""

    def check(self) -> None:
        """Raise UsageError for options that do not go together."""
        self._check_choices()
        self.selection.check()
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise UsageError("--rate must be more than 0")
        self._check_target_only_flags()
        self._check_target_needs()
        if self.transforms is not None and self.source == "pg":
            raise UsageError(
                "--transforms: only with --from redis; PostgreSQL holds what migrate wrote, "
                "already transformed when migrate ran with --transforms (applying rules again "
                "would rename or renumber twice)",
                hint="drop --transforms to replay PostgreSQL as migrated, or replay `--from "
                "redis --transforms FILE`",
            )

    def _check_choices(self) -> None:
        if self.source not in SOURCES:
            raise UsageError(f"--from must be one of {', '.join(SOURCES)}, not {self.source!r}")
        if self.target not in TARGETS:
            raise UsageError(f"--to must be one of {', '.join(TARGETS)}, not {self.target!r}")
        if self.order not in ORDERS:
            raise UsageError(f"--order must be one of {', '.join(ORDERS)}, not {self.order!r}")

    def _check_target_only_flags(self) -> None:
        """Flags of one target given to another."""
        queue_only = {
            "--subscriber": bool(self.subscribers),
            "--force": self.force,
            "--max-queue-length": self.max_queue_length is not None,
        }
        projection_only = {
            "--projection": self.projection is not None,
            "--checkpoint": self.checkpoint is not None,
            "--reset": self.reset,
            "--skip-errors": self.skip_errors,
        }
        for flags, target in ((queue_only, "queue"), (projection_only, "projection")):
            used = [flag for flag, given in flags.items() if given]
            if used and self.target != target:
                raise UsageError(
                    f"{', '.join(used)}: only with --to {target} (this replay is --to "
                    f"{self.target})"
                )

    def _check_target_needs(self) -> None:
        """What the target, or another flag, needs to be given too."""
        if self.target == "queue" and not self.env:
            raise UsageError(
                "--to queue needs --env: queue keys are Subscribers:{ENV:TYPE} and "
                "SUB:{ENV:TYPE}:PublishedEvents",
                hint="pass --env or set ESCTL_ENV",
            )
        if self.force and not self.subscribers:
            raise UsageError("--force needs --subscriber (it publishes to named subscribers)")
        if self.max_queue_length is not None and self.max_queue_length < 1:
            raise UsageError("--max-queue-length must be at least 1")
        if self.target == "projection" and not self.projection:
            raise UsageError(
                "--to projection needs --projection MODULE:CALLABLE or path/to/file.py:CALLABLE"
            )
        if self.reset and not self.checkpoint:
            raise UsageError("--reset starts a checkpoint over: it needs --checkpoint NAME")
        if self.shard.count > 1 and self.target == "queue":
            raise UsageError(
                f"--shard {self.shard}: not with --to queue; a queue replay locks every "
                "subscriber queue it publishes to, so shards of it could not run side by side",
                hint="replay to the queues in one run (--rate and --max-queue-length pace it); "
                "--shard works with `--to projection` and `--to stdout`",
            )
