"""``esctl migrate redis-to-pg --follow``: its options, the signals that stop a follower, and its
lines (JSON lines with ``--json``; else a status line on stderr)."""

from __future__ import annotations

import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from esctl.cli import consoles
from esctl.cli.appkeys import note_if_no_keys
from esctl.cli.context import Context
from esctl.cli.errors import EXIT_INTERRUPTED
from esctl.cli.groups import OptionGroup
from esctl.cli.jsonout import to_json
from esctl.cli.options import MetricsFileOpt
from esctl.cli.output import Output
from esctl.units import counted

if TYPE_CHECKING:
    from esctl.cli.jsonout import JsonStream
    from esctl.migrate import MigrateOptions
    from esctl.migrate.follow import FollowOptions

SWEEP_INTERVAL_DEFAULT = "10m"


@dataclass(frozen=True)
class Following(OptionGroup):
    """--follow and the options only a follower reads."""

    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="After catching up, keep PostgreSQL in step with Redis until stopped "
            "(SIGTERM or SIGHUP: exit 0 after the current batch; Ctrl-C: 130), learning of new commits "
            "from keyspace notifications (polling without them); reports the lag.",
        ),
    ] = False
    enable_notifications: Annotated[
        bool,
        typer.Option(
            "--enable-notifications",
            help="With --follow: CONFIG SET notify-keyspace-events to add 'Kl' on every "
            "primary when it is off.",
        ),
    ] = False
    sweep_interval: Annotated[
        str,
        typer.Option(
            "--sweep-interval",
            metavar="DURATION",
            help="With --follow: a full incremental sweep this often (notifications lost in "
            "a disconnect are caught by it; one also runs after every reconnect); 0: none "
            "but those.",
        ),
    ] = SWEEP_INTERVAL_DEFAULT
    stall_timeout: Annotated[
        str | None,
        typer.Option(
            "--stall-timeout",
            metavar="DURATION",
            help="With --follow: exit 1, naming the cause, when behind with no progress for "
            "this long.",
            show_default=False,
        ),
    ] = None
    metrics_file: MetricsFileOpt = None

    def check_unused(self) -> None:
        """Without --follow: refuse the options only a follower reads (exit 2), naming those
        given (--sweep-interval when not its default)."""
        from esctl.errors import UsageError

        given = [
            name
            for name, used in (
                ("--metrics-file", self.metrics_file is not None),
                ("--enable-notifications", self.enable_notifications),
                ("--sweep-interval", self.sweep_interval != SWEEP_INTERVAL_DEFAULT),
                ("--stall-timeout", self.stall_timeout is not None),
            )
            if used
        ]
        if given:
            names = " and ".join(given)
            raise UsageError(
                f"{names} {'needs' if len(given) == 1 else 'need'} --follow",
                hint=f"add --follow to keep PostgreSQL in step with Redis, or leave out {names}",
            )

    def options(self) -> FollowOptions:
        """The follower's options as the core takes them (the durations parsed)."""
        from esctl.durations import parse_duration
        from esctl.migrate.follow import FollowOptions

        return FollowOptions(
            sweep_interval_s=parse_duration(self.sweep_interval).total_seconds(),
            stall_timeout_s=(
                parse_duration(self.stall_timeout).total_seconds() if self.stall_timeout else None
            ),
            enable_notifications=self.enable_notifications,
            metrics_file=str(self.metrics_file) if self.metrics_file else None,
        )


