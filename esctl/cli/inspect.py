"""``esctl inspect``: read-only looks into the Redis event store (aggregate, event, integrity,
stats)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from esctl.cli.appkeys import (
    EVENT_KEYS,
    EVERY_FAMILY,
    apps_hint_on_not_found,
    note_if_no_keys,
)
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.errors import exit_for
from esctl.cli.options import ProblemsFileOpt, ProgressOpt, ShardOpt, count_option
from esctl.cli.output import Output
from esctl.units import counted

if TYPE_CHECKING:
    from esctl import inspect as core

app = typer.Typer(
    no_args_is_help=True,
    help="Look into the Redis event store: an aggregate, an event, integrity, memory. Read-only.",
    short_help="Look into the Redis event store (read-only).",
)

READS = Scope.REDIS | Scope.REPLICAS | Scope.APP
"""What every inspect command reads: the app's keys in Redis."""


def _where(row: core.EventRow) -> str:
    if row.layout == "legacy":
        return "legacy hash"
    if row.partition is not None:
        return f"partition {row.partition}"
    return "missing"


# --- aggregate -----------------------------------------------------------------------------


@app.command("aggregate", short_help="One aggregate: its events, snapshot and problems.")
@with_context(READS)
def aggregate(
    ctx: Context,
    aggregate_id: Annotated[
        str,
        typer.Argument(metavar="AGGREGATE_ID", help="The aggregate id (as in its commit list)."),
    ],
    from_version: Annotated[
        int | None,
        count_option("--from-version", "List events from this version on (checks cover all)."),
    ] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Also show each event's value as stored in Redis.")
    ] = False,
) -> None:
    """Show one aggregate: its commit list, every event (decoded), snapshot and problems.

    Payloads are fetched in pipelined round trips (1,000 per trip). Problems — a commit with no
    payload, an invalid gzip value, a payload Id that is not the aggregate's, versions that are
    not 1..n or not in commit order, a changing AggregateType, two aggregate types sharing the
    commit list — are listed and make the exit code 3. --json prints the whole document with
    each event's exact payload text and decoded data.

    \b
    Example: esctl inspect aggregate 3f0c2a9e-… --app MyService --json | jq '.events[].data'
    """
    from esctl import inspect as core

    app_value = ctx.app
    with apps_hint_on_not_found(ctx):
        report = core.inspect_aggregate(
            ctx.redis, app_value, aggregate_id, from_version=from_version
        )
    ctx.out.result(report.as_dict(raw=raw), lambda: _render_aggregate(ctx.out, report, raw=raw))
    exit_for(problems=not report.ok)


def _render_aggregate(out: Output, report: core.AggregateReport, *, raw: bool) -> None:
    snapshot = report.snapshot
    out.mapping(
        {
            "app": report.app,
            "aggregate": report.aggregate_id,
            "commit list": report.key,
            "commits": report.commits,
            "aggregate type": ", ".join(report.aggregate_types) or None,
            "first TimeStamp": report.first_timestamp,
            "last TimeStamp": report.last_timestamp,
            "snapshot": None
            if snapshot is None
            else f"version {snapshot.version} ({snapshot.key})"
            if snapshot.version is not None
            else f"unreadable ({snapshot.key}: {snapshot.problem})",
            "stored bytes": report.stored_bytes,
            "compressed payloads": f"{report.compressed_events} of {report.commits}",
        },
        title=f"aggregate {report.aggregate_id}",
    )
    out.table(
        [
            "#",
            "version",
            "event type",
            "TimeStamp",
            "commit id",
            "stored in",
            "bytes",
            "gzip",
            "problems",
        ],
        [
            (
                e.position,
                e.version,
                e.event_type,
                e.timestamp,
                e.commit_id,
                _where(e),
                e.stored_bytes,
                e.compressed is not None if e.stored_bytes is not None else None,
                ", ".join(e.problems) or None,
            )
            for e in report.events
        ],
        # On a terminal too narrow for all (80 columns), the event type and commit id stay
        # whole: the problems are listed below, the rest is in --json.
        optional=["TimeStamp", "stored in", "gzip", "bytes", "problems"],
        records=True,  # a narrow terminal (40 columns): a record per event
        title=f"events (commit order{f', versions >= {report.from_version}' if report.from_version else ''})",
    )
    if raw:
        from esctl import inspect as core

        for e in report.events:
            out.print(f"{e.commit_id}: {core._text_or_none(e.stored) or repr(e.stored)}")
    if report.problems:
        out.table(
            ["kind", "commit", "detail"],
            [(p["kind"], p["commit_id"], p["detail"]) for p in report.problems],
            title=f"problems ({len(report.problems)})",
            records=True,
        )


# --- event ---------------------------------------------------------------------------------


