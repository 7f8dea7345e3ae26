"""``esctl migrate``: move event storage from Redis into PostgreSQL."""

from __future__ import annotations

import threading
from dataclasses import astuple
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

import typer

from esctl import defaults
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.errors import EXIT_PROBLEMS, exit_for
from esctl.cli.options import (
    DryRunOpt,
    IntervalOpt,
    MetricsFileOpt,
    ProblemsFileOpt,
    ProgressOpt,
    ShardOpt,
)
from esctl.cli.output import Output, Progress
from esctl.units import format_duration

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from esctl import migrate as core
    from esctl import plan as plan_core
    from esctl import prune as prune_core
    from esctl import redisio
    from esctl.migrate import status as status_core

app = typer.Typer(no_args_is_help=True, help="Move event storage from Redis into PostgreSQL.")

BackupFileOpt = Annotated[
    str | None,
    typer.Option(
        "--backup-file",
        metavar="PATH",
        help="First write every event to be deleted to this new file (zstd JSON lines, "
        "mode 0600, fsynced before each delete; not written in a dry run).",
        show_default=False,
    ),
]
ToastCompressionOpt = Annotated[
    str,
    typer.Option(
        "--toast-compression",
        metavar="METHOD",
        help="default_toast_compression for the writers' sessions (lz4, pglz, or 'server').",
    ),
]
MigrateTransformsOpt = Annotated[
    Path | None,
    typer.Option(
        "--transforms",
        metavar="FILE",
        help="A TOML rules file (README 'Transforms'): migrate the events as the rules make "
        "them, renumbered per aggregate. Every later run must use the same rules (or "
        "--restart --yes).",
        show_default=False,
    ),
]
PlanTransformsOpt = Annotated[
    Path | None,
    typer.Option(
        "--transforms",
        metavar="FILE",
        help="A TOML rules file (README 'Transforms'): what each rule does to the sample, and "
        "the PostgreSQL size after the rules.",
        show_default=False,
    ),
]
PruneTransformsOpt = Annotated[
    Path | None,
    typer.Option(
        "--transforms",
        metavar="FILE",
        help="The rules file the migration used: delete only aggregates PostgreSQL holds as "
        "the rules make them (required for a migration made with --transforms).",
        show_default=False,
    ),
]
VerifyTransformsOpt = Annotated[
    Path | None,
    typer.Option(
        "--transforms",
        metavar="FILE",
        help="The rules file the migration used: compare PostgreSQL with the events as the "
        "rules make them (left-out events are not missing).",
        show_default=False,
    ),
]


def _checked_rules(path: Path | None) -> str | None:
    """The --transforms file, read and checked before any server is asked (exit 2)."""
    if path is None:
        return None
    from esctl.transforms import load_rules

    load_rules(path)
    return str(path)


class _Store(TypedDict):
    """The event store every migrate command works on: the app and its PostgreSQL target."""

    app: str
    pg_dsn: str
    pg_schema: str


def _store(ctx: Context) -> _Store:
    return _Store(app=ctx.app, pg_dsn=ctx.pg_dsn, pg_schema=ctx.pg_schema)


def _toast(method: str) -> str | None:
    """--toast-compression: 'server' keeps the server's default."""
    return None if method == "server" else method


# --- redis-to-pg ---------------------------------------------------------------------------