class _Stop:
    """SIGTERM, SIGHUP (the terminal hung up) and SIGINT ask the follower to stop after the
    current batch; SIGHUP as SIGTERM does (exit 0), unless it was ignored when esctl started
    (``nohup``: the follower was meant to outlive its terminal)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        stops = [(signal.SIGTERM, "terminate"), (signal.SIGINT, "interrupt")]
        if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
            stops.append((signal.SIGHUP, "terminate"))
        for sig, reason in stops:
            self.previous[sig] = signal.signal(sig, self._handler(reason))
        return self

    def _handler(self, reason: str) -> Any:
        def handle(signum: int, frame: Any) -> None:
            if signum == signal.SIGHUP:  # its lines from now on go nowhere, not failing
                consoles.let_go_of_hung_up_terminal()
            if self.reason is None:
                self.reason = reason

        return handle

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> str | None:
        return self.reason


def run_follow(
    ctx: Context, opts: MigrateOptions, following: Following, *, refuse: dict[str, bool]
) -> None:
    """Follow until stopped; first refuse the options of ``refuse`` that were given (a
    follower cannot take them: exit 2)."""
    from esctl.errors import UsageError
    from esctl.migrate.follow import follow

    refused = [name for name, given in refuse.items() if given]
    if refused:
        names = " and ".join(refused)
        raise UsageError(
            f"--follow cannot be combined with {', '.join(refused)}",
            hint=f"leave out {names} to follow, or --follow for one run with "
            f"{'them' if len(refused) > 1 else 'it'}",
        )
    fopts = following.options()
    out = ctx.out
    stream = out.open_stream() if out.json else None
    screen = _Screen(out) if stream is None else None
    shown = _json_lines(stream) if stream is not None else screen
    assert shown is not None
    noted = False

    def on_line(line: dict[str, Any]) -> None:
        nonlocal noted
        shown(line)
        if not noted and line["event"] == "sweep" and line["phase"] == "finished":
            noted = True  # after the first sweep: a typo in --app follows nothing, forever
            if screen is not None:
                screen.clear()
            note_if_no_keys(ctx, seen=line["events_read"] > 0 or line["events_migrated"] > 0)

    client = ctx.redis
    with _Stop() as stop:
        last = follow(client, opts, fopts, on_line=on_line, should_stop=stop)
    if stream is not None:
        stream.close()
    if last.get("reason") == "interrupt":
        raise typer.Exit(EXIT_INTERRUPTED)


def _json_lines(stream: JsonStream) -> Callable[[dict[str, Any]], None]:
    def write(line: dict[str, Any]) -> None:
        stream.write_result(to_json(line).encode("utf-8"))
        stream.flush()

    return write


class _Screen:
    """A follower's lines for a person: notices and finished sweeps as lines, the lag as one
    status line on a terminal, rewritten in place (cut to the terminal's width, so it never
    wraps), cleared before any other line."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.terminal = sys.stderr.isatty()
        self.shown = False
        self.obstacle: str | None = None

    def __call__(self, line: dict[str, Any]) -> None:
        event = line["event"]
        if event == "notice":
            self._say(self.out.warn, line["message"])
        elif event == "sweep" and line["phase"] == "finished" and _worth_saying(line):
            self._say(
                self.out.info,
                f"sweep ({line['reason']}) done in {line['elapsed_s']:.1f} s: "
                f"{counted(line['events_migrated'], 'event')} migrated so far",
            )
        elif event == "lag":
            obstacle = line.get("obstacle")
            if obstacle and obstacle != self.obstacle:
                self._say(self.out.warn, f"behind: {obstacle}")
            self.obstacle = obstacle
            if self.terminal:
                width = max(20, shutil.get_terminal_size().columns - 1)
                text = _status(line)
                if len(text) > width:
                    text = text[: width - 1] + "…"
                print(f"\r{text}\x1b[K", end="", file=sys.stderr, flush=True)
                self.shown = True
        elif event == "stopped":
            self._say(self.out.info, f"stopped ({line['reason']}): {_status(line)}")

    def _say(self, say: Callable[[str], None], text: str) -> None:
        self.clear()
        say(text)

    def clear(self) -> None:
        """Clear the status line, for another line to be written."""
        if self.shown:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)
            self.shown = False


def _worth_saying(sweep: dict[str, Any]) -> bool:
    """A finished sweep, unless it is one of polling's many that found nothing."""
    return sweep["reason"] != "poll" or sweep["events_read"] > 0


def _status(line: dict[str, Any]) -> str:
    obstacle = f" — {line['obstacle']}" if line.get("obstacle") else ""
    return (
        f"following ({line['mode']}): lag {line['lag_seconds']:.2f} s, "
        f"{line['events_behind']:,} behind, {line['events_migrated']:,} migrated, "
        f"{line['quarantined']:,} quarantined{', sweeping' if line['sweeping'] else ''}"
        f"{obstacle}"
    )
