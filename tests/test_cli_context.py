"""The CLI's context and output object: the shared options declared once (in one order, after
the subcommand, with their environment variables), settings resolved and Redis opened only
when a command asks, one error wrapper around every command, one unit system, one rule for
questions without a terminal, and a reader of stdout that goes away."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from helpers import cli_env, run_cli
from typer.testing import CliRunner

from esctl import errors
from esctl.cli import output, progress
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.output import Output
from esctl.units import counted, format_bytes, format_duration

# --- the decorator ---------------------------------------------------------------------------


def test_shared_options_follow_the_commands_own_in_one_order() -> None:
    @with_context(Scope.REDIS | Scope.ENV)
    def peek(ctx: Context, sub: str, count: int = 10) -> None:
        """Peek."""

    names = list(inspect.signature(peek).parameters)
    assert names == ["sub", "count", "redis_url", "cluster", "env", "profile", "config", "json_",
                     "debug"]  # fmt: skip
    assert peek.__doc__ == "Peek."
    # Real objects, not strings: Typer reads them with typing.get_type_hints.
    assert not any(isinstance(a, str) for a in peek.__annotations__.values())


def test_a_command_with_its_own_json_option_gets_none_and_no_scope_only_debug() -> None:
    @with_context(Scope.NONE, json=False)
    def decode(ctx: Context) -> None:
        """Decode."""

    assert list(inspect.signature(decode).parameters) == ["debug"]


def test_declaring_a_shared_option_again_is_refused_at_import() -> None:
    with pytest.raises(TypeError, match="app_name"):

        @with_context(Scope.APP)
        def clash(ctx: Context, app_name: str = "") -> None:
            """Clash."""


def probe_app() -> typer.Typer:
    """A little app whose commands show what the context gives them."""
    app = typer.Typer()

    @app.command("show")
    @with_context(Scope.SETTINGS)
    def show(
        ctx: Context,
        name: Annotated[str, typer.Option("--name", help="Which setting.")] = "app",
    ) -> None:
        """Show a setting."""
        ctx.out.result({name: ctx.get(name)}, lambda: ctx.out.print(str(ctx.get(name))))

    @app.command("need-app")
    @with_context(Scope.APP)
    def need_app(ctx: Context) -> None:
        """Require --app."""
        ctx.out.print(ctx.app)

    @app.command("fail")
    @with_context(Scope.NONE)
    def fail(ctx: Context) -> None:
        """Fail as the core fails."""
        raise errors.NotFound("no such aggregate: a-1", hint="check the id")

    return app


runner = CliRunner()


def test_options_after_the_subcommand_and_their_environment_variables(tmp_path: Path) -> None:
    app = probe_app()
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    given = runner.invoke(app, ["show", "--app", "FromOption"], env={**env, "ESCTL_APP": "E"})
    assert given.exit_code == 0, given.output
    assert given.output.strip() == "FromOption"
    from_env = runner.invoke(app, ["show", "--json"], env={**env, "ESCTL_APP": "FromEnv"})
    assert json.loads(from_env.output) == {"app": "FromEnv"}
    (tmp_path / "esctl.toml").write_text('[staging]\nenv = "FromProfile"\n')
    profile = runner.invoke(
        app,
        ["show", "--name", "env", "--profile", "staging", "--config", str(tmp_path / "esctl.toml")],
    )
    assert profile.output.strip() == "FromProfile", profile.output


def test_a_missing_app_says_how_to_set_it(tmp_path: Path) -> None:
    result = runner.invoke(probe_app(), ["need-app"], env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert result.exit_code == 1
    assert "ApplicationName is not set" in result.output
    assert "pass --app, set ESCTL_APP" in result.output


def test_every_command_runs_inside_the_error_wrapper() -> None:
    human = runner.invoke(probe_app(), ["fail"])
    assert human.exit_code == 1
    assert "error: no such aggregate: a-1" in human.output
    assert "what to do: check the id" in human.output
    as_json = runner.invoke(probe_app(), ["fail", "--json"])
    assert as_json.exit_code == 1
    document = json.loads(as_json.output.split("\nerror:")[0])
    assert document["error"]["kind"] == "not_found"


def test_nothing_is_resolved_or_opened_before_a_command_asks(tmp_path: Path) -> None:
    """A config file that does not exist fails only when a setting is read; Redis on a port
    nobody listens on fails only when the client is asked for."""
    ctx = Context(
        values={"redis_url": "redis://127.0.0.1:1/0", "app": "A"},
        config=str(tmp_path / "none.toml"),
    )
    with pytest.raises(errors.ConfigError, match="does not exist"):
        _ = ctx.app
    ctx = Context(values={"redis_url": "redis://127.0.0.1:1/0", "app": "A"})
    assert ctx.app == "A"  # settings resolved, Redis untouched
    assert "redis" not in vars(ctx)
    with pytest.raises(errors.ConnectionFailed):
        _ = ctx.redis


def test_config_show_opens_nothing() -> None:
    result = run_cli("config", "show", "--json", "--redis-url", "redis://127.0.0.1:1/0")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["settings"]["redis_url"]["value"] == "redis://127.0.0.1:1/0"


# --- the output object -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1,023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 1024**2, "5.0 MiB"),
        (3 * 1024**3, "3.0 GiB"),
        (2048 * 1024**4, "2,048.0 TiB"),
        (-1536, "-1.5 KiB"),
    ],
)
def test_bytes_in_iec_units(n: int | None, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.04, "0.0 s"),
        (12.34, "12.3 s"),
        (75, "1m 15s"),
        (3 * 3600 + 4 * 60 + 5, "3h 4m"),
        (2 * 86400 + 5 * 3600, "2d 5h"),
        (-90, "-1m 30s"),
    ],
)
def test_one_duration_format(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ((1, "event"), "1 event"),
        ((0, "event"), "0 events"),
        ((2, "event"), "2 events"),
        ((1_234, "event"), "1,234 events"),
        ((1, "hash", "hashes"), "1 hash"),
        ((3, "hash", "hashes"), "3 hashes"),
        ((0, "entry", "entries"), "0 entries"),
    ],
)
def test_a_count_and_its_noun_agree(args: tuple[Any, ...], text: str) -> None:
    """One noun after a count of one, the plural after any other (an irregular one given)."""
    assert counted(*args) == text


def test_a_count_without_separators_stays_without() -> None:
    assert counted(1_234, "problem", separators=False) == "1234 problems"
    assert counted(1, "problem", separators=False) == "1 problem"


def without_terminal(monkeypatch: pytest.MonkeyPatch, *, stdin: bool, stderr: bool) -> None:
    monkeypatch.setattr(output, "stdin_is_terminal", lambda: stdin)
    monkeypatch.setattr(output, "stderr_is_terminal", lambda: stderr)


@pytest.mark.parametrize(("stdin", "stderr"), [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("json_mode", [False, True])
def test_a_question_without_a_terminal_is_refused_naming_yes_and_dry_run(
    monkeypatch: pytest.MonkeyPatch, stdin: bool, stderr: bool, json_mode: bool
) -> None:
    without_terminal(monkeypatch, stdin=stdin, stderr=stderr)
    out = Output(json=json_mode)
    with pytest.raises(errors.Refused) as refused:
        out.confirm("Really?", action="compress rewrites payloads")
    assert "no terminal" in refused.value.message
    assert refused.value.hint is not None
    assert "--yes" in refused.value.hint and "--dry-run" in refused.value.hint
    with pytest.raises(errors.Refused) as no_dry_run:
        out.require_terminal("it deletes", dry_run=False)
    assert no_dry_run.value.hint is not None and "--dry-run" not in no_dry_run.value.hint


def test_no_progress_bar_without_a_terminal_or_in_json(monkeypatch: pytest.MonkeyPatch) -> None:
    without_terminal(monkeypatch, stdin=True, stderr=True)
    assert not Output(json=True).progress(True, desc="x", unit=" x").shown
    assert not Output().progress(False, desc="x", unit=" x").shown
    without_terminal(monkeypatch, stdin=True, stderr=False)
    bar = Output().progress(True, desc="x", unit=" x")
    assert not bar.shown and bar.hook(print) is None
    bar.update(5, total=10, desc="y", postfix={"a": "1"})  # draws nothing, fails nothing
    bar.close()


def test_a_progress_bar_counts_in_whole_numbers() -> None:
    """Counts as the integers they are (tqdm's unit_scale writes "4.00 events" and "42.0
    events"), with thousands separators; the rate scaled ("16.7k events/s")."""
    bar = progress.counting_bar()
    assert bar.format_meter(4, None, 0.5, prefix="replaying", unit=" events").startswith(
        "replaying: 4 events [00:00, 8.00 events/s"
    )
    assert "| 1,234,567/2,345,678 [" in bar.format_meter(
        1_234_567, 2_345_678, 10, prefix="migrating", unit=" commits", ncols=80
    )
    assert bar.format_meter(
        42, None, 1, prefix="x", unit=" keys", rate=16_700, postfix="matched=5"
    ) == ("x: 42 keys [00:01, 16.7k keys/s, matched=5]")
    # slow work is still counted per second (tqdm: "3.30s/ commits")
    assert ", 0.30 commits/s]" in bar.format_meter(1, 10, 3.3, prefix="m", unit=" commits")
    assert ", ? commits/s]" in bar.format_meter(0, None, 0, prefix="m", unit=" commits")


@pytest.mark.parametrize(
    ("unit", "singular"),
    [(" events", " event"), (" commits", " commit"), (" keys", " key"),
     (" aggregates", " aggregate"), (" hashes", " hash")],
)  # fmt: skip
def test_a_progress_bar_counts_one_in_the_singular(unit: str, singular: str) -> None:
    """A bar without a total writes the unit after its count as the count wants it ("1
    commit", "2 commits"; tqdm wrote "1 commits"), for every unit a command's bar counts in
    (grep 'unit=" ' esctl/cli); the rate stays per second in the plural."""
    bar = progress.counting_bar()
    one = bar.format_meter(1, None, 1, prefix="m", unit=unit)
    assert one == f"m: 1{singular} [00:01, 1.00{unit}/s]"
    for n in (0, 2, 1_001):
        assert bar.format_meter(n, None, 1, prefix="m", unit=unit).startswith(f"m: {n:,}{unit} [")
    assert progress.one("it") == "it"  # tqdm's default unit


# --- a reader that goes away -----------------------------------------------------------------

_MANY_LINES = """
import typer
from esctl.cli.context import Context, Scope, with_context

app = typer.Typer()

@app.command("lines")
@with_context(Scope.NONE)
def lines(ctx: Context) -> None:
    '''Many lines.'''
    for n in range(200_000):
        ctx.out.print(f"line {n}")

@app.command("other")
def other() -> None:
    '''Keeps the group.'''

app()
"""


def test_a_reader_that_goes_away_stops_the_command_quietly(tmp_path: Path) -> None:
    script = tmp_path / "many.py"
    script.write_text(textwrap.dedent(_MANY_LINES))
    result = subprocess.run(
        [
            "bash",
            "-c",
            f'"{sys.executable}" "{script}" lines | head -1; echo "exit=${{PIPESTATUS[0]}}"',
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert result.stdout == "line 0\nexit=0\n", result.stdout
    assert result.stderr == ""
