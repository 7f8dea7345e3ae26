"""The mistakes of a first projection, and what ``esctl replay --to projection`` says about them
(against real servers, through the CLI): a SPEC that does not load is refused before anything is
read (exit 2) in one line naming the module, file and line or attribute; a projection that
raises is stopped (exit 1) naming the event, the error's first line and the line of the
projection's code, with the traceback under --debug only; SIGTERM leaves the checkpoint at the
last committed batch and says how to resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import independent_writer as iw
import psycopg
import pytest
from helpers import cli_env, run_cli, started_cli
from test_replay_projection import (
    checkpoint_row,
    in_pg,
    replay_cli,
    replay_order_pg,
    seen_projection,
    seen_rows,
    truth,
)

__all__ = ["truth"]  # the fixture, used by name

ORDERS = '''
"""Events per type, counted in memory and written in flush (the docs' advice)."""
from collections import Counter


class OrdersPerType:
    def setup(self, ctx):
        ctx.conn.execute(
            "CREATE TABLE IF NOT EXISTS orders_per_type (event_type text PRIMARY KEY, n bigint)"
        )
        if ctx.fresh:
            ctx.conn.execute("TRUNCATE orders_per_type")
        self.counts = Counter()

    def handle(self, event):
        self.counts[event.event_type] += 1

    def flush(self, ctx):
        with ctx.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO orders_per_type VALUES (%s, %s) ON CONFLICT (event_type)"
                " DO UPDATE SET n = orders_per_type.n + excluded.n",
                sorted(self.counts.items()),
            )
        self.counts.clear()
