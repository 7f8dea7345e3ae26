"""``esctl queue``: see and repair the subscribers' reliable queues (list, peek, requeue, drain,
restore). Never opens PostgreSQL."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar

import typer

from esctl import errors
from esctl.cli.appkeys import no_queue_texts, note_if_no_queues
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.errors import exit_for
from esctl.cli.groups import Changing, OptionGroup, with_groups
from esctl.cli.live import check_watch
from esctl.cli.options import IntervalOpt, MetricsFileOpt, count_option, option
from esctl.cli.output import Output
from esctl.cli.progress import Progress
from esctl.units import counted

if TYPE_CHECKING:
    from esctl import queues as core

app = typer.Typer(
    no_args_is_help=True,
    help="See and repair the subscribers' reliable queues: list, peek, requeue, drain, restore.",
    short_help="List, peek, requeue, drain and restore the queues.",
)

SubscriberArg = Annotated[
    str, typer.Argument(metavar="SUB", help="Subscriber (the service's ApplicationName).")
]
TypeArg = Annotated[str, typer.Argument(metavar="TYPE", help="Event type (short class name).")]
OlderThanOpt = Annotated[
    str | None,
    option(
        "--older-than",
        "DURATION",
        "Only messages whose payload TimeStamp is older than this (90s, 5m, 2h, 1d).",
    ),
]
GraceOpt = Annotated[
    str | None,
    option(
        "--grace",
        "DURATION",
        "Look twice, this far apart, and take only messages still there (stuck by "
        "observation, whatever their age).",
    ),
]
AggregateOpt = Annotated[
    list[str] | None,
    option("--aggregate", "AGG", "Only messages of this aggregate id (repeatable)."),
]
ExceptionOpt = Annotated[
    str | None,
    option(
        "--exception-contains",
        "TEXT",
        "Dead letters whose RetryData LastException contains TEXT (case-insensitive).",
    ),
]
MinRetriesOpt = Annotated[
    int | None,
    count_option(
        "--min-retries", "Dead letters whose RetryData RetryCount is at least N.", least=0
    ),
]
LimitOpt = Annotated[
    int | None,
    count_option("--limit", "At most N messages, the next ones in consumption order first."),
]


def _command(name: str, short_help: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A queue command: ``esctl queue NAME``, taking Redis and --env (never PostgreSQL), its
    option groups given as their options (:func:`~esctl.cli.groups.with_groups`)."""

    def register(func: Callable[..., None]) -> Callable[..., None]:
        command = with_context(Scope.REDIS | Scope.ENV)(with_groups(func))
        return app.command(name, short_help=short_help)(command)

    return register


def _list_name(value: str) -> str:
    from esctl.layout import QUEUE_LISTS

    if value not in QUEUE_LISTS:
        raise typer.BadParameter(f"use one of {', '.join(QUEUE_LISTS)}")
    return value


ListOpt = Annotated[
    str,
    option(
        "--list", "LIST", "published, processing or dead.", show_default=True, callback=_list_name
    ),
]


@dataclass(frozen=True)
class QueueSelection(OptionGroup):
    """The message selectors of requeue and drain."""

    older_than: OlderThanOpt = None
    grace: GraceOpt = None
    aggregates: AggregateOpt = None
    exception_contains: ExceptionOpt = None
    min_retries: MinRetriesOpt = None
    limit: LimitOpt = None

    def selection(self, which: str) -> core.Selection:
        """The core's selection, checked against the list it selects from."""
        from esctl import queues as core
        from esctl.durations import parse_duration

        selection = core.Selection(
            older_than=parse_duration(self.older_than) if self.older_than else None,
            grace=parse_duration(self.grace) if self.grace else None,
            aggregates=frozenset(self.aggregates or ()),
            exception_contains=self.exception_contains,
            min_retries=self.min_retries,
            limit=self.limit,
        )
        selection.check(which)
        return selection


def _confirmer(out: Output, changing: Changing) -> core.Confirm | None:
    """None when no question is needed; refuses at once (before any work) when one is needed
    and there is no terminal to ask on."""
    if not changing.asks:
        return None
    action = "this command changes queues"
    out.require_terminal(action)

    def ask(plan: core.Plan) -> bool:
        where = f" to {plan.destination}" if plan.destination else ""
        verb = {"discard": "discard (no backup!)"}.get(plan.action, plan.action)
        return out.ask(
            f"{verb} {counted(plan.count, 'message')} from {plan.source}{where}?", action=action
        )

    return ask


