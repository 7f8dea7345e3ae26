"""The ``--json`` contract (CLI.md, "Output"): with ``--json`` (or ``--format json|jsonl``)
stdout carries exactly one JSON document, or JSON lines whose last line is the error, and the
document's exit code is the process's: for a usage error Click finds while parsing (exit 2), a
server nobody listens on (exit 1), a server killed mid-command (exit 1) and Ctrl-C (exit 130).

Every command that prints JSON is found by walking the command tree, so a new one is covered
(and fails ``test_every_json_command_has_a_case`` until CASES says how to run it).

Mid-command means pinned mid-command, not "soon after the start": a command streaming to
stdout is held by its full pipe (the test reads the first results, then stops reading); one
reading Redis is held by ``CLIENT PAUSE ALL`` once it has sent its first reads; one writing to
Redis by ``CLIENT PAUSE WRITE`` until it waits on its first write. The server is then killed
(SIGKILL), or the command's process group gets SIGINT, as a Ctrl-C in a terminal sends it.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import typer.main
from bulk_store import write_bulk_store
from helpers import run_cli_together, start_cli

from esctl import layout, pg, servers
from esctl.cli.app import app, every_command
from esctl.cli.errors import asks_for_json
from esctl.cli.jsonout import JsonStream

APP = "Contract.Service"
ENV = "contract"
EVENT_TYPE = "ItemScoreUpdated"
AGGREGATES = 5000  # x 6 events: ~30,000 events, ~27 MB of JSON lines, ~15 MB of RDB
QUEUE_MESSAGES = 20_000  # per dead-letter list: 20 move batches
PG_AGGREGATES = 3000  # x 10 events in the throwaway PostgreSQL

# --- the commands --------------------------------------------------------------------------


def json_commands() -> dict[str, Any]:
    """Every command (by its path, "migrate verify") that has --json or --format."""
    found: dict[str, Any] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is not None:
            for name, subcommand in subcommands.items():
                walk(subcommand, (*path, name))
        elif any("--json" in p.opts or "--format" in p.opts for p in command.params):
            found[" ".join(path)] = command

    walk(every_command(), ())
    return found


def json_options(command: Any) -> list[tuple[str, ...]]:
    """The ways to ask ``command`` for JSON."""
    opts = {o for p in command.params for o in p.opts}
    ways: list[tuple[str, ...]] = [("--json",)] if "--json" in opts else []
    if "--format" in opts:
        ways += [("--format", "json"), ("--format=jsonl",)]
    return ways


@dataclass(frozen=True)
class Case:
    """How to run one command that prints JSON: minimal valid arguments ({redis}, {pg},
    {app}, {env}, {file} are filled in per run) and its exit code when the servers it needs
    cannot be reached (None: it needs none)."""

    args: tuple[str, ...]
    unreachable: int | None = 1


REDIS = ("--redis-url", "{redis}")
BOTH = ("--redis-url", "{redis}", "--pg-dsn", "{pg}")
IN_ENV = ("--env", "{env}", *REDIS)
QUEUE = ("Some.Worker", EVENT_TYPE, *IN_ENV)

CASES: dict[str, Case] = {
    "config show": Case((), unreachable=None),
    "demo": Case((), unreachable=None),  # starts servers of its own
    # An unreachable server is one of doctor's findings: a report, exit 3.
    "doctor": Case(("--app", "{app}", "--env", "{env}", *BOTH), unreachable=3),
    "compress": Case(("--app", "{app}", "--yes", *REDIS)),
    "events query": Case(("--app", "{app}", *REDIS)),
    "inspect aggregate": Case(("Agg-1", "--app", "{app}", *REDIS)),
    "inspect event": Case(("5f0c2a9e-0000-4000-8000-000000000001", "--app", "{app}", *REDIS)),
    "inspect integrity": Case(("--app", "{app}", *REDIS)),
    "inspect stats": Case(("--app", "{app}", *REDIS)),
    "migrate redis-to-pg": Case(("--app", "{app}", "--init-schema", *BOTH)),
    "migrate verify": Case(("--app", "{app}", *BOTH)),
    "migrate plan": Case(("--app", "{app}", *BOTH)),
    "migrate prune": Case(("--app", "{app}", "--yes", *BOTH)),
    "migrate restore-pruned": Case(("{file}", "--app", "{app}", "--yes", *BOTH)),
    "migrate status": Case(("--app", "{app}", "--lag", *BOTH)),
    "queue list": Case(IN_ENV),
    "queue peek": Case(QUEUE),
    "queue requeue": Case((*QUEUE, "--yes")),
    "queue drain": Case((*QUEUE, "--to-file", "{file}", "--yes")),
    "queue restore": Case(("{file}", "--yes", *REDIS)),
    "replay": Case(
        ("--from", "redis", "--to", "queue", "--all", "--yes", "--app", "{app}", *IN_ENV)
    ),
}


def fill(args: tuple[str, ...], **values: str) -> list[str]:
    return [a.format(**values) for a in args]


@pytest.fixture(scope="module")
def nowhere(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Placeholders pointing at a port nobody listens on."""
    port = servers.free_port()
    return {
        "redis": f"redis://127.0.0.1:{port}/0",
        "pg": f"postgresql://root@127.0.0.1:{port}/postgres",
        "app": APP,
        "env": ENV,
        "file": str(tmp_path_factory.mktemp("nowhere") / "backup.jsonl.zst"),
        "port": str(port),
    }


