"""The root of the command line: a table of contents of the command groups."""

from __future__ import annotations

import gc
import importlib
from collections.abc import Callable
from typing import Annotated, Any

import typer
import typer.main
from typer.core import TyperGroup

from esctl import __version__
from esctl.cli.errors import run_command_line

ORDER = ("demo", "inspect", "events", "migrate", "replay", "queue", "doctor", "compress", "config")
"""The commands in the order ``esctl --help`` lists them: as an operator meets them (try it,
look, move, replay, repair, tend)."""


class _Listed(TyperGroup):
    """The root group: it lists its commands in :data:`ORDER` (Typer would list the commands
    before the groups), and imports and builds a command only when it is asked for it: a run
    of ``esctl queue list`` never imports replay's or doctor's modules (0.1 CPU-s less for a
    typical command, half of ``--version``'s), nor does a Tab a shell's completion sends."""

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted(set(self.commands) | set(_ADD), key=lambda name: (*ORDER, name).index(name))

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in self.commands and args[0] not in _ADD:
            # A mistyped name: Typer's "Did you mean 'queue'?" looks among the commands built.
            for name in _ADD:
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in _ADD:
            # Built as a root of the same settings holding only this command builds it, so
            # it is the command a root holding all of them would hold.
            built: Any = typer.main.get_command(_root(cmd_name))
            self.commands[cmd_name] = built.commands[cmd_name]
        return self.commands.get(cmd_name)


def _root(*names: str) -> typer.Typer:
    """esctl's root with the commands ``names`` (none: each loaded when asked for)."""
    root = typer.Typer(
        cls=_Listed,
        name="esctl",
        help="Operations toolkit for Redis-backed Learning.EventStore event stores.",
        no_args_is_help=True,
        # Pretty exceptions with locals would print connection strings (and their passwords).
        pretty_exceptions_enable=False,
        pretty_exceptions_show_locals=False,
        add_completion=True,
        # Click's own help layout, not rich panels: it never cuts an option name (a long one
        # puts its description on the next line), rewraps docstring paragraphs to the terminal
        # (up to 120 columns), keeps a paragraph marked \b as written (the Example lines), and
        # shows no type label on a flag. Typer's rich panels, at 80 columns, did all four wrong.
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
    )
    root.callback()(_root_options)
    for name in names:
        _ADD[name](root)
    return root


def _version(value: bool) -> None:
    if value:
        typer.echo(f"esctl {__version__}")
        raise typer.Exit()


def _root_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """esctl: inspect, migrate, replay and repair Learning.EventStore data in Redis."""


def _cli(module: str) -> Any:
    return importlib.import_module(f"esctl.cli.{module}")


def _command(module: str, function: str, short_help: str) -> Callable[[typer.Typer], None]:
    def add(root: typer.Typer) -> None:
        root.command(function, short_help=short_help)(getattr(_cli(module), function))

    return add


def _group(module: str, name: str) -> Callable[[typer.Typer], None]:
    def add(root: typer.Typer) -> None:
        root.add_typer(_cli(module).app, name=name)

    return add


_ADD: dict[str, Callable[[typer.Typer], None]] = {
    "demo": _command("demo", "demo", "Try esctl: throwaway servers with a demo event store."),
    "inspect": _group("inspect", "inspect"),
    "events": _group("events", "events"),
    "migrate": _group("migrate", "migrate"),
    "replay": _command("replay", "replay", "Republish events, feed a projection, or print them."),
    "queue": _group("queue", "queue"),
    "doctor": _command(
        "doctor", "doctor", "Check the settings, memory and queues that hurt a store."
    ),
    "compress": _command(
        "compress", "compress", "Compress plain payloads over a threshold, in place."
    ),
    "config": _group("config_cmd", "config"),
}
"""How each command joins the root, its module imported then."""

app = _root()
"""esctl's command line: each command imported when it runs (or ``--help`` lists it)."""


def every_command() -> Any:
    """The Click command tree with every command built, for what walks all of it (the tests
    of help, JSON and the docs)."""
    return typer.main.get_command(_root(*ORDER))


GC_THRESHOLDS = (50_000, 20, 100)
"""The garbage collector's thresholds in an esctl process (Python's: 700, 10, 10). A bulk run
keeps a page of events in memory (lists of commit ids and payloads, psycopg's arrays), made and
freed a page at a time, without cycles. At Python's thresholds a verify of 199,443 events ran
214 collections, 20 of them over the older generations, each going over the pages then in
memory: 5% of its CPU (perf); a migration's esctl CPU per event was 8% higher (medians of five
alternating runs; docs/design/performance.md, round 16). At these the verify ran none. Cyclic
garbage, should some be made, waits for 50,000 more allocations.
"""


def main() -> None:
    gc.set_threshold(*GC_THRESHOLDS)  # (worker processes are forked: they inherit it)
    # Not app(): with --json even a usage error must be a JSON document on stdout.
    run_command_line(app)
