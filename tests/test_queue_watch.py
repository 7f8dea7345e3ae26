"""``esctl queue list --watch``: the readings and their rates (esctl.queues.watch, on a real
Redis with a clock of the test's own), the picture at 80 columns, and the command on a real
pty (``terminal.TerminalSession``): new depths appear, Ctrl-C exits 130 and gives the cursor
back, a lost server ends it with exit 1; refused without a terminal."""

from __future__ import annotations

import json
import re
from typing import Any

import redis
from helpers import run_cli_together
from rich.cells import cell_len
from terminal import ESCTL, Screen, TerminalSession, problems_on

from esctl import layout, queues, redisio, servers
from esctl.cli.queue_watch import format_rate, watch_lines


class Clock:
    """Seconds the test sets."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def by_queue(reading: queues.WatchReading) -> dict[tuple[str, str], tuple[Any, Any]]:
    return {
        (q.subscriber, q.event_type): (q, r)
        for q, r in zip(reading.listing.queues, reading.rates, strict=True)
    }


def test_rates_are_the_change_of_length_per_second_and_keys_are_rescanned(
    redis_client: redis.Redis, redis_test_url: str, env_name: str
) -> None:
    published = layout.queue_key("Sub.A", env_name, "Created", "published")
    dead = layout.queue_key("Sub.A", env_name, "Created", "dead")
    redis_client.lpush(published, *[b"m"] * 4)
    clock = Clock()
    client = redisio.connect(redis_test_url)
    watch = queues.QueueWatch(client, env_name, rescan_s=30.0, clock=clock)

    first = watch.read()
    assert first.scanned and first.seconds_since_previous is None
    [(status, rates)] = by_queue(first).values()
    assert status.published == 4 and rates == queues.QueueRates(None, None, None)

    redis_client.lpush(published, *[b"m"] * 10)  # 10 in
    redis_client.rpop(published, 4)  # 4 taken
    redis_client.lpush(dead, b"d", b"d", b"d")
    clock.now = 2.0
    second = watch.read()
    assert not second.scanned and second.seconds_since_previous == 2.0
    status, rates = by_queue(second)[("Sub.A", "Created")]
    assert (status.published, status.dead) == (10, 3)
    assert rates == queues.QueueRates(published=3.0, processing=0.0, dead=1.5)

    # A queue made meanwhile appears with the next scan, not before; then it has no rate yet.
    redis_client.lpush(layout.queue_key("Sub.B", env_name, "Created", "published"), b"m")
    clock.now = 3.0
    assert ("Sub.B", "Created") not in by_queue(watch.read())
    clock.now = 40.0
    fourth = watch.read()
    assert fourth.scanned
    _, new_rates = by_queue(fourth)[("Sub.B", "Created")]
    assert new_rates.published is None
    assert by_queue(fourth)[("Sub.A", "Created")][1].published == 0.0

    # A slow scan is repeated less often: at most SCAN_SHARE (5 %) of the time scanning.
    assert watch._found is not None
    watch._found.elapsed_s = 3.0  # as a scan of a large keyspace takes
    assert not watch.due_for_scan(40.0 + 59.0) and watch.due_for_scan(40.0 + 60.0)


def test_a_watch_that_found_no_queue_scans_again_sooner(
    redis_client: redis.Redis, redis_test_url: str, env_name: str
) -> None:
    """Nothing matched: the keys are scanned again after RESCAN_EMPTY_S, not RESCAN_S (still
    at most SCAN_SHARE of the time); once a queue is found, after RESCAN_S again."""
    clock = Clock()
    watch = queues.QueueWatch(redisio.connect(redis_test_url), env_name, rescan_s=30.0, clock=clock)
    assert watch.read().listing.queues == []
    assert not watch.due_for_scan(4.9) and watch.due_for_scan(5.0)
    assert watch._found is not None
    watch._found.elapsed_s = 1.0  # a slow scan: every 20 s at the most
    assert not watch.due_for_scan(19.9) and watch.due_for_scan(20.0)

    redis_client.lpush(layout.queue_key("Sub.A", env_name, "Created", "published"), b"m")
    clock.now = 20.0
    found = watch.read()
    assert found.scanned and [q.subscriber for q in found.listing.queues] == ["Sub.A"]
    assert not watch.due_for_scan(20.0 + 29.9) and watch.due_for_scan(20.0 + 30.0)


def test_format_rate() -> None:
    assert [format_rate(r) for r in (None, 0.0, 0.01, 3.0, -1.5, 1234.56)] == [
        "-",
        "0",
        "0",
        "+3",
        "-1.5",
        "+1,234.6",
    ]


def test_picture_fits_80_columns_and_leaves_columns_out_when_narrower(
    redis_test_url: str, demo_store: Any
) -> None:
    watch = queues.QueueWatch(redisio.connect(redis_test_url), demo_store.env)
    reading = watch.read()
    lines = [line.plain for line in watch_lines(reading, every="2s", width=80, height=40)]
    assert max(cell_len(line) for line in lines) <= 80, "\n".join(lines)
    assert not any("left out" in line for line in lines), "\n".join(lines)
    assert len([line for line in lines if re.match(r"  \S", line)]) == len(demo_store.queues)
    for width, left_out in ((62, "dead Δ/s"), (50, "published Δ/s, oldest, dead Δ/s")):
        narrow = [line.plain for line in watch_lines(reading, every="2s", width=width, height=40)]
        assert max(cell_len(line) for line in narrow) <= width, "\n".join(narrow)
        note = f"(left out at this terminal width: {left_out})"
        assert note in " ".join(narrow), "\n".join(narrow)
    short = [line.plain for line in watch_lines(reading, every="2s", width=80, height=12)]
    assert len(short) == 11 and "more rows:" in short[-1], "\n".join(short)


def test_picture_of_an_env_with_no_queues_is_the_header_alone(
    redis_test_url: str, env_name: str
) -> None:
    reading = queues.QueueWatch(redisio.connect(redis_test_url), env_name).read()
    lines = [line.plain for line in watch_lines(reading, every="2s", width=80, height=24)]
    assert lines[0].startswith(f"queues of env {env_name} (0) at "), "\n".join(lines)
    assert re.fullmatch(r" +published +Δ/s +processing +oldest +dead +Δ/s", lines[-1]), lines


def queue_row(screen: Screen, subscriber: str, event_type: str) -> list[str] | None:
    """The figures of one queue's row: the row of ``event_type`` under ``subscriber``."""
    under = False
    for row in screen.rows:
        if not row.startswith(" "):
            under = row == subscriber
        elif under and row.startswith(f"  {event_type} "):
            return row.split()[1:]
    return None


