"""A view redrawn in place on the terminal, ``watch``-style (``queue list --watch``): the one
loop of reading, drawing and waiting, and what it refuses."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import typer
from rich.console import Console, RenderableType

from esctl import errors
from esctl.cli.consoles import stdout_is_terminal
from esctl.cli.errors import EXIT_INTERRUPTED

MIN_INTERVAL_S = 0.1


def check_watch(*, json: bool, interval: str | None, watch: bool, command: str) -> float:
    """The interval of a ``--watch`` in seconds (2 when not given; 0 without --watch), or a
    usage error: --interval without --watch or below :data:`MIN_INTERVAL_S`, --json, stdout
    not a terminal."""
    from esctl.durations import parse_duration

    if not watch:
        if interval is not None:
            raise errors.UsageError(
                "--interval needs --watch", hint=f"`{command} --watch --interval 5s`"
            )
        return 0.0
    seconds = parse_duration(interval).total_seconds() if interval is not None else 2.0
    if seconds < MIN_INTERVAL_S:
        raise errors.UsageError(
            f"--interval {interval} is shorter than {MIN_INTERVAL_S * 1000:.0f}ms",
            hint="pick 100ms or longer (the default is 2s)",
        )
    if json:
        raise errors.UsageError(
            "--watch redraws a table on a terminal and does not go with --json",
            hint=f"for scripts, run `{command} --json` at the interval you need",
        )
    if not stdout_is_terminal():
        raise errors.UsageError(
            "--watch redraws a table in place and needs a terminal on stdout",
            hint=f"run it on a terminal; for a script or a file, run `{command} --json` at the "
            "interval you need",
        )
    return seconds


def interval_text(seconds: float) -> str:
    """An interval for the header: ``0.2s``, ``2s``, ``90s``."""
    return f"{seconds:g}s"


def live_console() -> Console:
    """stdout's terminal for a redrawn view: lines wrap at its width (so the redraw knows how
    many rows it drew), its size is asked at every redraw, and text is never markup."""
    return Console(file=sys.stdout, highlight=False, emoji=False, markup=False)


def watch_until_interrupted(
    draw: Callable[[Console], RenderableType], interval: float, *, console: Console
) -> None:
    """Redraw ``draw(console)`` every ``interval`` seconds (counted from the start of one
    reading to the start of the next) until Ctrl-C, which restores the terminal (cursor shown,
    the last picture left on it) and exits 130 without a message. An error from ``draw``
    leaves its last picture and goes to the caller's error report (exit 1 for a lost server)."""
    from rich.live import Live

    try:
        with Live(
            draw(console),
            console=console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
            vertical_overflow="ellipsis",
        ) as live:
            next_at = time.monotonic() + interval
            while True:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at + interval, time.monotonic())
                live.update(draw(console), refresh=True)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
