"""``esctl events``: decode stored payloads (and, with the inspect capability, query them)."""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from esctl.cli import consoles, jsonout, messages
from esctl.cli.appkeys import COMMIT_LISTS, note_if_no_aggregates, note_if_no_keys
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.errors import exit_for
from esctl.cli.groups import EventSelection, with_groups
from esctl.cli.options import (
    EventSource,
    ProgressOpt,
    TransformsOpt,
    count_option,
    read_rules,
)
from esctl.cli.output import Output
from esctl.cli.progress import Progress
from esctl.units import counted

if TYPE_CHECKING:
    from esctl import query as core
    from esctl.transforms import Rules

app = typer.Typer(no_args_is_help=True, help="Decode and query event payloads.")

FATAL_KINDS = {"invalid_compressed", "invalid_utf8", "invalid_json"}


def decode_document(value: bytes) -> dict[str, object]:
    """The JSON line ``events decode`` prints for one stored value."""
    from esctl import codec

    decoded, event = codec.decode_event(value)
    fatal = [p for p in event.problems if p.kind in FATAL_KINDS]
    return {
        "ok": not fatal,
        "compressed": decoded.compressed,
        "stored_bytes": decoded.stored_size,
        "event_type": event.event_type,
        "aggregate_id": event.aggregate_id,
        "version": event.version,
        "problems": [{"kind": p.kind, "detail": p.detail} for p in event.problems],
        "text": decoded.text,
        "data": event.data,
    }


def _inputs(values: list[str] | None) -> Iterator[tuple[str, bytes]]:
    if not values or values == ["-"]:
        for number, line in enumerate(sys.stdin.buffer, start=1):
            line = line.rstrip(b"\r\n")
            if line:
                yield f"stdin line {number}", line
        return
    for number, value in enumerate(values, start=1):
        yield f"argument {number}", value.encode("utf-8", "surrogateescape")


@app.command("decode", short_help="Decode stored payloads (plain, gzip, zstd) into JSON.")
@with_context(Scope.NONE, json=False)
def decode(
    ctx: Context,
    values: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="VALUE",
            help="Stored values; '-' or nothing reads one value per line from stdin.",
        ),
    ] = None,
    pretty: Annotated[bool, typer.Option("--pretty", help="Indent the JSON.")] = False,
    text_only: Annotated[
        bool, typer.Option("--text", help="Print only each decoded payload text, one per line.")
    ] = False,
) -> None:
    """Decode stored payloads (plain, gzip+base64 'H4sI…', or zstd) into JSON lines.

    Each line: {"ok", "compressed", "stored_bytes", "event_type", "aggregate_id", "version",
    "problems", "text", "data"}; "text" is the exact payload text. A value that cannot be decoded
    is reported on stderr with its input line, the rest are still decoded, and the exit code is 3.

    \b
    Example: redis-cli --raw HGET EventStore:MyApp:12345 <commit-id> | esctl events decode -
    """
    bad = 0
    for where, value in _inputs(values):
        document = decode_document(value)
        if not document["ok"]:
            bad += 1
            problems = document["problems"]
            assert isinstance(problems, list)
            detail = "; ".join(f"{p['kind']}: {p['detail']}" for p in problems)
            messages.print_error(f"{where}: {detail}")
        if text_only:
            sys.stdout.write(str(document["text"]) + "\n")
        else:
            sys.stdout.write(jsonout.to_json(document, pretty=pretty) + "\n")
    sys.stdout.flush()
    exit_for(problems=bad)


# --- query ---------------------------------------------------------------------------------


class QueryFormat(enum.StrEnum):
    jsonl = "jsonl"
    table = "table"
    json = "json"


TABLE_DEFAULT_LIMIT = 100
"""Rows a table shows when --limit is not given (a table of a million rows helps nobody)."""