@contextmanager
def _moving(
    out: Output, changing: Changing, desc: str, confirm: core.Confirm | None
) -> Iterator[core.Hooks]:
    """The bar of a requeue, drain or restore (``desc``), with --progress: drawn when the core
    first reports, which it does once it holds the queue lock (never for a dry run, nor
    before an exit 75).
    The phases before the moves (a requeue or drain reading its list and selecting from it,
    a drain writing its backup file, a restore reading its file) each start it over under
    their own name; the moves then count under ``desc``, with the selected count as total.
    ``confirm`` is made to ask with the bar set aside. Closed (its last picture drawn) before
    the summary or an error is printed; when no move came after a phase (nothing selected, a
    file restored already, a refusal), wiped instead, so that a run that moved nothing
    leaves no bar."""
    from esctl import queues as core

    enabled = changing.progress and not changing.dry_run
    with out.progress(enabled, desc=desc, unit=" messages", at_first_update=True) as bar:
        shown = [desc]  # what the bar counts now

        def phase(p: core.QueuePhase) -> None:
            if shown[0] != p.name:
                shown[0] = p.name
                bar.restart(p.name, total=p.total)
            bar.update(p.done, total=p.total)  # (a list's length is known once it is read)

        def moved(p: core.QueueProgress) -> None:
            if shown[0] != desc:  # after a phase: the moves start from 0, their clock from now
                shown[0] = desc
                bar.restart(desc, total=p.total)
            _moved(bar, p)

        ask = bar.set_aside(confirm) if confirm is not None else None
        try:
            yield core.Hooks(confirm=ask, on_progress=bar.hook(moved), on_phase=bar.hook(phase))
        finally:
            if shown[0] != desc:  # a phase, and no moves after it (nothing left to restore)
                bar.erase()


def _moved(bar: Progress, p: core.QueueProgress) -> None:
    bar.update(p.moved, total=p.total, postfix={"gone": f"{p.gone:,}"} if p.gone else None)


def _first_line(text: str | None) -> str | None:
    """An exception's first line, whole: its type and message (what `--exception-contains`
    is chosen from); the stack trace after it is in --json."""
    if not text or not text.strip():
        return None
    return text.strip().splitlines()[0]


def _messages_table(
    out: Output, messages: list[core.MessageInfo], *, title: str, dead: bool
) -> None:
    columns = ["#", "aggregate", "version", "timestamp", "age", "bytes"]
    if dead:
        columns += ["retries", "last exception"]
    rows: list[list[Any]] = []
    for m in messages:
        row: list[Any] = [
            m.position,
            m.aggregate_id,
            m.version,
            m.timestamp,
            out.format_duration(m.age_s),
            m.size,
        ]
        if dead:
            row += [
                m.retry.retry_count if m.retry else None,
                _first_line(m.retry.last_exception if m.retry else None),
            ]
        rows.append(row)
    # At 80 columns the aggregate id stays whole: the size, then the time stamp (the age
    # says how old), then the version give way first. The exception is read whole (it is
    # what --exception-contains is chosen from): where the table cannot show it on the row,
    # it goes on its own rows under the row, wrapped at words.
    out.table(
        columns,
        rows,
        title=title,
        optional=("version", "timestamp", "bytes"),
        beneath="last exception",
    )


def _problems(out: Output, problems: list[dict[str, str]]) -> None:
    out.problems(problems, title=f"problems ({len(problems)})")


class _Summary(Protocol):
    """What requeue, drain and restore sum up."""

    failed: int
    problems: list[dict[str, str]]

    def as_dict(self) -> dict[str, Any]: ...


_S = TypeVar("_S", bound=_Summary)


def _change(
    out: Output,
    changing: Changing,
    moves: tuple[str, core.Confirm | None],
    run: Callable[[core.Hooks], _S],
    render: Callable[[Output, _S], None],
) -> None:
    """A changing command from its core call on: ``run`` (given the hooks) under the bar of
    ``moves`` (what the bar calls them, and the question: :func:`_moving`), then the summary
    (JSON, or ``render``) and the exit code its failures and problems give."""
    with _moving(out, changing, *moves) as hooks:
        summary = run(hooks)
    out.result(summary.as_dict(), lambda: render(out, summary))
    exit_for(failed=summary.failed, problems=summary.problems)


# --- list ----------------------------------------------------------------------------------


