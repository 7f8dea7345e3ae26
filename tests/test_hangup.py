"""SIGHUP, the terminal hanging up (an ssh session that drops, a terminal window closed, tmux
killed), stops a command as SIGTERM does: end to end on a real pty whose master is closed
(the kernel sends the SIGHUP, and every read and write on the terminal fails from then on),
and in-process for the holds that keep a signal off a counted round trip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import queued_message, run_cli
from terminal import ESCTL, TerminalSession

from esctl import queues
from esctl.cli import errors as cli_errors
from esctl.interrupts import HeldInterrupts, interrupts_held

SUB = "Learning.ReportingService.Worker-Hangup"
TYPE = "ItemScoreCreated"


def main_thread_asleep(pid: int) -> bool:
    """Whether the main thread of ``pid`` sleeps (blocked in a read: waiting for an answer)."""
    try:
        stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "S"


def test_a_hangup_at_a_drains_question_gives_its_lock_back_at_once(
    redis_client: redis.Redis, redis_test_url: str, env_name: str, tmp_path: Path
) -> None:
    """A drain asking its [y/N] question in a session that dies: it held the queue's lock
    while it asked. It exits 130 at once (Python's default for SIGHUP killed it), with the
    lock given back (it stayed 30 s, and the rerun from a new session exited 75) and the
    error document in its stdout's file, though nothing can be written to the terminal."""
    ref = queues.QueueRef(SUB, env_name, TYPE)
    redis_client.rpush(ref.key("dead"), *(queued_message(n) for n in range(10)))
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_ENV": env_name}
    drain = ["queue", "drain", SUB, TYPE, "--list", "dead", "--json"]
    backup = tmp_path / "dead.jsonl.zst"
    out = tmp_path / "out.json"
    words = [*ESCTL, *drain, "--to-file", str(backup)]
    with out.open("wb") as stdout, TerminalSession(words, env=env, stdout=stdout.fileno()) as s:
        s.wait_for(lambda _: s.raw.rstrip().endswith(b"[y/N]:"), timeout=30)
        s.wait_for(lambda _: main_thread_asleep(s.process.pid))  # reading the answer
        assert redis_client.exists(ref.lock_key)
        s.hang_up()
        code = s.process.wait(timeout=10)
        assert not redis_client.exists(ref.lock_key)  # given back before it exited
    assert code == 130
    document = json.loads(out.read_text())
    assert document["exit_code"] == 130, document
    assert document["error"]["kind"] == "interrupted", document
    # the drain's own words: the question's failed read was the hangup, not an error whose
    # way out the SIGHUP's KeyboardInterrupt cut short later (in the lock's release, say)
    assert document["error"]["message"].startswith(
        "stopped by SIGHUP (the terminal hung up); nothing was drained from "
    ), document
    assert redis_client.llen(ref.key("dead")) == 10 and not backup.exists()

    rerun = run_cli(*drain, "--to-file", str(backup), "--yes", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["drained"] == 10


# --- held across a counted round trip --------------------------------------------------------


@pytest.fixture
def stop_handlers() -> Iterator[None]:
    """esctl's SIGTERM and SIGHUP handlers in this process for the test, as the command line
    sets them; the handlers there were (and what the handlers noted) back after it."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, *cli_errors.STOP_SIGNALS)}
    cli_errors.stop_on_signals()
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        cli_errors._stopped_by = None
        cli_errors._hung_up = False


@pytest.mark.usefixtures("stop_handlers")
def test_a_sighup_waits_for_a_held_round_trip_and_then_stops_the_run() -> None:
    """SIGHUP is not among the signals :func:`interrupts_held` replaces: its handler hands it
    to the SIGINT handler there is, which the hold has replaced, so it is held as Ctrl-C is;
    a second SIGHUP (the same hangup, told again) is not a second signal."""
    finished = False
    with pytest.raises(KeyboardInterrupt), interrupts_held() as hold:
        signal.raise_signal(signal.SIGHUP)
        with hold.waiting():
            signal.raise_signal(signal.SIGHUP)
        finished = True
    assert finished and not hold.broke
    assert cli_errors._stopped_by == "stopped by SIGHUP (the terminal hung up)"

    held = HeldInterrupts()
    with held.holding(), held.waiting():
        signal.raise_signal(signal.SIGHUP)  # the same hangup: noted already
    assert not held.caught and not held.broke


@pytest.mark.usefixtures("stop_handlers")
def test_a_sighup_is_noted_by_the_queue_commands_hold() -> None:
    held = HeldInterrupts()
    with held.holding(), held.waiting():
        signal.raise_signal(signal.SIGHUP)
    assert held.caught and not held.broke
    with pytest.raises(KeyboardInterrupt):
        held.check()


STOPPED_WHILE_LOADING = """
import os, signal, sys
import typer.main
from esctl.cli import errors
from esctl.cli.app import app

build = typer.main.get_command

def get_command(typer_app):  # the stop lands while esctl builds its commands
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    return build(typer_app)

typer.main.get_command = get_command
errors.run_command_line(app, sys.argv[2:])
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
@pytest.mark.parametrize("json_mode", [False, True], ids=["table", "json"])
def test_a_stop_before_the_command_began_says_nothing_was_done(
    signame: str, json_mode: bool
) -> None:
    """A stop in the half second esctl spends building its commands and parsing the words (a
    pod stopped as it starts): the interrupted message and exit 130, a JSON document with
    --json; not a Python traceback (SIGTERM, SIGHUP) nor Click's 'Aborted!' (Ctrl-C)."""
    words = ["config", "show", *(["--json"] if json_mode else [])]
    proc = subprocess.run(
        [sys.executable, "-c", STOPPED_WHILE_LOADING, signame, *words],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ESCTL_CONFIG": os.devnull},
    )
    assert proc.returncode == 130, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Aborted" not in proc.stderr, proc.stderr
    said = {"SIGTERM": "stopped by SIGTERM", "SIGINT": "interrupted"}.get(
        signame, "stopped by SIGHUP (the terminal hung up)"
    )
    message = f"{said} before the command began; nothing was done"
    assert f"error: {message}" in proc.stderr, proc.stderr
    if json_mode:
        assert proc.stdout.count("\n") == 1, proc.stdout  # one line, as a usage error's
        error = json.loads(proc.stdout)["error"]
        assert (error["kind"], error["message"]) == ("interrupted", message)
    else:
        assert proc.stdout == ""