@app.command("event", short_help="One event by commit id: where it is stored, decoded.")
@with_context(READS)
def event(
    ctx: Context,
    commit_id: Annotated[
        str, typer.Argument(metavar="COMMIT_ID", help="The commit id (a GUID, or a legacy number).")
    ],
) -> None:
    """Find one event by commit id (partitioned hash, then legacy), show it decoded.

    Also says whether the commit list of the aggregate it names lists it: a payload no commit
    list names is an orphan (never committed). Exit code 3 for an orphan or an undecodable
    payload, 1 when the commit id is in neither hash.

    \b
    Example: esctl inspect event 3f0c2a9e-0d1b-4c5e-9f8a-1b2c3d4e5f60 --app MyService
    """
    from esctl import inspect as core

    app_value = ctx.app
    with apps_hint_on_not_found(ctx):
        report = core.inspect_event(ctx.redis, app_value, commit_id)
    ctx.out.result(report.as_dict(), lambda: _render_event(ctx.out, report))
    exit_for(problems=not report.ok)


def _render_event(out: Output, report: core.EventReport) -> None:
    out.mapping(
        {
            "commit id": report.commit_id,
            "stored in": report.hash_key
            + (f" (partition {report.partition})" if report.partition is not None else ""),
            "stored bytes": report.stored_bytes,
            "compressed": report.compressed,
            "event type": report.event_type,
            "aggregate": report.aggregate_id,
            "aggregate type": report.aggregate_type,
            "version": report.version,
            "TimeStamp": report.timestamp,
            "committed": None
            if report.committed is None
            else f"yes, entry {report.position} of {report.commit_list_key}"
            if report.committed
            else f"NO: {report.commit_list_key} does not list it (orphan)",
        },
        title=f"event {report.commit_id}",
    )
    if report.data is not None:
        out.print(orjson.dumps(report.data, option=orjson.OPT_INDENT_2).decode("utf-8"))
    else:
        out.print(report.text)
    for p in report.problems:
        out.warn(f"{p['kind']}: {p['detail']}")


# --- integrity -----------------------------------------------------------------------------


@app.command("integrity", short_help="Scan the whole store and report what is wrong.")
@with_context(READS)
def integrity(
    ctx: Context,
    examples: Annotated[
        int,
        count_option(
            "--examples", "Examples listed per kind of problem.", least=0, show_default=True
        ),
    ] = 10,
    shard: ShardOpt = None,
    progress: ProgressOpt = True,
    problems_file: ProblemsFileOpt = None,
) -> None:
    """Scan the whole event store and report what is wrong, with counts and examples.

    Finds orphan hash fields (payloads no commit list names), commit ids with no payload,
    payloads stored in another partition than their commit id's, undecodable payloads,
    aggregates the library would not load (version gap, repeat or order, Id mismatch, changing
    or shared aggregate type), and keys named as a commit list or an event hash that hold
    another Redis type (wrong_key_type: the library fails on them). Memory stays flat whatever the store's size (commit ids are
    spilled to a temporary SQLite file). Exit code 3 when anything is found.

    --shard I/N checks the aggregates whose id hashes to I (CRC-32 of the id mod N) and the
    hash fields of the partition hashes numbered I mod N (legacy hash fields: by their commit
    id's partition); N runs, one per shard, report together exactly what one run reports. Each
    still reads every commit list (commit ids only, no payloads).

    \b
    Example: esctl inspect integrity --app MyService --json | jq .counts
    """
    from esctl import inspect as core
    from esctl.shard import Shard

    out = ctx.out
    shard_value = Shard.from_option(shard)
    app_value = ctx.app
    client = ctx.redis
    with out.progress(progress, desc="commit lists", unit=" keys") as bar:

        def on_progress(p: core.IntegrityProgress) -> None:
            bar.update(
                p.lists_read if p.phase == "commit lists" else p.event_hashes,
                desc=p.phase,
                postfix={"commits": f"{p.commits:,}", "fields": f"{p.hash_fields:,}"},
            )

        report = core.check_integrity(
            client,
            app_value,
            examples=examples,
            shard=shard_value,
            on_progress=bar.hook(on_progress),
            problems_file=None if problems_file is None else str(problems_file),
        )
    out.result(report.as_dict(), lambda: _render_integrity(out, report))
    note_if_no_keys(
        ctx,
        seen=bool(
            report.commit_lists or report.event_hashes or report.legacy_fields or report.counts
        ),
        # A shard's run counts only the shard's keys.
        looked_at=EVENT_KEYS if shard_value.count == 1 else (),
    )
    exit_for(problems=not report.ok)