def test_watch_on_a_terminal_shows_new_depths_and_stops_on_ctrl_c(
    redis_client: redis.Redis, redis_test_url: str, demo_store: Any
) -> None:
    sub, kind = demo_store.samples["dead_subscriber"], demo_store.samples["dead_event_type"]
    published = layout.queue_key(sub, demo_store.env, kind, "published")
    before = redis_client.llen(published)
    args = ["queue", "list", "--watch", "--interval", "0.2"]
    with TerminalSession(
        [*ESCTL, *args, "--redis-url", redis_test_url, "--env", demo_store.env]
    ) as session:
        screen = session.wait_for(lambda s: queue_row(s, sub, kind) is not None)
        assert re.search(
            r"queues of env \S+ \(\d+\) at \d\d:\d\d:\d\d UTC, every 0\.2s", screen.text
        )
        assert re.search(r"published +Δ/s +processing +oldest +dead +Δ/s", screen.text)
        assert max(len(row) for row in screen.rows) <= 80
        redis_client.lpush(published, *[b"m"] * 1234)
        depth = f"{before + 1234:,}"
        screen = session.wait_for(lambda s: (queue_row(s, sub, kind) or [""])[0] == depth)
        session.type("\x03")  # Ctrl-C
        screen = session.wait_exit()
    assert not problems_on(screen, exit_code=130), screen.describe()
    assert queue_row(screen, sub, kind) is not None  # the last picture stays
    raw = bytes(session.raw)
    assert raw.rfind(b"\x1b[?25h") > raw.rfind(b"\x1b[?25l") >= 0  # the cursor shown again


def test_watch_exits_1_when_redis_goes_away(env_name: str) -> None:
    server = servers.start_redis()
    try:
        client = redis.Redis.from_url(server.url)
        client.lpush(layout.queue_key("Sub.A", env_name, "Created", "published"), b"m")
        client.close()
        args = ["queue", "list", "--watch", "--interval", "0.2", "--env", env_name]
        with TerminalSession([*ESCTL, *args, "--redis-url", server.url]) as session:
            session.wait_for(lambda s: queue_row(s, "Sub.A", "Created") is not None)
            server.stop()
            screen = session.wait_exit(timeout=30)
    finally:
        server.stop()
    assert not problems_on(screen, exit_code=1, error_expected=True), screen.describe()
    assert re.search(r"error: .*(connect|connection|Redis)", screen.text, re.I), screen.describe()


