"""``esctl replay``: push stored events through read models again (queues, Python projections,
stdout)."""

from __future__ import annotations

import enum
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, cast

import typer

from esctl import defaults
from esctl.cli import jsonout
from esctl.cli.appkeys import note_if_no_aggregates, note_if_no_keys
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.errors import EXIT_FAILED, exit_for
from esctl.cli.groups import Changing, EventSelection, OptionGroup, with_groups
from esctl.cli.options import (
    EventSource,
    ShardOpt,
    count_option,
    option,
    read_rules,
    transforms_option,
)
from esctl.cli.output import Output
from esctl.cli.progress import Progress
from esctl.units import counted

if TYPE_CHECKING:
    from esctl import replay as core


ReplayTransformsOpt = Annotated[
    Path | None,
    transforms_option(
        "--from redis: a TOML rules file (README 'Transforms'): replay each aggregate's "
        "events as the rules make them (left out, renamed, upcast, split, renumbered); the "
        "selectors ask the transformed events."
    ),
]


class ToOpt(enum.StrEnum):
    queue = "queue"
    stdout = "stdout"
    projection = "projection"


class OrderOpt(enum.StrEnum):
    aggregate = "aggregate"
    time = "time"


@dataclass(frozen=True)
class ProjectionOptions(OptionGroup):
    """The options of ``--to projection`` (named as ``ReplayOptions`` names them)."""

    projection: Annotated[
        str | None,
        option(
            "--projection",
            "SPEC",
            "--to projection: MODULE:CALLABLE or path/to/file.py:CALLABLE (a function "
            "taking an event, or an object/class with handle(event) and optional setup(ctx), "
            "flush(ctx), teardown(ctx)).",
        ),
    ] = None
    checkpoint: Annotated[
        str | None,
        option(
            "--checkpoint",
            "NAME",
            "--to projection: keep the position in esctl.projection_checkpoint, committed "
            "with each batch; a rerun resumes (exactly once for PostgreSQL writes).",
        ),
    ] = None
    reset: Annotated[
        bool, typer.Option("--reset", help="Start the --checkpoint over from the beginning.")
    ] = False
    skip_errors: Annotated[
        bool,
        typer.Option(
            "--skip-errors",
            help="--to projection: record failing events in esctl.projection_dead_letter and "
            "go on (default: stop at the first).",
        ),
    ] = False
    batch_size: Annotated[
        int | None,
        count_option(
            "--batch-size",
            f"--to projection: events per transaction (default {defaults.REPLAY_BATCH_SIZE:,}, "
            "more when PostgreSQL is at a distance).",
        ),
    ] = None


