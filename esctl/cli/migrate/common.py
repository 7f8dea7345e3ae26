"""What the ``esctl migrate`` commands share: options, the --transforms check, the store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypedDict

from esctl.cli.context import Context
from esctl.cli.options import count_option, option, read_rules

BackupFileOpt = Annotated[
    str | None,
    option(
        "--backup-file",
        "PATH",
        "First write every event to be deleted to this new file (zstd JSON lines, "
        "mode 0600, fsynced before each delete; not written in a dry run).",
    ),
]


def checked_rules(path: Path | None) -> str | None:
    """The --transforms file, read and checked before any server is asked (exit 2), as the
    path the core reads again (in each process)."""
    read_rules(path)
    return None if path is None else str(path)


class _Store(TypedDict):
    """The event store every migrate command works on: the app and its PostgreSQL target."""

    app: str
    pg_dsn: str
    pg_schema: str


def store(ctx: Context) -> _Store:
    return _Store(app=ctx.app, pg_dsn=ctx.pg_dsn, pg_schema=ctx.pg_schema)


def toast(method: str) -> str | None:
    """--toast-compression: 'server' keeps the server's default."""
    return None if method == "server" else method


def toast_option(help: str) -> Any:
    """``--toast-compression METHOD`` (read by :func:`toast`), with what it does for one
    command."""
    return option("--toast-compression", "METHOD", help, show_default=True)


def workers_option(help: str, *, most: int | None = None, show_default: bool = True) -> Any:
    """``--workers N`` (local processes, at least 1, at most ``most``), with what they do for
    one command."""
    return count_option("--workers", help, most=most, show_default=show_default)