@app.command("redis-to-pg")
@with_context(Scope.REDIS | Scope.REPLICAS | Scope.PG | Scope.APP)
def redis_to_pg(
    ctx: Context,
    batch_size: Annotated[
        int, typer.Option("--batch-size", metavar="N", min=1, help="Events per transaction.")
    ] = defaults.MIGRATE_BATCH_SIZE,
    init_schema: Annotated[
        bool,
        typer.Option(
            "--init-schema",
            help="Create the library's tables and functions (and esctl's bookkeeping) if missing.",
        ),
    ] = False,
    dry_run: DryRunOpt = False,
    shard: ShardOpt = None,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Start a new run instead of resuming an unfinished one. When PostgreSQL holds "
            "events migrated with other --transforms (or without), DELETE those events of this "
            "app (and shard) first and migrate everything again (needs --yes).",
        ),
    ] = False,
    max_problems: Annotated[
        int | None,
        typer.Option(
            "--max-problems",
            metavar="N",
            min=0,
            help="Stop once more aggregates than this had problems.",
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate", metavar="N", min=1, help="At most this many events read per second."
        ),
    ] = None,
    max_redis_latency: Annotated[
        float | None,
        typer.Option(
            "--max-redis-latency",
            metavar="MS",
            min=0.1,
            help="Back off while a Redis round trip takes longer than this many milliseconds.",
        ),
    ] = None,
    writers: Annotated[
        int,
        typer.Option("--writers", metavar="N", min=1, max=8, help="PostgreSQL writer connections."),
    ] = 2,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            metavar="N",
            min=1,
            help="Local processes, each migrating one sub-shard (of --shard, if given); one "
            "combined summary. Rerun with the same number to resume.",
        ),
    ] = 1,
    toast_compression: ToastCompressionOpt = "lz4",
    progress: ProgressOpt = True,
    delete_source: Annotated[
        bool,
        typer.Option(
            "--delete-source",
            help="After a migration that did not stop early, run 'migrate prune' for the same "
            "app (and shard); needs --yes (with --dry-run: a dry-run prune).",
        ),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Confirm --delete-source, and a --restart that deletes events."
        ),
    ] = False,
    backup_file: BackupFileOpt = None,
    transforms_file: MigrateTransformsOpt = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="After catching up, keep PostgreSQL in step with Redis until stopped "
            "(SIGTERM: exit 0 after the current batch; Ctrl-C: 130), learning of new commits "
            "from keyspace notifications (polling without them); reports the lag.",
        ),
    ] = False,
    enable_notifications: Annotated[
        bool,
        typer.Option(
            "--enable-notifications",
            help="With --follow: CONFIG SET notify-keyspace-events to add 'Kl' on every "
            "primary when it is off.",
        ),
    ] = False,
    sweep_interval: Annotated[
        str,
        typer.Option(
            "--sweep-interval",
            metavar="DURATION",
            help="With --follow: a full incremental sweep this often (notifications lost in "
            "a disconnect are caught by it; one also runs after every reconnect); 0: none "
            "but those.",
        ),
    ] = "10m",
    stall_timeout: Annotated[
        str | None,
        typer.Option(
            "--stall-timeout",
            metavar="DURATION",
            help="With --follow: exit 1, naming the cause, when behind with no progress for "
            "this long.",
            show_default=False,
        ),
    ] = None,
    metrics_file: MetricsFileOpt = None,
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
    from esctl.errors import Refused, UsageError
    from esctl.shard import Shard

    if delete_source and not yes and not dry_run:  # a dry run deletes nothing: no --yes
        raise Refused(
            "--delete-source deletes the migrated events from Redis and needs --yes",
            hint="add --yes (nothing was done), or try --dry-run first",
        )
    transforms = _checked_rules(transforms_file)
    opts = core.MigrateOptions(
        **_store(ctx),
        transforms=transforms,
        confirm_restart=yes,
        batch_size=batch_size,
        init_schema=init_schema,
        dry_run=dry_run,
        shard=Shard.from_option(shard),
        restart=restart,
        max_problems=max_problems,
        rate=rate,
        max_redis_latency_ms=max_redis_latency,
        writers=writers,
        toast_compression=_toast(toast_compression),
    )
    if follow:
        from esctl.cli.follow import FollowArgs, run_follow

        run_follow(
            ctx,
            opts,
            FollowArgs(enable_notifications, sweep_interval, stall_timeout, metrics_file, workers),
            refuse={"--dry-run": dry_run, "--delete-source": delete_source},
        )
        return
    if metrics_file is not None or enable_notifications or stall_timeout is not None:
        raise UsageError("--metrics-file, --enable-notifications and --stall-timeout need --follow")
    client = ctx.redis
    with ctx.out.progress(progress, desc="migrating", unit=" commits", unit_scale=True) as bar:
        _count_commits_beside(bar, client, opts)
        outcome = core.migrate_then_prune(
            client,
            opts,
            redis_url=ctx.redis_url,
            workers=workers,
            cluster=ctx.cluster,
            read_from_replicas=ctx.read_from_replicas,
            delete_source=delete_source,
            backup_file=backup_file,
            on_progress=bar.hook(lambda p: _migrated(bar, p)),
        )
    _render_outcome(ctx.out, outcome)
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
            _render_prune(out, outcome.prune)

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
        out.mapping({"run": summary.run_id, **rows, **timing}, title=title)
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
            f"{t['aggregates_left_out']:,} aggregate(s) and {t['events_left_out']:,} event(s) "
            f"left out, {t['events_added_by_split']:,} event(s) added by splits"
            + (
                f"; --restart deleted {t['aggregates_deleted_by_restart']:,} aggregate(s) "
                "migrated with other transforms"
                if t["aggregates_deleted_by_restart"]
                else ""
            )
        )