@app.command("query", short_help="Find events by type, aggregate, time and payload fields.")
@with_context(Scope.REDIS | Scope.REPLICAS | Scope.PG | Scope.APP, json=False)
@with_groups
def query(
    ctx: Context,
    selected: EventSelection = EventSelection(),
    limit: Annotated[
        int | None,
        count_option(
            "--limit", f"Stop after N results (table: {TABLE_DEFAULT_LIMIT} unless given).", least=0
        ),
    ] = None,
    format_: Annotated[
        QueryFormat | None,
        typer.Option(
            "--format",
            help="jsonl (one object per line), json (one array) or table; default: table on a "
            "terminal, jsonl otherwise.",
            show_default=False,
        ),
    ] = None,
    json_: Annotated[
        bool,
        typer.Option(
            "--json", help="Same as --format json: one JSON array (with --format jsonl: lines)."
        ),
    ] = False,
    source: Annotated[
        EventSource,
        typer.Option(
            "--source", help="Query Redis (commit lists) or the migrated PostgreSQL tables."
        ),
    ] = EventSource.redis,
    progress: ProgressOpt = True,
    transforms_file: TransformsOpt = None,
) -> None:
    """Find events by type, aggregate, time and payload fields, gzip-transparently.

    Each result: {"aggregate_id", "version", "event_type", "aggregate_type", "timestamp",
    "commit_id", "data"}. --source redis (default) streams over the commit lists with bounded
    memory; --source pg asks the migrated tables the same question (every filter runs inside
    PostgreSQL; commit_id is null there). --where: 'Score>=7', 'Rubric.Name~Essay',
    'Lines.Sku=BK-1042' (lists and $values wrappers match when any element does),
    'Comment exists'. Unreadable events are skipped and counted on stderr. --transforms FILE
    previews a rules file on the Redis events: each aggregate's stream is transformed (left-out
    events absent, versions renumbered), then filtered; an aggregate a rule cannot transform is
    left out and reported on stderr (exit 3).

    \b
    Example: esctl events query --app MyService --type OrderPlaced --since 7d --where 'Currency=EUR'
    """
    from esctl import query as core

    out = ctx.out
    out.json = json_
    fmt = format_ or (
        QueryFormat.json
        if json_
        else QueryFormat.table
        if consoles.stdout_is_terminal()
        else QueryFormat.jsonl
    )
    # stdout is JSON whatever happens: an error ends the stream (a line, the array's last
    # element, or alone before any result).
    stream = None if fmt is QueryFormat.table else out.open_stream(array=fmt is QueryFormat.json)
    if json_ and fmt is QueryFormat.table:
        from esctl.errors import UsageError

        raise UsageError(
            "--json asks for JSON and --format table for a table",
            hint="drop one of them (--json is the same as `--format json`)",
        )
    filters = selected.selectors().filters(
        limit=TABLE_DEFAULT_LIMIT if limit is None and fmt is QueryFormat.table else limit
    )
    rules = _load_transforms(transforms_file, source)
    app_value = ctx.app
    client = ctx.redis if source is EventSource.redis else None
    # A bar on stderr, unless JSON goes to the same terminal as it comes (a table comes after
    # the bar has closed).
    bar = out.progress(
        progress and client is not None,
        desc="scanning",
        unit=" events",
        streaming=fmt is not QueryFormat.table,
    )
    with bar:
        results: core.RedisQuery | core.PgQuery | core.TransformedQuery
        if client is None:
            results = core.query_pg(ctx.pg_dsn, ctx.pg_schema, app_value, filters)
        else:
            on_progress = bar.hook(lambda stats: _count(bar, stats))
            if rules is None:
                results = core.query_redis(client, app_value, filters, on_progress=on_progress)
            else:
                results = core.TransformedQuery(
                    client, app_value, filters, rules, on_progress=on_progress
                )
        try:
            shown_limit = filters.limit if limit is None else None
            _emit_results(out, results, fmt, stream, shown_limit=shown_limit, bar=bar)
        except KeyboardInterrupt as exc:
            _interrupted(exc, fmt)
        finally:
            _count(bar, results.stats)  # the last count (a --limit stops between two)
    if results.stats.unreadable:
        were = "was" if results.stats.unreadable == 1 else "were"
        out.warn(
            f"{counted(results.stats.unreadable, 'committed event')} could not be read (no "
            f"payload or undecodable) and {were} skipped; `esctl inspect integrity` lists them"
        )
    if filters.limit != 0:  # --limit 0 reads nothing
        seen = results.stats.events > 0
        if client is None:
            note_if_no_aggregates(ctx, seen=seen)
        else:
            note_if_no_keys(ctx, seen=seen, looked_at=() if filters.aggregates else COMMIT_LISTS)
    if rules is not None and client is not None:
        assert isinstance(results, core.TransformedQuery)
        _report_transforms(out, results)