@with_context(Scope.REDIS | Scope.PG | Scope.APP | Scope.ENV)
@with_groups
def replay(
    ctx: Context,
    source: Annotated[
        EventSource,
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
    selected: EventSelection = EventSelection(),
    limit: Annotated[int | None, count_option("--limit", "At most N events.", least=0)] = None,
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
        option(
            "--subscriber",
            "SUB",
            "--to queue: only this subscriber (repeatable); must be a member of "
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
        count_option(
            "--max-queue-length",
            "--to queue: wait while a target PublishedEvents list holds N or more.",
        ),
    ] = None,
    rate: Annotated[
        float | None, count_option("--rate", "At most N events per second.", least=0.001)
    ] = None,
    confirm_over: Annotated[
        int,
        count_option(
            "--confirm-over",
            "--to queue: ask before publishing more than N events (unless --yes).",
            least=0,
            show_default=True,
        ),
    ] = defaults.REPLAY_CONFIRM_OVER,
    projecting: ProjectionOptions = ProjectionOptions(),
    shard: ShardOpt = None,
    transforms_file: ReplayTransformsOpt = None,
    changing: Changing = Changing(),
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

    --transforms FILE (--from redis) puts each aggregate's whole stream through the rules
    before the target sees it; an aggregate a rule cannot transform is a transform_failed
    problem and none of its events is replayed. A --checkpoint remembers the rules'
    fingerprint: other rules need --reset.

    \b
    Example: esctl replay --from redis --aggregate 1042 --to queue --subscriber Reporting.Worker --env production
    """
    from esctl import replay as core
    from esctl.shard import Shard

    streaming = target == ToOpt.stdout and not changing.dry_run  # stdout carries the events
    # ... as JSON lines, whatever happens: an error is the stream's last line.
    stream = ctx.out.open_stream() if streaming else None
    options = core.ReplayOptions(
        source=source.value,
        target=target.value,
        app=ctx.app,
        selection=core.Selection(**vars(selected.selectors()), limit=limit, all_events=all_events),
        order=order.value,
        env=ctx.env if target == ToOpt.queue else ctx.get("env"),
        pg_dsn=ctx.pg_dsn,
        pg_schema=ctx.pg_schema,
        subscribers=tuple(subscribers or ()),
        force=force,
        max_queue_length=max_queue_length,
        rate=rate,
        confirm_over=confirm_over,
        **asdict(projecting),
        dry_run=changing.dry_run,
        shard=Shard.from_option(shard),
        transforms=read_rules(transforms_file),
    )
    options.check()
    summary = _run(ctx, options, changing, stream=stream)
    _render(ctx.out, summary, to_stderr=streaming)
    if summary.stopped is not None:
        if ctx.debug and summary.failure is not None:
            traceback.print_exception(summary.failure, file=sys.stderr)
        _render_stopped(ctx.out, summary, options)
        raise typer.Exit(EXIT_FAILED)
    # Selectors, a checkpoint or a shard may select nothing of a store that is there.
    if options.source == EventSource.redis:
        note_if_no_keys(ctx, seen=summary.events > 0)
    elif limit != 0:  # --limit 0 reads nothing
        note_if_no_aggregates(ctx, seen=summary.events > 0)
    exit_for(problems=summary.found_problems)


def _run(
    ctx: Context,
    options: core.ReplayOptions,
    changing: Changing,
    *,
    stream: jsonout.JsonStream | None,
) -> core.ReplaySummary:
    """The replay: the projection loaded, Redis opened when read or written, the question
    asked when needed, a progress bar; the events to ``stream`` (--to stdout)."""
    from esctl import replay as core

    projection = None
    if options.target == ToOpt.projection:
        from esctl.projections import load_projection

        projection = load_projection(options.projection or "")
    to_queue = options.target == ToOpt.queue
    client = ctx.redis if options.source == EventSource.redis or to_queue else None
    confirm = _confirmer(ctx.out, options) if to_queue and changing.asks else None
    with ctx.out.progress(
        changing.progress,
        desc="replaying",
        unit=" events",
        streaming=stream is not None,
        at_first_update=True,
    ) as bar:
        summary = core.replay(
            options,
            redis_client=client,
            confirm=bar.set_aside(confirm) if confirm is not None else None,
            out=cast("IO[bytes]", stream) if stream is not None else sys.stdout.buffer,
            projection=projection,
            on_progress=bar.hook(lambda p: _replayed(bar, p)),
        )
        # The last count: progress is reported per batch, not at the end.
        _replayed(bar, core.ReplayProgress(events=summary.events, messages=summary.messages))
    if stream is not None:
        stream.close()
    return summary


def _replayed(bar: Progress, p: core.ReplayProgress) -> None:
    bar.update(
        p.events, total=p.total, postfix={"messages": f"{p.messages:,}"} if p.messages else None
    )


# --- confirmation --------------------------------------------------------------------------


def _confirmer(out: Output, options: core.ReplayOptions) -> core.Confirm:
    """A question asked on the terminal when the plan publishes more than --confirm-over
    events; a refusal when there is no terminal to ask on."""

    def ask(plan: core.PublishPlan) -> bool:
        action = (
            f"this replay would publish {plan.events:,} events ({plan.messages:,} messages), "
            f"more than --confirm-over {options.confirm_over:,},"
        )
        out.require_terminal(action)
        _plan_table(out, plan, stderr=True)
        question = (
            f"publish {counted(plan.events, 'event')} as {counted(plan.messages, 'message')} "
            f"to env {plan.env}?"
        )
        return out.ask(question, action=action)

    return ask


def _plan_table(out: Output, plan: core.PublishPlan, *, stderr: bool) -> None:
    _publish_table(out, plan.published, plan.unpublished, title="would publish", stderr=stderr)


def _publish_table(
    out: Output,
    published: dict[str, dict[str, int]],
    unpublished: dict[str, int],
    *,
    title: str,
    stderr: bool = False,
) -> None:
    """Messages per subscriber and event type; the types no subscriber takes last."""
    rows = [
        (sub, event_type, n)
        for sub, per_type in sorted(published.items())
        for event_type, n in sorted(per_type.items())
    ]
    rows += [("(no subscriber: not published)", t, n) for t, n in sorted(unpublished.items())]
    out.table(["subscriber", "event type", "messages"], rows, title=title, stderr=stderr)


# --- output --------------------------------------------------------------------------------


def _render(out: Output, summary: core.ReplaySummary, *, to_stderr: bool) -> None:
    """The summary: on stdout, or, when stdout carried the events, on stderr (JSON: one
    line; else one line of text)."""
    if to_stderr:
        if out.json:
            sys.stderr.write(jsonout.to_json(summary.as_dict()) + "\n")
        else:
            _render_short(out, summary)
        return
    out.result(summary.as_dict(), lambda: _render_tables(out, summary))


def _render_tables(out: Output, summary: core.ReplaySummary) -> None:
    out.mapping(
        _facts(out, summary),
        title=f"replay --to {summary.target}"
        + (" (dry run: nothing written)" if summary.dry_run else ""),
    )
    if summary.target == "queue" and (summary.published or summary.unpublished):
        _publish_table(
            out,
            summary.published,
            summary.unpublished,
            title="would publish" if summary.dry_run else "published",
        )
    elif summary.by_type:
        out.table(["event type", "events"], sorted(summary.by_type.items()), title="events by type")
    problems, counts, total = _problems_not_in_the_error(summary)
    out.problem_summary(
        problems,
        counts,
        total,
        None,
        unrecorded=(
            "events that failed to publish are not recorded elsewhere (the error names the first)"
            if summary.target == "queue"
            else "dead-lettered events are in esctl.projection_dead_letter"
        )
        + "; 'esctl inspect integrity --problems-file PATH' writes every problem of the store",
    )


def _problems_not_in_the_error(
    summary: core.ReplaySummary,
) -> tuple[list[dict[str, str]], dict[str, int], int]:
    """The problems, counts by kind and total for the tables: without the projection's
    failure when the run stopped on it, which the error line under them says in full (the
    JSON summary keeps it)."""
    kind = "projection_failed"
    if (summary.stopped or {}).get("kind") != kind:
        return summary.problems, summary.problem_counts, summary.problems_total
    counts = {k: n for k, n in summary.problem_counts.items() if k != kind}
    problems = [p for p in summary.problems if p["kind"] != kind]
    return problems, counts, summary.problems_total - summary.problem_counts.get(kind, 0)


def _facts(out: Output, summary: core.ReplaySummary) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "events that would be replayed" if summary.dry_run else "events replayed": summary.events,
        "from / order": f"{summary.source}, by {summary.order}",
    }
    if summary.shard.count > 1:
        facts["shard"] = str(summary.shard)
    if summary.transforms is not None:
        t = summary.transforms
        facts["transforms"] = f"{t['fingerprint'][:16]} ({t['file']})"
        facts["events left out by the rules"] = t["events_left_out"]
    if summary.target == "queue":
        facts["messages" + (" (would be)" if summary.dry_run else "")] = summary.messages
        facts["notifications"] = summary.notifications
        if summary.waited_s:
            facts["waited for --max-queue-length"] = out.format_duration(summary.waited_s)
    if summary.dead_lettered:
        facts["dead-lettered"] = summary.dead_lettered
    if summary.checkpoint is not None:
        cp = summary.checkpoint
        facts["checkpoint"] = cp["name"] + (" (resumed)" if cp["resumed"] else "")
        facts["checkpoint position"] = _position_text(cp["position"])
        facts["events in checkpoint"] = cp["events_total"]
    if not summary.dry_run:
        facts["elapsed"] = out.format_duration(summary.elapsed_s)
        facts["events/s"] = f"{summary.events_per_s:,.0f}"
    return facts


def _render_short(out: Output, summary: core.ReplaySummary) -> None:
    """--to stdout: stdout is the events; a one-line summary goes to stderr."""
    out.info(
        f"replayed {counted(summary.events, 'event')} to stdout in "
        f"{out.format_duration(summary.elapsed_s)}"
        + (
            f"; {counted(len(summary.problems), 'problem', separators=False)}:"
            if summary.problems
            else ""
        )
    )
    for p in summary.problems:
        out.info(f"{p['kind']}: {p['key']}: {p['detail']}", head="  ")


def _position_text(position: dict[str, Any] | None) -> str:
    if not position:
        return "(start)"
    order = ("time", "aggregate_key", "aggregate_id", "version", "commit_id")
    shown = sorted(
        (k for k in position if k != "time_us"),
        key=lambda k: (k not in order, order.index(k) if k in order else 0, k),
    )
    return ", ".join(f"{k}={position[k]}" for k in shown)


def _render_stopped(out: Output, summary: core.ReplaySummary, options: core.ReplayOptions) -> None:
    stopped = summary.stopped or {}
    if stopped.get("kind") == "publish_failed":
        message = (
            f"publishing {stopped['event_type']} {stopped['aggregate_id']} version "
            f"{stopped['version']} failed: {stopped['error']}; the events before it were "
            "published, "
        )
        others, after = stopped.get("failed", 1) - 1, stopped.get("published_after", 0)
        if others or after:  # events sent behind it, which Redis ran on
            message += (
                f"it was not; of the {counted(others + after, 'event', separators=False)} sent "
                "after it before its answer "
                f"came, {others} failed too (problems) and {after} "
                f"{'was' if after == 1 else 'were'} published; nothing after them was sent"
            )
        else:
            message += "it and the rest were not"
        from esctl import redisio  # the driver loads when a command runs, not at start-up

        cause = redisio.error_cause(stopped["error"]) or "fix the cause"
        hint = f"{cause}, then replay the rest (e.g. with --since or --aggregate)"
    elif stopped.get("kind") == "lock_lost":
        n = summary.notifications
        message = (
            f"lost the replay lock: {stopped['error']}; nothing more was sent, and every "
            f"batch already sent was answered and is counted: {counted(n, 'event')} published "
            "(each whole, with its notification)"
        )
        if stopped.get("aggregate_id") is not None:
            message += (
                f"; the first not published: {stopped['event_type']} "
                f"{stopped['aggregate_id']} version {stopped['version']}"
            )
        hint = (
            "make sure no other esctl replay publishes to these queues, then replay the rest "
            "(e.g. with --since or --aggregate): the same command again publishes every "
            "event again"
        )
    else:
        message, hint = _projection_failed(summary, options)
    out.error(message, hint)


def _projection_failed(summary: core.ReplaySummary, options: core.ReplayOptions) -> tuple[str, str]:
    """The one-line error of a projection that raised in handle or flush: the event (for a
    flush, the batch and its last event), the error's first line and where in the projection
    it was raised; what became of the batch and the checkpoint; what to do."""
    stopped = summary.stopped or {}
    batch = stopped.get("batch")
    event = (
        f"{stopped.get('event_type')} of {stopped.get('aggregate_type')} "
        f"{stopped.get('aggregate_id')} version {stopped.get('version')}"
    )
    in_flush = stopped.get("in") == "flush"
    failed = (
        f"the projection's flush failed at the end of batch {batch} (last event {event})"
        if in_flush
        else f"the projection failed on event {event}"
    )
    error = (str(stopped.get("error")).strip().splitlines() or [""])[0]
    at = f" ({stopped['at']})" if stopped.get("at") else ""
    message = f"{failed}: {error}{at}; batch {batch} was rolled back"
    hint = "fix the projection and rerun the same command"
    if options.checkpoint:
        message += f", checkpoint {options.checkpoint!r} stays at the last committed batch"
        hint += " without --reset to resume" if options.reset else " to resume"
    if not in_flush:  # a failing flush cannot be pinned on one event to set aside
        hint += ", or pass --skip-errors to record failing events in esctl.projection_dead_letter"
    return message, f"{hint}; --debug shows the projection's traceback"
