"""``esctl migrate status``: where each shard's latest migration run stands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from esctl.cli.appkeys import COMMIT_LISTS, note_if_no_keys
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.errors import EXIT_PROBLEMS, exit_for
from esctl.cli.migrate.common import store
from esctl.cli.options import IntervalOpt, MetricsFileOpt, ProgressOpt
from esctl.units import counted, format_duration

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from esctl.migrate import status as status_core


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
_STATUS_OPTIONAL = ["started"]
"""Left out on a terminal too narrow for every column (80, with an interrupted run and a lag
of days), rather than folding a status or an age."""


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
    opts = status_core.StatusOptions(**store(ctx), lag=lag or limit is not None)
    if watch:
        _watch_status(ctx, opts, seconds, metrics_file, max_lag, limit)
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
            out.table(
                *_status_table(report), title=_status_title(report), optional=_STATUS_OPTIONAL
            )
        else:
            out.title(_status_title(report))
        for line in _status_notes(report, max_lag, over):
            out.wrapped(line)
        out.wrote(metrics_file)

    out.result(document, render)
    if report.lag is not None:
        # A lag measured over no commit list is 0 whatever the app's name: say when it has none.
        note_if_no_keys(ctx, seen=report.aggregates_scanned > 0, looked_at=COMMIT_LISTS)
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
    """The lines under the table: no runs, the whole app's lag, --max-lag exceeded, and
    what to do about an interrupted run or quarantined aggregates."""
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
            f"lag (whole app): {counted(lag.events_behind, 'event')} in "
            f"{counted(lag.aggregates_behind, 'aggregate')} not yet in PostgreSQL{oldest} "
            f"({counted(report.aggregates_scanned, 'aggregate')} scanned in "
            f"{format_duration(report.lag_elapsed_s)})"
        )
    if over:
        notes.append(f"behind more than --max-lag {max_lag}: shard {', '.join(over)}")
    return notes + _next_steps(report)


def _next_steps(report: status_core.StatusReport) -> list[str]:
    """What to do about an interrupted run and quarantined aggregates (the README's words)."""
    from esctl.migrate.runs import quarantine_query

    steps = []
    for s in report.shards:
        holder = s.holder
        if s.status == "running" and holder is not None:
            where = f"in {holder.application_name}, " if holder.application_name else ""
            steps.append(
                f"running (shard {s.shard}): {where}PostgreSQL session pid {holder.pid}"
                f"{f' from {holder.client_addr}' if holder.client_addr else ''}"
            )
    rerun = (
        "rerun the same `esctl migrate redis-to-pg` command (same --shard) to continue it "
        "where it stopped"
    )
    for status, recorded, what in (
        ("interrupted", "running", "its run was killed or its machine died"),
        ("interrupted", "interrupted", "its run was stopped by Ctrl-C, SIGTERM or SIGHUP"),
        ("failed", "failed", "its run stopped on an error (its output said which)"),
    ):
        shards = [
            s.shard for s in report.shards if (s.status, s.recorded_status) == (status, recorded)
        ]
        if shards:
            steps.append(f"{status} (shard {', '.join(shards)}): {what}; {rerun}")
    quarantined = [s for s in report.shards if s.aggregates_quarantined]
    if quarantined:
        total = report.aggregates_quarantined
        query = quarantine_query([s.run_id for s in quarantined])
        steps.append(
            f"quarantined: {counted(total, 'aggregate')} skipped whole (only in Redis; fixed by "
            "hand); "
            f"what and why, from esctl.quarantine: `{query}`"
        )
    return steps


def _status_renderable(
    report: status_core.StatusReport,
    max_lag: str | None,
    over: list[str],
    interval: float,
    width: int,
) -> RenderableType:
    """The --watch screen: the table and its notes as one rich renderable, laid out for
    ``width`` as the table and notes without --watch are (the table fitted by
    :func:`~esctl.cli.tables.fit_table`, lines wrapped by
    :func:`~esctl.cli.wrapping.break_line`): the console soft-wraps, which a live display
    would crop."""
    from rich.console import Group
    from rich.text import Text

    from esctl.cli.tables import fit_table, left_out_note
    from esctl.cli.wrapping import break_line

    table, left_out = fit_table(*_status_table(report), width, optional=_STATUS_OPTIONAL)
    stamp = report.checked_at.strftime("%H:%M:%S UTC")
    notes = [
        *_status_notes(report, max_lag, over),
        *([left_out_note(left_out)] if left_out else []),
        f"checked {stamp}, every {interval:g} s; Ctrl-C to stop",
    ]

    def wrapped(line: str, style: str = "") -> Text:
        return Text("\n".join(break_line(line, max(width, 20))), style=style)

    return Group(wrapped(_status_title(report), "table.title"), table, *(wrapped(n) for n in notes))


def _watch_status(
    ctx: Context,
    opts: status_core.StatusOptions,
    interval: float,
    metrics_file: Path | None,
    max_lag: str | None,
    limit: float | None,
) -> None:
    """Redraw the status every ``interval`` seconds until Ctrl-C (exit 130, quietly), writing
    the metrics file at each reading when asked. ``max_lag``: --max-lag as given, which the
    notes name as the table without --watch does (``--max-lag 5m``); ``limit``: its
    seconds."""
    from esctl.cli.live import live_console, watch_until_interrupted
    from esctl.metrics import write_textfile
    from esctl.migrate import status as status_core

    def draw(console: Console) -> RenderableType:
        report = status_core.migration_status(opts, lambda: ctx.redis)
        if metrics_file is not None:
            write_textfile(metrics_file, status_core.render_prometheus(report))
        over = report.behind_more_than(limit) if limit is not None else []
        return _status_renderable(report, max_lag, over, interval, console.width)

    watch_until_interrupted(draw, interval, console=live_console())
