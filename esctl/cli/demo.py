"""``esctl demo``: throwaway Redis and PostgreSQL servers holding a demo event store, and a tour."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from esctl import defaults
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.errors import stopping_on_signals
from esctl.cli.options import option
from esctl.cli.output import Output
from esctl.config import redact

if TYPE_CHECKING:
    from esctl import demo as core

KeepOpt = Annotated[
    bool,
    typer.Option(
        "--keep",
        help="Leave the servers running and print the export line that points esctl at them.",
    ),
]
SeedOpt = Annotated[int, option("--seed", "N", "Seed of the generated data.", show_default=True)]


@with_context(Scope.NONE)
def demo(ctx: Context, keep: KeepOpt = False, seed: SeedOpt = defaults.DEMO_SEED) -> None:
    """Start throwaway Redis and PostgreSQL servers, write a demo event store, show what to try.

    The store (app Learning.ScoringService.Web-Demo, env demo) holds four aggregate types in
    both storage layouts, compressed and plain payloads, snapshots, subscriber queues with
    waiting, stuck and dead-lettered messages, and one of each defect esctl reports (orphan,
    missing payload, invalid compressed value, version gap, shared commit list). Without
    --keep the servers are stopped before the command returns.

    \b
    Example: esctl demo --keep   (then paste the printed export line)
    """
    from esctl import demo as core

    out = ctx.out
    with stopping_on_signals():  # SIGTERM and SIGHUP stop its servers, as Ctrl-C does
        out.info("starting a throwaway Redis and PostgreSQL and writing the demo store…")
        with core.demo_environment(keep=keep, seed=seed) as run:
            out.result(_document(run), lambda: _render(out, run))
        if not keep:
            out.info(
                "stopped the demo servers; run `esctl demo --keep` to keep them and try the tour"
            )


def _document(run: core.DemoRun) -> dict[str, Any]:
    """The ``--json`` document."""
    from esctl.cli import demo_tour  # the tour lives beside this command

    return {
        "app": run.summary.app,
        "env": run.summary.env,
        "kept": run.kept,
        "redis": {
            "url": redact(run.redis.url),
            "pid": run.redis.pid,
            "port": run.redis.port,
            "workdir": str(run.redis.workdir),
        },
        "postgres": {
            "dsn": redact(run.postgres.dsn),
            "pid": run.postgres.pid,
            "port": run.postgres.port,
            "workdir": str(run.postgres.workdir),
        },
        "summary": run.summary.to_dict(),
        "tour": [
            {"command": step.command, "description": step.description}
            for step in demo_tour.tour(run.summary, run.tools())
        ],
        "exports": run.exports() if run.kept else None,
        "stop_commands": run.stop_commands() if run.kept else None,
    }


def _render(out: Output, run: core.DemoRun) -> None:
    from esctl.cli import demo_tour  # the tour lives beside this command

    summary = run.summary
    out.mapping(
        {
            "aggregates": summary.aggregates,
            "commit lists": summary.commit_lists,
            "events": summary.events,
            "  compressed (gzip+base64)": summary.compressed_events,
            "  legacy layout": summary.legacy_events,
            "aggregates in both layouts": summary.mixed_layout_aggregates,
            "snapshots": summary.snapshots,
            "published / processing (stuck) / dead-lettered messages": (
                f"{summary.published_messages} / {summary.processing_messages} "
                f"({summary.stuck_messages}) / {summary.dead_letters}"
            ),
            "planted defects": len(summary.defects),
        },
        title=f"Demo store in Redis {redact(run.redis.url)}: app {summary.app}, env {summary.env}",
    )
    out.table(
        ["aggregate type", "aggregates", "events"],
        [
            (name, count, summary.events_by_aggregate_type.get(name, 0))
            for name, count in summary.aggregates_by_type.items()
        ],
    )
    out.table(
        ["event type", "events", "subscribers"],
        [
            (name, count, ", ".join(summary.subscribers.get(name, [])) or None)
            for name, count in summary.events_by_event_type.items()
        ],
    )
    out.table(
        ["subscriber", "event type", "published", "processing", "stuck", "dead letters"],
        [
            (q.subscriber, q.event_type, q.published, q.processing, q.stuck, q.dead_letters)
            for q in summary.queues
        ],
        group="subscriber",  # as queue list: at 80 columns a table per subscriber
        records=True,  # ... and at 40 a record per queue
    )
    out.print()
    out.print("Planted defects:")
    for defect in summary.defects:
        where = defect.key + (f" commit {defect.commit_id}" if defect.commit_id else "")
        out.hanging(f"  {defect.kind:<19} ", defect.detail)
        out.hanging(f"  {'':<19} ", where)
    out.print()
    out.print("Try next" + ("" if run.kept else " (with --keep, after the export line)") + ":")
    for step in demo_tour.tour(summary, run.tools()):
        out.shell_comment(step.description)
        out.shell_command(step.command)
    if run.kept:
        out.print()
        out.print("The servers keep running. Point esctl at them with:")
        out.shell_command(run.export_line(), indent="")
        out.print("Stop them and remove their data with:")
        for command in run.stop_commands():
            out.shell_command(command, indent="")
