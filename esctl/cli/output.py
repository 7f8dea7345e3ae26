"""The one renderer: results to stdout (table, JSON, JSON lines), messages, questions and
progress bars to stderr. A command talks through its :class:`Output` (``ctx.out``), which decides
table or JSON once; the functions below are what it is made of."""

from __future__ import annotations

import errno
import functools
import io
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import orjson
import typer
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from esctl import errors
from esctl.cli.wrapping import break_cell, break_command, break_line, hang, label_and_command
from esctl.units import format_bytes, format_duration


class _StdoutConsole(Console):
    def on_broken_pipe(self) -> None:
        # Not rich's exit 1: the error wrapper stops the command quietly, exit 0, as it does
        # for every other write to stdout whose reader went away.
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "the reader of stdout went away")


# What esctl prints is data (key names, payload text, .NET type names), never rich markup:
# emoji=False, or ":lock:" in esctl:lock:{…} and ":1234:" in host:1234:run become emoji; and
# every string goes out as Text (tables) or with markup=False, or "[[System.String, …]]" in a
# type name is eaten and a "[/x]" in a payload raises MarkupError.
stdout_console = _StdoutConsole(highlight=False, soft_wrap=True, emoji=False)
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
    payload: Collection[str] = (),
    optional: Sequence[str] = (),
    group: str | None = None,
    records: bool = False,
    beneath: str | None = None,
) -> None:
    """A table on stdout (on stderr with ``stderr``: for a plan shown before a question while
    stdout carries the data); every cell is plain text, never markup.

    To a pipe or a file the table has its natural width: no id, key or timestamp is broken. On
    a terminal too narrow for it, the columns give up width in this order (see
    :func:`plan_widths`): the ``payload`` columns (named; event JSON, exception text), each cell
    cut to one line with "…"; then columns of prose (a cell with a space), wrapped at words;
    then, if that lets ids, keys, timestamps and counts (no spaces) stay whole, the
    ``optional`` columns are left out, the last named first, as few as will do (a line on
    stderr names them); else those fold, the widest first.

    ``group`` names a column of long names that repeat (a subscriber), or of keys too long
    to share a row with the other columns: when the table would fold an id on a terminal, it
    is printed as one table per value of that column instead, each headed by the value (on a
    row of its own, after its column's name where that fits; else broken as
    :func:`break_line` does), all with the same column widths.

    With ``records``, a table that would still fold or break an id or key on a terminal is
    shown as records instead: a line per column, its name then its value as wide as the
    terminal allows, the records parted by a rule (psql's expanded display).

    ``beneath`` names a column of long text to be read whole (a dead letter's exception): on
    a terminal where the table cannot show it whole on one row, each row's value is printed
    under the row's other cells instead, wrapped at words (:func:`break_line`) and set off by
    the first column's rule, and the other columns are fitted without it
    (:func:`_emit_beneath`).

    Where an id or key is narrower than its cells all the same (mappings: a key/value table
    has no column to leave out), it is broken after a ":" (a Redis key's separator) where it
    can be, so the names and ids between stay whole (:func:`break_line`)."""
    console = stderr_console if stderr else stdout_console
    names = [str(c) for c in columns]
    cells = [[format_cell(v) for v in row] for row in rows]
    terminal = _writes_to_terminal(console)
    fitted = _Fitted.of(
        names, cells, console.width if terminal else None, payload, optional, show_header
    )
    specs, shown, widths = fitted.specs, fitted.shown, fitted.widths
    if terminal and beneath in names:
        at = names.index(beneath)
        if at not in shown or widths[shown.index(at)] < specs[at].content:
            _emit_beneath(console, names, cells, at, title, show_header, payload, optional)
            return
    if terminal and group in names and folds_tokens([specs[i] for i in shown], widths):
        _emit_grouped(console, names, cells, names.index(group), title, payload, optional)
        return
    if terminal and records and folds_tokens([specs[i] for i in shown], widths):
        _emit_records(console, names, cells, title, payload)
        return
    table = _rich_table(names, cells, specs, shown, widths, show_header=show_header)
    _print_title(console, title)
    if terminal:
        console.print(table)
        fitted.note_left_out()
        return
    # As wide as the table, whatever the console's width (80 when it cannot tell), and without
    # the padding rich adds after the last column.
    table.width = sum(widths) + _COLUMN_GAP * (len(widths) - 1)
    with console.capture() as capture:
        console.print(table, crop=False)
    lines = capture.get().splitlines()
    console.file.write("".join(line.rstrip() + "\n" for line in lines))
    console.file.flush()


