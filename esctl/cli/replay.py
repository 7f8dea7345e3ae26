"""``esctl replay``: push stored events through read models again (queues, Python projections,
stdout)."""

from __future__ import annotations

import enum
import os
import sys
import threading
from typing import IO, TYPE_CHECKING, Annotated, Any, cast

import typer

from esctl import defaults, errors
from esctl.cli import output
from esctl.cli.errors import EXIT_FAILED, EXIT_PROBLEMS, reporting
from esctl.cli.options import (
    AggregatesOpt,
    AggregateTypeOpt,
    AppOpt,
    ClusterOpt,
    ConfigOpt,
    DebugOpt,
    DryRunOpt,
    EnvOpt,
    EventTypesOpt,
    JsonOpt,
    PgDsnOpt,
    PgSchemaOpt,
    ProfileOpt,
    RedisUrlOpt,
    ShardOpt,
    SinceOpt,
    UntilOpt,
    WhereOpt,
    YesOpt,
    settings,
)

if TYPE_CHECKING:
    from esctl import replay as core


class FromOpt(enum.StrEnum):
    redis = "redis"
    pg = "pg"


class ToOpt(enum.StrEnum):
    queue = "queue"
    stdout = "stdout"
    projection = "projection"


class OrderOpt(enum.StrEnum):
    aggregate = "aggregate"
    time = "time"


