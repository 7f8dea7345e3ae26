"""esctl on a real terminal (a pty of 80x24 or 120x40, read through a terminal emulator, see
``terminal.py``): the demo tour, every progress bar, every ``--help``, tables, and a query whose
stdout is a pipe while stderr is the terminal.

A screen fails on a traceback, an ``error:`` line where none is expected, a table drawn on a
progress bar's row, an option name cut short (``--max-redis-late…``) or a wrong exit code.
"""

from __future__ import annotations

import atexit
import io
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from helpers import QUEUE_BATCH_LAUNCHER, run_cli, start_cli, wait_for
from rich.console import Console
from terminal import (
    BIN_DIR,
    ESCTL,
    SIZES,
    Screen,
    TerminalSession,
    assert_reads_well,
    problems_on,
    run_on_terminal,
)

from esctl import demo, queues, servers
from esctl.cli import demo_tour, tables, wrapping
from esctl.cli.app import every_command

# --- the demo tour -------------------------------------------------------------------------

# Exit codes of the tour's steps other than 0, keyed by the step's command as written in
# esctl.cli.demo_tour.TOUR; True: the step prints an "error:" line on purpose.
TOUR_EXPECTED: dict[str, tuple[int, bool]] = {
    '{redis_cli} -u "$ESCTL_REDIS_URL" --raw HGET {invalid_hash} {invalid_commit} '
    "| esctl events decode -": (3, True),
    "esctl inspect integrity": (3, False),
    "esctl migrate redis-to-pg --init-schema": (3, False),  # the defects are quarantined
    "esctl migrate verify": (3, False),  # ... so verify reports them unmigratable
    "esctl doctor": (3, False),
}

# What a tour step's screen must show (rows as the terminal shows them) and must not.
TOUR_SHOWS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "esctl events query --transforms demo-rules.toml --aggregate-type Gradebook --json "
    "| jq -r '.[].data[\"$type\"]'": (
        ("Events.GradebookOpened, Learning.Scoring.Domain", "events left out"),
        ("Envelope`1[[", ", Learning.ScoringService.Domain\n"),
    ),
    "esctl migrate plan --transforms demo-rules.toml": (
        ("[[leave_out]] #1", "[[rename_assembly]]"),
        (),
    ),
}


@pytest.fixture
def demo_redis() -> Iterator[servers.LocalRedis]:
    """A throwaway Redis set up as ``esctl demo`` sets up its own (maxmemory-policy
    allkeys-lru, which the tour's doctor step flags and its CONFIG SET step fixes): the tour
    changes server settings, which no shared server should see."""
    server = servers.start_redis(extra_args=["--maxmemory-policy", "allkeys-lru"])
    try:
        yield server
    finally:
        server.stop()


def demo_env(server: servers.LocalRedis) -> dict[str, str]:
    """The demo store written into ``server``, and the environment that points esctl at it."""
    client = redis.Redis.from_url(server.url)
    try:
        demo.write_demo_store(client, app=demo.DEMO_APP, env=demo.DEMO_ENV, now=datetime.now(UTC))
    finally:
        client.close()
    return {"ESCTL_REDIS_URL": server.url, "ESCTL_APP": demo.DEMO_APP, "ESCTL_ENV": demo.DEMO_ENV}


def test_tour_entries_name_tour_steps() -> None:
    templates = {step.command for step in demo_tour.TOUR}
    assert set(TOUR_EXPECTED) <= templates, set(TOUR_EXPECTED) - templates
    assert set(TOUR_SHOWS) <= templates, set(TOUR_SHOWS) - templates


def test_demo_tour_on_80x24(demo_redis: servers.LocalRedis, pg_dsn: str, tmp_path: Path) -> None:
    """Every step of the tour ``esctl demo`` prints, typed into a shell on an 80x24 terminal
    in order (later steps use what earlier ones did), with the environment the demo's export
    line sets."""
    client = redis.Redis.from_url(demo_redis.url)
    try:
        summary = demo.write_demo_store(
            client, app=demo.DEMO_APP, env=demo.DEMO_ENV, now=datetime.now(UTC)
        )
    finally:
        client.close()
    env = {
        "ESCTL_REDIS_URL": demo_redis.url,
        "ESCTL_PG_DSN": pg_dsn,
        "ESCTL_APP": demo.DEMO_APP,
        "ESCTL_ENV": demo.DEMO_ENV,
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        "PSQL_PAGER": "",  # psql would wait in a pager for a key once its output filled a screen
    }
    failures = []
    ran = 0
    for template, step in zip(demo_tour.TOUR, demo_tour.tour(summary), strict=True):
        tools = {"redis-cli", "psql", "jq"} & set(re.findall(r"[\w-]+", step.command))
        if any(shutil.which(tool) is None for tool in tools):
            continue  # the machines this runs on have them; a laptop may not
        screen = run_on_terminal(
            ["bash", "--norc", "--noprofile", "-c", step.command], env=env, cwd=tmp_path
        )
        ran += 1
        code, error_expected = TOUR_EXPECTED.get(template.command, (0, False))
        found = problems_on(screen, exit_code=code, error_expected=error_expected)
        shown, not_shown = TOUR_SHOWS.get(template.command, ((), ()))
        found += [f"{text!r} not shown" for text in shown if text not in screen.text + "\n"]
        found += [f"{text!r} shown" for text in not_shown if text in screen.text + "\n"]
        if found:
            failures.append(f"{'; '.join(found)}:\n{screen.describe()}")
    assert not failures, "\n\n".join(failures)
    assert ran >= len(demo_tour.TOUR) - 8  # the steps without a redis-cli, psql or jq at least


# --- progress bars -------------------------------------------------------------------------

# A progress bar's last picture, on a row of its own: "recheck: 214 keys [00:00, 14.4k keys/s,
# commits=236, fields=236]" or "migrating: 100%|███| 236/236 [00:00<00:00, ...]" (tqdm cuts
# what does not fit the terminal's width, a "]" included).
BAR_ROW = re.compile(r"^(?P<desc>[a-z][a-z ]*): (?P<rest>.*\[\d\d:\d\d.*)$")


def bar_rows(screen: Screen) -> list[re.Match[str]]:
    return [m for m in map(BAR_ROW.match, screen.rows) if m]


@pytest.mark.parametrize("size", ["80x24", "120x40"])
def test_every_progress_bar_ends_on_a_row_of_its_own(
    size: str, redis_test_url: str, pg_dsn: str, demo_store: Any, app_name: str, env_name: str
) -> None:
    """The commands that draw a tqdm bar on a terminal (grep tqdm esctl/cli): each ends with
    the bar's last picture on a row of its own (not continued by a table), with its counts."""
    env = {
        "ESCTL_REDIS_URL": redis_test_url,
        "ESCTL_PG_DSN": pg_dsn,
        "ESCTL_APP": app_name,
        "ESCTL_ENV": env_name,
    }
    runs = [
        (["inspect", "integrity"], 3, "recheck"),
        (["inspect", "stats"], 0, "queues"),
        (["events", "query", "--type", "OrderPlaced"], 0, "scanning"),
        (["migrate", "redis-to-pg", "--init-schema"], 3, "migrating"),
        (
            ["replay", "--from", "redis", "--all", "--to", "queue", "--dry-run"],
            3,  # the demo's unreadable events are reported as problems
            "replaying",
        ),
        (["compress", "--threshold", "500", "--dry-run"], 0, "examining"),
    ]
    failures = []
    for args, code, desc in runs:
        screen = run_on_terminal([*ESCTL, *args], size=size, env=env)
        found = problems_on(screen, exit_code=code)
        bars = bar_rows(screen)
        if [m["desc"] for m in bars] != [desc]:
            found.append(f"expected one finished '{desc}' bar, found {[m[0] for m in bars]}")
        if ": :" in screen.text:
            found.append("a bar with an empty description field (': :')")
        if found:
            failures.append(f"{'; '.join(found)}:\n{screen.describe()}")
    assert not failures, "\n\n".join(failures)


def test_a_run_whose_lock_is_held_draws_no_bar_before_its_error(
    redis_test_url: str, pg_dsn: str, demo_store: Any, app_name: str
) -> None:
    """Exit 75 on a terminal: the lock is tried before any bar is drawn, so the screen shows
    the error naming the holder and no "migrating: 0 commits" bar above it."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_PG_DSN": pg_dsn, "ESCTL_APP": app_name}
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        row = holder.execute(
            "SELECT pg_backend_pid(), pg_try_advisory_lock(hashtextextended(%s, 0))",
            (f"esctl:migrate:public:{app_name}:0/1",),
        ).fetchone()
        assert row is not None and row[1]
        screen = run_on_terminal([*ESCTL, "migrate", "redis-to-pg", "--init-schema"], env=env)
    found = problems_on(screen, exit_code=75, error_expected=True)
    if bar_rows(screen) or "migrating" in screen.text:
        found.append("a progress bar drawn before the error")
    if f"pid {row[0]}" not in " ".join(screen.text.split()):
        found.append("the holder's pid not named")
    assert not found, f"{'; '.join(found)}:\n{screen.describe()}"


THIRD_RAISES = """
class Third:
    def setup(self, ctx):
        self.n = 0

    def handle(self, event):
        self.n += 1
        if self.n == 3:
            return event.data["NoSuchField"]