def fit_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    width: int,
    *,
    payload: Collection[str] = (),
    optional: Sequence[str] = (),
) -> tuple[Table, list[str]]:
    """The table :func:`emit_table` draws on a terminal ``width`` cells wide (without its
    ``group`` and ``records`` layouts), for a view that draws it itself (a ``--watch``
    screen), and the names of the columns left out (:func:`left_out_note`)."""
    names = [str(c) for c in columns]
    cells = [[format_cell(v) for v in row] for row in rows]
    fitted = _Fitted.of(names, cells, width, payload, optional)
    return fitted.table(fitted.cells), fitted.left_out


def left_out_note(left_out: Sequence[str]) -> str:
    """The line that names the columns a table on a terminal left out."""
    return f"(left out at this terminal width: {', '.join(left_out)})"


def _specs(
    names: Sequence[str],
    cells: Sequence[Sequence[str]],
    *,
    show_header: bool = True,
    payload: Collection[str] = (),
) -> list[ColumnSpec]:
    return [
        ColumnSpec.of(
            name if show_header else "",
            [row[i] for row in cells if i < len(row)],
            payload=name in payload,
        )
        for i, name in enumerate(names)
    ]


def _rich_table(
    names: Sequence[str],
    cells: Sequence[Sequence[str]],
    specs: Sequence[ColumnSpec],
    shown: Sequence[int],
    widths: Sequence[int],
    *,
    show_header: bool = True,
) -> Table:
    table = Table(show_edge=False, pad_edge=False, show_header=show_header)
    for i, width in zip(shown, widths, strict=True):
        table.add_column(Text(names[i]), width=width, overflow="fold")
    width_of = dict(zip(shown, widths, strict=True))
    for row in cells:
        table.add_row(*(_cell(row[i], specs[i], width_of[i]) for i in shown if i < len(row)))
    return table


def _cell(text: str, spec: ColumnSpec, width: int) -> Text:
    """A cell of a column ``width`` cells wide: a payload cut to one line with "…"; else,
    when the column is narrower than its cells, broken where :func:`break_line` can."""
    if spec.payload:
        return Text(text, no_wrap=True, overflow="ellipsis")
    return Text(break_cell(text, width) if width < spec.content else text)


def _print_title(console: Console, title: str | None) -> None:
    """A table's title; on a terminal wrapped at words (:func:`break_line`), not cut through a
    name by the terminal's own wrapping."""
    if title is None:
        return
    lines = break_line(title, console.width) if _writes_to_terminal(console) else [title]
    for line in lines:
        console.print(Text(line, style="table.title"))


def _print_heading(console: Console, name: str, value: str) -> None:
    """``name value`` on a row of its own, in bold, wrapped as a title is (the value on a row
    of its own when the two do not fit one), or the terminal would cut a long value (a
    queue's key, a file's path) anywhere."""
    for line in break_line(f"{name} {value}", console.width):
        console.print(Text(line, style="bold"))


def _emit_records(
    console: Console,
    names: Sequence[str],
    cells: Sequence[Sequence[str]],
    title: str | None,
    payload: Collection[str] = (),
) -> None:
    """:func:`emit_table` on a terminal, a record per row (``records``); a ``payload``
    value cut to one line with "…", as in the table."""
    name_width = max(cell_len(name) for name in names)
    value_width = max(console.width - name_width - _COLUMN_GAP, 1)
    table = Table(show_edge=False, pad_edge=False, show_header=False)
    table.add_column(width=name_width, overflow="fold")
    table.add_column(width=value_width, overflow="fold")
    for row in cells:
        for i, name in enumerate(names[: len(row)]):
            value = (
                Text(row[i], no_wrap=True, overflow="ellipsis")
                if name in payload
                else Text(break_cell(row[i], value_width))
            )
            table.add_row(Text(name, style="bold"), value, end_section=i == len(row) - 1)
    _print_title(console, title)
    console.print(table)


def _emit_beneath(
    console: Console,
    names: Sequence[str],
    cells: Sequence[Sequence[str]],
    beneath: int,
    title: str | None,
    show_header: bool,
    payload: Collection[str],
    optional: Sequence[str],
) -> None:
    """:func:`emit_table` on a terminal with column ``beneath`` under each row: the other
    columns fitted as a table without it, then each line of its value wrapped at words to
    the width right of the first column's rule (``  │ Npgsql.PostgresException …``), all of
    the value shown; its name goes under the other columns' names the same way."""
    rest = _Fitted.of(names, cells, console.width, payload, optional, show_header, without=beneath)
    margin = " " * rest.widths[0] + " │ "
    text_width = max(console.width - cell_len(margin), 20)
    _print_title(console, title)
    if show_header:
        # The column's name under the others' (``  ┃ last exception``), above the rule.
        with console.capture() as capture:
            console.print(rest.table([]))
        *head, rule = capture.get().splitlines()
        name = " " * rest.widths[0] + " ┃ " + names[beneath]
        console.file.write("".join(line + "\n" for line in head))
        console.print(Text(name, style="table.header"))
        console.file.write(rule + "\n")
    for row, rest_row in zip(cells, rest.cells, strict=True):
        console.print(rest.table([rest_row], show_header=False))
        value = row[beneath] if beneath < len(row) else ""
        for line in value.splitlines():
            for piece in break_line(line, text_width):
                console.print(Text(margin + piece))
    rest.note_left_out()