@_command("list", "Queue lengths per subscriber and event type.")
def list_command(
    ctx: Context,
    event_types: Annotated[
        list[str] | None, option("--type", "TYPE", "Only this event type (repeatable).")
    ] = None,
    subscribers: Annotated[
        list[str] | None, option("--subscriber", "SUB", "Only this subscriber (repeatable).")
    ] = None,
    metrics_file: MetricsFileOpt = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Redraw the table in place on the terminal every --interval, with each "
            "list's net change of length per second (Δ/s); Ctrl-C stops.",
        ),
    ] = False,
    interval: IntervalOpt = None,
) -> None:
    """Every subscriber x event type of the environment, with queue lengths.

    Shows published / processing / dead lengths, the age of the oldest processing message
    (from its TimeStamp) and the event type's RetryData count; subscribers whose lists are
    empty are listed too. --watch keeps the table on the terminal, refreshed. Read-only.

    \b
    Example: esctl queue list --env production --metrics-file /var/lib/node_exporter/esctl_queues.prom
    Example: esctl queue list --watch --interval 5s --env production
    """
    from esctl import queues as core
    from esctl.metrics import write_textfile

    out = ctx.out
    if watch and metrics_file is not None:
        raise errors.UsageError(
            "--metrics-file does not go with --watch",
            hint="write the metrics file from cron or a systemd timer: "
            "`esctl queue list --metrics-file PATH`",
        )
    seconds = check_watch(json=out.json, interval=interval, watch=watch, command="esctl queue list")
    environment = ctx.env
    if watch:
        from esctl.cli.queue_watch import watch_queues

        def unmatched(listing: core.QueueListing) -> list[str]:
            return no_queue_texts(
                ctx, listing, event_types=event_types or (), subscribers=subscribers or ()
            )

        watch_queues(
            core.QueueWatch(
                ctx.redis, environment, event_types=event_types or (), subscribers=subscribers or ()
            ),
            seconds,
            unmatched=unmatched,
        )
        return
    listing = core.list_queues(
        ctx.redis, environment, event_types=event_types or (), subscribers=subscribers or ()
    )
    if metrics_file is not None:
        write_textfile(metrics_file, core.render_prometheus(listing))
    document = listing.as_dict()
    document["metrics_file"] = str(metrics_file) if metrics_file else None

    def render() -> None:
        out.table(
            ["event type", "subscriber", "published", "processing", "dead",
             "oldest processing", "retry data", "subscribed"],
            [
                (q.event_type, q.subscriber, q.published, q.processing, q.dead,
                 out.format_duration(q.oldest_processing_age_s), q.retry_data, q.subscribed)
                for q in listing.queues
            ],
            title=f"queues of env {environment} ({len(listing.queues)})",
            optional=("subscribed", "retry data"),
            group="subscriber",
            records=True,  # a narrow terminal (40 columns): a record per queue
        )  # fmt: skip
        _problems(out, listing.problems)
        out.wrote(metrics_file)

    out.result(document, render)
    note_if_no_queues(ctx, listing, event_types=event_types or (), subscribers=subscribers or ())
    exit_for(problems=listing.problems)


# --- peek ----------------------------------------------------------------------------------


@_command("peek", "Show a queue list's next messages, removing none.")
def peek_command(
    ctx: Context,
    subscriber: SubscriberArg,
    event_type: TypeArg,
    which: ListOpt = "published",
    count: Annotated[
        int, count_option("--count", "How many messages to show.", show_default=True)
    ] = 10,
) -> None:
    """Show the next messages of a queue list without removing them.

    Messages come in consumption order (the one RPOPLPUSH takes next first), decoded, with
    RetryData (RetryCount, LastRetryTime, LastException) next to dead letters. --json carries
    each message's full text. Read-only.

    \b
    Example: esctl queue peek Reporting.Worker ItemScoreCreated --list dead --env production
    """
    from esctl import queues as core

    ref = core.QueueRef(subscriber, ctx.env, event_type)
    result = core.peek(ctx.redis, ref, which, count)
    ctx.out.result(
        result.as_dict(),
        lambda: _messages_table(
            ctx.out,
            result.messages,
            title=f"{result.key}: {counted(result.length, 'message')}, the next "
            f"{len(result.messages)} shown (# 0 is taken next)",
            dead=which == "dead",
        ),
    )


# --- requeue -------------------------------------------------------------------------------


