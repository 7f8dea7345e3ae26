"""The command line end to end (a real ``esctl`` subprocess): version, help, exit codes,
``events decode`` and ``config show``; and the one table from errors to exit codes."""

from __future__ import annotations

import base64
import gc
import inspect
import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
import redis
import typer
import typer.main
from helpers import cli_env, run_cli, run_cli_together

import esctl
from esctl import codec, errors, layout
from esctl.cli import errors as cli_errors
from esctl.cli.app import GC_THRESHOLDS, every_command

PAYLOAD = (
    '{"$type":"Learning.Scoring.Events.ItemScoreCreated, Learning.Scoring","Id":"agg-1",'
    '"TimeStamp":"2018-07-16T17:04:12.1234567+00:00","Version":3,"AggregateType":"ItemScore",'
    '"Text":"Zoë 日本語 🎉 \\"quoted\\" \\\\ back","Empty":{},"Nums":[1,2.5,-3e-7]}'
)


def dotnet_gzip_base64(text: str) -> str:
    """What the library stores for a large payload: .NET gzip (mtime 0, OS byte 0x0a) +
    base64."""
    data = text.encode()
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(data) + deflate.flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x0a"
    trailer = struct.pack("<II", zlib.crc32(data), len(data))
    return base64.b64encode(header + body + trailer).decode()


def lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def assert_no_traceback(result: Any) -> None:
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout


# --- version and help ----------------------------------------------------------------------


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"esctl {esctl.__version__}\n"


def root_command() -> Any:
    """The Click command tree Typer builds (Typer vendors Click: duck-typed, not imported)."""
    command = every_command()
    assert getattr(command, "commands", None), "esctl's root should be a group"
    return command


def test_help_lists_every_group() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    names = list(root_command().commands)
    assert {"events", "config"} <= set(names)
    for name in names:
        assert name in result.stdout, f"{name} missing from esctl --help"
    listed = re.findall(r"^  ([a-z-]+)  ", result.stdout.split("Commands:")[1], re.MULTILINE)
    # as an operator meets them: try it, look, move, replay, repair, tend
    assert listed == [
        "demo", "inspect", "events", "migrate", "replay", "queue", "doctor", "compress", "config"
    ]  # fmt: skip


def is_group(command: Any) -> bool:
    return hasattr(command, "commands")