def _emit_grouped(
    console: Console,
    names: Sequence[str],
    cells: Sequence[Sequence[str]],
    group: int,
    title: str | None,
    payload: Collection[str],
    optional: Sequence[str],
) -> None:
    """:func:`emit_table` on a terminal, one table per value of column ``group`` (in sorted
    order; rows keep theirs), its columns fitted once for all of them."""
    rest = _Fitted.of(names, cells, console.width, payload, optional, without=group)
    groups: dict[str, list[list[str]]] = {}
    for row, rest_row in zip(cells, rest.cells, strict=True):
        groups.setdefault(row[group], []).append(rest_row)
    _print_title(console, title)
    for value in sorted(groups):
        console.print()
        _print_heading(console, names[group], value)
        console.print(rest.table(groups[value]))
    rest.note_left_out()


@dataclass(frozen=True)
class _Fitted:
    """A table's columns fitted to a width (:func:`_fit`): what :func:`emit_table`'s layouts
    and :func:`fit_table` share. ``without``: a column taken out first (the ``group`` one, or
    the one shown ``beneath`` the rows); ``names`` and ``cells`` are then the others'."""

    names: list[str]
    cells: list[list[str]]
    specs: list[ColumnSpec]
    shown: list[int]
    widths: list[int]

    @classmethod
    def of(
        cls,
        names: Sequence[str],
        cells: Sequence[Sequence[str]],
        width: int | None,
        payload: Collection[str],
        optional: Sequence[str],
        show_header: bool = True,
        *,
        without: int | None = None,
    ) -> _Fitted:
        kept = [i for i in range(len(names)) if i != without]
        kept_names = [names[i] for i in kept]
        kept_cells = [[row[i] for i in kept if i < len(row)] for row in cells]
        specs = _specs(kept_names, kept_cells, show_header=show_header, payload=payload)
        droppable = [kept_names.index(n) for n in reversed(optional) if n in kept_names]
        shown, widths = _fit(specs, droppable, width)
        return cls(kept_names, kept_cells, specs, shown, widths)

    @property
    def left_out(self) -> list[str]:
        return [self.names[i] for i in sorted(set(range(len(self.names))) - set(self.shown))]

    def note_left_out(self) -> None:
        """The :func:`left_out_note` on stderr, when a column was left out."""
        if self.left_out:
            info(left_out_note(self.left_out))

    def table(self, cells: Sequence[Sequence[str]], *, show_header: bool = True) -> Table:
        return _rich_table(
            self.names, cells, self.specs, self.shown, self.widths, show_header=show_header
        )


_COLUMN_GAP = 3
"""Between two columns: padding, the rule, padding (no outer edge or padding)."""


@dataclass(frozen=True)
class ColumnSpec:
    """What :func:`plan_widths` needs of a column: its widths in terminal cells."""

    natural: int
    """Its widest line (cells and header): the width at which nothing wraps."""
    header_word: int
    """The header's longest word: headers wrap at words before any cell wraps."""
    content: int
    """The cells' widest line (header aside)."""
    prose: bool
    """Some cell has a space in it: wrapping at words reads well."""
    payload: bool

    @classmethod
    def of(cls, header: str, cells: Sequence[str], *, payload: bool = False) -> ColumnSpec:
        content = max((cell_len(line) for cell in cells for line in cell.splitlines()), default=0)
        return cls(
            natural=max(content, cell_len(header), 1),
            header_word=max((cell_len(word) for word in header.split()), default=0),
            content=content,
            prose=any(any(ch.isspace() for ch in cell.strip()) for cell in cells),
            payload=payload,
        )

    @property
    def token(self) -> bool:
        """Ids, keys, timestamps, names, counts: folding one breaks a word."""
        return not (self.prose or self.payload)


# The order in which columns narrow on a terminal: (which columns, down to what width). Each
# step takes one cell at a time from the widest column it may narrow, until the table fits.
_NARROWING: tuple[tuple[Callable[[ColumnSpec], bool], Callable[[ColumnSpec], int]], ...] = (
    (lambda s: True, lambda s: max(s.content, s.header_word, 1)),  # headers wrap at words
    (lambda s: s.payload, lambda s: min(s.natural, 12)),
    (lambda s: s.prose and not s.payload, lambda s: min(s.natural, max(s.header_word, 30))),
    # Some id, key or timestamp folds now whatever happens: the widest give way first, prose
    # (wrapping at words) and tokens (folding) alike.
    (
        lambda s: not s.payload,
        lambda s: min(s.natural, max(s.header_word, 16 if s.prose else 8)),
    ),
    (lambda s: True, lambda s: 1),  # a very narrow terminal: no column vanishes
)


