"""Helpers for end-to-end tests: run the real ``esctl`` in a subprocess, as an operator would."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from esctl.queues.backup import BackupSurvey

# An empty folder as the working directory and XDG_CONFIG_HOME of every run, so neither a
# ./esctl.toml nor the developer's ~/.config/esctl/config.toml leaks into a test.
_EMPTY_DIR = Path(tempfile.mkdtemp(prefix="esctl-cli-test-"))
atexit.register(shutil.rmtree, _EMPTY_DIR, ignore_errors=True)

CLI_TIMEOUT = 120.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` (the state itself: a query, a screen, a process) until it holds; fail
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def cli_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment ``run_cli`` gives esctl: this process's environment without any
    ``ESCTL_*`` variable (nor ``JOB_COMPLETION_INDEX``), no colour, a wide terminal, then ``env`` on top."""
    clean = {
        k: v
        for k, v in os.environ.items()
        # JOB_COMPLETION_INDEX: --shard auto reads it; a CI pod of an Indexed Job has it set.
        if not k.startswith("ESCTL_") and k != "JOB_COMPLETION_INDEX"
    }
    clean.update(
        XDG_CONFIG_HOME=str(_EMPTY_DIR),
        NO_COLOR="1",
        TERM="dumb",
        COLUMNS="200",
        PYTHONIOENCODING="utf-8",
    )
    clean.pop("FORCE_COLOR", None)
    clean.update(env or {})
    return clean


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    input: str | bytes | None = None,
    cwd: str | Path | None = None,
    timeout: float = CLI_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m esctl ARGS...`` and return its exit code and output (decoded as UTF-8,
    undecodable bytes replaced). The environment holds no ``ESCTL_*`` variable but those in
    ``env``; the working directory is an empty folder unless ``cwd`` is given. ``input`` is
    sent on stdin (bytes as they are, text as UTF-8); without it stdin is empty."""
    if isinstance(input, str):
        input = input.encode("utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "esctl", *args],
        input=input if input is not None else b"",
        capture_output=True,
        env=cli_env(env),
        cwd=str(cwd) if cwd is not None else str(_EMPTY_DIR),
        timeout=timeout,
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


def run_cli_together(
    commands: Sequence[Sequence[str]],
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = CLI_TIMEOUT,
) -> list[subprocess.CompletedProcess[str]]:
    """Run each of ``commands`` (esctl's arguments) as ``run_cli`` runs one, all at once: an
    esctl process each, forked by tests/forked_cli.py once it has imported esctl (so the
    imports, most of a short command's time, are paid once). Same environment, working
    directory and empty stdin as ``run_cli``; their results, in command order."""
    folder = Path(tempfile.mkdtemp(prefix="esctl-cli-together-"))
    try:
        codes = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("forked_cli.py")), str(folder)],
            input=json.dumps([list(c) for c in commands]),
            capture_output=True,
            text=True,
            env=cli_env(env),
            cwd=str(cwd) if cwd is not None else str(_EMPTY_DIR),
            timeout=timeout,
            check=True,
        )
        return [
            subprocess.CompletedProcess(
                ["esctl", *command],
                code,
                (folder / f"{number}.out").read_text("utf-8", "replace"),
                (folder / f"{number}.err").read_text("utf-8", "replace"),
            )
            for number, (command, code) in enumerate(
                zip(commands, json.loads(codes.stdout), strict=True)
            )
        ]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``python -m esctl ARGS...`` in the background, as ``run_cli`` runs it (same
    environment and working directory, empty stdin), with stdout and stderr piped, in a
    process group of its own as a shell starts a command: ``os.killpg(proc.pid,
    signal.SIGINT)`` is a Ctrl-C in its terminal. The caller waits for it (``communicate``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "esctl", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(env),
        cwd=str(cwd) if cwd is not None else str(_EMPTY_DIR),
        start_new_session=True,
    )


@contextmanager
def started_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """:func:`start_cli`, killed and waited for on leaving when it is still running (a test
    that failed before its ``communicate``)."""
    proc = start_cli(*args, env=env, cwd=cwd)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def child_processes(pid: int) -> list[int]:
    """The live (not zombie) child processes of ``pid`` (a command's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] != "Z" and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    """Wait up to ``timeout`` seconds for the processes ``pids`` to end; those still alive."""
    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


QUEUE_BATCH_LAUNCHER = (
    "import runpy, sys\n"
    "from esctl.queues import scripts\n"
    "scripts.MOVE_BATCH = int(sys.argv.pop(1))\n"
    "sys.argv[0] = 'esctl'\n"
    "runpy.run_module('esctl', run_name='__main__', alter_sys=True)\n"
)
"""``python -c QUEUE_BATCH_LAUNCHER N ARGS...``: ``python -m esctl ARGS`` with the queue
commands' move batch set to N first (a module constant the CLI does not expose; tests in-process
patch it the same way)."""


def reap(started: list[subprocess.Popen[bytes]]) -> None:
    """Kill (when still running) and wait for each process of ``started``, emptying it: for a
    module's autouse fixture, so that no process a test started outlives it."""
    while started:
        proc = started.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def queued_message(
    number: int,
    tag: str = "m",
    *,
    event_type: str = "ItemScoreCreated",
    pad: int = 0,
    noise: bool = False,
) -> bytes:
    """A queued message as the library writes one (an ``event_type`` event of aggregate
    ``{tag}{number}``); with ``pad``, a comment of that many bytes, of random hex with
    ``noise`` (so that a file of them compresses little, as varied messages do)."""
    import random

    import orjson

    event: dict[str, object] = {
        "$type": f"Learning.ScoringService.Domain.Events.{event_type}, "
        "Learning.ScoringService.Domain",
        "Id": f"{tag}{number}",
        "TimeStamp": "2025-03-01T11:00:00.0000001+00:00",
        "Version": 1,
        "AggregateType": "ItemScore",
    }
    if pad or noise:
        event["Comment"] = random.Random(number).randbytes(pad // 2).hex() if noise else "x" * pad
    return orjson.dumps(event)


def started_together(
    shards: Sequence[object], attempt: Callable[[Any, Callable[[], None]], None], *, wait: float
) -> dict[str, str]:
    """Runs of ``shards`` taking their locks at the same moment, one thread each: ``attempt(
    shard, hold)`` runs one, calling ``hold()`` once it holds its lock (marked ``ran``; it
    returns when every run has answered). A run that meets LockHeld is ``refused``; one that
    ends without either, ``ended``. ``wait``: seconds a run is held and waited for."""
    import threading
    import time

    from esctl.errors import LockHeld

    barrier = threading.Barrier(len(shards))
    release = threading.Event()
    outcome: dict[str, str] = {}

    def run(shard: object) -> None:
        def hold() -> None:
            outcome[str(shard)] = "ran"
            release.wait(wait)

        barrier.wait()
        try:
            attempt(shard, hold)
        except LockHeld:
            outcome[str(shard)] = "refused"
        finally:
            outcome.setdefault(str(shard), "ended")

    threads = [threading.Thread(target=run, args=(s,)) for s in shards]
    for t in threads:
        t.start()
    deadline = time.monotonic() + wait
    while len(outcome) < len(shards) and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for t in threads:
        t.join(wait)
    return outcome


def read_as_restore(path: Path) -> tuple[BackupSurvey, list[dict[str, Any]]]:
    """A queue backup file read as `queue restore` reads it: its first reading
    (``survey_backup``: the header, ``backup_id``, ``complete``, ``truncated``, the outcomes
    the file marks, settled from Redis by ``survey.settle(client)``), then its records, in the
    file's order (``records_again``). UsageError as a restore says it."""
    from esctl.backupfile import open_backup
    from esctl.queues.backup import survey_backup

    with open_backup(path) as handle:
        survey = survey_backup(path, handle)
        return survey, [record for *_, record in survey.records_again()]


def outcomes(survey: BackupSurvey, records: list[dict[str, Any]]) -> dict[int, str]:
    """Record number -> ``removed``, ``gone`` or ``kept``, of the ``records`` whose outcome
    ``survey`` knows (:func:`read_as_restore`): those the file marks; after
    ``survey.settle(client)``, every one (unless Redis holds no record of the drain)."""
    from esctl.queues.backup import GONE, KEPT, REMOVED

    names = {REMOVED: "removed", GONE: "gone", KEPT: "kept"}
    codes = ((int(r["n"]), survey.outcomes.get(int(r["n"]))) for r in records)
    return {number: names[code] for number, code in codes if code in names}


def assert_clean(out: str, err: str) -> None:
    """No traceback, and nothing taken for a bug in esctl."""
    for text in (out, err):
        assert "Traceback" not in text
        assert "bug in esctl" not in text
        assert "error: unexpected" not in text and '"internal"' not in text