# --- what stdout must hold -----------------------------------------------------------------


def one_document(stdout: str) -> Any:
    """The one JSON document stdout holds (fails when there is none, or more)."""
    assert stdout.strip(), "stdout is empty: no JSON document"
    try:
        return json.loads(stdout)
    except json.JSONDecodeError as exc:
        around = stdout[max(0, exc.pos - 300) : exc.pos + 300]
        pytest.fail(
            f"stdout is not one JSON document ({exc}); it starts:\n{stdout[:300]}\n"
            f"around the error:\n{around}"
        )


def error_document(stdout: str, code: int, kind: str | None = None) -> dict[str, Any]:
    """Stdout is exactly the error document of ``code`` (and ``kind``)."""
    document = one_document(stdout)
    assert isinstance(document, dict) and set(document) == {"error", "exit_code"}, document
    assert document["exit_code"] == code, document
    error = document["error"]
    assert set(error) - {"done"} == {"kind", "message", "hint"}, document
    if "done" in error:  # what an interrupted run had done for good: counts
        assert error["kind"] == "interrupted" and error["done"], document
        assert all(type(n) is int for n in error["done"].values()), document
    if kind is not None:
        assert document["error"]["kind"] == kind, document
    return document


def stream_error(stdout: str, output: str, code: int) -> tuple[list[Any], dict[str, Any]]:
    """Stdout is results then the error document of ``code``: JSON lines (``output``
    "lines"), or one JSON array whose last element is the error ("array"). Returns both."""
    if output == "array":
        document = one_document(stdout)
        assert isinstance(document, list) and document, stdout[:2000]
        items = document
    else:
        assert stdout.endswith("\n"), stdout[-2000:]
        items = []
        for number, line in enumerate(stdout.splitlines(), start=1):
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                pytest.fail(f"stdout line {number} is not JSON ({exc}): {line[:500]!r}")
    *results, last = items
    assert set(last) == {"error", "exit_code"} and last["exit_code"] == code, last
    assert all("error" not in r and "aggregate_id" in r for r in results)
    return results, last


# --- the pieces, in this process -----------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "asked"),
    [
        ("migrate redis-to-pg --json", True),
        ("--json migrate redis-to-pg", True),  # an option before the command
        ("events query --format json", True),
        ("events query --format=jsonl --bogus", True),
        ("events query --format table", False),
        ("events query --where --json", False),  # --json is the value of --where
        ("events query --limit 3 -- --json", False),  # after --: an argument
        ("events decode --json", False),  # decode has no --json
        ("migrate --json", False),  # no command named: the group's usage
        ("migrate redis-to-pgx --json", True),  # a mistyped command
        ("queue peek SUB TYPE --json", True),
        ("inspect stats", False),
    ],
)
def test_which_words_ask_for_json(words: str, asked: bool) -> None:
    root = typer.main.get_command(app)
    assert asks_for_json(root, words.split()) is asked