# --- verify --------------------------------------------------------------------------------


@app.command("verify")
@with_context(Scope.REDIS | Scope.REPLICAS | Scope.PG | Scope.APP)
def verify_command(
    ctx: Context,
    sample: Annotated[
        int | None,
        typer.Option(
            "--sample", metavar="N", min=1, help="Compare a random sample of N aggregates."
        ),
    ] = None,
    shard: ShardOpt = None,
    allow_new_events: Annotated[
        bool,
        typer.Option(
            "--allow-new-events",
            help="Do not count events written to Redis after the last migration as mismatches.",
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            metavar="N",
            min=1,
            max=32,
            help="Processes comparing in parallel, each taking a sub-shard of the aggregates "
            "(default: 2 where there are 2 or more CPUs).",
            show_default=False,
        ),
    ] = defaults.verify_workers_default(),
    problems_file: ProblemsFileOpt = None,
    transforms_file: VerifyTransformsOpt = None,
) -> None:
    """Compare Redis with PostgreSQL per aggregate: counts, versions and content.

    Reports missing_in_pg, extra_in_pg, content_differs, not_migrated_new_events and
    unmigratable_in_redis; exits 3 on any mismatch. Read-only on both sides.

    \b
    Example: esctl migrate verify --app MyService --sample 10000
    """
    from esctl import verify as verify_core
    from esctl.shard import Shard

    out = ctx.out
    opts = verify_core.VerifyOptions(
        **_store(ctx),
        shard=Shard.from_option(shard),
        sample=sample,
        allow_new_events=allow_new_events,
        problems_file=None if problems_file is None else str(problems_file),
        transforms=_checked_rules(transforms_file),
    )
    summary = verify_core.verify_parallel(
        ctx.redis_url,
        opts,
        workers=workers,
        cluster=ctx.cluster,
        read_from_replicas=ctx.read_from_replicas,
    )

    def render() -> None:
        counts = {k.replace("_", " "): v for k, v in summary.counts.items()}
        out.mapping(
            {
                "aggregates compared": summary.aggregates,
                "identical": summary.aggregates_identical,
                "events compared": summary.events_compared,
                **counts,
                "elapsed": out.format_duration(summary.elapsed_s),
            },
            title="migrate verify" + (f" (sample of {sample})" if sample else ""),
        )
        out.problem_summary(
            summary.problems,
            {k: n for k, n in summary.counts.items() if n},
            summary.mismatches,
            summary.problems_where,
            title="mismatches",
            unrecorded="rerun with --problems-file PATH to write every one",
        )
        if summary.migrated_with_transforms:
            out.warn(
                "the migration used transforms "
                f"{summary.migrated_with_transforms}: rerun with --transforms FILE to compare "
                "with the events as the rules make them"
            )

    out.result(summary.as_dict(), render)
    exit_for(problems=summary.mismatches)


