"""Option aliases shared by the commands, declared once (so they work after the subcommand).
The connection and scope options are given to commands by ``esctl.cli.context``."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from esctl.transforms import Rules


def option(name: str, metavar: str, help: str, *, show_default: bool = False, **more: Any) -> Any:
    """The ``typer.Option`` of an option that takes a value, as esctl declares them: its name,
    the metavar ``--help`` shows for the value, and the help text; no "[default: …]" unless
    ``show_default`` (most defaults are None, or said in the help). ``more``: Typer's other
    settings (``min``, ``callback``, …). Use it as ``Annotated[type, option(…)]``."""
    return typer.Option(name, metavar=metavar, help=help, show_default=show_default, **more)


def count_option(
    name: str, help: str, *, least: float = 1, most: int | None = None, show_default: bool = False
) -> Any:
    """An option that takes a number, ``N`` in ``--help``: at least ``least`` (1: a count of
    things; 0 where none means something), at most ``most``."""
    return option(name, "N", help, show_default=show_default, min=least, max=most)


class EventSource(enum.StrEnum):
    """Where a command reads stored events: the Redis commit lists or the migrated tables."""

    redis = "redis"
    pg = "pg"


RedisUrlOpt = Annotated[
    str | None,
    option(
        "--redis-url", "URL", "Redis URL [env ESCTL_REDIS_URL; default redis://localhost:6379/0]"
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
    option(
        "--pg-dsn",
        "DSN",
        "PostgreSQL DSN or URL [env ESCTL_PG_DSN; default postgresql://localhost/postgres]",
    ),
]
PgSchemaOpt = Annotated[
    str | None,
    option(
        "--pg-schema", "NAME", "Schema of the event tables [env ESCTL_PG_SCHEMA; default public]"
    ),
]
AppOpt = Annotated[
    str | None, option("--app", "NAME", "ApplicationName of the service [env ESCTL_APP]")
]
EnvOpt = Annotated[str | None, option("--env", "NAME", "Environment name [env ESCTL_ENV]")]
ProfileOpt = Annotated[
    str | None,
    option("--profile", "NAME", "Config file section [env ESCTL_PROFILE; default default]"),
]
ConfigOpt = Annotated[
    str | None,
    option(
        "--config",
        "PATH",
        "Config file [env ESCTL_CONFIG; default ./esctl.toml, then ~/.config/esctl/config.toml]",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (JSON lines for streams).")
]
DebugOpt = Annotated[
    bool, typer.Option("--debug", help="Show Python tracebacks on errors.", envvar="ESCTL_DEBUG")
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
    option(
        "--metrics-file",
        "PATH",
        "Also write the figures in Prometheus textfile format (replaced atomically), "
        "for node_exporter's textfile collector.",
    ),
]
IntervalOpt = Annotated[
    str | None,
    option(
        "--interval",
        "DURATION",
        "With --watch: time between readings (500ms, 2s, 1m; at least 100ms). [default: 2s]",
    ),
]


# --- selecting events (events query, replay) --------------------------------------------------

EventTypesOpt = Annotated[
    list[str] | None,
    option("--type", "TYPE", "Event type (class name, e.g. ItemScoreCreated); repeatable."),
]
AggregateTypeOpt = Annotated[
    str | None, option("--aggregate-type", "TYPE", "AggregateType (e.g. ItemScore).")
]
AggregatesOpt = Annotated[
    list[str] | None, option("--aggregate", "ID", "Aggregate id; repeatable (reads only those).")
]
SinceOpt = Annotated[
    str | None,
    option(
        "--since",
        "TIME",
        "TimeStamp at or after: ISO 8601 (UTC unless an offset is given) or 7d, 12h, 30m.",
    ),
]
UntilOpt = Annotated[
    str | None, option("--until", "TIME", "TimeStamp before (same forms as --since).")
]
WhereOpt = Annotated[
    list[str] | None,
    option(
        "--where",
        "EXPR",
        "PATH OP VALUE on payload fields (OP: = != > >= < <= ~) or PATH exists; "
        "dotted paths, $values lists looked through; repeatable (all must hold).",
    ),
]

ShardOpt = Annotated[
    str | None,
    option(
        "--shard",
        "I/N|auto",
        "Only aggregates whose id hashes to shard I of N (CRC-32 of the id mod N), e.g. 0/4; "
        "auto: I from JOB_COMPLETION_INDEX, N from ESCTL_SHARD_COUNT (a Kubernetes Indexed Job).",
    ),
]


def transforms_option(help: str) -> Any:
    """``--transforms FILE`` (the rules file), with what the rules do for one command."""
    return option("--transforms", "FILE", help)


def read_rules(path: Path | None) -> Rules | None:
    """The --transforms rules file, read and checked before any server is asked (exit 2)."""
    if path is None:
        return None
    from esctl.transforms import load_rules

    return load_rules(path)


TransformsOpt = Annotated[
    Path | None,
    transforms_option(
        "A TOML rules file (leave out, rename types, upcast, Python callables; README "
        "'Transforms'): show the events as the rules make them."
    ),
]

ProblemsFileOpt = Annotated[
    Path | None,
    option(
        "--problems-file",
        "PATH",
        "Also write every problem to PATH as JSON lines, as found (emptied first); the "
        "summary lists the first few and counts them all.",
    ),
]
