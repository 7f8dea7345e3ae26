"""Option groups (esctl/cli/groups.py): options declared once as a dataclass, given to Typer in
the place of the one parameter that stands for them, and handed to the command as one object
built from their values; the selectors of ``events query`` and ``replay`` are one group, and so
are --dry-run, --yes and --progress of the commands that change data."""

from __future__ import annotations

import dataclasses
import inspect
import json
from typing import Annotated

import typer
from typer.testing import CliRunner

from esctl.cli import queue
from esctl.cli.compress import compress
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.events import query
from esctl.cli.groups import Changing, EventSelection, OptionGroup, with_groups
from esctl.cli.replay import replay
from esctl.query import Selectors


@dataclasses.dataclass(frozen=True)
class Window(OptionGroup):
    first: Annotated[int, typer.Option("--first", help="First one.")] = 1
    names: Annotated[list[str] | None, typer.Option("--name", help="A name; repeatable.")] = None


def probe_app() -> typer.Typer:
    app = typer.Typer()

    @app.command("show")
    @with_context(Scope.NONE)
    @with_groups
    def show(
        ctx: Context,
        before: Annotated[str, typer.Option("--before")] = "b",
        window: Window = Window(),
        after: Annotated[bool, typer.Option("--after")] = False,
    ) -> None:
        """Show what arrived."""
        ctx.out.result(
            {"before": before, "window": dataclasses.asdict(window), "after": after},
            lambda: None,
        )

    @app.command("other")
    def other() -> None:
        """A second command, so that "show" is a subcommand."""

    return app


runner = CliRunner()


def test_a_group_stands_in_its_parameters_place_and_arrives_as_one_object() -> None:
    app = probe_app()
    given = runner.invoke(
        app, ["show", "--name", "x", "--first", "3", "--name", "y", "--after", "--json"]
    )
    assert given.exit_code == 0, given.output
    assert json.loads(given.output) == {
        "before": "b",
        "window": {"first": 3, "names": ["x", "y"]},
        "after": True,
    }
    defaults = runner.invoke(app, ["show", "--json"])
    assert json.loads(defaults.output)["window"] == {"first": 1, "names": None}
    help_text = runner.invoke(app, ["show", "--help"]).output
    order = [help_text.index(flag) for flag in ("--before", "--first", "--name", "--after")]
    assert order == sorted(order), help_text


def test_events_query_and_replay_take_the_same_selectors_from_one_group() -> None:
    selectors = [f.name for f in dataclasses.fields(EventSelection)]
    for command in (query, replay):
        names = list(inspect.signature(command).parameters)
        start = names.index(selectors[0])
        assert names[start : start + len(selectors)] == selectors, command.__name__
    selection = EventSelection(types=["A", "B"], aggregates=None, where=["Score>=7"], since="7d")
    assert selection.selectors() == Selectors(
        types=("A", "B"),
        aggregate_type=None,
        aggregates=(),
        since="7d",
        until=None,
        where=("Score>=7",),
    )


def test_the_commands_that_change_data_end_with_one_group_and_ask_unless_yes_or_dry_run() -> None:
    names = [f.name for f in dataclasses.fields(Changing)]
    for command in (
        compress,
        replay,
        queue.requeue_command,
        queue.drain_command,
        queue.restore_command,
    ):
        parameters = list(inspect.signature(command).parameters)
        own = parameters[: parameters.index("redis_url")]  # the shared options come after
        assert own[-len(names) :] == names, command.__name__
    assert Changing().asks
    assert not Changing(yes=True).asks
    assert not Changing(dry_run=True).asks
