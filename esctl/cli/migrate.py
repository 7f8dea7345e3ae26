"""``esctl migrate``: move event storage from Redis into PostgreSQL."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from esctl import migrate as core
from esctl import redisio
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
    RedisUrlOpt,
    settings,
)
from esctl.shard import Shard

app = typer.Typer(no_args_is_help=True, help="Move event storage from Redis into PostgreSQL.")

ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="Only aggregates whose id hashes to shard I of N (CRC-32 of the id mod N), e.g. 0/4.",
        show_default=False,
    ),
]


@app.command("redis-to-pg")
def redis_to_pg(
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Events per transaction.")
    ] = core.DEFAULT_BATCH_SIZE,
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
            "--max-problems", min=0, help="Stop once more aggregates than this had problems."
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option("--rate", min=1, help="At most this many events read per second."),
    ] = None,
    max_redis_latency: Annotated[
        float | None,
        typer.Option(
            "--max-redis-latency",
            min=0.1,
            help="Back off while a Redis round trip takes longer than this many milliseconds.",
        ),
    ] = None,
    writers: Annotated[
        int, typer.Option("--writers", min=1, max=8, help="PostgreSQL writer connections.")
    ] = 2,
    toast_compression: Annotated[
        str,
        typer.Option(
            "--toast-compression",
            help="default_toast_compression for the writers' sessions (lz4, pglz, or 'server').",
        ),
    ] = "lz4",
    progress: Annotated[
        bool,
        typer.Option("--progress/--no-progress", help="Progress bar on a terminal (stderr)."),
    ] = True,
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
    """Copy committed events from Redis into PostgreSQL: batched, resumable, idempotent.

    Rerun the same command after a crash to continue; run it nightly to move what is new.
    Aggregates with problems are skipped whole, recorded in esctl.quarantine, and make the
    exit code 3.

    Example: esctl migrate redis-to-pg --app MyService --init-schema
    """
    with reporting(json_mode=json_, debug=debug):
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
        client = redisio.connect(resolved.redis_url, cluster=cluster)
        bar = (
            _ProgressBar(client, opts)
            if progress and not json_ and output.stderr_is_terminal()
            else None
        )
        try:
            summary = core.migrate_redis_to_pg(
                client, opts, on_progress=bar.update if bar else None
            )
        finally:
            if bar:
                bar.close()
        document = summary.as_dict()
        if json_:
            output.emit_json(document)
        else:
            _render(summary)
        if summary.aggregates_quarantined or summary.stopped_early:
            raise typer.Exit(EXIT_PROBLEMS)


def _render(summary: core.MigrationSummary) -> None:
    verb = "would migrate" if summary.dry_run else "migrated"
    output.emit_mapping(
        {
            "run": summary.run_id + (" (resumed)" if summary.resumed else ""),
            "aggregates examined": summary.aggregates,
            "aggregates unchanged": summary.aggregates_unchanged,
            f"events {verb}": summary.events_migrated,
            "events already present": summary.events_already_present,
            "aggregates quarantined": summary.aggregates_quarantined,
            "events quarantined": summary.events_quarantined,
            "elapsed": f"{summary.elapsed_s:.1f} s",
            "events/s": f"{summary.events_per_s:,.0f}",
        },
        title="migrate redis-to-pg" + (" (dry run: nothing written)" if summary.dry_run else ""),
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
                migrated=p.events_migrated, quarantined=p.aggregates_quarantined, refresh=False
            )
            self.bar.refresh()

    def close(self) -> None:
        with self.lock:
            self.bar.close()


@app.command("verify")
def verify_command(
    sample: Annotated[
        int | None,
        typer.Option("--sample", min=1, help="Compare a random sample of N aggregates."),
    ] = None,
    shard: ShardOpt = None,
    allow_new_events: Annotated[
        bool,
        typer.Option(
            "--allow-new-events",
            help="Do not count events written to Redis after the last migration as mismatches.",
        ),
    ] = False,
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
    """Compare Redis with PostgreSQL per aggregate: counts, versions and content.

    Reports missing_in_pg, extra_in_pg, content_differs, not_migrated_new_events and
    unmigratable_in_redis; exits 3 on any mismatch. Read-only on both sides.

    Example: esctl migrate verify --app MyService --sample 10000
    """
    from esctl import verify as verify_core

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
        client = redisio.connect(resolved.redis_url, cluster=cluster)
        summary = verify_core.verify(client, opts)
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
