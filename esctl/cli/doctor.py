"""``esctl doctor``: the Redis settings, latency and memory that hurt event stores."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from esctl import defaults
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.errors import EXIT_PROBLEMS, exit_for
from esctl.cli.options import MetricsFileOpt, count_option, option
from esctl.cli.output import Output
from esctl.units import counted

if TYPE_CHECKING:
    from esctl import doctor as core

_LABEL = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "unavailable": "n/a"}
_ORDER = {"fail": 0, "warn": 1, "unavailable": 2, "ok": 3}


@with_context(Scope.REDIS | Scope.PG | Scope.APP | Scope.ENV)
def doctor(
    ctx: Context,
    metrics_file: MetricsFileOpt = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 3 on warnings too, not only on failures.")
    ] = False,
    sample: Annotated[
        int,
        count_option("--sample", "Keys sampled per key family (--app checks).", show_default=True),
    ] = defaults.DOCTOR_SAMPLE,
    stuck_after: Annotated[
        str,
        option(
            "--stuck-after",
            "DURATION",
            "A processing message older than this is stuck (--env checks).",
            show_default=True,
        ),
    ] = "5m",
    compression_threshold: Annotated[
        int,
        option(
            "--compression-threshold",
            "BYTES",
            "The library's compression threshold: plain payloads over it are reported.",
            show_default=True,
            min=0,
        ),
    ] = defaults.COMPRESSION_THRESHOLD,
    read_only: Annotated[
        bool,
        typer.Option(
            "--read-only",
            help="Write nothing to Redis (no new reading for growth and draining comparisons).",
        ),
    ] = False,
) -> None:
    """Check the Redis settings, latency, memory and queues that hurt an event store.

    Each check says ok, WARN, FAIL or n/a (it could not run, e.g. CONFIG renamed away on a
    managed Redis), what was observed, why it matters and what to do. Redis checks always
    run; --app adds the event store's memory, uncompressed payloads, growth and keys of
    another Redis type than the library's; --env adds stuck messages, dead letters and
    undrained queues; a configured PostgreSQL DSN (option,
    ESCTL_PG_DSN or config file, not the default) adds schema and migration checks. Growth
    and draining compare with a reading an earlier run stored in Redis (esctl:doctor:*).
    Exit 3 when a check fails (with --strict: or warns), 0 otherwise.

    \b
    Example: esctl doctor --app MyService --env production --metrics-file /var/lib/node_exporter/esctl_doctor.prom
    """
    from esctl import doctor as core
    from esctl.durations import parse_duration

    out = ctx.out
    explicit_pg = ctx.settings.values["pg_dsn"].source != "default"
    report = core.run_doctor(
        core.DoctorOptions(
            redis_url=ctx.redis_url,
            cluster=ctx.cluster,
            app=ctx.get("app"),
            app_setting=ctx.settings.where_set("app"),
            env=ctx.get("env"),
            env_setting=ctx.settings.where_set("env"),
            pg_dsn=ctx.pg_dsn if explicit_pg else None,
            pg_schema=ctx.pg_schema,
            sample=sample,
            stuck_after=parse_duration(stuck_after),
            compression_threshold=compression_threshold,
            read_only=read_only,
        )
    )
    if metrics_file is not None:
        core.write_metrics_file(str(metrics_file), report)
    exit_code = EXIT_PROBLEMS if report.failed or (strict and report.warned) else 0
    document = report.as_dict()
    document["strict"] = strict
    document["metrics_file"] = str(metrics_file) if metrics_file else None
    document["exit_code"] = exit_code

    def render() -> None:
        _render(out, report)
        out.wrote(metrics_file)

    out.result(document, render)
    exit_for(problems=exit_code)


def _render(out: Output, report: core.DoctorReport) -> None:
    scope = ", ".join(
        part
        for part in (
            f"Redis {report.redis}",
            f"app {report.app}" if report.app else "",
            f"env {report.env}" if report.env else "",
            f"PostgreSQL {report.postgresql}" if report.postgresql else "",
        )
        if part
    )
    out.table(
        ["status", "check", "observed"],
        [(_LABEL[c.status], c.id, c.observed) for c in report.checks],
        title=f"esctl doctor: {scope}",
    )
    findings = sorted(
        (c for c in report.checks if c.status != "ok"), key=lambda c: _ORDER[c.status]
    )
    for check in findings:
        out.print()
        out.print(f"{_LABEL[check.status]}  {check.id}: {check.title}")
        out.prose("observed", check.observed)
        out.prose("why", check.why)
        if check.action:
            out.prose("do", check.action)  # its commands in backticks, each whole on a row
        for line in check.details[:20]:
            out.hanging("  - ", line)
        if len(check.details) > 20:
            out.print(f"  … and {len(check.details) - 20} more (--json has all)")
    out.print()
    for skipped in report.skipped:
        out.wrapped(f"skipped {skipped['group']} checks: {skipped['reason']}")
    counts = report.counts()
    out.wrapped(
        f"{counts['fail']} failed, {counted(counts['warn'], 'warning', separators=False)}, "
        f"{counts['ok']} ok, "
        f"{counts['unavailable']} could not run ({out.format_duration(report.elapsed_s)})"
    )
