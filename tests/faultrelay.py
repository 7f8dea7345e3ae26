"""A TCP relay in front of a real Redis that changes the world at one chosen command: the n-th
request (counted over every connection) whose bytes contain a marker, such as a script's SHA1.

- ``before``: called just before that request is passed on, so the command meets what it did
  (an ACL rule taken away, say) and the commands before it did not;
- ``cut_reply``: the request is passed on and runs, and its connection is cut when the answer
  comes back, which is dropped: the client loses the connection not knowing that it ran;
- ``then_refuse``: from then on every new connection is closed at once (Redis unreachable);
- ``hold``: the request is never passed on (nor what came with it in the same read, nor
  anything sent after it on its connection): the client waits for an answer that never comes,
  as from a Redis that stopped answering it (the relay closes the connection when the client
  does, or when it is closed itself).

Every other byte passes unchanged both ways, so everything else is the server's own behaviour.

:func:`signalled_twice` signals a process at one of its requests, then again when it gives
its Redis lock back (two relays).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import selectors
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from esctl import locks

CHUNK = 1 << 16


def script_sha(script: str) -> bytes:
    """The SHA1 that EVALSHA names ``script`` by: a marker for a script's calls."""
    return hashlib.sha1(script.encode()).hexdigest().encode()


class FaultRelay:
    """Listens on a free port of 127.0.0.1 (:attr:`port`) and relays each connection to the
    Redis at ``target`` (a ``redis://`` URL: :meth:`url` is the same URL through the relay); see
    the module for ``marker``, ``nth``, ``before`` and ``cut_reply``. :attr:`fired` is set once
    the n-th request was seen (and, with ``cut_reply``, cut)."""

    def __init__(
        self,
        target: str,
        marker: bytes,
        nth: int,
        *,
        before: Callable[[], None] | None = None,
        cut_reply: bool = False,
        then_refuse: bool = False,
        hold: bool = False,
    ) -> None:
        self.target = urlsplit(target)
        if self.target.port is None:
            pytest.skip("the fault relay needs Redis on a TCP port")
        self.marker = marker
        self.nth = nth
        self.before = before
        self.cut_reply = cut_reply
        self.then_refuse = then_refuse
        self.hold = hold
        self.seen = 0
        self.fired = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False

    @property
    def url(self) -> str:
        """The target's URL (user, password, database) with the relay as its host."""
        userinfo, _, _ = self.target.netloc.rpartition("@")
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(self.target._replace(netloc=netloc))

    def __enter__(self) -> FaultRelay:
        threading.Thread(target=self._accept, name="fault-relay", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            self._close(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.then_refuse and self.fired.is_set():
                client.close()
                continue
            upstream = socket.create_connection(
                (self.target.hostname or "127.0.0.1", self.target.port)
            )
            with self._lock:
                self._sockets.update((client, upstream))
            threading.Thread(
                target=self._serve, args=(client, upstream), name="fault-relay-conn", daemon=True
            ).start()

    def _hit(self, count: int) -> bool:
        """Count ``count`` more marked requests; whether the n-th is among them."""
        with self._lock:
            before = self.seen
            self.seen += count
            return before < self.nth <= self.seen

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ)
        selector.register(upstream, selectors.EVENT_READ)
        carry = b""  # the end of the last request bytes, for a marker split between reads
        cutting = False
        holding = False
        try:
            while True:
                for key, _ in selector.select():
                    source = key.fileobj
                    try:
                        data = source.recv(CHUNK)  # type: ignore[union-attr]
                    except OSError:
                        data = b""
                    if not data:
                        return
                    if source is client and holding:
                        continue  # (a request after the one held: never passed on either)
                    if source is client:
                        window = carry + data
                        carry = window[-(len(self.marker) - 1) :] if len(self.marker) > 1 else b""
                        count = window.count(self.marker)
                        if count and self._hit(count):
                            if self.before is not None:
                                self.before()
                                self.fired.set()
                            cutting = self.cut_reply
                            holding = self.hold
                            if holding:
                                self.fired.set()
                                continue
                        upstream.sendall(data)
                    elif cutting:  # the answer to the marked request: dropped with the line
                        self.fired.set()
                        return
                    else:
                        client.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            for sock in (client, upstream):
                self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked on it
        with contextlib.suppress(OSError):
            sock.close()
        with self._lock:
            self._sockets.discard(sock)


@contextlib.contextmanager
def signalled_twice(
    url: str, first_at: bytes, signals: tuple[signal.Signals, signal.Signals]
) -> Iterator[tuple[str, Callable[[int], None]]]:
    """A URL of the Redis at ``url`` through two relays, and what to call with the pid of the
    process that uses it. That process gets ``signals[0]`` when its first request whose bytes
    hold ``first_at`` comes (before it is passed on), and ``signals[1]`` when it asks for its
    lock's release (the release script), which is then held: Redis never gets it, the lock
    stays, as when a signal stops the release before it is sent or Redis does not answer."""
    pid: list[int] = []
    known = threading.Event()

    def send(which: int) -> None:
        assert known.wait(60)
        os.kill(pid[0], signals[which])

    def started(process: int) -> None:
        pid.append(process)
        known.set()

    release = FaultRelay(
        url, script_sha(locks._RELEASE_SCRIPT), 1, before=lambda: send(1), hold=True
    )
    with release, FaultRelay(release.url, first_at, 1, before=lambda: send(0)) as first:
        yield first.url, started
        assert first.fired.is_set() and release.fired.is_set()
        assert release.seen == 1, f"the release was sent {release.seen} times (a retry)"


def expired_so_far(client: redis.Redis) -> int:
    """How many keys the server has expired since it started (INFO ``expired_keys``)."""
    return int(client.info("stats")["expired_keys"])


def left_in_redis(client: redis.Redis, keys: Iterable[str], expired_before: int) -> bool:
    """Whether each of ``keys`` (locks whose release a signal stopped) is still in Redis. One
    that is gone must have expired on its own (the server expired keys since ``expired_before``:
    the machine stalled past the lock's TTL, or its clock jumped), which is what the run says
    may happen; one that was deleted fails: a release reached Redis. False: one expired, so a
    rerun would not find the lock."""
    gone = [key for key in keys if not client.exists(key)]
    if gone:
        assert expired_so_far(client) > expired_before, f"deleted, not expired: {gone}"
    return not gone