def plan_widths(specs: Sequence[ColumnSpec], available: int | None) -> list[int]:
    """The width of each column: natural when ``available`` is None (a pipe or a file) or the
    table fits; else narrowed step by step (_NARROWING): headers wrap; payload columns give up
    all but 12 cells; prose columns all but 30; then the widest columns, prose or ids, keys and
    timestamps, down to 16 and 8 cells; then any column, the widest first."""
    widths = [s.natural for s in specs]
    if available is None:
        return widths
    budget = available - _COLUMN_GAP * (len(specs) - 1)
    for applies, floor in _NARROWING:
        floors = [floor(s) for s in specs]
        excess = sum(widths) - budget
        while excess > 0:
            candidates = [i for i, s in enumerate(specs) if applies(s) and widths[i] > floors[i]]
            if not candidates:
                break
            widest = max(candidates, key=lambda i: widths[i])
            widths[widest] -= 1
            excess -= 1
        if excess <= 0:
            break
    return widths


def _fit(
    specs: Sequence[ColumnSpec], droppable: Sequence[int], available: int | None
) -> tuple[list[int], list[int]]:
    """The columns to show and their widths: every column, unless some id, key or timestamp
    would fold and leaving out columns of ``droppable`` (in that order, as few as will do)
    keeps them all whole."""
    shown = list(range(len(specs)))
    widths = plan_widths(specs, available)
    if not folds_tokens(specs, widths):
        return shown, widths
    rest = [i for i in shown if i not in droppable]
    if folds_tokens([specs[i] for i in rest], plan_widths([specs[i] for i in rest], available)):
        return shown, widths  # leaving columns out would not help: show everything
    for dropped in droppable:
        shown.remove(dropped)
        widths = plan_widths([specs[i] for i in shown], available)
        if not folds_tokens([specs[i] for i in shown], widths):
            break
    return shown, widths


def folds_tokens(specs: Sequence[ColumnSpec], widths: Sequence[int]) -> bool:
    """Whether a column of ids, keys, timestamps or counts is narrower than its cells."""
    return any(s.token and w < s.content for s, w in zip(specs, widths, strict=True))


def _writes_to_terminal(console: Console) -> bool:
    isatty = getattr(console.file, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed file
        return False


def emit_mapping(mapping: Mapping[str, Any], *, title: str | None = None) -> None:
    """A two-column key/value table (summaries). On a terminal, an entry whose value holds a
    word wider than the value column but not than the terminal (a file's path, a queue's
    key), which the table would break over rows, is shown above the table instead, the word
    whole on a row (:func:`_print_heading`), so it can be selected and copied."""
    rows = [(str(k), format_cell(v)) for k, v in mapping.items()]
    console = stdout_console
    if not _writes_to_terminal(console):
        emit_table(["", ""], rows, title=title, show_header=False)
        return
    _, (_, value_width) = _fit(_specs(["", ""], rows, show_header=False), [], console.width)
    headed = [
        (name, value)
        for name, value in rows
        if any(value_width < cell_len(word) <= console.width for word in value.split())
    ]
    _print_title(console, title)
    for name, value in headed:
        _print_heading(console, name.strip(), value)
    rest = [row for row in rows if row not in headed]
    if rest:
        emit_table(["", ""], rest, show_header=False)


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


def _terminal_width(console: Console) -> int | None:
    """The width of the terminal ``console`` writes to; None when it is not one."""
    return console.width if _writes_to_terminal(console) else None


def _message(head: str, message: str, style: str | None = None) -> None:
    """A message on stderr; on a terminal wrapped at words (:func:`hang`), continued under
    its first word; to a pipe or a file one line."""
    for line in hang(head, message, _terminal_width(stderr_console)):
        stderr_console.print(line, style=style, markup=False)


def info(message: str, *, head: str = "") -> None:
    """A message for the operator (stderr), after ``head`` (an indent, a bullet); on a
    terminal wrapped at words, continued under its first word."""
    _message(head, message)


def info_command(label: str, command: str) -> None:
    """``label`` and a command to copy on stderr (:func:`label_and_command`): on a terminal
    the command on a line of its own when the two do not fit one, never broken."""
    for line in label_and_command(label, command, _terminal_width(stderr_console)):
        stderr_console.print(line, markup=False)


def warn(message: str) -> None:
    _message("warning: ", message, style="yellow")


def note(message: str) -> None:
    """Something the operator may want to know that is not wrong in itself (stderr)."""
    _message("note: ", message)


def print_error(message: str, hint: str | None = None) -> None:
    """An error for the operator (stderr): what failed, then what to do; on a terminal each
    wrapped at words, continued under its first word, a command to copy in the hint (quoted
    in backticks) whole on a row (:func:`break_line`); to a pipe or a file one line each."""
    _message("error: ", message, style="bold red")
    if hint:
        # Lines after the first (a --where expression and a caret under its bad column) go as
        # they are: wrapped or indented, the caret would no longer point at its column.
        first, newline, rest = hint.partition("\n")
        _message("  what to do: ", first)
        if newline:
            stderr_console.print(rest, markup=False)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def stdout_on_stderr_terminal() -> bool:
    """stdout and stderr write to the same terminal (a command typed in a shell, nothing
    redirected): what goes to either lands on the same rows."""
    if not (stdout_is_terminal() and stderr_is_terminal()):
        return False
    try:
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno()))
    except (OSError, ValueError, AttributeError):
        return True  # two terminals that cannot be told apart: take them for one


