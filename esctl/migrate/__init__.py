"""``esctl migrate redis-to-pg``: move committed events from Redis into the library's
PostgreSQL schema (docs/layout.md §5), batched, resumable, idempotent and incremental.

:func:`migrate_redis_to_pg` is the entry point (:func:`migrate_parallel` runs it in several
processes); the options and summary are in :mod:`.options`, the Redis side in :mod:`.reader`,
the batches in :mod:`.rows`, the PostgreSQL side in :mod:`.writer`, the run bookkeeping in
:mod:`.runs`; :func:`migrate_then_prune` (:mod:`.then_prune`) adds ``--delete-source``. What
it promises and how it works (positions, staging, threads, forks):
docs/design/migrate.md.

The package never prints and never exits; the CLI renders what it returns.
"""

from esctl.migrate.options import (
    DEFAULT_BATCH_SIZE,
    Invocation,
    MigrateOptions,
    MigrationSummary,
    Progress,
)
from esctl.migrate.parallel import migrate_parallel
from esctl.migrate.reader import Reader, count_commits
from esctl.migrate.rows import (
    AggregateRows,
    Batch,
    BatchResult,
    Quarantined,
    clean_rows,
    copy_escape,
    fast_rows,
    stream_rows,
)
from esctl.migrate.run import migrate_redis_to_pg
from esctl.migrate.then_prune import MigrationOutcome, check_backup_file, migrate_then_prune
from esctl.migrate.writer import BatchWriter

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "AggregateRows",
    "Batch",
    "BatchResult",
    "BatchWriter",
    "Invocation",
    "MigrateOptions",
    "MigrationOutcome",
    "MigrationSummary",
    "Progress",
    "Quarantined",
    "Reader",
    "check_backup_file",
    "clean_rows",
    "copy_escape",
    "count_commits",
    "fast_rows",
    "migrate_parallel",
    "migrate_redis_to_pg",
    "migrate_then_prune",
    "stream_rows",
]
