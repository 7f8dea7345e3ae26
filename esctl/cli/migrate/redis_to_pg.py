"""``esctl migrate redis-to-pg``: copy committed events from Redis into PostgreSQL."""

from __future__ import annotations

import threading
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from esctl import defaults
from esctl.cli.appkeys import EVERY_FAMILY, note_if_no_keys
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.errors import exit_for
from esctl.cli.follow import Following, run_follow
from esctl.cli.groups import OptionGroup, with_groups
from esctl.cli.migrate.common import (
    BackupFileOpt,
    checked_rules,
    store,
    toast,
    toast_option,
    workers_option,
)
from esctl.cli.migrate.prune import render_prune
from esctl.cli.options import (
    DryRunOpt,
    ProgressOpt,
    ShardOpt,
    count_option,
    option,
    transforms_option,
)
from esctl.cli.output import Output
from esctl.cli.progress import Progress
from esctl.units import counted

if TYPE_CHECKING:
    from esctl import migrate as core
    from esctl import redisio


@dataclass(frozen=True)
class RunOptions(OptionGroup):
    """How the migration runs: the options of the core's ``MigrateOptions``, and --workers (how
    many processes run it)."""

    batch_size: Annotated[
        int, count_option("--batch-size", "Events per transaction.", show_default=True)
    ] = defaults.MIGRATE_BATCH_SIZE
    init_schema: Annotated[
        bool,
        typer.Option(
            "--init-schema",
            help="Create the library's tables and functions (and esctl's bookkeeping) if missing.",
        ),
    ] = False
    dry_run: DryRunOpt = False
    shard: ShardOpt = None
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Start a new run instead of resuming an unfinished one. When PostgreSQL holds "
            "events migrated with other --transforms (or without), DELETE those events of this "
            "app (and shard) first and migrate everything again (needs --yes).",
        ),
    ] = False
    max_problems: Annotated[
        int | None,
        count_option(
            "--max-problems", "Stop once more aggregates than this had problems.", least=0
        ),
    ] = None
    rate: Annotated[
        float | None,
        count_option("--rate", "At most this many events read per second."),
    ] = None
    max_redis_latency: Annotated[
        float | None,
        option(
            "--max-redis-latency",
            "MS",
            "Back off while a Redis round trip takes longer than this many milliseconds.",
            min=0.1,
        ),
    ] = None
    writers: Annotated[
        int,
        count_option("--writers", "PostgreSQL writer connections.", most=8, show_default=True),
    ] = 2
    workers: Annotated[
        int,
        workers_option(
            "Local processes, each migrating one sub-shard (of --shard, if given); one "
            "combined summary. Rerun with the same number to resume."
        ),
    ] = 1
    toast_compression: Annotated[
        str,
        toast_option(
            "default_toast_compression for the writers' sessions (lz4, pglz, or 'server')."
        ),
    ] = "lz4"

    def migrate_options(
        self, ctx: Context, *, transforms: str | None, confirm_restart: bool
    ) -> core.MigrateOptions:
        """The core's options: these, for the app and the PostgreSQL of ``ctx``."""
        from esctl import migrate as core
        from esctl.shard import Shard

        return core.MigrateOptions(
            **store(ctx),
            transforms=transforms,
            confirm_restart=confirm_restart,
            batch_size=self.batch_size,
            init_schema=self.init_schema,
            dry_run=self.dry_run,
            shard=Shard.from_option(self.shard),
            restart=self.restart,
            max_problems=self.max_problems,
            rate=self.rate,
            max_redis_latency_ms=self.max_redis_latency,
            writers=self.writers,
            toast_compression=toast(self.toast_compression),
        )


DeleteSourceOpt = Annotated[
    bool,
    typer.Option(
        "--delete-source",
        help="After a migration that did not stop early, run 'migrate prune' for the same "
        "app (and shard); needs --yes (with --dry-run: a dry-run prune).",
    ),
]
MigrateYesOpt = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", help="Confirm --delete-source, and a --restart that deletes events."
    ),
]
MigrateTransformsOpt = Annotated[
    Path | None,
    transforms_option(
        "A TOML rules file (README 'Transforms'): migrate the events as the rules make "
        "them, renumbered per aggregate. Every later run must use the same rules (or "
        "--restart --yes)."
    ),
]


