"""The benchmarks' latency-adding TCP relay (bench/relay.py): bytes pass unchanged both ways,
a round trip costs two delays, and a pipelined burst pays the delay once, not per request.
(The relay is a benchmark tool; the benchmarks themselves never run in the suite.)"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

RELAY_PATH = Path(__file__).resolve().parent.parent / "bench" / "relay.py"


def _load_relay() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_relay", RELAY_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


relay_module = _load_relay()


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    parts = []
    while size:
        data = sock.recv(min(size, 1 << 16))
        assert data, "the connection closed early"
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """A TCP server on a free port that echoes every byte back, until the client half-closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    threads = []

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=serve, args=(conn,), daemon=True)
            thread.start()
            threads.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()
    finally:
        listener.close()
        for thread in threads:
            thread.join(timeout=5)


def _connect(relay: Any) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", relay.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_bytes_pass_through_unchanged_both_ways(echo_server: tuple[str, int]) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)  # larger than one chunk, every byte value
    with relay_module.Relay(echo_server, 0.0) as relay, _connect(relay) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        echoed = _recv_exactly(sock, len(payload))
        sender.join()
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b"", "the end of stream was passed on both ways"
    assert echoed == payload


def test_round_trip_costs_two_delays_and_a_burst_pays_it_once(
    echo_server: tuple[str, int],
) -> None:
    delay = 0.020
    request = b"PING0001"
    with relay_module.Relay(echo_server, delay) as relay, _connect(relay) as sock:
        started = time.perf_counter()
        sock.sendall(request)
        assert _recv_exactly(sock, len(request)) == request
        round_trip = time.perf_counter() - started
        assert round_trip >= 2 * delay

        burst = [b"PING%04d" % i for i in range(100)]
        started = time.perf_counter()
        for one in burst:  # separate segments (TCP_NODELAY): separate chunks at the relay
            sock.sendall(one)
        assert _recv_exactly(sock, 8 * len(burst)) == b"".join(burst)
        pipelined = time.perf_counter() - started
    assert pipelined >= 2 * delay
    # Stop-and-wait would take 100 round trips; a delay pipe takes about one.
    assert pipelined < 10 * round_trip, (pipelined, round_trip)
