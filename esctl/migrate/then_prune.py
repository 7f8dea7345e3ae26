"""``redis-to-pg --delete-source``: migrate, then prune what was migrated, as one operation."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from esctl import prune as pruning
from esctl import redisio
from esctl.errors import EsctlError, Refused, UsageError
from esctl.migrate.options import MigrateOptions, MigrationSummary, Progress
from esctl.migrate.parallel import migrate_parallel
from esctl.migrate.run import migrate_redis_to_pg


@dataclass
class MigrationOutcome:
    """A migration and, when the source was to be deleted, the prune that followed it."""

    migration: MigrationSummary
    delete_source: bool = False
    prune: pruning.PruneSummary | None = None
    """None with ``delete_source``: the migration stopped early, so nothing was pruned."""

    @property
    def found_problems(self) -> bool:
        """Quarantined aggregates, an early stop, or a prune that found problems."""
        migration = self.migration
        pruned = self.prune is not None and self.prune.found_problems
        return bool(migration.aggregates_quarantined or migration.stopped_early or pruned)

    def as_dict(self) -> dict[str, Any]:
        """The migration's document; with ``delete_source`` the prune's under ``"prune"``."""
        document = self.migration.as_dict()
        if self.delete_source:
            document["prune"] = None if self.prune is None else self.prune.as_dict()
        return document


def check_backup_file(backup_file: str | None, *, delete_source: bool) -> None:
    """The backup file of --delete-source is a new file in a writable directory; it belongs
    to --delete-source. Checked before the migration, not after an hour of it."""
    if backup_file is None:
        return
    if not delete_source:
        raise UsageError(
            "--backup-file is the backup of --delete-source; redis-to-pg alone deletes nothing",
            hint="add `--delete-source --yes`, or drop --backup-file",
        )
    if os.path.lexists(backup_file):
        raise Refused(
            f"the backup file {backup_file} already exists; esctl never overwrites a backup",
            hint="choose a new --backup-file name (nothing was done)",
        )
    directory = os.path.dirname(os.path.abspath(backup_file))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(
            f"--backup-file {backup_file}: {directory} is not a writable directory",
            hint="choose a writable directory (nothing was done)",
        )


def migrate_then_prune(
    client: redisio.RedisClient,
    opts: MigrateOptions,
    *,
    redis: redisio.RedisTarget,
    workers: int = 1,
    delete_source: bool = False,
    backup_file: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> MigrationOutcome:
    """Migrate (in ``workers`` processes when more than one: :func:`migrate_parallel` with
    ``redis``, which ``client`` is connected to; else :func:`migrate_redis_to_pg` on ``client``), then, with
    ``delete_source``, prune (:func:`esctl.prune.prune`) the same app, schema and shard on
    ``client``: a dry run after a dry run, writing what it deletes to ``backup_file`` first,
    comparing by the migration's rules (``opts.transforms``; aggregates the rules leave out
    whole are kept: ``migrate prune --include-left-out`` deletes those).
    Nothing is pruned after a migration that stopped early. ``backup_file`` is checked
    (:func:`check_backup_file`) before the migration starts."""
    check_backup_file(backup_file, delete_source=delete_source)
    if workers > 1:
        summary = migrate_parallel(redis, opts, workers=workers, on_progress=on_progress)
    else:
        summary = migrate_redis_to_pg(client, opts, on_progress=on_progress)
    outcome = MigrationOutcome(summary, delete_source=delete_source)
    if delete_source and summary.stopped_early is None:
        try:
            outcome.prune = pruning.prune(
                client,
                pruning.PruneOptions(
                    app=opts.app,
                    pg_dsn=opts.pg_dsn,
                    pg_schema=opts.pg_schema,
                    dry_run=opts.dry_run,
                    backup_file=backup_file,
                    shard=opts.shard,
                    transforms=opts.transforms,
                ),
            )
        except EsctlError as exc:  # the error is all that is shown: it says the migration ran
            exc.reword(
                f"migrate redis-to-pg finished ({summary.events_migrated:,} events migrated, "
                f"{summary.events_already_present:,} already present, "
                f"{summary.aggregates_quarantined:,} aggregates quarantined); then the prune "
                f"of --delete-source stopped: {exc.message}"
            )
            raise
    return outcome