# --- status --------------------------------------------------------------------------------

_STATUS_COLUMNS = [
    "shard",
    "status",
    "started",
    "last batch",
    "migrated",
    "quarantined",
    "behind",
    "lag",
]


@app.command("status")
@with_context(Scope.REDIS | Scope.PG | Scope.APP)
def status_command(
    ctx: Context,
    lag: Annotated[
        bool,
        typer.Option(
            "--lag",
            help="Also measure how far PostgreSQL is behind Redis now: reads the length of "
            "every commit list (one SCAN and an LLEN per aggregate).",
        ),
    ] = False,
    max_lag: Annotated[
        str | None,
        typer.Option(
            "--max-lag",
            metavar="DURATION",
            help="Exit 3 when a shard's oldest event not yet in PostgreSQL is older than this "
            "(e.g. 5m, 1h30m); implies --lag.",
            show_default=False,
        ),
    ] = None,
    metrics_file: MetricsFileOpt = None,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Refresh the table in place on a terminal until Ctrl-C."),
    ] = False,
    interval: IntervalOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Where each shard's latest migrate redis-to-pg run stands, from esctl's bookkeeping.

    Per shard: the run's status (running only while its lock holder, a PostgreSQL session,
    is alive; a run recorded as running whose holder is gone is interrupted), when it
    started, its last committed batch, the events migrated and the aggregates quarantined.
    With --lag (or --max-lag) also the lag: the events in Redis commit lists not yet in
    PostgreSQL (quarantined aggregates left out) and the age of the oldest of them. Read-only
    on both sides. Exit 3 when --max-lag is exceeded, 0 otherwise.

    \b
    Example: esctl migrate status --app MyService --max-lag 10m --metrics-file /var/lib/node_exporter/esctl_migrate.prom
    """
    from esctl.cli.live import check_watch
    from esctl.durations import parse_duration
    from esctl.migrate import status as status_core

    out = ctx.out
    limit = parse_duration(max_lag).total_seconds() if max_lag is not None else None
    seconds = check_watch(
        json=out.json, interval=interval, watch=watch, command="esctl migrate status"
    )
    opts = status_core.StatusOptions(**_store(ctx), lag=lag or limit is not None)
    if watch:
        _watch_status(ctx, opts, seconds, metrics_file, limit)
        return
    with ctx.out.progress(progress and opts.lag, desc="measuring lag", unit=" aggregates") as bar:
        report = status_core.migration_status(
            opts, lambda: ctx.redis, on_page=bar.hook(lambda n: bar.update(n))
        )
    if metrics_file is not None:
        from esctl.metrics import write_textfile

        write_textfile(metrics_file, status_core.render_prometheus(report))
    over = report.behind_more_than(limit) if limit is not None else []
    exit_code = EXIT_PROBLEMS if over else 0
    document = report.as_dict() | {
        "max_lag_s": limit,
        "over_max_lag": over,
        "metrics_file": str(metrics_file) if metrics_file else None,
        "exit_code": exit_code,
    }

    def render() -> None:
        if report.shards:
            out.table(*_status_table(report), title=_status_title(report))
        else:
            out.print(_status_title(report))
        for line in _status_notes(report, max_lag, over):
            out.print(line)
        if metrics_file is not None:
            out.info(f"wrote {metrics_file}")

    out.result(document, render)
    exit_for(problems=exit_code)


def _status_title(report: status_core.StatusReport) -> str:
    return f"migrate status: {report.app} into schema {report.pg_schema} ({report.postgresql})"


def _ago(moment: Any, now: Any) -> str:
    """A compact age (``5m6s``, ``2h5m``): the table's time columns stay one token each."""
    if moment is None:
        return "-"
    return format_duration((now - moment).total_seconds()).replace(" ", "")


