"""``esctl migrate verify``: compare Redis with PostgreSQL per aggregate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from esctl import defaults
from esctl.cli.appkeys import note_if_no_keys
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.errors import exit_for
from esctl.cli.migrate.common import checked_rules, store, workers_option
from esctl.cli.options import ProblemsFileOpt, ShardOpt, count_option, transforms_option

VerifyTransformsOpt = Annotated[
    Path | None,
    transforms_option(
        "The rules file the migration used: compare PostgreSQL with the events as the "
        "rules make them (left-out events are not missing)."
    ),
]


@with_context(Scope.REDIS | Scope.REPLICAS | Scope.PG | Scope.APP)
def verify_command(
    ctx: Context,
    sample: Annotated[
        int | None,
        count_option("--sample", "Compare a random sample of N aggregates."),
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
        workers_option(
            "Processes comparing in parallel, each taking the next page of aggregates "
            "from one scan (default: 2 where there are 2 or more CPUs).",
            most=32,
            show_default=False,
        ),
    ] = defaults.verify_workers_default(),
    problems_file: ProblemsFileOpt = None,
    transforms_file: VerifyTransformsOpt = None,
) -> None:
    """Compare Redis with PostgreSQL per aggregate: counts, versions and content.

    Reports missing_in_pg, extra_in_pg, content_differs, not_migrated_new_events and
    unmigratable_in_redis; exits 3 on any mismatch. Read-only on both sides.

    \b
    Example: esctl migrate verify --app MyService --sample 10000
    """
    from esctl import verify as verify_core
    from esctl.shard import Shard

    out = ctx.out
    opts = verify_core.VerifyOptions(
        **store(ctx),
        shard=Shard.from_option(shard),
        sample=sample,
        allow_new_events=allow_new_events,
        problems_file=None if problems_file is None else str(problems_file),
        transforms=checked_rules(transforms_file),
    )
    summary = verify_core.verify_parallel(ctx.redis_target, opts, workers=workers)

    def render() -> None:
        counts = {k.replace("_", " "): v for k, v in summary.counts.items()}
        out.mapping(
            {
                "aggregates compared": summary.aggregates,
                "identical": summary.aggregates_identical,
                "events compared": summary.events_compared,
                **counts,
                "elapsed": out.format_duration(summary.elapsed_s),
            },
            title="migrate verify" + (f" (sample of {sample})" if sample else ""),
        )
        out.problem_summary(
            summary.problems,
            {k: n for k, n in summary.counts.items() if n},
            summary.mismatches,
            summary.problems_where,
            title="mismatches",
            one="mismatch",
            unrecorded="rerun with --problems-file PATH to write every one",
        )
        if summary.migrated_with_transforms:
            out.warn(
                "the migration used transforms "
                f"{summary.migrated_with_transforms}: rerun with --transforms FILE to compare "
                "with the events as the rules make them"
            )

    out.result(summary.as_dict(), render)
    note_if_no_keys(ctx, seen=summary.aggregates > 0)
    exit_for(problems=summary.mismatches)
