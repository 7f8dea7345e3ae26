"""The root of the command line: a table of contents of the command groups."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from esctl import __version__
from esctl.cli import compress, config_cmd, demo, doctor, events, inspect, migrate, queue
from esctl.cli import replay as replay_cmd
from esctl.cli.errors import run_command_line

ORDER = ("demo", "inspect", "events", "migrate", "replay", "queue", "doctor", "compress", "config")
"""The commands in the order ``esctl --help`` lists them: as an operator meets them (try it,
look, move, replay, repair, tend)."""


class _Listed(TyperGroup):
    """The root group, listing its commands in :data:`ORDER` (Typer would list the commands
    before the groups)."""

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted(self.commands, key=lambda name: (*ORDER, name).index(name))


app = typer.Typer(
    cls=_Listed,
    name="esctl",
    help="Operations toolkit for Redis-backed Learning.EventStore event stores.",
    no_args_is_help=True,
    # Pretty exceptions with locals would print connection strings (and their passwords).
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    add_completion=True,
    # Click's own help layout, not rich panels: it never cuts an option name (a long one puts
    # its description on the next line), rewraps docstring paragraphs to the terminal (up to
    # 120 columns), keeps a paragraph marked \b as written (the Example lines), and shows no
    # type label on a flag. Typer's rich panels, at 80 columns, did all four wrong.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"esctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """esctl: inspect, migrate, replay and repair Learning.EventStore data in Redis."""


app.command("demo", short_help="Try esctl: throwaway servers with a demo event store.")(demo.demo)
app.add_typer(inspect.app, name="inspect")
app.add_typer(events.app, name="events")
app.add_typer(migrate.app, name="migrate")
app.command("replay", short_help="Republish events, feed a projection, or print them.")(
    replay_cmd.replay
)
app.add_typer(queue.app, name="queue")
app.command("doctor", short_help="Check the settings, memory and queues that hurt a store.")(
    doctor.doctor
)
app.command("compress", short_help="Compress plain payloads over a threshold, in place.")(
    compress.compress
)
app.add_typer(config_cmd.app, name="config")


def main() -> None:
    # Not app(): with --json even a usage error must be a JSON document on stdout.
    run_command_line(app)
