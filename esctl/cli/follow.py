"""``esctl migrate redis-to-pg --follow``: the signals that stop a follower, and its lines (JSON
lines with ``--json``; else a status line on stderr)."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from esctl.cli.context import Context
from esctl.cli.errors import EXIT_INTERRUPTED
from esctl.cli.output import Output, to_json

if TYPE_CHECKING:
    from esctl.cli.output import JsonStream
    from esctl.migrate import MigrateOptions


@dataclass(frozen=True)
class FollowArgs:
    enable_notifications: bool
    sweep_interval: str
    stall_timeout: str | None
    metrics_file: Path | None
    workers: int


class _Stop:
    """SIGTERM and SIGINT ask the follower to stop after the current batch."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for sig, reason in ((signal.SIGTERM, "terminate"), (signal.SIGINT, "interrupt")):
            self.previous[sig] = signal.signal(sig, self._handler(reason))
        return self

    def _handler(self, reason: str) -> Any:
        def handle(signum: int, frame: Any) -> None:
            if self.reason is None:
                self.reason = reason

        return handle

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> str | None:
        return self.reason


def run_follow(
    ctx: Context, opts: MigrateOptions, args: FollowArgs, *, refuse: dict[str, bool]
) -> None:
    from esctl.durations import parse_duration
    from esctl.errors import UsageError
    from esctl.migrate.follow import FollowOptions, follow

    refused = [name for name, given in refuse.items() if given]
    if args.workers > 1:
        refused.append("--workers")
    if refused:
        raise UsageError(f"--follow cannot be combined with {', '.join(refused)}")
    fopts = FollowOptions(
        sweep_interval_s=parse_duration(args.sweep_interval).total_seconds(),
        stall_timeout_s=(
            parse_duration(args.stall_timeout).total_seconds() if args.stall_timeout else None
        ),
        enable_notifications=args.enable_notifications,
        metrics_file=str(args.metrics_file) if args.metrics_file else None,
    )
    out = ctx.out
    stream = out.open_stream() if out.json else None
    client = ctx.redis
    with _Stop() as stop:
        last = follow(
            client, opts, fopts, on_line=lambda line: _show(out, stream, line), should_stop=stop
        )
    if stream is not None:
        stream.close()
    if last.get("reason") == "interrupt":
        raise typer.Exit(EXIT_INTERRUPTED)


def _show(out: Output, stream: JsonStream | None, line: dict[str, Any]) -> None:
    if stream is not None:
        stream.write_result(to_json(line).encode("utf-8"))
        stream.flush()
        return
    event = line["event"]
    if event == "notice":
        out.warn(line["message"])
    elif event == "sweep" and line["phase"] == "finished" and _worth_saying(line):
        out.info(
            f"sweep ({line['reason']}) done in {line['elapsed_s']:.1f} s: "
            f"{line['events_migrated']:,} events migrated so far"
        )
    elif event == "lag" and sys.stderr.isatty():
        print(f"\r{_status(line)}\x1b[K", end="", file=sys.stderr, flush=True)
    elif event == "stopped":
        if sys.stderr.isatty():
            print(file=sys.stderr)
        out.info(f"stopped ({line['reason']}): {_status(line)}")


def _worth_saying(sweep: dict[str, Any]) -> bool:
    """A finished sweep, unless it is one of polling's many that found nothing."""
    return sweep["reason"] != "poll" or sweep["events_read"] > 0


def _status(line: dict[str, Any]) -> str:
    obstacle = f" — {line['obstacle']}" if line.get("obstacle") else ""
    return (
        f"following ({line['mode']}): lag {line['lag_seconds']:.2f} s, "
        f"{line['events_behind']:,} events behind, {line['events_migrated']:,} migrated, "
        f"{line['quarantined']:,} quarantined{' (sweeping)' if line['sweeping'] else ''}"
        f"{obstacle}"
    )