@pytest.mark.parametrize("array", [True, False])
def test_json_stream_ends_as_json_whatever_happens(tmp_path: Path, array: bool) -> None:
    error = {"error": {"kind": "connection", "message": "lost", "hint": None}, "exit_code": 1}
    shapes = {}
    for case in ("empty", "complete", "fails first", "fails after two"):
        path = tmp_path / f"{case}.out"
        with path.open("wb") as out:
            stream = JsonStream(array=array, fd=out.fileno())
            for n in range(2 if case in ("complete", "fails after two") else 0):
                stream.write_result(b'{"aggregate_id":"a","version":%d}' % n)
            if case.startswith("fails"):
                stream.fail(error)
                stream.fail(error)  # the second error of a failure is not written
            else:
                stream.close()
        shapes[case] = path.read_text(encoding="utf-8")
    if array:
        assert json.loads(shapes["empty"]) == []
        assert [r["version"] for r in json.loads(shapes["complete"])] == [0, 1]
        assert json.loads(shapes["fails first"]) == error  # alone, as any --json error
        assert json.loads(shapes["fails after two"])[-1] == error
    else:
        assert shapes["empty"] == ""
        assert len(shapes["complete"].splitlines()) == 2
        assert [json.loads(line) for line in shapes["fails first"].splitlines()] == [error]
        *results, last = (json.loads(line) for line in shapes["fails after two"].splitlines())
        assert len(results) == 2 and last == error


# --- (a) usage errors found while parsing ---------------------------------------------------


def run_all(argvs: dict[Any, list[str]]) -> dict[Any, subprocess.CompletedProcess[str]]:
    """An esctl process per entry, all forked once esctl is imported (``run_cli_together``:
    a run that fails at parsing or at connecting is mostly Python starting up)."""
    keys = list(argvs)
    return dict(zip(keys, run_cli_together([argvs[k] for k in keys]), strict=True))


def test_every_json_command_has_a_case() -> None:
    found = set(json_commands())
    assert not found - set(CASES), f"add to CASES how to run: {sorted(found - set(CASES))}"
    assert not set(CASES) - found, f"CASES names commands that print no JSON: {set(CASES) - found}"


def unknown_option_argvs(nowhere: dict[str, str]) -> dict[Any, list[str]]:
    """Every command that prints JSON, asked for it each way it can be, with an unknown option."""
    return {
        ("unknown option", name, ask): [
            *name.split(),
            *fill(case.args, **nowhere),
            "--no-such-option",
            *ask,
        ]
        for name, command in json_commands().items()
        if (case := CASES.get(name)) is not None
        for ask in json_options(command)
    }


@pytest.mark.parametrize("name", sorted(json_commands()))
def test_unknown_option_is_one_json_document(
    name: str, quick_runs: dict[Any, subprocess.CompletedProcess[str]]
) -> None:
    assert name in CASES, f"add {name!r} to CASES"
    for ask in json_options(json_commands()[name]):
        result = quick_runs["unknown option", name, ask]
        assert result.returncode == 2, (ask, result.stderr)
        document = error_document(result.stdout, 2, "usage")
        assert "--no-such-option" in document["error"]["message"]
        assert f"esctl {name} --help" in document["error"]["hint"]
        assert "error: No such option: --no-such-option" in result.stderr
        assert "Traceback" not in result.stderr