@_command("requeue", "Move stuck or dead-lettered messages back, taken next.")
def requeue_command(
    ctx: Context,
    subscriber: SubscriberArg,
    event_type: TypeArg,
    source: Annotated[
        str,
        option(
            "--from",
            "LIST",
            "processing (stuck messages) or dead (dead letters).",
            show_default=True,
        ),
    ] = "processing",
    selected: QueueSelection = QueueSelection(),
    keep_retry_data: Annotated[
        bool, typer.Option("--keep-retry-data", help="Keep the RetryData of requeued dead letters.")
    ] = False,
    changing: Changing = Changing(),
) -> None:
    """Move stuck or dead-lettered messages back to the tail of PublishedEvents, taken next.

    Each move is atomic (removed from the source and, only if it was still there, pushed), so
    a message a consumer finishes or takes meanwhile is counted "gone", never duplicated. One
    notification follows, so live subscribers pick the messages up. Requeued dead letters get
    their RetryData deleted (--keep-retry-data keeps it). The selection is a snapshot taken at
    the start. Exit 75 when another run holds the queue's lock.

    \b
    Example: esctl queue requeue Reporting.Worker ItemScoreCreated --grace 5m --yes --env production
    """
    from esctl import queues as core

    out = ctx.out
    if source not in ("processing", "dead"):
        raise errors.UsageError(
            f"cannot requeue from {source!r}", hint="use `--from processing` or `--from dead`"
        )
    selection = selected.selection(source)
    confirm = _confirmer(out, changing)
    ref = core.QueueRef(subscriber, ctx.env, event_type)
    client = ctx.redis
    if source == "processing" and selection.grace is None and selection.older_than is None:
        out.warn(
            "no --grace or --older-than: messages being handled right now are requeued too "
            "and will be handled twice"
        )
    options = core.RequeueOptions(
        source=source,
        selection=selection,
        keep_retry_data=keep_retry_data,
        dry_run=changing.dry_run,
    )
    if selection.grace is not None and not out.json:
        out.info(f"looking again in {selected.grace} (--grace)…")
    moves = ("requeueing", confirm)
    _change(out, changing, moves, partial(core.requeue, client, ref, options), _render_requeue)


def _render_requeue(out: Output, summary: core.RequeueSummary) -> None:
    dry_run = summary.dry_run
    verb = "would requeue" if dry_run else "requeued"
    out.mapping(
        {
            "from": summary.source_key,
            "to": summary.destination_key,
            "examined": summary.examined,
            "selected": summary.selected,
            verb: summary.requeued if not dry_run else summary.selected,
            "gone (taken meanwhile)": summary.gone,
            "failed": summary.failed,
            "retry data cleared": summary.retry_data_cleared,
            "notified": summary.notified,
        },
        title="queue requeue" + (" (dry run: nothing moved)" if dry_run else ""),
    )
    if dry_run and summary.messages:
        _messages_table(out, summary.messages, title="would requeue", dead=summary.source == "dead")
    _problems(out, summary.problems)


# --- drain ---------------------------------------------------------------------------------


@_command("drain", "Back up a queue list to a file, then remove those.")
def drain_command(
    ctx: Context,
    subscriber: SubscriberArg,
    event_type: TypeArg,
    which: ListOpt = "dead",
    to_file: Annotated[
        Path | None,
        option(
            "--to-file",
            "PATH.jsonl.zst",
            "Backup file to write first (created 0600; never overwritten).",
        ),
    ] = None,
    discard: Annotated[
        bool, typer.Option("--discard", help="Remove without a backup (needs --yes).")
    ] = False,
    selected: QueueSelection = QueueSelection(),
    changing: Changing = Changing(),
) -> None:
    """Back up the messages of a queue list to a file, then remove exactly those.

    The backup (zstd JSON lines: key, list, position, value) is written and fsynced before
    anything is removed; then exactly the backed-up values are removed, so messages arriving
    meanwhile stay. Without --to-file it refuses unless --discard --yes. Undo with
    esctl queue restore. Exit 75 when another run holds the queue's lock.

    \b
    Example: esctl queue drain Reporting.Worker ItemScoreCreated --list dead --to-file dead.jsonl.zst --env production
    """
    from esctl import queues as core

    out = ctx.out
    selection = selected.selection(which)
    if to_file is None and not changing.dry_run and not (discard and changing.yes):
        raise errors.Refused(
            "drain removes messages: it needs a backup file; nothing was changed",
            hint="pass `--to-file PATH.jsonl.zst` (restore it with `esctl queue restore`), or "
            "`--discard --yes` to drop the messages for good",
        )
    if to_file is not None and discard:
        raise errors.UsageError("--to-file and --discard exclude each other")
    confirm = _confirmer(out, changing)
    ref = core.QueueRef(subscriber, ctx.env, event_type)
    options = core.DrainOptions(
        which=which, to_file=to_file, discard=discard, selection=selection, dry_run=changing.dry_run
    )
    moves = ("discarding" if discard else "draining", confirm)
    _change(out, changing, moves, partial(core.drain, ctx.redis, ref, options), _render_drain)


