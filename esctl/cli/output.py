"""The one renderer: results to stdout (table, JSON, JSON lines), messages to stderr."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

# What esctl prints is data (key names, payload text, .NET type names), never rich markup:
# emoji=False, or ":lock:" in esctl:lock:{…} and ":1234:" in host:1234:run become emoji; and
# every string goes out as Text (tables) or with markup=False, or "[[System.String, …]]" in a
# type name is eaten and a "[/x]" in a payload raises MarkupError.
stdout_console = Console(highlight=False, soft_wrap=True, emoji=False)
stderr_console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def _default(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


def to_json(document: Any, *, pretty: bool = False) -> str:
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if pretty else 0)
    return orjson.dumps(document, default=_default, option=option).decode("utf-8")


def emit_json(document: Any, *, pretty: bool = True) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(to_json(document, pretty=pretty) + "\n")
    sys.stdout.flush()


def emit_json_line(document: Any) -> None:
    sys.stdout.write(to_json(document) + "\n")


def emit_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    show_header: bool = True,
    stderr: bool = False,
) -> None:
    """A table on stdout (on stderr with ``stderr``: for a plan shown before a question while
    stdout carries the data); every cell is plain text, never markup."""
    table = Table(
        title=Text(title) if title is not None else None,
        title_justify="left",
        show_edge=False,
        pad_edge=False,
        show_header=show_header,
    )
    for column in columns:
        table.add_column(Text(column), overflow="fold")
    for row in rows:
        table.add_row(*(Text(format_cell(v)) for v in row))
    (stderr_console if stderr else stdout_console).print(table)


def emit_mapping(mapping: Mapping[str, Any], *, title: str | None = None) -> None:
    """A two-column key/value table (summaries)."""
    emit_table(["", ""], ((k, v) for k, v in mapping.items()), title=title, show_header=False)


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def info(message: str) -> None:
    """A message for the operator (stderr)."""
    stderr_console.print(message, markup=False)


def warn(message: str) -> None:
    stderr_console.print(f"warning: {message}", style="yellow", markup=False)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()
