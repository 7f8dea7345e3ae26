"""``esctl events``: decode stored payloads (and, with the inspect capability, query them)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Annotated

import typer

from esctl import codec
from esctl.cli import output
from esctl.cli.errors import EXIT_PROBLEMS, reporting
from esctl.cli.options import DebugOpt

app = typer.Typer(no_args_is_help=True, help="Decode and query event payloads.")

FATAL_KINDS = {"invalid_compressed", "invalid_utf8", "invalid_json"}


def decode_document(value: bytes) -> dict[str, object]:
    """The JSON line ``events decode`` prints for one stored value."""
    decoded, event = codec.decode_event(value)
    fatal = [p for p in event.problems if p.kind in FATAL_KINDS]
    return {
        "ok": not fatal,
        "compressed": decoded.compressed,
        "stored_bytes": decoded.stored_size,
        "event_type": event.event_type,
        "aggregate_id": event.aggregate_id,
        "version": event.version,
        "problems": [{"kind": p.kind, "detail": p.detail} for p in event.problems],
        "text": decoded.text,
        "data": event.data,
    }


def _inputs(values: list[str] | None) -> Iterator[tuple[str, bytes]]:
    if not values or values == ["-"]:
        for number, line in enumerate(sys.stdin.buffer, start=1):
            line = line.rstrip(b"\r\n")
            if line:
                yield f"stdin line {number}", line
        return
    for number, value in enumerate(values, start=1):
        yield f"argument {number}", value.encode("utf-8", "surrogateescape")


@app.command("decode")
def decode(
    values: Annotated[
        list[str] | None,
        typer.Argument(help="Stored values; '-' or nothing reads one value per line from stdin."),
    ] = None,
    pretty: Annotated[bool, typer.Option("--pretty", help="Indent the JSON.")] = False,
    text_only: Annotated[
        bool, typer.Option("--text", help="Print only each decoded payload text, one per line.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Decode stored payloads (plain, gzip+base64 'H4sI…', or zstd) into JSON lines.

    Each line: {"ok", "compressed", "stored_bytes", "event_type", "aggregate_id", "version",
    "problems", "text", "data"}; "text" is the exact payload text. A value that cannot be decoded
    is reported on stderr with its input line, the rest are still decoded, and the exit code is 3.

    Example: redis-cli --raw HGET EventStore:MyApp:12345 <commit-id> | esctl events decode -
    """
    with reporting(debug=debug):
        bad = 0
        for where, value in _inputs(values):
            document = decode_document(value)
            if not document["ok"]:
                bad += 1
                problems = document["problems"]
                assert isinstance(problems, list)
                detail = "; ".join(f"{p['kind']}: {p['detail']}" for p in problems)
                output.stderr_console.print(f"error: {where}: {detail}", markup=False)
            if text_only:
                sys.stdout.write(str(document["text"]) + "\n")
            else:
                sys.stdout.write(output.to_json(document, pretty=pretty) + "\n")
        sys.stdout.flush()
        if bad:
            raise typer.Exit(EXIT_PROBLEMS)
