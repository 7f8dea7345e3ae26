"""Work in flight at a distance (esctl/inflight.py, redisio.windowed, SCAN's growing COUNT): the
depth follows the measured latency against the time per item, results keep their order, errors
arrive where they belong, and through a latency-adding relay (bench/relay.py) the windowed and
in-flight reads cost far fewer round trips than one at a time."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from helpers import alive
from test_bench_relay import relay_module

from esctl import inflight, layout, queues, redisio
from esctl.queues import scripts
from esctl.redisio.scan import scan_count_after

DELAY = 0.010
"""One way through the relay: a round trip costs 20 ms, far above anything else here."""


@pytest.fixture
def far_url(redis_test_url: str) -> Iterator[str]:
    """``redis_test_url`` through a relay adding DELAY each way."""
    parts = urlsplit(redis_test_url)
    assert parts.hostname is not None and parts.port is not None
    with relay_module.Relay((parts.hostname, parts.port), DELAY) as relay:
        user = parts.netloc.rpartition("@")[0]
        host = f"127.0.0.1:{relay.port}"
        yield urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host))


def test_depth_is_the_bandwidth_delay_product_plus_one_within_bounds() -> None:
    assert inflight.depth_for(0.0, 0.005) == 1  # no latency to hide
    assert inflight.depth_for(0.0001, 0.005) == 2  # loopback: one ahead
    assert inflight.depth_for(0.0024, 0.0025) == 2
    assert inflight.depth_for(0.010, 0.0025) == 5
    assert inflight.depth_for(1.0, 0.001) == inflight.MOST  # capped: memory
    assert inflight.depth_for(1.0, 0.001, most=3) == 3
    assert inflight.depth_for(0.0001, 0.005, least=3) == 3
    assert inflight.depth_for(0.002, 0.0) == inflight.MOST  # an idle consumer


def test_pace_follows_the_measurements() -> None:
    pace = inflight.Pace(start=2, most=8)
    for _ in range(20):
        pace.observe(0.020, 0.004)  # 20 ms to get an item, 4 ms to use it
    assert pace.depth == 6
    for _ in range(30):
        pace.observe(0.001, 0.004)  # the server came near
    assert pace.depth == 2
    assert pace.deepest == 6


def test_ordered_map_keeps_order_and_grows_its_depth_when_items_are_slow_to_come() -> None:
    rng = random.Random(7)
    naps = [rng.uniform(0.005, 0.02) for _ in range(60)]
    pace = inflight.Pace()
    running = 0
    most_running = 0
    lock = threading.Lock()

    def work(i: int) -> int:
        nonlocal running, most_running
        with lock:
            running += 1
            most_running = max(most_running, running)
        time.sleep(naps[i])  # a read at a distance: waiting, not computing
        with lock:
            running -= 1
        return i * i

    started = time.perf_counter()
    results = list(inflight.ordered_map(work, range(60), pace=pace))
    elapsed = time.perf_counter() - started
    assert results == [i * i for i in range(60)]
    assert pace.deepest == inflight.MOST and most_running > 2
    assert elapsed < sum(naps) / 2  # one at a time would take sum(naps)


def test_ordered_map_stays_shallow_when_items_come_at_once() -> None:
    pace = inflight.Pace()

    def use(i: int) -> int:
        return i

    for _ in inflight.ordered_map(use, range(200), pace=pace):
        time.sleep(0.001)  # the consumer is the slow side
    assert pace.depth <= 2


def test_ordered_map_raises_an_error_when_its_result_is_due_and_stops_the_source() -> None:
    produced: list[int] = []

    def pages() -> Iterator[int]:
        for i in range(1000):
            produced.append(i)
            yield i

    def work(i: int) -> int:
        if i == 5:
            raise ValueError("page 5 is bad")
        return i

    got: list[int] = []
    with pytest.raises(ValueError, match="page 5 is bad"):
        for value in inflight.ordered_map(work, inflight.prefetched(pages())):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]
    time.sleep(0.1)
    assert len(produced) < 30  # the prefetching thread stopped


def test_prefetched_hands_items_over_in_order_with_the_producers_error_last() -> None:
    def items() -> Iterator[int]:
        yield from range(50)
        raise RuntimeError("SCAN failed")

    got = []
    with pytest.raises(RuntimeError, match="SCAN failed"):
        for item in inflight.prefetched(items(), size=3):
            got.append(item)
    assert got == list(range(50))


def test_windowed_commands_cost_far_fewer_round_trips_and_keep_their_order(
    redis_client: redis.Redis, far_url: str
) -> None:
    far = redisio.connect(far_url)
    round_trip = redisio.round_trip(far)
    assert round_trip >= 2 * DELAY
    count = 30
    commands = [("RPUSH", "inflight:list", f"v{i}") for i in range(count)]
    commands.insert(10, ("HGET", "inflight:list", "x"))  # a wrong type: an error reply
    pace = inflight.Pace(start=2, least=2, latency_s=round_trip)
    started = time.perf_counter()
    replies = list(redisio.windowed(far, iter(commands), pace))
    elapsed = time.perf_counter() - started
    assert isinstance(replies[10], Exception) and "WRONGTYPE" in str(replies[10])
    assert [r for i, r in enumerate(replies) if i != 10] == list(range(1, count + 1))
    assert redis_client.lrange("inflight:list", 0, -1) == [f"v{i}".encode() for i in range(count)]
    assert pace.deepest >= 4  # building a command takes far less than a round trip
    # one round trip each would take (count + 1) round trips; half of that leaves room for a
    # loaded machine (CI measured 0.34 of it once) and still fails a window that waits
    assert elapsed < (count + 1) * round_trip / 2


def test_windowed_stops_when_its_commands_stop(redis_client: redis.Redis, far_url: str) -> None:
    far = redisio.connect(far_url)
    stop: list[bool] = []

    def commands() -> Iterator[tuple[str, ...]]:
        for _ in range(100):
            if stop:
                return
            yield ("INCR", "inflight:counter")

    replies = []
    for reply in redisio.windowed(far, commands(), inflight.Pace(start=4, least=4)):
        replies.append(reply)
        stop.append(True)
    # the commands already sent are answered, nothing after
    assert replies == list(range(1, len(replies) + 1)) and 4 <= len(replies) <= inflight.MOST
    assert int(redis_client.get("inflight:counter") or 0) == len(replies)
    assert far.ping()  # the connection is still in step


def test_scan_count_grows_while_the_round_trip_dominates() -> None:
    assert scan_count_after(1000, 32_000, 0.002, 0.0025) == 2000
    assert scan_count_after(1000, 32_000, 0.0001, 0.001) == 1000
    assert scan_count_after(32_000, 32_000, 0.002, 0.0025) == 32_000


def test_scan_at_a_distance_needs_fewer_pages_and_finds_every_key(
    redis_client: redis.Redis, far_url: str
) -> None:
    with redis_client.pipeline(transaction=False) as pipe:
        for i in range(3000):
            pipe.set(f"inflight:scan:{i}", 1)
        pipe.execute()
    far = redisio.connect(far_url)
    fixed = list(redisio.scan_pages(far, "inflight:scan:*", count=100))
    grown = list(redisio.scan_pages(far, "inflight:scan:*", count=100, grow_to=3200))
    found = {k for _, keys in grown for k in keys}
    assert found == {k for _, keys in fixed for k in keys} and len(found) == 3000
    assert len(grown) < len(fixed) / 2


def test_requeue_at_a_distance_keeps_its_batches_in_flight_and_their_order(
    redis_client: redis.Redis, far_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = queues.QueueRef("Learning.Worker-Inflight", "inflight", "ItemScoreCreated")
    redis_client.sadd(layout.subscribers_key(ref.env, ref.event_type), ref.subscriber)
    values = [f"message {i}".encode() for i in range(400)]
    far = redisio.connect(far_url)
    round_trip = redisio.round_trip(far)
    elapsed = {}
    for batch in (400, 20):  # one batch, then 20
        monkeypatch.setattr(scripts, "MOVE_BATCH", batch)
        redis_client.delete(ref.key("published"))
        redis_client.rpush(ref.key("processing"), *values)
        started = time.perf_counter()
        summary = queues.requeue(far, ref, queues.RequeueOptions(selection=queues.Selection()))
        elapsed[batch] = time.perf_counter() - started
        assert (summary.requeued, summary.gone, summary.failed) == (400, 0, 0)
        assert redis_client.lrange(ref.key("published"), 0, -1) == values
        assert redis_client.llen(ref.key("processing")) == 0
    # one batch at a time would add 19 round trips
    assert elapsed[20] - elapsed[400] < 10 * round_trip, (elapsed, round_trip)


def sleeping_part(seconds: float) -> float:
    """A part a worker runs (module level: handed to a worker by name)."""
    time.sleep(seconds)
    return seconds


def test_a_ctrl_c_stops_a_running_part_and_an_idle_worker_waits_quietly(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C sent to the workers themselves (as a terminal's reaches every process of its
    group): the part a worker runs stops (KeyboardInterrupt, as in one process), and a worker
    waiting for work says nothing (multiprocessing printed 'Process ForkProcess-2: Traceback
    ...' on the terminal, beside esctl's one-line message; CI caught it under `migrate
    verify`) and waits on, to be ended by the pool: one that ended there broke the pool, which
    failed every part, also those still stopping, and killed the other workers."""
    with inflight.worker_processes(2) as pool:
        part = pool.submit(sleeping_part, 30)
        assert pool.submit(sleeping_part, 0).result(timeout=30) == 0  # both workers up
        deadline = time.monotonic() + 10
        while not part.running():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)  # the part is in its sleep, the other worker waits for work
        workers = list(pool._processes)
        for pid in workers:
            os.kill(pid, signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            part.result(timeout=30)
        time.sleep(0.3)
        assert [pid for pid in workers if alive(pid)] == workers  # the pool is whole
    assert "Traceback" not in capfd.readouterr().err
    assert not [pid for pid in workers if alive(pid)]


COUNTING_STOPS = """
import json, os, signal, sys, time
from esctl import inflight
from esctl.cli import errors

def say(line):
    os.write(1, (line + "\\n").encode())  # one write: the workers share the pipe

def counting_stops(seconds):
    say("started")
    stops, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.01)
        except KeyboardInterrupt:
            stops += 1
    return stops

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # (as a terminal's shell has them)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    errors.stop_on_signals()  # as esctl's command line does
    with inflight.worker_processes(2) as pool:
        futures = [pool.submit(counting_stops, float(sys.argv[1])) for _ in range(2)]
        say(json.dumps(list(pool._processes)))
        while not all(f.done() for f in futures):
            try:
                time.sleep(0.02)
            except KeyboardInterrupt:
                pass
        say(json.dumps([f.result() for f in futures]))
"""


@pytest.mark.parametrize(
    ("to", "signals", "stops"),
    [
        ("parent", [signal.SIGTERM], 1),
        ("parent", [signal.SIGHUP, signal.SIGHUP], 1),
        ("parent", [signal.SIGTERM, signal.SIGTERM], 2),
        ("group", [signal.SIGTERM], 1),
        ("group", [signal.SIGINT, signal.SIGINT], 2),
    ],
    ids=["SIGTERM", "SIGHUP twice", "SIGTERM twice", "group SIGTERM", "group Ctrl-C twice"],
)
def test_each_worker_takes_each_stop_once_whether_sent_to_the_command_alone_or_to_all(
    to: str, signals: list[signal.Signals], stops: int
) -> None:
    """A stop sent to the command's process alone (Kubernetes' SIGTERM to PID 1, ``kill
    PID``, a hangup that reaches esctl alone) reached no worker: their parts ran to their end.
    The command passes each stop on; a stop sent to every process (a terminal's Ctrl-C to its
    process group, systemd's to the unit) reaches a worker twice then, and must count once:
    a second stop cuts waits short. A hangup's second SIGHUP is the same stop."""
    proc = subprocess.Popen(
        [sys.executable, "-c", COUNTING_STOPS, "1.5"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]  # the workers' pids, 2 parts started
        assert sorted(lines)[-2:] == ["started\n", "started\n"], lines
        workers = json.loads(sorted(lines)[0])
        for number, signum in enumerate(signals):
            time.sleep(0.2 if number else 0.05)
            if to == "parent":
                os.kill(proc.pid, signum)
            else:
                os.killpg(proc.pid, signum)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0
    assert json.loads(out) == [stops, stops]
    assert len(workers) == 2 and not [pid for pid in workers if alive(pid)]