"""


def test_a_stopped_projection_run_on_80x24_says_its_error_once(
    redis_test_url: str, pg_dsn: str, demo_store: Any, app_name: str, tmp_path: Path
) -> None:
    """A projection that raises on the third event: the error line names the event, the
    error, the file:line, the batch rolled back, the checkpoint and what to do; the summary
    above it shows what was committed and the store's other problems, not the same error
    again. (The JSON summary keeps it among its problems.)"""
    (tmp_path / "third.py").write_text(THIRD_RAISES.lstrip())
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_PG_DSN": pg_dsn, "ESCTL_APP": app_name}
    args = ["replay", "--from", "redis", "--all", "--to", "projection"]
    args += ["--projection", "third.py:Third", "--checkpoint", f"third-{app_name}", "--reset"]
    screen = run_on_terminal([*ESCTL, *args], env=env, cwd=tmp_path)
    assert_reads_well(screen, exit_code=1, error_expected=True)
    said = " ".join(screen.text.split())
    found = []
    if said.count("NoSuchField") != 1:
        found.append(f"the error said {said.count('NoSuchField')} times")
    if "projection_failed" in said:
        found.append("the failure listed as a problem too")
    for needed in (
        "events replayed │ 0",  # what was committed
        "(third.py:8, in handle); batch 1 was rolled back",
        f"checkpoint 'third-{app_name}' stays at the last committed batch",
        "what to do: fix the projection and rerun the same command",
        "--debug shows the projection's traceback",
        "duplicate_version",  # the store's own problems stay
    ):
        if needed not in said:
            found.append(f"{needed!r} not shown")
    assert not found, f"{'; '.join(found)}:\n{screen.describe()}"
    document = json.loads(run_cli(*args, "--json", env=env, cwd=tmp_path).stdout)
    assert document["problem_counts"]["projection_failed"] == 1
    assert any(p["kind"] == "projection_failed" for p in document["problems"])


def test_events_query_piped_on_a_terminal(
    redis_test_url: str, demo_store: Any, app_name: str
) -> None:
    """``esctl events query … | jq .aggregate_id`` typed on a terminal: stdout is a pipe,
    stderr the terminal, so esctl writes JSON lines and draws its bar on stderr. (This crashed
    with a TypeError on every terminal until tqdm's bar stopped being used as a boolean.)"""
    screen = run_on_terminal(
        [*ESCTL, "events", "query", "--type", "OrderPlaced", "--limit", "5"],
        env={"ESCTL_REDIS_URL": redis_test_url, "ESCTL_APP": app_name},
        pipe_stdout=True,
    )
    assert_reads_well(screen)
    assert screen.stdout is not None
    documents = [json.loads(line) for line in screen.stdout.splitlines()]
    assert len(documents) == 5, screen.describe()
    assert all(d["event_type"] == "OrderPlaced" and d["aggregate_id"] for d in documents)
    [bar] = bar_rows(screen)
    assert bar["desc"] == "scanning" and "matched=5" in bar["rest"], screen.describe()


@pytest.mark.parametrize("source", ["redis", "pg"])
def test_replay_to_stdout_on_a_terminal_leaves_every_line_whole(
    source: str, redis_test_url: str, pg_dsn: str, demo_store: Any, app_name: str
) -> None:
    """``esctl replay --to stdout`` typed on a terminal, nothing redirected: the JSON lines and
    the bar would share the terminal's rows (a bar's picture, then a line written after it on
    the same row, which the next redraw overwrites). No bar then: every line is on rows of
    its own, whole, and reads back as the event it is; no bar row among them."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_PG_DSN": pg_dsn, "ESCTL_APP": app_name}
    if source == "pg":
        migrated = run_cli("migrate", "redis-to-pg", "--init-schema", env=env)
        assert migrated.returncode == 3, migrated.stderr  # the demo's defects are quarantined
    args = ["replay", "--from", source, "--all", "--to", "stdout"]
    code = 3 if source == "redis" else 0  # the demo's unreadable events in Redis are problems
    piped = run_cli(*args, env=env)
    assert piped.returncode == code, piped.stderr
    expected = piped.stdout.splitlines()
    assert len(expected) > 100, piped.stdout

    screen = run_on_terminal([*ESCTL, *args], env=env)
    assert_reads_well(screen, exit_code=code)
    # As written: every line that holds an event is one whole JSON line.
    written = [line for line in screen.written if '"aggregate_id"' in line]
    assert all(line.startswith('{"aggregate_id"') for line in written), screen.describe()
    assert sorted(json.dumps(json.loads(line)) for line in written) == sorted(
        json.dumps(json.loads(line)) for line in expected
    )
    # As shown: each line starts a row and goes on over the rows below it (folded at the
    # margin) up to the next line or the summary; compared without spaces, which the
    # terminal's rows lose at the margin.
    starts = [i for i, row in enumerate(screen.rows) if row.startswith('{"aggregate_id"')]
    [summary] = [i for i, row in enumerate(screen.rows) if row.startswith("replayed ")]
    shown = [
        "".join(screen.rows[start:end]).replace(" ", "")
        for start, end in itertools.pairwise([*starts, summary])
    ]
    assert sorted(shown) == sorted(line.replace(" ", "") for line in expected), screen.describe()
    assert not bar_rows(screen) and "replaying:" not in screen.text, screen.describe()


def test_replay_question_is_not_drawn_on_the_bar_s_row(
    redis_test_url: str, demo_store: Any, app_name: str, env_name: str
) -> None:
    """``replay --to queue`` over --confirm-over asks on the terminal while its bar runs: the
    table of what it would publish and the question start on rows of their own (they began
    on the bar's row, after "replaying: 0 events [00:00, ? events/s]"), and the bar is drawn
    again below the answer."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_APP": app_name, "ESCTL_ENV": env_name}
    words = [*ESCTL, "replay", "--from", "redis", "--type", "OrderPlaced", "--to", "queue"]
    words += ["--subscriber", "Reporting.Worker", "--force", "--confirm-over", "1"]
    with TerminalSession(words, env=env) as session:
        # the question is drawn whole, "[y/N]: " last, before esctl reads the answer: typed
        # before that, the answer's echo would come first
        session.wait_for(lambda s: session.raw.endswith(b"[y/N]: "), timeout=30)
        session.type("y\r")
        screen = session.wait_exit(timeout=30)
    assert_reads_well(screen, exit_code=3)  # the demo's unreadable events are problems
    assert "would publish" in screen.rows, screen.describe()
    questions = [i for i, row in enumerate(screen.rows) if row.endswith("[y/N]: y")]
    assert len(questions) == 1, screen.describe()
    [question] = questions
    assert screen.rows[question].startswith("publish "), screen.describe()
    [bar] = bar_rows(screen)
    # drawn once the replay holds its lock, with the plan's count as its total
    assert bar["desc"] == "replaying" and "| 12/12 [" in bar["rest"], screen.describe()
    assert screen.rows.index(bar[0]) > question, screen.describe()


def test_replay_to_a_pipe_draws_its_bar_with_a_whole_count(
    redis_test_url: str, demo_store: Any, app_name: str
) -> None:
    """``esctl replay --to stdout … | consumer`` typed on a terminal: stdout (a pipe) gets every
    event as a JSON line, and the bar on the terminal counts them in whole numbers: "replaying:
    12 events [...]", not tqdm's unit_scale "12.0 events" (a float below 1,000)."""
    screen = run_on_terminal(
        [*ESCTL, "replay", "--from", "redis", "--type", "OrderPlaced", "--to", "stdout"],
        env={"ESCTL_REDIS_URL": redis_test_url, "ESCTL_APP": app_name},
        pipe_stdout=True,
    )
    assert_reads_well(screen, exit_code=3)  # the demo's unreadable events are problems
    assert screen.stdout is not None
    documents = [json.loads(line) for line in screen.stdout.splitlines()]
    assert len(documents) == 12, screen.describe()  # the demo's OrderPlaced events
    assert all(d["event_type"] == "OrderPlaced" for d in documents)
    [bar] = bar_rows(screen)
    assert bar["desc"] == "replaying", screen.describe()
    assert bar["rest"].startswith(f"{len(documents)} events ["), screen.describe()


def test_a_bar_that_counted_one_says_it_in_the_singular(
    redis_test_url: str, demo_store: Any, app_name: str
) -> None:
    """A bar without a total that ends at one counts it in the singular: "replaying: 1 event
    [...]" (it said "1 events"), as every such bar does (unit tests: test_cli_context)."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_APP": app_name}
    first = run_cli("events", "query", "--type", "OrderPlaced", "--limit", "1", env=env)
    assert first.returncode == 0, first.stderr
    aggregate = json.loads(first.stdout)["aggregate_id"]
    screen = run_on_terminal(
        [*ESCTL, "replay", "--from", "redis", "--type", "OrderPlaced", "--aggregate", aggregate,
         "--to", "stdout"],
        env=env,
        pipe_stdout=True,
    )  # fmt: skip
    assert screen.stdout is not None and len(screen.stdout.splitlines()) == 1, screen.describe()
    [bar] = bar_rows(screen)
    assert bar["desc"] == "replaying", screen.describe()
    assert bar["rest"].startswith("1 event ["), screen.describe()


# --- the queue commands' bars ----------------------------------------------------------------

QUEUE_SUB = "Learning.ReportingService.Worker-Bar"
QUEUE_TYPE = "ItemScoreCreated"
QUEUED = 5_000
"""Messages a queue command moves on the terminal: 100 batches of :data:`QUEUE_BATCH`."""
QUEUE_BATCH = 50


def queue_command(*args: str) -> list[str]:
    """``esctl queue ARGS`` with its move batch set to QUEUE_BATCH (``QUEUE_BATCH_LAUNCHER``),
    so a run of QUEUED messages answers batch after batch, as a long one does."""
    return [sys.executable, "-c", QUEUE_BATCH_LAUNCHER, str(QUEUE_BATCH), "queue", *args]


def fill_queue(url: str, env: str, which: str, count: int = QUEUED) -> str:
    """``count`` messages in the test queue's ``which`` list (its key, returned), as the
    library writes them."""
    key = queues.QueueRef(QUEUE_SUB, env, QUEUE_TYPE).key(which)
    client = redis.Redis.from_url(url)
    try:
        client.delete(key)
        client.rpush(
            key,
            *(
                json.dumps(
                    {
                        "$type": f"Learning.ScoringService.Domain.Events.{QUEUE_TYPE}, "
                        "Learning.ScoringService.Domain",
                        "Id": f"item-{i}",
                        "TimeStamp": "2025-03-01T12:00:00.0000001+00:00",
                        "Version": 1,
                        "AggregateType": "ItemScore",
                    }
                )
                for i in range(count)
            ),
        )
    finally:
        client.close()
    return key


def finished_bar(screen: Screen, desc: str) -> int:
    """The row of ``screen``'s one bar, ``desc`` at QUEUED of QUEUED (AssertionError else)."""
    bars = bar_rows(screen)
    assert [m["desc"] for m in bars] == [desc], screen.describe()
    [bar] = bars
    assert f"| {QUEUED:,}/{QUEUED:,} [" in bar["rest"], screen.describe()
    assert "messages/s" in bar["rest"], screen.describe()
    return screen.rows.index(bar[0])


def summary_row(screen: Screen, label: str, value: str) -> int:
    """The row of ``label │ value`` in ``screen``'s summary."""
    rows = [i for i, r in enumerate(screen.rows) if re.fullmatch(rf"{label} +│ {value}", r)]
    assert len(rows) == 1, screen.describe()
    return rows[0]


def test_queue_requeue_on_a_terminal_draws_a_bar_unless_json_or_no_progress(
    redis_test_url: str, env_name: str
) -> None:
    """A requeue of 5,000 messages (100 batches) typed on a terminal draws a "requeueing" bar,
    redrawn as batches are answered, that ends at 5,000/5,000 on a row of its own, the usual
    summary below it. With --no-progress the same summary and no bar; with --json the
    document alone (stdout a pipe here) and no bar on the terminal (stderr)."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_ENV": env_name}
    requeue = queue_command("requeue", QUEUE_SUB, QUEUE_TYPE, "--yes")
    fill_queue(redis_test_url, env_name, "processing")
    with TerminalSession(requeue, env=env) as session:
        screen = session.wait_exit(timeout=60)
    assert_reads_well(screen)
    bar = finished_bar(screen, "requeueing")
    assert session.raw.count(b"requeueing:") > 10, screen.describe()  # not only at the end
    assert bar < screen.rows.index("queue requeue"), screen.describe()
    assert bar < summary_row(screen, "requeued", f"{QUEUED:,}")

    fill_queue(redis_test_url, env_name, "processing")
    screen = run_on_terminal([*requeue, "--no-progress"], env=env)
    assert_reads_well(screen)
    assert not bar_rows(screen) and "requeueing" not in screen.text, screen.describe()
    summary_row(screen, "requeued", f"{QUEUED:,}")

    fill_queue(redis_test_url, env_name, "processing")
    screen = run_on_terminal([*requeue, "--json"], env=env, pipe_stdout=True)
    assert_reads_well(screen)
    assert "requeueing" not in screen.text and not bar_rows(screen), screen.describe()
    assert screen.stdout is not None
    assert json.loads(screen.stdout)["requeued"] == QUEUED, screen.describe()


def test_queue_requeue_asks_before_its_bar_and_draws_none_for_a_dry_run_or_nothing(
    redis_test_url: str, env_name: str
) -> None:
    """Without --yes the question comes first, on rows of its own; the bar is drawn below the
    answer, once the moves start. A dry run and a selection of nothing draw no bar (nothing
    moves), only their summary."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_ENV": env_name}
    requeue = queue_command("requeue", QUEUE_SUB, QUEUE_TYPE, "--grace", "1ms")
    fill_queue(redis_test_url, env_name, "processing")
    with TerminalSession(requeue, env=env) as session:
        # the question is drawn whole, "[y/N]: " last, before esctl reads the answer
        session.wait_for(lambda s: session.raw.endswith(b"[y/N]: "), timeout=30)
        session.type("y\r")
        screen = session.wait_exit(timeout=60)
    assert_reads_well(screen)
    [question] = [i for i, row in enumerate(screen.rows) if row.endswith("[y/N]: y")]
    asked = " ".join(screen.rows[: question + 1])
    assert f"requeue {QUEUED:,} messages from " in asked, screen.describe()
    assert question < finished_bar(screen, "requeueing") < screen.rows.index("queue requeue")

    fill_queue(redis_test_url, env_name, "processing")
    for extra, label, value in [
        (["--dry-run", "--limit", "3"], "would requeue", "3"),
        (["--aggregate", "no-such-aggregate", "--yes"], "selected", "0"),
    ]:
        screen = run_on_terminal([*requeue, *extra], env=env)
        assert_reads_well(screen)
        assert not bar_rows(screen) and "requeueing" not in screen.text, screen.describe()
        summary_row(screen, label, value)


