"""esctl.readahead: a producer in a forked child, its items here in order, its errors raised
here, and a child that never outlives its consumer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from esctl import readahead, redisio
from esctl.errors import UsageError
from esctl.readahead import ReaderFailed, read_ahead


def alive(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


def wait_blocked_in_pipe_write(pid: int, timeout: float = 30.0) -> None:
    """Wait until ``pid`` sleeps in the kernel's pipe write (``/proc/PID/wchan``)."""
    wchan = Path(f"/proc/{pid}/wchan")
    deadline = time.monotonic() + timeout
    while True:
        where = wchan.read_text()  # "0" while it runs
        if where.endswith("pipe_write"):
            return
        if time.monotonic() > deadline:
            if where == "0" and _state(pid) == "S":
                pytest.skip("this kernel hides /proc/PID/wchan")
            pytest.fail(f"the child never blocked on the pipe ({where})")
        time.sleep(0.01)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_items_arrive_in_order_large_and_small() -> None:
    def produce() -> Iterator[tuple[int, bytes]]:
        for i in range(50):
            yield i, bytes([i % 256]) * (i * 40_000)  # up to ~2 MB: many pipe buffers each

    got = list(read_ahead(produce))
    assert [i for i, _ in got] == list(range(50))
    assert all(blob == bytes([i % 256]) * (i * 40_000) for i, blob in got)


def test_an_empty_producer_gives_nothing() -> None:
    assert list(read_ahead(lambda: iter(()))) == []


def test_an_error_in_the_child_is_raised_here_with_its_type_and_fields() -> None:
    def produce() -> Iterator[int]:
        yield 1
        raise UsageError("bad thing in the child", hint="do the other thing")

    items = read_ahead(produce)
    assert next(items) == 1
    with pytest.raises(UsageError) as caught:
        next(items)
    assert caught.value.message == "bad thing in the child"
    assert caught.value.hint == "do the other thing"


def test_an_error_that_cannot_be_pickled_still_arrives_as_reader_failed() -> None:
    class Local(Exception):  # a local class cannot be pickled
        pass

    def produce() -> Iterator[int]:
        raise Local("no pickling for me")
        yield 0  # pragma: no cover

    with pytest.raises(ReaderFailed, match="Local: no pickling for me"):
        list(read_ahead(produce))


def test_the_child_reads_at_most_a_few_items_ahead(tmp_path: Path) -> None:
    """Memory is bounded: the child blocks on the pipe while the consumer holds back."""
    marks = tmp_path / "produced"
    pid_file = tmp_path / "pid"

    def produce() -> Iterator[bytes]:
        pid_file.write_text(str(os.getpid()))
        for i in range(1000):
            with marks.open("a") as f:
                f.write(f"{i}\n")
            yield b"x" * 300_000  # several times the pipe's buffer

    items = read_ahead(produce)
    next(items)
    # Wait for the state itself: the child blocked in a write to the full pipe.
    wait_blocked_in_pipe_write(int(pid_file.read_text()))
    produced = len(marks.read_text().split())
    assert 1 <= produced <= 4, produced
    items.close()


def test_stopping_early_kills_and_reaps_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    def produce() -> Iterator[int]:
        pid_file.write_text(str(os.getpid()))
        i = 0
        while True:
            yield i
            i += 1

    items = read_ahead(produce)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    child = int(pid_file.read_text())
    assert child != os.getpid() and alive(child)
    items.close()
    assert not alive(child)  # killed and reaped by close(), no zombie left


def test_a_child_killed_from_outside_is_an_error_not_a_short_answer(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    def produce() -> Iterator[int]:
        pid_file.write_text(str(os.getpid()))
        yield 1
        time.sleep(60)
        yield 2  # pragma: no cover

    items = read_ahead(produce)
    assert next(items) == 1
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    with pytest.raises(ReaderFailed, match="ended without finishing"):
        next(items)


def test_the_child_exits_when_its_consumer_is_killed(tmp_path: Path) -> None:
    """kill -9 of the consumer: the child's next write finds no reader and it exits."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from esctl.readahead import read_ahead

        def produce():
            print(os.getpid(), flush=True)
            while True:
                yield b"y" * 100_000

        items = read_ahead(produce)
        next(items)
        print("consuming", flush=True)
        time.sleep(60)
        """
    )
    consumer = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    assert consumer.stdout is not None
    child = int(consumer.stdout.readline())
    assert consumer.stdout.readline().strip() == "consuming"
    assert alive(child)
    consumer.kill()
    consumer.wait()
    # The orphan is re-parented (to init or a subreaper) that reaps it; gone either way.
    assert wait_gone(child), f"read-ahead child {child} outlived its consumer"


def test_redis_connections_are_not_shared_with_the_child(
    redis_client: redis.Redis, app_name: str
) -> None:
    """The parent keeps using its raw pipelined connection while the child reads through its
    own: replies never cross (a shared socket would interleave them)."""
    keys = [f"{app_name}:ra:{i}" for i in range(200)]
    for i, key in enumerate(keys):
        redis_client.set(key, f"value-{i}")
    commands = [("GET", k) for k in keys]
    assert redisio.pipelined(redis_client, commands)[0] == b"value-0"  # opens the raw socket

    def produce() -> Iterator[list[bytes]]:
        for _ in range(30):
            yield redisio.pipelined(redis_client, commands)

    expected = [f"value-{i}".encode() for i in range(200)]
    for replies in read_ahead(produce):
        assert replies == expected
        assert redisio.pipelined(redis_client, list(reversed(commands))) == expected[::-1]
    redis_client.delete(*keys)


def online_cpus_from_the_kernel() -> int:
    """The CPUs the kernel lists in /proc/cpuinfo (one ``processor`` line each): a source of
    its own, not the ``os.cpu_count()`` that readahead asks."""
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    return sum(1 for line in text.splitlines() if line.split(":")[0].strip() == "processor")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_available_is_true_exactly_on_a_machine_with_a_second_cpu() -> None:
    cpus = online_cpus_from_the_kernel()
    assert cpus >= 1
    # Linux has fork: the answer turns on the CPUs alone.
    assert readahead.available() is (cpus >= 2), cpus