def walk(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    found = [(" ".join(("esctl", *path)), command)]
    if is_group(command):
        for name, sub in command.commands.items():
            found += walk(sub, (*path, name))
    return found


def test_every_command_group_and_option_has_help_text() -> None:
    missing = []
    for name, command in walk(root_command()):
        if not (command.help or command.short_help):
            missing.append(f"{name}: no help text")
        for param in command.params:
            if param.param_type_name == "option" and not param.hidden and not param.help:
                missing.append(f"{name} {param.opts[0]}: no help text")
        if not is_group(command) and "Example" not in (command.help or ""):
            missing.append(f"{name}: no 'Example:' line in its docstring")
    assert not missing, "\n".join(missing)


def test_every_argument_is_named_in_capitals_as_the_options_values_are() -> None:
    """Usage lines and 'Missing argument' errors name a positional argument as --help names an
    option's value (``{AGGREGATE_ID}``, ``--older-than DURATION``), not by its Python name."""
    lower = []
    for name, command in walk(root_command()):
        for param in command.params:
            if param.param_type_name == "argument":
                shown = param.metavar or param.name
                if shown != shown.upper() and not shown.startswith("PATH."):
                    lower.append(f"{name}: argument shown as {shown!r}")
    assert not lower, "\n".join(lower)


@pytest.mark.parametrize(
    "args",
    [
        ["config", "show", "--no-such-option"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert "No such" in result.stderr
    assert_no_traceback(result)


def test_a_mistyped_command_gets_the_nearest_names() -> None:
    """At the root, where each command is built only when named, and in a group."""
    root, group, as_json = run_cli_together(
        [["queu", "list"], ["migrate", "redis-to-pgx"], ["queu", "list", "--json"]]
    )
    assert root.returncode == 2 and "No such command 'queu'. Did you mean 'queue'?" in root.stderr
    assert "Did you mean 'redis-to-pg'?" in group.stderr
    message = json.loads(as_json.stdout)["error"]["message"]
    assert message == "No such command 'queu'. Did you mean 'queue'?"


# --- startup stays light -------------------------------------------------------------------

# Shell completion runs esctl on every Tab press, so building the command tree (for --help,
# --version and completion) must not import redis-py, psycopg or esctl's core modules: each
# command imports them when it runs (helpers only for type checking). At startup esctl needs
# typer, rich, orjson and these modules of its own (the esctl.cli modules aside); esctl.layout
# (standard library only) when completion parses a queue --list value, to check it.
# Modules of esctl that need nothing but the standard library (esctl.units: the formatters the
# CLI's output object and the core's reports share).
STARTUP_MODULES = {
    "esctl",
    "esctl.config",
    "esctl.defaults",
    "esctl.errors",
    "esctl.layout",
    "esctl.units",
}
HEAVY_PACKAGES = {"redis", "psycopg", "psycopg_pool", "hiredis", "zstandard", "tqdm"}

_LOAD_AND_RECORD = """
import json, os, sys
import typer.main
from esctl.cli.app import app, every_command

def walk(command, path):
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, [*path, name])

runs = []
if sys.argv[2] == "one command":
    runs = [(["queue", "list", "--help"], {})]
if sys.argv[2] == "help":
    runs = [(["--version"], {}), ([], {})]
    runs += [([*path, "--help"], {}) for path in walk(every_command(), [])]
    runs += [
        ([], {"_ESCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword})
        for words, cword in [
            ("esctl ", "1"),
            ("esctl migrate ", "2"),
            ("esctl migrate redis-to-pg --", "3"),
            ("esctl queue peek SUB TYPE --list dead --", "7"),
            ("esctl replay --from ", "3"),
        ]
    ]
for args, env in runs:
    os.environ.update(env)
    try:
        app(args=args, prog_name="esctl")
    except SystemExit:
        pass
    for name in env:
        del os.environ[name]
with open(sys.argv[1], "w") as f:
    json.dump(sorted(sys.modules), f)
"""


def modules_loaded(tmp_path: Path, mode: str) -> set[str]:
    """The modules loaded in a fresh interpreter after importing esctl.cli.app (``import``)
    or after also running ``queue list --help`` (``one command``), or --version, every --help
    and a few completions (``help``)."""
    record = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_RECORD, str(record), mode],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli_env(),
        cwd=str(tmp_path),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    return set(json.loads(record.read_text()))


def too_heavy(modules: set[str]) -> list[str]:
    """The drivers and the esctl modules outside STARTUP_MODULES and esctl.cli among
    ``modules``."""

    def light(name: str) -> bool:
        return name in STARTUP_MODULES or name == "esctl.cli" or name.startswith("esctl.cli.")

    return sorted(
        m
        for m in modules
        if m.split(".")[0] in HEAVY_PACKAGES or (m.split(".")[0] == "esctl" and not light(m))
    )


@pytest.mark.parametrize("mode", ["import", "one command", "help"])
def test_startup_imports_no_driver_and_no_core_module(tmp_path: Path, mode: str) -> None:
    loaded = modules_loaded(tmp_path, mode)
    commands = {f"esctl.cli.{m}" for m in ("migrate", "replay", "doctor", "queue", "demo")}
    # Each command's module is imported when it runs, or when --help or completion lists it.
    expected = {"import": set(), "one command": {"esctl.cli.queue"}, "help": commands}[mode]
    assert loaded & commands == expected
    heavy = too_heavy(loaded)
    assert not heavy, (
        f"esctl's startup (completion, --help, --version) imports {', '.join(heavy)}; import "
        "them inside the command functions instead (see esctl/cli/events.py)"
    )


def test_the_command_s_process_collects_garbage_at_esctl_s_thresholds() -> None:
    """``esctl`` (the console script's ``main``) sets the collector's thresholds before the
    command runs, for every command and the processes it forks; importing esctl does not."""
    probe = (
        "import atexit, gc, sys\n"
        "import esctl.cli.app\n"
        "print(gc.get_threshold(), file=sys.stderr)\n"
        "atexit.register(lambda: print(gc.get_threshold(), file=sys.stderr))\n"
        "sys.argv = ['esctl', '--version']\n"
        "esctl.cli.app.main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=cli_env(), check=True
    )
    imported, ran = done.stderr.split()[:3], done.stderr.split()[3:]
    assert " ".join(imported) == str(gc.get_threshold()), done.stderr
    assert " ".join(ran) == str(GC_THRESHOLDS), done.stderr


# --- events decode -------------------------------------------------------------------------


def zstd_frame_without_newlines(text: str) -> tuple[str, bytes]:
    """A payload like ``text`` and its zstd frame, chosen so the frame can travel as one stdin
    line (no 0x0a byte, no trailing 0x0d): a nonce field varies until the frame fits."""
    for n in range(10_000):
        document = {**json.loads(text), "Nonce": n}
        payload = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
        frame = codec.zstd_compress(payload.encode())
        if b"\n" not in frame and not frame.endswith(b"\r"):
            return payload, frame
    raise AssertionError("no newline-free zstd frame found")


def test_decode_plain_and_dotnet_gzip_values_give_the_exact_text() -> None:
    stored = dotnet_gzip_base64(PAYLOAD)
    result = run_cli("events", "decode", PAYLOAD, stored)
    assert result.returncode == 0, result.stderr
    plain, gzipped = lines(result.stdout)
    assert plain["text"] == PAYLOAD
    assert plain["ok"] is True
    assert plain["compressed"] is None
    assert plain["stored_bytes"] == len(PAYLOAD.encode())
    assert plain["event_type"] == "ItemScoreCreated"
    assert plain["aggregate_id"] == "agg-1"
    assert plain["version"] == 3
    assert plain["problems"] == []
    assert plain["data"] == json.loads(PAYLOAD)
    assert gzipped["text"] == PAYLOAD
    assert gzipped["compressed"] == "gzip"
    assert gzipped["stored_bytes"] == len(stored)
    assert {k: v for k, v in gzipped.items() if k not in ("compressed", "stored_bytes")} == {
        k: v for k, v in plain.items() if k not in ("compressed", "stored_bytes")
    }


def test_decode_zstd_value_from_stdin() -> None:
    payload, frame = zstd_frame_without_newlines(PAYLOAD)
    result = run_cli("events", "decode", "-", input=frame + b"\n")
    assert result.returncode == 0, result.stderr
    [document] = lines(result.stdout)
    assert document["compressed"] == "zstd"
    assert document["text"] == payload


def test_decode_text_mode_prints_exactly_the_payloads() -> None:
    values = [PAYLOAD, dotnet_gzip_base64(PAYLOAD), "{}"]
    result = run_cli("events", "decode", "--text", input="\n".join(values) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{PAYLOAD}\n{PAYLOAD}\n{{}}\n"


def test_decode_bad_value_exits_3_and_keeps_going() -> None:
    result = run_cli("events", "decode", "-", input=f"{PAYLOAD}\nH4sIbroken\n{PAYLOAD}\n")
    assert result.returncode == 3
    assert_no_traceback(result)
    documents = lines(result.stdout)
    assert [d["ok"] for d in documents] == [True, False, True]
    assert documents[1]["text"] == "H4sIbroken"
    assert documents[1]["problems"][0]["kind"] == "invalid_compressed"
    assert "stdin line 2" in result.stderr
    assert "invalid_compressed" in result.stderr


def test_decode_bad_argument_exits_3() -> None:
    result = run_cli("events", "decode", "H4sI!!notbase64")
    assert result.returncode == 3
    assert "argument 1" in result.stderr
    assert_no_traceback(result)


def test_decode_invalid_utf8_from_stdin_exits_3() -> None:
    result = run_cli("events", "decode", "-", input=b'{"a":"\xff"}\n')
    assert result.returncode == 3
    [document] = lines(result.stdout)
    assert document["problems"][0]["kind"] == "invalid_utf8"
    assert_no_traceback(result)


# --- config show ---------------------------------------------------------------------------


def test_config_show_json_precedence_and_no_password(tmp_path: Path) -> None:
    (tmp_path / "esctl.toml").write_text(
        "[default]\n"
        'app = "DefaultApp"\n'
        "[staging]\n"
        'pg_dsn = "postgresql://stage:fileS3cret@db.internal/events"\n'
        'env = "staging"\n'
        'app = "StagingApp"\n'
    )
    result = run_cli(
        "config",
        "show",
        "--json",
        "--app",
        "OptionApp",
        cwd=tmp_path,
        env={
            "ESCTL_REDIS_URL": "redis://:envS3cret@cache.internal:6379/2",
            "ESCTL_PROFILE": "staging",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "S3cret" not in result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["profile"] == "staging"
    assert document["config_file"] == str(tmp_path / "esctl.toml")
    settings = document["settings"]
    assert settings["app"] == {"value": "OptionApp", "source": "option", "env_var": "ESCTL_APP"}
    assert settings["redis_url"]["value"] == "redis://:***@cache.internal:6379/2"
    assert settings["redis_url"]["source"] == "env:ESCTL_REDIS_URL"
    assert settings["pg_dsn"]["value"] == "postgresql://stage:***@db.internal/events"
    assert settings["pg_dsn"]["source"] == f"config:{tmp_path / 'esctl.toml'}[staging]"
    assert settings["env"]["value"] == "staging"
    assert settings["pg_schema"]["source"] == "default"


def test_config_show_table_hides_passwords() -> None:
    result = run_cli("config", "show", "--pg-dsn", "host=db user=u password=optS3cret")
    assert result.returncode == 0, result.stderr
    assert "optS3cret" not in result.stdout + result.stderr
    assert "password=***" in result.stdout


def test_config_error_exits_1_with_a_hint_and_no_traceback(tmp_path: Path) -> None:
    result = run_cli("config", "show", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 1
    assert "error:" in result.stderr and "missing.toml" in result.stderr
    assert "what to do:" in result.stderr
    assert_no_traceback(result)


def test_config_error_in_json_mode_is_a_json_document(tmp_path: Path) -> None:
    bad = tmp_path / "esctl.toml"
    bad.write_text("[default\n")
    result = run_cli("config", "show", "--json", cwd=tmp_path)
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["exit_code"] == 1
    assert document["error"]["kind"] == "config"
    assert str(bad) in document["error"]["message"]
    assert_no_traceback(result)


@pytest.mark.parametrize("command", [["inspect", "stats", "--app", "A"], ["doctor", "--env", "e"]])
def test_a_database_the_server_does_not_have_is_a_config_error(
    redis_test_url: str, command: list[str]
) -> None:
    """`--redis-url redis://host:port/99` on a server of 16 databases: SELECT's refusal came out
    as "unexpected ResponseError … this is a bug in esctl"; it is a config error naming the
    database and where the number comes from (doctor too: the server is reachable, the URL
    is wrong)."""
    url = redis_test_url.rsplit("/", 1)[0] + "/99"
    result = run_cli(*command, "--redis-url", url, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "config", error
    assert "has no database 99: DB index is out of range" in error["message"], error
    assert "CONFIG GET databases" in error["hint"], error
    assert_no_traceback(result)


# --- the error table -----------------------------------------------------------------------

# From the README's exit codes; one row per error class in esctl.errors.
EXPECTED: dict[type[errors.EsctlError], tuple[int, str]] = {
    errors.EsctlError: (1, "error"),
    errors.ConfigError: (1, "config"),
    errors.UsageError: (2, "usage"),
    errors.ConnectionFailed: (1, "connection"),
    errors.ServerError: (1, "server"),
    errors.LockLost: (1, "server"),
    errors.PermissionDenied: (1, "permission"),
    errors.NotFound: (1, "not_found"),
    errors.SchemaIncompatible: (1, "schema"),
    errors.LockHeld: (75, "locked"),
    errors.Refused: (2, "refused"),
    errors.LocalServerError: (1, "local_server"),
}


def error_classes() -> list[type[errors.EsctlError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.EsctlError) and cls.__module__ == errors.__name__
    ]


def make_error(cls: type[errors.EsctlError]) -> errors.EsctlError:
    if cls is errors.ConnectionFailed:
        return errors.ConnectionFailed("it broke", server="redis://h:6379/0", hint="do this")
    if cls is errors.LockLost:
        return errors.LockLost("it broke", key="esctl:lock:x", why="taken", hint="do this")
    return cls("it broke", hint="do this")


def test_every_error_class_has_an_expected_exit_code() -> None:
    unknown = [cls.__name__ for cls in error_classes() if cls not in EXPECTED]
    assert not unknown, (
        f"add these to EXPECTED (from the README's exit codes) and to ERROR_TABLE: {unknown}"
    )


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_error_table(cls: type[errors.EsctlError]) -> None:
    assert cli_errors.classify(make_error(cls)) == EXPECTED[cls]


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
@pytest.mark.parametrize("json_mode", [False, True])
def test_reporting_turns_each_error_into_its_exit_code(
    cls: type[errors.EsctlError], json_mode: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    code, kind = EXPECTED[cls]
    with pytest.raises(typer.Exit) as caught, cli_errors.reporting(json_mode=json_mode):
        raise make_error(cls)
    assert caught.value.exit_code == code
    out, err = capsys.readouterr()
    assert "error: it broke" in err
    assert "what to do: do this" in err
    assert "Traceback" not in err
    if json_mode:
        assert json.loads(out) == {
            "error": {"kind": kind, "message": "it broke", "hint": "do this"},
            "exit_code": code,
        }
    else:
        assert out == ""


def test_reporting_interrupt_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as caught, cli_errors.reporting():
        raise KeyboardInterrupt
    assert caught.value.exit_code == 130
    assert "interrupted" in capsys.readouterr().err


def test_reporting_an_interrupted_run_says_what_it_left(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as caught, cli_errors.reporting(json_mode=True):
        raise errors.Interrupted("checkpoint 'c' stays at its last batch", hint="rerun it")
    assert caught.value.exit_code == 130
    out, err = capsys.readouterr()
    assert "error: interrupted; checkpoint 'c' stays at its last batch" in err
    assert "what to do: rerun it" in err
    assert json.loads(out)["error"] == {
        "kind": "interrupted",
        "message": "interrupted; checkpoint 'c' stays at its last batch",
        "hint": "rerun it",
    }


def test_reporting_unexpected_error_exits_1_without_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(typer.Exit) as caught, cli_errors.reporting():
        raise RuntimeError("lost redis://u:s3cret@h:6379/0")
    assert caught.value.exit_code == 1
    err = capsys.readouterr().err
    assert "RuntimeError" in err
    assert "Traceback" not in err
    assert "s3cret" not in err


def test_reporting_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit), cli_errors.reporting(debug=True):
        raise errors.ServerError("boom")
    assert "Traceback" in capsys.readouterr().err


def test_tables_print_data_as_it_is_never_as_markup_or_emoji(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    """Payload text, .NET type names and key names reach the terminal unchanged: rich would
    read "[bold]" / "[[System.String, …]]" as markup (and fail on "[/x]"), ":lock:" as an
    emoji."""
    aggregate = "agg-markup"
    payload = (
        '{"$type":"Demo.Events.Noted`1[[System.String, mscorlib]], Demo","Id":"agg-markup",'
        '"Version":1,"TimeStamp":"2024-05-01T12:00:00.0000000+00:00","AggregateType":"Note[/x][bold]",'
        '"Note":"[/x] [bold]esctl:lock:{A:B}:S other:1234:run"}'
    )
    commit = "0c6b6a4e-5a8e-4c1e-9d7e-3f0d9a7c1b2a"
    redis_client.rpush(layout.commit_list_key(app_name, aggregate), commit)
    redis_client.hset(layout.event_hash_lookup_order(app_name, commit)[0], commit, payload)

    result = run_cli(
        "inspect", "aggregate", aggregate, "--app", app_name, "--redis-url", redis_test_url,
        env={"COLUMNS": "400"},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "Note[/x][bold]" in result.stdout  # the aggregate type, in the header table
    shown = run_cli(
        "events", "query", "--app", app_name, "--redis-url", redis_test_url,
        "--aggregate", aggregate, "--format", "table", env={"COLUMNS": "400"},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert '"$type":"Demo.Events.Noted`1[[System.String, mscorlib]], Demo"' in shown.stdout
    assert "Note[/x][bold]" in shown.stdout
    peek = run_cli(
        "inspect", "event", commit, "--app", app_name, "--redis-url", redis_test_url,
    )  # fmt: skip
    assert peek.returncode == 0, peek.stderr
    assert "esctl:lock:{A:B}:S other:1234:run" in peek.stdout