def replay(
    source: Annotated[
        FromOpt,
        typer.Option(
            "--from",
            help="Read the events from Redis (commit lists) or from the migrated PostgreSQL "
            "tables.",
            show_default=False,
        ),
    ],
    target: Annotated[
        ToOpt,
        typer.Option(
            "--to",
            help="queue: republish to the subscribers' PublishedEvents lists; projection: a "
            "Python projection (--projection); stdout: JSON lines.",
            show_default=False,
        ),
    ],
    types: EventTypesOpt = None,
    aggregate_type: AggregateTypeOpt = None,
    aggregates: AggregatesOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    where: WhereOpt = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", metavar="N", min=0, help="At most N events.", show_default=False),
    ] = None,
    all_events: Annotated[
        bool,
        typer.Option(
            "--all", help="Replay every event (required when no selector above is given)."
        ),
    ] = False,
    order: Annotated[
        OrderOpt,
        typer.Option(
            "--order",
            help="Across aggregates: one aggregate after another (bounded memory), or by time "
            "(PostgreSQL sorts; from Redis an external sort in $TMPDIR). Within an aggregate "
            "always by version.",
        ),
    ] = OrderOpt.aggregate,
    subscribers: Annotated[
        list[str] | None,
        typer.Option(
            "--subscriber",
            metavar="SUB",
            help="--to queue: only this subscriber (repeatable); must be a member of "
            "Subscribers:{ENV:TYPE} for some selected type unless --force.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="--to queue: publish to the named subscribers even if not members."
        ),
    ] = False,
    max_queue_length: Annotated[
        int | None,
        typer.Option(
            "--max-queue-length",
            min=1,
            metavar="N",
            help="--to queue: wait while a target PublishedEvents list holds N or more.",
            show_default=False,
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            metavar="N",
            min=0.001,
            help="At most N events per second.",
            show_default=False,
        ),
    ] = None,
    confirm_over: Annotated[
        int,
        typer.Option(
            "--confirm-over",
            min=0,
            metavar="N",
            help="--to queue: ask before publishing more than N events (unless --yes).",
        ),
    ] = defaults.REPLAY_CONFIRM_OVER,
    projection: Annotated[
        str | None,
        typer.Option(
            "--projection",
            metavar="SPEC",
            help="--to projection: MODULE:CALLABLE or path/to/file.py:CALLABLE (a function "
            "taking an event, or an object/class with handle(event) and optional setup(ctx), "
            "flush(ctx), teardown(ctx)).",
            show_default=False,
        ),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            metavar="NAME",
            help="--to projection: keep the position in esctl.projection_checkpoint, committed "
            "with each batch; a rerun resumes (exactly once for PostgreSQL writes).",
            show_default=False,
        ),
    ] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="Start the --checkpoint over from the beginning.")
    ] = False,
    skip_errors: Annotated[
        bool,
        typer.Option(
            "--skip-errors",
            help="--to projection: record failing events in esctl.projection_dead_letter and "
            "go on (default: stop at the first).",
        ),
    ] = False,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", metavar="N", min=1, help="--to projection: events per transaction."
        ),
    ] = defaults.REPLAY_BATCH_SIZE,
    shard: ShardOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    progress: Annotated[
        bool,
        typer.Option("--progress/--no-progress", help="Progress bar on a terminal (stderr)."),
    ] = True,
    redis_url: RedisUrlOpt = None,
    cluster: ClusterOpt = False,
    pg_dsn: PgDsnOpt = None,
    pg_schema: PgSchemaOpt = None,
    app_name: AppOpt = None,
    env: EnvOpt = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Replay stored events: republish them to subscribers, feed a projection, or print them.

    Select with the filters of 'events query' (or --all). --to queue publishes each event as
    the library does: LPUSH of the uncompressed JSON onto every subscriber's PublishedEvents,
    then PUBLISH 1 on ENV:TYPE, one transaction per event; more than --confirm-over events
    are shown per subscriber and type and asked about (refused without a terminal unless
    --yes). --to projection runs a Python projection in batches, each one PostgreSQL
    transaction with the --checkpoint position. --to stdout prints JSON lines (the summary
    then goes to stderr). --dry-run counts what would be replayed and writes nothing. Exit 3:
    done, problems reported (unreadable events, dead-lettered events); 1: stopped on an error;
    75: another replay holds the checkpoint or a queue.

    --shard I/N replays only the aggregates whose id hashes to I (CRC-32 of the id mod N), so
    N processes can feed one projection at once, each with its own checkpoint row and lock
    under one --checkpoint name (all with the same N). With --to stdout it prints that share;
    --to queue refuses it.

    \b
    Example: esctl replay --from redis --aggregate 1042 --to queue --subscriber Reporting.Worker --env production
    """
    from esctl import redisio
    from esctl import replay as core
    from esctl.shard import Shard

    streaming = target == ToOpt.stdout and not dry_run  # stdout carries the events
    # ... as JSON lines, whatever happens: an error is the stream's last line.
    stream = output.JsonStream() if streaming else None
    with reporting(json_mode=json_ and not streaming, debug=debug, stream=stream):
        resolved = settings(
            redis_url=redis_url,
            pg_dsn=pg_dsn,
            pg_schema=pg_schema,
            app=app_name,
            env=env,
            profile=profile,
            config=config,
        )
        options = core.ReplayOptions(
            source=source.value,
            target=target.value,
            app=resolved.require("app"),
            selection=core.Selection(
                types=tuple(types or ()),
                aggregate_type=aggregate_type,
                aggregates=tuple(aggregates or ()),
                since=since,
                until=until,
                where=tuple(where or ()),
                limit=limit,
                all_events=all_events,
            ),
            order=order.value,
            env=resolved.require("env") if target == ToOpt.queue else resolved.get("env"),
            pg_dsn=resolved.pg_dsn,
            pg_schema=resolved.pg_schema,
            subscribers=tuple(subscribers or ()),
            force=force,
            max_queue_length=max_queue_length,
            rate=rate,
            confirm_over=confirm_over,
            projection=projection,
            checkpoint=checkpoint,
            reset=reset,
            skip_errors=skip_errors,
            batch_size=batch_size,
            dry_run=dry_run,
            shard=Shard.parse(shard),
        )
        options.check()
        projection_adapter = None
        if target == ToOpt.projection:
            from esctl.projections import load_projection

            projection_adapter = load_projection(projection or "")
        client = (
            redisio.connect(resolved.redis_url, cluster=cluster)
            if source == FromOpt.redis or target == ToOpt.queue
            else None
        )
        confirm = (
            _confirmer(yes, options.confirm_over) if target == ToOpt.queue and not dry_run else None
        )
        bar = _ProgressBar() if progress and not json_ and output.stderr_is_terminal() else None
        try:
            summary = core.replay(
                options,
                redis_client=client,
                confirm=confirm,
                out=cast("IO[bytes]", stream) if stream is not None else sys.stdout.buffer,
                projection=projection_adapter,
                on_progress=bar.update if bar else None,
            )
            if bar:  # the last count: progress is reported per batch, not at the end
                bar.update(core.ReplayProgress(events=summary.events, messages=summary.messages))
        except BrokenPipeError:
            # --to stdout and the reader went away (`| head`): stop quietly, like Unix tools.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None
        finally:
            if bar:
                bar.close()
        if stream is not None:
            stream.close()
        _render(summary, json_=json_, to_stderr=streaming)
        if summary.stopped is not None:
            _render_stopped(summary, options)
            raise typer.Exit(EXIT_FAILED)
        if summary.found_problems:
            raise typer.Exit(EXIT_PROBLEMS)


# --- confirmation --------------------------------------------------------------------------


def _confirmer(yes: bool, threshold: int) -> core.Confirm | None:
    """None when --yes; otherwise a question asked on the terminal when the plan publishes
    more than the threshold, and a refusal when there is no terminal to ask on."""
    if yes:
        return None

    def ask(plan: core.PublishPlan) -> bool:
        if not output.stdin_is_terminal():
            raise errors.Refused(
                f"this replay would publish {plan.events:,} events ({plan.messages:,} messages), "
                f"more than --confirm-over {threshold:,}, and there is no terminal to ask on; "
                "nothing was published",
                hint="check it with --dry-run, then pass --yes to run it unattended",
            )
        _plan_table(plan, stderr=True)
        question = (
            f"publish {plan.events:,} events as {plan.messages:,} messages to env {plan.env}?"
        )
        return typer.confirm(question, default=False, err=True)

    return ask


def _plan_table(plan: core.PublishPlan, *, stderr: bool) -> None:
    rows = [
        (sub, event_type, n)
        for sub, per_type in sorted(plan.published.items())
        for event_type, n in sorted(per_type.items())
    ]
    rows += [("(no subscriber: not published)", t, n) for t, n in sorted(plan.unpublished.items())]
    output.emit_table(
        ["subscriber", "event type", "messages"], rows, title="would publish", stderr=stderr
    )


# --- output --------------------------------------------------------------------------------


def _render(summary: core.ReplaySummary, *, json_: bool, to_stderr: bool) -> None:
    document = summary.as_dict()
    if json_:
        if to_stderr:
            sys.stderr.write(output.to_json(document) + "\n")
        else:
            output.emit_json(document)
        return
    if to_stderr:
        _render_short(summary)
        return
    facts: dict[str, Any] = {
        "events that would be replayed" if summary.dry_run else "events replayed": summary.events,
        "from / order": f"{summary.source}, by {summary.order}",
    }
    if summary.shard.count > 1:
        facts["shard"] = str(summary.shard)
    if summary.target == "queue":
        facts["messages" + (" (would be)" if summary.dry_run else "")] = summary.messages
        facts["notifications"] = summary.notifications
        if summary.waited_s:
            facts["waited for --max-queue-length"] = f"{summary.waited_s:.1f} s"
    if summary.dead_lettered:
        facts["dead-lettered"] = summary.dead_lettered
    if summary.checkpoint is not None:
        cp = summary.checkpoint
        facts["checkpoint"] = cp["name"] + (" (resumed)" if cp["resumed"] else "")
        facts["checkpoint position"] = _position_text(cp["position"])
        facts["events in checkpoint"] = cp["events_total"]
    if not summary.dry_run:
        facts["elapsed"] = f"{summary.elapsed_s:.1f} s"
        facts["events/s"] = f"{summary.events_per_s:,.0f}"
    title = f"replay --to {summary.target}" + (
        " (dry run: nothing written)" if summary.dry_run else ""
    )
    output.emit_mapping(facts, title=title)
    if summary.target == "queue" and (summary.published or summary.unpublished):
        rows = [
            (sub, event_type, n)
            for sub, per_type in sorted(summary.published.items())
            for event_type, n in sorted(per_type.items())
        ]
        rows += [
            ("(no subscriber: not published)", t, n) for t, n in sorted(summary.unpublished.items())
        ]
        output.emit_table(
            ["subscriber", "event type", "messages"],
            rows,
            title="would publish" if summary.dry_run else "published",
        )
    elif summary.by_type:
        output.emit_table(
            ["event type", "events"], sorted(summary.by_type.items()), title="events by type"
        )
    if summary.problems:
        more = (
            f", {summary.problems_not_listed} more not listed"
            if summary.problems_not_listed
            else ""
        )
        output.emit_table(
            ["kind", "key", "detail"],
            [(p["kind"], p["key"], p["detail"]) for p in summary.problems],
            title=f"problems ({len(summary.problems)}{more})",
        )


def _render_short(summary: core.ReplaySummary) -> None:
    """--to stdout: stdout is the events; a one-line summary goes to stderr."""
    output.info(
        f"replayed {summary.events:,} events to stdout in {summary.elapsed_s:.1f} s"
        + (f"; {len(summary.problems)} problem(s):" if summary.problems else "")
    )
    for p in summary.problems:
        output.info(f"  {p['kind']}: {p['key']}: {p['detail']}")


def _position_text(position: dict[str, Any] | None) -> str:
    if not position:
        return "(start)"
    order = ("time", "aggregate_key", "aggregate_id", "version", "commit_id")
    shown = sorted(
        (k for k in position if k != "time_us"),
        key=lambda k: (k not in order, order.index(k) if k in order else 0, k),
    )
    return ", ".join(f"{k}={position[k]}" for k in shown)


def _render_stopped(summary: core.ReplaySummary, options: core.ReplayOptions) -> None:
    stopped = summary.stopped or {}
    if stopped.get("kind") == "publish_failed":
        message = (
            f"publishing {stopped['event_type']} {stopped['aggregate_id']} version "
            f"{stopped['version']} failed: {stopped['error']}; the events before it were "
            "published, it and the rest were not"
        )
        hint = "fix the cause, then replay the rest (e.g. with --since or --aggregate)"
    else:
        where = "flush" if stopped.get("in") == "flush" else "event"
        message = (
            f"the projection failed on {where} {stopped.get('event_type')} "
            f"{stopped.get('aggregate_id')} version {stopped.get('version')}: "
            f"{stopped.get('error')}; batch {stopped.get('batch')} was rolled back"
        )
        if options.checkpoint:
            message += f", checkpoint {options.checkpoint!r} stays at the last committed batch"
        hint = (
            "fix the projection and rerun the same command to resume"
            if options.checkpoint
            else "fix the projection and rerun"
        ) + ", or pass --skip-errors to record failing events in esctl.projection_dead_letter"
    output.stderr_console.print(f"error: {message}", style="bold red", markup=False)
    output.stderr_console.print(f"  what to do: {hint}", markup=False)


class _ProgressBar:
    """tqdm on stderr (the total when a planning pass counted it)."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(unit=" events", unit_scale=True, dynamic_ncols=True, desc="replaying")
        self.lock = threading.Lock()

    def update(self, p: core.ReplayProgress) -> None:
        with self.lock:
            if p.total is not None and self.bar.total != p.total:
                self.bar.total = p.total
            self.bar.n = p.events
            if p.messages:
                self.bar.set_postfix(messages=f"{p.messages:,}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        with self.lock:
            self.bar.close()
