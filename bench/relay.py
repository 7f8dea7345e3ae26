"""A TCP relay that adds network distance: it forwards bytes both ways between a listening port
and a target host:port and delivers each chunk ``delay`` seconds after it arrived.

    python bench/relay.py --target 127.0.0.1:6379 --delay-ms 1 [--listen-port 0]

prints ``listening on <port>`` once it accepts connections and runs until SIGTERM/SIGINT.

The delay is a timed queue per direction: a reader thread stamps each chunk with arrival time +
delay, a writer thread sends the chunks in arrival order, each no earlier than its stamp. So the
relay is a bandwidth-delay pipe, not stop-and-wait: a request/response pair takes two delays,
but a pipelined burst costs the delay once, and throughput is not capped by it. With delay 0 the
same code path runs without waiting: use that as the baseline, so the relay's own cost cancels
out of a ratio. The queues are unbounded (the benchmark's data is bounded), and the sleeps use
``time.sleep`` (clock_nanosleep: tens of µs late at most, where an asyncio loop on epoll rounds
timeouts up to whole milliseconds).
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import signal
import socket
import sys
import threading
import time

CHUNK = 256 * 1024


class Relay:
    """Listens on ``listen_host:listen_port`` (0: any free port, see :attr:`port`) and relays
    every accepted connection to ``target`` with ``delay`` seconds added each way."""

    def __init__(
        self,
        target: tuple[str, int],
        delay: float,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target = target
        self.delay = delay
        self._listener = socket.create_server((listen_host, listen_port), backlog=128)
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections = 0

    def start(self) -> Relay:
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            # shutdown first: a close() alone does not wake a thread blocked in recv()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self.connections += 1
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets.update((client, upstream))
            pending = [2]
            for src, dst in ((client, upstream), (upstream, client)):
                chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()
                threading.Thread(
                    target=self._read, args=(src, chunks), name="relay-read", daemon=True
                ).start()
                threading.Thread(
                    target=self._write,
                    args=(dst, chunks, (client, upstream), pending),
                    name="relay-write",
                    daemon=True,
                ).start()

    def _read(self, src: socket.socket, chunks: queue.Queue[tuple[float, bytes]]) -> None:
        """Stamp each chunk with the time it is due at the other end; b"" marks the end."""
        delay = self.delay
        while True:
            try:
                data = src.recv(CHUNK)
            except OSError:
                data = b""
            chunks.put((time.monotonic() + delay, data))
            if not data:
                return

    def _write(
        self,
        dst: socket.socket,
        chunks: queue.Queue[tuple[float, bytes]],
        pair: tuple[socket.socket, socket.socket],
        pending: list[int],
    ) -> None:
        """Deliver chunks in order, none before it is due; pass an end of stream on as a
        half-close, and close both sockets once both directions have ended."""
        try:
            while True:
                due, data = chunks.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            for sock in pair:  # the other end is gone: so is this connection
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        finally:
            with self._lock:
                pending[0] -= 1
                last = pending[0] == 0
                if last:
                    self._sockets.difference_update(pair)
            if last:
                for sock in pair:
                    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True, help="host:port to relay to")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per chunk")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    relay = Relay((host, int(port)), args.delay_ms / 1000, args.listen_host, args.listen_port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    relay.start()
    print(f"listening on {relay.port}", flush=True)
    stop.wait()
    relay.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