def _status_table(report: status_core.StatusReport) -> tuple[list[str], list[list[str]]]:
    """The table's columns and rows: one row per shard; ages as of the check."""
    now = report.checked_at
    rows = []
    for s in report.shards:
        lag = s.lag
        rows.append(
            [
                s.shard,
                s.status,
                _ago(s.started_at, now),
                _ago(s.last_batch_at, now),
                f"{s.events_migrated:,}",
                f"{s.aggregates_quarantined:,}",
                "-" if lag is None else f"{lag.events_behind:,}",
                _lag_cell(lag, now),
            ]
        )
    return _STATUS_COLUMNS, rows


def _lag_cell(lag: status_core.Lag | None, now: Any) -> str:
    if lag is None:
        return "-"
    if not lag.events_behind:
        return "0s"
    return format_duration(lag.seconds(now)).replace(" ", "")


def _status_notes(
    report: status_core.StatusReport, max_lag: str | None, over: list[str]
) -> list[str]:
    """The lines under the table: no runs, the whole app's lag, --max-lag exceeded."""
    notes = []
    if not report.shards:
        notes.append(f"no migrate redis-to-pg run of {report.app} into this schema yet")
    lag = report.lag
    if lag is None:
        notes.append("lag not measured (add --lag)")
    else:
        oldest = (
            f"; oldest missing event {format_duration(lag.seconds(report.checked_at))} old"
            if lag.oldest_missing_at is not None
            else ""
        )
        notes.append(
            f"lag (whole app): {lag.events_behind:,} events in {lag.aggregates_behind:,} "
            f"aggregates not yet in PostgreSQL{oldest} ({report.aggregates_scanned:,} "
            f"aggregates scanned in {format_duration(report.lag_elapsed_s)})"
        )
    if over:
        notes.append(f"behind more than --max-lag {max_lag}: shard {', '.join(over)}")
    return notes


