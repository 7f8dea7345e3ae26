"""Option aliases shared by the commands, declared once (so they work after the subcommand).
The connection and scope options are given to commands by ``esctl.cli.context``."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer


class EventSource(enum.StrEnum):
    """Where a command reads stored events: the Redis commit lists or the migrated tables."""

    redis = "redis"
    pg = "pg"


RedisUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        metavar="URL",
        help="Redis URL [env ESCTL_REDIS_URL; default redis://localhost:6379/0]",
        show_default=False,
    ),
]
ClusterOpt = Annotated[
    bool, typer.Option("--cluster", help="Treat --redis-url as a Redis Cluster seed node.")
]
ReadFromReplicasOpt = Annotated[
    bool,
    typer.Option(
        "--read-from-replicas",
        help="On a Redis Cluster, send reads to the replicas (keeps load off the primaries; "
        "a replica may lag behind its primary).",
    ),
]
PgDsnOpt = Annotated[
    str | None,
    typer.Option(
        "--pg-dsn",
        metavar="DSN",
        help="PostgreSQL DSN or URL [env ESCTL_PG_DSN; default postgresql://localhost/postgres]",
        show_default=False,
    ),
]
PgSchemaOpt = Annotated[
    str | None,
    typer.Option(
        "--pg-schema",
        metavar="NAME",
        help="Schema of the event tables [env ESCTL_PG_SCHEMA; default public]",
        show_default=False,
    ),
]
AppOpt = Annotated[
    str | None,
    typer.Option(
        "--app",
        metavar="NAME",
        help="ApplicationName of the service [env ESCTL_APP]",
        show_default=False,
    ),
]
EnvOpt = Annotated[
    str | None,
    typer.Option(
        "--env", metavar="NAME", help="Environment name [env ESCTL_ENV]", show_default=False
    ),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile",
        metavar="NAME",
        help="Config file section [env ESCTL_PROFILE; default default]",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        metavar="PATH",
        help="Config file [env ESCTL_CONFIG; default ./esctl.toml, "
        "then ~/.config/esctl/config.toml]",
        show_default=False,
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (JSON lines for streams).")
]
DebugOpt = Annotated[
    bool,
    typer.Option("--debug", help="Show Python tracebacks on errors.", envvar="ESCTL_DEBUG"),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")
]
ProgressOpt = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Progress bar on a terminal (stderr).")
]
MetricsFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--metrics-file",
        metavar="PATH",
        help="Also write the figures in Prometheus textfile format (replaced atomically), "
        "for node_exporter's textfile collector.",
        show_default=False,
    ),
]
IntervalOpt = Annotated[
    str | None,
    typer.Option(
        "--interval",
        metavar="DURATION",
        help="With --watch: time between readings (500ms, 2s, 1m; at least 100ms). [default: 2s]",
        show_default=False,
    ),
]


# --- selecting events (events query, replay) --------------------------------------------------

EventTypesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--type", metavar="TYPE", help="Event type (class name, e.g. ItemScoreCreated); repeatable."
    ),
]
AggregateTypeOpt = Annotated[
    str | None,
    typer.Option(
        "--aggregate-type",
        metavar="TYPE",
        help="AggregateType (e.g. ItemScore).",
        show_default=False,
    ),
]
AggregatesOpt = Annotated[
    list[str] | None,
    typer.Option("--aggregate", metavar="ID", help="Aggregate id; repeatable (reads only those)."),
]
SinceOpt = Annotated[
    str | None,
    typer.Option(
        "--since",
        metavar="TIME",
        help="TimeStamp at or after: ISO 8601 (UTC unless an offset is given) or 7d, 12h, 30m.",
        show_default=False,
    ),
]
UntilOpt = Annotated[
    str | None,
    typer.Option(
        "--until",
        metavar="TIME",
        help="TimeStamp before (same forms as --since).",
        show_default=False,
    ),
]
WhereOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--where",
        metavar="EXPR",
        help="PATH OP VALUE on payload fields (OP: = != > >= < <= ~) or PATH exists; "
        "dotted paths, $values lists looked through; repeatable (all must hold).",
    ),
]

ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="I/N|auto",
        help="Only aggregates whose id hashes to shard I of N (CRC-32 of the id mod N), e.g. 0/4; "
        "auto: I from JOB_COMPLETION_INDEX, N from ESCTL_SHARD_COUNT (a Kubernetes Indexed Job).",
        show_default=False,
    ),
]

TransformsOpt = Annotated[
    Path | None,
    typer.Option(
        "--transforms",
        metavar="FILE",
        help="A TOML rules file (leave out, rename types, upcast, Python callables; README "
        "'Transforms'): show the events as the rules make them.",
        show_default=False,
    ),
]

ProblemsFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--problems-file",
        metavar="PATH",
        help="Also write every problem to PATH as JSON lines, as found (emptied first); the "
        "summary lists the first few and counts them all.",
        show_default=False,
    ),
]