def _render_drain(out: Output, summary: core.DrainSummary) -> None:
    dry_run = summary.dry_run
    out.mapping(
        {
            "list": summary.key,
            "examined": summary.examined,
            "selected": summary.selected,
            "would drain" if dry_run else "drained": (
                summary.selected if dry_run else summary.drained
            ),
            "gone (taken meanwhile)": summary.gone,
            "failed": summary.failed,
            "backup file": summary.backup_file or ("-" if dry_run else "none (--discard)"),
        },
        title="queue drain" + (" (dry run: nothing removed)" if dry_run else ""),
    )
    if dry_run and summary.messages:
        dead = summary.list_name == "dead"
        _messages_table(out, summary.messages, title="would drain", dead=dead)
    _problems(out, summary.problems)
    if summary.backup_file and summary.drained:
        out.info_command("undo with:", f"esctl queue restore {shlex.quote(summary.backup_file)}")


# --- restore -------------------------------------------------------------------------------


@_command("restore", "Put drained messages back where they came from.")
def restore_command(
    ctx: Context,
    backup_file: Annotated[
        Path, typer.Argument(metavar="PATH.jsonl.zst", help="A file written by esctl queue drain.")
    ],
    to: Annotated[
        tuple[str, str] | None,
        option(
            "--to",
            "SUB TYPE",
            "Restore into this subscriber's queue of this event type (in --env) instead "
            "of where the messages came from; they go to the tail, taken next.",
        ),
    ] = None,
    which: Annotated[
        str | None,
        option(
            "--list",
            "LIST",
            "With --to: published, processing or dead (default: the drained list).",
        ),
    ] = None,
    include_unknown: Annotated[
        bool,
        typer.Option(
            "--include-unknown",
            help="Also restore messages a crashed drain may not have removed, when its "
            "record in Redis is gone too (may duplicate).",
        ),
    ] = False,
    changing: Changing = Changing(),
) -> None:
    """Put drained messages back where they came from, in their original order.

    Each message returns to its list at its old distance from the tail, so drain then restore
    leaves a list as it was; messages a consumer took before the drain removed them are
    skipped. A notification follows. Restoring the same file again restores nothing twice
    (progress is kept in Redis for 30 days). Exit 75 when another run holds a queue's lock.

    \b
    Example: esctl queue restore dead.jsonl.zst --yes
    """
    from esctl import queues as core

    out = ctx.out
    if which is not None:
        if to is None:
            raise errors.UsageError("--list needs --to SUB TYPE")
        core.check_list_name(which)
    confirm = _confirmer(out, changing)
    target = core.QueueRef(to[0], ctx.env, to[1]) if to is not None else None
    options = core.RestoreOptions(
        target=target,
        target_list=which,
        include_unknown=include_unknown,
        dry_run=changing.dry_run,
        expect_env=ctx.get("env"),
    )
    run = partial(core.restore, ctx.redis, backup_file, options)
    _change(out, changing, ("restoring", confirm), run, _render_restore)


def _render_restore(out: Output, summary: core.RestoreSummary) -> None:
    dry_run = summary.dry_run
    out.mapping(
        {
            "backup file": summary.backup_file,
            "records": summary.records,
            "would restore" if dry_run else "restored": (
                summary.restorable - summary.already_restored if dry_run else summary.restored
            ),
            "already restored": summary.already_restored,
            "gone before the drain removed them": summary.gone,
            "outcome unknown": summary.unknown,
            "never removed by the drain": summary.kept,
            "failed": summary.failed,
            "notified": summary.notified,
        },
        title="queue restore" + (" (dry run: nothing restored)" if dry_run else ""),
    )
    out.table(
        ["list", "records", "restored", "already restored"],
        [(t.key, t.records, t.restored, t.already_restored) for t in summary.targets],
        group="list",  # a queue's key and the counts do not fit 80 columns
        records=True,  # nor the counts' headers 40: a record per list
    )
    _problems(out, summary.problems)
