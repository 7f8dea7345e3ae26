"""Tables on stdout (or stderr): every cell plain text, at its natural width to a pipe or a
file, and on a terminal fitted to its width (columns narrowed, left out, grouped, shown as
records or with a long column beneath the rows) so that ids and keys stay whole."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from esctl.cli.consoles import stderr_console, stdout_console, writes_to_terminal
from esctl.cli.messages import info
from esctl.cli.wrapping import break_cell, break_line


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
    terminal allows, the records parted by a rule (psql's expanded display); with ``group``
    too, the tables per value that would still fold one (a narrow terminal) are records
    under their heading.

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
    terminal = writes_to_terminal(console)
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
        at = names.index(group)
        _emit_grouped(console, names, cells, at, title, payload, optional, records=records)
        return
    if terminal and records and folds_tokens([specs[i] for i in shown], widths):
        _emit_records(console, names, cells, title, payload)
        return
    table = _rich_table(names, cells, specs, shown, widths, show_header=show_header)
    print_title(console, title)
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


def print_title(console: Console, title: str | None) -> None:
    """A table's title; on a terminal wrapped at words (:func:`break_line`), not cut through a
    name by the terminal's own wrapping."""
    if title is None:
        return
    lines = break_line(title, console.width) if writes_to_terminal(console) else [title]
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
    print_title(console, title)
    console.print(_records(console.width, names, cells, payload))


def _records(
    width: int, names: Sequence[str], cells: Sequence[Sequence[str]], payload: Collection[str]
) -> Table:
    """The records of :func:`_emit_records`, ``width`` cells wide. The names are wrapped at
    words (``oldest`` / ``processing``) where that lets the values' widest words fit beside
    them whole, and only then."""
    name_width = max(cell_len(name) for name in names)
    name_word = max(cell_len(word) for name in names for word in name.split() or [""])
    needed = max(
        (
            cell_len(word)
            for row in cells
            for name, value in zip(names, row, strict=False)
            if name not in payload
            for word in value.split()
        ),
        default=0,
    )
    if name_word <= width - _COLUMN_GAP - needed < name_width:
        name_width = width - _COLUMN_GAP - needed
    value_width = max(width - name_width - _COLUMN_GAP, 1)
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
    return table


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
    print_title(console, title)
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
    *,
    records: bool = False,
) -> None:
    """:func:`emit_table` on a terminal, one table per value of column ``group`` (in sorted
    order; rows keep theirs), its columns fitted once for all of them; with ``records``, when
    those tables would still fold an id or a name, a record per row instead (every column
    but the group's)."""
    rest = _Fitted.of(names, cells, console.width, payload, optional, without=group)
    groups: dict[str, list[list[str]]] = {}
    for row, rest_row in zip(cells, rest.cells, strict=True):
        groups.setdefault(row[group], []).append(rest_row)
    as_records = records and folds_tokens([rest.specs[i] for i in rest.shown], rest.widths)
    print_title(console, title)
    for value in sorted(groups):
        console.print()
        _print_heading(console, names[group], value)
        if as_records:
            console.print(_records(console.width, rest.names, groups[value], payload))
        else:
            console.print(rest.table(groups[value]))
    if not as_records:
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
    word: int = 0
    """The cells' widest word (what lies between spaces: an id, a key, a name), which wrapping
    at words does not break: a prose column narrower than it folds one."""

    @classmethod
    def of(cls, header: str, cells: Sequence[str], *, payload: bool = False) -> ColumnSpec:
        content = max((cell_len(line) for cell in cells for line in cell.splitlines()), default=0)
        return cls(
            natural=max(content, cell_len(header), 1),
            header_word=max((cell_len(word) for word in header.split()), default=0),
            content=content,
            prose=any(any(ch.isspace() for ch in cell.strip()) for cell in cells),
            payload=payload,
            word=max((cell_len(word) for cell in cells for word in cell.split()), default=0),
        )

    @property
    def token(self) -> bool:
        """Ids, keys, timestamps, names, counts: folding one breaks a word."""
        return not (self.prose or self.payload)

    @property
    def whole(self) -> int:
        """The narrowest width that breaks no word of it: its cells' widest line for ids, keys,
        timestamps and counts; for prose its widest word (an id or a key in a sentence, or a
        cell such as ``1017 version 3``: a space does not make an id breakable); 0 for a
        payload, cut with "…" anyway."""
        if self.payload:
            return 0
        return self.word if self.prose else self.content


# The order in which columns narrow on a terminal: (which columns, down to what width). Each
# step takes one cell at a time from the widest column it may narrow, until the table fits.
_NARROWING: tuple[tuple[Callable[[ColumnSpec], bool], Callable[[ColumnSpec], int]], ...] = (
    (lambda s: True, lambda s: max(s.content, s.header_word, 1)),  # headers wrap at words
    (lambda s: s.payload, lambda s: min(s.natural, 12)),
    # Prose wraps at words, down to 30 cells but not below its widest word (an id, a key).
    (
        lambda s: s.prose and not s.payload,
        lambda s: min(s.natural, max(s.header_word, 30, s.word)),
    ),
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
    all but 12 cells; prose columns all but 30 or their widest word; then the widest columns,
    prose or ids, keys and timestamps, down to 16 and 8 cells; then any column, the widest
    first."""
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
    """Whether a column of ids, keys, timestamps or counts is narrower than its cells, or one
    of prose narrower than its widest word (:attr:`ColumnSpec.whole`): either folds an id,
    a key or a name mid-word."""
    return any(w < s.whole for s, w in zip(specs, widths, strict=True))


def emit_mapping(mapping: Mapping[str, Any], *, title: str | None = None) -> None:
    """A two-column key/value table (summaries). On a terminal, an entry whose value holds a
    word wider than the value column but not than the terminal (a file's path, a queue's
    key), which the table would break over rows, is shown above the table instead, the word
    whole on a row (:func:`_print_heading`), so it can be selected and copied."""
    rows = [(str(k), format_cell(v)) for k, v in mapping.items()]
    console = stdout_console
    if not writes_to_terminal(console):
        emit_table(["", ""], rows, title=title, show_header=False)
        return
    _, (_, value_width) = _fit(_specs(["", ""], rows, show_header=False), [], console.width)
    headed = [
        (name, value)
        for name, value in rows
        if any(value_width < cell_len(word) <= console.width for word in value.split())
    ]
    print_title(console, title)
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