def test_watch_is_refused_without_a_terminal_and_with_json(redis_test_url: str) -> None:
    base = ["queue", "list", "--redis-url", redis_test_url, "--env", "production"]
    refusals = [
        (["--interval", "5s"], "--interval needs --watch"),
        (["--watch", "--interval", "10ms"], "shorter than 100ms"),
        (["--watch", "--interval", "soon"], "cannot read the duration"),
        (["--watch", "--metrics-file", "q.prom"], "--metrics-file does not go with --watch"),
    ]
    piped, as_json, *refused = run_cli_together(
        [[*base, "--watch"], [*base, "--watch", "--json"], *([*base, *e] for e, _ in refusals)]
    )
    assert piped.returncode == 2, piped.stderr
    assert "needs a terminal on stdout" in piped.stderr and "--json" in piped.stderr
    assert piped.stdout == ""

    assert as_json.returncode == 2, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["error"]["kind"] == "usage" and "--json" in document["error"]["message"]

    for (extra, message), result in zip(refusals, refused, strict=True):
        assert result.returncode == 2 and message in result.stderr, (extra, result.stderr)


def said_under_the_table(screen: Screen) -> str:
    """The notes under the table, each as one line (their rows joined)."""
    rows = screen.rows
    start = next((i for i, row in enumerate(rows) if row.startswith("note: ")), len(rows))
    return " ".join(rows[start:]).replace(" note: ", "\nnote: ")


def test_watch_of_a_mistyped_env_names_the_envs_there_are_until_a_queue_appears(
    redis_client: redis.Redis, redis_test_url: str, demo_store: Any
) -> None:
    typo = demo_store.env[:-1]  # one letter short, as a typo is
    args = ["queue", "list", "--watch", "--interval", "0.2", "--env", typo]
    with TerminalSession([*ESCTL, *args, "--redis-url", redis_test_url]) as session:
        screen = session.wait_for(lambda s: "check --env" in said_under_the_table(s))
        assert said_under_the_table(screen) == (
            f"note: env {typo} has no queues in Redis {redisio.describe_url(redis_test_url)} "
            f"(no Subscribers:{{{typo}:TYPE}} set, queue list or RetryData hash); environments "
            f"with queues here: {demo_store.env}; check --env / ESCTL_ENV"
        ), screen.describe()
        assert re.search(rf"queues of env {typo} \(0\) at ", screen.text), screen.describe()
        assert max(len(row) for row in screen.rows) <= 80 and not screen.folded
        noted = said_under_the_table(screen)
        first_at = re.findall(r" at (\S+ UTC)", screen.text)
        # A later picture (its time changed), read once it is drawn to its last row (the
        # terminal may be read between two writes of one picture): the same note.
        screen = session.wait_for(
            lambda s: (
                re.findall(r" at (\S+ UTC)", s.text) != first_at
                and said_under_the_table(s).endswith("ESCTL_ENV")
            )
        )
        assert said_under_the_table(screen) == noted, screen.describe()  # still there

        # The watch keeps running: a queue made in that env appears with the next scan (within
        # 5 s while no queue matches), and the note is gone with it.
        redis_client.lpush(layout.queue_key("Sub.A", typo, "Created", "published"), b"m")
        screen = session.wait_for(
            lambda s: queue_row(s, "Sub.A", "Created") is not None and "note:" not in s.text,
            timeout=20,
        )
        assert (queue_row(screen, "Sub.A", "Created") or [""])[0] == "1", screen.describe()
        session.type("\x03")
        screen = session.wait_exit()
    assert not problems_on(screen, exit_code=130), screen.describe()
    assert "note:" not in screen.text, screen.describe()


def test_watch_of_a_mistyped_type_names_the_types_there_are_and_a_right_one_no_note(
    redis_test_url: str, demo_store: Any
) -> None:
    sub, kind = demo_store.samples["dead_subscriber"], demo_store.samples["dead_event_type"]
    base = [*ESCTL, "queue", "list", "--watch", "--interval", "0.2", "--env", demo_store.env]
    base += ["--redis-url", redis_test_url, "--subscriber", sub]
    with TerminalSession([*base, "--type", kind + "s"]) as session:
        screen = session.wait_for(lambda s: "check --type" in said_under_the_table(s))
        said = said_under_the_table(screen)
        assert said.startswith(
            f"note: event type {kind}s has no queue in env {demo_store.env}; event types with "
            f"queues in this environment: {kind}, "
        ), screen.describe()
        assert "\n" not in said and max(len(row) for row in screen.rows) <= 80, screen.describe()
        session.type("\x03")
        assert not problems_on(session.wait_exit(), exit_code=130)

    with TerminalSession([*base, "--type", kind]) as session:
        screen = session.wait_for(lambda s: queue_row(s, sub, kind) is not None)
        # A note would be drawn with the first picture (the look-up goes with the first scan).
        session.type("\x03")
        screen = session.wait_exit()
    assert not problems_on(screen, exit_code=130), screen.describe()
    assert queue_row(screen, sub, kind) is not None and "note:" not in screen.text, (
        screen.describe()
    )
