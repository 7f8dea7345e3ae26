"""``esctl migrate``: move event storage from Redis into PostgreSQL."""

from __future__ import annotations

import os
import threading
from dataclasses import astuple
from typing import TYPE_CHECKING, Annotated, Any

import typer

from esctl import defaults
from esctl.cli import output
from esctl.cli.errors import EXIT_PROBLEMS, reporting
from esctl.cli.options import (
    AppOpt,
    ClusterOpt,
    ConfigOpt,
    DebugOpt,
    DryRunOpt,
    JsonOpt,
    PgDsnOpt,
    PgSchemaOpt,
    ProfileOpt,
    ReadFromReplicasOpt,
    RedisUrlOpt,
    ShardOpt,
    settings,
)

if TYPE_CHECKING:
    from esctl import migrate as core
    from esctl import prune as prune_core
    from esctl import redisio

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


@app.command("redis-to-pg")
def redis_to_pg(
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
        typer.Option("--restart", help="Start a new run instead of resuming an unfinished one."),
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
    toast_compression: Annotated[
        str,
        typer.Option(
            "--toast-compression",
            metavar="METHOD",
            help="default_toast_compression for the writers' sessions (lz4, pglz, or 'server').",
        ),
    ] = "lz4",
    progress: Annotated[
        bool,
        typer.Option("--progress/--no-progress", help="Progress bar on a terminal (stderr)."),
    ] = True,
    delete_source: Annotated[
        bool,
        typer.Option(
            "--delete-source",
            help="After a migration that did not stop early, run 'migrate prune' for the same "
            "app (and shard); needs --yes (with --dry-run: a dry-run prune).",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Confirm --delete-source.")] = False,
    backup_file: BackupFileOpt = None,
    redis_url: RedisUrlOpt = None,
    cluster: ClusterOpt = False,
    read_from_replicas: ReadFromReplicasOpt = False,
    pg_dsn: PgDsnOpt = None,
    pg_schema: PgSchemaOpt = None,
    app_name: AppOpt = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Copy committed events from Redis into PostgreSQL: batched, resumable, idempotent.

    Rerun the same command after a crash to continue; run it nightly to move what is new.
    Aggregates with problems are skipped whole, recorded in esctl.quarantine, and make the
    exit code 3. With --delete-source --yes, prune (see 'migrate prune') runs afterwards
    (with --backup-file, writing what it deletes there first); its summary is under "prune"
    in the JSON.

    \b
    Example: esctl migrate redis-to-pg --app MyService --init-schema
    """
    from esctl import migrate as core
    from esctl import redisio
    from esctl.shard import Shard

    with reporting(json_mode=json_, debug=debug):
        _check_delete_source(
            delete_source=delete_source, yes=yes, dry_run=dry_run, backup_file=backup_file
        )
        resolved = settings(
            redis_url=redis_url,
            pg_dsn=pg_dsn,
            pg_schema=pg_schema,
            app=app_name,
            profile=profile,
            config=config,
        )
        opts = core.MigrateOptions(
            app=resolved.require("app"),
            pg_dsn=resolved.pg_dsn,
            pg_schema=resolved.pg_schema,
            batch_size=batch_size,
            init_schema=init_schema,
            dry_run=dry_run,
            shard=Shard.parse(shard),
            restart=restart,
            max_problems=max_problems,
            rate=rate,
            max_redis_latency_ms=max_redis_latency,
            writers=writers,
            toast_compression=None if toast_compression == "server" else toast_compression,
        )
        client = redisio.connect(
            resolved.redis_url, cluster=cluster, read_from_replicas=read_from_replicas
        )
        bar = (
            _ProgressBar(client, opts)
            if progress and not json_ and output.stderr_is_terminal()
            else None
        )
        try:
            if workers > 1:
                summary = core.migrate_parallel(
                    resolved.redis_url,
                    opts,
                    workers=workers,
                    cluster=cluster,
                    read_from_replicas=read_from_replicas,
                    on_progress=bar.update if bar else None,
                )
            else:
                summary = core.migrate_redis_to_pg(
                    client, opts, on_progress=bar.update if bar else None
                )
        finally:
            if bar:
                bar.close()
        document = summary.as_dict()
        pruned = (
            _prune_source(client, opts, summary, document, backup_file=backup_file)
            if delete_source
            else None
        )
        if json_:
            output.emit_json(document)
        else:
            _render(summary)
            if pruned is not None:
                _render_prune(pruned)
        if summary.aggregates_quarantined or summary.stopped_early:
            raise typer.Exit(EXIT_PROBLEMS)
        if pruned is not None and pruned.found_problems:
            raise typer.Exit(EXIT_PROBLEMS)


def _render(summary: core.MigrationSummary) -> None:
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
        "elapsed": f"{summary.elapsed_s:.1f} s",
        "events/s": f"{summary.events_per_s:,.0f}",
    }
    if summary.this_invocation is None:
        output.emit_mapping({"run": summary.run_id, **rows, **timing}, title=title)
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
        output.emit_table(
            ["", "this invocation", "whole run"],
            [
                ("run", "resumed", summary.run_id),
                *((name, mine[name], whole.get(name)) for name in rows),
                *((name, value, None) for name, value in timing.items()),
            ],
            title=title,
        )
    if summary.problems:
        shown = summary.problems[:50]
        output.emit_table(
            ["kind", "key", "detail"],
            [(p["kind"], p["key"], p["detail"]) for p in shown],
            title=f"problems ({len(summary.problems)}; quarantined aggregates are in "
            "esctl.quarantine)",
        )
    if summary.stopped_early:
        output.warn(f"stopped early: {summary.stopped_early}")


class _ProgressBar:
    """tqdm on stderr; the total comes from a quick count running beside the migration."""

    def __init__(self, client: redisio.RedisClient, opts: core.MigrateOptions) -> None:
        from tqdm import tqdm

        from esctl import migrate as core

        self.bar = tqdm(unit=" commits", unit_scale=True, dynamic_ncols=True, desc="migrating")
        self.lock = threading.Lock()

        def count() -> None:
            try:
                _, entries = core.count_commits(client, opts.app, opts.shard)
            except Exception:  # the bar just stays without an ETA
                return
            with self.lock:
                self.bar.total = entries
                self.bar.refresh()

        threading.Thread(target=count, daemon=True, name="esctl-count").start()

    def update(self, p: core.Progress) -> None:
        with self.lock:
            self.bar.n = p.commits_seen
            self.bar.set_postfix(
                migrated=f"{p.events_migrated:,}",
                quarantined=f"{p.aggregates_quarantined:,}",
                refresh=False,
            )
            self.bar.refresh()

    def close(self) -> None:
        with self.lock:
            self.bar.close()


@app.command("verify")
def verify_command(
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
    redis_url: RedisUrlOpt = None,
    cluster: ClusterOpt = False,
    read_from_replicas: ReadFromReplicasOpt = False,
    pg_dsn: PgDsnOpt = None,
    pg_schema: PgSchemaOpt = None,
    app_name: AppOpt = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare Redis with PostgreSQL per aggregate: counts, versions and content.

    Reports missing_in_pg, extra_in_pg, content_differs, not_migrated_new_events and
    unmigratable_in_redis; exits 3 on any mismatch. Read-only on both sides.

    \b
    Example: esctl migrate verify --app MyService --sample 10000
    """
    from esctl import verify as verify_core
    from esctl.shard import Shard

    with reporting(json_mode=json_, debug=debug):
        resolved = settings(
            redis_url=redis_url,
            pg_dsn=pg_dsn,
            pg_schema=pg_schema,
            app=app_name,
            profile=profile,
            config=config,
        )
        opts = verify_core.VerifyOptions(
            app=resolved.require("app"),
            pg_dsn=resolved.pg_dsn,
            pg_schema=resolved.pg_schema,
            shard=Shard.parse(shard),
            sample=sample,
            allow_new_events=allow_new_events,
        )
        summary = verify_core.verify_parallel(
            resolved.redis_url,
            opts,
            workers=workers,
            cluster=cluster,
            read_from_replicas=read_from_replicas,
        )
        if json_:
            output.emit_json(summary.as_dict())
        else:
            counts = {k.replace("_", " "): v for k, v in summary.counts.items()}
            output.emit_mapping(
                {
                    "aggregates compared": summary.aggregates,
                    "identical": summary.aggregates_identical,
                    "events compared": summary.events_compared,
                    **counts,
                    "elapsed": f"{summary.elapsed_s:.1f} s",
                },
                title="migrate verify" + (f" (sample of {sample})" if sample else ""),
            )
            if summary.problems:
                output.emit_table(
                    ["kind", "key", "detail"],
                    [(p["kind"], p["key"], p["detail"]) for p in summary.problems[:50]],
                    title=f"mismatches ({summary.mismatches})",
                )
        if summary.mismatches:
            raise typer.Exit(EXIT_PROBLEMS)


# --- plan ----------------------------------------------------------------------------------


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


@app.command("plan")
def plan_command(
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
    redis_url: RedisUrlOpt = None,
    cluster: ClusterOpt = False,
    pg_dsn: PgDsnOpt = None,
    pg_schema: PgSchemaOpt = None,
    app_name: AppOpt = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
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

    \b
    Example: esctl migrate plan --app MyService --sample 5000 --json
    """
    from esctl import plan as plan_core
    from esctl import redisio

    with reporting(json_mode=json_, debug=debug):
        resolved = settings(
            redis_url=redis_url,
            pg_dsn=pg_dsn,
            pg_schema=pg_schema,
            app=app_name,
            profile=profile,
            config=config,
        )
        opts = plan_core.PlanOptions(
            app=resolved.require("app"),
            pg_dsn=resolved.pg_dsn,
            pg_schema=resolved.pg_schema,
            sample=sample,
            trial=trial,
            trial_events=trial_events,
            toast_compression=None if toast_compression == "server" else toast_compression,
        )
        client = redisio.connect(resolved.redis_url, cluster=cluster)
        summary = plan_core.plan(client, opts)
        if json_:
            output.emit_json(summary.as_dict())
            return
        about = "" if summary.exact else "~"
        output.emit_mapping(
            {
                "aggregates": summary.aggregates,
                "events": summary.events,
                "sample": f"{summary.sample_aggregates:,} aggregates, "
                f"{summary.sample_events:,} events" + (" (all)" if summary.exact else ""),
                "stored in Redis (payloads)": about + _bytes(summary.stored_bytes_estimate),
                "decompressed JSON": about + _bytes(summary.json_bytes_estimate),
                "compressed events": f"{summary.compressed_share:.1%}",
                "legacy-layout events": f"{summary.legacy_share:.1%}",
                "PostgreSQL size": "~" + _bytes(summary.pg_bytes_estimate),
                "  of which event_data": "~" + _bytes(summary.pg_event_data_bytes_estimate),
                "trial": f"{summary.trial_events:,} events at "
                f"{summary.trial_events_per_s or 0:,.0f} events/s (read "
                f"{summary.read_events_per_s or 0:,.0f}/s, write "
                f"{summary.write_events_per_s or 0:,.0f}/s)",
                "estimated run time": "~" + _duration(summary.estimated_seconds),
                "sampled aggregates with problems": summary.aggregates_with_problems_in_sample,
            },
            title=f"migrate plan for {summary.app} into schema {summary.pg_schema}",
        )
        if summary.trial_note:
            output.warn(summary.trial_note)
        if summary.problems_in_sample:
            output.emit_table(
                ["problem", "sampled aggregates"],
                sorted(summary.problems_in_sample.items()),
                title="problems in the sample (migrate would quarantine these aggregates)",
            )


# --- prune ---------------------------------------------------------------------------------


def _check_delete_source(
    *, delete_source: bool, yes: bool, dry_run: bool, backup_file: str | None
) -> None:
    """redis-to-pg --delete-source needs --yes (a dry run deletes nothing and needs none);
    --backup-file belongs to it and must be a new file in an existing directory: checked
    before the migration, not after an hour of it."""
    from esctl.errors import Refused, UsageError

    if delete_source and not yes and not dry_run:
        raise Refused(
            "--delete-source deletes the migrated events from Redis and needs --yes",
            hint="add --yes (nothing was done), or try --dry-run first",
        )
    if backup_file is None:
        return
    if not delete_source:
        raise UsageError(
            "--backup-file is the backup of --delete-source; redis-to-pg alone deletes nothing",
            hint="add --delete-source --yes, or drop --backup-file",
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


def _prune_source(
    client: redisio.RedisClient,
    opts: core.MigrateOptions,
    summary: core.MigrationSummary,
    document: dict[str, object],
    *,
    backup_file: str | None,
) -> prune_core.PruneSummary | None:
    """The prune of redis-to-pg --delete-source; its summary goes under "prune"."""
    from esctl import prune as prune_core

    document["prune"] = None
    if summary.stopped_early is not None:
        output.warn("--delete-source: nothing pruned because the migration stopped early")
        return None
    result = prune_core.prune(
        client,
        prune_core.PruneOptions(
            app=opts.app,
            pg_dsn=opts.pg_dsn,
            pg_schema=opts.pg_schema,
            dry_run=opts.dry_run,
            backup_file=backup_file,
            shard=opts.shard,
        ),
    )
    document["prune"] = result.as_dict()
    return result


def _render_prune(summary: prune_core.PruneSummary) -> None:
    would = "would be " if summary.dry_run else ""
    output.emit_mapping(
        {
            "aggregates examined": summary.aggregates_examined,
            f"aggregates {would}pruned": summary.aggregates_pruned,
            f"events {would}deleted": summary.events_deleted,
            "skipped: not migrated yet": summary.skipped_not_migrated,
            "skipped: unmigratable (quarantined)": summary.skipped_unmigratable,
            "skipped: differ from PostgreSQL": summary.skipped_mismatch,
            "changed since verified (left alone)": summary.changed_since_verify,
            "orphan fields of an earlier run cleaned": summary.orphan_fields_cleaned,
            "used_memory before": _bytes(summary.used_memory_before),
            "used_memory after": _bytes(summary.used_memory_after),
            "backup": f"{summary.backup_file} ({summary.backup_events:,} events)"
            if summary.backup_file
            else "-",
            "elapsed": f"{summary.elapsed_s:.1f} s",
        },
        title="migrate prune" + (" (dry run: nothing deleted)" if summary.dry_run else ""),
    )
    if summary.problems:
        output.emit_table(
            ["kind", "key", "detail"],
            [(p["kind"], p["key"], p["detail"]) for p in summary.problems[:50]],
            title=f"problems ({summary.skipped_mismatch + summary.changed_since_verify})",
        )


def _confirm_prune(*, yes: bool, dry_run: bool, json_: bool, app_name: str, schema: str) -> None:
    """--yes, or a yes typed on a terminal; never waits for an answer without a terminal."""
    from esctl.errors import Refused

    if yes or dry_run:
        return
    if not json_ and output.stdin_is_terminal() and output.stderr_is_terminal():
        question = (
            f"Delete from Redis the events of every aggregate of {app_name} that is identical "
            f"in PostgreSQL (schema {schema})?"
        )
        if typer.confirm(question, default=False, err=True):
            return
        raise Refused(
            "not confirmed; nothing was deleted", hint="add --yes to prune without asking"
        )
    raise Refused(
        "migrate prune deletes events from Redis and needs --yes when there is no terminal "
        "to confirm on",
        hint="add --yes (nothing was done), or try --dry-run first",
    )


@app.command("prune")
def prune_command(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
    backup_file: BackupFileOpt = None,
    dry_run: DryRunOpt = False,
    shard: ShardOpt = None,
    redis_url: RedisUrlOpt = None,
    cluster: ClusterOpt = False,
    pg_dsn: PgDsnOpt = None,
    pg_schema: PgSchemaOpt = None,
    app_name: AppOpt = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Free Redis memory: delete the events of aggregates that PostgreSQL holds identically.

    Only aggregates that compare identical right now (as migrate verify compares) are deleted:
    the commit list by a script that deletes it only if it still has the verified length, first
    and last commit id, then the payload fields. One that gained a commit in between is left
    alone and reported as changed_since_verify. Queues and snapshots are never touched. Run it
    only once the services read their events from PostgreSQL.

    Skipped and exit 0: aggregates not migrated yet or with newer events (expected while a
    migration is partial) and unmigratable ones (migrate quarantines and reports those).
    Exit 3: PostgreSQL holds other data than Redis (content_differs, extra_in_pg, versions
    missing in between), or changed_since_verify. Exit 75: another prune holds the lock.

    Without --yes it asks on a terminal and refuses (exit 1) without one. A run killed
    between deleting a commit list and its payload fields leaves those fields behind; they
    are recorded in esctl.prune_pending and the next prune deletes them first. Restore from a
    backup: for each line in index order, RPUSH list_key commit_id and HSET hash_key
    commit_id value (fields named *_b64 are base64).

    \b
    Example: esctl migrate prune --app MyService --yes --backup-file pruned-2024-05-01.jsonl.zst
    """
    from esctl import prune as prune_core
    from esctl import redisio
    from esctl.shard import Shard

    with reporting(json_mode=json_, debug=debug):
        resolved = settings(
            redis_url=redis_url,
            pg_dsn=pg_dsn,
            pg_schema=pg_schema,
            app=app_name,
            profile=profile,
            config=config,
        )
        opts = prune_core.PruneOptions(
            app=resolved.require("app"),
            pg_dsn=resolved.pg_dsn,
            pg_schema=resolved.pg_schema,
            dry_run=dry_run,
            backup_file=backup_file,
            shard=Shard.parse(shard),
        )
        _confirm_prune(
            yes=yes, dry_run=dry_run, json_=json_, app_name=opts.app, schema=opts.pg_schema
        )
        client = redisio.connect(resolved.redis_url, cluster=cluster)
        summary = prune_core.prune(client, opts)
        if json_:
            output.emit_json(summary.as_dict())
        else:
            _render_prune(summary)
        if summary.found_problems:
            raise typer.Exit(EXIT_PROBLEMS)