class JsonStream:
    """Results written to stdout as they come, as JSON lines or as the elements of one JSON
    array, that end as valid JSON whatever happens: ``fail`` ends the stream with the error
    document (after the results: as the last line, or as the array's last element; before any
    result: alone, as every ``--json`` command's error). The array is opened at the first
    result.

    Writes go through this object's own buffer straight to the file descriptor, so it knows
    what stdout holds when an error comes: whole results, never half a line (a buffered file
    object interrupted by Ctrl-C can leave one) nor a second copy (see ``flush``)."""

    FLUSH_AT = io.DEFAULT_BUFFER_SIZE  # as often as sys.stdout.buffer would write

    def __init__(self, *, array: bool = False, fd: int | None = None) -> None:
        self.array = array
        self.fd = sys.stdout.fileno() if fd is None else fd
        self.results = 0
        self.closed = False
        self.failed = False
        self._pending = bytearray()

    def write_result(self, value: bytes) -> None:
        """One result, already compact JSON (no newline)."""
        if self.array:
            self._pending += b"[\n" if self.results == 0 else b",\n"
            self._pending += value
        else:
            self._pending += value + b"\n"
        self.results += 1
        if len(self._pending) >= self.FLUSH_AT:
            self.flush()

    def write(self, data: bytes) -> int:
        """File-like: JSON lines written by a core function (``out.write(line + b"\\n")``)."""
        self._pending += data
        if len(self._pending) >= self.FLUSH_AT:
            self.flush()
        return len(data)

    def flush(self) -> None:
        """Write what is buffered, exactly once even under Ctrl-C. A KeyboardInterrupt
        raised after os.write returned and before its count was kept would send the same
        bytes again (measured: a reader that stops the command at its first results saw them
        twice), so Ctrl-C only interrupts the wait for room in the pipe (nothing written
        yet); during a write it is held and raised once the count is kept. Such a write never
        blocks with nothing written (select said there is room), so one blocked on a full
        pipe returns at Ctrl-C with what it wrote."""
        sys.stdout.flush()  # nothing else should have written, but never reorder what did
        if not self._pending:
            return
        start = 0
        waiting = False
        held = False

        def on_sigint(signum: int, frame: Any) -> None:
            nonlocal held
            if waiting:
                raise KeyboardInterrupt
            held = True

        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
        try:
            while start < len(self._pending) and not held:
                waiting = True
                select.select([], [self.fd], [])
                waiting = False
                start += os.write(self.fd, self._pending[start:])
        finally:
            del self._pending[:start]
            if in_main:
                signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        if held:
            signal.raise_signal(signal.SIGINT)  # now, to the handler there was

    def close(self) -> None:
        """The end of a complete stream (an empty array is ``[]``)."""
        if self.closed:
            return
        if self.array:
            self._pending += b"\n]\n" if self.results else b"[]\n"
        self.closed = True
        self.flush()

    def fail(self, document: Any) -> None:
        """End the stream with ``document`` (the error): what was buffered goes first."""
        if self.failed or (self.closed and self.array):  # a complete array: stderr only
            return
        line = to_json(document).encode("utf-8")
        if self.array and self.results:
            self._pending += b",\n" + line + b"\n]\n"
        else:
            if self._pending and not self._pending.endswith(b"\n"):
                self._pending += b"\n"
            self._pending += line + b"\n"
        self.failed = self.closed = True
        self.flush()


# --- units ---------------------------------------------------------------------------------


# --- progress ------------------------------------------------------------------------------

P = ParamSpec("P")
T = TypeVar("T")


_WITH_TOTAL = "{l_bar}{bar}| {count}/{total_count} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_WITHOUT_TOTAL = "{lead}{count}{unit} [{elapsed}, {rate_fmt}{postfix}]"


