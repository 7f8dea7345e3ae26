"""``esctl migrate prune``: delete from Redis what PostgreSQL holds identically."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from esctl.cli.appkeys import note_if_no_keys
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.errors import exit_for
from esctl.cli.migrate.common import BackupFileOpt, checked_rules, store
from esctl.cli.options import DryRunOpt, ShardOpt, transforms_option
from esctl.cli.output import Output
from esctl.units import counted

if TYPE_CHECKING:
    from esctl import prune as prune_core


PruneYesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")]
PruneTransformsOpt = Annotated[
    Path | None,
    transforms_option(
        "The rules file the migration used: delete only aggregates PostgreSQL holds as "
        "the rules make them (required for a migration made with --transforms)."
    ),
]
IncludeLeftOutOpt = Annotated[
    bool,
    typer.Option(
        "--include-left-out",
        help="With --transforms: also delete aggregates whose events the rules all leave "
        "out (PostgreSQL holds none of them by design); needs --backup-file.",
    ),
]


@with_context(Scope.REDIS | Scope.PG | Scope.APP)
def prune_command(
    ctx: Context,
    yes: PruneYesOpt = False,
    backup_file: BackupFileOpt = None,
    dry_run: DryRunOpt = False,
    shard: ShardOpt = None,
    transforms_file: PruneTransformsOpt = None,
    include_left_out: IncludeLeftOutOpt = False,
) -> None:
    """Free Redis memory: delete the events of aggregates that PostgreSQL holds identically.

    Only aggregates that compare identical right now (as migrate verify compares) are deleted:
    the commit list by a script that deletes it only if it still has the verified length, first
    and last commit id, then the payload fields. One that gained a commit in between is left
    alone and reported as changed_since_verify. Queues and snapshots are never touched. Run it
    only once the services read their events from PostgreSQL.

    A migration made with --transforms is pruned with the same rules file (--transforms): an
    aggregate is deleted only when PostgreSQL holds exactly what the rules make of its Redis
    stream. Other rules, or none, are refused (exit 2). Aggregates whose events the rules all
    leave out are kept and counted (aggregates_left_out_kept) unless --include-left-out.

    Skipped and exit 0: aggregates not migrated yet or with newer events (expected while a
    migration is partial) and unmigratable ones (migrate quarantines and reports those).
    Exit 3: PostgreSQL holds other data than Redis (content_differs, extra_in_pg, versions
    missing in between), or changed_since_verify. Exit 75: another prune of the app whose
    shard shares aggregates with this one's (the same shard, another shard count, unsharded
    beside shards) or a restore-pruned is running; the error names that run (a prune by its
    shard) and its PostgreSQL session.

    Without --yes it asks on a terminal and refuses (exit 2) without one. A run killed
    between deleting a commit list and its payload fields leaves those fields behind; they
    are recorded in esctl.prune_pending and the next prune deletes them first. Put a
    backup's events back with esctl migrate restore-pruned FILE (safe to rerun).

    \b
    Example: esctl migrate prune --app MyService --yes --backup-file pruned-2024-05-01.jsonl.zst
    """
    from esctl import prune as prune_core
    from esctl.shard import Shard

    out = ctx.out
    opts = prune_core.PruneOptions(
        **store(ctx),
        dry_run=dry_run,
        backup_file=backup_file,
        shard=Shard.from_option(shard),
        transforms=checked_rules(transforms_file),
        include_left_out=include_left_out,
    )
    if not (yes or dry_run):
        out.confirm(
            f"Delete from Redis the events of every aggregate of {opts.app} that is identical "
            f"in PostgreSQL (schema {opts.pg_schema})?",
            action="migrate prune deletes events from Redis",
        )
    summary = prune_core.prune(ctx.redis, opts)
    out.result(summary.as_dict(), lambda: render_prune(out, summary))
    note_if_no_keys(ctx, seen=summary.aggregates_examined > 0)
    exit_for(problems=summary.found_problems)


def render_prune(out: Output, summary: prune_core.PruneSummary) -> None:
    would = "would be " if summary.dry_run else ""
    out.mapping(
        {
            "aggregates examined": summary.aggregates_examined,
            f"aggregates {would}pruned": summary.aggregates_pruned,
            f"events {would}deleted": summary.events_deleted,
            "skipped: not migrated yet": summary.skipped_not_migrated,
            "skipped: unmigratable (quarantined)": summary.skipped_unmigratable,
            "skipped: differ from PostgreSQL": summary.skipped_mismatch,
            "changed since verified (left alone)": summary.changed_since_verify,
            "left out whole by the rules: kept": summary.aggregates_left_out_kept,
            f"left out whole by the rules: {would}pruned": summary.aggregates_left_out_pruned,
            "orphan fields of an earlier run cleaned": summary.orphan_fields_cleaned,
            "used_memory before": out.format_bytes(summary.used_memory_before),
            "used_memory after": out.format_bytes(summary.used_memory_after),
            "backup": f"{summary.backup_file} ({counted(summary.backup_events, 'event')})"
            if summary.backup_file
            else "-",
            "elapsed": out.format_duration(summary.elapsed_s),
        },
        title="migrate prune" + (" (dry run: nothing deleted)" if summary.dry_run else ""),
    )
    out.problems(
        summary.problems,
        title=f"problems ({summary.skipped_mismatch + summary.changed_since_verify})",
    )