def _interrupted(exc: KeyboardInterrupt, fmt: QueryFormat) -> NoReturn:
    """Ctrl-C or SIGTERM: what stdout holds and how to go on. A query changes nothing, so a
    rerun does not continue where this one stopped (the default message says it would): it
    finds every result again."""
    from esctl.errors import Interrupted

    if isinstance(exc, Interrupted):
        raise exc
    raise Interrupted(
        "no result was shown (a table is printed at the end)"
        if fmt is QueryFormat.table
        else "the results written before it stopped are whole, none cut short",
        hint="a query changes nothing: the same command finds every result again, from the "
        "start; narrow it (--since, --aggregate) to find the rest",
    ) from exc


def _load_transforms(path: Path | None, source: EventSource) -> Rules | None:
    """The rules of --transforms, checked before any server is asked (UsageError: exit 2)."""
    if path is None:
        return None
    from esctl.errors import UsageError

    if source is not EventSource.redis:
        raise UsageError(
            "--transforms previews what the rules make of the events in Redis; it does not "
            "apply to --source pg (PostgreSQL holds what a migration already wrote)",
            hint="drop `--source pg`, or drop --transforms",
        )
    return read_rules(path)


FAILURES_SHOWN = 10
"""Transform failures told one by one on stderr; the rest are counted."""


def _report_transforms(out: Output, results: core.TransformedQuery) -> None:
    """Left-out events (stderr) and failed aggregates (stderr, exit 3)."""
    if results.left_out:
        out.info(f"transforms: {counted(results.left_out, 'event')} left out")
    if results.unloadable:
        out.warn(
            f"{counted(len(results.unloadable), 'aggregate')} not shown: their Redis streams are "
            "not loadable (versions not 1, 2, 3, …), so migrate quarantines them before any "
            f"transform (first: {results.unloadable[0]!r}); `esctl inspect integrity` lists them"
        )
    for aggregate_id, failure in results.failures[:FAILURES_SHOWN]:
        stored = failure.stored if failure.stored is None else failure.stored[:200]
        out.warn(
            f"aggregate {aggregate_id!r}: transform_failed: {failure.detail} "
            f"(commit {failure.commit_id}; stored {stored!r}); its events are not shown"
        )
    hidden = len(results.failures) - FAILURES_SHOWN
    if hidden > 0:
        out.warn(f"… and {counted(hidden, 'more aggregate')} whose transforms failed")
    exit_for(problems=len(results.failures))


def _count(bar: Progress, stats: core.QueryStats) -> None:
    bar.update(stats.events, postfix={"matched": f"{stats.matched:,}"})


def _emit_results(
    out: Output,
    results: core.RedisQuery | core.PgQuery | core.TransformedQuery,
    fmt: QueryFormat,
    stream: jsonout.JsonStream | None,
    *,
    shown_limit: int | None,
    bar: Progress,
) -> None:
    """Write query results to stdout as they come (jsonl, json: to ``stream``) or as one table
    (after the progress bar, if any, has drawn its last count and closed: else the table's
    first line would continue the bar's)."""
    if fmt is QueryFormat.table:
        rows = [
            (
                r.aggregate_id,
                r.version,
                r.event_type,
                r.aggregate_type,
                r.timestamp,
                r.commit_id,
                r.text if len(r.text) <= 80 else r.text[:79] + "…",
            )
            for r in results
        ]
        _count(bar, results.stats)
        bar.close()
        out.table(
            [
                "aggregate",
                "version",
                "event type",
                "aggregate type",
                "TimeStamp",
                "commit id",
                "data",
            ],
            rows,
            payload=("data",),
            optional=("data", "aggregate type", "commit id"),
            # GUID aggregate ids and timestamps do not fit 80 columns even without those:
            # a record per event then, every id whole, rather than all of them folded.
            records=True,
        )
        if shown_limit is not None and len(rows) >= shown_limit:
            out.info(f"(first {shown_limit} results; --limit N shows more)")
        return
    assert stream is not None
    for r in results:
        stream.write_result(r.json_line())
    stream.close()
