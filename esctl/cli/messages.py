"""Messages for the operator on stderr (info, warnings, notes, errors with what to do): on a
terminal wrapped at words, continued under their first word; to a pipe or a file one line."""

from __future__ import annotations

from esctl.cli.consoles import stderr_console, terminal_width
from esctl.cli.wrapping import hang, label_and_command


def _message(head: str, message: str, style: str | None = None) -> None:
    """A message on stderr; on a terminal wrapped at words (:func:`hang`), continued under
    its first word; to a pipe or a file one line."""
    for line in hang(head, message, terminal_width(stderr_console)):
        stderr_console.print(line, style=style, markup=False)


def info(message: str, *, head: str = "") -> None:
    """A message for the operator (stderr), after ``head`` (an indent, a bullet); on a
    terminal wrapped at words, continued under its first word."""
    _message(head, message)


def info_command(label: str, command: str) -> None:
    """``label`` and a command to copy on stderr (:func:`label_and_command`): on a terminal
    the command on a line of its own when the two do not fit one, never broken."""
    for line in label_and_command(label, command, terminal_width(stderr_console)):
        stderr_console.print(line, markup=False)


def warn(message: str) -> None:
    _message("warning: ", message, style="yellow")


def note(message: str) -> None:
    """Something the operator may want to know that is not wrong in itself (stderr)."""
    _message("note: ", message)


DEBUG_CLAUSE = "; --debug shows "
"""How a hint ends that offers a traceback (``…; --debug shows its traceback``)."""


def print_error(message: str, hint: str | None = None, *, debug: bool = False) -> None:
    """An error for the operator (stderr): what failed, then what to do; on a terminal each
    wrapped at words, continued under its first word, a command to copy in the hint (quoted
    in backticks) whole on a row (:func:`break_line`); to a pipe or a file one line each.
    With ``debug`` (the traceback is printed) the hint's last clause offering --debug is left
    out."""
    _message("error: ", message, style="bold red")
    if hint and debug:
        hint = without_debug_clause(hint)
    if hint:
        # Lines after the first (a --where expression and a caret under its bad column) go as
        # they are: wrapped or indented, the caret would no longer point at its column.
        first, newline, rest = hint.partition("\n")
        _message("  what to do: ", first)
        if newline:
            stderr_console.print(rest, markup=False)


def without_debug_clause(hint: str) -> str:
    """``hint`` without its last clause when that offers ``--debug`` (:data:`DEBUG_CLAUSE`)."""
    head, clause, tail = hint.rpartition(DEBUG_CLAUSE)
    return head if clause and ";" not in tail and "\n" not in tail else hint