'''


def _write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text).lstrip())


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def _run_as_installed(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """esctl as its installed script runs: ``python -P`` puts neither the current directory nor
    the script's on ``sys.path`` (``python -m esctl`` would put the current directory)."""
    return subprocess.run(
        [sys.executable, "-P", "-m", "esctl", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=cwd,
        timeout=120,
    )


# --- a SPEC that does not load -----------------------------------------------------------------

NOT_LOADING = [
    pytest.param(
        {"syn.py": "def handle(event)\n    pass\n"},
        "syn.py",
        ["the projection file syn.py failed to load: SyntaxError: expected ':' (syn.py:1)"],
        id="syntax-error",
    ),
    pytest.param(
        {"boom.py": "import os\nLIMIT = int(os.environ['NO_SUCH_VARIABLE'])\n"},
        "boom.py",
        ["the projection file boom.py failed to load: KeyError:", "(boom.py:2, in <module>)"],
        id="raises-while-importing",
    ),
    pytest.param(
        {"dep.py": "import requestz\n\ndef projection(event):\n    pass\n"},
        "dep.py",
        ["dep.py failed to load: it imports 'requestz'", "cannot find (dep.py:1, in <module>)"],
        id="missing-dependency-of-a-file",
    ),
    pytest.param(
        {"dep.py": "import requestz\n\ndef projection(event):\n    pass\n"},
        "dep",
        ["the projection module 'dep' failed to load: it imports 'requestz'"],
        id="missing-dependency-of-a-module",
    ),
    pytest.param(
        {"orders.py": ORDERS},
        "ordrs:OrdersPerType",
        ["cannot import the projection module 'ordrs'", "(did you mean 'orders'?)"],
        id="typo-in-the-module",
    ),
    pytest.param(
        {"orders.py": ORDERS},
        "orders.py:OrdersPerTyp",
        ["orders.py has no 'OrdersPerTyp' (did you mean 'OrdersPerType'?)"],
        id="typo-in-the-attribute",
    ),
    pytest.param(
        {"orders.py": ORDERS},
        "orders.py",
        ["orders.py has no 'projection' (it defines OrdersPerType)"],
        id="no-projection-attribute",
    ),
    pytest.param(
        {"orders.py": ORDERS},
        "ordrs.py:OrdersPerType",
        ["projection file ordrs.py does not exist (did you mean 'orders.py'?)"],
        id="typo-in-the-file",
    ),
    pytest.param(
        {"p.py": "class P:\n    def handle(self):\n        pass\n"},
        "p.py:P",
        ["projection p.py:P: its handle() cannot be called with one argument, the event"],
        id="handle-without-the-event",
    ),
    pytest.param(
        {"p.py": "def projection():\n    pass\n"},
        "p.py",
        ["projection p.py: projection() cannot be called with one argument, the event"],
        id="function-without-the-event",
    ),
    pytest.param(
        {"p.py": "class P:\n    flush = 3\n\n    def handle(self, event):\n        pass\n"},
        "p.py:P",
        ["projection p.py:P: its flush is an int, not a method"],
        id="flush-not-a-method",
    ),
]


@pytest.mark.parametrize(("files", "spec", "said"), NOT_LOADING)
def test_a_projection_that_does_not_load_is_refused_in_one_line(
    truth: iw.GroundTruth,
    app_name: str,
    pg_dsn: str,
    redis_test_url: str,
    tmp_path: Path,
    files: dict[str, str],
    spec: str,
    said: list[str],
) -> None:
    _write(tmp_path, files)
    args = replay_cli(app_name, pg_dsn, redis_test_url, "--from", "pg", "--projection", spec)
    args += ["--checkpoint", "first"]
    result = _run_as_installed(args, tmp_path)
    assert result.returncode == 2, result.stderr
    errors = _error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    for fragment in said:
        assert fragment in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    document = json.loads(result.stdout)
    assert document["error"]["kind"] == "usage" and document["exit_code"] == 2
    assert checkpoint_row(pg_dsn, "first") is None  # nothing was done


def test_debug_shows_the_traceback_of_the_projections_import(
    truth: iw.GroundTruth, app_name: str, pg_dsn: str, redis_test_url: str, tmp_path: Path
) -> None:
    _write(tmp_path, {"boom.py": "import os\nLIMIT = int(os.environ['NO_SUCH_VARIABLE'])\n"})
    args = replay_cli(app_name, pg_dsn, redis_test_url, "--from", "pg", "--projection", "boom.py")
    result = run_cli(*args, "--debug", cwd=tmp_path)
    assert result.returncode == 2
    assert f'File "{tmp_path / "boom.py"}", line 2, in <module>' in result.stderr
    assert "--debug shows" not in result.stderr  # it did
    assert json.loads(result.stdout)["error"]["hint"].endswith("; --debug shows its traceback")


def test_a_module_in_the_current_directory_and_a_files_neighbours_are_found(
    truth: iw.GroundTruth, app_name: str, pg_dsn: str, redis_test_url: str, tmp_path: Path
) -> None:
    """``orders:OrdersPerType`` where orders.py is, as ``python -m`` would find it; a file that
    imports the module beside it, run from elsewhere."""
    project = tmp_path / "myproj"
    project.mkdir()
    _write(
        project,
        {
            "orders.py": ORDERS,
            "by_type.py": "from orders import OrdersPerType\n\nprojection = OrdersPerType\n",
        },
    )
    expected = len(in_pg(truth))
    for cwd, spec in ((project, "orders:OrdersPerType"), (tmp_path, "myproj/by_type.py")):
        args = replay_cli(app_name, pg_dsn, redis_test_url, "--from", "pg", "--projection", spec)
        result = _run_as_installed(args, cwd)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["events"] == expected
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT sum(n) FROM orders_per_type").fetchone()
    assert row is not None and row[0] == expected


# --- a projection that raises ------------------------------------------------------------------


def _line_of(text: str, word: str) -> int:
    """The line number of ``word`` in the file ``_write`` makes of ``text``."""
    lines = textwrap.dedent(text).lstrip().splitlines()
    return next(n for n, line in enumerate(lines, 1) if word in line)


def _named(truth: iw.GroundTruth, key: tuple[str, int]) -> str:
    """An event as the error names it: ``InvoicePaid of Invoice 12 version 3``."""
    event = next(e for e in in_pg(truth) if (e.aggregate_id, e.version) == key)
    return f"{event.event_type} of {event.aggregate_type} {key[0]} version {key[1]}"


RAISES = """
import os


class Picky:
    def setup(self, ctx):
        self.ctx = ctx
        ctx.conn.execute("CREATE TABLE IF NOT EXISTS picky (aggregate_id text, version int)")
        if ctx.fresh:
            ctx.conn.execute("TRUNCATE picky")

    def handle(self, event):
        if (event.aggregate_id, str(event.version)) == tuple(os.environ["BAD"].split("/")):
            if os.environ["HOW"] == "sql":
                self.ctx.conn.execute("INSERT INTO pickie VALUES (%s)", (event.aggregate_id,))
            total = event.data["NoSuchField"]
        self.ctx.conn.execute(
            "INSERT INTO picky VALUES (%s, %s)", (event.aggregate_id, event.version)
        )

    def flush(self, ctx):
        if os.environ["HOW"] == "flush" and ctx.batch == 3:
            raise RuntimeError("cannot write the report")
"""


@pytest.mark.parametrize("how", ["python", "sql", "flush"])
def test_a_projection_that_raises_is_named_with_its_event_error_and_line(
    truth: iw.GroundTruth,
    app_name: str,
    pg_dsn: str,
    redis_test_url: str,
    tmp_path: Path,
    how: str,
) -> None:
    _write(tmp_path, {"picky.py": RAISES})
    events = replay_order_pg(pg_dsn, app_name)
    bad = events[24] if how != "flush" else ("none", 0)  # events[24]: in batch 3
    env = {"BAD": f"{bad[0]}/{bad[1]}", "HOW": how}
    args = replay_cli(
        app_name, pg_dsn, redis_test_url,
        "--from", "pg", "--batch-size", "10", "--projection", "picky.py:Picky",
        "--checkpoint", "picky", "--reset",
    )  # fmt: skip
    result = run_cli(*args, env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = _error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    message = " ".join(result.stderr[result.stderr.index("error: ") :].split())
    stopped = json.loads(result.stdout)["stopped"]
    raising = {"python": "NoSuchField", "sql": "pickie", "flush": "RuntimeError"}[how]
    line = _line_of(RAISES, raising)
    if how == "flush":
        assert stopped["at"] == f"picky.py:{line}, in flush"
        last = _named(truth, events[29])
        assert f"the projection's flush failed at the end of batch 3 (last event {last})" in (
            message
        )
        assert f"RuntimeError: cannot write the report (picky.py:{line}, in flush)" in message
        assert "--skip-errors" not in message  # it does not set a flush aside
    elif how == "sql":
        assert stopped["at"] == f"picky.py:{line}, in handle"
        assert f"the projection failed on event {_named(truth, bad)}: UndefinedTable: " in message
        assert f'relation "pickie" does not exist (picky.py:{line}, in handle)' in message
        assert "LINE 1" not in errors[0] and "LINE 1" in stopped["error"]  # one line; JSON whole
    else:
        assert stopped["at"] == f"picky.py:{line}, in handle"
        assert (
            f"the projection failed on event {_named(truth, bad)}: KeyError: 'NoSuchField' "
            f"(picky.py:{line}, in handle)" in message
        )
    assert "batch 3 was rolled back, checkpoint 'picky' stays at the last committed batch" in (
        message
    )
    assert "rerun the same command without --reset to resume" in message
    assert "--debug shows the projection's traceback" in message
    with psycopg.connect(pg_dsn) as conn:
        rows = {(a, v) for a, v in conn.execute("SELECT aggregate_id, version FROM picky")}
    assert rows == set(events[:20])  # batches 1 and 2; nothing of batch 3
    row = checkpoint_row(pg_dsn, "picky")
    assert row is not None and row["events"] == 20

    debug = run_cli(*args, "--debug", env=env, cwd=tmp_path)
    assert debug.returncode == 1
    assert f'File "{tmp_path / "picky.py"}", line {line}, in ' in debug.stderr
    hint = " ".join(debug.stderr[debug.stderr.index("what to do: ") :].split())
    assert hint.startswith("what to do: fix the projection and rerun") and "--debug" not in hint

    if how != "flush":
        skipping = run_cli(*args, "--skip-errors", env=env, cwd=tmp_path)
        assert skipping.returncode == 3, skipping.stderr
        (problem,) = json.loads(skipping.stdout)["problems"]
        assert problem["kind"] == "dead_lettered"
        assert (
            f"(picky.py:{line}, in handle) (in esctl.projection_dead_letter)" in problem["detail"]
        )


# --- stopped mid-run ---------------------------------------------------------------------------


@pytest.mark.parametrize("reset", [True, False])
def test_sigterm_mid_run_leaves_the_last_committed_batch_and_says_how_to_resume(
    truth: iw.GroundTruth,
    app_name: str,
    pg_dsn: str,
    redis_test_url: str,
    tmp_path: Path,
    reset: bool,
) -> None:
    args = replay_cli(
        app_name, pg_dsn, redis_test_url,
        "--from", "pg", "--batch-size", "5",
        "--projection", seen_projection(tmp_path), "--checkpoint", "seen",
    )  # fmt: skip
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    uninterrupted = seen_rows(pg_dsn)

    with psycopg.connect(pg_dsn) as conn:  # the slow run's progress is watched from none
        conn.execute("DELETE FROM esctl.projection_checkpoint WHERE name = 'seen'")
    slow = [*args, "--reset"] if reset else args
    with started_cli(*slow, env={"SEEN_DELAY": "0.1"}) as process:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = checkpoint_row(pg_dsn, "seen")
            if row is not None and row["events"] >= 15:
                break
            assert process.poll() is None, "the replay ended before it could be stopped"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    message = " ".join(stderr.decode().split())
    said = re.search(r"stopped by SIGTERM; ([\d,]+) events? replayed by this run stay committed; "
                     r"checkpoint 'seen' stays at the last batch committed", message)  # fmt: skip
    assert said is not None, message
    resume = (
        "rerun the same command without --reset to resume"
        if reset
        else ("rerun the same command to resume")
    )
    assert resume in message
    document = json.loads(stdout)
    assert document["error"]["kind"] == "interrupted" and document["exit_code"] == 130
    row = checkpoint_row(pg_dsn, "seen")
    assert row is not None and row["finished_at"] is None
    assert sum(seen_rows(pg_dsn).values()) == row["events"] < len(in_pg(truth))
    assert row["events"] == int(said[1].replace(",", ""))

    rerun = run_cli(*args)  # without --reset
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["checkpoint"]["resumed"]
    assert seen_rows(pg_dsn) == uninterrupted


def _dead_letters(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM esctl.projection_dead_letter").fetchone()
    assert row is not None
    return int(row[0])


def _seen_total(dsn: str) -> int:
    """Rows of replay_seen (0 before the projection's setup made the table)."""
    try:
        return sum(seen_rows(dsn).values())
    except psycopg.errors.UndefinedTable:
        return 0


def _said_committed(stderr: bytes, stop: signal.Signals) -> tuple[int, int, str]:
    """The events and dead-lettered events an interrupted replay says it committed, and its
    message (one line)."""
    message = " ".join(stderr.decode().split())
    said = "stopped by SIGTERM" if stop == signal.SIGTERM else "interrupted"
    found = re.search(
        rf"error: {said}; ([\d,]+) events? replayed by this run"
        r"(?: \(([\d,]+) of them dead-lettered into esctl.projection_dead_letter\))? stays? "
        r"committed",
        message,
    )
    assert found is not None, message
    return int(found[1].replace(",", "")), int((found[2] or "0").replace(",", "")), message


@pytest.mark.parametrize(
    ("stop", "checkpoint"), [(signal.SIGINT, False), (signal.SIGTERM, True)], ids=["int", "term"]
)
def test_an_interrupted_replay_says_how_many_events_it_committed_and_dead_lettered(
    truth: iw.GroundTruth,
    app_name: str,
    pg_dsn: str,
    redis_test_url: str,
    tmp_path: Path,
    stop: signal.Signals,
    checkpoint: bool,
) -> None:
    """Ctrl-C or SIGTERM (to the process, by its pid) mid-run: the events it says this run
    committed are the rows the projection's table holds plus the events dead-lettered (every
    version 2 raises here, --skip-errors), which are the rows of esctl.projection_dead_letter;
    --json carries both as error.done; with a checkpoint, its events are the same."""
    args = replay_cli(
        app_name, pg_dsn, redis_test_url,
        "--from", "pg", "--batch-size", "5", "--skip-errors",
        "--projection", seen_projection(tmp_path),
        *(["--checkpoint", "seen"] if checkpoint else []),
    )  # fmt: skip
    env = {"SEEN_DELAY": "0.05", "SEEN_FAIL_VERSION": "2"}
    with started_cli(*args, env=env) as process:
        deadline = time.monotonic() + 30
        while _seen_total(pg_dsn) < 20:
            assert process.poll() is None, "the replay ended before it could be stopped"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(process.pid, stop)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    events, dead, message = _said_committed(stderr, stop)
    rows = _seen_total(pg_dsn)
    assert dead == _dead_letters(pg_dsn) > 0
    assert events == rows + dead < len(in_pg(truth))
    error = json.loads(stdout)["error"]
    assert error["kind"] == "interrupted"
    assert error["done"] == {"events": events, "dead_lettered": dead}
    if checkpoint:
        assert "checkpoint 'seen' stays at the last batch committed" in message
        row = checkpoint_row(pg_dsn, "seen")
        assert row is not None and row["events"] == events
    else:
        assert (
            "stay committed in the projection's tables, the batch in progress was rolled back"
            in message
        )
        assert "without --checkpoint it starts from the beginning" in message


COMMIT_THEN_SIGNAL = """
import os, signal, sys
import psycopg
from esctl.replay import to_projection

real_run = to_projection._BatchRunner.run
real_commit = psycopg.Connection.commit
at = {"batch": 0}

def run(self, batch):
    at["batch"] = self.ctx.batch + 1
    return real_run(self, batch)

def commit(self):
    real_commit(self)
    if at["batch"] == int(os.environ["AT_BATCH"]):  # answered, not yet counted
        at["batch"] = 0
        for _ in range(int(os.environ["SIGNALS"])):
            os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL"]))

to_projection._BatchRunner.run = run
psycopg.Connection.commit = commit
sys.argv[0] = "esctl"
from esctl.cli.app import main
main()
"""
"""``esctl ARGS`` that gets ``$SIGNALS`` signals ``$SIGNAL`` (from itself, by its pid) right
after PostgreSQL answered the COMMIT of batch ``$AT_BATCH``, before esctl counted it."""


@pytest.mark.parametrize(
    ("stop", "signals", "checkpoint"),
    [(signal.SIGINT, 1, True), (signal.SIGTERM, 1, False), (signal.SIGINT, 2, False)],
    ids=["int", "term", "int-twice"],
)
def test_a_signal_as_a_batch_commits_waits_for_its_count(
    truth: iw.GroundTruth,
    app_name: str,
    pg_dsn: str,
    redis_test_url: str,
    tmp_path: Path,
    stop: signal.Signals,
    signals: int,
    checkpoint: bool,
) -> None:
    """Ctrl-C or SIGTERM while batch 4's COMMIT is answered: the run stops once that batch is
    counted, so the events it says it committed are exactly the table's rows (20). A second
    signal then stops the wait at once: the batch's outcome is said to be unknown (here it had
    committed: the rows are the events said plus those in doubt)."""
    args = replay_cli(
        app_name, pg_dsn, redis_test_url,
        "--from", "pg", "--batch-size", "5",
        "--projection", seen_projection(tmp_path),
        *(["--checkpoint", "seen"] if checkpoint else []),
    )  # fmt: skip
    env = {"AT_BATCH": "4", "SIGNALS": str(signals), "SIGNAL": stop.name}
    result = subprocess.run(
        [sys.executable, "-c", COMMIT_THEN_SIGNAL, *args],
        capture_output=True, timeout=60, check=False, env=cli_env(env), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 130, result.stderr
    events, dead, message = _said_committed(result.stderr, stop)
    assert dead == 0 and "Traceback" not in message
    rows = _seen_total(pg_dsn)
    error = json.loads(result.stdout)["error"]
    if signals == 1:
        assert events == rows == 20, message
        assert error["done"] == {"events": 20, "dead_lettered": 0}
        assert "not known" not in message
    else:
        assert events == 15 and rows == 20, message
        assert error["done"] == {"events": 15, "dead_lettered": 0, "events_in_doubt": 5}
        assert (
            "stay committed in the projection's tables; whether the 5 events of the batch whose "
            "COMMIT was under way were committed too is not known (a second signal stopped the "
            "wait for PostgreSQL's answer)" in message
        )
    if checkpoint:
        row = checkpoint_row(pg_dsn, "seen")
        assert row is not None and row["events"] == rows