@functools.cache
def _counting_bar() -> type[Any]:
    """tqdm's bar with its counts written as the integers they are, with thousands separators
    (``4 events``, ``12,345/67,890 commits``), and its rate scaled (``16.7k events/s``).
    tqdm's ``unit_scale`` writes a count as a float below 1,000 (``4.00 events``,
    ``42.0 events``); without it the rate has two decimals (``14240.09 keys/s``). tqdm (a
    slow import) is imported on the first bar."""
    from tqdm import tqdm

    class CountingBar(tqdm):
        @staticmethod
        def format_meter(n: float, total: float | None, elapsed: float, **kwargs: Any) -> str:
            if total and n >= total + 0.5:  # past its total: tqdm then shows no total
                total = None
            prefix = kwargs.get("prefix") or ""
            kwargs.update(
                unit_scale=True,
                bar_format=_WITH_TOTAL if total else _WITHOUT_TOTAL,
                count=f"{n:,.0f}",
                total_count=f"{total:,.0f}" if total else "?",
                lead=f"{prefix}: " if prefix else "",
            )
            return str(tqdm.format_meter(n, total, elapsed, **kwargs))

    return CountingBar


class Progress:
    """A progress bar on stderr (tqdm), or, when none is drawn, one whose methods do nothing.
    Made by :meth:`Output.progress`; safe to update from a thread beside the work (a count
    that finds the total). A context manager: leaving it draws the last picture and closes.

    ``make``: a bar drawn only at the first :meth:`update` (a total set before is kept for
    it): a command that takes a lock reports no progress before it holds it, so a run that
    exits 75 draws no bar before its error."""

    def __init__(self, bar: Any = None, *, make: Callable[[], Any] | None = None) -> None:
        self._bar = bar
        self._make = make
        self._total: int | None = None
        self._lock = threading.Lock()
        self._desc = getattr(bar, "desc", None)

    @property
    def shown(self) -> bool:
        """Whether a bar is (or, at the first update, will be) drawn."""
        return self._bar is not None or self._make is not None

    def hook(self, update: Callable[P, None]) -> Callable[P, None] | None:
        """``update`` when the bar is drawn, else None (a core function then reports no
        progress at all)."""
        return update if self.shown else None

    def _draw(self) -> None:
        """Draw the bar waiting for its first update (called with ``_lock`` held)."""
        if self._bar is None and self._make is not None:
            self._bar = self._make()
            self._make = None
            self._desc = getattr(self._bar, "desc", None)
            if self._total is not None:
                self._bar.total = self._total

    def update(
        self,
        n: int,
        *,
        total: int | None = None,
        desc: str | None = None,
        postfix: Mapping[str, str] | None = None,
    ) -> None:
        """Show ``n`` done (of ``total``, when known), under ``desc``, with ``postfix`` counts."""
        if not self.shown:
            return
        with self._lock:
            self._draw()
            if self._bar is None:  # closed before its first update
                return
            if desc is not None and desc != self._desc:
                self._desc = desc
                self._bar.set_description_str(desc, refresh=False)
            if total is not None and self._bar.total != total:
                self._bar.total = total
            if postfix is not None:
                self._bar.set_postfix(dict(postfix), refresh=False)
            self._bar.n = n
            self._bar.refresh()

    def set_total(self, total: int) -> None:
        with self._lock:
            if self._bar is None:
                self._total = total  # for the bar drawn at the first update
                return
            self._bar.total = total
            self._bar.refresh()

    def close(self) -> None:
        with self._lock:
            self._make = None  # never updated: never drawn
            if self._bar is not None:
                self._bar.close()

    def set_aside(self, write: Callable[P, T]) -> Callable[P, T]:
        """``write`` (something that writes to the terminal: a question, a table) made to run
        with the bar wiped from its row, and the bar drawn again below what it wrote: else
        it would start on the bar's row, after the bar's picture."""
        if not self.shown:
            return write

        def aside(*args: P.args, **kwargs: P.kwargs) -> T:
            with self._lock:
                if self._bar is None:  # not drawn yet: nothing to wipe
                    return write(*args, **kwargs)
                self._bar.clear()
                try:
                    return write(*args, **kwargs)
                finally:
                    self._bar.refresh()

        return aside

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# --- the reader of stdout went away --------------------------------------------------------


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has gone away (``| head`` read
    enough): a BrokenPipeError from anything else (a server's socket) is a real error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def stop_writing_stdout() -> None:
    """Point stdout at /dev/null, so that nothing written later (Python's last flush
    included) fails again on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# --- the output object ---------------------------------------------------------------------


class Output:
    """How one command talks to the operator, decided once per invocation.

    - Results go to stdout: one JSON document with ``--json`` (:meth:`result`), else tables;
      a stream of results is a :class:`JsonStream` (:meth:`open_stream`), which an error
      ends. The error wrapper (``esctl.cli.errors.reporting``) reads ``json`` and ``stream``
      when an error comes.
    - Bytes and durations are written one way (:func:`format_bytes`, IEC units;
      :func:`format_duration`); JSON keeps raw numbers.
    - A progress bar is drawn only when asked (``--progress``, the default), stderr is a
      terminal and the result is not JSON (:meth:`progress`).
    - A question needs a terminal on stdin (the answer) and stderr (the question); without
      one a command refuses (``errors.Refused``, exit 2) naming ``--yes`` and ``--dry-run``
      (:meth:`confirm`), never waits. ``--json`` does not change that: the question is on
      stderr, the document alone on stdout.
    - A reader of stdout that goes away (``| head``) stops the command quietly, exit 0 (in
      the error wrapper, see :func:`stdout_reader_gone`).
    """

    format_bytes = staticmethod(format_bytes)
    format_duration = staticmethod(format_duration)

    def __init__(self, *, json: bool = False, stream: JsonStream | None = None) -> None:
        self.json = json
        self.stream = stream

    # --- results ---

    def result(self, document: Any, render: Callable[[], object]) -> None:
        """The command's result: ``document`` as one JSON document with --json, else
        ``render()`` (tables)."""
        if self.json:
            emit_json(document)
        else:
            render()

    def document(self, document: Any) -> None:
        """Exactly one JSON document on stdout."""
        emit_json(document)

    def open_stream(self, *, array: bool = False) -> JsonStream:
        """A stream of JSON results on stdout (lines, or one array) that an error ends."""
        self.stream = JsonStream(array=array)
        return self.stream

    table = staticmethod(emit_table)
    """A table (:func:`emit_table`: its options, and how it fits a terminal)."""

    def mapping(self, mapping: Mapping[str, Any], *, title: str | None = None) -> None:
        """A two-column key/value table (summaries)."""
        emit_mapping(mapping, title=title)

    def problems(
        self, problems: Sequence[Mapping[str, str]], *, title: str, limit: int | None = 50
    ) -> None:
        """The ``{"kind", "key", "detail"}`` problems of a summary (the first ``limit``), if
        any; on a terminal too narrow for their keys, as records."""
        if problems:
            shown = problems if limit is None else problems[:limit]
            emit_table(
                ["kind", "key", "detail"],
                [(p["kind"], p["key"], p["detail"]) for p in shown],
                title=title,
                records=True,
            )

    def problem_summary(
        self,
        problems: Sequence[Mapping[str, str]],
        counts: Mapping[str, int],
        total: int,
        where: str | None,
        *,
        title: str = "problems",
        unrecorded: str | None = None,
    ) -> None:
        """A summary's bounded problems (esctl.problems): the counts by kind, the first ones
        listed, and where all of them are (``where``; else ``unrecorded`` says how to get
        them)."""
        if not total:
            return
        emit_table(["kind", "count"], sorted(counts.items()), title=f"{title} by kind ({total})")
        listed = f"first {len(problems)} of {total}" if len(problems) < total else f"all {total}"
        self.problems(problems, title=f"{title} ({listed})", limit=None)
        if where is not None:
            self.command(f"All {total} {title}:", where)  # a query or a file: whole
        elif len(problems) < total and unrecorded:
            self.wrapped(f"{total - len(problems)} more not listed: {unrecorded}")

    def print(self, text: str = "") -> None:
        """A line of text on stdout, as it is (never markup)."""
        stdout_console.print(text, markup=False)

    def prose(self, label: str, text: str, *, indent: int = 2) -> None:
        """``label: text`` on stdout, indented. On a terminal the text is wrapped at words to
        its width, continued under its first word (the terminal itself would break words);
        to a pipe or a file it is one line. A command to copy in it must be quoted in
        backticks, which keeps it whole on a row (:func:`break_line`): a line break inside one
        would run half of it when pasted."""
        self.hanging(f"{' ' * indent}{label}: ", text)

    def hanging(self, head: str, text: str, *, continued: str | None = None) -> None:
        """``head`` then ``text`` on stdout. On a terminal the text is wrapped to its width
        (a Redis key too long for a line broken after a ":", see :func:`break_line`),
        continued under its first word (after ``continued`` when given: ``"  # "`` for a
        comment); to a pipe or a file it is one line."""
        for line in hang(head, text, _terminal_width(stdout_console), continued=continued):
            self.print(line)

    def wrapped(self, text: str) -> None:
        """A line of prose on stdout (a summary's note): on a terminal wrapped at words
        (:func:`break_line`); to a pipe or a file one line."""
        self.hanging("", text)

    def title(self, text: str) -> None:
        """A title on stdout, as a table's title is printed (wrapped at words on a
        terminal), for a summary that has no table to head."""
        _print_title(stdout_console, text)

    def shell_comment(self, text: str, indent: str = "  ") -> None:
        """A shell comment (``# text``) on stdout: on a terminal wrapped at words with every
        row a comment, so that pasting it with the commands around it runs nothing."""
        self.hanging(f"{indent}# ", text, continued=f"{indent}# ")

    def shell_command(self, command: str, indent: str = "  ") -> None:
        """A command to copy and run, on stdout: on a terminal too narrow for it, continued
        over lines with `` \\`` at its spaces outside quotes (see :func:`break_command`), so a
        paste runs the same command; to a pipe or a file it is one line."""
        width = _terminal_width(stdout_console)
        if width is None or len(indent) + len(command) <= width:
            self.print(indent + command)
            return
        for line in break_command(command, max(width - len(indent), 20)):
            self.print(indent + line)

    def command(self, label: str, command: str) -> None:
        """``label`` and a command (or query) to copy on stdout: on a terminal the command on
        a line of its own when the two do not fit one, never broken
        (:func:`label_and_command`)."""
        for line in label_and_command(label, command, _terminal_width(stdout_console)):
            self.print(line)

    @property
    def width(self) -> int:
        """The width of the terminal stdout writes to (80 when it is not one)."""
        return stdout_console.width

    # --- messages (stderr) ---

    def info(self, message: str, *, head: str = "") -> None:
        info(message, head=head)

    def info_command(self, label: str, command: str) -> None:
        """``label`` and a command to copy on stderr (:func:`info_command`)."""
        info_command(label, command)

    def warn(self, message: str) -> None:
        warn(message)

    def note(self, message: str) -> None:
        note(message)

    def error(self, message: str, hint: str | None = None) -> None:
        """An error message on stderr only (the exit code says the rest)."""
        print_error(message, hint)

    # --- progress ---

    def progress(
        self,
        enabled: bool,
        *,
        desc: str,
        unit: str,
        streaming: bool = False,
        at_first_update: bool = False,
    ) -> Progress:
        """The one progress bar (tqdm on stderr): drawn when ``enabled`` (--progress), stderr
        is a terminal and the result is not JSON; else a :class:`Progress` that draws
        nothing. Counts are whole numbers (``1,234/5,678 events``), rates scaled
        (``16.7k events/s``): :func:`_counting_bar`.

        ``streaming``: the command writes its results to stdout while the bar runs (JSON
        lines). Then no bar when stdout is the terminal the bar would be drawn on: its
        redraws (a carriage return, then the bar) would land on the rows of the lines, gluing
        a bar's picture to the start of a line. The lines scrolling by show the progress
        there; a bar is drawn when stdout goes to a file or a pipe (``| jq``), where a long
        run needs one (as curl leaves out its progress meter when the data goes to the
        terminal).

        ``at_first_update``: the bar is drawn at its first update, not now. For a command that
        takes a lock: its core reports progress only once it holds the lock, so a run that
        exits 75 (another run holds it) shows its error with no bar drawn before."""
        if not (enabled and not self.json and stderr_is_terminal()):
            return Progress()
        if streaming and stdout_on_stderr_terminal():
            return Progress()

        def make() -> Any:
            return _counting_bar()(desc=desc, unit=unit, dynamic_ncols=True)

        return Progress(make=make) if at_first_update else Progress(make())

    # --- questions ---

    def can_ask(self) -> bool:
        """Someone can read a question (stderr) and answer it (stdin)."""
        return stdin_is_terminal() and stderr_is_terminal()

    def require_terminal(self, action: str, *, dry_run: bool = True) -> None:
        """Refuse at once (before any work) when a question will be needed and there is no
        terminal to ask it on. ``action``: what the command does ("compress rewrites
        payloads in Redis"); ``dry_run``: the command has --dry-run."""
        if not self.can_ask():
            raise errors.Refused(
                f"{action} and asks first, but there is no terminal to ask on; nothing was done",
                hint="pass --yes to run it unattended"
                + (", or --dry-run to see what it would do" if dry_run else ""),
            )

    def ask(self, question: str, *, action: str, dry_run: bool = True) -> bool:
        """The answer to a yes/no ``question`` (default no), asked on the terminal; refused
        without one (:meth:`require_terminal`)."""
        self.require_terminal(action, dry_run=dry_run)
        return typer.confirm(question, default=False, err=True)

    def confirm(self, question: str, *, action: str, dry_run: bool = True) -> None:
        """:meth:`ask`, and a refusal (nothing was done) unless the answer is yes."""
        if not self.ask(question, action=action, dry_run=dry_run):
            raise errors.Refused(
                "not confirmed; nothing was done", hint="add --yes to skip the question"
            )