def _render_integrity(out: Output, report: core.IntegrityReport) -> None:
    out.mapping(
        {
            "commit lists": report.commit_lists,
            "commits": report.commits,
            "partition hashes": report.event_hashes,
            "hash fields (partitioned)": report.hash_fields,
            "hash fields (legacy)": report.legacy_fields,
            "aggregates with problems": report.aggregates_with_problems,
            "elapsed": out.format_duration(report.elapsed_s),
        },
        title=f"integrity of {report.app}"
        + (f" (shard {report.shard})" if report.shard.count > 1 else "")
        + (": no problems" if report.ok else ": problems found"),
    )
    if report.ok:
        return
    total = report.problems_total
    out.table(["kind", "count"], list(report.counts.items()), title=f"problems by kind ({total})")
    out.table(
        ["kind", "aggregate", "key", "detail"],
        [(p["kind"], p["aggregate_id"], p["key"], p["detail"]) for p in report.problems],
        title=f"first examples ({len(report.problems)} of {total})",
        records=True,
    )
    if report.problems_where is not None:
        out.command(f"All {counted(total, 'problem', separators=False)}:", report.problems_where)
    elif len(report.problems) < total:
        out.wrapped(
            f"{total - len(report.problems)} more not listed: rerun with --problems-file PATH "
            "to write every one"
        )


# --- stats ---------------------------------------------------------------------------------


def _share(value: float | None) -> str | None:
    return None if value is None else f"{value * 100:.1f}%"


@app.command("stats", short_help="Where the memory goes, per key family and event type.")
@with_context(READS | Scope.ENV)
def stats(
    ctx: Context,
    sample: Annotated[
        int,
        count_option(
            "--sample", "Keys sampled per family (MEMORY USAGE, payloads).", show_default=True
        ),
    ] = 1000,
    full: Annotated[
        bool, typer.Option("--full", help="Read every payload: exact per-type events and bytes.")
    ] = False,
    progress: ProgressOpt = True,
) -> None:
    """Where the memory goes: counts, payload sizes, MEMORY USAGE per key family, event types.

    Counts aggregates, commit ids, hash fields (partitioned and legacy), snapshots and queue
    lists (of --env, or of every environment); the compressed share and ratio and the payload
    bytes; MEMORY USAGE of --sample keys per family scaled to all keys, with the share of
    used_memory (what moving the events to PostgreSQL would free); and events and stored bytes
    per event type, from the payloads of --sample commit lists (or exact with --full).

    \b
    Example: esctl inspect stats --app MyService --sample 2000 --json | jq .memory
    """
    from esctl import inspect as core

    out = ctx.out
    app_value = ctx.app
    client = ctx.redis
    with out.progress(progress, desc="scanning", unit=" keys") as bar:

        def on_progress(phase: str, keys: int) -> None:
            bar.update(keys, desc=phase)

        report = core.inspect_stats(
            client,
            app_value,
            env=ctx.get("env"),
            sample=sample,
            full=full,
            on_progress=bar.hook(on_progress),
        )
    out.result(report.as_dict(), lambda: _render_stats(out, report))
    note_if_no_keys(ctx, seen=report.store_keys > 0, looked_at=EVERY_FAMILY)


def _render_stats(out: Output, report: core.StatsReport) -> None:
    size = out.format_bytes
    document = report.as_dict()
    events = document["events"]
    payloads = document["payloads"]
    memory = document["memory"]
    out.mapping(
        {
            "aggregates (commit lists)": report.commit_lists,
            "commit ids": events["commit_ids"],
            "hash fields, partitioned": f"{report.partitioned_fields:,} in "
            f"{counted(report.partitioned_hashes, 'hash', 'hashes')}",
            "hash fields, legacy": report.legacy_fields,
            "snapshots": f"{report.snapshots:,} in "
            f"{counted(report.snapshot_hashes, 'hash', 'hashes')}",
            "queue lists (published/processing/dead)": " / ".join(
                str(report.queue_lists[k]) for k in ("published", "processing", "dead")
            )
            + (f" (env {report.env})" if report.env else " (all environments)"),
            "queued messages (published/processing/dead)": " / ".join(
                str(report.queue_messages[k]) for k in ("published", "processing", "dead")
            ),
            "payloads examined": payloads["examined"],
            "compressed share": _share(payloads["compressed_share"]),
            "compression ratio": payloads["compression_ratio"],
            "payload bytes" + ("" if report.payload_bytes_exact else " (estimated)"): size(
                report.payload_bytes
            ),
            "used_memory": size(report.used_memory),
            "event storage (estimated)": f"{size(report.event_store_bytes)} "
            f"({_share(memory['event_store_share']) or '?'} of used_memory)",
        },
        title=f"stats of {report.app}",
    )
    out.table(
        ["family", "keys", "sampled", "estimated", "share of used_memory"],
        [
            (m.family, m.keys, m.sampled, size(m.estimated_bytes), _share(m.share_of_used_memory))
            for m in report.memory
        ],
        title="memory (MEMORY USAGE of a sample, scaled to all keys)",
    )
    exact = document["event_types_exact"]
    out.table(
        ["event type", "events", "stored", "share of bytes", "compressed"],
        [
            (
                t["event_type"],
                t["events"],
                size(t["stored_bytes"]),
                _share(t["share_of_bytes"]),
                t["compressed"],
            )
            for t in document["event_types"]
        ],
        title="event types" + ("" if exact else " (estimated from the sample)"),
    )