def test_queue_drain_and_restore_on_a_terminal_draw_their_bars(
    redis_test_url: str, env_name: str, tmp_path: Path
) -> None:
    """A drain of 5,000 dead letters draws a "draining" bar, a restore of its file a
    "restoring" one, each ending at 5,000/5,000 above its summary; a dry run of either, and a
    restore of a file already restored, draw none."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_ENV": env_name}
    fill_queue(redis_test_url, env_name, "dead")
    backup = str(tmp_path / "dead.jsonl.zst")
    drain = queue_command("drain", QUEUE_SUB, QUEUE_TYPE, "--list", "dead")
    restore = queue_command("restore", backup)
    runs: list[tuple[list[str], str | None, str]] = [
        ([*drain, "--dry-run", "--limit", "3"], None, "queue drain (dry run: nothing removed)"),
        ([*drain, "--to-file", backup, "--yes"], "draining", "queue drain"),
        ([*restore, "--dry-run"], None, "queue restore (dry run: nothing restored)"),
        ([*restore, "--yes"], "restoring", "queue restore"),
        ([*restore, "--yes"], None, "queue restore"),  # restored already: nothing to do
    ]
    for words, desc, title in runs:
        screen = run_on_terminal(words, env=env)
        assert_reads_well(screen)
        if desc is None:
            assert not bar_rows(screen), screen.describe()
        else:
            assert finished_bar(screen, desc) < screen.rows.index(title), screen.describe()


# --- questions on 80 columns -----------------------------------------------------------------


def answered(words: list[str], answer: str, env: dict[str, str]) -> tuple[Screen, bytes]:
    """``words`` run on an 80x24 terminal, ``answer`` typed (and Enter) once the question's
    ``[y/N]: `` is drawn: the last screen, and everything the command drew."""
    with TerminalSession(words, env=env) as session:
        # the question is drawn whole, "[y/N]: " last, before esctl reads the answer: typed
        # before that, the answer's echo would come first
        session.wait_for(lambda s: session.raw.endswith(b"[y/N]: "), timeout=30)
        session.type(f"{answer}\r")
        return session.wait_exit(timeout=60), bytes(session.raw)


def question_problems(screen: Screen, question: str, answer: str) -> list[str]:
    """What is wrong with how ``question`` was asked on ``screen``, ``answer`` typed after its
    ``[y/N]: ``: the rows from the one it starts on to the one that ends in the prompt and
    the answer not its words in order, or a row cut inside a word (only at a space, or after
    a ":" of a key too long for a row)."""
    asked = f"{question} [y/N]: {answer}"
    ends = [i for i, row in enumerate(screen.rows) if row.endswith(f"[y/N]: {answer}")]
    if len(ends) != 1:
        return [f"{len(ends)} rows end in the prompt and its answer"]
    starts = [i for i in range(ends[0] + 1) if screen.rows[i] and asked.startswith(screen.rows[i])]
    if not starts:
        return ["no row starts the question"]
    rows = screen.rows[starts[-1] : ends[0] + 1]
    found: list[str] = []
    at = 0
    for row, below in itertools.zip_longest(rows, rows[1:]):
        if not asked.startswith(row, at):
            return [*found, f"{row!r} is not the question's text from {asked[at:]!r}"]
        at += len(row)
        if below is None:
            break
        if asked[at] == " ":
            at += 1
        elif not row.endswith(":"):
            found.append(f"cut inside a word: {row!r} / {below!r}")
    if at != len(asked):
        found.append(f"the rows end before {asked[at:]!r}")
    return found


def test_ctrl_c_or_ctrl_d_at_a_question_stops_the_command_as_such(
    redis_test_url: str, env_name: str
) -> None:
    """Click turns Ctrl-C and the end of input at a question into its Abort, which came out as
    "unexpected Abort: this is a bug in esctl", exit 1. Ctrl-C at the question is an
    interrupted command (exit 130, nothing moved, said below the question's row); Ctrl-D is no
    answer: not confirmed, exit 2. The queue is as it was after both."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_ENV": env_name}
    ref = queues.QueueRef(QUEUE_SUB, env_name, QUEUE_TYPE)
    processing, published = ref.key("processing"), ref.key("published")
    fill_queue(redis_test_url, env_name, "processing", count=3)
    client = redis.Redis.from_url(redis_test_url)
    words = [*ESCTL, "queue", "requeue", QUEUE_SUB, QUEUE_TYPE, "--grace", "1ms"]
    try:
        for key, code, said in (("\x03", 130, "error: interrupted"), ("\x04", 2, "not confirmed")):
            with TerminalSession(words, env=env) as session:
                session.wait_for(lambda s: session.raw.endswith(b"[y/N]: "), timeout=30)
                session.type(key)
                screen = session.wait_exit(timeout=60)
            text = "\n".join(screen.rows)
            assert screen.exit_code == code, screen.describe()
            assert said in text, screen.describe()
            assert "unexpected" not in text and "bug" not in text, screen.describe()
            asked = [i for i, row in enumerate(screen.rows) if "[y/N]:" in row]
            assert len(asked) == 1, screen.describe()  # asked once, its row left as it was
            assert screen.rows[asked[0]].rstrip().endswith(("[y/N]:", "[y/N]: ^C"))
            assert screen.rows[asked[0] + 1].startswith("error: "), screen.describe()
            assert (client.llen(processing), client.llen(published)) == (3, 0)
    finally:
        client.close()


def test_a_question_writes_nothing_to_stdout_and_asks_again_after_an_unknown_answer(
    redis_test_url: str, env_name: str, tmp_path: Path
) -> None:
    """With stdout in a file (``--json > out.json``) the question goes to the terminal and
    nothing of it to the file: Click's confirm wrote the prompt's last space with input(" "),
    to stdout, so the document began with it. An answer neither yes nor no asks again; "yes"
    is yes, and the file holds exactly the summary."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_ENV": env_name}
    ref = queues.QueueRef(QUEUE_SUB, env_name, QUEUE_TYPE)
    fill_queue(redis_test_url, env_name, "processing", count=3)
    words = [*ESCTL, "queue", "requeue", QUEUE_SUB, QUEUE_TYPE, "--grace", "1ms", "--json"]
    out = tmp_path / "out.json"
    with out.open("wb") as file, TerminalSession(words, env=env, stdout=file.fileno()) as session:
        session.wait_for(lambda s: session.raw.endswith(b"[y/N]: "), timeout=30)
        session.type("maybe\r")
        session.wait_for(lambda s: session.raw.count(b"[y/N]: ") == 2, timeout=30)
        session.type("YES\r")
        screen = session.wait_exit(timeout=60)
    assert screen.exit_code == 0, screen.describe()
    assert "Error: invalid input" in screen.text, screen.describe()
    document = out.read_bytes()
    assert document.startswith(b"{\n"), document[:40]
    assert json.loads(document)["requeued"] == 3
    client = redis.Redis.from_url(redis_test_url)
    try:
        assert client.llen(ref.key("published")) == 3
    finally:
        client.close()


def test_queue_questions_on_80_columns_wrap_at_words_and_take_their_answer(
    redis_test_url: str, env_name: str
) -> None:
    """requeue, drain and restore ask with both keys in the question (~190 characters), which
    went out as one line the terminal folded mid-word ("…Worker-B" / "ar:{test-…"); now each
    question wraps at words, a key whole on a row, ``[y/N]:`` on the last one, and "n" leaves
    the queue as it was (exit 2), "y" does the move."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_ENV": env_name}
    ref = queues.QueueRef(QUEUE_SUB, env_name, QUEUE_TYPE)
    processing, published, dead = (ref.key(w) for w in ("processing", "published", "dead"))
    backup = path_of_length(50, "dead.jsonl.zst")  # drain's "undo with:" command fits a row
    fill_queue(redis_test_url, env_name, "processing", count=3)
    fill_queue(redis_test_url, env_name, "dead", count=2)
    client = redis.Redis.from_url(redis_test_url)

    def lengths() -> tuple[int, int, int]:
        return client.llen(processing), client.llen(published), client.llen(dead)

    runs: list[tuple[list[str], str, str, int, tuple[int, int, int]]] = [
        (
            ["requeue", QUEUE_SUB, QUEUE_TYPE, "--grace", "1ms"],
            f"requeue 3 messages from {processing} to {published}?",
            answer,
            code,
            after,
        )
        for answer, code, after in [("n", 2, (3, 0, 2)), ("y", 0, (0, 3, 2))]
    ]
    drain = ["drain", QUEUE_SUB, QUEUE_TYPE, "--list", "dead", "--to-file", str(backup)]
    asked = f"drain 2 messages from {dead} to {backup}?"
    runs += [(drain, asked, "n", 2, (0, 3, 2)), (drain, asked, "y", 0, (0, 3, 0))]
    restore = ["restore", str(backup)]
    asked = f"restore 2 messages from {backup} to {dead}?"
    runs += [(restore, asked, "n", 2, (0, 3, 0)), (restore, asked, "y", 0, (0, 3, 2))]
    try:
        for words, question, answer, code, after in runs:
            assert len(f"{question} [y/N]: ") > 80, question
            screen, raw = answered([*ESCTL, "queue", *words], answer, env)
            assert_reads_well(screen, exit_code=code, error_expected=code == 2)
            assert question_problems(screen, question, answer) == [], screen.describe()
            assert folded_mid_word(screen) == [], screen.describe()
            assert raw.count(b"[y/N]: ") == 1, screen.describe()
            assert lengths() == after, screen.describe()
            if code == 2:
                assert "not confirmed; nothing was changed" in screen.text, screen.describe()
    finally:
        client.close()


def test_replay_question_on_80_columns_wraps_at_words_and_takes_its_answer(
    redis_test_url: str, demo_store: Any, app_name: str
) -> None:
    """``replay --to queue`` over --confirm-over asks below its plan's table; with a long env
    name the question is wider than 80 columns: it wraps at words, ``[y/N]:`` on its last
    row, and "n" publishes nothing (exit 2), "y" publishes the plan."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_APP": app_name, "ESCTL_ENV": LONG_ENV}
    words = [*ESCTL, "replay", "--from", "redis", "--type", "OrderPlaced", "--to", "queue"]
    words += ["--subscriber", "Reporting.Worker", "--force", "--confirm-over", "1"]
    question = f"publish 12 events as 12 messages to env {LONG_ENV}?"
    key = queues.QueueRef("Reporting.Worker", LONG_ENV, "OrderPlaced").key("published")
    client = redis.Redis.from_url(redis_test_url)
    try:
        for answer, code, published in [("n", 2, 0), ("y", 3, 12)]:  # 3: the demo's problems
            screen, _ = answered(words, answer, env)
            assert_reads_well(screen, exit_code=code, error_expected=code == 2)
            assert question_problems(screen, question, answer) == [], screen.describe()
            assert folded_mid_word(screen) == [], screen.describe()
            assert client.llen(key) == published, screen.describe()
    finally:
        client.close()


@pytest.mark.parametrize("command", ["compress", "migrate prune", "migrate restore-pruned"])
def test_store_questions_on_80_columns_wrap_at_words_and_take_their_answer(
    command: str, redis_test_url: str, pg_dsn: str, demo_store: Any, app_name: str
) -> None:
    """compress, migrate prune and migrate restore-pruned ask before they change Redis, a
    question wider than 80 columns (with the app's name, a backup file's path): it wraps at
    words, ``[y/N]:`` on its last row, and "n" refuses with nothing done (exit 2)."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_PG_DSN": pg_dsn, "ESCTL_APP": app_name}
    backup = path_of_length(60, "pruned.jsonl.zst")
    words, question = {
        "compress": (
            ["compress", "--threshold", "500"],
            "Compress (gzip+base64, in place) every plain event and snapshot payload of "
            f"{app_name} over 500 bytes?",
        ),
        "migrate prune": (
            ["migrate", "prune"],
            f"Delete from Redis the events of every aggregate of {app_name} that is identical "
            "in PostgreSQL (schema public)?",
        ),
        "migrate restore-pruned": (
            ["migrate", "restore-pruned", str(backup)],
            f"Put the events of {backup} back into Redis for {app_name}?",
        ),
    }[command]
    assert len(f"{question} [y/N]: ") > 80, question
    client = redis.Redis.from_url(redis_test_url)
    try:
        before = {key: client.dump(key) for key in client.scan_iter(count=1000)}
        screen, _ = answered([*ESCTL, *words], "n", env)
        after = {key: client.dump(key) for key in client.scan_iter(count=1000)}
    finally:
        client.close()
    assert_reads_well(screen, exit_code=2, error_expected=True)
    assert question_problems(screen, question, "n") == [], screen.describe()
    assert folded_mid_word(screen) == [], screen.describe()
    assert "error: not confirmed; nothing was done" in screen.rows, screen.describe()
    assert after == before