def _status_renderable(
    report: status_core.StatusReport,
    max_lag: str | None,
    over: list[str],
    interval: float,
    width: int,
) -> RenderableType:
    """The --watch screen: the table and its notes as one rich renderable, lines wrapped at
    ``width`` (the console soft-wraps, which a live display would crop)."""
    import textwrap

    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    columns, rows = _status_table(report)
    table = Table(show_edge=False, pad_edge=False)
    for name in columns:
        table.add_column(Text(name), overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    stamp = report.checked_at.strftime("%H:%M:%S UTC")
    notes = [
        *_status_notes(report, max_lag, over),
        f"checked {stamp}, every {interval:g} s; Ctrl-C to stop",
    ]

    def wrapped(line: str, style: str = "") -> Text:
        return Text("\n".join(textwrap.wrap(line, max(width, 20))), style=style)

    return Group(wrapped(_status_title(report), "table.title"), table, *(wrapped(n) for n in notes))


def _watch_status(
    ctx: Context,
    opts: status_core.StatusOptions,
    interval: float,
    metrics_file: Path | None,
    limit: float | None,
) -> None:
    """Redraw the status every ``interval`` seconds until Ctrl-C (exit 130, quietly), writing
    the metrics file at each reading when asked."""
    from esctl.cli.live import live_console, watch_until_interrupted
    from esctl.metrics import write_textfile
    from esctl.migrate import status as status_core

    max_lag = None if limit is None else f"{limit:g}s"

    def draw(console: Console) -> RenderableType:
        report = status_core.migration_status(opts, lambda: ctx.redis)
        if metrics_file is not None:
            write_textfile(metrics_file, status_core.render_prometheus(report))
        over = report.behind_more_than(limit) if limit is not None else []
        return _status_renderable(report, max_lag, over, interval, console.width)

    watch_until_interrupted(draw, interval, console=live_console())


# --- plan ----------------------------------------------------------------------------------


@app.command("plan")
@with_context(Scope.REDIS | Scope.PG | Scope.APP)
def plan_command(
    ctx: Context,
    sample: Annotated[
        int,
        typer.Option(
            "--sample", metavar="N", min=1, help="Aggregates to read whole (a random sample)."
        ),
    ] = defaults.PLAN_SAMPLE,
    trial: Annotated[
        bool,
        typer.Option(
            "--trial/--no-trial",
            help="Write the sample into PostgreSQL in a rolled-back transaction to measure size "
            "and speed.",
        ),
    ] = True,
    trial_events: Annotated[
        int,
        typer.Option(
            "--trial-events", metavar="N", min=1, help="At most this many events in the trial."
        ),
    ] = defaults.PLAN_TRIAL_EVENTS,
    toast_compression: Annotated[
        str,
        typer.Option(
            "--toast-compression",
            metavar="METHOD",
            help="As for redis-to-pg: the compression the size estimate assumes (lz4, pglz, "
            "or 'server').",
        ),
    ] = "lz4",
    transforms_file: PlanTransformsOpt = None,
) -> None:
    """Estimate a migration: events, bytes in Redis and in PostgreSQL, and the run time.

    Counts aggregates and events exactly (SCAN + LLEN); reads a random sample of aggregates
    whole for the stored and decompressed (JSON) bytes, the compressed and legacy shares and
    the problems migrate would quarantine. Then writes the sample's clean aggregates with the
    migration's own writer into a throwaway copy of the tables, inside a transaction that is
    rolled back, to measure the PostgreSQL size (tables, indexes, TOAST) and the write speed.
    Nothing stays in PostgreSQL: the target tables are not written and their sequences do not
    move. Read-only on Redis. The run time is the events at the trial's end-to-end rate
    (reading, decoding and writing one after the other: it errs on the long side). Exits 0
    even when the sample has problems: it is an estimate (run 'migrate redis-to-pg --dry-run'
    for the full list).

    --transforms FILE puts the sample's clean aggregates through the rules: per rule, the
    events and bytes it left out, the events it changed (renamed, upcast) and added (split),
    the aggregates it failed on (migrate quarantines them); the trial writes the transformed
    rows, so the PostgreSQL size is the size after the rules.

    \b
    Example: esctl migrate plan --app MyService --sample 5000 --json
    """
    from esctl import plan as plan_core

    opts = plan_core.PlanOptions(
        **_store(ctx),
        sample=sample,
        trial=trial,
        trial_events=trial_events,
        toast_compression=_toast(toast_compression),
        transforms=_plan_rules(transforms_file),
    )
    summary = plan_core.plan(ctx.redis, opts)
    ctx.out.result(summary.as_dict(), lambda: _render_plan(ctx.out, summary))


def _plan_rules(path: Path | None) -> Any:
    """The --transforms rules of migrate plan, read before any server is asked (exit 2)."""
    if path is None:
        return None
    from esctl.transforms import load_rules

    return load_rules(path)


def _render_plan(out: Output, summary: plan_core.PlanSummary) -> None:
    about = "" if summary.exact else "~"
    size = out.format_bytes
    out.mapping(
        {
            "aggregates": summary.aggregates,
            "events": summary.events,
            "sample": f"{summary.sample_aggregates:,} aggregates, "
            f"{summary.sample_events:,} events" + (" (all)" if summary.exact else ""),
            "stored in Redis (payloads)": about + size(summary.stored_bytes_estimate),
            "decompressed JSON": about + size(summary.json_bytes_estimate),
            "compressed events": f"{summary.compressed_share:.1%}",
            "legacy-layout events": f"{summary.legacy_share:.1%}",
            "PostgreSQL size": "~" + size(summary.pg_bytes_estimate),
            "  of which event_data": "~" + size(summary.pg_event_data_bytes_estimate),
            "trial": f"{summary.trial_events:,} events at "
            f"{summary.trial_events_per_s or 0:,.0f} events/s (read "
            f"{summary.read_events_per_s or 0:,.0f}/s, write "
            f"{summary.write_events_per_s or 0:,.0f}/s)",
            "estimated run time": "~" + out.format_duration(summary.estimated_seconds),
            "sampled aggregates with problems": summary.aggregates_with_problems_in_sample,
        },
        title=f"migrate plan for {summary.app} into schema {summary.pg_schema}",
    )
    if summary.trial_note:
        out.warn(summary.trial_note)
    if summary.transforms is not None:
        _render_plan_rules(out, summary.transforms)
    if summary.problems_in_sample:
        out.table(
            ["problem", "sampled aggregates"],
            sorted(summary.problems_in_sample.items()),
            title="problems in the sample (migrate would quarantine these aggregates)",
        )


def _render_plan_rules(out: Output, t: dict[str, Any]) -> None:
    out.table(
        ["rule", "left out", "bytes left out", "changed", "added (split)", "failed aggregates"],
        [
            (
                r["rule"],
                r["events_left_out"],
                out.format_bytes(r["bytes_left_out"]),
                r["events_changed"],
                r["events_added"],
                r["aggregates_failed"],
            )
            for r in t["rules"]
        ],
        title=f"transforms {t['fingerprint'][:16]} ({t['file']}) on the sample: "
        f"{t['sample_events_before']:,} events -> {t['sample_events_after']:,}, "
        f"{t['sample_aggregates_left_out']:,} aggregate(s) left out whole; the store after "
        f"the rules: ~{t['events_after_estimate']:,} events",
    )


# --- prune ---------------------------------------------------------------------------------


@app.command("prune")
@with_context(Scope.REDIS | Scope.PG | Scope.APP)
def prune_command(
    ctx: Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
    backup_file: BackupFileOpt = None,
    dry_run: DryRunOpt = False,
    shard: ShardOpt = None,
    transforms_file: PruneTransformsOpt = None,
    include_left_out: Annotated[
        bool,
        typer.Option(
            "--include-left-out",
            help="With --transforms: also delete aggregates whose events the rules all leave "
            "out (PostgreSQL holds none of them by design); needs --backup-file.",
        ),
    ] = False,
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
    missing in between), or changed_since_verify. Exit 75: another prune holds the lock.

    Without --yes it asks on a terminal and refuses (exit 2) without one. A run killed
    between deleting a commit list and its payload fields leaves those fields behind; they
    are recorded in esctl.prune_pending and the next prune deletes them first. Restore from a
    backup: for each line in index order, RPUSH list_key commit_id and HSET hash_key
    commit_id value (fields named *_b64 are base64).

    \b
    Example: esctl migrate prune --app MyService --yes --backup-file pruned-2024-05-01.jsonl.zst
    """
    from esctl import prune as prune_core
    from esctl.shard import Shard

    out = ctx.out
    opts = prune_core.PruneOptions(
        **_store(ctx),
        dry_run=dry_run,
        backup_file=backup_file,
        shard=Shard.from_option(shard),
        transforms=_checked_rules(transforms_file),
        include_left_out=include_left_out,
    )
    if not (yes or dry_run):
        out.confirm(
            f"Delete from Redis the events of every aggregate of {opts.app} that is identical "
            f"in PostgreSQL (schema {opts.pg_schema})?",
            action="migrate prune deletes events from Redis",
        )
    summary = prune_core.prune(ctx.redis, opts)
    out.result(summary.as_dict(), lambda: _render_prune(out, summary))
    exit_for(problems=summary.found_problems)


def _render_prune(out: Output, summary: prune_core.PruneSummary) -> None:
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
            "backup": f"{summary.backup_file} ({summary.backup_events:,} events)"
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