@with_context(Scope.REDIS | Scope.REPLICAS | Scope.PG | Scope.APP)
@with_groups
def redis_to_pg(
    ctx: Context,
    run: RunOptions = RunOptions(),
    progress: ProgressOpt = True,
    delete_source: DeleteSourceOpt = False,
    yes: MigrateYesOpt = False,
    backup_file: BackupFileOpt = None,
    transforms_file: MigrateTransformsOpt = None,
    following: Following = Following(),
) -> None:
    """Copy committed events from Redis into PostgreSQL: batched, resumable, idempotent.

    Rerun the same command after a crash to continue; run it nightly to move what is new,
    or keep it running with --follow (--json: one JSON line per batch and per second).
    Aggregates with problems are skipped whole, recorded in esctl.quarantine, and make the
    exit code 3. With --delete-source --yes, prune (see 'migrate prune') runs afterwards
    (with --backup-file, writing what it deletes there first; with --transforms, comparing by
    the rules and keeping aggregates they leave out whole); its summary is under "prune" in
    the JSON.

    \b
    Example: esctl migrate redis-to-pg --app MyService --init-schema
    """
    from esctl import migrate as core
    from esctl.errors import Refused

    if delete_source and not yes and not run.dry_run:  # a dry run deletes nothing: no --yes
        raise Refused(
            "--delete-source deletes the migrated events from Redis and needs --yes",
            hint="add --yes (nothing was done), or try --dry-run first",
        )
    opts = run.migrate_options(ctx, transforms=checked_rules(transforms_file), confirm_restart=yes)
    if following.follow:
        refuse = {
            "--dry-run": run.dry_run,
            "--delete-source": delete_source,
            "--workers": run.workers > 1,
        }
        run_follow(ctx, opts, following, refuse=refuse)
        return
    following.check_unused()
    client = ctx.redis
    with ctx.out.progress(progress, desc="migrating", unit=" commits", at_first_update=True) as bar:
        _count_commits_beside(bar, client, opts)
        outcome = core.migrate_then_prune(
            client,
            opts,
            redis=ctx.redis_target,
            workers=run.workers,
            delete_source=delete_source,
            backup_file=backup_file,
            on_progress=bar.hook(lambda p: _migrated(bar, p)),
        )
    _render_outcome(ctx.out, outcome)
    migration = outcome.migration
    # A run of an app with no key and no earlier run recorded nothing, having looked for every
    # key of it; a resumed run or a shard examines part of the commit lists: nothing whole.
    unknown = migration.run_id is None and not migration.dry_run
    note_if_no_keys(ctx, seen=migration.aggregates > 0, looked_at=EVERY_FAMILY if unknown else ())
    exit_for(problems=outcome.found_problems)


def _count_commits_beside(
    bar: Progress, client: redisio.RedisClient, opts: core.MigrateOptions
) -> None:
    """Give a drawn bar its total from a quick count running beside the migration."""
    from esctl import migrate as core

    if not bar.shown:
        return

    def count() -> None:
        try:
            _, entries = core.count_commits(client, opts.app, opts.shard)
        except Exception:  # the bar just stays without an ETA
            return
        bar.set_total(entries)

    threading.Thread(target=count, daemon=True, name="esctl-count").start()


def _migrated(bar: Progress, p: core.Progress) -> None:
    bar.update(
        p.commits_seen,
        postfix={
            "migrated": f"{p.events_migrated:,}",
            "quarantined": f"{p.aggregates_quarantined:,}",
        },
    )


def _render_outcome(out: Output, outcome: core.MigrationOutcome) -> None:
    if outcome.delete_source and outcome.prune is None:
        out.warn("--delete-source: nothing pruned because the migration stopped early")

    def render() -> None:
        _render(out, outcome.migration)
        if outcome.prune is not None:
            render_prune(out, outcome.prune)

    out.result(outcome.as_dict(), render)


def _render(out: Output, summary: core.MigrationSummary) -> None:
    verb = "would migrate" if summary.dry_run else "migrated"
    title = "migrate redis-to-pg" + (" (dry run: nothing written)" if summary.dry_run else "")
    rows: dict[str, Any] = {
        "aggregates examined": summary.aggregates,
        "aggregates unchanged": summary.aggregates_unchanged,
        f"events {verb}": summary.events_migrated,
        "events already present": summary.events_already_present,
        "aggregates quarantined": summary.aggregates_quarantined,
        "events quarantined": summary.events_quarantined,
    }
    timing = {
        "elapsed": out.format_duration(summary.elapsed_s),
        "events/s": f"{summary.events_per_s:,.0f}",
    }
    if summary.this_invocation is None:
        run = summary.run_id or "none recorded (the app has no key in Redis and no earlier run)"
        out.mapping({"run": run, **rows, **timing}, title=title)
    else:
        # A resumed run: this invocation's figures beside the whole run's, never mixed in one
        # column (a resume rereads part of a page, so examined aggregates have no run total).
        now = summary.this_invocation
        whole: dict[str, Any] = {
            f"events {verb}": summary.events_migrated,
            "events already present": summary.events_already_present,
            "aggregates quarantined": summary.aggregates_quarantined,
            "events quarantined": summary.events_quarantined,
        }
        mine = dict(zip(rows, astuple(now), strict=True))
        out.table(
            ["", "this invocation", "whole run"],
            [
                ("run", "resumed", summary.run_id),
                *((name, mine[name], whole.get(name)) for name in rows),
                *((name, value, None) for name, value in timing.items()),
            ],
            title=title,
        )
    out.problem_summary(
        summary.problems,
        summary.problem_counts,
        summary.problems_total,
        summary.problems_where,
        unrecorded="a dry run records nothing; a run without --dry-run records every problem "
        "in esctl.quarantine",
    )
    if summary.stopped_early:
        out.warn(f"stopped early: {summary.stopped_early}")
    if summary.transforms is not None:
        t = summary.transforms
        out.info(
            f"transforms {t['fingerprint'][:16]} ({t['file']}): "
            f"{counted(t['aggregates_left_out'], 'aggregate')} and "
            f"{counted(t['events_left_out'], 'event')} left out, "
            f"{counted(t['events_added_by_split'], 'event')} added by splits"
            + (
                f"; --restart deleted {counted(t['aggregates_deleted_by_restart'], 'aggregate')} "
                "migrated with other transforms"
                if t["aggregates_deleted_by_restart"]
                else ""
            )
        )