def test_queue_drain_and_restore_show_their_file_phases_on_a_terminal(
    redis_test_url: str, env_name: str, tmp_path: Path
) -> None:
    """Before its removals a drain writes its backup file, and before its moves a restore reads
    its file and puts its records in order: seconds on a long list, shown on the bar under
    each phase's name ("backing up"; "reading backup", "preparing") before it starts over for
    the moves. The moves' bar is what is left (a restore with nothing left to restore leaves
    none); with --no-progress or --json none of it is drawn."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_ENV": env_name}
    fill_queue(redis_test_url, env_name, "dead")
    backup = str(tmp_path / "dead.jsonl.zst")
    drain = queue_command("drain", QUEUE_SUB, QUEUE_TYPE, "--list", "dead", "--yes")
    restore = queue_command("restore", backup, "--yes")
    file_phases = [b"reading backup: ", b"preparing: "]
    runs: list[tuple[list[str], list[bytes], str | None]] = [
        ([*drain, "--to-file", backup], [b"backing up: "], "draining"),
        (restore, file_phases, "restoring"),
        (restore, file_phases, None),  # restored already: nothing to do
    ]
    for words, phases, desc in runs:
        with TerminalSession(words, env=env) as session:
            screen = session.wait_exit(timeout=60)
        assert_reads_well(screen)
        drawn = bytes(session.raw)
        at = [drawn.find(phase) for phase in phases]
        assert -1 not in at and at == sorted(at), screen.describe()
        assert f"{QUEUED:,}/{QUEUED:,}".encode() in drawn[at[-1] :], screen.describe()
        if desc is None:
            assert not bar_rows(screen), screen.describe()  # wiped: it moved nothing
        else:
            assert drawn.find(f"{desc}: ".encode(), at[-1]) > at[-1], screen.describe()
            finished_bar(screen, desc)

    again = str(tmp_path / "again.jsonl.zst")
    for words, pipe in [
        ([*drain, "--to-file", again, "--no-progress"], False),
        ([*queue_command("restore", again, "--yes"), "--json"], True),
    ]:
        screen = run_on_terminal(words, env=env, pipe_stdout=pipe)
        assert_reads_well(screen)
        written = "\n".join(screen.written)
        assert not any(p in written for p in ("backing up", "reading backup", "preparing"))
        assert not bar_rows(screen), screen.describe()


def test_queue_requeue_and_drain_show_reading_and_selecting_on_a_terminal(
    redis_test_url: str, env_name: str, tmp_path: Path
) -> None:
    """Before their question and their moves, a requeue and a drain read the list and select
    from it: seconds on a long list, with nothing on the terminal. The bar shows them under
    their names ("reading list", "reading list again" after --grace, "selecting", counting
    to the list's length), then the question comes, then the bar starts over for the moves
    (a drain's "backing up" first). A selection of nothing leaves no bar; with --no-progress
    or --json none of it is drawn."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_ENV": env_name}
    fill_queue(redis_test_url, env_name, "processing")
    requeue = queue_command("requeue", QUEUE_SUB, QUEUE_TYPE, "--grace", "1ms")
    with TerminalSession(requeue, env=env) as session:
        session.wait_for(lambda s: session.raw.endswith(b"[y/N]: "), timeout=30)
        asked = bytes(session.raw)
        session.type("y\r")
        screen = session.wait_exit(timeout=60)
    assert_reads_well(screen)
    at = [asked.find(p) for p in (b"reading list: ", b"reading list again: ", b"selecting: ")]
    assert -1 not in at and at == sorted(at), screen.describe()
    assert f"{QUEUED:,}/{QUEUED:,}".encode() in asked[at[-1] :], screen.describe()
    assert b"requeueing" not in asked, screen.describe()  # the moves' bar comes after
    [question] = [i for i, row in enumerate(screen.rows) if row.endswith("[y/N]: y")]
    assert question < finished_bar(screen, "requeueing"), screen.describe()

    fill_queue(redis_test_url, env_name, "dead")
    drain = queue_command("drain", QUEUE_SUB, QUEUE_TYPE, "--list", "dead", "--yes")
    backup = str(tmp_path / "dead.jsonl.zst")
    nothing = [*queue_command("requeue", QUEUE_SUB, QUEUE_TYPE), "--aggregate", "none", "--yes"]
    for words, phases, desc in [
        (
            [*drain, "--to-file", backup],
            [b"reading list: ", b"selecting: ", b"backing up: ", b"draining: "],
            "draining",
        ),
        (nothing, [b"reading list: ", b"selecting: "], None),
    ]:
        fill_queue(redis_test_url, env_name, "processing")
        with TerminalSession(words, env=env) as session:
            screen = session.wait_exit(timeout=60)
        assert_reads_well(screen)
        at = [session.raw.find(phase) for phase in phases]
        assert -1 not in at and at == sorted(at), screen.describe()
        if desc is None:
            assert not bar_rows(screen), screen.describe()  # wiped: it moved nothing
        else:
            finished_bar(screen, desc)

    fill_queue(redis_test_url, env_name, "dead")
    for words, pipe in [
        ([*drain, "--to-file", str(tmp_path / "again.jsonl.zst"), "--no-progress"], False),
        ([*queue_command("requeue", QUEUE_SUB, QUEUE_TYPE, "--yes"), "--json"], True),
    ]:
        screen = run_on_terminal(words, env=env, pipe_stdout=pipe)
        assert_reads_well(screen)
        written = "\n".join(screen.written)
        assert "reading list" not in written and "selecting" not in written, screen.describe()
        assert not bar_rows(screen), screen.describe()


# --- tables --------------------------------------------------------------------------------


QUERY = ["events", "query", "--type", "OrderPlaced", "--limit", "6"]


def query_results(redis_test_url: str, app_name: str) -> list[dict[str, Any]]:
    result = run_cli(*QUERY, env={"ESCTL_REDIS_URL": redis_test_url, "ESCTL_APP": app_name})
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("size", ["80x24", "120x40"])
def test_doctor_prose_is_wrapped_at_words_on_a_terminal(
    size: str, demo_redis: servers.LocalRedis
) -> None:
    """Each finding's ``why`` (and ``observed``) is wrapped at words to the terminal's width,
    continued under its first word (the terminal itself breaks words: "retries them with
    backo" / "ff"); ``why`` is the same text in every run, so the screen is read against the
    JSON of another run."""
    client = redis.Redis.from_url(demo_redis.url)
    try:
        demo.write_demo_store(client, app=demo.DEMO_APP, env=demo.DEMO_ENV, now=datetime.now(UTC))
    finally:
        client.close()
    env = {"ESCTL_REDIS_URL": demo_redis.url, "ESCTL_APP": demo.DEMO_APP}
    report = json.loads(run_cli("doctor", "--json", env={**env, "ESCTL_ENV": demo.DEMO_ENV}).stdout)
    screen = run_on_terminal([*ESCTL, "doctor"], size=size, env={**env, "ESCTL_ENV": demo.DEMO_ENV})
    assert_reads_well(screen, exit_code=3)
    findings = [c for c in report["checks"] if c["status"] != "ok"]
    assert len(findings) >= 3
    for check in findings:
        why = " ".join(check["why"].split())
        head = "  why: "
        start = next(
            i
            for i, row in enumerate(screen.rows)
            if row.startswith(head) and why.startswith(row[len(head) :].strip())
        )
        block = [screen.rows[start][len(head) :]]
        for row in screen.rows[start + 1 :]:
            if not row.startswith(" " * len(head)):
                break
            block.append(row)
        assert " ".join(row.strip() for row in block) == why, (check["id"], screen.describe())


@pytest.mark.parametrize("size", ["80x24", "120x40"])
def test_doctor_details_are_wrapped_at_words_on_a_terminal(
    size: str, demo_redis: servers.LocalRedis
) -> None:
    """A finding's details ("  - Learning.NotificationService.Web-Demo ItemScoreCreated: 1
    processing, oldest 11m 5s old"), wider than 80 columns, wrap at words, continued under
    the first word, instead of the terminal cutting "5s" in two. The ages move between two
    runs, so only the words without digits are compared with the JSON."""
    env = demo_env(demo_redis)
    report = json.loads(run_cli("doctor", "--json", env=env).stdout)
    [stuck] = [c for c in report["checks"] if c["id"] == "queues.stuck"]
    assert len(stuck["details"]) >= 3
    screen = run_on_terminal([*ESCTL, "doctor"], size=size, env=env)
    assert_reads_well(screen, exit_code=3)

    def words(text: str) -> list[str]:
        return [w if not any(ch.isdigit() for ch in w) else "N" for w in text.split()]

    for detail in stuck["details"]:
        head = f"  - {detail.partition(':')[0]}:"
        start = next(i for i, row in enumerate(screen.rows) if row.startswith(head))
        block = [screen.rows[start][4:]]
        block += itertools.takewhile(lambda r: r.startswith("    "), screen.rows[start + 1 :])
        assert words(" ".join(block)) == words(detail), (detail, screen.describe())


# A row that ends with a number, then a row that starts with its unit ("in the last 24" /
# "h is a warning."); or a row that ends with a duration's first part ("1h") and a row that
# starts with its second ("0m old").
_ENDS_WITH_NUMBER = re.compile(r"(?:^|[\s(~])\d[\d,.]*$")
_STARTS_WITH_UNIT = re.compile(r"(?:ms|s|m|min|h|d|B|KiB|MiB|GiB|TiB|bytes|days)\b")
_ENDS_WITH_DURATION_PART = re.compile(r"(?:^|[\s(~])\d+[dhms]$")
_STARTS_WITH_DURATION_PART = re.compile(r"\d+[dhms]\b")


def quantity_splits(lines: list[str]) -> list[tuple[str, str]]:
    """The pairs of consecutive ``lines`` that part a number from its unit."""
    return [
        (a, b)
        for a, b in itertools.pairwise(lines)
        if (_ENDS_WITH_NUMBER.search(a) and _STARTS_WITH_UNIT.match(b))
        or (_ENDS_WITH_DURATION_PART.search(a) and _STARTS_WITH_DURATION_PART.match(b))
    ]


@pytest.mark.parametrize("size", ["80x24", "120x40"])
def test_doctor_on_a_terminal_keeps_a_number_and_its_unit_on_one_row(
    size: str, demo_redis: servers.LocalRedis
) -> None:
    """Wrapped at words, the table's ``observed`` cells and each finding's ``observed``, ``why``
    and details never leave a number at the end of a row and its unit at the start of the
    next: at 80 columns the latency check's ``why`` ended a row with "in the last 24" and
    began the next with "h is a warning."."""
    env = demo_env(demo_redis)
    screen = run_on_terminal([*ESCTL, "doctor"], size=size, env=env)
    assert_reads_well(screen, exit_code=3)
    # A table row's text is its last cell (observed); other rows are prose, indented.
    lines = [row.rpartition("│")[2].strip() if "│" in row else row.strip() for row in screen.rows]
    assert quantity_splits(lines) == [], screen.describe()
    assert any("24 h is a warning." in line for line in lines), screen.describe()


@pytest.mark.parametrize("size", ["80x24", "120x40"])
def test_queue_list_on_a_terminal_keeps_subscriber_names_whole(
    size: str, demo_redis: servers.LocalRedis
) -> None:
    """Two columns of long names (event type, subscriber) and six of counts do not fit 80
    columns: the queues are listed under a heading per subscriber, every name whole on its
    row, instead of folding "Learning.Notific" / "ationSer…" (what the flat table did). At 120
    the flat table fits once ``retry data`` is left out."""
    env = demo_env(demo_redis)
    queues = json.loads(run_cli("queue", "list", "--json", env=env).stdout)["queues"]
    assert len({q["subscriber"] for q in queues}) >= 3
    screen = run_on_terminal([*ESCTL, "queue", "list"], size=size, env=env)
    assert_reads_well(screen)
    grouped = size == "80x24"
    for queue in queues:
        if grouped:
            start = screen.rows.index(f"subscriber {queue['subscriber']}")
            block = list(itertools.takewhile(bool, screen.rows[start + 1 :]))
        else:
            block = [r for r in screen.rows if f" {queue['subscriber']} " in r]
        rows = [r for r in block if r.startswith(f"{queue['event_type']} ")]
        assert len(rows) == 1, (queue, screen.describe())
        assert f" {queue['published']:,} " in rows[0] and f" {queue['dead']:,} " in rows[0]


def test_queue_list_on_40_columns_is_a_record_per_queue_under_its_subscriber(
    demo_redis: servers.LocalRedis,
) -> None:
    """At 40 columns (a terminal split in two) even a table per subscriber cannot hold the
    event type and the counts: it folded every event type and header over three to six rows
    ("Res" / "pon" / "seR"…). Each queue is a record under its subscriber instead, as other
    wide tables degrade; a 21-character event type stays whole beside its name (the names
    wrap at words to make room: "oldest" / "processing"), and every line fits the terminal."""
    env = demo_env(demo_redis)
    client = redis.Redis.from_url(demo_redis.url)
    long_type = "ItemScoreCommentAdded"
    subscriber = "Learning.SearchIndexer.Worker-Demo"
    client.sadd(f"Subscribers:{{{demo.DEMO_ENV}:{long_type}}}", subscriber)
    client.lpush(f"{subscriber}:{{{demo.DEMO_ENV}:{long_type}}}:PublishedEvents", b"{}")
    client.close()
    queues = json.loads(run_cli("queue", "list", "--json", env=env).stdout)["queues"]
    screen = run_on_terminal([*ESCTL, "queue", "list"], size="40x24", env=env)
    assert_reads_well(screen)
    assert screen.folded == [], screen.describe()
    found = []
    for queue in queues:
        start = screen.rows.index(queue["subscriber"])
        assert screen.rows[start - 1] == "subscriber", screen.describe()
        block = list(itertools.takewhile(bool, screen.rows[start + 1 :]))
        records = [
            list(rows)
            for is_rule, rows in itertools.groupby(block, lambda r: r.startswith("─"))
            if not is_rule
        ]
        mine = [r for r in records if re.fullmatch(rf"event type +│ {queue['event_type']}", r[0])]
        if len(mine) != 1:
            found.append(f"{queue['subscriber']} / {queue['event_type']}: {len(mine)} records")
            continue
        said = " ".join(" ".join(row.split()) for row in mine[0])
        for name, value in (("published", queue["published"]), ("dead", queue["dead"])):
            if f"{name} │ {value:,}" not in said:
                found.append(f"{queue['event_type']}: no {name} {value}")
    assert any(q["event_type"] == long_type for q in queues)
    assert not found, f"{'; '.join(found)}:\n{screen.describe()}"


@pytest.mark.parametrize("size", ["80x24", "120x40"])
@pytest.mark.parametrize(
    ("subscriber", "event_type", "which"),
    [
        ("Learning.NotificationService.Web-Demo", "ItemScoreCreated", "dead"),  # a 73-char key
        ("Learning.ReportingService.Worker-Demo", "ItemScoreUpdated", "processing"),  # 78
    ],
)
def test_queue_restore_on_a_terminal_keeps_the_list_key_whole(
    size: str,
    subscriber: str,
    event_type: str,
    which: str,
    demo_redis: servers.LocalRedis,
    tmp_path: Path,
) -> None:
    """The lists a restore put messages back into: a queue's key and three counts do not fit
    80 columns, so each key heads its counts on a row of its own, whole (as ``queue list``
    heads its queues with their subscriber), instead of a table that broke the key over two
    rows. At 120 the flat table fits."""
    env = demo_env(demo_redis)
    backup = tmp_path / "backup.jsonl.zst"
    drain = ["queue", "drain", subscriber, event_type, "--list", which]
    drained = run_cli(*drain, "--to-file", str(backup), "--yes", "--json", env=env)
    assert drained.returncode == 0, drained.stderr
    key = json.loads(drained.stdout)["key"]
    screen = run_on_terminal([*ESCTL, "queue", "restore", str(backup), "--yes"], size=size, env=env)
    assert_reads_well(screen)
    rows = [r for r in screen.rows if key in r]
    assert len(rows) == 1, screen.describe()
    row = rows[0]
    if size == "80x24":
        assert row in (f"list {key}", key), screen.describe()
        counts = screen.rows[screen.rows.index(row) + 3]
    else:
        counts = row
    assert re.fullmatch(r"(?:.*│ )?1 +│ 1 +│ 0", counts.strip()), screen.describe()


@pytest.mark.parametrize("size", ["80x24", "120x40"])
def test_queue_peek_on_a_terminal_keeps_aggregate_ids_whole(
    size: str, demo_redis: servers.LocalRedis
) -> None:
    """A dead letter's row: its aggregate id whole, the size, time stamp and version left out
    as far as that takes (named on stderr), the exception under the row."""
    env = demo_env(demo_redis)
    queues = json.loads(run_cli("queue", "list", "--json", env=env).stdout)["queues"]
    queue = next(q for q in queues if q["dead"])
    words = ["queue", "peek", queue["subscriber"], queue["event_type"], "--list", "dead"]
    messages = json.loads(run_cli(*words, "--json", env=env).stdout)["messages"]
    assert messages
    screen = run_on_terminal([*ESCTL, *words], size=size, env=env)
    assert_reads_well(screen)
    for message in messages:
        assert any(f" {message['aggregate_id']} " in row for row in screen.rows), screen.describe()
    if size == "80x24":
        assert any(row.startswith("(left out at this terminal width:") for row in screen.rows)


# The commands that list dead letters with their RetryData (a dry run changes nothing, so
# each sees the demo's dead letters as they are).
DEAD_LETTER_LISTS = {
    "peek": ["queue", "peek", "{sub}", "{type}", "--list", "dead"],
    "requeue --dry-run": ["queue", "requeue", "{sub}", "{type}", "--from", "dead", "--dry-run"],
    "drain --dry-run": ["queue", "drain", "{sub}", "{type}", "--list", "dead", "--dry-run"],
}


def _dead_letters(env: dict[str, str]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every queue of the store with dead letters, and its dead letters as peek --json has
    them (RetryData included)."""
    queues = json.loads(run_cli("queue", "list", "--json", env=env).stdout)["queues"]
    found = []
    for queue in (q for q in queues if q["dead"]):
        peek = ["queue", "peek", queue["subscriber"], queue["event_type"], "--list", "dead"]
        found.append((queue, json.loads(run_cli(*peek, "--json", env=env).stdout)["messages"]))
    return found


def _first_exception_line(message: dict[str, Any]) -> str | None:
    retry = message["retry"]
    if not retry or not retry["last_exception"]:
        return None
    return str(retry["last_exception"]).strip().splitlines()[0]


def _shown_whole(text: str, rows: list[str]) -> bool:
    """Whether ``text`` is on the screen word for word, though it may be wrapped over rows at
    its spaces (a table's rules between rows aside)."""
    shown = [w for row in rows for w in row.split() if w not in ("│", "┃")]
    words = text.split()
    return any(shown[i : i + len(words)] == words for i in range(len(shown)))


@pytest.mark.parametrize("command", list(DEAD_LETTER_LISTS))
def test_dead_letters_on_80x24_show_their_last_exception_whole(
    command: str, demo_store: Any, redis_test_url: str, app_name: str, env_name: str
) -> None:
    """The exception a dead letter failed with is what an operator reads to choose
    ``queue requeue --from dead --exception-contains TEXT``: at 80 columns each one's first
    line (its type and message) is on the screen whole, wrapped at words under its row, not
    cut to "Npgsql.PostgresExc…" in a table column (nor to 70 characters)."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_APP": app_name, "ESCTL_ENV": env_name}
    dead = _dead_letters(env)
    exceptions = [_first_exception_line(m) for _, messages in dead for m in messages]
    assert sum(1 for e in exceptions if e and len(e) > 70) >= 2, dead  # the demo has such
    for queue, messages in dead:
        words = [
            w.format(sub=queue["subscriber"], type=queue["event_type"])
            for w in DEAD_LETTER_LISTS[command]
        ]
        screen = run_on_terminal([*ESCTL, *words], env=env)
        assert_reads_well(screen)
        assert not any("…" in row for row in screen.rows), screen.describe()
        assert screen.folded == [], screen.describe()
        for message in messages:
            assert any(f" {message['aggregate_id']} " in row for row in screen.rows), (
                screen.describe()
            )
            line = _first_exception_line(message)
            if line is not None:
                assert _shown_whole(line, screen.rows), (line, screen.describe())


def test_dead_letters_to_a_pipe_keep_the_table_with_the_exception_whole(
    demo_store: Any, redis_test_url: str, app_name: str, env_name: str
) -> None:
    """To a pipe the dead letters stay one table of natural width, a row per message, its
    last column the exception's first line, whole (it was cut to 70 characters with "…")."""
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_APP": app_name, "ESCTL_ENV": env_name}
    for queue, messages in _dead_letters(env):
        words = ["queue", "peek", queue["subscriber"], queue["event_type"], "--list", "dead"]
        screen = run_on_terminal([*ESCTL, *words], env=env, pipe_stdout=True)
        assert_reads_well(screen)
        assert screen.stdout is not None
        lines = screen.stdout.splitlines()
        header = [c.strip() for c in lines[1].split("┃")]
        assert header == [
            "#", "aggregate", "version", "timestamp", "age", "bytes", "retries", "last exception"
        ], screen.describe()  # fmt: skip
        assert set(lines[2]) <= {"━", "╇"}, screen.describe()
        rows = lines[3:]
        assert len(rows) == len(messages), screen.describe()
        for row, message in zip(rows, messages, strict=True):
            cells = [c.strip() for c in row.split("│")]
            assert cells[:2] == [str(message["position"]), message["aggregate_id"]], row
            assert cells[-1] == (_first_exception_line(message) or "-"), screen.describe()


@pytest.mark.parametrize("size", ["80x24", "120x40"])
def test_config_show_on_a_terminal_keeps_values_whole(size: str) -> None:
    """A DSN and an app name whole on their rows: at 80 columns the environment variable
    (which the source names when it set the value) is left out, not the values folded."""
    env = {
        "ESCTL_REDIS_URL": "redis://127.0.0.1:6379/0",
        "ESCTL_PG_DSN": "postgresql://postgres@127.0.0.1:48519/postgres",
        "ESCTL_APP": "Learning.ScoringService.Web-Demo",
    }
    settings = json.loads(run_cli("config", "show", "--json", env=env).stdout)["settings"]
    screen = run_on_terminal([*ESCTL, "config", "show"], size=size, env=env)
    assert_reads_well(screen)
    for name, setting in settings.items():
        if setting["value"] is not None:
            rows = [r for r in screen.rows if r.startswith(f"{name} ")]
            assert len(rows) == 1 and f" {setting['value']} " in rows[0], screen.describe()
            assert setting["source"] in rows[0], screen.describe()
    if size == "120x40":
        assert any("ESCTL_PG_SCHEMA" in row for row in screen.rows), screen.describe()


def test_config_show_with_a_long_dsn_on_80_columns_is_records_with_values_whole() -> None:
    """A 54-character DSN and the demo's app name do not fit 80 columns even with the
    environment variable left out: they were folded mid-name ("postgresql://postgres@127.0."
    / "0.1:", "Learning.ScoringService.Web-" / "Demo"); each setting is a record instead,
    every value whole on its row."""
    env = {
        "ESCTL_REDIS_URL": "redis://127.0.0.1:6379/0",
        "ESCTL_PG_DSN": "postgresql://esctl@pg-primary.internal:5432/eventstore",
        "ESCTL_APP": "Learning.ScoringService.Web-Demo",
    }
    settings = json.loads(run_cli("config", "show", "--json", env=env).stdout)["settings"]
    screen = run_on_terminal([*ESCTL, "config", "show"], env=env)
    assert_reads_well(screen)
    for setting in settings.values():
        if setting["value"] is not None:
            assert any(
                re.fullmatch(rf"value +│ {re.escape(setting['value'])}", row) for row in screen.rows
            ), (
                setting,
                screen.describe(),
            )


@pytest.mark.parametrize("size", ["80x24", "120x40"])
def test_inspect_aggregate_on_a_terminal_keeps_event_types_and_commit_ids_whole(
    size: str, demo_redis: servers.LocalRedis
) -> None:
    """An aggregate's events, one row each with its event type and commit id whole: the
    problems column (listed below), bytes, gzip, where it is stored and, at 80 columns, the
    TimeStamp are left out (named on stderr), not every column folded over five rows."""
    env = demo_env(demo_redis)
    aggregate = "b77570a4-bf16-4da7-831d-bc3f0b286c70"  # legacy and partitioned, compressed
    words = ["inspect", "aggregate", aggregate]
    events = json.loads(run_cli(*words, "--json", env=env).stdout)["events"]
    assert len(events) == 4
    screen = run_on_terminal([*ESCTL, *words], size=size, env=env)
    assert_reads_well(screen)
    for event in events:
        rows = [r for r in screen.rows if f" {event['commit_id']} " in f"{r} "]
        assert len(rows) == 1 and f" {event['event_type']} " in rows[0], screen.describe()
        if size == "120x40":
            assert f" {event['timestamp']} " in rows[0], screen.describe()
    assert any(row.startswith("(left out at this terminal width:") for row in screen.rows)


def key_pieces(key: str) -> list[str]:
    """A Redis key cut after each ":" outside braces: where esctl may break a key too long
    for its column, each piece whole."""
    return re.findall(r"(?:\{[^}]*\}|[^:{])*(?::|$)", key)[:-1] or [key]


def shows_whole(screen: Screen, key: str) -> bool:
    """Whether ``key`` is on a row whole, or broken only between its pieces (key_pieces)."""
    return any(key in row for row in screen.rows) or all(
        any(piece in row for row in screen.rows) for piece in key_pieces(key)
    )


def test_key_pieces() -> None:
    assert key_pieces("{EventStore:App.Web}:41cbcc3a-0fdf") == [
        "{EventStore:App.Web}:",
        "41cbcc3a-0fdf",
    ]
    assert key_pieces("Sub.Worker:{demo:Type}:DeadLetters") == [
        "Sub.Worker:",
        "{demo:Type}:",
        "DeadLetters",
    ]


@pytest.mark.parametrize("size", ["80x24", "120x40"])
def test_integrity_problems_on_a_terminal_are_records_with_ids_whole(
    size: str, demo_redis: servers.LocalRedis
) -> None:
    """The planted defects: a table of kind, aggregate, 83-character key and detail cannot
    hold them at 80 columns (nor 120), so each is a record, a line per column: the kind,
    aggregate id and the ids the detail names whole on a row, a key broken (if at all) only after a ":"."""
    env = demo_env(demo_redis)
    problems = json.loads(run_cli("inspect", "integrity", "--json", env=env).stdout)["problems"]
    assert len(problems) == 5
    screen = run_on_terminal([*ESCTL, "inspect", "integrity"], size=size, env=env)
    assert_reads_well(screen, exit_code=3)
    for problem in problems:
        assert any(re.match(rf"kind +│ {problem['kind']}$", row) for row in screen.rows), (
            problem,
            screen.describe(),
        )
        assert shows_whole(screen, problem["key"]), (problem, screen.describe())
        ids = re.findall(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}", problem["detail"])
        for id_ in [problem["aggregate_id"] or "", *ids]:
            assert any(id_ in row for row in screen.rows), (problem, screen.describe())


@pytest.mark.parametrize("size", ["80x24", "120x40"])
def test_a_summary_s_problems_on_a_terminal_keep_their_keys_whole(
    size: str, demo_redis: servers.LocalRedis
) -> None:
    """The problems every summary lists (here a replay's dry run): when their keys would
    fold in the kind / key / detail table, each problem is a record, its key whole on a row
    and its detail wrapped at words."""
    env = demo_env(demo_redis)
    words = ["replay", "--from", "redis", "--all", "--to", "queue", "--dry-run"]
    problems = json.loads(run_cli(*words, "--json", env=env).stdout)["problems"]
    assert problems
    screen = run_on_terminal([*ESCTL, *words], size=size, env=env)
    assert_reads_well(screen, exit_code=3)
    for problem in problems:
        assert any(problem["key"] in row for row in screen.rows), (problem, screen.describe())
        detail = " ".join(row.rpartition("│ ")[2].strip() for row in screen.rows)
        assert problem["detail"] in detail, (problem, screen.describe())


FAILS_ON_VERSION_2 = """
class Fails:
    def handle(self, event):
        if event.version == 2:
            raise ValueError(f"version {event.version} is refused here")
"""


def test_replay_skip_errors_problems_on_80x24_keep_their_keys_whole(
    demo_redis: servers.LocalRedis, pg_dsn: str, tmp_path: Path
) -> None:
    """``replay --to projection --skip-errors``: each dead-lettered event is a problem whose
    key is ``<aggregate id> version 2``. The space made the key column prose to the table,
    wrapped at 30 cells, and a GUID was cut mid-id (``0635afef-…-d77ff2`` / ``4d04fd``); now
    a column narrower than its widest word folds it as an id column would, so the problems
    are records, every key whole on a row."""
    (tmp_path / "fails.py").write_text(FAILS_ON_VERSION_2)
    env = {**demo_env(demo_redis), "ESCTL_PG_DSN": pg_dsn}
    args = ["replay", "--from", "redis", "--all", "--to", "projection"]
    args += ["--projection", "fails.py:Fails", "--skip-errors"]
    screen = run_on_terminal([*ESCTL, *args], env=env, cwd=tmp_path)
    assert_reads_well(screen, exit_code=3)
    document = json.loads(run_cli(*args, "--json", env=env, cwd=tmp_path).stdout)
    keys = [p["key"] for p in document["problems"]]
    assert any(re.fullmatch(r"[0-9a-f-]{36} version 2", key) for key in keys), keys
    for key in keys:
        assert any(key in row for row in screen.rows), (key, screen.describe())


def test_break_line_keeps_words_and_ids_whole() -> None:
    key = "{EventStore:Learning.ScoringService.Web-Demo}:79a5fd62-1b75-4b20-bbde-a8c3d375eff1"
    assert wrapping.break_line(key, 100) == [key]
    assert wrapping.break_line(key, 60) == [
        "{EventStore:Learning.ScoringService.Web-Demo}:",
        "79a5fd62-1b75-4b20-bbde-a8c3d375eff1",
    ]
    # Too narrow for the braced part: it is broken after its own ":" too.
    assert wrapping.break_line(key, 40) == [
        "{EventStore:",
        "Learning.ScoringService.Web-Demo}:",
        "79a5fd62-1b75-4b20-bbde-a8c3d375eff1",
    ]
    assert wrapping.break_line(f"yes, entry 0 of {key}", 60) == [
        "yes, entry 0 of",
        "{EventStore:Learning.ScoringService.Web-Demo}:",
        "79a5fd62-1b75-4b20-bbde-a8c3d375eff1",
    ]
    # No ":" to break at: left whole, to fold.
    assert wrapping.break_line("41cbcc3a-0fdf-4cc6-ab8a-25fccda79077", 20) == [
        "41cbcc3a-0fdf-4cc6-ab8a-25fccda79077"
    ]


def test_break_line_keeps_a_number_and_its_unit_together() -> None:
    """Wrapped at words, but never between a number and its unit, nor between the two parts
    of a duration as format_duration writes it; other words after a number wrap as before."""
    why = "a spike in the last 24 h is a warning."
    assert wrapping.break_line(why, 22) == ["a spike in the last", "24 h is a warning."]
    assert wrapping.break_line("legacy hash 16.8 KiB (0.99%)", 16) == [
        "legacy hash",
        "16.8 KiB (0.99%)",
    ]
    assert wrapping.break_line("writes at risk (up to ~30 s lost)", 20) == [
        "writes at risk (up",
        "to ~30 s lost)",
    ]
    assert wrapping.break_line("SELECT 1 in 0.44 ms (connect 3 ms), no SSL", 31) == [
        "SELECT 1 in 0.44 ms (connect",
        "3 ms), no SSL",
    ]
    assert wrapping.break_line("plain over 1,000 bytes", 15) == ["plain over", "1,000 bytes"]
    assert wrapping.break_line("at least 1h 0m old", 11) == ["at least", "1h 0m old"]
    assert wrapping.break_line("1 processing, oldest 1d 2h old", 23) == [
        "1 processing, oldest",
        "1d 2h old",
    ]
    # A number before any other word is a word like the others.
    assert wrapping.break_line("holds 3 queue(s) with 2 dead", 7) == [
        "holds 3",
        "queue(s)",
        "with 2",
        "dead",
    ]
    assert quantity_splits(wrapping.break_line(why, 22)) == []
    assert quantity_splits(["a spike in the last 24", "h is a warning."]) != []


def test_a_url_is_not_cut_between_its_scheme_and_its_slashes() -> None:
    dsn = "postgresql://someone_with_a_long_name@db.internal.example.com:5432/events"
    assert wrapping.break_line(f"cannot connect to {dsn}: refused", 60) == [
        "cannot connect to",
        "postgresql://someone_with_a_long_name@db.internal.example.com:",
        "5432/events:",
        "refused",
    ]


def test_a_server_message_s_tab_counts_as_the_indent_it_shows() -> None:
    """PostgreSQL indents its detail line with a tab, which a terminal shows up to 8 columns
    wide: a line the wrapper measured with it as one cell was folded mid-word."""
    text = "connection failed\n\tIs the server running on that host and accepting TCP/IP conn?"
    lines = wrapping.hang("error: ", text, 80)
    assert lines[1].startswith("           Is the server")
    assert all(len(line.expandtabs()) <= 80 for line in lines)


def test_break_line_keeps_a_quoted_command_whole() -> None:
    """A command quoted in backticks is one word to the wrapper (a paste of it runs whole); a
    lone backtick (a generic type's name) is not a quote."""
    warning = "2 event(s) could not be read; `esctl inspect integrity` lists them"
    assert wrapping.break_line(warning, 40) == [
        "2 event(s) could not be read;",
        "`esctl inspect integrity` lists them",
    ]
    assert wrapping.break_line("queue Envelope`1 of Learning.Reporting", 20) == [
        "queue Envelope`1 of",
        "Learning.Reporting",
    ]


def test_break_line_keeps_a_quoted_command_whole_in_brackets_and_with_a_generic_name() -> None:
    """A quoted command after "(" is one word too, and a generic type's backtick inside one
    (`` 'Envelope`1' ``, a name quoted for a shell) neither ends nor starts a quote."""
    hint = "fix it (`redis-cli --cluster fix HOST:PORT`), then rerun"
    assert wrapping.break_line(hint, 30) == [
        "fix it",
        "(`redis-cli --cluster fix HOST:PORT`),",
        "then rerun",
    ]
    peek = "see why: `esctl queue peek Learning.Reporting 'Envelope`1' --list dead`; after a fix"
    assert wrapping.break_line(peek, 40) == [
        "see why:",
        "`esctl queue peek Learning.Reporting 'Envelope`1' --list dead`;",
        "after a fix",
    ]
    two = "`esctl compress --dry-run`, then `esctl compress --yes`"
    assert wrapping.break_line(two, 30) == [
        "`esctl compress --dry-run`,",
        "then `esctl compress --yes`",
    ]


def test_a_question_is_wrapped_with_its_prompt_on_the_last_line() -> None:
    """A question wraps as a message does (at words, a key whole at the margin or broken
    after a ":"), and its ``[y/N]`` goes at the end of the last line when the answer typed
    after ``[y/N]: `` still fits the row, else on a line of its own; one line off a
    terminal."""
    source = "Learning.ReportingService.Worker-Demo:{demo:ItemScoreUpdated}:ProcessingEvents"
    destination = "Learning.ReportingService.Worker-Demo:{demo:ItemScoreUpdated}:PublishedEvents"
    text = f"requeue 1 message from {source} to {destination}?"
    assert wrapping.question_lines(text, "[y/N]", None) == [f"{text} [y/N]"]
    assert wrapping.question_lines(text, "[y/N]", 200) == [f"{text} [y/N]"]
    assert wrapping.question_lines(text, "[y/N]", 80) == [
        "requeue 1 message from",
        source,
        "to",
        f"{destination}?",
        "[y/N]",
    ]
    assert wrapping.question_lines(text, "[y/N]", 60) == [
        "requeue 1 message from",
        "Learning.ReportingService.Worker-Demo:",
        "{demo:ItemScoreUpdated}:ProcessingEvents",
        "to",
        "Learning.ReportingService.Worker-Demo:",
        "{demo:ItemScoreUpdated}:PublishedEvents? [y/N]",
    ]
    # "[y/N]: " and the answer's cell after the last line: 71 + 9 fits 80, 72 + 9 does not
    for length, lines in [(71, 1), (72, 2)]:
        short = "x" * (length - 1) + "?"
        assert len(wrapping.question_lines(short, "[y/N]", 80)) == lines
        assert wrapping.question_lines(short, "[y/N]", 80)[-1].endswith("[y/N]")


@pytest.mark.parametrize("size", ["80x24", "120x40"])
def test_a_summary_on_a_terminal_breaks_a_long_key_after_a_colon(
    size: str, demo_redis: servers.LocalRedis
) -> None:
    """A queue's key (78 characters) in a two-column summary: the value column is narrower
    at 80 columns, so the key is broken after "Worker-Demo:", the subscriber and event type
    whole, not folded mid-name."""
    env = demo_env(demo_redis)
    words = ["queue", "requeue", "Learning.ReportingService.Worker-Demo", "ItemScoreUpdated"]
    words += ["--older-than", "5m", "--dry-run"]
    document = json.loads(run_cli(*words, "--json", env=env).stdout)
    screen = run_on_terminal([*ESCTL, *words], size=size, env=env)
    assert_reads_well(screen)
    for key in (document["source_key"], document["destination_key"]):
        assert shows_whole(screen, key), screen.describe()
        if size == "120x40":
            assert any(key in row for row in screen.rows), screen.describe()


def test_demo_on_a_terminal_keeps_subscribers_and_ids_whole() -> None:
    """``esctl demo`` at 80 columns: its queues under a heading per subscriber (as ``queue
    list``), each planted defect's key and commit id whole on their rows, the title wrapped
    at words, and each step of the tour's comment wrapped at words with a "# " on every row
    (pasted with its command, each row is still a comment): none cut by the terminal's own
    wrapping."""
    document = json.loads(run_cli("demo", "--json").stdout)
    summary = document["summary"]
    screen = run_on_terminal([*ESCTL, "demo"], timeout=300)
    assert_reads_well(screen)
    comments = [line for line in screen.folded if line.lstrip().startswith("#")]
    assert comments == [], screen.describe()
    blocks = [
        " ".join(row.removeprefix("  # ") for row in group)
        for is_comment, group in itertools.groupby(screen.rows, lambda r: r.startswith("  # "))
        if is_comment
    ]
    for step in document["tour"]:
        assert step["description"] in blocks, (step, screen.describe())
    assert any(f"{summary['app']}, env {summary['env']}" in row for row in screen.rows)
    for subscriber in {q["subscriber"] for q in summary["queues"]}:
        assert f"subscriber {subscriber}" in screen.rows, screen.describe()
    for defect in summary["defects"]:
        assert shows_whole(screen, defect["key"]), (defect, screen.describe())
        if defect["commit_id"]:
            assert any(defect["commit_id"] in row for row in screen.rows), screen.describe()


def bash_forms(commands: list[str]) -> list[str]:
    """Each command as bash reads it (``declare -f`` of a function running it): lines joined
    by a ``\\`` at their end read as the one-line command they were broken from."""
    script = "".join(f"f{i}() {{\n{command}\n}}\n" for i, command in enumerate(commands))
    script += "".join(f"declare -f f{i}; echo '--end--'\n" for i in range(len(commands)))
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    forms = result.stdout.split("--end--\n")[:-1]
    return [re.sub(r"^f\d+ ", "f ", form) for form in forms]


def printed_tour(rows: list[str]) -> list[tuple[str, str]]:
    """The tour as the screen shows it: (comment, command) per step, each made of its rows."""
    start = next(i for i, row in enumerate(rows) if row.startswith("Try next"))
    steps: list[tuple[list[str], list[str]]] = []
    for row in rows[start + 1 :]:
        if not row.startswith("  "):
            break
        if row.startswith("  # "):
            if not steps or steps[-1][1]:
                steps.append(([], []))
            steps[-1][0].append(row[4:])
        else:
            steps[-1][1].append(row)
    return [(" ".join(comment), "\n".join(command)) for comment, command in steps]


def test_demo_tour_on_80_columns_reads_and_pastes_as_written() -> None:
    """The tour ``esctl demo`` prints, at 80 columns: each step's description wrapped at words
    on comment rows of its own (a paste of the rows runs no prose), each command broken at its
    words with `` \\`` where it is too long, so that bash reads the rows on the screen as the
    one-line command (``--json``'s ``tour``). No row is folded by the terminal."""
    document = json.loads(run_cli("demo", "--json").stdout)
    screen = run_on_terminal([*ESCTL, "demo"], timeout=300)
    assert_reads_well(screen)
    tour = printed_tour(screen.rows)
    assert [comment for comment, _ in tour] == [s["description"] for s in document["tour"]]
    printed = [command for _, command in tour]
    assert bash_forms(printed) == bash_forms([s["command"] for s in document["tour"]])
    for command in printed:
        for row in command.splitlines():
            assert len(row) < 80 or " " not in row.strip(), screen.describe()


@pytest.mark.parametrize("width", [30, 50, 78])
def test_break_command_keeps_every_tour_command_as_bash_reads_it(
    width: int, redis_client: redis.Redis, app_name: str, env_name: str
) -> None:
    """Broken at any width, each step reads in bash as the one-line command; a row is longer
    than the width only where one word is."""
    summary = demo.write_demo_store(redis_client, app=app_name, env=env_name)
    commands = [step.command for step in demo_tour.tour(summary)]
    broken = ["\n".join(wrapping.break_command(c, width)) for c in commands]
    assert bash_forms(broken) == bash_forms(commands)
    for text in broken:
        assert text.count("\n") == text.count(" \\\n")  # every row but the last continues
        for row in text.splitlines():
            words = shlex.split(row.removesuffix(" \\"), posix=False)
            assert len(row) <= width or len(words) <= 2  # a word, or an option and its value


@pytest.mark.parametrize("size", ["80x24", "120x40"])
def test_query_table_on_a_terminal_keeps_ids_and_timestamps_whole(
    size: str, redis_test_url: str, demo_store: Any, app_name: str
) -> None:
    """The payload gives way (cut with "…", then left out as the other optional columns are)
    before an aggregate id or a timestamp would fold."""
    expected = query_results(redis_test_url, app_name)
    assert len(expected) == 6
    screen = run_on_terminal(
        [*ESCTL, *QUERY, "--format", "table"],
        size=size,
        env={"ESCTL_REDIS_URL": redis_test_url, "ESCTL_APP": app_name},
    )
    assert_reads_well(screen)
    for event in expected:
        rows = [r for r in screen.rows if r.startswith(f"{event['aggregate_id']} ")]
        assert any(event["timestamp"] in r for r in rows), (event, screen.describe())


def test_query_table_to_a_pipe_has_its_natural_width(
    redis_test_url: str, demo_store: Any, app_name: str
) -> None:
    """A table on stdout that is a pipe (a file, ``| less -S``) while stderr is the terminal:
    as wide as its cells, every commit id and timestamp whole on its row, no padding after
    the last column."""
    expected = query_results(redis_test_url, app_name)
    screen = run_on_terminal(
        [*ESCTL, *QUERY, "--format", "table"],
        env={"ESCTL_REDIS_URL": redis_test_url, "ESCTL_APP": app_name},
        pipe_stdout=True,
    )
    assert_reads_well(screen)
    assert screen.stdout is not None
    lines = screen.stdout.splitlines()
    for event in expected:
        assert any(
            event["timestamp"] in line and (event["commit_id"] or "") in line for line in lines
        ), (event, screen.stdout)
    assert max(len(line) for line in lines) > 120  # its own width, not the terminal's 80
    assert all(line == line.rstrip() for line in lines)


def spec(natural: int, *, prose: bool = False, payload: bool = False, header: int = 4) -> Any:
    return tables.ColumnSpec(natural, header, natural, prose, payload)


def test_plan_widths_natural_to_a_pipe_and_when_it_fits() -> None:
    specs = [spec(36), spec(33), spec(200, payload=True)]
    assert tables.plan_widths(specs, None) == [36, 33, 200]
    assert tables.plan_widths(specs[:2], 80) == [36, 33]


def test_plan_widths_payload_then_prose_give_way_before_ids() -> None:
    # 36 + 33 + gaps 9 = 78 of 120: the payload and the prose share the other 42.
    widths = tables.plan_widths(
        [spec(36), spec(33), spec(60, prose=True), spec(200, payload=True)], 120
    )
    assert widths[:2] == [36, 33] and widths[2] == 30 and sum(widths) + 9 == 120
    # At 80 an id must fold whatever happens: the widest columns, prose or ids, level down.
    widths = tables.plan_widths([spec(36), spec(33), spec(60, prose=True)], 80)
    assert sum(widths) + 6 == 80 and max(widths) - min(widths) <= 1


def test_a_prose_column_keeps_its_widest_word_or_counts_as_folding_an_id() -> None:
    """A cell with a space is prose, but its words may be ids (``<GUID> version 2``): the
    column gives way to 30 cells only down to its widest word, and narrower is a fold of an
    id (which makes a table of ``records`` show records, and leaves ``optional`` columns out
    first)."""
    guid = "0635afef-10b9-4ac9-b178-d77ff24d04fd"
    specs = [
        tables.ColumnSpec.of("kind", ["dead_lettered"]),
        tables.ColumnSpec.of("key", [f"{guid} version 2", "1001 version 2"]),
        tables.ColumnSpec.of("detail", ["ValueError: version 2 is refused here " * 3]),
    ]
    assert specs[1].prose and specs[1].word == len(guid)
    widths = tables.plan_widths(specs, 100)
    assert widths[1] >= len(guid) and widths[2] == 100 - 6 - widths[0] - widths[1]
    assert not tables.folds_tokens(specs, widths)
    assert tables.folds_tokens(specs, tables.plan_widths(specs, 80))


def test_plan_widths_never_lets_a_column_vanish() -> None:
    widths = tables.plan_widths([spec(1), spec(40), spec(40), spec(40), spec(40)], 30)
    assert all(w >= 1 for w in widths) and widths[0] == 1 and sum(widths) + 12 <= 30


# --- help ----------------------------------------------------------------------------------


def command_tree() -> list[tuple[list[str], Any]]:
    """Every command and group under esctl, as (path, Click command)."""

    def walk(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(every_command(), []))


def help_problems(screen: Screen, command: Any) -> list[str]:
    """What reads badly in a command's help: an option name not shown whole, a type label on a
    flag, a docstring paragraph not rewrapped as one (text lost, or a row broken before the
    next word would have run past the margin), an Example line joined to others or cut."""
    found = problems_on(screen)
    text = screen.text
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        for opt in [*param.opts, *param.secondary_opts]:
            if opt.startswith("-") and not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text):
                found.append(f"option {opt} not shown whole")
    if "<bool>" in text:
        found.append("a <bool> label")
    for name, sub in getattr(command, "commands", {}).items():  # a group's table of contents
        short = sub.get_short_help_str(limit=1000)
        if " ".join(text.split()).count(f"{name} {short}") != 1:
            found.append(f"{name}'s one-line help not shown whole ({short!r})")
    # Click's help is min(terminal, 120) - 2 wide; prose is indented by 2.
    width = min(screen.cols, 120) - 2
    for paragraph in (command.help or "").split("\n\n"):
        lines = paragraph.strip().splitlines()
        if lines and lines[0] == "\b":  # kept as written: each line whole on its own row(s)
            for line in lines[1:]:
                indented = "  " + line.strip()
                at = [i for i, row in enumerate(screen.rows) if row.startswith(indented[:40])]
                if not at or screen.logical_line_at(at[0], len(indented)) != indented:
                    found.append(f"verbatim line not whole on its own: {line.strip()!r}")
            continue
        words = paragraph.split()
        start = [i for i, row in enumerate(screen.rows) if row.split()[:3] == words[:3]]
        if not start:
            found.append(f"paragraph not shown: {paragraph[:60]!r}…")
            continue
        rows = []
        for row in screen.rows[start[0] :]:
            if not row.strip():
                break
            rows.append(row)
        if "".join("".join(rows).split()) != "".join(words):
            found.append(f"paragraph not shown whole: {paragraph[:60]!r}…")
        for row, after in itertools.pairwise(rows):
            word = after.split()[0]
            chunk = re.match(r"-*[^\s-]+-(?=\w)", word)  # a hyphenated word may break after "-"
            next_chunk = chunk[0] if chunk else word
            if len(row) + (0 if row.endswith("-") else 1) + len(next_chunk) <= width:
                found.append(f"ragged break after {row.strip()[-30:]!r} (next: {word!r})")
    return found


@pytest.mark.parametrize("size", list(SIZES))
def test_every_help_reads_whole(size: str) -> None:
    """``--help`` of esctl and of every group and command: option names whole, no type label
    on a flag, docstrings reflowed to the terminal as paragraphs, Example lines kept whole."""
    failures = []
    tree = command_tree()
    assert len(tree) > 20
    for path, command in tree:
        screen = run_on_terminal([*ESCTL, *path, "--help"], size=size)
        found = help_problems(screen, command)
        if found:
            failures.append(f"{'; '.join(found)}:\n{screen.describe()}")
    assert not failures, "\n\n".join(failures)


# --- prose, summaries and messages at 80 columns: wrapped by esctl, not folded by the terminal


def interrupted_run(env: dict[str, str], pg_dsn: str) -> None:
    """A migration of the demo store started and killed with SIGKILL after its first batch:
    its run recorded as running with no lock holder (``interrupted``), most of the store not
    migrated (a lag of years: the demo's TimeStamps are old)."""
    proc = start_cli(
        "migrate", "redis-to-pg", "--init-schema", "--rate", "1", "--batch-size", "1",
        "--no-progress", env=env,
    )  # fmt: skip
    try:

        def batch_committed() -> bool:
            assert proc.poll() is None, proc.communicate()
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                if conn.execute("SELECT to_regclass('esctl.migration_batch')").fetchone() == (
                    None,
                ):
                    return False
                row = conn.execute("SELECT count(*) FROM esctl.migration_batch").fetchone()
            return bool(row and row[0])

        wait_for(batch_committed, "the first batch")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()

    def interrupted() -> bool:
        document = json.loads(run_cli("migrate", "status", "--json", env=env).stdout)
        return [s["status"] for s in document["shards"]] == ["interrupted"]

    wait_for(interrupted, "PostgreSQL to notice the killed session")


def status_problems(screen: Screen, document: dict[str, Any]) -> list[str]:
    """What is wrong with ``migrate status --lag`` of an interrupted run on ``screen``: its
    status or lag cut, a number parted from its unit, a word of the PostgreSQL DSN broken,
    the notes not all there."""
    found = []
    [row] = [r for r in screen.rows if r.startswith("0/1 ")] or [""]
    if not re.match(r"0/1 +│ interrupted +│", row):
        found.append(f"the status not whole on its row: {row!r}")
    if not re.search(r"│ \d+d\d+h$", row):
        found.append(f"the lag (days and hours) not whole at the row's end: {row!r}")
    if quantity_splits(screen.rows):
        found.append(f"a number parted from its unit: {quantity_splits(screen.rows)}")
    for word in document["postgresql"].split():
        if not any(word in r for r in screen.rows):
            found.append(f"{word!r} (of the DSN) broken")
    words = " ".join(screen.text.split())
    lag = document["lag"]
    note = (
        f"lag (whole app): {lag['events_behind']:,} events in {lag['aggregates_behind']:,} "
        "aggregates not yet in PostgreSQL; oldest missing event"
    )
    if note not in words:
        found.append(f"{note!r} not shown")
    return found


def test_migrate_status_on_80_columns_keeps_statuses_lags_and_notes_whole(
    demo_redis: servers.LocalRedis, pg_dsn: str
) -> None:
    """``migrate status --lag`` of an interrupted run whose lag is years: the table leaves out
    ``started`` rather than fold "interrupted" or the lag, and the title (the DSN) and the
    notes wrap at words; before, the terminal folded them ("oldest missin" / "g event")."""
    env = {**demo_env(demo_redis), "ESCTL_PG_DSN": pg_dsn}
    interrupted_run(env, pg_dsn)
    document = json.loads(run_cli("migrate", "status", "--lag", "--json", env=env).stdout)
    screen = run_on_terminal([*ESCTL, "migrate", "status", "--lag"], env=env)
    assert_reads_well(screen)
    found = status_problems(screen, document)
    # A command wider than the terminal (the quarantine query, when the killed run had
    # quarantined aggregates) is on a row of its own, whole: the terminal folds it, esctl not.
    found += [
        f"folded by the terminal: {line!r}"
        for line in screen.folded
        if not wrapping.QUOTED_COMMAND.fullmatch(line.strip())
    ]
    assert not found, f"{'; '.join(found)}:\n{screen.describe()}"
    assert "(left out at this terminal width: started)" in screen.rows


def test_migrate_status_watch_on_80_columns_keeps_statuses_lags_and_notes_whole(
    demo_redis: servers.LocalRedis, pg_dsn: str
) -> None:
    """The same on the ``--watch`` screen, which drew its own table and wrapped its notes
    with textwrap: it folded "interrup" / "ted" and "quarantin" / "ed"; now the table is
    fitted and the notes wrapped as without --watch."""
    env = {**demo_env(demo_redis), "ESCTL_PG_DSN": pg_dsn}
    interrupted_run(env, pg_dsn)
    document = json.loads(run_cli("migrate", "status", "--lag", "--json", env=env).stdout)
    words = [*ESCTL, "migrate", "status", "--lag", "--watch", "--interval", "1"]
    with TerminalSession(words, env=env) as session:
        screen = session.wait_for(lambda s: "Ctrl-C to stop" in s.text, timeout=30)
        session.type("\x03")
        session.wait_exit(timeout=30)
    found = status_problems(screen, document)
    if not any("quarantined" in r for r in screen.rows):
        found.append("the header 'quarantined' broken")
    assert not found, f"{'; '.join(found)}:\n{screen.describe()}"


def test_migrate_status_watch_names_max_lag_as_the_table_does(
    demo_redis: servers.LocalRedis, pg_dsn: str
) -> None:
    """The note of a shard behind more than --max-lag names the option as it was given, on
    the ``--watch`` screen as under the table: "--max-lag 5m", where --watch wrote the
    seconds ("--max-lag 300s")."""
    env = {**demo_env(demo_redis), "ESCTL_PG_DSN": pg_dsn}
    interrupted_run(env, pg_dsn)
    note = "behind more than --max-lag 5m: shard 0/1"
    plain = run_cli("migrate", "status", "--max-lag", "5m", env=env)
    assert plain.returncode == 3 and note in plain.stdout, plain.stdout + plain.stderr
    words = [*ESCTL, "migrate", "status", "--max-lag", "5m", "--watch", "--interval", "1"]
    with TerminalSession(words, env=env) as session:
        screen = session.wait_for(lambda s: "Ctrl-C to stop" in s.text, timeout=30)
        session.type("\x03")
        session.wait_exit(timeout=30)
    assert note in " ".join(screen.text.split()), screen.describe()


def test_migrate_status_watch_notes_keep_a_number_and_its_unit_together() -> None:
    """The --watch notes of a store with millions of aggregates (more than a test can write)
    at 80 columns: textwrap ended a row with "in 0.0" and began the next with "s)"; the
    notes are wrapped by break_line now, which keeps a number with its unit."""
    from esctl.cli.migrate.status import _status_renderable
    from esctl.migrate.status import Lag, StatusReport

    now = datetime.now(UTC)
    report = StatusReport(
        app="Learning.ScoringService.Web-Prod",
        pg_schema="public",
        postgresql="postgresql://esctl@db.internal/events",
        checked_at=now,
        lag=Lag(
            aggregates_behind=1_234_567,
            events_behind=12_345_678,
            oldest_missing_at=now - timedelta(seconds=12.5),
        ),
        aggregates_scanned=1_234_567,
        lag_elapsed_s=0.04,
    )
    console = Console(width=80, file=io.StringIO(), color_system=None, emoji=False)
    console.print(_status_renderable(report, None, [], 2.0, 80))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert quantity_splits(lines) == [], "\n".join(lines)
    assert any("(1,234,567 aggregates scanned" in line for line in lines), "\n".join(lines)


def path_of_length(length: int, name: str) -> Path:
    """A path of exactly ``length`` characters to a file ``name…`` that does not exist yet, in
    a new folder under the system's temporary folder (removed at exit)."""
    folder = Path(tempfile.mkdtemp(prefix="esctl-wrap-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    stem, _, suffix = name.partition(".")
    padding = length - len(str(folder / f"{stem}.{suffix}"))
    assert padding >= 0, folder
    return folder / f"{stem}{'-' * min(padding, 1)}{'x' * max(padding - 1, 0)}.{suffix}"


def test_drain_and_restore_on_80_columns_keep_the_backup_file_whole(
    demo_redis: servers.LocalRedis,
) -> None:
    """A backup file's path (58 characters) is wider than the value column of the drain's and
    the restore's summaries at 80 columns: each shows it above its table on a row of its own,
    whole, and drain's ``undo with:`` puts its command on a row of its own, whole, instead of
    the table and the terminal breaking the path anywhere ("…/dead-le" / "tters…")."""
    env = demo_env(demo_redis)
    backup = path_of_length(58, "dead-letters.jsonl.zst")
    assert len(str(backup)) == 58
    drain = ["queue", "drain", "Learning.NotificationService.Web-Demo", "ItemScoreCreated"]
    drained = run_on_terminal(
        [*ESCTL, *drain, "--list", "dead", "--to-file", str(backup), "--yes"], env=env
    )
    assert_reads_well(drained)
    restored = run_on_terminal([*ESCTL, "queue", "restore", str(backup), "--yes"], env=env)
    assert_reads_well(restored)
    for screen in (drained, restored):
        assert any(row in (str(backup), f"backup file {backup}") for row in screen.rows), (
            screen.describe()
        )
        assert screen.folded == [], screen.describe()
    assert f"esctl queue restore {backup}" in drained.rows, drained.describe()
    assert re.search(r"^restored +│ 1$", restored.text, re.MULTILINE), restored.describe()


def test_a_command_to_copy_on_80_columns_goes_whole_on_a_row_of_its_own(
    demo_redis: servers.LocalRedis, pg_dsn: str
) -> None:
    """``compress --dry-run``'s ``run it:`` and a migration's ``All 4 problems:``: the command
    (the query) starts a row of its own, so a triple-click selects it alone, and one that fits
    80 columns is not folded ("…--threshold 500 --y" / "es")."""
    env = {**demo_env(demo_redis), "ESCTL_PG_DSN": pg_dsn}
    compress = run_on_terminal([*ESCTL, "compress", "--threshold", "500", "--dry-run"], env=env)
    assert_reads_well(compress)
    command = f"esctl compress --app {demo.DEMO_APP} --threshold 500 --yes"
    assert compress.rows[-2:] == ["run it:", command], compress.describe()
    assert compress.folded == [], compress.describe()
    words = ["migrate", "redis-to-pg", "--init-schema", "--no-progress"]
    migrated = run_on_terminal([*ESCTL, *words], env=env)
    assert_reads_well(migrated, exit_code=3)
    query = next(line for line in migrated.written if line.startswith("SELECT DISTINCT "))
    assert "All 4 problems:" in migrated.written, migrated.describe()
    start = migrated.rows.index("All 4 problems:") + 1
    assert migrated.logical_line_at(start, len(query)) == query, migrated.describe()


def test_events_query_on_80_columns_shows_records_when_guids_do_not_fit(
    demo_redis: servers.LocalRedis,
) -> None:
    """Events of aggregates with GUID ids: the aggregate id and the timestamp do not fit 80
    columns beside the version and event type even with the optional columns left out, so
    every event is a record (a line per column), its ids and timestamp whole, instead of a
    table that folded each of them over five rows."""
    env = demo_env(demo_redis)
    words = ["events", "query", "--aggregate-type", "ItemScore", "--limit", "3"]
    expected = [json.loads(line) for line in run_cli(*words, env=env).stdout.splitlines()]
    assert len(expected) == 3 and all(len(e["aggregate_id"]) == 36 for e in expected)
    screen = run_on_terminal([*ESCTL, *words, "--format", "table"], env=env)
    assert_reads_well(screen)
    for event in expected:
        for name, key in [("aggregate", "aggregate_id"), ("TimeStamp", "timestamp")]:
            assert re.search(rf"^{name} +│ {re.escape(event[key])}$", screen.text, re.MULTILINE), (
                event,
                screen.describe(),
            )
        assert re.search(rf"│ {event['commit_id']}$", screen.text, re.MULTILINE), screen.describe()
    assert screen.folded == [], screen.describe()


# Commands whose free text (notes, warnings, errors, messages on stderr) a terminal folded at
# 80 columns, each with its exit code and environment (on top of the demo store's and the
# test's PostgreSQL); "{missing}" is a path of 75 characters that does not exist.
PROSE_COMMANDS: dict[str, tuple[list[str], int, dict[str, str]]] = {
    "migrate status without runs": (["migrate", "status", "--lag"], 0, {}),
    "events query's warning": (["events", "query", "--type", "OrderPlaced"], 0, {}),
    "doctor without PostgreSQL": (["doctor"], 3, {"ESCTL_PG_DSN": ""}),
    "an error naming a file": (["queue", "restore", "{missing}", "--yes"], 1, {}),
    "replay --to stdout's problems": (
        ["replay", "--from", "redis", "--all", "--to", "stdout"],
        3,
        {},
    ),
}


@pytest.mark.parametrize("case", list(PROSE_COMMANDS))
def test_free_text_on_80_columns_is_wrapped_at_words_not_folded(
    case: str, demo_redis: servers.LocalRedis, pg_dsn: str
) -> None:
    """Every line a command writes to the terminal fits it (stdout a pipe where it is data):
    notes, warnings, errors, hints and messages wrap at words, continued under their first
    word, a path whole on a row, a `quoted command` whole; only a quoted command wider than
    the terminal (doctor's example with a long subscriber name) is left to fold, alone on
    its row."""
    words, code, extra = PROSE_COMMANDS[case]
    env = {**demo_env(demo_redis), "ESCTL_PG_DSN": pg_dsn, **extra}
    missing = path_of_length(75, "no-such-backup.jsonl.zst")
    words = [str(missing) if w == "{missing}" else w for w in words]
    screen = run_on_terminal([*ESCTL, *words], env=env, pipe_stdout="replay" in words)
    assert_reads_well(screen, exit_code=code, error_expected=code == 1)
    assert folded_mid_word(screen) == [], screen.describe()
    assert quantity_splits(screen.rows) == [], screen.describe()
    if "{missing}" in PROSE_COMMANDS[case][0]:
        assert f"{missing}:" in screen.rows, screen.describe()
    if case == "events query's warning":
        assert any("`esctl inspect integrity`" in row for row in screen.rows), screen.describe()
    if case == "doctor without PostgreSQL":
        skipped = [r for r in screen.rows if r.startswith("skipped postgresql checks: ")]
        assert skipped, screen.describe()


# --- hints and doctor's do: lines on 80 columns ---------------------------------------------


def folded_mid_word(screen: Screen) -> list[str]:
    """The lines the terminal folded (wider than it) but one quoted command on a row of its
    own, which esctl never breaks: a terminal may fold it, a paste still runs it whole."""
    return [
        line
        for line in screen.folded
        if not wrapping.QUOTED_COMMAND.fullmatch(line.strip().lstrip("(").rstrip("),.;:"))
    ]


def hint_blocks(screen: Screen, head: str, first: str) -> list[list[str]]:
    """The runs of lines written for a ``head`` (``"  what to do: "``, ``"  do: "``) whose
    text starts with the word ``first``: the line that starts with the head (alone, when the
    text starts with a command at the margin), then its continuations: under the text's
    first word, or a quoted command at the margin."""
    blocks = []
    for i, line in enumerate(screen.written):
        if not (line.startswith(head + first) or line == head.rstrip()):
            continue
        block = [line]
        for after in screen.written[i + 1 :]:
            if not (
                after.startswith(" " * len(head))
                or wrapping.QUOTED_COMMAND.match(after.lstrip("("))
            ):
                break
            block.append(after)
        blocks.append(block)
    return blocks


def hint_problems(screen: Screen, head: str, text: str) -> list[str]:
    """What is wrong with how ``text`` (a hint, an action: as --json has it) was written after
    ``head`` on ``screen``: its words not there in order, a line of it wider than the terminal
    that is not one quoted command, or a quoted command not whole on a line (and, when it fits
    the terminal, on a row)."""

    def words(block: list[str]) -> list[str]:
        return " ".join(line.strip() for line in block).removeprefix(head.strip()).split()

    blocks = hint_blocks(screen, head, text.split()[0])
    block = next((b for b in blocks if words(b) == text.split()), None)
    if block is None:
        return [f"the words of {text!r} are not all there in order: {blocks}"]
    found = []
    for line in block:
        if len(line) > screen.cols and not wrapping.QUOTED_COMMAND.fullmatch(
            line.strip().lstrip("(").rstrip("),.;:")
        ):
            found.append(f"folded mid-word: {line!r}")
    for command in (m[0] for m in wrapping.QUOTED_COMMAND.finditer(text)):
        if not any(command in line for line in block):
            found.append(f"{command} broken over lines")
        elif len(command) <= screen.cols and not any(command in row for row in screen.rows):
            found.append(f"{command} folded, though it fits a row")
    return found


LONG_ENV = "production-eu-west-1-blue-green-canary-2024"
NO_PG = "postgresql://a_rather_long_user_name_for_the_reporting_service@127.0.0.1:1/events"
# Errors whose hint does not fit one row of 80 columns, each with its exit code; "{redis}":
# the test's Redis.
LONG_HINTS: dict[str, tuple[list[str], int]] = {
    # "…ESCTL_PG_DSN is r" / "ight"
    "unreachable PostgreSQL": (["migrate", "status", "--app", "X", "--pg-dsn", NO_PG], 1),
    # two commands to copy in the hint
    "drain without a backup file": (["queue", "drain", "Sub", "Type", "--env", "demo"], 2),
    # a hint with an example, then the expression and a caret under its bad column
    "a bad --where": (
        ["events", "query", "--app", "X", "--where", "Rubric.Name~~Essay and Score>=7"],
        2,
    ),
    # a command (72 characters) too wide for the hint's indent: whole, at the margin
    "no such queue in a long env": (
        ["queue", "peek", "Sub", "Type", "--env", LONG_ENV, "--redis-url", "{redis}"],
        1,
    ),
}


@pytest.mark.parametrize("case", list(LONG_HINTS))
def test_a_long_hint_on_80_columns_wraps_at_words_with_its_commands_whole(
    case: str, redis_test_url: str
) -> None:
    """An error's ``what to do:`` went out as one line, which the terminal folded mid-word
    ("…is r" / "ight"); now it wraps at words, continued under its first word, each command
    quoted in backticks whole on a row (a command too wide for the indent at the margin), the
    same text as --json's hint. Lines after the hint's first (a --where expression and its
    caret) stay as they were, the caret under its column."""
    words, code = LONG_HINTS[case]
    words = [redis_test_url if w == "{redis}" else w for w in words]
    document = json.loads(run_cli(*words, "--json").stdout)
    hint, _, pointer = document["error"]["hint"].partition("\n")
    assert len("  what to do: " + hint) > 80
    screen = run_on_terminal([*ESCTL, *words])
    assert_reads_well(screen, exit_code=code, error_expected=True)
    assert folded_mid_word(screen) == [], screen.describe()
    assert hint_problems(screen, "  what to do: ", hint) == [], screen.describe()
    if pointer:
        expression, caret = pointer.split("\n")
        assert screen.rows[-2:] == [expression, caret], screen.describe()
    if case == "no such queue in a long env":
        command = f"`esctl queue list --env {LONG_ENV}`"
        assert screen.rows[-3:-1] == ["  what to do:", command], screen.describe()


def test_doctor_s_do_lines_on_80_columns_wrap_at_words_with_their_commands_whole(
    demo_redis: servers.LocalRedis,
) -> None:
    """doctor's ``do:`` lines went out as one line each, which the terminal folded mid-word
    ("…or your provider's" / "parameter group", "60-" / "70%"); now each wraps at words,
    continued under its first word, every command quoted in backticks whole on a row (one
    wider than the terminal, the stuck queue's example, whole on a row of its own, left to
    the terminal to fold), the same text as --json's ``action``."""
    env = demo_env(demo_redis)
    report = json.loads(run_cli("doctor", "--json", env=env).stdout)
    actions = [c["action"] for c in report["checks"] if c["status"] != "ok" and c["action"]]
    assert sum(len("  do: " + a) > 80 for a in actions) >= 5, actions
    assert any("`CONFIG SET maxmemory-policy noeviction`" in a for a in actions), actions
    screen = run_on_terminal([*ESCTL, "doctor"], env=env)
    assert_reads_well(screen, exit_code=3)
    assert folded_mid_word(screen) == [], screen.describe()
    for action in actions:
        assert hint_problems(screen, "  do: ", action) == [], (action, screen.describe())
