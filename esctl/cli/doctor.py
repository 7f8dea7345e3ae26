"""``esctl doctor``: the Redis settings, latency and memory that hurt event stores."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from esctl import defaults
from esctl.cli import output
from esctl.cli.errors import EXIT_PROBLEMS, reporting
from esctl.cli.options import (
    AppOpt,
    ClusterOpt,
    ConfigOpt,
    DebugOpt,
    EnvOpt,
    JsonOpt,
    PgDsnOpt,
    PgSchemaOpt,
    ProfileOpt,
    RedisUrlOpt,
    settings,
)

if TYPE_CHECKING:
    from esctl import doctor as core

_LABEL = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "unavailable": "n/a"}
_ORDER = {"fail": 0, "warn": 1, "unavailable": 2, "ok": 3}


def doctor(
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            metavar="PATH",
            help="Also write every figure in Prometheus textfile format (replaced atomically), "
            "for node_exporter's textfile collector.",
            show_default=False,
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 3 on warnings too, not only on failures.")
    ] = False,
    sample: Annotated[
        int,
        typer.Option(
            "--sample", min=1, metavar="N", help="Keys sampled per key family (--app checks)."
        ),
    ] = defaults.DOCTOR_SAMPLE,
    stuck_after: Annotated[
        str,
        typer.Option(
            "--stuck-after",
            metavar="DURATION",
            help="A processing message older than this is stuck (--env checks).",
        ),
    ] = "5m",
    compression_threshold: Annotated[
        int,
        typer.Option(
            "--compression-threshold",
            min=0,
            metavar="BYTES",
            help="The library's compression threshold: plain payloads over it are reported.",
        ),
    ] = defaults.COMPRESSION_THRESHOLD,
    read_only: Annotated[
        bool,
        typer.Option(
            "--read-only",
            help="Write nothing to Redis (no new reading for growth and draining comparisons).",
        ),
    ] = False,
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
    """Check the Redis settings, latency, memory and queues that hurt an event store.

    Each check says ok, WARN, FAIL or n/a (it could not run, e.g. CONFIG renamed away on a
    managed Redis), what was observed, why it matters and what to do. Redis checks always
    run; --app adds the event store's memory, uncompressed payloads and growth; --env adds
    stuck messages, dead letters and undrained queues; a configured PostgreSQL DSN (option,
    ESCTL_PG_DSN or config file, not the default) adds schema and migration checks. Growth
    and draining compare with a reading an earlier run stored in Redis (esctl:doctor:*).
    Exit 3 when a check fails (with --strict: or warns), 0 otherwise.

    \b
    Example: esctl doctor --app MyService --env production --metrics-file /var/lib/node_exporter/esctl_doctor.prom
    """
    from esctl import doctor as core
    from esctl.durations import parse_duration

    with reporting(json_mode=json_, debug=debug):
        resolved = settings(
            redis_url=redis_url,
            pg_dsn=pg_dsn,
            pg_schema=pg_schema,
            app=app_name,
            env=env,
            profile=profile,
            config=config,
        )
        explicit_pg = resolved.values["pg_dsn"].source != "default"
        report = core.run_doctor(
            core.DoctorOptions(
                redis_url=resolved.redis_url,
                cluster=cluster,
                app=resolved.get("app"),
                env=resolved.get("env"),
                pg_dsn=resolved.pg_dsn if explicit_pg else None,
                pg_schema=resolved.pg_schema,
                sample=sample,
                stuck_after=parse_duration(stuck_after),
                compression_threshold=compression_threshold,
                read_only=read_only,
            )
        )
        if metrics_file is not None:
            core.write_metrics_file(str(metrics_file), report)
        exit_code = EXIT_PROBLEMS if report.failed or (strict and report.warned) else 0
        if json_:
            document = report.as_dict()
            document["strict"] = strict
            document["metrics_file"] = str(metrics_file) if metrics_file else None
            document["exit_code"] = exit_code
            output.emit_json(document)
        else:
            _render(report)
            if metrics_file is not None:
                output.info(f"wrote {metrics_file}")
        if exit_code:
            raise typer.Exit(exit_code)


def _render(report: core.DoctorReport) -> None:
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
    output.emit_table(
        ["status", "check", "observed"],
        [(_LABEL[c.status], c.id, c.observed) for c in report.checks],
        title=f"esctl doctor: {scope}",
    )
    findings = sorted(
        (c for c in report.checks if c.status != "ok"), key=lambda c: _ORDER[c.status]
    )
    console = output.stdout_console
    for check in findings:
        console.print()
        console.print(f"{_LABEL[check.status]}  {check.id}: {check.title}", markup=False)
        console.print(f"  observed: {check.observed}", markup=False)
        console.print(f"  why: {check.why}", markup=False)
        if check.action:
            console.print(f"  do: {check.action}", markup=False)
        for line in check.details[:20]:
            console.print(f"  - {line}", markup=False)
        if len(check.details) > 20:
            console.print(f"  … and {len(check.details) - 20} more (--json has all)", markup=False)
    console.print()
    for skipped in report.skipped:
        console.print(f"skipped {skipped['group']} checks: {skipped['reason']}", markup=False)
    counts = report.counts()
    console.print(
        f"{counts['fail']} failed, {counts['warn']} warning(s), {counts['ok']} ok, "
        f"{counts['unavailable']} could not run ({report.elapsed_s:.1f} s)",
        markup=False,
    )