NO_REDIS = ("--redis-url", "redis://127.0.0.1:1/0")
USAGE_ERRORS = {
    "bad value": (
        ["migrate", "redis-to-pg", "--batch-size", "0", "--json"],
        "'--batch-size'",
        "esctl migrate redis-to-pg",
    ),
    "required option": (
        ["replay", "--to", "stdout", "--all", "--json"],
        "Missing option '--from'",
        "esctl replay",
    ),
    "callback": (
        ["queue", "peek", "S", "T", "--list", "nope", "--json"],
        "use one of published",
        "esctl queue peek",
    ),
    "no value": (
        ["events", "query", *NO_REDIS, "--format=json", "--limit"],
        "requires an argument",
        "esctl events query",  # Click gives this error no context: the words name the command
    ),
    "json and table": (
        ["events", "query", "--app", APP, "--json", "--format", "table"],
        "--format table",
        None,  # esctl's own usage error, with its own hint
    ),
    "command name": (
        ["migrate", "redis-to-pgx", "--json"],
        "No such command 'redis-to-pgx'",
        "esctl migrate",
    ),
}
AS_BEFORE = {
    "no --json": ["migrate", "redis-to-pg", "--batch-size", "0"],
    "no such --json": ["events", "decode", "--json"],  # decode prints JSON lines, has no --json
    "help": ["migrate", "redis-to-pg", "--json", "--help"],
}


@pytest.mark.parametrize("name", list(USAGE_ERRORS))
def test_usage_errors_are_one_json_document(
    name: str, quick_runs: dict[Any, subprocess.CompletedProcess[str]]
) -> None:
    result, (_, message, command) = quick_runs["usage", name], USAGE_ERRORS[name]
    assert result.returncode == 2, result.stderr
    document = error_document(result.stdout, 2, "usage")
    assert message in document["error"]["message"]
    if command is not None:
        hint = f"see `{command} --help` for its options and arguments"
        assert document["error"]["hint"] == hint
    assert message in result.stderr


def test_without_json_usage_errors_and_help_are_as_before(
    quick_runs: dict[Any, subprocess.CompletedProcess[str]],
) -> None:
    plain = quick_runs["as before", "no --json"]
    assert plain.returncode == 2 and plain.stdout == ""
    assert "Usage:" in plain.stderr and "Invalid value for '--batch-size'" in plain.stderr
    decode = quick_runs["as before", "no such --json"]
    assert decode.returncode == 2 and decode.stdout == ""
    assert "No such option: --json" in decode.stderr
    shown = quick_runs["as before", "help"]
    assert shown.returncode == 0 and "Usage:" in shown.stdout and "--batch-size" in shown.stdout


# --- (b) a server nobody listens on --------------------------------------------------------

STREAMS_UNREACHABLE = {
    # --source pg printed "[{ \"error\": ...": the array was opened before the query ran
    "query pg json": ["events", "query", "--source", "pg", "--format", "json"],
    "query pg jsonl": ["events", "query", "--source", "pg"],  # jsonl: stdout is no terminal
    "replay pg stdout": ["replay", "--from", "pg", "--to", "stdout", "--all"],
}


def unreachable_argvs(nowhere: dict[str, str]) -> dict[Any, list[str]]:
    servers_nowhere = ["--app", APP, "--redis-url", nowhere["redis"], "--pg-dsn", nowhere["pg"]]
    return {
        ("unreachable", name): [*name.split(), *fill(case.args, **nowhere), "--json"]
        for name, case in CASES.items()
        if case.unreachable is not None
    } | {
        ("unreachable", name): [*argv, *servers_nowhere]
        for name, argv in STREAMS_UNREACHABLE.items()
    }


@pytest.fixture(scope="module")
def quick_runs(nowhere: dict[str, str]) -> dict[Any, subprocess.CompletedProcess[str]]:
    """Every run of (a) and (b), at once."""
    return run_all(
        unknown_option_argvs(nowhere)
        | {("usage", k): argv for k, (argv, _, _) in USAGE_ERRORS.items()}
        | {("as before", k): argv for k, argv in AS_BEFORE.items()}
        | unreachable_argvs(nowhere)
    )


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.unreachable is not None))
def test_unreachable_server_is_one_json_document(
    name: str,
    nowhere: dict[str, str],
    quick_runs: dict[Any, subprocess.CompletedProcess[str]],
) -> None:
    case, result = CASES[name], quick_runs["unreachable", name]
    assert result.returncode == case.unreachable, result.stderr
    if case.unreachable == 1:
        document = error_document(result.stdout, 1, "connection")
        assert nowhere["port"] in document["error"]["message"]
    else:
        assert one_document(result.stdout)["exit_code"] == case.unreachable


