"""``esctl migrate plan``: estimate a migration from a sample."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from esctl import defaults
from esctl.cli.appkeys import COMMIT_LISTS, note_if_no_keys
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.migrate.common import store, toast, toast_option
from esctl.cli.options import count_option, read_rules, transforms_option
from esctl.cli.output import Output
from esctl.units import counted

if TYPE_CHECKING:
    from collections.abc import Callable

    from esctl import plan as plan_core


SampleOpt = Annotated[
    int,
    count_option("--sample", "Aggregates to read whole (a random sample).", show_default=True),
]
TrialOpt = Annotated[
    bool,
    typer.Option(
        "--trial/--no-trial",
        help="Write the sample into PostgreSQL in a rolled-back transaction to measure size "
        "and speed.",
    ),
]
TrialEventsOpt = Annotated[
    int,
    count_option("--trial-events", "At most this many events in the trial.", show_default=True),
]
PlanToastCompressionOpt = Annotated[
    str,
    toast_option(
        "As for redis-to-pg: the compression the size estimate assumes (lz4, pglz, or 'server')."
    ),
]
PlanTransformsOpt = Annotated[
    Path | None,
    transforms_option(
        "A TOML rules file (README 'Transforms'): what each rule does to the sample, and "
        "the PostgreSQL size after the rules."
    ),
]


@with_context(Scope.REDIS | Scope.PG | Scope.APP)
def plan_command(
    ctx: Context,
    sample: SampleOpt = defaults.PLAN_SAMPLE,
    trial: TrialOpt = True,
    trial_events: TrialEventsOpt = defaults.PLAN_TRIAL_EVENTS,
    toast_compression: PlanToastCompressionOpt = "lz4",
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
        **store(ctx),
        sample=sample,
        trial=trial,
        trial_events=trial_events,
        toast_compression=toast(toast_compression),
        transforms=read_rules(transforms_file),
    )
    summary = plan_core.plan(ctx.redis, opts)
    ctx.out.result(summary.as_dict(), lambda: _render_plan(ctx.out, summary))
    note_if_no_keys(ctx, seen=summary.aggregates > 0, looked_at=COMMIT_LISTS)


def _render_plan(out: Output, summary: plan_core.PlanSummary) -> None:
    about = "" if summary.exact else "~"
    size = out.format_bytes

    def estimated(value: float | None, unit: Callable[[Any], str]) -> str:
        """``~`` and the value, or ``-`` with none (no trial): not ``~-``."""
        return "-" if value is None else "~" + unit(value)

    out.mapping(
        {
            "aggregates": summary.aggregates,
            "events": summary.events,
            "sample": f"{counted(summary.sample_aggregates, 'aggregate')}, "
            f"{counted(summary.sample_events, 'event')}" + (" (all)" if summary.exact else ""),
            "stored in Redis (payloads)": about + size(summary.stored_bytes_estimate),
            "decompressed JSON": about + size(summary.json_bytes_estimate),
            "compressed events": f"{summary.compressed_share:.1%}",
            "legacy-layout events": f"{summary.legacy_share:.1%}",
            "PostgreSQL size": estimated(summary.pg_bytes_estimate, size),
            "  of which event_data": estimated(summary.pg_event_data_bytes_estimate, size),
            # No trial (the warning under the table says why): no rate, not a rate of 0.
            "trial": "-"
            if not summary.trial_events
            else f"{counted(summary.trial_events, 'event')} at "
            f"{summary.trial_events_per_s or 0:,.0f} events/s (read "
            f"{summary.read_events_per_s or 0:,.0f}/s, write "
            f"{summary.write_events_per_s or 0:,.0f}/s)",
            "estimated run time": estimated(summary.estimated_seconds, out.format_duration),
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
        f"{counted(t['sample_events_before'], 'event')} -> {t['sample_events_after']:,}, "
        f"{counted(t['sample_aggregates_left_out'], 'aggregate')} left out whole; the store "
        f"after the rules: ~{counted(t['events_after_estimate'], 'event')}",
    )
