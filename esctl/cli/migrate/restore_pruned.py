"""``esctl migrate restore-pruned``: put the events of a prune backup back into Redis."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from esctl.cli.context import Context, Scope, with_context
from esctl.cli.errors import exit_for
from esctl.cli.migrate.common import store
from esctl.cli.options import DryRunOpt
from esctl.cli.output import Output

if TYPE_CHECKING:
    from esctl import restore_pruned as core

BackupArg = Annotated[
    Path,
    typer.Argument(metavar="PATH.jsonl.zst", help="A file written by migrate prune --backup-file."),
]
RestoreYesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Restore without asking.")]


@with_context(Scope.REDIS | Scope.PG | Scope.APP)
def restore_pruned_command(
    ctx: Context,
    backup_file: BackupArg,
    yes: RestoreYesOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Put the events a `migrate prune --backup-file` deleted back into Redis (a rollback).

    Per aggregate, first the payload fields that are missing (a field that holds the same
    value is already there), then the commit list by a script that writes it only if it does
    not exist, or, when a service started it anew after the prune, puts the backup's commit
    ids in front of the new ones. Nothing is ever overwritten: a field with another value, or
    a list that holds some of the backup's commit ids but does not start with them, is a
    conflict, reported and left as it is (exit 3). Safe to rerun at any point, after a kill
    too: what is back counts as already_present. The file must be a prune backup of --app.

    Events the services saved in PostgreSQL after the switch are not in the backup and are
    not copied back. Holds the prune lock (exit 75 while a prune or another restore of the app
    runs). Without --yes it asks on a terminal and refuses without one.

    \b
    Example: esctl migrate restore-pruned pruned-2024-05-01.jsonl.zst --app MyService --yes
    """
    from esctl import restore_pruned as core

    out = ctx.out
    opts = core.RestorePrunedOptions(**store(ctx), dry_run=dry_run)
    if not (yes or dry_run):
        out.confirm(
            f"Put the events of {backup_file} back into Redis for {opts.app}?",
            action="migrate restore-pruned writes events into Redis",
        )
    summary = core.restore_pruned(ctx.redis, backup_file, opts)
    out.result(summary.as_dict(), lambda: render_restore_pruned(out, summary))
    exit_for(problems=summary.found_problems)


def render_restore_pruned(out: Output, summary: core.RestorePrunedSummary) -> None:
    would = "would be " if summary.dry_run else ""
    out.mapping(
        {
            "backup": summary.backup_file,
            "aggregates in the backup": summary.aggregates,
            f"aggregates {would}restored": summary.aggregates_restored,
            f"  of them {would}put before newer events": summary.aggregates_put_in_front,
            "aggregates already present": summary.aggregates_already_present,
            f"events {would}restored": summary.events_restored,
            "events already present": summary.already_present,
            f"payload fields {would}written": summary.payload_fields_written,
            "conflicts (left as they are)": summary.conflicts,
            "elapsed": out.format_duration(summary.elapsed_s),
        },
        title="migrate restore-pruned" + (" (dry run: nothing written)" if summary.dry_run else ""),
    )
    if summary.backup_cut_short:
        out.wrapped(
            "The backup's last frame is cut short (its prune was killed while writing it, "
            "before deleting those events): it was ignored."
        )
    t = summary.tally
    out.problem_summary(t.listed, t.counts, t.total, t.where, title="conflicts", one="conflict")