@pytest.mark.parametrize("name", list(STREAMS_UNREACHABLE))
def test_unreachable_server_before_a_stream(
    name: str, quick_runs: dict[Any, subprocess.CompletedProcess[str]]
) -> None:
    result = quick_runs["unreachable", name]
    assert result.returncode == 1, result.stderr
    # Before any result: the error document alone, which is one line either way.
    assert result.stdout.count("\n") == 1
    error_document(result.stdout, 1, "connection")


# --- the store and servers for (c) and (d) -------------------------------------------------


@dataclass
class Store:
    server: servers.LocalRedis
    client: redis.Redis
    rdb: Path
    events: int


def queue_messages(count: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "$type": f"Contract.Events.{EVENT_TYPE}, Contract",
                "Id": f"agg-{n}",
                "TimeStamp": "2024-05-01T12:00:00.0000000+00:00",
                "Version": 1,
                "AggregateType": "ItemScore",
                "Comment": "x" * 200,
            }
        ).encode()
        for n in range(count)
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A throwaway Redis holding ~30,000 events of APP and two dead-letter lists of
    QUEUE_MESSAGES (Drain.Worker, Requeue.Worker); its RDB file is kept for servers that
    tests kill. Interrupted commands never finish, so the store stays as written."""
    workdir = tmp_path_factory.mktemp("store")
    server = servers.start_redis(workdir=workdir)
    client = redis.Redis.from_url(server.url)
    try:
        events = write_bulk_store(
            client, app=APP, aggregates=AGGREGATES, events_per_aggregate=6, compressed_share=0.1
        )
        messages = queue_messages(QUEUE_MESSAGES)
        for subscriber in ("Drain.Worker", "Requeue.Worker"):
            key = layout.queue_key(subscriber, ENV, EVENT_TYPE, "dead")
            for start in range(0, len(messages), 1000):
                client.rpush(key, *messages[start : start + 1000])
        client.save()
        rdb = tmp_path_factory.mktemp("rdb") / "dump.rdb"
        shutil.copy(workdir / "dump.rdb", rdb)
        yield Store(server, client, rdb, events)
    finally:
        client.close()
        server.stop()


@pytest.fixture
def doomed_redis(store: Store, tmp_path: Path) -> Iterator[servers.LocalRedis]:
    """A throwaway Redis of the test's own, started from the store's RDB file, to be killed."""
    workdir = tmp_path / "doomed-redis"
    workdir.mkdir()
    shutil.copy(store.rdb, workdir / "dump.rdb")
    server = servers.start_redis(workdir=workdir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def doomed_pg() -> Iterator[servers.LocalPostgres]:
    """A throwaway PostgreSQL holding PG_AGGREGATES x 10 migrated events of APP, to be
    killed (in a temporary folder of its own: PostgreSQL's user must reach it)."""
    server = servers.start_postgres()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            pg.ensure_event_store_schema(conn, "public", create=True)
            conn.execute(
                "INSERT INTO aggregate (aggregate_id, aggregate_type, application_name)"
                " SELECT 'agg-' || g, 'ItemScore', %s FROM generate_series(1, %s) g",
                (APP, PG_AGGREGATES),
            )
            conn.execute(
                "INSERT INTO event (aggregate_key, time_stamp, version, event_type, event_data)"
                " SELECT a.aggregate_key, timestamptz '2024-01-01' + v * interval '1 hour', v,"
                "        %s, jsonb_build_object('$type', 'Contract.Events.' || %s,"
                "          'Id', a.aggregate_id, 'Version', v, 'AggregateType', 'ItemScore',"
                "          'TimeStamp', '2024-01-01T00:00:00.0000000+00:00',"
                "          'Comment', repeat('x', 500))"
                "   FROM aggregate a, generate_series(1, 10) v",
                (EVENT_TYPE, EVENT_TYPE),
            )
        yield server
    finally:
        server.stop()


@pytest.fixture
def schema_dsn(pg_dsn: str) -> str:
    """The test's own database with the (empty) event tables, as verify expects them."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        pg.ensure_event_store_schema(conn, "public", create=True)
    return pg_dsn


# --- running a command and holding it mid-way ---------------------------------------------

READS = ("lrange", "hget", "hlen", "hkeys", "hscan", "scan")
"""Commands whose first call shows a command has begun reading the store."""


def command_calls(client: redis.Redis) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()})


@dataclass
class Run:
    """One esctl run in the background (a process group of its own)."""

    args: list[str]
    proc: subprocess.Popen[bytes] = field(init=False)
    head: bytes = b""

    def __post_init__(self) -> None:
        self.proc = start_cli(*self.args)

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                code, out, err = self.finish()
                pytest.fail(f"esctl ended (exit {code}) before {what}:\n{out[-1000:]}\n{err}")
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.002)

    def first_results(self) -> None:
        """Wait for the first results on stdout, then stop reading: once the pipe is full the
        command waits in a write, mid-stream."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()

        def ready() -> bool:
            if select.select([fd], [], [], 0.01)[0]:
                self.head += os.read(fd, 65536)
            return bool(self.head)

        self.wait_until(ready, "its first results")

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the command's process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, (self.head + out).decode(), err.decode()


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    """Runs a test starts; none outlives it."""
    started: list[Run] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.communicate()


@dataclass(frozen=True)
class Midway:
    """One command held mid-way: its words ({redis}, {pg} and {to_file}, a new path, are
    filled in per run), how it is held ("reads", "writes", "stdout", see the module's
    docstring) and what stdout holds ("document", "lines" or "array")."""

    args: tuple[str, ...]
    hold: str
    output: str = "document"


STORE = f"--app {APP} --redis-url {{redis}}"
QUEUES = f"--env {ENV} --redis-url {{redis}}"
MIDWAY: dict[str, Midway] = {
    name: Midway(tuple(command.split()), *how)
    for name, command, *how in [
        ("migrate", f"migrate redis-to-pg --init-schema {STORE} --pg-dsn {{pg}} --json", "reads"),
        ("verify", f"migrate verify {STORE} --pg-dsn {{pg}} --json", "reads"),
        ("plan", f"migrate plan {STORE} --pg-dsn {{pg}} --json", "reads"),
        ("integrity", f"inspect integrity {STORE} --json", "reads"),
        ("stats", f"inspect stats {STORE} --json", "reads"),
        ("query-json", f"events query {STORE} --json", "stdout", "array"),
        ("query-jsonl", f"events query {STORE} --format jsonl", "stdout", "lines"),
        (
            "replay-stdout",
            f"replay --from redis --to stdout --all {STORE} --json",
            "stdout",
            "lines",
        ),
        (
            "replay-queue",
            f"replay --from redis --to queue --type {EVENT_TYPE} --subscriber Replay.Worker --force --yes {STORE} --env {ENV} --json",
            "writes",
        ),
        (
            "drain",
            f"queue drain Drain.Worker {EVENT_TYPE} --list dead --to-file {{to_file}} --yes {QUEUES} --json",
            "writes",
        ),
        (
            "requeue",
            f"queue requeue Requeue.Worker {EVENT_TYPE} --from dead --yes {QUEUES} --json",
            "writes",
        ),
        ("compress", f"compress --yes {STORE} --json", "writes"),
    ]
}
KILLED = (
    "migrate",
    "verify",
    "integrity",
    "query-json",
    "query-jsonl",
    "replay-stdout",
    "replay-queue",
    "drain",
    "requeue",
)
INTERRUPTED = tuple(MIDWAY)


def start_midway(
    midway: Midway, client: redis.Redis, runs: list[Run], pause_ms: int, **values: str
) -> Run:
    """Start ``midway`` against ``client``'s server and return once it is held mid-way."""
    if midway.hold == "writes":
        client.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
    before = command_calls(client)
    run = Run(fill(midway.args, **values))
    runs.append(run)

    def reading() -> bool:
        return any(command_calls(client)[c] > before[c] for c in READS)

    def writing() -> bool:
        return int(client.info("clients")["blocked_clients"]) > 0

    if midway.hold == "stdout":
        run.first_results()
    elif midway.hold == "reads":
        run.wait_until(reading, "its first reads")
        client.execute_command("CLIENT", "PAUSE", pause_ms, "ALL")
    else:
        run.wait_until(writing, "its first write")
    return run


def check_output(stdout: str, midway: Midway, code: int, kind: str, events: int) -> None:
    """Stdout is the error document, or results (some, not all ``events``) then the error."""
    if midway.output == "document":
        error_document(stdout, code, kind)
    else:
        results, error = stream_error(stdout, midway.output, code)
        assert 0 < len(results) < events, "the stream should have stopped mid-way"
        assert error["error"]["kind"] == kind, error


# --- (c) a server killed mid-command ------------------------------------------------------


@pytest.mark.parametrize("name", KILLED)
def test_redis_killed_midway_is_one_json_document(
    name: str,
    store: Store,
    doomed_redis: servers.LocalRedis,
    schema_dsn: str,
    tmp_path: Path,
    runs: list[Run],
) -> None:
    midway = MIDWAY[name]
    client = redis.Redis.from_url(doomed_redis.url, single_connection_client=True)
    run = start_midway(
        midway,
        client,
        runs,
        pause_ms=30_000,
        redis=doomed_redis.url,
        pg=schema_dsn,
        to_file=str(tmp_path / "drained.jsonl.zst"),
    )
    os.kill(doomed_redis.pid, signal.SIGKILL)
    client.close()
    code, out, err = run.finish()
    assert code == 1, err
    check_output(out, midway, 1, "connection", store.events)
    assert f"127.0.0.1:{doomed_redis.port}" in err and "Traceback" not in err


def test_postgres_killed_midway_ends_the_array(
    doomed_pg: servers.LocalPostgres, runs: list[Run]
) -> None:
    run = Run(
        ["events", "query", "--source", "pg", "--json", "--app", APP, "--pg-dsn", doomed_pg.dsn]
    )
    runs.append(run)
    run.first_results()  # held by its full pipe, with the rest of the rows still to fetch
    os.killpg(doomed_pg.pid, signal.SIGKILL)  # the postmaster and its backends
    code, out, err = run.finish()
    assert code == 1, err
    results, error = stream_error(out, "array", 1)
    assert 0 < len(results) < PG_AGGREGATES * 10
    assert error["error"]["kind"] == "connection", error
    assert f"127.0.0.1:{doomed_pg.port}" in err and "Traceback" not in err


# --- (d) Ctrl-C mid-command ----------------------------------------------------------------


@pytest.fixture
def unpaused(store: Store) -> Iterator[redis.Redis]:
    """The store's client; the store is unpaused after the test whatever happened."""
    yield store.client
    store.client.execute_command("CLIENT", "UNPAUSE")


@pytest.mark.parametrize("name", INTERRUPTED)
def test_ctrl_c_midway_is_one_json_document(
    name: str,
    store: Store,
    unpaused: redis.Redis,
    schema_dsn: str,
    tmp_path: Path,
    runs: list[Run],
) -> None:
    midway = MIDWAY[name]
    run = start_midway(
        midway,
        unpaused,
        runs,
        pause_ms=400,  # reads pause the whole server: short, the next test waits it out
        redis=store.server.url,
        pg=schema_dsn,
        to_file=str(tmp_path / "drained.jsonl.zst"),
    )
    run.interrupt()
    if midway.hold == "writes":  # what it does on its way out may write (a lock released)
        unpaused.execute_command("CLIENT", "UNPAUSE")
    code, out, err = run.finish()
    assert code == 130, err
    check_output(out, midway, 130, "interrupted", store.events)
    assert "interrupted" in err and "Traceback" not in err
