"""One table from esctl's typed errors to messages and exit codes (the README's exit-code
table), and the wrapper every command runs inside."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from esctl import errors
from esctl.cli import output

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PROBLEMS = 3
EXIT_LOCKED = 75
EXIT_INTERRUPTED = 130

# (error class, exit code, kind in --json output); the first matching row wins.
# A refusal (not confirmed, no --yes without a terminal, no backup file, a backup file that
# exists) is a usage error: nothing was done, and the same command would be refused again.
ERROR_TABLE: tuple[tuple[type[errors.EsctlError], int, str], ...] = (
    (errors.Refused, EXIT_USAGE, "refused"),
    (errors.UsageError, EXIT_USAGE, "usage"),
    (errors.LockHeld, EXIT_LOCKED, "locked"),
    (errors.ConfigError, EXIT_FAILED, "config"),
    (errors.ConnectionFailed, EXIT_FAILED, "connection"),
    (errors.SchemaIncompatible, EXIT_FAILED, "schema"),
    (errors.NotFound, EXIT_FAILED, "not_found"),
    (errors.ServerError, EXIT_FAILED, "server"),
    (errors.LocalServerError, EXIT_FAILED, "local_server"),
    (errors.EsctlError, EXIT_FAILED, "error"),
)


def classify(exc: errors.EsctlError) -> tuple[int, str]:
    """Exit code and kind of an error (first matching row of ERROR_TABLE)."""
    for cls, code, kind in ERROR_TABLE:
        if isinstance(exc, cls):
            return code, kind
    return EXIT_FAILED, "error"


def render_error(kind: str, message: str, hint: str | None, code: int, json_mode: bool) -> None:
    if json_mode:
        output.emit_json(
            {"error": {"kind": kind, "message": message, "hint": hint}, "exit_code": code}
        )
    output.stderr_console.print(f"error: {message}", style="bold red", markup=False)
    if hint:
        output.stderr_console.print(f"  what to do: {hint}", markup=False)


@contextmanager
def reporting(*, json_mode: bool = False, debug: bool = False) -> Iterator[None]:
    """Run a command body: typed errors become a message and their exit code; Ctrl-C exits
    130; anything unexpected exits 1 with a one-line message (the traceback only with --debug).
    """
    try:
        yield
    except typer.Exit:
        raise
    except errors.EsctlError as exc:
        if debug:
            traceback.print_exc(file=sys.stderr)
        code, kind = classify(exc)
        render_error(kind, exc.message, exc.hint, code, json_mode)
        raise typer.Exit(code) from None
    except KeyboardInterrupt:
        render_error(
            "interrupted",
            "interrupted; the state was left consistent",
            "rerun the same command to continue",
            EXIT_INTERRUPTED,
            json_mode,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if debug:
            traceback.print_exc(file=sys.stderr)
        from esctl.config import redact

        render_error(
            "internal",
            f"unexpected {type(exc).__name__}: {redact(str(exc))}",
            "this is a bug in esctl; rerun with --debug and report the traceback",
            EXIT_FAILED,
            json_mode,
        )
        raise typer.Exit(EXIT_FAILED) from None
